"""`report.md`: run metadata, the results table of every method, the figures, and the paper's claims.

``write_report(run)`` works from ``metrics.json`` alone (tables, the unfinished rates and the accuracy/loss
figures); with the analysis (``analysis.analyse_run`` passes it, or ``analysis.json`` is read when present)
it adds the analysis table, accuracy by difficulty, one paragraph per paper claim (the paper's three), our
own measurements apart from them, the definitions, and mean ± std over seeds in every cell when several
seeds were analysed.

The report's words live here, including those ``analysis.json`` stores: the metric ``DEFINITIONS``; each
claim's statement and paragraph are ``claim_words``'s (``claim_entry``, ``own_entry``, from the verdicts
and numbers of ``claims.claim_evidence`` and ``claims.own_evidence``). The analysis computes; these say it.
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
    "judge_consistency": "real runs with analysis.judge: the mean share of a training CoT's steps that the judge (the "
                         "teacher, asked whether each step follows; not the base student whose perplexity may have "
                         "chosen ORION's rewrites) finds consistent",
    "unfinished_rate": "share of evaluation outputs cut off at evaluation.max_new_tokens, whatever answer can be "
                       "read from them (sampled; greedy_unfinished_rate: greedy); pass@1 and greedy accuracy count "
                       "them as wrong",
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
            ("A candidate is judged by what it adds to or changes in the teacher's CoT: it is accepted when it "
             "finished, its answer verifies, the added text is no echo of the prompt nor another problem's "
             "solution, it carries on to the end with the teacher's derived values, it adds more than a copy "
             "would, and it quotes the wrong step near reflection language and gives the correction "
             "(docs/lab_record.md, \"Stage 03's acceptance defaults\"). "
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
            f"**{c['n_unfinished']} unfinished** (cut off at `exposure.max_new_tokens` = {limit}, whatever answer "
            f"they state; never correct). Errors to reflect on: {len(errors)} distinct wrong attempts; unfinished ones "
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


def teacher_check_lines(run: RunDir) -> list[str]:
    """Stage 01's check of the model the API server says served the teacher's CoTs (a warning when another
    than ``teacher.model``), and the prices with the date they were read (``teacher.price_date``)."""
    info, teacher = run.stage_info("teacher_cots") or {}, (run.config() or {}).get("teacher") or {}
    lines = [f"> **Teacher**: {info['served_model_warning']}", ""] if info.get("served_model_warning") else []
    served = ", ".join(f"`{m}` ({n})" for m, n in (info.get("served_models") or {}).items())
    if served and not lines:
        lines += [f"- teacher replies served by (the server's word): {served}", ""]
    if teacher.get("kind") == "api" and (teacher.get("price_input_per_m") or teacher.get("price_output_per_m")):
        lines += [f"- teacher prices (USD per million tokens, the provider's): input {teacher.get('price_input_per_m')}, "
                  f"output {teacher.get('price_output_per_m')}, read on {teacher.get('price_date') or 'an unstated date'}", ""]
    return lines


def edit_pairs_section(run: RunDir) -> list[str]:
    """EDIT's dual pairs (``models/edit/pairs_summary.json``): pairs of each kind, the teacher's replies
    rejected, the key-token share EDIT's premise rests on (median, p90), the pairs dropped above it."""
    from .edit_pairs import summary_text

    summary = _read_json(run.edit().pair_summary, None)
    if not summary:
        return []
    return ["## EDIT's dual pairs", "",
            (summary_text(summary) + ". The key-token share of a CoT is the share of its tokens, in the student's "
             "tokenizer, that the alignment of the pair marks key: EDIT's stage 2 trains on those (weight α in the "
             "correct CoT, β in the wrong one); near 100%, it is SFT with a reweighting of every token."), ""]


def teacher_bill_lines(run: RunDir) -> list[str]:
    """What the teacher cost the whole run (``accounting.run_bill``): the replies in its one cache (the top
    run's ``teacher_cache``, shared by every seed and student), each paid once, by request kind; and how
    many requests of stages 01, 03 (reflection.judge), 05 and 06 the cache answered instead. [] without a paid
    (api) teacher."""
    from .teachers.api.accounting import Prices, run_bill
    from .teachers.cache import CACHE_FILENAME, TeacherCache

    top = run.top()
    if not (top.teacher_cache / CACHE_FILENAME).is_file():
        return []
    teacher = (_read_json(run.config_file, {}) or _read_json(top.config_file, {})).get("teacher") or {}
    prices = Prices(float(teacher.get("price_input_per_m") or 0), float(teacher.get("price_output_per_m") or 0))
    with TeacherCache(top.teacher_cache) as cache:
        paid = cache.paid_usage()
    runs = top.runs_within()
    bill = run_bill(paid, [s["teacher_usage"] for r in runs for s in r.manifest().get("stages", {}).values()
                           if s.get("teacher_usage")], prices)
    usd = (lambda x: f"{x:.2f}") if bill["priced"] else (lambda x: "– (no prices)")
    rows = [(k, r) for k, r in sorted(bill["by_kind"].items())] + [("**total**", bill["total"])]
    st = bill["stages"]
    return ["### Teacher: requests and tokens paid", "",
            (f"One cache of teacher replies for the whole run ({len(runs)} run(s): seeds and students), keyed by "
             "the request (model, messages, sampling parameters, sample index): each request is paid once"
             + (" per seed (`teacher.samples_per_seed`)." if teacher.get("samples_per_seed") else ".")), "",
            "| request | paid requests | prompt tokens | output tokens | USD |", "|---|---:|---:|---:|---:|",
            *[f"| {k} | {r['requests']} | {r['prompt_tokens']:,} | {r['completion_tokens']:,} | {usd(r['cost_usd'])} |"
              for k, r in rows], "",
            (f"The latest run of stages 01, 03 (with `reflection.judge`), 05 and 06 in each took {st['cache_hits']} "
             "replies from the cache "
             f"(paid for nothing) and {st['requests_succeeded']} from new requests ({st['requests_sent']} attempts, "
             f"{st['failures']} failed after their last retry, {st['discarded_replies']} malformed replies billed "
             "and discarded)."), ""]


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
    judged = any((agg.get(m) or {}).get("judge_consistency") for m in rows)  # the judge's column, when it ran
    lines = ["| method | training CoTs | CoT perplexity ↓ | CoT tokens | output tokens ↓ | "
             "step consistency, CoTs (%) | step consistency, outputs (%) | loss Δ std ↓ |"
             + (" judge consistency, CoTs (%) |" if judged else ""),
             "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if judged else "")]
    for m in rows:
        a = agg.get(m, {})
        n = rows[m].get("n_training_cots")
        lines.append(
            f"| {m} | {n if n is not None else '–'} | {cell_text(a.get('cot_perplexity'), 1, 3)} | "
            f"{cell_text(a.get('cot_tokens_mean'), 1, 1)} | {cell_text(a.get('response_tokens_mean'), 1, 1)} | "
            f"{cell_text(a.get('step_consistency_training'))} | {cell_text(a.get('step_consistency_evaluation'))} | "
            f"{cell_text(a.get('loss_delta_std'), 1, 4)} |" + (f" {cell_text(a.get('judge_consistency'))} |" if judged else ""))
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


def unfinished_section(run: RunDir, metrics: dict, seeds_note: str = "") -> list[str]:
    """Beside each accuracy, the share of unfinished outputs per method and benchmark (``metrics.json``'s
    ``unfinished_rate`` and ``greedy_unfinished_rate``) and how they count: as wrong."""
    keys = [(k, label) for k, label in (("unfinished_rate", "sampled, beside pass@1"),
                                        ("greedy_unfinished_rate", "greedy, beside greedy accuracy"))
            if _has_key(metrics, k)]
    if not keys:
        return []
    limit = ((run.config() or {}).get("evaluation") or {}).get("max_new_tokens", "?")
    text = [f"### Unfinished outputs (%){seeds_note}", "",
            f"An output is **unfinished** when it hit `evaluation.max_new_tokens` = {limit} before its turn ended, "
            "whatever answer can be read from it (a box or a cued \"the answer is X\" written before the cut). "
            "pass@1 and greedy accuracy count an unfinished output as **wrong**; here is how many there were.", ""]
    for key, label in keys:
        text += [f"Unfinished, {label}:", "", metrics_table(metrics, key), ""]
    return text


def tailored_exam_section(run: RunDir) -> list[str]:
    """Tailored Learning's exams, round by round (``rounds.json``): accuracy, and the wrong and the unfinished
    answers apart (an unfinished one is neither correct nor a wrong rationale)."""
    path = run.tailored().rounds_summary
    rounds = [r for r in _read_json(path, []) if r.get("n_exam_attempts")] if path.exists() else []
    if not rounds:
        return []
    limit = ((run.config() or {}).get("tailored") or {}).get("exam_max_new_tokens", "?")
    lines = ["## Tailored Learning's exams", "",
             f"Each round's exam: the student's answers, graded. Unfinished: cut off at "
             f"`tailored.exam_max_new_tokens` = {limit}, whatever answer can be read from them; neither correct nor "
             "a wrong rationale for the teacher to tailor to.", "",
             "| round | answers | exam accuracy (%) | wrong | unfinished | distinct wrong rationales |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rounds:
        acc = r.get("exam_accuracy")
        lines.append(f"| {r.get('round')} | {r['n_exam_attempts']} | {'–' if acc is None else f'{100 * acc:.1f}'} | "
                     f"{r.get('n_exam_wrong', '–')} | {r.get('n_exam_unfinished', '–')} | {r.get('n_wrong_rationales')} |")
    return lines + [""]


def own_section(analysis: dict) -> list[str]:
    """Our own measurements (``analysis.json``'s ``own_measurements``): output length, unfinished outputs;
    not claims of the paper."""
    own = analysis.get("own_measurements") or []
    if not own:
        return []
    text = ["## Our own measurements", "",
            "Not claims of the paper: what else this run measures about ORION beside the other methods.", ""]
    for m in own:
        text += [f"### {m['measure']} — {m['verdict']}", "", m["text"], ""]
    return text


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
    text += ["## Run", "", *_metadata(run, analysis), ""] + teacher_check_lines(run)
    text += _results_section(run, analysis, table_metrics, figures, seeds_note)
    text += exposure_section(run)
    text += tailored_exam_section(run)
    text += reflection_section(run)
    text += acceptance_section(run)
    text += comparison_section(run)
    text += edit_pairs_section(run)
    text += budget_lines(run, analysis)
    text += teacher_bill_lines(run)
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
            "pass@1: mean over the sampled solutions of a problem, averaged over problems; an unfinished solution "
            "(cut off at `evaluation.max_new_tokens`) counts as wrong.", ""]
    # a metric the run did not measure is said to be so, never tabled as dashes or drawn as 0
    text += ([metrics_table(table_metrics, "pass@1", cell_intervals), ""] if _has_key(table_metrics, "pass@1")
             else [f"{NOT_MEASURED_TEXT['pass@1']}.", ""])
    text += [f"### greedy accuracy (%){seeds_note}", ""]
    text += ([metrics_table(table_metrics, "greedy", cell_intervals), ""] if _has_key(table_metrics, "greedy")
             else [f"{NOT_MEASURED_TEXT['greedy']}.", ""])
    text += intervals_note(analysis)
    text += unfinished_section(run, table_metrics, seeds_note)
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
    """The report's Paper claims (the paper's three), one verdict and paragraph each; our own measurements
    apart from them (``own_section``); and the definitions of its terms."""
    text = ["## Paper claims", "",
            "The ORION paper (Wu, Li, Liu et al., arXiv 2505.22131) claims three things; each is checked here. "
            "What else this run measures is under \"Our own measurements\", not a claim of the paper.", ""]
    if toy:
        text += ["Toy run: the verdicts below say whether the pipeline's numbers point the paper's way on a "
                 "synthetic task with a tiny student and a rule-assisted reflector standing in for free-form reflection; "
                 "they do not test the paper.", ""]
    for i, claim in enumerate(analysis.get("claims") or [], start=1):
        text += [f"### Claim {i}: {claim['claim']} — {claim['verdict']}", "", claim["text"], ""]
    text += own_section(analysis)
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
    text = lines + ["", "## Per student", ""] + verdicts + [""] + teacher_bill_lines(run)
    run.report.write_text("\n".join(text), encoding="utf-8")
    return run.report
