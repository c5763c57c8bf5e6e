"""Stage 02, error exposure: let the student show where it goes wrong.

The student samples k solutions per training question; each is graded against the gold
answer. Wrong ones are kept (deduplicated) together with the student's pass rate per question.
These are the mistakes ORION's reflection rewrites the teacher's CoTs around. An attempt cut off at
``max_new_tokens`` is *unfinished* (``sampling.is_unfinished``), whatever answer can be read from it:
counted apart, never correct, and by default not an error to reflect on (``exposure.unfinished_as_errors``).
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

from .config import GenerationConfig, StudentConfig, TrainingConfig, ParallelConfig
from .grading import grade
from .jsonl import read_jsonl, write_json, write_jsonl
from .numerics import degenerate_note, n_degenerate
from .records import Problem, SFTExample, StudentAttempt, text_key
from .rundir import RunDir, chunk_seed, run_in_chunks
from .sampling import is_unfinished  # the one cut-off rule
from .sections import EXPOSURE_SOURCES, ExposureConfig  # the section: exposure.ExposureConfig
from .stage_specs import fingerprint


def dedupe_errors(attempts: list[StudentAttempt], unfinished_as_errors: bool = False) -> list[StudentAttempt]:
    """Wrong attempts, one per distinct (whitespace-normalised) text per question; unfinished ones only
    with ``unfinished_as_errors``."""
    seen, unique = set(), []
    for a in attempts:
        key = (a.problem_id, text_key(a.response))
        if not a.correct and (unfinished_as_errors or not a.unfinished) and key not in seen:
            seen.add(key)
            unique.append(a)
    return unique


def attempt_counts(attempts: list[StudentAttempt]) -> dict:
    """Attempts, and how many are correct, wrong (finished with a wrong or no answer) and unfinished (cut off:
    never correct, ``sampling.is_unfinished``)."""
    unfinished = sum(a.unfinished for a in attempts)
    correct = sum(a.correct for a in attempts)
    return {"n_attempts": len(attempts), "n_correct": correct, "n_wrong": len(attempts) - correct - unfinished,
            "n_unfinished": unfinished}


def exposure_line(counts: dict, n_errors: int, cfg: ExposureConfig) -> str:
    """The stage's line: wrong and unfinished attempts apart, and which of them are the errors kept."""
    kept = "wrong and unfinished" if cfg.unfinished_as_errors else "wrong only"
    return (f"[error_exposure] {counts['n_attempts']} attempts: {counts['n_correct']} correct, {counts['n_wrong']} wrong, "
            f"{counts['n_unfinished']} unfinished (cut off at exposure.max_new_tokens={cfg.max_new_tokens}, "
            f"whatever answer they state); errors to reflect on: {n_errors} distinct ({kept}: exposure.unfinished_as_errors="
            f"{cfg.unfinished_as_errors})")


def pass_rates(attempts: list[StudentAttempt]) -> dict[str, float]:
    by_problem = defaultdict(list)
    for a in attempts:
        by_problem[a.problem_id].append(a.correct)
    return {pid: sum(v) / len(v) for pid, v in by_problem.items()}


def sample_and_grade(
    model_path: str,
    problems: list[Problem],
    cfg: ExposureConfig,
    generation: GenerationConfig,
    student: StudentConfig,
    partial_path: Optional[Path],
    model_name: str,
    parallel: Optional[ParallelConfig] = None,
) -> list[StudentAttempt]:
    """Sample k solutions per problem, grade them, append each graded chunk of ``cfg.chunk_questions``
    problems to ``partial_path``.

    Chunks complete in ``partial_path`` (from a crashed run) are not sampled again; each chunk is sampled
    with ``rundir.chunk_seed(cfg.seed, "exposure", its problem ids)``, so the attempts are the same
    with or without an interruption. ``parallel``: the devices the student samples on (``generation.StageModel``).
    """
    from .generation import SamplingConfig, StageModel

    def sample(index: int, chunk: list[Problem]) -> list[StudentAttempt]:
        generator = student_model.generator()  # opened only when a chunk is left to sample
        sampling = SamplingConfig(n=cfg.k, temperature=cfg.temperature, top_p=cfg.top_p,
                                  max_new_tokens=cfg.max_new_tokens,
                                  seed=chunk_seed(cfg.seed, "exposure", [p.id for p in chunk]))
        outputs = generator.generate([p.question for p in chunk], sampling, prompt_template=student.prompt_template,
                                     system=student.system_prompt or None, desc="sampling")
        return graded_attempts(chunk, outputs, model_name)

    with StageModel(model_path, generation, seed=cfg.seed, parallel=parallel) as student_model:
        return run_in_chunks(problems, cfg.chunk_questions, sample, partial=partial_path, cls=StudentAttempt,
                             per_item=cfg.k, desc="error exposure")


def graded_attempts(problems: Sequence[Problem], outputs, model_name: str, grader=grade) -> list[StudentAttempt]:
    """Each problem's sampled generations graded as ``StudentAttempt`` records (exposure and Tailored Learning's
    exams): one cut off at the token limit is unfinished (``sampling.is_unfinished``) and never correct."""
    attempts = []
    for problem, generations in zip(problems, outputs):
        for i, g in enumerate(generations):
            result, cut_off = grader(g.text, problem.answer), is_unfinished(g.finish_reason)
            attempts.append(StudentAttempt(
                problem_id=problem.id, sample_index=i, response=g.text, answer=result.predicted,
                correct=result.correct and not cut_off, model=model_name, reason=result.reason,
                meta={"n_tokens": g.n_tokens, "finish_reason": g.finish_reason}, unfinished=cut_off,
            ))
    return attempts


def run_error_exposure(
    run: RunDir,
    cfg: ExposureConfig,
    generation: Optional[GenerationConfig] = None,
    student: Optional[StudentConfig] = None,
    training=None,
    force: bool = False, parallel: Optional[ParallelConfig] = None,
) -> dict:
    """Write ``student_attempts.jsonl``, ``error_attempts.jsonl`` and ``pass_rates.json``."""
    generation = generation or GenerationConfig()
    student = student or StudentConfig()
    if cfg.source not in EXPOSURE_SOURCES:
        raise ValueError(f"exposure.source must be one of {EXPOSURE_SOURCES}, got {cfg.source!r}")
    problems_path, cots_path = run.train_problems, run.teacher_sft_set
    attempts_path, errors_path, rates_path = run.student_attempts, run.error_attempts, run.pass_rates
    params, models = fingerprint(run, "error_exposure", cfg, generation, student,
                                 training if cfg.source == "primed" else None)

    partial = run.student_attempts_partial  # attempts saved so far: resumed after a crash

    def work() -> dict:
        problems = read_jsonl(problems_path, Problem)
        model_path, model_name = run.student_model(), "base"
        if cfg.source == "primed":
            model_path, model_name = _primed_student(run, cfg, training, student, cots_path, parallel), "primed"
        attempts = sample_and_grade(model_path, problems, cfg, generation, student, partial, model_name, parallel)
        errors = dedupe_errors(attempts, cfg.unfinished_as_errors)
        write_jsonl(attempts_path, attempts)
        write_jsonl(errors_path, errors)
        write_json(rates_path, pass_rates(attempts))
        partial.unlink(missing_ok=True)
        counts = {**attempt_counts(attempts), "n_degenerate": n_degenerate(a.response for a in attempts)}
        print(f"{exposure_line(counts, len(errors), cfg)}; {degenerate_note([a.response for a in attempts], 'attempts')}",
              flush=True)
        return {**counts, "n_errors": len(errors), "unfinished_as_errors": cfg.unfinished_as_errors,
                "max_new_tokens": cfg.max_new_tokens, "model": model_name}

    return run.run_stage("error_exposure", params, [problems_path, cots_path, *models], [attempts_path, errors_path, rates_path],
                         work, force=force, stage_hint="01_teacher_cots", scratch=[partial])


def _primed_student(run: RunDir, cfg: ExposureConfig, training, student: StudentConfig, cots_path: Path,
                    parallel: Optional[ParallelConfig] = None) -> str:
    """One reading of the paper's two-stage strategy: expose the errors of a briefly fine-tuned student.
    The trainer's memory is released before the student samples (``generation.release_memory``)."""
    from dataclasses import replace

    from .generation import release_memory
    from .training import train_sft

    train_cfg = replace(training or TrainingConfig(), num_epochs=cfg.priming_epochs)
    result = train_sft(run.student_model(), read_jsonl(cots_path, SFTExample), run.primed_model,
                       train_cfg, prompt_template=student.prompt_template, system=student.system_prompt or None,
                       parallel=parallel)
    release_memory(before=result.model_dir)
    return result.model_dir


def load_exposure(run: RunDir) -> tuple[list[StudentAttempt], list[StudentAttempt], dict]:
    """(all attempts, unique wrong attempts, pass rate per question) of a finished exposure stage."""
    run.require(run.student_attempts, stage_hint="02_error_exposure")
    return (
        read_jsonl(run.student_attempts, StudentAttempt),
        read_jsonl(run.error_attempts, StudentAttempt),
        json.loads(run.pass_rates.read_text()),
    )


def look_inside(run: RunDir, problem_id: Optional[str] = None, show: bool = True) -> dict:
    """One question's k student samples, each graded again against the gold answer, and the question's
    pass rate. Without ``problem_id``, a question the student sometimes solves (else the first)."""
    from .display import key_values, table

    attempts, _, _ = load_exposure(run)
    by_problem: dict = defaultdict(list)
    for a in attempts:
        by_problem[a.problem_id].append(a)
    rates = pass_rates(attempts)
    if problem_id is None:
        problem_id = next((pid for pid, r in rates.items() if 0 < r < 1), next(iter(by_problem)))
    gold = {p.id: p for p in read_jsonl(run.train_problems, Problem)}[problem_id]
    rows = []
    for a in by_problem[problem_id]:
        g = grade(a.response, gold.answer)
        rows.append({"sample": a.sample_index, "answer": g.predicted, "verdict": g.reason,
                     "correct": g.correct, "unfinished": a.unfinished, "response": a.response})
    look = {"problem_id": problem_id, "question": gold.question, "gold": gold.answer, "samples": rows,
            "pass rate": rates[problem_id]}
    if show:
        key_values({k: look[k] for k in ("problem_id", "question", "gold", "pass rate")},
                   title="one question")
        table(rows, ["sample", "answer", "verdict", "correct", "unfinished", "response"], max_chars=300,
              title=f"its {len(rows)} student samples, graded")
    return look
