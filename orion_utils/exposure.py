"""Stage 02, error exposure: let the student show where it goes wrong.

The student samples k solutions per training question; each is graded against the gold
answer. Wrong ones are kept (deduplicated) together with the student's pass rate per question.
These are the mistakes ORION's reflection rewrites the teacher's CoTs around.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tqdm.auto import tqdm

from .config import GenerationConfig, StudentConfig
from .grading import grade
from .jsonl import JsonlAppender, read_jsonl, write_json, write_jsonl
from .records import Problem, SFTExample, StudentAttempt
from .rundir import RunDir


@dataclass
class ExposureConfig:
    source: str = "base"  # base: the student as it is | primed: after a short SFT on the teacher CoTs
    k: int = 4  # samples per question
    temperature: float = 0.8
    top_p: float = 0.9
    max_new_tokens: int = 256
    priming_epochs: float = 1.0  # source=primed only: epochs of that short SFT
    chunk_questions: int = 32  # questions per generation call; progress is saved after each
    seed: int = 0


def _normalise(text: str) -> str:
    return " ".join(text.split())


def dedupe_errors(attempts: list[StudentAttempt]) -> list[StudentAttempt]:
    """Wrong attempts, one per distinct (whitespace-normalised) text per question."""
    seen, unique = set(), []
    for a in attempts:
        key = (a.problem_id, _normalise(a.response))
        if not a.correct and key not in seen:
            seen.add(key)
            unique.append(a)
    return unique


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
    partial_path: Path,
    model_name: str,
) -> list[StudentAttempt]:
    """Sample k solutions per problem, grade them, append each graded chunk to ``partial_path``.

    Problems already in ``partial_path`` (from a crashed run) are not sampled again.
    """
    from .generation import SamplingConfig, open_generator

    done = read_jsonl(partial_path, StudentAttempt, tolerate_torn_tail=True) if partial_path.exists() else []
    done_ids = {a.problem_id for a in done}
    todo = [p for p in problems if p.id not in done_ids]
    if not todo:
        return done
    generator = open_generator(model_path, generation, seed=cfg.seed)
    sampling = SamplingConfig(n=cfg.k, temperature=cfg.temperature, top_p=cfg.top_p,
                              max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    attempts = list(done)
    try:
        with JsonlAppender(partial_path) as out:
            chunks = range(0, len(todo), cfg.chunk_questions)
            for start in tqdm(chunks, desc="error exposure", unit="chunk"):
                chunk = todo[start : start + cfg.chunk_questions]
                outputs = generator.generate([p.question for p in chunk], sampling,
                                             prompt_template=student.prompt_template,
                                             system=student.system_prompt or None, desc="sampling")
                for problem, generations in zip(chunk, outputs):
                    for i, g in enumerate(generations):
                        result = grade(g.text, problem.answer)
                        attempt = StudentAttempt(
                            problem_id=problem.id, sample_index=i, response=g.text, answer=result.predicted,
                            correct=result.correct, model=model_name, reason=result.reason,
                            meta={"n_tokens": g.n_tokens, "finish_reason": g.finish_reason},
                        )
                        out.append(attempt)
                        attempts.append(attempt)
    finally:
        generator.close()
    return attempts


def run_error_exposure(
    run: RunDir,
    cfg: ExposureConfig,
    generation: Optional[GenerationConfig] = None,
    student: Optional[StudentConfig] = None,
    training=None,
    force: bool = False,
) -> dict:
    """Write ``student_attempts.jsonl``, ``error_attempts.jsonl`` and ``pass_rates.json``."""
    generation = generation or GenerationConfig()
    student = student or StudentConfig()
    if cfg.source not in ("base", "primed"):
        raise ValueError(f"exposure.source must be 'base' or 'primed', got {cfg.source!r}")
    problems_path, cots_path = run.train_problems, run.teacher_sft_set
    attempts_path, errors_path, rates_path = run.student_attempts, run.error_attempts, run.pass_rates
    params = {"exposure": cfg, "generation": generation, "student": student,
              "training": training if cfg.source == "primed" else None}

    partial = run.student_attempts_partial  # attempts saved so far: resumed after a crash

    def work() -> dict:
        problems = read_jsonl(problems_path, Problem)
        model_path, model_name = run.student_model(), "base"
        if cfg.source == "primed":
            model_path, model_name = _primed_student(run, cfg, training, student, cots_path), "primed"
        attempts = sample_and_grade(model_path, problems, cfg, generation, student, partial, model_name)
        write_jsonl(attempts_path, attempts)
        write_jsonl(errors_path, dedupe_errors(attempts))
        write_json(rates_path, pass_rates(attempts))
        partial.unlink(missing_ok=True)
        return {"n_attempts": len(attempts), "model": model_name}

    return run.run_stage("error_exposure", params, [problems_path, cots_path], [attempts_path, errors_path, rates_path],
                         work, force=force, stage_hint="01_teacher_cots", scratch=[partial])


def _primed_student(run: RunDir, cfg: ExposureConfig, training, student: StudentConfig, cots_path: Path) -> str:
    """One reading of the paper's two-stage strategy: expose the errors of a briefly fine-tuned student.
    The trainer's memory is released before the student samples (``generation.release_memory``)."""
    from dataclasses import replace

    from .generation import release_memory
    from .training import TrainingConfig, train_sft

    train_cfg = replace(training or TrainingConfig(), num_epochs=cfg.priming_epochs)
    result = train_sft(run.student_model(), read_jsonl(cots_path, SFTExample), run.primed_model,
                       train_cfg, prompt_template=student.prompt_template, system=student.system_prompt or None)
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
                     "correct": g.correct, "response": a.response})
    look = {"problem_id": problem_id, "question": gold.question, "gold": gold.answer, "samples": rows,
            "pass rate": rates[problem_id]}
    if show:
        key_values({k: look[k] for k in ("problem_id", "question", "gold", "pass rate")},
                   title="one question")
        table(rows, ["sample", "answer", "verdict", "correct", "response"], max_chars=300,
              title=f"its {len(rows)} student samples, graded")
    return look
