"""The paper's claims as verdicts and the numbers behind them (no words: those are ``claim_words``'s).

The paper (ORION, arXiv 2505.22131) claims three things, and only these are its claims here
(``PAPER_CLAIMS``): the headline (ORION beats every baseline by more than ``margin`` points on GSM-Hard,
MATH500, AIME24 and AMC23; per benchmark, by the paired bootstrap intervals of ``stats.headline_intervals``
when there are per-problem results), coherence (CoTs of higher coherence and logical consistency) and
stability (``loss_delta_std``). ``claim_evidence`` judges each on seed-aggregated cells
(``stats.aggregate_values``). Coherence is judged by measures that did not choose ORION's rewrites (the
judge's step consistency, ``judge_consistency``; the toy domain's checked arithmetic) when the run has
them; the base student's perplexity of the training CoTs decides only when nothing else does, and it is
flagged ``circular`` when ``reflection.selection: perplexity`` chose the rewrites by that very quantity.
What else we measure (output length, ``response_tokens_mean``; unfinished outputs) is ``own_evidence``,
never a paper claim. ``assess_claims`` and ``assess_own`` add the report's words; ``look_inside`` shows
one claim of a finished run.
"""
from __future__ import annotations

import json
from typing import Any, Optional, Sequence

from .claim_words import claim_entry, own_entry
from .report import cell_text
from .rundir import RunDir
from .sections import CLAIM_MARGIN_POINTS  # the analysis section's default margin
from .stats import headline_status

PAPER_CLAIMS = ("headline", "coherence", "stability")  # the paper's three claims, in its order
OWN_MEASUREMENTS = ("verbosity", "unfinished")  # ours, reported apart from the paper's claims
# coherence measures that did not select ORION's rewrites (perplexity, ``cot_perplexity``, may have)
INDEPENDENT_COHERENCE = ("judge_consistency", "step_consistency_training", "step_consistency_evaluation")


def _verdict(outcomes: Sequence[int]) -> str:
    favour = sum(o > 0 for o in outcomes)
    against = sum(o < 0 for o in outcomes)
    if not outcomes:
        return "cannot be assessed"
    if favour and not against:
        return "supported"
    if not favour:
        return "not supported"
    return "mixed"


def spread(a: Optional[dict], b: Optional[dict]) -> float:
    """How far apart two seed-aggregated cells may be and still count as no difference: the sum of
    their sample stds over seeds (their mean ± std intervals overlap). 0 for single seeds."""
    return float((a or {}).get("std") or 0.0) + float((b or {}).get("std") or 0.0)


def outcome(orion: Optional[float], other: Optional[float], lower_is_better: bool, tol: float = 1e-12,
            within: float = 0.0) -> Optional[int]:
    """+1 ORION better, -1 worse, 0 no difference: ``|orion - other|`` within ``within`` (the seeds'
    spread, see ``spread``) or ``tol``; None when either is missing."""
    if orion is None or other is None:
        return None
    if abs(orion - other) <= max(tol, within):
        return 0
    better = orion < other if lower_is_better else orion > other
    return 1 if better else -1


# --- the headline: ORION beats every baseline by more than the margin, per benchmark ---------------


def _headline_row(bench: str, agg_metrics: dict, baselines: Sequence[str], margin: float,
                  intervals: Optional[dict], max_width: float) -> Optional[tuple[dict, dict, Optional[int]]]:
    """(row, numbers, outcome) of one benchmark; None when ORION or every baseline lacks pass@1 there."""
    o = (agg_metrics.get("orion", {}).get(bench) or {}).get("pass@1")
    others = {m: (agg_metrics[m].get(bench) or {}).get("pass@1") for m in baselines}
    others = {m: c for m, c in others.items() if c}
    if not o or not others:
        return None
    best = max(others, key=lambda m: others[m]["mean"])
    diff = 100 * (o["mean"] - others[best]["mean"])
    within = 100 * spread(o, others[best])
    numbers = {"orion": 100 * o["mean"], "best_baseline": best, "best": 100 * others[best]["mean"],
               "margin_points": diff, "spread_points": within}
    row = {"benchmark": bench, "orion": o, "best_baseline": best, "best": others[best],
           "margin_points": diff, "spread_points": within}
    vs = (intervals or {}).get(bench) or {}
    if intervals is None or not vs:  # beating by the margin needs a difference beyond the seeds' spread too
        return row, numbers, 1 if diff > max(margin, within) else -1
    row["vs"] = {m: {**d, "status": headline_status(d, margin, max_width)} for m, d in vs.items()}
    numbers["vs"] = {m: {k: v[k] for k in ("diff", "lo", "hi", "status")} for m, v in row["vs"].items()}
    statuses = [v["status"] for v in row["vs"].values()]
    row["status"] = ("beats" if all(st == "beats" for st in statuses) else
                     "too small to decide" if all(st in ("beats", "too small to decide") for st in statuses)
                     else "does not beat")
    return row, numbers, {"beats": 1, "too small to decide": None}.get(row["status"], -1)


def _headline_evidence(agg_metrics: dict, agg_methods: dict, margin: float, intervals: Optional[dict],
                       max_width: float) -> dict:
    has_orion = "orion" in agg_metrics or "orion" in agg_methods
    baselines = [m for m in agg_metrics if m != "orion"]
    numbers, outcomes, rows = {}, [], []
    if has_orion and baselines:
        for bench in sorted({b for per in agg_metrics.values() for b in per}):
            found = _headline_row(bench, agg_metrics, baselines, margin, intervals, max_width)
            if found is not None:
                row, numbers[bench], result = found
                rows.append(row)
                outcomes.append(result)
    decided = [o for o in outcomes if o is not None]
    verdict = _verdict(decided) if decided or not outcomes else "too small to decide"
    if verdict == "supported" and len(decided) < len(outcomes):
        verdict = "too small to decide"  # ORION beats where a benchmark can tell, the others cannot
    return {"id": "headline", "verdict": verdict, "numbers": numbers, "margin": margin,
            "baselines": baselines, "rows": rows, "max_width": max_width,
            "rule": "paired bootstrap" if intervals is not None else "point estimates"}


# --- the per-method claims: ORION's scalar against each trained method's -------------------------------


def _compare(agg_methods: dict, key: str, lower: bool, against: Sequence[str]) -> tuple[list, dict, dict]:
    """(outcomes, numbers, comparison) of ORION's ``key`` against each method of ``against``."""
    o = (agg_methods.get("orion") or {}).get(key)
    outs, nums = [], {}
    comparison = {"key": key, "lower_is_better": lower, "orion": o, "others": []}
    if not o:
        return outs, nums, comparison
    nums["orion"] = o["mean"]
    for m in against:
        c = (agg_methods.get(m) or {}).get(key)
        r = outcome(o["mean"], c["mean"] if c else None, lower, within=spread(o, c))
        if r is None:
            continue
        outs.append(r)
        nums[m] = c["mean"]
        comparison["others"].append({"method": m, "cell": c, "outcome": r, "spread": spread(o, c)})
    return outs, nums, comparison


def _coherence_evidence(agg_methods: dict, trained: Sequence[str], selection: Optional[str] = None) -> dict:
    """Coherence by the measures that did not choose ORION's rewrites (``INDEPENDENT_COHERENCE``) when any
    compares; else by the base student's perplexity of the training CoTs, ``circular`` when ``selection``
    (``reflection.selection``) is ``perplexity``: the rewrites were chosen by minimising that quantity.
    ``basis``: ``independent``, ``perplexity`` or ``none``."""
    with_cots = [m for m in trained if (agg_methods.get(m) or {}).get("cot_perplexity")]
    independent, numbers, comparisons = [], {}, []
    for key in INDEPENDENT_COHERENCE:
        outs, numbers[key], comparison = _compare(agg_methods, key, False, trained)
        independent += outs
        comparisons.append(comparison)
    o_ppl, numbers["cot_perplexity"], c_ppl = _compare(agg_methods, "cot_perplexity", True, with_cots)
    basis = "independent" if independent else "perplexity" if o_ppl else "none"
    return {"id": "coherence", "verdict": _verdict(independent if independent else o_ppl),
            "numbers": numbers, "comparisons": [*comparisons, c_ppl], "basis": basis,
            "selection": selection, "circular": selection == "perplexity",
            "base": (agg_methods.get("base") or {}).get("step_consistency_evaluation")}


def _lower_is_better_evidence(agg_methods: dict, trained: Sequence[str], claim: str, key: str,
                              with_base: bool) -> dict:
    o, n, c = _compare(agg_methods, key, True, trained)
    return {"id": claim, "verdict": _verdict(o), "numbers": {key: n}, "comparisons": [c],
            "base": (agg_methods.get("base") or {}).get(key) if with_base else None}


def claim_evidence(agg_metrics: dict, agg_methods: dict, margin: float = CLAIM_MARGIN_POINTS,
                   intervals: Optional[dict] = None, max_width: float = 8.0,
                   selection: Optional[str] = None) -> list[dict]:
    """Each of the paper's three claims' verdict and the comparisons behind it, in numbers (no words).

    One dict per claim, in the report's order (``PAPER_CLAIMS``: ``headline``, ``coherence``,
    ``stability``): ``id``, ``verdict``, ``numbers`` (the seed means stored in ``analysis.json``) and
    the seed-aggregated cells that ``claim_words.claim_entry`` puts into words. ``headline`` adds
    ``margin``, ``baselines`` and ``rows`` (per benchmark: ORION's and the best baseline's pass@1
    cells, ``margin_points``, ``spread_points``); the others add ``comparisons`` (per compared metric:
    ``key``, ``lower_is_better``, ORION's cell and ``others``, each with its ``method``, ``cell``,
    ``outcome`` (+1/0/-1, the function ``outcome``) and ``spread``) and ``base``, base's cell where the report
    quotes it for reference. ``coherence`` adds ``basis``, ``selection`` and ``circular``
    (``_coherence_evidence``: ``selection`` is the run's ``reflection.selection``).

    ``intervals`` (``headline_intervals``: per benchmark and baseline, the paired bootstrap interval of
    ORION − baseline in points): the headline is judged against them (``headline_status`` with
    ``margin`` and ``max_width``): a benchmark counts for the claim when ORION ``beats`` every baseline,
    against it when any baseline is ``worse``, ``no difference`` or ``below the margin``, and for
    neither when the rest is ``too small to decide``; each row adds ``vs`` (baseline → interval and
    status) and the claim ``rule: "paired bootstrap"``. Without intervals (no per-problem results),
    the point estimates and the seeds' spread decide, as ``rule: "point estimates"``.
    """
    trained = [m for m in agg_methods if m not in ("orion", "base")]
    return [_headline_evidence(agg_metrics, agg_methods, margin, intervals, max_width),
            _coherence_evidence(agg_methods, trained, selection),
            _lower_is_better_evidence(agg_methods, trained, "stability", "loss_delta_std", with_base=False)]


def _unfinished_evidence(agg_metrics: dict) -> dict:
    """Per method and benchmark, the share of unfinished outputs (sampled: ``unfinished_rate``; greedy:
    ``greedy_unfinished_rate``); measured, no verdict."""
    numbers: dict = {}
    for method, per in agg_metrics.items():
        for bench, cells in per.items():
            for key in ("unfinished_rate", "greedy_unfinished_rate"):
                if (cells or {}).get(key):
                    numbers.setdefault(key, {}).setdefault(method, {})[bench] = cells[key]
    return {"id": "unfinished", "verdict": "measured" if numbers else "cannot be assessed", "numbers": numbers}


def own_evidence(agg_metrics: dict, agg_methods: dict) -> list[dict]:
    """What we measure beside the paper's claims (``OWN_MEASUREMENTS``), in numbers: ``verbosity`` (ORION's mean
    output length against every other trained method's, with a verdict as for a claim) and ``unfinished``
    (``_unfinished_evidence``). Never a claim of the paper."""
    trained = [m for m in agg_methods if m not in ("orion", "base")]
    return [_lower_is_better_evidence(agg_methods, trained, "verbosity", "response_tokens_mean", with_base=True),
            _unfinished_evidence(agg_metrics)]


def assess_own(agg_metrics: dict, agg_methods: dict, n_seeds: int = 1) -> list[dict]:
    """Our own measurements in the report's words (``claim_words.own_entry``): {"id", "measure", "verdict", "text",
    "numbers"}."""
    return [own_entry(e, n_seeds=n_seeds) for e in own_evidence(agg_metrics, agg_methods)]


def assess_claims(agg_metrics: dict, agg_methods: dict, margin: float = CLAIM_MARGIN_POINTS, toy: bool = False,
                  n_seeds: int = 1, intervals: Optional[dict] = None, max_width: float = 8.0,
                  selection: Optional[str] = None) -> list[dict]:
    """One entry per paper claim (the paper's three, ``PAPER_CLAIMS``): {"id", "claim", "verdict", "text", "numbers"}.

    ``agg_metrics``: ``aggregate_metrics`` output; ``agg_methods``: per-method scalars aggregated over
    seeds (``{"mean","std","n"}`` cells). Comparisons use seed means. Verdicts: "supported" (every
    comparison favours ORION), "not supported" (none does), "mixed", or "cannot be assessed".
    The verdicts and numbers are ``claim_evidence``'s; the claim's statement and the paragraph that
    explains its verdict are the report's words (``claim_words.claim_entry``).
    """
    return [claim_entry(e, n_seeds=n_seeds, toy=toy)
            for e in claim_evidence(agg_metrics, agg_methods, margin, intervals, max_width, selection)]


def flatten_numbers(numbers: Any, prefix: str = "") -> dict:
    """A claim's nested ``numbers`` as flat ``{"a / b / c": value}`` rows (mean ± std cells kept whole)."""
    if isinstance(numbers, dict) and not ({"mean", "std"} & set(numbers)):
        out: dict = {}
        for key, value in numbers.items():
            out.update(flatten_numbers(value, f"{prefix} / {key}" if prefix else str(key)))
        return out
    if isinstance(numbers, dict):  # a {"mean", "std", "n"} cell
        return {prefix: cell_text(numbers, 1.0, 4) if numbers.get("mean") is not None else None}
    return {prefix: numbers}


def look_inside(run: RunDir, claim: str = "stability", show: bool = True) -> Optional[dict]:
    """One of the paper's claims as this run's ``analysis.json`` assessed it: the claim, its verdict, the
    sentence that explains it, and every number behind it (per method, flattened). ``claim`` may also name
    one of our own measurements (``OWN_MEASUREMENTS``)."""
    from .display import key_values

    path = run.analysis_file
    saved = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    claims = saved.get("claims", [])
    own = [{**m, "claim": m.get("measure")} for m in saved.get("own_measurements", [])]
    found = next((c for c in claims + own if c.get("id") == claim), claims[0] if claims else None)
    if found is None:
        print("no claims assessed in this run (analysis.json is missing or has none)")
        return None
    look = {**{k: found.get(k) for k in ("id", "claim", "verdict", "text")},
            "numbers": flatten_numbers(found.get("numbers") or {})}
    if show:
        key_values({k: look[k] for k in ("id", "claim", "verdict", "text")}, title="one claim")
        key_values(look["numbers"] or {"(none)": ""}, title="its numbers")
    return look
