"""The words of the report's claims: the paper's three claims (``CLAIMS``) and our own measurements
(``OWN_MEASURES``), each statement and the paragraph that explains a verdict (``claim_entry``,
``own_entry``), from the verdicts and numbers of ``claims.claim_evidence`` and ``claims.own_evidence``.

The paper (ORION: Wu, Li, Liu et al., arXiv 2505.22131) claims three things: more than 2 points over all
baselines on GSM-Hard, MATH500, AIME24 and AMC23; CoTs of higher coherence and logical consistency; more
stable training. Those, and only those, are called the paper's claims here. What else we measure (output
length, unfinished outputs) is ours and is worded as a measurement, never as a claim of the paper.
"""
from __future__ import annotations

from .report import cell_text

PAPER = "the ORION paper (Wu, Li, Liu et al., arXiv 2505.22131)"
PAPER_BENCHMARKS = {"gsm_hard": "GSM-Hard", "math500": "MATH500", "aime24": "AIME24", "amc23": "AMC23"}

CLAIMS = {
    "headline": "ORION beats all baselines by more than {margin:g} points on GSM-Hard, MATH500, AIME24 and AMC23",
    "coherence": "ORION's CoTs have higher coherence and logical consistency",
    "stability": "Training on ORION's CoTs is more stable",
}
"""The paper's three claims, as it states them, by claim id (``claims.PAPER_CLAIMS``); ``{margin}``: the
headline's margin in points."""

OWN_MEASURES = {
    "verbosity": "Output length: are ORION's evaluation outputs shorter than the other trained methods'?",
    "unfinished": "Unfinished outputs: the share of evaluation outputs cut off at `evaluation.max_new_tokens`",
}
"""Our own measurements (``claims.OWN_MEASUREMENTS``), by id: not claims of the paper."""

OWN_VERDICTS = {"supported": "yes", "not supported": "no", "mixed": "mixed", "cannot be assessed": "cannot be assessed",
                "measured": "measured"}
"""An own measurement's comparison outcome in words (it is no claim, so it is not 'supported')."""

COMPARED = {
    "cot_perplexity": ("base-student perplexity of the training CoTs", 1.0, 2),
    "judge_consistency": ("the judge's step consistency of the training CoTs (%)", 100.0, 1),
    "step_consistency_training": ("step consistency of the training CoTs (%)", 100.0, 1),
    "step_consistency_evaluation": ("step consistency of the evaluation outputs (%)", 100.0, 1),
    "loss_delta_std": ("std of successive training-loss differences", 1.0, 4),
    "response_tokens_mean": ("mean tokens per evaluation output", 1.0, 1),
}
"""How a paragraph names and formats each compared metric: (label, scale, digits)."""

CIRCULAR = ("`reflection.selection: perplexity` chose ORION's rewrites by minimising this very quantity, the base "
            "student's perplexity, so it favours ORION by construction")


def _comparison_text(comparison: dict) -> list[str]:
    """'label: ORION x vs a y, b z (lower is better)' for one compared metric; [] with nothing compared."""
    label, scale, digits = COMPARED[comparison["key"]]
    texts = []
    for other in comparison["others"]:
        tie = " (within the seeds' spread: no difference)" if other["outcome"] == 0 and other["spread"] else ""
        texts.append(f"{other['method']} {cell_text(other['cell'], scale, digits)}{tie}")
    if not texts:
        return []
    head = f"{label}: ORION {cell_text(comparison['orion'], scale, digits)} vs " + ", ".join(texts)
    return [head + (" (lower is better)" if comparison["lower_is_better"] else " (higher is better)")]


def _headline_interval_text(evidence: dict, toy_note: str) -> str:
    """The headline judged against paired bootstrap intervals of ORION − each baseline, benchmark by benchmark."""
    parts = []
    for row in evidence["rows"]:
        vs = row.get("vs") or {}
        each = ", ".join(f"{m} {d['diff']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}] {d['status']}" for m, d in vs.items())
        n = next(iter(vs.values()), {}).get("n_problems")
        parts.append(f"{row['benchmark']} ({n} problems; one problem = {100 / n:.1f} points): {row.get('status')}"
                     f" — ORION − {each}" if n else f"{row['benchmark']}: no paired results")
    rule = (f"Rule: per benchmark and baseline, a paired bootstrap 95% interval of ORION − baseline in pass@1 points "
            f"(the same problems, and seeds, resampled for both). 'beats' when its lower bound is above "
            f"{evidence['margin']:g}; otherwise 'too small to decide' when it is wider than "
            f"{evidence['max_width']:g} points, 'no difference' when it contains 0, 'worse' when it lies below 0, "
            f"'below the margin' when it lies above 0 but not surely above {evidence['margin']:g}. The claim needs "
            f"'beats' against every baseline on every benchmark; benchmarks too small to decide count for neither side.")
    return ("; ".join(parts) if parts else "no comparable numbers") + ". " + rule + toy_note


def _benchmarks_note(evidence: dict) -> str:
    """Which of the paper's benchmarks this run has, when not all four."""
    run = [row["benchmark"] for row in evidence.get("rows") or []]
    missing = [name for key, name in PAPER_BENCHMARKS.items() if key not in run]
    if not run or not missing:
        return ""
    return (f" The paper's benchmarks are {', '.join(PAPER_BENCHMARKS.values())}; this run compares on "
            f"{', '.join(run)}" + (f" (not {', '.join(missing)})" if len(missing) < len(PAPER_BENCHMARKS) else "") + ".")


def _headline_text(evidence: dict, seeds_note: str, toy_note: str) -> str:
    if evidence.get("rule") == "paired bootstrap":
        return _headline_interval_text(evidence, toy_note) + _benchmarks_note(evidence)
    parts = []
    for row in evidence["rows"]:
        diff, within = row["margin_points"], row["spread_points"]
        note = "; within the seeds' spread: no difference" if within and abs(diff) <= within else ""
        parts.append(f"{row['benchmark']}: ORION {cell_text(row['orion'], 100, 1)} vs best baseline "
                     f"{row['best_baseline']} {cell_text(row['best'], 100, 1)} ({diff:+.1f} points{note})")
    return (f"pass@1 (%), ORION against the strongest of {', '.join(evidence['baselines']) or 'no baseline'} per "
            f"benchmark (needs > {evidence['margin']:g} points on each): "
            + ("; ".join(parts) if parts else "no comparable numbers") + "." + seeds_note + toy_note
            + _benchmarks_note(evidence))


def _coherence_caveat(evidence: dict) -> str:
    """What decided coherence, said before the numbers: the measures that did not choose the rewrites, or the
    perplexity alone, with the circularity stated when ``reflection.selection`` is ``perplexity``."""
    basis, circular = evidence.get("basis"), evidence.get("circular")
    if basis == "perplexity" and circular:
        return (f"Only the base student's perplexity of the training CoTs measures coherence in this run, and "
                f"{CIRCULAR}: this verdict is not evidence for the claim. A model that did not select the rewrites "
                f"measures it with `analysis.judge` (the teacher judges each step's consistency). ")
    if basis == "perplexity":
        return ("Only the base student's perplexity of the training CoTs measures coherence in this run "
                f"(`reflection.selection: {evidence.get('selection')}`: not chosen by perplexity). ")
    if basis == "independent":
        why = f": {CIRCULAR}" if circular else ""
        return (f"Decided by measures that did not choose ORION's rewrites; the base student's perplexity is shown "
                f"for reference and not counted{why}. ")
    return ""


def _coherence_text(evidence: dict, seeds_note: str, toy_note: str) -> str:
    reference = evidence.get("basis") == "independent"  # the perplexity is then shown, not counted
    texts = [[t + " — for reference, not counted" for t in _comparison_text(c)]
             if reference and c["key"] == "cot_perplexity" else _comparison_text(c) for c in evidence["comparisons"]]
    outcomes = [o["outcome"] for c in evidence["comparisons"] for o in c["others"]]
    step_compared = any(t for c, t in zip(evidence["comparisons"], texts) if c["key"].startswith("step_consistency"))
    base_note = ""
    if evidence["base"]:
        base_note = f" For reference, base's outputs: {cell_text(evidence['base'], 100, 1)}%."
    return _coherence_caveat(evidence) \
        + ("; ".join(t for ts in texts for t in ts) or "no comparable numbers") + "." + base_note \
        + (" Ties count for neither side." if 0 in outcomes else "") \
        + (" Step consistency is measured on the toy domain's written computations only; reflection lines are "
           "excluded because they quote the wrong computation on purpose." if step_compared else "") \
        + seeds_note


def _stability_text(evidence: dict, seeds_note: str, toy_note: str) -> str:
    return (("; ".join(_comparison_text(evidence["comparisons"][0])) or "no comparable numbers") + "."
            + " The methods train on different texts, so their loss scales differ; read this as a rough indicator."
            + seeds_note)


_CLAIM_TEXTS = {"headline": _headline_text, "coherence": _coherence_text, "stability": _stability_text}


def _seeds_note(n_seeds: int) -> str:
    return (f" Numbers are means over {n_seeds} seeds (± sample std); a difference within the sum of the two "
            "stds counts as no difference." if n_seeds > 1 else
            " One seed: no spread is known, so every difference counts.")


def claim_entry(evidence: dict, n_seeds: int = 1, toy: bool = False) -> dict:
    """A claim as ``analysis.json`` stores it and the report shows it: ``{"id", "claim", "verdict", "text",
    "numbers"}``, from one entry of ``claims.claim_evidence``. ``text``: the verdict in bold, then the
    comparisons behind it, with the notes on seeds (``n_seeds``) and, for the headline, on toy runs."""
    toy_note = (" Toy run: a rule-assisted reflector stands in for free-form reflection (rules find the diverging "
                "step and phrase its check; with `reflector: student` the tiny student writes the rest), so this is "
                "a check of the pipeline and of the mechanism, not of the paper.") if toy else ""
    claim_id, verdict = evidence["id"], evidence["verdict"]
    body = _CLAIM_TEXTS[claim_id](evidence, _seeds_note(n_seeds), toy_note)
    return {"id": claim_id, "claim": CLAIMS[claim_id].format(margin=evidence.get("margin")),
            "verdict": verdict, "text": f"**{verdict.capitalize()} by this run.** " + body,
            "numbers": evidence["numbers"]}


# --- our own measurements ------------------------------------------------------------------------


def _verbosity_text(evidence: dict, seeds_note: str) -> str:
    base_note = ""
    if evidence["base"]:
        base_note = f" For reference, base: {cell_text(evidence['base'], 1.0, 1)} tokens."
    return ("; ".join(_comparison_text(evidence["comparisons"][0])) or "no comparable numbers") + "." \
        + base_note + seeds_note


def _unfinished_text(evidence: dict, seeds_note: str) -> str:
    parts = []
    for key, label in (("unfinished_rate", "sampled"), ("greedy_unfinished_rate", "greedy")):
        per = (evidence["numbers"] or {}).get(key) or {}
        if per:
            parts.append(f"{label}: " + "; ".join(
                f"{m} " + ", ".join(f"{b} {cell_text(c, 100, 1)}%" for b, c in benches.items())
                for m, benches in per.items()))
    if not parts:
        return "no unfinished rates in this run's metrics."
    return ("Outputs cut off at `evaluation.max_new_tokens`, whatever answer can be read from them; pass@1 and "
            "greedy accuracy count them as wrong. " + " — ".join(parts) + "." + seeds_note)


_OWN_TEXTS = {"verbosity": _verbosity_text, "unfinished": _unfinished_text}


def own_entry(evidence: dict, n_seeds: int = 1) -> dict:
    """One of our own measurements as ``analysis.json`` stores it (``own_measurements``) and the report shows
    it: ``{"id", "measure", "verdict", "text", "numbers"}``, from one entry of ``claims.own_evidence``; the
    verdict in words (``OWN_VERDICTS``: yes, no, mixed, measured), never 'supported'."""
    own_id = evidence["id"]
    verdict = OWN_VERDICTS.get(evidence["verdict"], evidence["verdict"])
    return {"id": own_id, "measure": OWN_MEASURES[own_id], "verdict": verdict,
            "text": _OWN_TEXTS[own_id](evidence, _seeds_note(n_seeds)), "numbers": evidence["numbers"]}
