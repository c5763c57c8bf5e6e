"""The paper's claims as verdicts and the numbers behind them (no words: those are ``report``'s).

``claim_evidence`` judges each claim on seed-aggregated cells (``stats.aggregate_values``): the headline
(ORION beats every baseline by more than ``margin`` points, per benchmark, by the paired bootstrap
intervals of ``stats.headline_intervals`` when there are per-problem results), coherence (the base
student's perplexity of the training CoTs, step consistency), stability (``loss_delta_std``) and
verbosity (``response_tokens_mean``). ``assess_claims`` adds the report's words; ``look_inside`` shows
one claim of a finished run.
"""
from __future__ import annotations

import json
from typing import Any, Optional, Sequence

from .report import cell_text, claim_entry
from .rundir import RunDir
from .stats import headline_status

CLAIM_MARGIN_POINTS = 2.0


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


def _coherence_evidence(agg_methods: dict, trained: Sequence[str]) -> dict:
    with_cots = [m for m in trained if (agg_methods.get(m) or {}).get("cot_perplexity")]
    o1, n1, c1 = _compare(agg_methods, "cot_perplexity", True, with_cots)
    o2, n2, c2 = _compare(agg_methods, "step_consistency_training", False, trained)
    o3, n3, c3 = _compare(agg_methods, "step_consistency_evaluation", False, trained)
    return {"id": "coherence", "verdict": _verdict(o1 + o2 + o3),
            "numbers": {"cot_perplexity": n1, "step_consistency_training": n2,
                        "step_consistency_evaluation": n3},
            "comparisons": [c1, c2, c3],
            "base": (agg_methods.get("base") or {}).get("step_consistency_evaluation")}


def _lower_is_better_evidence(agg_methods: dict, trained: Sequence[str], claim: str, key: str,
                              with_base: bool) -> dict:
    o, n, c = _compare(agg_methods, key, True, trained)
    return {"id": claim, "verdict": _verdict(o), "numbers": {key: n}, "comparisons": [c],
            "base": (agg_methods.get("base") or {}).get(key) if with_base else None}


def claim_evidence(agg_metrics: dict, agg_methods: dict, margin: float = CLAIM_MARGIN_POINTS,
                   intervals: Optional[dict] = None, max_width: float = 8.0) -> list[dict]:
    """Each paper claim's verdict and the comparisons behind it, in numbers (no words).

    One dict per claim, in the report's order (``headline``, ``coherence``, ``stability``,
    ``verbosity``): ``id``, ``verdict``, ``numbers`` (the seed means stored in ``analysis.json``) and
    the seed-aggregated cells that ``report.claim_entry`` puts into words. ``headline`` adds
    ``margin``, ``baselines`` and ``rows`` (per benchmark: ORION's and the best baseline's pass@1
    cells, ``margin_points``, ``spread_points``); the others add ``comparisons`` (per compared metric:
    ``key``, ``lower_is_better``, ORION's cell and ``others``, each with its ``method``, ``cell``,
    ``outcome`` (+1/0/-1, the function ``outcome``) and ``spread``) and ``base``, base's cell where the report
    quotes it for reference.

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
            _coherence_evidence(agg_methods, trained),
            _lower_is_better_evidence(agg_methods, trained, "stability", "loss_delta_std", with_base=False),
            _lower_is_better_evidence(agg_methods, trained, "verbosity", "response_tokens_mean",
                                      with_base=True)]


def assess_claims(agg_metrics: dict, agg_methods: dict, margin: float = CLAIM_MARGIN_POINTS, toy: bool = False,
                  n_seeds: int = 1, intervals: Optional[dict] = None, max_width: float = 8.0) -> list[dict]:
    """One entry per paper claim: {"id", "claim", "verdict", "text", "numbers"}.

    ``agg_metrics``: ``aggregate_metrics`` output; ``agg_methods``: per-method scalars aggregated over
    seeds (``{"mean","std","n"}`` cells). Comparisons use seed means. Verdicts: "supported" (every
    comparison favours ORION), "not supported" (none does), "mixed", or "cannot be assessed".
    The verdicts and numbers are ``claim_evidence``'s; the claim's statement and the paragraph that
    explains its verdict are the report's words (``report.claim_entry``).
    """
    return [claim_entry(e, n_seeds=n_seeds, toy=toy)
            for e in claim_evidence(agg_metrics, agg_methods, margin, intervals, max_width)]


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
    sentence that explains it, and every number behind it (per method, flattened)."""
    from .display import key_values

    path = run.analysis_file
    claims = json.loads(path.read_text(encoding="utf-8")).get("claims", []) if path.exists() else []
    found = next((c for c in claims if c.get("id") == claim), claims[0] if claims else None)
    if found is None:
        print("no claims assessed in this run (analysis.json is missing or has none)")
        return None
    look = {**{k: found.get(k) for k in ("id", "claim", "verdict", "text")},
            "numbers": flatten_numbers(found.get("numbers") or {})}
    if show:
        key_values({k: look[k] for k in ("id", "claim", "verdict", "text")}, title="one claim")
        key_values(look["numbers"] or {"(none)": ""}, title="its numbers")
    return look
