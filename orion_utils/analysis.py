"""Stage 08, analysis: measure the paper's claims on a finished run, plot them, write the report.

This module reads a run and applies the measures; the measures themselves are ``measures``'s, the
intervals and seed aggregates ``stats``'s, the verdicts ``claims``'s, the training-set table
``training_sets``'s, the choice of figures ``figures``'s, and the words (metric definitions, claim statements, the report) ``report``'s.
The names it uses itself are importable from here too; the others from their own module (``stats.bootstrap_interval``).

The ORION paper claims three things: ORION beats all baselines by more than 2 points on GSM-Hard,
MATH500, AIME24 and AMC23; its CoTs have higher coherence and logical consistency; training on them is
more stable (``claims.PAPER_CLAIMS``). This module turns each claim into numbers computed from the run
directory alone, and measures more of its own (output length, unfinished outputs: ``claims.own_evidence``,
reported apart, never as a claim of the paper):

``cot_perplexity``
    How "tailored" a method's training CoTs are to the student: the **base** student's perplexity of
    them (``measures.cot_perplexity``), scored exactly on the tokens SFT trains on
    (``generation.completion_nll``). At most ``max_cots`` CoTs per method, chosen by a stable hash
    of the question so that the methods are scored on (mostly) the same questions.
``cot_tokens_mean`` / ``response_tokens_mean``
    Mean length in student tokens of the training CoTs, and of the trained model's evaluation
    outputs (``EvalSample.n_tokens``, all benchmarks, sampled and greedy decodings).
``loss_delta_std``
    Stability of the training loss curve (``measures.loss_delta_std``) over the logged training losses.
``accuracy_by_difficulty``
    Benchmarks are not training questions, so ``data/pass_rates.json`` does not cover them. The
    difficulty of a benchmark problem is the **base** student's pass rate on it: the share of its
    sampled evaluation solutions (``eval/base/<benchmark>.jsonl``, decoding ``sample``; greedy 0/1
    when there are no samples) that are correct (``measures.accuracy_by_difficulty``). For ``base``
    itself the buckets are defined by its own results, so its row is circular (0-ish in ``hard``, high
    in ``easy`` by construction): it is shown for reference only.
``step_consistency`` (toy domain)
    ``measures.consistency_summary`` for (a) the method's training CoTs and (b) its evaluation
    responses. Real runs: the regular-expression parser is not reliable on free-form
    mathematics (``x^2 - 1 = 0`` reads as ``2 - 1 = 0``), so it is off there; instead, with
    ``analysis.judge`` on, the teacher judges the steps of up to ``judge_max_cots`` training CoTs
    per method (``make_judge``, ``judge_consistency``: the mean share of steps judged consistent;
    it costs teacher calls). The judge did not select ORION's rewrites, so the coherence claim is decided by
    it (and by the toy's checked steps) before the base student's perplexity, which ``reflection.selection:
    perplexity`` minimised to choose them (``claims._coherence_evidence``).

Seeds: a profile may list several seeds. ``orion run`` writes the first seed's run to the run
directory and each further seed's complete run to ``<run>/seeds/seed_<k>``; ``analyse_run`` finds
those (``seed_run_dirs``), or takes the other seeds' run directories explicitly
(``seeds_run_dirs=[...]``). Every table cell is then ``mean ± std`` over the seeds (sample
standard deviation, n−1; 0 for one seed) and the figures draw error bars or one line per seed.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from statistics import mean
from typing import Any, Callable, Optional, Sequence, Union

from .claims import CLAIM_MARGIN_POINTS, assess_claims, assess_own, look_inside
from .figures import write_figures
from .jsonl import read_jsonl, write_json
from .measures import (
    CONSISTENCY_KINDS,
    DEFAULT_BUCKETS,
    Bucket,
    accuracy_by_difficulty,
    bench_problem_key,
    bucket_of,
    consistency_summary,
    cot_perplexity,
    difficulty_from_samples,
    length_stats,
    loss_delta_std,
    loss_values,
    token_lengths,
)
from .numerics import NonFiniteError
from .records import EvalSample
from .report import DEFINITIONS, write_report
from .rundir import RunDir
from .sections import STEP_CONSISTENCY, AnalysisConfig  # the section: analysis.AnalysisConfig
from .stage_specs import fingerprint
from .stats import (
    INTERVAL_METRICS,
    aggregate_metrics,
    aggregate_values,
    cell_intervals,
    headline_intervals,
    problem_scores,
)
from .training_sets import training_set_table

PathLike = Union[str, Path]
Scorer = Callable[[Sequence[str], Sequence[str]], Sequence[float]]
"""``scorer(questions, completions) -> per-completion mean token NLL`` under the base student."""

TOKEN_KEYS = ("cot_perplexity", "cot_tokens_mean", "response_tokens_mean", "loss_delta_std")
ANALYSIS_VERSION = 3  # 3: the paper's three claims, own_measurements apart, coherence by the judge first

# the stage's own names, and those it uses from the modules it is made of
__all__ = [
    "ANALYSIS_VERSION", "CLAIM_MARGIN_POINTS", "CONSISTENCY_KINDS", "DEFAULT_BUCKETS", "INTERVAL_METRICS",
    "STEP_CONSISTENCY", "TOKEN_KEYS", "AnalysisConfig", "Bucket", "PathLike", "Scorer",
    "accuracy_by_difficulty", "aggregate_metrics", "aggregate_values", "analyse_methods", "analyse_run",
    "assess_claims", "assess_own", "bench_problem_key", "bucket_of", "cell_intervals", "consistency_summary",
    "cot_perplexity", "difficulty_from_samples", "headline_intervals", "is_toy_run", "judge_consistency",
    "length_stats", "load_eval_samples", "look_inside", "loss_delta_std", "loss_segments", "loss_values",
    "make_judge", "problem_scores", "reflection_summary", "scores_by_seed", "seed_run_dirs", "student_scorer",
    "student_tokenizer", "token_lengths", "training_cots", "training_set_table", "write_figures",
]


# =============================================================================================
# Reading a run
# =============================================================================================


def _rel(run: RunDir, path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(run.root.resolve()))
    except ValueError:
        return Path(path).name


def _read_rows(path: Path) -> list[dict]:
    return read_jsonl(path, None, tolerate_torn_tail=True)


def training_cots(run: RunDir, method: str) -> tuple[list[tuple[str, str]], list[str]]:
    """A method's training CoTs as (question, response) pairs, and the files they came from:
    the files its training stage trained on (``RunDir.training_files``). ``base`` has none."""
    files = run.training_files(method)
    pairs = []
    for path in files:
        for row in _read_rows(path):
            text = row.get("response", row.get("chosen"))
            if isinstance(text, str):
                pairs.append((str(row.get("question", "")), text))
    return pairs, [_rel(run, p) for p in files]


def loss_segments(run: RunDir, method: str) -> list[list[dict]]:
    """A method's training loss histories, one per training stage: the phase histories where the method has
    phases (EDIT's stages, Tailored Learning's rounds: ``RunDir.phase_loss_histories``; their joined curve
    would put a phase's restart inside one segment), else ``RunDir.loss_history``.
    """
    top = run.loss_history(method)
    files = run.phase_loss_histories(method) or ([top] if top.is_file() else [])
    segments = []
    for f in files:
        try:
            hist = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(hist, list) and hist:
            segments.append(hist)
    return segments


def load_eval_samples(run: RunDir, method: str) -> dict:
    """{benchmark: [EvalSample, ...]} from ``eval/<method>/<benchmark>.jsonl`` (``RunDir.eval_files``)."""
    return {p.stem: read_jsonl(p, EvalSample) for p in run.eval_files(method)}


def _config(run: RunDir) -> dict:
    return run.config() or {}


def is_toy_run(run: RunDir) -> bool:
    """A toy-domain run: the run's ``config.json`` names the toy student or toy training data."""
    cfg = run.config()
    if cfg is not None:
        return (cfg.get("student") or {}).get("model") == "toy" or (cfg.get("data") or {}).get("train_source") == "toy"
    # No config.json: a run directory not made by the runner (old runs, hand-made runs in tests).
    # Only then guess from the data: training or benchmark problems whose source is ``toy``.
    for path in [run.train_problems, *run.benchmark_files()]:
        if path.is_file():
            rows = _read_rows(path)
            if rows:
                return all(r.get("source") == "toy" for r in rows[:20])
    return False


def _stable_order(pid: str) -> str:
    return hashlib.sha256(pid.encode()).hexdigest()


def student_scorer(run: RunDir, batch_size: int = 16, device: str = "auto") -> Scorer:
    """The default ``scorer``: mean token NLL under the run's base student (loaded once, on first use),
    with the run's prompt template and system prompt (``config.json``'s ``student`` section)."""
    cfg = (_config(run).get("student") or {})
    template = cfg.get("prompt_template") or "{question}"
    system = cfg.get("system_prompt") or None
    state: dict = {}

    def score(questions: Sequence[str], completions: Sequence[str]) -> list[float]:
        from .generation import completion_nll, load_scoring_model

        if "model" not in state:  # loaded as stage 03 loads it; scored in bounded memory (completion_nll)
            dtype = (_config(run).get("generation") or {}).get("dtype", "auto")  # the fix NonFiniteError names
            state["model"], state["tokenizer"] = load_scoring_model(run.student_model(), device, dtype)
        return completion_nll(state["model"], state["tokenizer"], list(questions), list(completions),
                              prompt_template=template, system=system, batch_size=batch_size)

    return score


def student_tokenizer(run: RunDir):
    """The base student's tokenizer, or None (whitespace words) when it cannot be loaded."""
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(run.student_model())
    except Exception as exc:  # offline without a cached hub tokenizer, a broken student folder ...
        print(f"[analysis] student tokenizer unavailable ({type(exc).__name__}: {exc}); counting words instead")
        return None


def scores_by_seed(runs: Sequence[RunDir], methods: Optional[Sequence[str]] = None) -> dict:
    """{method: {benchmark: {metric: [{problem: score} per seed]}}} from every run's ``eval/`` files
    (metrics of ``INTERVAL_METRICS``; a seed without a method's file contributes nothing)."""
    out: dict = {}
    for r in runs:
        metrics = json.loads(r.metrics.read_text(encoding="utf-8")) if r.metrics.exists() else {}
        for m in methods or metrics:
            for bench, samples in load_eval_samples(r, m).items():
                for metric, decoding in INTERVAL_METRICS.items():
                    scores = problem_scores(samples, decoding)
                    if scores:
                        out.setdefault(m, {}).setdefault(bench, {}).setdefault(metric, []).append(scores)
    return out


def _aggregate_method_scalars(per_seed: Sequence[dict]) -> dict:
    """Per method: mean/std/n over seeds of the scalar analysis numbers (and consistency scores)."""
    methods: list = []
    for seed in per_seed:
        methods += [m for m in seed if m not in methods]
    out = {}
    for m in methods:
        rows = [seed.get(m) or {} for seed in per_seed]
        agg = {k: aggregate_values(r.get(k) for r in rows) for k in TOKEN_KEYS}
        for part in ("training", "evaluation"):
            agg[f"step_consistency_{part}"] = aggregate_values(
                ((r.get("step_consistency") or {}).get(part) or {}).get("score") for r in rows)
        agg["judge_consistency"] = aggregate_values((r.get("judge_consistency") or {}).get("score") for r in rows)
        abd: dict = {}
        for r in rows:
            for bench, buckets in (r.get("accuracy_by_difficulty") or {}).items():
                for label, cell in buckets.items():
                    abd.setdefault(bench, {}).setdefault(label, []).append(cell.get("accuracy"))
        agg["accuracy_by_difficulty"] = {b: {lab: aggregate_values(v) for lab, v in per.items()}
                                         for b, per in abd.items()}
        out[m] = agg
    return out


# =============================================================================================
# One run
# =============================================================================================


def judge_consistency(judge, cots: Sequence[tuple[str, str]]) -> dict:
    """Mean share of steps the teacher judges consistent over (question, CoT) pairs, and counts."""
    from .budget import since, snapshot, stage_line, summary

    before = snapshot(judge)
    scores = judge.judge_many(list(cots))
    valid = [x for x in scores if x is not None]
    counts = since(judge, before, ["judge"])  # the prompt budget (orion_utils.budget): left out = no score
    if counts:
        print(stage_line("analysis", counts))
    return {"score": sum(valid) / len(valid) if valid else None, "n": len(valid), "failed": len(scores) - len(valid),
            **({"prompt_budget": summary(counts)} if counts else {})}


def make_judge(cfg: AnalysisConfig, teacher_cfg, data_cfg, run: RunDir):
    """The profile's teacher as a step-consistency judge, when ``analysis.judge`` is on (else None)."""
    if not cfg.judge:
        return None
    from .collection import make_teacher

    teacher = make_teacher(teacher_cfg, data_cfg, cache_dir=str(run.teacher_cache))
    if not hasattr(teacher, "judge_many"):
        raise ValueError(f"analysis.judge needs a prompted teacher (api or local), not teacher.kind={teacher_cfg.kind!r}")
    return teacher


def run_analysis(run: RunDir, cfg: AnalysisConfig, teacher_cfg=None, data_cfg=None, force: bool = False) -> dict:
    """Stage 08 on a run with its profile's sections: ``analyse_run``, with the profile's teacher as the judge
    when ``analysis.judge`` is on (``make_judge``)."""
    return analyse_run(run, cfg=cfg, judge=make_judge(cfg, teacher_cfg, data_cfg, run), judge_from=(teacher_cfg, data_cfg),
                       force=force)


# --- per method: one row of numbers, step by step ---------------------------------------------------


def _difficulty(base: dict, buckets: Sequence[Bucket]) -> tuple[dict, dict, dict]:
    """(per-benchmark difficulty maps, the pooled map keyed ``<benchmark>/<problem id>``, and
    ``analysis.json``'s ``difficulty``: where it comes from, the buckets, problems per bucket)."""
    maps = {b: difficulty_from_samples(s) for b, s in base.items()}
    pooled = {f"{b}/{pid}": p for b, dmap in maps.items() for pid, p in dmap.items()}

    def counts(dmap: dict) -> dict:
        return {label: sum(bucket_of(p, buckets) == label for p in dmap.values()) for label, _, _ in buckets}

    difficulty = {"source": "eval/base (sampled pass rate per benchmark problem)" if base else None,
                  "buckets": [list(b) for b in buckets], "counts": {b: counts(d) for b, d in maps.items()}}
    if maps:
        difficulty["counts"]["all"] = counts(pooled)
    return maps, pooled, difficulty


def _scored_cots(cots: Sequence[tuple[str, str]], max_cots: Optional[int]) -> list:
    """At most ``max_cots`` CoTs, chosen by a stable hash of the question (the same questions across
    methods)."""
    if max_cots is None or len(cots) <= max_cots:
        return list(cots)
    order = sorted(range(len(cots)), key=lambda i: (_stable_order(cots[i][0]), i))
    return [cots[i] for i in sorted(order[:max_cots])]


def _perplexity_numbers(method: str, chosen: Sequence[tuple[str, str]], scorer, default_scorer: bool) -> dict:
    """The base student's perplexity of ``chosen`` (``scorer``); the default scorer's failure is recorded."""
    row: dict = {}
    nlls = None
    if scorer is not False:
        try:
            nlls = list(scorer([q for q, _ in chosen], [c for _, c in chosen]))
        except Exception as exc:  # the default student cannot be loaded (offline hub id ...)
            if not default_scorer or isinstance(exc, NonFiniteError):  # NaN scores stop the stage (numerics)
                raise
            row["cot_perplexity_error"] = f"{type(exc).__name__}: {exc}"[:300]
            print(f"[analysis] {method}: no cot_perplexity ({row['cot_perplexity_error']})")
    if nlls is None:
        return {**row, "cot_nll_mean": None, "cot_perplexity": None, "cot_perplexity_n": None}
    finite = [x for x in nlls if x is not None and math.isfinite(x)]
    return {**row, "cot_nll_mean": sum(finite) / len(finite) if finite else None,
            "cot_perplexity": cot_perplexity(finite), "cot_perplexity_n": len(finite)}


def _cot_numbers(method: str, cots: Sequence[tuple[str, str]], cfg: AnalysisConfig, tokenizer: Any, scorer,
                 default_scorer: bool, judge) -> tuple[dict, Optional[list]]:
    """The training CoTs' lengths, perplexity (and the judge's consistency); and their lengths for the
    figures."""
    if not cots:
        return {"cot_tokens_mean": None, "cot_tokens": None, "cot_nll_mean": None, "cot_perplexity": None,
                "cot_perplexity_n": None}, None
    lengths = token_lengths([c for _, c in cots], tokenizer)
    stats = length_stats(lengths)
    chosen = _scored_cots(cots, cfg.max_cots)
    row = {"cot_tokens_mean": stats["mean"], "cot_tokens": stats,
           **_perplexity_numbers(method, chosen, scorer, default_scorer)}
    if judge is not None:
        row["judge_consistency"] = judge_consistency(judge, chosen[: cfg.judge_max_cots])
    return row, lengths


def _response_numbers(per_bench: dict, all_samples: Sequence[EvalSample]) -> dict:
    """Lengths of the trained model's evaluation outputs (all, per benchmark, the correct ones)."""
    if not all_samples:
        return {"response_tokens": None, "response_tokens_mean": None, "response_tokens_by_benchmark": None,
                "response_tokens_mean_correct": None}
    stats = length_stats([s.n_tokens for s in all_samples])
    correct = [s.n_tokens for s in all_samples if s.correct]
    return {"response_tokens": stats, "response_tokens_mean": stats["mean"],
            "response_tokens_by_benchmark": {b: mean(s.n_tokens for s in ss)
                                             for b, ss in per_bench.items() if ss},
            "response_tokens_mean_correct": mean(correct) if correct else None}


def _loss_numbers(segments: Sequence[Sequence[dict]]) -> dict:
    """Stability of the training loss (``loss_delta_std`` within each training stage) and its ends."""
    losses = [x for seg in segments for x in loss_values(seg)]
    return {"loss_delta_std": loss_delta_std(segments) if segments else None,
            "n_loss_points": len(losses) if segments else None,
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None}


def _difficulty_numbers(per_bench: dict, all_samples: Sequence[EvalSample], maps: dict, pooled: dict,
                        buckets: Sequence[Bucket]) -> Optional[dict]:
    """Accuracy by the base student's difficulty, per benchmark and over all (``"all"``)."""
    if not maps or not per_bench:
        return None
    abd = {b: accuracy_by_difficulty(ss, maps[b], buckets) for b, ss in per_bench.items() if b in maps}
    abd["all"] = accuracy_by_difficulty(all_samples, pooled, buckets, key=bench_problem_key)
    return abd


def analyse_methods(
    run: RunDir,
    cfg: AnalysisConfig,
    scorer: Optional[Scorer] = None,
    tokenizer: Any = "auto",
    methods: Optional[Sequence[str]] = None,
    judge=None,
) -> tuple[dict, dict, dict]:
    """Per-method analysis of one run: (methods dict, difficulty dict, raw data for the figures).

    ``scorer``: see ``Scorer``; None loads the base student (``student_scorer``); ``False`` skips
    cot_perplexity. ``tokenizer``: "auto" loads the student's, None counts whitespace words.
    ``judge``: a teacher with ``judge_many`` (see ``teachers.prompts``) for ``judge_consistency``.
    """
    metrics = json.loads(run.metrics.read_text(encoding="utf-8"))
    methods = list(methods or metrics)
    buckets = [tuple(b) for b in cfg.buckets]
    consistency = cfg.step_consistency == "on" or (cfg.step_consistency == "auto" and is_toy_run(run))
    kinds = tuple(cfg.consistency_kinds)
    if tokenizer == "auto":
        tokenizer = student_tokenizer(run)
    default_scorer = scorer is None
    if default_scorer:
        scorer = student_scorer(run, batch_size=cfg.batch_size)
    evals = {m: load_eval_samples(run, m) for m in methods}
    maps, pooled, difficulty = _difficulty(evals.get("base") or {}, buckets)

    out, raw = {}, {"cot_lengths": {}, "response_lengths": {}, "loss": {}}
    for m in methods:
        cots, files = training_cots(run, m)
        per_bench = evals.get(m) or {}
        all_samples = [s for ss in per_bench.values() for s in ss]
        segments = loss_segments(run, m) if m != "base" else []
        cot_row, cot_lengths = _cot_numbers(m, cots, cfg, tokenizer, scorer, default_scorer, judge)
        out[m] = {"training_set": files or None, "n_training_cots": len(cots) if files else None, **cot_row,
                  **_response_numbers(per_bench, all_samples), **_loss_numbers(segments),
                  "accuracy_by_difficulty":
                      _difficulty_numbers(per_bench, all_samples, maps, pooled, buckets),
                  "step_consistency": None if not consistency else {
                      "training": consistency_summary((c for _, c in cots), kinds) if cots else None,
                      "evaluation": consistency_summary((s.response for s in all_samples), kinds)
                      if all_samples else None}}
        if cot_lengths is not None:
            raw["cot_lengths"][m] = cot_lengths
        if all_samples:
            raw["response_lengths"][m] = [s.n_tokens for s in all_samples]
        raw["loss"][m] = segments
    return out, difficulty, raw


# =============================================================================================
# The stage
# =============================================================================================


def reflection_summary(run: RunDir) -> Optional[dict]:
    """ORION's stage 03 as it ran: the reflector, whether the quoted wrong step was masked, the
    acceptance rate and the mechanism (base-student perplexity of the accepted rewrites vs the teacher
    CoTs they replace, ``reflection.mechanism_perplexity``). None when the stage did not run."""
    info = run.stage_info("reflection") or {}
    if info.get("status") != "done":
        return None
    section = _config(run).get("reflection") or {}
    return {"reflector": info.get("reflector"), "mask_wrong_step": section.get("mask_wrong_step"),
            "acceptance_rate": info.get("acceptance_rate"), "mechanism": info.get("mechanism"),
            "compare": info.get("compare")}


def seed_run_dirs(run: RunDir) -> list:
    """The other seeds' run directories that ``orion run`` writes under ``<run>/seeds/seed_<k>``."""
    return [p for p in run.seed_dirs() if RunDir(p).metrics.exists()]


def _seed_runs(run: RunDir, seeds_run_dirs: Optional[Sequence[Union[RunDir, PathLike]]]) -> list[RunDir]:
    """The other seeds' runs (None: those under ``<run>/seeds/``); each, and ``run``, must have been
    evaluated."""
    if seeds_run_dirs is None:
        seeds_run_dirs = seed_run_dirs(run)
    others = [r if isinstance(r, RunDir) else RunDir(r) for r in seeds_run_dirs]
    run.require(run.metrics, stage_hint="07_evaluation")
    for o in others:
        o.require(o.metrics, stage_hint="07_evaluation (of that seed)")
    return others


def _analysis_inputs(r: RunDir, scorer, tokenizer) -> list[Path]:
    """What the analysis of one seed's run reads: its metrics, eval outputs, training sets and loss logs,
    the question set, and the base student when it scores or counts."""
    paths = [r.metrics]
    metrics = json.loads(r.metrics.read_text(encoding="utf-8"))
    for m in metrics:
        if r.eval_method_dir(m).is_dir():
            paths.append(r.eval_method_dir(m))
        paths += r.training_files(m)
        paths += [p for p in [r.loss_history(m), *r.phase_loss_histories(m)] if p.is_file()]
    paths += [r.question_set] if r.question_set.is_file() else []
    if (scorer is None or tokenizer == "auto") and r.student_info.is_file():  # the base student scores, counts
        paths += r.student_inputs()
    return paths


def _analysis_params(cfg: AnalysisConfig, others: Sequence[RunDir], scorer, tokenizer, judge,
                     judge_from) -> dict:
    """The stage's parameters: the ``analysis`` section (and the judge's sections), the seeds, the scorers."""
    params, _ = fingerprint(None, "analysis", cfg, *(judge_from if judge is not None else ()))
    params.update({"version": ANALYSIS_VERSION, "seeds": [o.root.name for o in others],
                   "judge": None if judge is None else getattr(judge, "name", type(judge).__name__),
              "scorer": "student" if scorer is None else ("none" if scorer is False else getattr(scorer, "__name__", "custom")),
              "tokenizer": tokenizer if isinstance(tokenizer, str) or tokenizer is None else type(tokenizer).__name__})
    return params


def _intervals(runs: Sequence[RunDir], methods: Sequence[str], cfg: AnalysisConfig) -> dict:
    """``analysis.json``'s ``intervals``: every cell's bootstrap interval, the headline's paired ones,
    the rule."""
    scores = scores_by_seed(runs, methods)
    boot = (cfg.bootstrap_resamples, cfg.bootstrap_seed, cfg.interval_level)
    return {"cells": cell_intervals(scores, *boot), "headline": headline_intervals(scores, *boot),
            "rule": {"resamples": cfg.bootstrap_resamples, "seed": cfg.bootstrap_seed,
                     "level": cfg.interval_level, "margin_points": cfg.margin_points,
                     "decide_max_width_points": cfg.decide_max_width_points}}


def _build_analysis(run: RunDir, others: Sequence[RunDir], cfg: AnalysisConfig, scorer, tokenizer,
                    judge) -> dict:
    """The whole ``analysis.json`` of ``run`` and the other seeds' runs; writes the figures."""
    runs = [run, *others]
    per_seed, raws, metrics_list = [], [], []
    difficulty = None
    reflections = [reflection_summary(r) for r in runs]
    own_tokenizer = student_tokenizer(run) if tokenizer == "auto" else tokenizer  # loaded once for this run
    for r in runs:
        methods, diff, raw = analyse_methods(r, cfg, scorer=scorer, judge=judge,
                                             tokenizer=own_tokenizer if r is run else tokenizer)
        per_seed.append(methods)
        raws.append(raw)
        metrics_list.append(json.loads(r.metrics.read_text(encoding="utf-8")))
        difficulty = difficulty or diff
    agg_metrics = aggregate_metrics(metrics_list)
    agg_methods = _aggregate_method_scalars(per_seed)
    toy = is_toy_run(run)
    intervals = _intervals(runs, list(metrics_list[0]), cfg)
    return {
        "version": ANALYSIS_VERSION,
        "run": run.root.name,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "definitions": DEFINITIONS,
        "config": asdict(cfg),
        "toy": toy,
        "methods": per_seed[0],
        "difficulty": difficulty,
        "metrics": agg_metrics,
        "seeds": {"n": len(per_seed), "runs": [r.root.name for r in runs], "methods": agg_methods,
                  "per_seed": [{"run": r.root.name, "methods": s} for r, s in zip(runs, per_seed)]},
        "intervals": intervals,
        "claims": assess_claims(agg_metrics, agg_methods, cfg.margin_points, toy=toy, n_seeds=len(per_seed),
                                intervals=intervals["headline"], max_width=cfg.decide_max_width_points,
                                selection=(_config(run).get("reflection") or {}).get("selection")),
        "own_measurements": assess_own(agg_metrics, agg_methods, n_seeds=len(per_seed)),
        "reflection": reflections[0],
        "reflection_seeds": [{"run": r.root.name, **(info or {})} for r, info in zip(runs, reflections)],
        "training_sets": training_set_table(run, list(metrics_list[0]), own_tokenizer),
        "figures": write_figures(run, agg_metrics, agg_methods, raws, [tuple(b) for b in cfg.buckets],
                                 (difficulty or {}).get("counts")),
    }


def analyse_run(
    run: Union[RunDir, PathLike],
    seeds_run_dirs: Optional[Sequence[Union[RunDir, PathLike]]] = None,
    cfg: Optional[AnalysisConfig] = None,
    *,
    scorer: Optional[Scorer] = None,
    tokenizer: Any = "auto",
    judge=None,
    judge_from: Sequence = (),
    force: bool = False,
) -> dict:
    """Analyse a finished run: writes ``analysis.json``, the figures and ``report.md``; returns the analysis.

    ``seeds_run_dirs``: run directories of the other seeds of the same profile (complete runs with
    ``metrics.json``); None: those the runner made under ``<run>/seeds/`` (see ``seed_run_dirs``). The run's own numbers are in ``analysis["methods"]``; the results
    table, the claims and the figures use all seeds (mean ± std, error bars).
    ``scorer``: ``scorer(questions, completions) -> mean token NLLs`` under the base student, used
    for every seed (None: each run's own base student, loaded once; ``False``: no perplexity).
    ``tokenizer``: for token counts ("auto": the student's; None: whitespace words).
    ``judge``: a teacher with ``judge_many`` to score the step consistency of training CoTs (real
    runs; see ``make_judge``), or None; ``judge_from``: the (teacher, data) sections it was made from,
    for the stage's fingerprint.

    A stage in the manifest (``analysis``): skipped when ``metrics.json``, the eval outputs, the
    training sets and loss logs and the parameters are unchanged (``force=True`` redoes it).

    ``analysis.json``::

        {"run", "generated_at", "definitions", "config",
         "methods": {method: {"cot_perplexity", "cot_tokens_mean", "response_tokens_mean",
                              "loss_delta_std", "accuracy_by_difficulty": {bench|"all": {bucket: {...}}},
                              "step_consistency": {"training": {...}, "evaluation": {...}} | null, ...}},
         "difficulty": {"source", "buckets", "counts"},
         "metrics": {method: {bench: {metric: {"mean", "std", "n"}}}},
         "seeds": {"n", "runs", "methods": {method: {key: {"mean", "std", "n"}}}, "per_seed": [...]},
         "intervals": {"cells": {method: {bench: {metric: {"mean", "lo", "hi", "level", "n_problems",
                                                             "n_seeds", "n_resamples"}}}},
                       "headline": {bench: {baseline: {"diff", "lo", "hi", "width", ...}}}, "rule": {...}},
         "claims": [{"id", "claim", "verdict", "text", "numbers"}],  # the paper's three
         "own_measurements": [{"id", "measure", "verdict", "text", "numbers"}], "figures": {name: path}}
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    cfg = cfg or AnalysisConfig()
    others = _seed_runs(run, seeds_run_dirs)
    out_json, out_report = run.analysis_file, run.report
    inputs = [p for r in [run, *others] for p in _analysis_inputs(r, scorer, tokenizer)]
    params = _analysis_params(cfg, others, scorer, tokenizer, judge, judge_from)
    result: dict = {}

    def work() -> dict:
        analysis = _build_analysis(run, others, cfg, scorer, tokenizer, judge)
        write_json(out_json, analysis)
        write_report(run, analysis=analysis)
        result.update(analysis)
        return {"n_seeds": analysis["seeds"]["n"]}

    run.run_stage("analysis", params, inputs, [out_json, out_report], work, force=force, stage_hint="07_evaluation")
    if not result:
        result.update(json.loads(out_json.read_text(encoding="utf-8")))
    return result
