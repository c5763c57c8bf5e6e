"""Stage 07, evaluation: every method, the same benchmarks, the same decoding, every sample kept.

pass@1 is the mean over n sampled solutions per problem (temperature 0.6, top_p 0.95 by
default), averaged over problems; greedy accuracy comes from one greedy solution per problem.
An output cut off at ``max_new_tokens`` is *unfinished* (``sampling.is_unfinished``), whatever answer
can be read from it: it counts as wrong in both, and its rate is reported beside them
(``unfinished_rate``, ``greedy_unfinished_rate``).
Each generation is graded and saved as an ``EvalSample`` in ``eval/<method>/<benchmark>.jsonl``.
A benchmark is generated in chunks of ``evaluation.chunk_questions`` problems, each saved once finished
(``rundir.run_in_chunks``), so an interrupted evaluation resumes from its last finished chunk with the same results.
"""
from __future__ import annotations

from pathlib import Path
from statistics import mean
from typing import Optional, Sequence

from .config import GenerationConfig, StudentConfig, ParallelConfig
from .grading import grade
from .jsonl import read_jsonl, write_json, write_jsonl
from .numerics import degenerate_note, n_degenerate
from .processes import run_jobs
from .records import EvalSample, Problem
from .rundir import RunDir, chunk_seed, run_in_chunks
from .sampling import is_unfinished
from .sections import METHODS, EvaluationConfig  # the section: evaluation.EvaluationConfig
from .stage_specs import fingerprint

def grade_generations(method: str, benchmark: str, problems: Sequence[Problem], outputs, decoding: str) -> list[EvalSample]:
    samples = []
    for problem, generations in zip(problems, outputs):
        rel_tol = problem.meta.get("rel_tol") if isinstance(problem.meta, dict) else None
        for i, g in enumerate(generations):
            result = grade(g.text, problem.answer, rel_tol=rel_tol)
            # an unfinished one counts as wrong (EvalSample keeps the grader's verdict in meta["graded_correct"])
            samples.append(EvalSample(method, benchmark, problem.id, decoding, i, g.text, result.predicted,
                                      problem.answer, result.correct, result.reason, g.n_tokens,
                                      {"finish_reason": g.finish_reason}, unfinished=is_unfinished(g.finish_reason)))
    return samples


def summarise(samples: Sequence[EvalSample]) -> dict:
    """pass@1 (mean over samples, then problems), greedy accuracy, counts and response lengths, and the share
    of unfinished outputs beside each accuracy: ``unfinished_rate`` (sampled), ``greedy_unfinished_rate``.
    An unfinished output counts as wrong in the accuracy (``EvalSample.correct`` is False)."""
    sampled = [s for s in samples if s.decoding == "sample"]
    greedy = [s for s in samples if s.decoding == "greedy"]
    summary: dict = {}
    if sampled:
        per_problem: dict = {}
        for s in sampled:
            per_problem.setdefault(s.problem_id, []).append(s.correct)
        summary["pass@1"] = mean(mean(v) for v in per_problem.values())
        summary["n_problems"] = len(per_problem)
        summary["n_samples"] = len(sampled) // max(len(per_problem), 1)
        summary["unfinished_rate"] = mean(s.unfinished for s in sampled)
    if greedy:
        summary["greedy"] = mean(s.correct for s in greedy)
        summary["greedy_unfinished_rate"] = mean(s.unfinished for s in greedy)
        summary.setdefault("n_problems", len(greedy))
    summary["response_tokens_mean"] = mean(s.n_tokens for s in samples) if samples else 0.0
    summary["no_answer_rate"] = mean(s.reason == "no answer" for s in samples) if samples else 0.0
    summary["n_degenerate"] = n_degenerate(s.response for s in samples)  # numerics: a float16 symptom
    return summary


def evaluate_model(
    model_path: str,
    method: str,
    benchmarks: dict,
    cfg: EvaluationConfig,
    generation: GenerationConfig,
    student: StudentConfig,
    partials: Optional[dict] = None,
    parallel: Optional[ParallelConfig] = None,
) -> tuple[dict, str]:
    """Generate, grade and return ({benchmark: [EvalSample, ...]}, backend name) for one model.

    Each benchmark goes in chunks of ``cfg.chunk_questions`` problems (greedy, then sampled with
    ``rundir.chunk_seed(cfg.seed, benchmark, its problem ids)``, both submitted in one ``generate_groups``
    call); ``partials`` ({benchmark: path}): where
    each finished chunk is appended and read back from on a retry. A benchmark's samples: the greedy
    ones, then the sampled ones, each in problem order. ``parallel``: the devices it generates on
    (``generation.StageModel``)."""
    from .generation import SamplingConfig, StageModel

    template, system = student.prompt_template, student.system_prompt or None
    backends: list[str] = []  # the backend that generated, if any chunk was left to generate

    def chunk_of(name: str):
        def make(index: int, chunk: list) -> list[EvalSample]:
            groups = []  # (decoding, sampling): the chunk's greedy and sampled requests, submitted together
            if cfg.greedy:
                groups.append(("greedy", SamplingConfig(n=1, temperature=0.0, max_new_tokens=cfg.max_new_tokens,
                                                        seed=cfg.seed)))
            if cfg.n_samples > 0:
                groups.append(("sample", SamplingConfig(n=cfg.n_samples, temperature=cfg.temperature, top_p=cfg.top_p,
                                                        max_new_tokens=cfg.max_new_tokens,
                                                        seed=chunk_seed(cfg.seed, name, [p.id for p in chunk]))))
            generator = model.generator()  # opened only when a chunk is left to generate
            backends[:] = [generator.name]
            questions = [p.question for p in chunk]
            outputs = generator.generate_groups([(questions, sampling) for _, sampling in groups],
                                                prompt_template=template, system=system,
                                                desc=f"{method}/{name} " + " + ".join(d for d, _ in groups))
            return [s for (decoding, _), out in zip(groups, outputs)
                    for s in grade_generations(method, name, chunk, out, decoding)]
        return make

    per_problem = int(cfg.greedy) + max(cfg.n_samples, 0)
    results = {}
    with StageModel(model_path, generation, seed=cfg.seed, parallel=parallel) as model:
        for name, problems in benchmarks.items():
            samples = run_in_chunks(problems, cfg.chunk_questions, chunk_of(name), partial=(partials or {}).get(name),
                                    cls=EvalSample, per_item=per_problem, desc=f"evaluation/{method}/{name}")
            results[name] = sorted(samples, key=lambda s: s.decoding != "greedy")  # stable: problem order kept
    return results, backends[0] if backends else "none (every chunk read back)"


def load_benchmarks(run: RunDir) -> dict:
    """The benchmark problems stage 00 wrote, by name."""
    run.require(run.benchmarks_dir, stage_hint="00_setup_and_data")
    return {p.stem: read_jsonl(p, Problem) for p in run.benchmark_files()}


def run_evaluation(
    run: RunDir,
    cfg: EvaluationConfig,
    generation: Optional[GenerationConfig] = None,
    student: Optional[StudentConfig] = None,
    force: bool = False, parallel: Optional[ParallelConfig] = None,
) -> dict:
    """Evaluate each method (one stage per method, so a new method does not re-run the others).

    Writes ``eval/<method>/<benchmark>.jsonl`` and ``metrics.json`` shaped
    ``{method: {benchmark: {"pass@1": x, "greedy": y, ...}}}``. With ``cfg.workers`` > 1 the methods
    are evaluated that many at a time, each in its own process: each method's samples depend only on
    its model and ``cfg``, so the results are the same as one at a time.
    """
    generation, student = generation or GenerationConfig(), student or StudentConfig()
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"evaluation.methods has unknown method(s) {unknown}; known: {list(METHODS)}")
    if cfg.workers < 1:
        raise ValueError(f"evaluation.workers must be at least 1, got {cfg.workers}")
    run.require(run.benchmarks_dir, stage_hint="00_setup_and_data")
    for method in cfg.methods:
        model_path = run.method_model(method)
        if not Path(model_path).exists() and method != "base":
            raise FileNotFoundError(
                f"no trained model for method '{method}' at {model_path}: run its training notebook first, "
                f"or leave it out of evaluation.methods")
    jobs = {method: (str(run.root), method, cfg, generation, student, force, parallel) for method in cfg.methods}
    workers = cfg.workers
    if workers > 1 and parallel is not None and parallel.active:
        print(f"[evaluation] evaluation.workers={workers} with parallel.gpus={parallel.gpus}: the methods are evaluated "
              "one at a time, each on every device", flush=True)
        workers = 1
    if workers > 1 and len(jobs) > 1:  # each method in its own process; what it prints is shown here
        run_jobs(evaluate_method, jobs, workers, capture=True, keep_going=True, label="evaluation")
    else:
        for job in jobs.values():
            evaluate_method(*job)
    metrics = {method: _read_summary(run.eval_summary(method)) for method in cfg.methods}
    write_json(run.metrics, metrics)
    return metrics


def evaluate_method(root: str, method: str, cfg: EvaluationConfig, generation: GenerationConfig,
                    student: StudentConfig, force: bool = False, parallel: Optional[ParallelConfig] = None) -> dict:
    """The stage ``evaluation/<method>``: one method's model on every benchmark of the run (``parallel``: the
    devices it generates on)."""
    run = RunDir(root)
    benchmarks = load_benchmarks(run)
    model_path = run.method_model(method)
    outputs = [run.eval_file(method, name) for name in benchmarks] + [run.eval_summary(method)]
    inputs = run.benchmark_files() + ([Path(model_path)] if Path(model_path).exists() else [])

    partials = {name: run.eval_partial(method, name) for name in benchmarks}  # chunks saved so far

    def work() -> dict:
        results, backend = evaluate_model(model_path, method, benchmarks, cfg, generation, student, partials, parallel)
        for name, samples in results.items():
            write_jsonl(run.eval_file(method, name), samples)
        write_json(run.eval_summary(method), {name: summarise(s) for name, s in results.items()})
        print(f"[evaluation/{method}] {degenerate_note(s.response for v in results.values() for s in v)}", flush=True)
        for path in partials.values():
            path.unlink(missing_ok=True)
        return {"backend": backend}

    # evaluation.methods, workers and chunk_questions are bookkeeping knobs: none changes this method's samples
    params, models = fingerprint(run, "evaluation", cfg, generation, student)
    inputs += [m for m in models if m not in inputs]
    return run.run_stage(f"evaluation/{method}", params, inputs, outputs, work, force=force,
                         scratch=list(partials.values()))


def _read_summary(path: Path) -> dict:
    import json

    return json.loads(path.read_text(encoding="utf-8"))


NOT_MEASURED = {"pass@1": "Not measured in this run (`evaluation.n_samples: 0`: greedy decoding only)",
                "greedy": "Not measured in this run (`evaluation.greedy: false`)"}
"""What a report or notebook says in place of a metric the run did not measure (never a table of dashes or 0)."""


def results_markdown(metrics: dict) -> str:
    """pass@1 and greedy accuracy (%) as Markdown, each beside its unfinished rate (cut off at
    ``max_new_tokens``, counted wrong): a table of each metric the run measured, a "not measured" line for
    the other (``metrics``: ``metrics.json``)."""
    parts = []
    for key, unfinished, title in (("pass@1", "unfinished_rate", "pass@1 (%)"),
                                   ("greedy", "greedy_unfinished_rate", "greedy accuracy (%)")):
        done = any(key in (cells or {}) for per in metrics.values() for cells in per.values())
        parts.append(f"**{title}**\n\n" + (results_table(metrics, key) if done else NOT_MEASURED[key] + "."))
        if done:
            parts.append(f"**{title.split(' (')[0]}: unfinished (%)**, cut off at `evaluation.max_new_tokens` "
                         f"and counted wrong above\n\n" + results_table(metrics, unfinished))
    return "\n\n".join(parts)


def results_table(metrics: dict, key: str = "pass@1") -> str:
    """A Markdown table: one row per method, one column per benchmark."""
    benchmarks = sorted({b for per in metrics.values() for b in per})
    lines = ["| method | " + " | ".join(benchmarks) + " |", "|---|" + "---|" * len(benchmarks)]
    for method, per in metrics.items():
        cells = [f"{100 * per[b][key]:.1f}" if b in per and key in per[b] else "–" for b in benchmarks]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def look_inside(run: RunDir, method: Optional[str] = None, benchmark: Optional[str] = None, index: int = 0,
                show: bool = True) -> Optional[dict]:
    """One evaluation sample graded again: the response, the answer ``grading.grade`` extracts from it
    and its verdict against the gold answer (and whether that matches the stored verdict: an unfinished one
    counts as wrong whatever it states). Default: the
    first evaluated method's first benchmark."""
    from .display import key_values, markdown

    if method is None:
        root = run.eval_dir()
        methods = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.exists() else []
        method = methods[0] if methods else "orion"
    files = run.eval_files(method)
    if benchmark is not None:
        files = [f for f in files if f.stem == benchmark]
    samples = read_jsonl(files[0], EvalSample) if files else []
    if not samples:
        print(f"no evaluation samples of {method!r} here (is it in evaluation.methods?)")
        return None
    s = samples[min(index, len(samples) - 1)]
    g = grade(s.response, s.gold)
    look = {"method": s.method, "benchmark": s.benchmark, "problem_id": s.problem_id, "decoding": s.decoding,
            "gold": s.gold, "extracted answer": g.predicted, "verdict": g.reason, "correct": g.correct and not s.unfinished,
            "unfinished": s.unfinished, "stored verdict": s.correct, "response": s.response}
    if show:
        markdown(f"**Response** ({s.method} on {s.benchmark}, {s.decoding})\n\n```\n{s.response}\n```")
        key_values({k: v for k, v in look.items() if k != "response"}, title="the grader on this sample")
    return look
