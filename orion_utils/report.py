"""`report.md`: run metadata, the results table of every method, the figures, and the paper's claims.

``write_report(run)`` works from ``metrics.json`` alone (tables and the accuracy/loss figures);
with the analysis (``analysis.analyse_run`` passes it, or ``analysis.json`` is read when present)
it adds the analysis table, accuracy by difficulty, one paragraph per paper claim, the definitions,
and mean ± std over seeds in every cell when several seeds were analysed.

The report's words live here, including those ``analysis.json`` stores: the metric ``DEFINITIONS``,
and each claim's statement and paragraph (``claim_entry``, from the verdicts and numbers of
``claims.claim_evidence``). The analysis computes; this module says it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

from .evaluation import NOT_MEASURED as NOT_MEASURED_TEXT
from .introduction import TOY_CAVEAT, run_introduction  # noqa: F401 (TOY_CAVEAT: report.TOY_CAVEAT)
from .rundir import RunDir
from .sft import load_loss_history

FIGURE_CAPTIONS = {
    "accuracy_pass1": "pass@1 per method and benchmark",
    "accuracy_greedy": "greedy accuracy per method and benchmark",
    "loss_curves": "training loss curves",
    "cot_lengths": "length distributions of training CoTs and evaluation outputs",
    "accuracy_by_difficulty": "accuracy by difficulty",
    "perplexity": "base-student perplexity of each method's training CoTs",
    "step_consistency": "step-level consistency",
    "pass_rates": "base student's pass rate per training question (error exposure)",
}

DEFINITIONS = {  # analysis.json's "definitions", the report's last section
    "cot_perplexity": "base student's perplexity of the method's training CoTs: exp(mean over CoTs of the "
                      "per-token mean NLL of the assistant turn); lower = more tailored to the student",
    "cot_tokens_mean": "mean length of the training CoTs in student tokens",
    "response_tokens_mean": "mean length in tokens of the trained model's evaluation outputs (all benchmarks, "
                            "sampled and greedy)",
    "loss_delta_std": "population std of successive differences of the logged training loss (per training stage, "
                      "pooled); lower = smoother training",
    "accuracy_by_difficulty": "per-problem pass@1 averaged within buckets of the base student's sampled pass rate "
                              "on the benchmark problem (eval/base); base's own row is circular",
    "step_consistency": "toy domain: share of written computation steps 'a op b = c' (compute and check lines; "
                        "reflection lines excluded) whose arithmetic is right, checked with sympy; "
                        "'score' pools steps, 'mean_per_text' averages per text",
    "seeds": "mean ± sample std (n-1) over seeds; std 0 for one seed",
}


def _short(text: str, n: int = 160) -> str:
    one_line = " ".join((text or "").split()).replace("|", "\\|")
    return one_line if len(one_line) <= n else one_line[: n - 1] + "…"


def reflection_section(run: RunDir, max_rows: int = 12) -> list[str]:
    """ORION's reflections: per question the student's wrong attempt, every candidate (its answer,
    verified or not), the acceptance rate, and one accepted rewrite in full."""
    from .jsonl import read_jsonl
    from .records import Problem, Refinement
    from .reflection import acceptance_rate

    path = run.refinements
    if not path.exists():
        return []
    refinements = read_jsonl(path, Refinement)
    reflected = [r for r in refinements if r.wrong_attempt]
    gold = {p.id: p.answer for p in read_jsonl(run.train_problems, Problem)} \
        if run.train_problems.exists() else {}
    kind = refinements[0].reflector if refinements else "?"
    n_cand = sum(r.n_candidates for r in reflected)
    lines = ["## Reflection", "",
             f"Reflector: `{kind}`. {len(reflected)} of {len(refinements)} training questions had a wrong student "
             f"attempt to reflect on; {n_cand} distinct finished candidates, {sum(r.n_accepted for r in reflected)} "
             f"verified; acceptance rate (questions with a verified rewrite) "
             f"**{100 * acceptance_rate(refinements):.1f}%**. Without one, the teacher's CoT is kept.", "",
             "| question | gold | wrong attempt (student's own) | candidates: answer (✓ verified) | accepted |",
             "|---|---|---|---|---|"]
    for r in reflected[:max_rows]:
        cands = r.meta.get("candidates")
        shown = ", ".join(f"{_short(str(c.get('answer')), 40)}{' ✓' if c.get('verified') else ''}" for c in cands) \
            if cands is not None else f"{r.n_candidates} ({r.n_accepted} verified)"
        lines.append(f"| {r.problem_id} | {gold.get(r.problem_id, '')} | {_short(r.wrong_attempt)} | "
                     f"{shown or 'none finished'} | {'yes' if r.accepted else 'no'} |")
    if len(reflected) > max_rows:
        lines.append(f"\n({len(reflected) - max_rows} more in `data/refinements.jsonl`)")
    example = next((r for r in reflected if r.accepted), None)
    if example is not None:
        lines += ["", f"An accepted rewrite ({example.problem_id}, selection `{example.selection_rule}`):", "",
                  "```", example.refined_cot.strip()[:3000], "```"]
    return lines + [""]


def comparison_section(run: RunDir) -> list[str]:
    """``reflection.compare``: the second reflector run on the same wrong attempts, never trained on: its
    acceptance (``acceptance.acceptance_line``) and mechanism beside the run's reflector's, and up to two of
    its accepted rewrites."""
    from .acceptance import acceptance_line
    from .jsonl import read_jsonl
    from .records import Refinement

    stage = run.stage_info("reflection") or {}
    info = stage.get("compare")
    if not info or not run.reflector_comparison.exists():
        return []
    refinements = [r for r in read_jsonl(run.reflector_comparison, Refinement) if r.wrong_attempt]
    text = (f"The `{info['reflector']}` reflector ran beside `{stage.get('reflector')}` on the same "
            f"{len(refinements)} wrong attempts (`reflection.compare`; its rewrites are never trained on, "
            f"`data/{run.reflector_comparison.name}`): acceptance rate **{100 * info['acceptance_rate']:.1f}%** "
            f"(the run's reflector: {100 * (stage.get('acceptance_rate') or 0):.1f}%); "
            f"{acceptance_line(info['acceptance'])}.")
    mechanism = mechanism_text(info.get("mechanism"))
    if mechanism:
        text += f" {mechanism[0].upper()}{mechanism[1:]}."
    lines = [f"### The `{info['reflector']}` reflector beside it", "", text, ""]
    for r in [r for r in refinements if r.accepted][:2]:
        lines += [f"Accepted ({r.problem_id}):", "", "```", r.refined_cot.strip()[:2000], "```", ""]
    if not any(r.accepted for r in refinements):
        lines += ["No rewrite of it was accepted.", ""]
    return lines


def acceptance_section(run: RunDir) -> list[str]:
    """Stage 03's acceptance checks as they ran: rejections per first failed check, what was masked, and
    the chosen rewrites' mean length against their teacher CoTs' (``acceptance.acceptance_summary``)."""
    from .acceptance import acceptance_summary
    from .jsonl import read_jsonl
    from .records import Refinement

    if not run.refinements.exists():
        return []
    mask = ((run.config() or {}).get("reflection") or {}).get("mask_wrong_step", True)
    s = acceptance_summary(read_jsonl(run.refinements, Refinement), bool(mask))
    rejected = ", ".join(f"{k} **{v}**" for k, v in s["rejected"].items())
    others = " (the others quote no wrong line or equation to locate)" if s["masked"] < s["chosen"] else ""
    masked = (f"`mask_wrong_step` took the quoted wrong step out of the loss in **{s['masked']} of {s['chosen']}** "
              f"chosen rewrites{others}" if s["mask_wrong_step"] else "`mask_wrong_step` is off: nothing was masked")
    length = (f" The chosen rewrites are {s['chosen_chars']:.0f} characters long on average, their teacher CoTs "
              f"{s['teacher_chars']:.0f}." if s["chosen"] else "")
    return ["### Acceptance checks", "",
            ("A candidate is accepted when its answer verifies, it quotes the wrong attempt near reflection "
             "language, it keeps the teacher's derived values and it is not a near-copy of the teacher's CoT "
             "(README, \"Acceptance of a rewrite\"). "
             f"Of {s['candidates']} candidates, {s['accepted_candidates']} passed every check; rejected, by the "
             f"first check failed: {rejected}. {masked}.{length}"), ""]


def exposure_section(run: RunDir) -> list[str]:
    """Error exposure's attempts: correct, wrong and unfinished apart, and the errors kept to reflect on."""
    from .exposure import attempt_counts, load_exposure

    if not run.student_attempts.exists() or not run.error_attempts.exists():
        return []
    attempts, errors, _ = load_exposure(run)
    c = attempt_counts(attempts)
    stage = run.stage_info("error_exposure") or {}  # what the stage recorded in the manifest
    limit, included = stage.get("max_new_tokens", "?"), stage.get("unfinished_as_errors", False)
    text = (f"{c['n_attempts']} student attempts: {c['n_correct']} correct, **{c['n_wrong']} wrong**, "
            f"**{c['n_unfinished']} unfinished** (cut off at `exposure.max_new_tokens` = {limit} before a final "
            f"answer). Errors to reflect on: {len(errors)} distinct wrong attempts; unfinished ones "
            f"{'included' if included else 'left out'} (`exposure.unfinished_as_errors: {str(included).lower()}`).")
    return ["## Error exposure", "", text, ""]


def reflection_lines(info: Optional[dict]) -> list:
    """One paragraph on ORION's reflection stage (this run): reflector, acceptance, mechanism."""
    if not info:
        return []
    mech = info.get("mechanism") or {}
    text = f"ORION's reflection (this run): reflector `{info.get('reflector')}`"
    # masking: acceptance_section counts what was masked (the setting alone never says that anything was)
    if info.get("acceptance_rate") is not None:
        text += f", acceptance rate {100 * info['acceptance_rate']:.1f}%"
    if mechanism_text(mech):
        text += f"; {mechanism_text(mech)} (lower = more natural to the student)"
    return [text + ".", ""]


def mechanism_text(mech: Optional[dict]) -> str:
    """ORION's mechanism in words (``reflection.mechanism_perplexity``); '' when no rewrite was accepted."""
    mech = mech or {}
    if not mech.get("n") or mech.get("refined") is None or mech.get("teacher") is None:
        return ""
    return (f"base-student perplexity of the {mech['n']} accepted rewrites {mech['refined']:.3f} vs "
            f"{mech['teacher']:.3f} for the teacher CoTs they replace")


def _pct(rate) -> str:
    return "" if rate is None else f"{100 * rate:.1f}%"


def _mechanism_cell(mech: Optional[dict]) -> str:
    if not mechanism_text(mech):
        return "n = 0"
    return f"{mech['refined']:.3f} vs {mech['teacher']:.3f} (n = {mech['n']})"


def reflection_seed_lines(rows: Optional[list]) -> list[str]:
    """Per seed: the reflector's acceptance rate and the mechanism (base-student perplexity of the accepted
    rewrites vs the teacher CoTs they replace), and the compared reflector's (``reflection.compare``)."""
    rows = [r for r in rows or [] if r.get("reflector")]
    if len(rows) < 2:
        return []
    compared = any(r.get("compare") for r in rows)
    head = "| run | reflector | acceptance | perplexity: accepted rewrites vs teacher CoTs |"
    lines = ["Reflection per seed (stage 03 of each run):", "", head + (" compared | its acceptance | its perplexity |"
                                                                           if compared else ""),
             "|---|---|---:|---|" + ("---|---:|---|" if compared else "")]
    for r in rows:
        c = r.get("compare") or {}
        extra = f" {c.get('reflector', '')} | {_pct(c.get('acceptance_rate'))} | {_mechanism_cell(c.get('mechanism')) if c else ''} |"
        lines.append(f"| {r['run']} | {r['reflector']} | {_pct(r.get('acceptance_rate'))} | "
                     f"{_mechanism_cell(r.get('mechanism'))} |" + (extra if compared else ""))
    return lines + [""]


def budget_lines(run: RunDir, analysis: dict | None = None) -> list[str]:
    """The prompt budget (``orion_utils.budget``): per stage and prompt kind, how many prompts fit as
    built, were cut (the wrong text's middle) or were left out, and the limit they met."""
    rows = [(stage, kind, c) for stage, info in run.manifest().get("stages", {}).items()
            for kind, c in (info.get("prompt_budget") or {}).items()]
    rows += [("analysis", f"judge ({m})", c) for m, r in ((analysis or {}).get("methods") or {}).items()
             for c in ((r.get("judge_consistency") or {}).get("prompt_budget") or {}).values()]
    if not rows:
        return []
    return ["### Prompt budget", "",
            ("Prompts built from long texts, fitted to the engine that reads them (limit = context − max new "
             "tokens): only a wrong attempt's middle is cut, never its final lines; an item whose fixed texts "
             "do not fit is left out."), "",
            "| stage | prompt | fit as built | cut | left out | limit (tokens) | counted by |", "|---|---|---|---|---|---|---|",
            *[f"| {s} | {k} | {c.get('fit', 0)} | {c.get('cut', 0)} | {c.get('left_out', 0)} | "
              f"{c.get('limit')} = {c.get('context')} − {c.get('reserve')} | {c.get('counted', '')} |" for s, k, c in rows],
            ""]


def _read_json(path: Path, default):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return default


def _metadata(run: RunDir, analysis: Optional[dict] = None) -> list[str]:
    config = _read_json(run.config_file, {})
    manifest = run.manifest()
    stages = manifest.get("stages", {})
    student = _read_json(run.student_info, {})
    versions = {}
    for s in stages.values():  # the latest stage's versions win
        versions.update(s.get("package_versions") or {})
    backends = sorted({f"{name}: {s['backend']}" for name, s in stages.items() if s.get("backend")})
    done = {k: v for k, v in stages.items() if v.get("status") == "done"}
    total = sum(float(v.get("wall_seconds") or 0) for v in done.values())
    finished = sorted(v.get("finished_at") for v in done.values() if v.get("finished_at"))
    teacher = config.get("teacher", {}) or {}
    teacher_desc = teacher.get("kind", "?") + (f" `{teacher['model']}`" if teacher.get("model") else "")
    seeds_line = f"- seeds in the profile: {config.get('seeds', '?')}"
    if analysis and (analysis.get("seeds") or {}).get("n", 1) > 1:
        seeds_line += f"; analysed: {analysis['seeds']['n']} runs ({', '.join(analysis['seeds']['runs'])})"
    lines = [
        f"- run: `{run.root.name}`, profile: `{config.get('profile', '?')}`"
        + (f" — {config['description']}" if config.get("description") else ""),
        seeds_line,
        f"- student: `{student.get('model', (config.get('student') or {}).get('model', '?'))}`"
        + (f" ({student['kind']})" if student.get("kind") else ""),
        f"- teacher: {teacher_desc}",
        f"- backends used: {', '.join(backends) or 'n/a (not recorded by the stages)'}; requested: generation "
        f"`{(config.get('generation') or {}).get('backend', '?')}`, training `{(config.get('training') or {}).get('backend', '?')}`",
        f"- time: {total:.0f} s of stage wall time"
        + (f", finished {finished[-1]}" if finished else "") + (
            "; per stage (s): " + ", ".join(f"{k} {float(v.get('wall_seconds') or 0):.0f}" for k, v in done.items())
            if done else ""),
        "- packages: " + (", ".join(f"{k} {v}" for k, v in versions.items()) or "n/a"),
    ]
    return lines


def cell_text(cell, scale: float = 100.0, digits: int = 1) -> str:
    """A table cell: a number, or a {"mean","std","n"} dict rendered 'mean ± std' when n > 1."""
    if cell is None:
        return "–"
    if isinstance(cell, dict):
        if cell.get("mean") is None:
            return "–"
        text = f"{scale * cell['mean']:.{digits}f}"
        if cell.get("n", 1) > 1:
            text += f" ± {scale * cell['std']:.{digits}f}"
        return text
    if isinstance(cell, (int, float)) and math.isfinite(cell):
        return f"{scale * cell:.{digits}f}"
    return "–"


def interval_text(interval: Optional[dict], scale: float = 100.0, digits: int = 1) -> str:
    """' [lo, hi]' of a bootstrap interval (``stats.bootstrap_interval``), '' without one."""
    if not interval or interval.get("lo") is None:
        return ""
    return f" [{scale * interval['lo']:.{digits}f}, {scale * interval['hi']:.{digits}f}]"


def metrics_table(metrics: dict, key: str = "pass@1", intervals: Optional[dict] = None) -> str:
    """Markdown table, one row per method, one column per benchmark. ``metrics``: ``metrics.json``
    (numbers) or ``analysis.aggregate_metrics`` output (cells rendered 'mean ± std' over seeds).
    ``intervals``: ``analysis.json``'s ``intervals["cells"]``: each cell then ends in its 95% interval
    '[lo, hi]' (bootstrap over problems, and seeds)."""
    benchmarks = sorted({b for per in metrics.values() for b in per})
    lines = ["| method | " + " | ".join(benchmarks) + " |", "|---|" + "---:|" * len(benchmarks)]
    for method, per in metrics.items():
        lines.append(f"| {method} | " + " | ".join(
            cell_text((per.get(b) or {}).get(key))
            + interval_text((((intervals or {}).get(method) or {}).get(b) or {}).get(key)) for b in benchmarks) + " |")
    return "\n".join(lines)


def intervals_note(analysis: Optional[dict]) -> list[str]:
    """The sentence under the results tables that says what the brackets are."""
    rule = ((analysis or {}).get("intervals") or {}).get("rule")
    if not rule:
        return []
    return [f"[lo, hi]: {100 * rule['level']:g}% interval, percentile bootstrap over the benchmark's problems and, "
            f"with several seeds, over the seeds (seeds drawn, then problems; {rule['resamples']} resamples, "
            f"bootstrap seed {rule['seed']}).", ""]


def training_set_section(analysis: Optional[dict]) -> list[str]:
    """The training-set table: per method the questions, examples and tokens it trained on, and what was
    left out and why (``analysis.training_set_table``); the question set's rule above it."""
    ts = (analysis or {}).get("training_sets") or {}
    rows = ts.get("methods") or {}
    if not rows:
        return []
    qs = ts.get("question_set") or {}
    lines = ["### Training sets", ""]
    if qs:
        left = "; ".join(f"{n} {why}" for why, n in (qs.get("left_out") or {}).items())
        lines += [f"Question set (stage 01, `data/question_set.json`): {qs.get('n')} questions"
                  + (f"; left out of every method: {left}" if left else "") + f". Rule: {qs.get('rule')}.", ""]
    same = ts.get("same_question_ids")
    lines += [f"Every method trains on the same question ids: **{'yes' if same else 'no'}**. "
              f"Tokens: {ts.get('counted_in', 'tokens')}, of the examples trained on.", "",
              "| method | questions | examples | tokens | left out (why) |", "|---|---:|---:|---:|---|"]
    for m, r in rows.items():
        why = "; ".join(f"{n}: {reason}" for reason, n in (r.get("left_out") or {}).items()) or "–"
        lines.append(f"| {m} | {r['questions']} | {r['examples']} | {r['tokens']} | {why} |")
    return lines + [""]


def _has_key(metrics: dict, key: str) -> bool:
    return any(key in (cells or {}) for per in metrics.values() for cells in per.values())



def analysis_table(analysis: dict) -> str:
    """Per method: training-CoT perplexity, lengths, step consistency, loss stability (seed cells)."""
    agg = (analysis.get("seeds") or {}).get("methods") or {}
    rows = analysis.get("methods") or {}
    lines = ["| method | training CoTs | CoT perplexity ↓ | CoT tokens | output tokens ↓ | "
             "step consistency, CoTs (%) | step consistency, outputs (%) | loss Δ std ↓ |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m in rows:
        a = agg.get(m, {})
        n = rows[m].get("n_training_cots")
        lines.append(
            f"| {m} | {n if n is not None else '–'} | {cell_text(a.get('cot_perplexity'), 1, 3)} | "
            f"{cell_text(a.get('cot_tokens_mean'), 1, 1)} | {cell_text(a.get('response_tokens_mean'), 1, 1)} | "
            f"{cell_text(a.get('step_consistency_training'))} | {cell_text(a.get('step_consistency_evaluation'))} | "
            f"{cell_text(a.get('loss_delta_std'), 1, 4)} |")
    return "\n".join(lines)


def difficulty_table(analysis: dict) -> str:
    """Rows: methods; columns: difficulty buckets (with problem counts), pooled over benchmarks."""
    difficulty = analysis.get("difficulty") or {}
    buckets = [b[0] for b in difficulty.get("buckets") or []]
    counts = (difficulty.get("counts") or {})
    agg = (analysis.get("seeds") or {}).get("methods") or {}
    benches = sorted({b for a in agg.values() for b in (a.get("accuracy_by_difficulty") or {})} - {"all"})
    out = []
    for bench in benches + ["all"]:
        rows = [(m, (a.get("accuracy_by_difficulty") or {}).get(bench)) for m, a in agg.items()]
        rows = [(m, r) for m, r in rows if r]
        if not rows:
            continue
        c = counts.get(bench, {})
        header = [f"{b} [{lo:g}, {hi:g}{']' if i == len(buckets) - 1 else ')'} (n={c.get(b, '?')})"
                  for i, (b, lo, hi) in enumerate(difficulty["buckets"])]
        out += [f"**{bench if bench != 'all' else 'all benchmarks pooled'}**", "",
                "| method | " + " | ".join(header) + " |", "|---|" + "---:|" * len(buckets)]
        for m, r in rows:
            out.append(f"| {m} | " + " | ".join(cell_text(r.get(b)) for b in buckets) + " |")
        out.append("")
    return "\n".join(out)


# --- the paper's claims, in words ----------------------------------------------------------------

CLAIMS = {
    "headline": "ORION beats every baseline by more than {margin:g} points",
    "coherence": "ORION's CoTs are more coherent and logically consistent",
    "stability": "Training on ORION's CoTs is more stable",
    "verbosity": "ORION's outputs are less verbose",
}
"""What each claim id (``claims.claim_evidence``) stands for; ``{margin}``: the headline's margin in points."""

COMPARED = {
    "cot_perplexity": ("base-student perplexity of the training CoTs", 1.0, 2),
    "step_consistency_training": ("step consistency of the training CoTs (%)", 100.0, 1),
    "step_consistency_evaluation": ("step consistency of the evaluation outputs (%)", 100.0, 1),
    "loss_delta_std": ("std of successive training-loss differences", 1.0, 4),
    "response_tokens_mean": ("mean tokens per evaluation output", 1.0, 1),
}
"""How a claim's paragraph names and formats each compared metric: (label, scale, digits)."""


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


def _headline_text(evidence: dict, seeds_note: str, toy_note: str) -> str:
    if evidence.get("rule") == "paired bootstrap":
        return _headline_interval_text(evidence, toy_note)
    parts = []
    for row in evidence["rows"]:
        diff, within = row["margin_points"], row["spread_points"]
        note = "; within the seeds' spread: no difference" if within and abs(diff) <= within else ""
        parts.append(f"{row['benchmark']}: ORION {cell_text(row['orion'], 100, 1)} vs best baseline "
                     f"{row['best_baseline']} {cell_text(row['best'], 100, 1)} ({diff:+.1f} points{note})")
    return (f"pass@1 (%), ORION against the strongest of {', '.join(evidence['baselines']) or 'no baseline'} per "
            f"benchmark (needs > {evidence['margin']:g} points on each): "
            + ("; ".join(parts) if parts else "no comparable numbers") + "." + seeds_note + toy_note)


def _coherence_text(evidence: dict, seeds_note: str, toy_note: str) -> str:
    texts = [_comparison_text(c) for c in evidence["comparisons"]]
    outcomes = [o["outcome"] for c in evidence["comparisons"] for o in c["others"]]
    step_compared = any(t for c, t in zip(evidence["comparisons"], texts) if c["key"].startswith("step_consistency"))
    base_note = ""
    if evidence["base"]:
        base_note = f" For reference, base's outputs: {cell_text(evidence['base'], 100, 1)}%."
    return ("; ".join(t for ts in texts for t in ts) or "no comparable numbers") + "." + base_note \
        + (" Ties count for neither side." if 0 in outcomes else "") \
        + (" Step consistency is measured on the toy domain's written computations only; reflection lines are "
           "excluded because they quote the wrong computation on purpose." if step_compared else "") \
        + seeds_note


def _stability_text(evidence: dict, seeds_note: str, toy_note: str) -> str:
    return (("; ".join(_comparison_text(evidence["comparisons"][0])) or "no comparable numbers") + "."
            + " The methods train on different texts, so their loss scales differ; read this as a rough indicator."
            + seeds_note)


def _verbosity_text(evidence: dict, seeds_note: str, toy_note: str) -> str:
    base_note = ""
    if evidence["base"]:
        base_note = f" For reference, base: {cell_text(evidence['base'], 1.0, 1)} tokens."
    return ("; ".join(_comparison_text(evidence["comparisons"][0])) or "no comparable numbers") + "." \
        + base_note + seeds_note


_CLAIM_TEXTS = {"headline": _headline_text, "coherence": _coherence_text, "stability": _stability_text,
                "verbosity": _verbosity_text}


def claim_entry(evidence: dict, n_seeds: int = 1, toy: bool = False) -> dict:
    """A claim as ``analysis.json`` stores it and the report shows it: ``{"id", "claim", "verdict", "text",
    "numbers"}``, from one entry of ``claims.claim_evidence``. ``text``: the verdict in bold, then the
    comparisons behind it, with the notes on seeds (``n_seeds``) and, for the headline, on toy runs."""
    seeds_note = (f" Numbers are means over {n_seeds} seeds (± sample std); a difference within the sum of the two "
                  "stds counts as no difference." if n_seeds > 1 else
                  " One seed: no spread is known, so every difference counts.")
    toy_note = (" Toy run: a rule-assisted reflector stands in for free-form reflection (rules find the diverging "
                "step and phrase its check; with `reflector: student` the tiny student writes the rest), so this is "
                "a check of the pipeline and of the mechanism, not of the paper.") if toy else ""
    claim_id, verdict = evidence["id"], evidence["verdict"]
    body = _CLAIM_TEXTS[claim_id](evidence, seeds_note, toy_note)
    return {"id": claim_id, "claim": CLAIMS[claim_id].format(margin=evidence.get("margin")),
            "verdict": verdict, "text": f"**{verdict.capitalize()} by this run.** " + body,
            "numbers": evidence["numbers"]}


def _figure(name: str, figures: dict, run: RunDir) -> list[str]:
    rel = figures.get(name)
    if not rel or not run.path(rel).exists():
        return []
    return [f"![{FIGURE_CAPTIONS.get(name, name)}]({rel})", ""]


def _basic_figures(run: RunDir, metrics: dict) -> dict:
    """The figures ``metrics.json`` and the loss logs alone give (report without analysis)."""
    import matplotlib.pyplot as plt

    from .plots import accuracy_bars, loss_curves, measured

    made = {}
    for key, name in (("pass@1", "accuracy_pass1"), ("greedy", "accuracy_greedy")):
        if measured(metrics, key):  # a metric the run did not measure gets no figure (never bars at 0)
            plt.close(accuracy_bars(metrics, key, run.figure(name)))
            made[name] = run.relative(run.figure(name))
    histories = {m: load_loss_history(run, m) for m in metrics if m != "base"}
    histories = {m: h for m, h in histories.items() if h}
    if histories:
        plt.close(loss_curves(histories, run.figure("loss_curves")))
        made["loss_curves"] = run.relative(run.figure("loss_curves"))
    return made


def write_report(run: RunDir, analysis: Optional[dict] = None) -> Path:
    """Write ``report.md`` (and, without an analysis, the accuracy and loss figures); returns its path.

    ``analysis``: the dict ``analysis.analyse_run`` builds; None reads ``analysis.json`` when present.
    """
    run.require(run.metrics, stage_hint="07_evaluation")
    metrics = json.loads(run.metrics.read_text(encoding="utf-8"))
    if analysis is None and run.analysis_file.exists():
        analysis = _read_json(run.analysis_file, None)
    figures = dict((analysis or {}).get("figures") or {}) or _basic_figures(run, metrics)
    table_metrics = (analysis or {}).get("metrics") or metrics
    n_seeds = ((analysis or {}).get("seeds") or {}).get("n", 1)
    config = _read_json(run.config_file, {})
    toy = (analysis or {}).get("toy", (config.get("student") or {}).get("model") == "toy")
    seeds_note = f" — mean ± std over {n_seeds} seeds" if n_seeds > 1 else ""

    text = ["# Run report", ""]
    intro = run_introduction(config)[1] if config else (TOY_CAVEAT if toy else "")
    if intro:
        text += [f"> {intro}", ""]
    text += ["## Run", "", *_metadata(run, analysis), ""]
    text += _results_section(run, analysis, table_metrics, figures, seeds_note)
    text += exposure_section(run)
    text += reflection_section(run)
    text += acceptance_section(run)
    text += comparison_section(run)
    text += budget_lines(run, analysis)
    text += ["## Training", ""] + training_set_section(analysis)
    text += _figure("loss_curves", figures, run) + _figure("pass_rates", figures, run)
    if analysis:
        text += _analysis_section(run, analysis, figures, seeds_note)
        text += _claims_section(analysis, toy)
    path = run.report
    path.write_text("\n".join(text), encoding="utf-8")
    return path


def _results_section(run: RunDir, analysis: dict | None, table_metrics: dict, figures: dict,
                     seeds_note: str) -> list[str]:
    """The report's Results: pass@1 (and greedy) per method and benchmark, the intervals, the accuracy figures."""
    cell_intervals = ((analysis or {}).get("intervals") or {}).get("cells")
    text = ["## Results", "", f"### pass@1 (%){seeds_note}", "",
            "pass@1: mean over the sampled solutions of a problem, averaged over problems.", ""]
    # a metric the run did not measure is said to be so, never tabled as dashes or drawn as 0
    text += ([metrics_table(table_metrics, "pass@1", cell_intervals), ""] if _has_key(table_metrics, "pass@1")
             else [f"{NOT_MEASURED_TEXT['pass@1']}.", ""])
    text += [f"### greedy accuracy (%){seeds_note}", ""]
    text += ([metrics_table(table_metrics, "greedy", cell_intervals), ""] if _has_key(table_metrics, "greedy")
             else [f"{NOT_MEASURED_TEXT['greedy']}.", ""])
    text += intervals_note(analysis)
    return text + _figure("accuracy_pass1", figures, run) + _figure("accuracy_greedy", figures, run)


def _analysis_section(run: RunDir, analysis: dict, figures: dict, seeds_note: str) -> list[str]:
    """The report's Analysis: the per-method table, reflection's numbers, their figures, accuracy by difficulty."""
    text = ["## Analysis", "", f"Per method{seeds_note}; ↓ marks lower-is-better.", "",
            analysis_table(analysis), ""]
    errors = {m: r["cot_perplexity_error"] for m, r in (analysis.get("methods") or {}).items()
              if r.get("cot_perplexity_error")}
    if errors:
        text += ["No CoT perplexity for " + ", ".join(f"{m} ({e})" for m, e in errors.items()) + ".", ""]
    text += reflection_lines(analysis.get("reflection"))
    text += reflection_seed_lines(analysis.get("reflection_seeds"))
    text += _figure("perplexity", figures, run) + _figure("cot_lengths", figures, run)
    text += _figure("step_consistency", figures, run)
    diff_table = difficulty_table(analysis)
    if diff_table:
        text += ["### Accuracy by difficulty", "",
                 "Difficulty of a benchmark problem = the base student's pass rate on it (its sampled "
                 "evaluation solutions, eval/base); n: problems per bucket in this run. Cells: pass@1 (%) averaged over "
                 "the bucket's problems. "
                 "base's own row is circular (its results define the buckets).", "", diff_table]
        text += _figure("accuracy_by_difficulty", figures, run)
    return text


def _claims_section(analysis: dict, toy: bool) -> list[str]:
    """The report's Paper claims, one verdict and paragraph each, and the definitions of its terms."""
    text = ["## Paper claims", ""]
    if toy:
        text += ["Toy run: the verdicts below say whether the pipeline's numbers point the paper's way on a "
                 "synthetic task with a tiny student and a rule-assisted reflector standing in for free-form reflection; "
                 "they do not test the paper.", ""]
    for i, claim in enumerate(analysis.get("claims") or [], start=1):
        text += [f"### Claim {i}: {claim['claim']} — {claim['verdict']}", "", claim["text"], ""]
    text += ["## Definitions", ""]
    return text + [f"- **{k}**: {v}" for k, v in (analysis.get("definitions") or {}).items()] + [""]


def write_students_report(run: RunDir, runs: dict) -> Path:
    """The combined ``report.md`` of a profile with several ``students`` (``runner.run_students``): one
    table, a row per student and method, pass@1 per benchmark with its interval (each student's
    ``analysis.json``, else its ``metrics.json``), each student's headline verdict and a link to its report.
    ``runs``: {student name: its run directory}."""
    rows, benchmarks, verdicts = [], set(), []
    for name, path in runs.items():
        sub = RunDir(path)
        if not sub.metrics.exists():
            continue
        analysis = _read_json(sub.analysis_file, {}) if sub.analysis_file.exists() else {}
        metrics = analysis.get("metrics") or _read_json(sub.metrics, {})
        cells = (analysis.get("intervals") or {}).get("cells") or {}
        model = (_read_json(sub.student_info, {}) or {}).get("model") or ((sub.config() or {}).get("student") or {}).get("model", "?")
        for method, per in metrics.items():
            benchmarks |= set(per)
            rows.append((name, model, method, per, cells.get(method) or {}))
        headline = next((c for c in analysis.get("claims") or [] if c.get("id") == "headline"), None)
        link = run.relative(sub.report) if sub.report.exists() else ""
        verdicts.append(f"- `{name}` (`{model}`): headline — {headline['verdict'] if headline else 'not analysed'}"
                        + (f"; [its report]({link})" if link else ""))
    order = sorted(benchmarks)
    lines = ["# Run report: several students", "",
             "One pipeline run per student of the profile's `students`, each in `students/<name>/` with its own "
             "report; here pass@1 (%) of every student and method, with its 95% interval where analysed.", "",
             "| student | method | " + " | ".join(order) + " |", "|---|---|" + "---:|" * len(order)]
    for name, _, method, per, cells in rows:
        lines.append(f"| {name} | {method} | " + " | ".join(
            cell_text((per.get(b) or {}).get("pass@1")) + interval_text((cells.get(b) or {}).get("pass@1"))
            for b in order) + " |")
    text = lines + ["", "## Per student", ""] + verdicts + [""]
    run.report.write_text("\n".join(text), encoding="utf-8")
    return run.report
