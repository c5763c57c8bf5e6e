"""Tailored Learning baseline (Wang et al., EMNLP 2023): learn from a teacher who reads your exam.

The idea in plain words: the student sits an "exam" on the training questions, and its wrong
rationales are kept. The teacher then writes correct rationales *tailored to those mistakes*,
and the student trains on them with two losses: ordinary likelihood (weighted MLE), and a
self-reflection loss that pulls its representation of a correct rationale towards another
correct rationale of the same question and away from its own wrong one. Then it sits the exam
again, and the loop repeats for a number of rounds.

Rounds (the paper's schedule, with prompts of our own; ``run_tailored``):

- round 0, exam: the base student samples ``exam_samples`` answers per question (temperature
  1.0); its unique wrong rationales are kept.
- round 1: the teacher writes rationales for all training questions (wrong ones dropped); the
  student trains on them (negatives: the round-0 wrong rationales).
- round r ≥ 2: the round r−1 student sits the exam again; its wrong rationales go to the teacher
  with the question (``teacher.tailor``); training continues from the round r−1 checkpoint on the
  new, tailored rationales.

Loss (``TailoredTrainer``, a subclass of the project's one SFT trainer; ``tailored_loss``):
``weighted_mle_loss`` + λ · ``triplet_loss`` on a hidden state (``triplet_layer``; default the last) of
each sequence's last token. A ``NoSameQuestionBatchSampler`` never puts two rationales of one question
in one batch. The training (losses, sampler, triplets, trainer) is in ``tailored_training``; the rounds here.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from .config import DataConfig, GenerationConfig, StudentConfig, TailoredConfig, TeacherConfig, ParallelConfig
from .layouts import RoundDir, TailoredDir, is_saved_model
from .numerics import degenerate_note, n_degenerate
from .records import Problem, SFTExample, StudentAttempt, TeacherTrace
from .rundir import RunDir, chunk_seed, read_or_make, run_in_chunks
from .stage_specs import fingerprint
from .tailored_training import (
    encode_triplet_example,
    train_tailored_round,
    triplet_examples,
    unique_wrong_rationales,
)
from .training import link_or_copy_tree

PathLike = Union[str, Path]


# --------------------------------------------------------------------------------------------
# Rounds: exam → teacher feedback → training
# --------------------------------------------------------------------------------------------


@dataclass
class RoundResult:
    """What one round did (``round_<r>/result.json``)."""

    round: int
    model_dir: str  # the student after this round (round 0: the base student)
    trained: bool
    n_exam_attempts: int = 0
    exam_accuracy: Optional[float] = None  # correct / attempts: an unfinished answer is not correct
    n_exam_wrong: int = 0  # finished with a wrong answer or none
    n_exam_unfinished: int = 0  # cut off at exam_max_new_tokens, whatever answer it states (apart from the wrong)
    n_wrong_rationales: int = 0
    n_exam_degenerate: int = 0  # exam answers of one short string repeated to the end (numerics.is_degenerate)
    n_teacher_rationales: int = 0  # correct ones kept
    n_teacher_dropped: int = 0  # wrong ones dropped
    n_train: int = 0
    n_triplets: int = 0
    train_seconds: float = 0.0
    meta: dict = field(default_factory=dict)


def default_generator_factory(generation=None, parallel: Optional[ParallelConfig] = None):
    """``model_dir → generator`` through ``generation.open_generator`` with a profile's
    ``generation`` section (a ``config.GenerationConfig``; None: its defaults) on ``parallel``'s devices."""

    def factory(model_dir: PathLike):
        from .generation import open_generator

        return open_generator(str(model_dir), generation or GenerationConfig(), parallel=parallel)

    return factory


def _default_grader():
    from .grading import grade

    return grade


def run_exam(
    generator,
    problems: Sequence[Problem],
    cfg: TailoredConfig,
    grader: Callable,
    prompt_template: str = "{question}",
    system: Optional[str] = None,
    model_name: str = "student",
    partial: Optional[Path] = None,
) -> list[StudentAttempt]:
    """The student answers every question ``exam_samples`` times; each answer is graded. One cut off at
    ``exam_max_new_tokens`` is unfinished (``sampling.is_unfinished``) whatever answer it states: not
    correct, and not a wrong rationale either (``unique_wrong_rationales``).

    In chunks of ``cfg.exam_chunk_questions`` questions (``rundir.run_in_chunks``), each sampled with
    ``rundir.chunk_seed(cfg.seed, "exam", its question ids)``; ``partial``: where each finished chunk is
    appended and read back from on a retry, so the attempts are the same with or without an interruption."""
    from .exposure import graded_attempts
    from .generation import SamplingConfig

    def sit(index: int, chunk: list[Problem]) -> list[StudentAttempt]:
        sampling = SamplingConfig(n=cfg.exam_samples, temperature=cfg.exam_temperature, top_p=cfg.exam_top_p,
                                  max_new_tokens=cfg.exam_max_new_tokens,
                                  seed=chunk_seed(cfg.seed, "exam", [p.id for p in chunk]))
        outputs = generator.generate([p.question for p in chunk], sampling, prompt_template=prompt_template,
                                     system=system)
        return graded_attempts(chunk, outputs, model_name, grader)

    return run_in_chunks(problems, cfg.exam_chunk_questions, sit, partial=partial, cls=StudentAttempt,
                         per_item=cfg.exam_samples, desc=f"exam/{model_name}")


def tailored_rationales(
    problems: Sequence[Problem], teacher, wrong: dict[str, list[str]], cfg: TailoredConfig
) -> list[TeacherTrace]:
    """Rounds ≥ 2: for each question the student got wrong, rationales tailored to its mistakes.

    One batched call (``teacher.tailor_many``), so the API teacher's concurrency applies; a teacher
    without it is asked question by question. A request that failed after every retry stops the
    round with one clear error (the others are cached: a re-run asks only for the failed ones)."""
    items = [(p, wrong[p.id][: cfg.max_wrong_shown]) for p in problems if wrong.get(p.id)]
    if not items:
        return []
    many = getattr(teacher, "tailor_many", None)
    if many is None:
        return [replace(teacher.tailor(p, mistakes), sample_index=s)
                for p, mistakes in items for s in range(cfg.tailor_samples)]
    from .budget import is_left_out, since, snapshot, stage_line

    before = snapshot(teacher)  # the prompt budget's counts (orion_utils.budget): this call's are shown
    groups = many(items, n=cfg.tailor_samples)
    counts = since(teacher, before, ["tailor"])
    if counts:
        print(stage_line("tailored", counts))
    # an item left out by the prompt budget gets no rationale (counted above); the others must all be there
    short = [p.id for (p, _), g in zip(items, groups) if not is_left_out(g) and len(g) < cfg.tailor_samples]
    if short:
        from .teachers.prompts import TeacherRequestFailed

        raise TeacherRequestFailed(
            f"tailor requests for {len(short)} of {len(items)} questions failed after every retry (first: "
            f"problem {short[0]!r}); they are recorded, and the next run retries only them"
        )
    return [t for g in groups if not is_left_out(g) for t in g]


@dataclass
class _Exam:
    """How the student sits the exam in every round: the questions, its generator, the grader, the prompt."""

    problems: Sequence[Problem]
    generator_factory: Callable
    cfg: TailoredConfig
    grader: Callable
    prompt_template: str
    system: Optional[str]

    def sit(self, rdir: RoundDir, model_dir: str, model_name: str) -> list[StudentAttempt]:
        """The student in ``model_dir`` answers the exam (read back from ``rdir.exam`` when done; the chunks
        an interrupted exam finished, from ``rdir.exam_partial``)."""
        student = _OnFirstUse(self.generator_factory, model_dir)

        def make() -> list[StudentAttempt]:
            try:
                return run_exam(student, self.problems, self.cfg, self.grader, self.prompt_template, self.system,
                                model_name, partial=rdir.exam_partial)
            finally:
                student.close()

        attempts = read_or_make(rdir.exam, StudentAttempt, make)
        rdir.exam_partial.unlink(missing_ok=True)
        print(f"[tailored] {rdir.root.name} exam ({model_name}): {degenerate_note([a.response for a in attempts], 'answers')}")
        return attempts


class _OnFirstUse:
    """The exam's generator, opened when a chunk is left to sample (not when every chunk is read back),
    after the last round's trainer is released (``generation.release_memory``)."""

    def __init__(self, factory: Callable, model_dir: str):
        self.factory, self.model_dir, self.generator = factory, model_dir, None

    def generate(self, *args, **kwargs):
        if self.generator is None:
            from .generation import release_memory

            release_memory(before=self.model_dir)
            self.generator = self.factory(self.model_dir)
        return self.generator.generate(*args, **kwargs)

    def close(self) -> None:
        generator, self.generator = self.generator, None
        if generator is not None and hasattr(generator, "close"):
            generator.close()


def exam_stats(attempts: Sequence[StudentAttempt], wrong: dict[str, list[str]]) -> dict:
    """An exam's counts for its ``RoundResult``: attempts, accuracy, the wrong and the unfinished answers apart
    (``exposure.attempt_counts``), distinct wrong rationales (``wrong``: ``unique_wrong_rationales(attempts)``)."""
    from .exposure import attempt_counts

    counts = attempt_counts(list(attempts))
    return {
        "n_exam_attempts": len(attempts),
        "exam_accuracy": (counts["n_correct"] / len(attempts)) if attempts else None,
        "n_exam_wrong": counts["n_wrong"],
        "n_exam_unfinished": counts["n_unfinished"],
        "n_wrong_rationales": sum(len(v) for v in wrong.values()),
        "n_exam_degenerate": n_degenerate(a.response for a in attempts),  # numerics: a float16 symptom
    }


def run_tailored(
    student_dir: PathLike,
    problems: Sequence[Problem],
    teacher,
    generator_factory: Callable,
    rounds: Optional[int],
    cfg: TailoredConfig,
    out_dir: PathLike,
    *,
    grader: Optional[Callable] = None,
    prompt_template: str = "{question}",
    system: Optional[str] = None,
    parallel: Optional[ParallelConfig] = None,
) -> list[RoundResult]:
    """Run the exam → feedback → training loop for ``rounds`` learning rounds (default ``cfg.rounds``).

    ``generator_factory(model_dir)`` returns a generator (``generation.load_generator``'s
    interface); ``teacher`` offers ``collect`` (round 1) and ``tailor`` (rounds ≥ 2);
    ``grader(response, gold)`` defaults to ``grading.grade``. Artefacts per round under
    ``out_dir/round_<r>/``: ``exam.jsonl``, ``teacher.jsonl``, ``train.jsonl``,
    ``loss_history.json``, ``model/``, ``result.json``; the final student at ``out_dir/model``.
    ``parallel``: each round trains on ``parallel.gpus`` ranks (``training.launch``).
    Resumable, each step through ``rundir.read_or_make``: exams and teacher outputs already on disk
    are read back, and a round whose ``result.json`` and model exist is not trained again; an exam cut
    off goes on from its last finished chunk (``run_exam``).
    """
    from .jsonl import write_json

    rounds = cfg.rounds if rounds is None else rounds
    if rounds < 1:
        raise ValueError("Tailored Learning needs at least one learning round")
    exam = _Exam(problems, generator_factory, cfg, grader or _default_grader(), prompt_template, system)
    layout = TailoredDir(out_dir)
    model_dir = str(student_dir)
    attempts = exam.sit(layout.round(0), model_dir, "base")
    wrong = unique_wrong_rationales(attempts)
    results = [RoundResult(round=0, model_dir=model_dir, trained=False, **exam_stats(attempts, wrong))]
    write_json(layout.round(0).result, asdict(results[0]))
    positive_pool: dict[str, list[str]] = defaultdict(list)
    for r in range(1, rounds + 1):
        rdir, stats = layout.round(r), {}
        if r > 1:  # the last round's student sits the exam again: the teacher tailors to its new mistakes
            attempts = exam.sit(rdir, model_dir, f"round_{r - 1}")
            wrong = unique_wrong_rationales(attempts)
            stats = exam_stats(attempts, wrong)
        traces, source = _round_rationales(r, rdir, problems, teacher, wrong, cfg)
        result = _learning_round(r, rdir, model_dir, problems, traces, source, positive_pool, wrong, exam, stats,
                                 parallel)
        results.append(result)
        model_dir = result.model_dir
    _publish_student(layout, model_dir, results)
    return results


def _round_rationales(r: int, rdir: RoundDir, problems: Sequence[Problem], teacher, wrong: dict[str, list[str]],
                      cfg: TailoredConfig) -> tuple[list[TeacherTrace], str]:
    """The teacher's rationales of round ``r`` and their source: round 1, its rationales for every question
    (``collect``); later rounds, rationales tailored to the student's wrong ones (``tailored_rationales``)."""
    if r == 1:
        make, source = (lambda: list(teacher.collect(problems, n=cfg.teacher_samples))), "teacher"
    else:
        make, source = (lambda: tailored_rationales(problems, teacher, wrong, cfg)), "tailored"
    return read_or_make(rdir.teacher, TeacherTrace, make), source


def _learning_round(r: int, rdir: RoundDir, model_dir: str, problems: Sequence[Problem], traces: list[TeacherTrace],
                    source: str, positive_pool: dict, wrong: dict[str, list[str]], exam: _Exam,
                    stats: dict, parallel: Optional[ParallelConfig] = None) -> RoundResult:
    """Round ``r``'s training set (``train.jsonl``: the correct rationales as anchors, their positives from
    ``positive_pool``, which they join, and negatives from ``wrong``), then its training from ``model_dir``;
    a finished round's result is read back instead while its model is there."""
    from .jsonl import write_jsonl

    correct = [t for t in traces if t.correct]
    for t in correct:
        positive_pool[t.problem_id].append(t.cot)
    examples = triplet_examples(problems, correct, positive_pool, wrong, source, seed=exam.cfg.seed + r)
    write_jsonl(rdir.train, examples)
    counts = {**stats, "n_teacher_rationales": len(correct), "n_teacher_dropped": len(traces) - len(correct),
              "n_train": len(examples)}
    return read_or_make(
        rdir.result,
        RoundResult,
        lambda: _train_round(r, rdir, model_dir, examples, exam.cfg, exam.prompt_template, exam.system, counts,
                             parallel),
        usable=lambda done: not done.trained or is_saved_model(done.model_dir),  # its model is still there
    )


def _publish_student(layout: TailoredDir, model_dir: str, results: list[RoundResult]) -> None:
    """The last round's student as ``layout.model`` (linked, not copied), and every round's result."""
    from .jsonl import write_json

    final = layout.model
    if Path(model_dir).resolve() != final.resolve():
        link_or_copy_tree(Path(model_dir), final)
    write_json(layout.rounds_summary, [asdict(r) for r in results])


def _train_round(
    r: int,
    rdir: RoundDir,
    model_dir: str,
    examples: list,
    cfg: TailoredConfig,
    prompt_template: str,
    system: Optional[str],
    counts: dict,
    parallel: Optional[ParallelConfig] = None,
) -> RoundResult:
    """Train round ``r`` from ``model_dir`` (``run_tailored`` reads a finished round's result back instead)."""
    if not examples:  # nothing new to learn (no mistakes, or no verified rationale): keep the student
        return RoundResult(
            round=r,
            model_dir=model_dir,
            trained=False,
            **counts,
            meta={"init_model": model_dir, "skipped": "no training examples"},
        )
    trained = train_tailored_round(model_dir, examples, rdir.root, cfg, prompt_template, system, parallel=parallel)
    n_triplets = sum(1 for ex in examples if ex.meta.get("positive") and ex.meta.get("negative"))
    return RoundResult(
        round=r,
        model_dir=trained.model_dir,
        trained=True,
        n_triplets=n_triplets,
        train_seconds=trained.train_seconds,
        **counts,
        meta={"init_model": model_dir, "n_steps": trained.n_steps, "backend": trained.backend,
              "device": trained.device, "dtype": trained.dtype, "batching": trained.batching},
    )


def look_inside(run, round_index: Optional[int] = None, show: bool = True) -> Optional[dict]:
    """One Tailored Learning triplet as ``triplet_examples`` built it: the anchor (a correct teacher
    rationale, trained on with the MLE loss), a positive (another correct rationale of the same question)
    and a negative (one of the student's wrong rationales), with their token counts from
    ``encode_triplet_example``. A triplet with both ends, from the given or the first round that has one;
    None, with a note, when this run did not run Tailored Learning."""
    from transformers import AutoTokenizer

    from .chat import run_prompt_format
    from .display import key_values, markdown
    from .jsonl import read_jsonl

    rounds_on_disk = run.tailored().rounds()
    if round_index is not None:
        rounds_on_disk = [r for r in rounds_on_disk if r.root.name == f"round_{round_index}"]
    paths = [r.train for r in rounds_on_disk if r.train.is_file()]
    rounds = [(p.parent.name, read_jsonl(p, SFTExample)) for p in paths]
    candidates = [(name, ex) for name, examples in rounds for ex in examples]
    if not candidates:
        print("Tailored Learning was not run here (is 'tailored' in evaluation.methods?): "
              "no triplets to look at.")
        return None
    full = [(n, e) for n, e in candidates if e.meta.get("positive") and e.meta.get("negative")]
    name, ex = (full or candidates)[0]
    template, system = run_prompt_format(run)
    enc = encode_triplet_example(AutoTokenizer.from_pretrained(run.student_model()), ex, template, system)
    look = {"round": name, "problem_id": ex.problem_id, "question": ex.question, "anchor": ex.response,
            "positive": ex.meta.get("positive"), "negative": ex.meta.get("negative"),
            "tokens": {k: (len(v["input_ids"]) if v else None) for k, v in enc.items() if k != "problem_id"}}
    if show:
        key_values({"round": name, "problem_id": ex.problem_id, "question": ex.question,
                    **{f"{k} tokens": v for k, v in look["tokens"].items()}}, title="one triplet")
        for part in ("anchor", "positive", "negative"):
            body = look[part] if look[part] is not None else "(none: the triplet term masks it out)"
            markdown(f"**{part}**\n\n```\n{body}\n```")
    return look


__all__ = [
    "TailoredConfig",
    "unique_wrong_rationales",
    "triplet_examples",
    "encode_triplet_example",
    "train_tailored_round",
    "RoundResult",
    "default_generator_factory",
    "exam_stats",
    "run_exam",
    "tailored_rationales",
    "run_tailored",
    "look_inside",
]


# --------------------------------------------------------------------------------------------
# Stage 06: Tailored Learning on the run's data
# --------------------------------------------------------------------------------------------


def run_tailored_stage(run: RunDir, cfg: TailoredConfig, teacher_cfg: Optional[TeacherConfig] = None,
                       data: Optional[DataConfig] = None, generation: Optional[GenerationConfig] = None,
                       student: Optional[StudentConfig] = None, force: bool = False, parallel: Optional[ParallelConfig] = None) -> dict:
    """Stage 06, Tailored Learning on the run's data: exam → teacher feedback on the student's mistakes →
    training, for several rounds. Starts from the same base student and training questions as the
    stage-04 methods; the model lands in ``models/tailored/model``."""
    from .budget import prompt_budget
    from .collection import (
        QuestionSetTeacher,
        TokenCounter,
        fitter,
        length_rule_applies,
        make_teacher,
        question_set_inputs,
        question_set_problems,
        read_question_set,
        stage01_traces,
        teacher_usage,
    )
    from .jsonl import read_jsonl
    from .teachers.base import FeedbackTeacher
    from .training_sets import join_phase_losses, write_method_training_set

    student, teacher_cfg = student or StudentConfig(), teacher_cfg or TeacherConfig()
    generation, folder = generation or GenerationConfig(), run.trained("tailored")
    inputs = [run.train_problems]
    # the question set, and the stage-01 CoTs a question without a usable rationale falls back to
    if question_set_inputs(run):
        inputs += question_set_inputs(run) + [run.teacher_sft_set, run.teacher_traces]
    params, models = fingerprint(run, "tailored", cfg, teacher_cfg, data, generation, student)
    inputs += models

    def work() -> dict:
        problems = question_set_problems(run, read_jsonl(inputs[0], Problem))  # the question set (stage 01)
        teacher = make_teacher(teacher_cfg, data, cache_dir=str(run.teacher_cache), parallel=parallel)
        if not isinstance(teacher, FeedbackTeacher):
            raise ValueError(
                f"Tailored Learning asks the teacher to explain the student's wrong answers, which a "
                f"teacher.kind={teacher_cfg.kind!r} teacher cannot do; use kind 'api', 'local' or 'toy', "
                f"or leave 'tailored' out of evaluation.methods"
            )
        if read_question_set(run) is not None:
            count = TokenCounter(run.student_model(), student.prompt_template, student.system_prompt or None)
            fits = fitter(count, cfg.max_seq_len) if length_rule_applies(cfg) else None
            teacher = QuestionSetTeacher(teacher, stage01_traces(run), fits)
        rounds = run_tailored(run.student_model(), problems, teacher, default_generator_factory(generation, parallel),
                              cfg.rounds, cfg, folder.root, prompt_template=student.prompt_template,
                              system=student.system_prompt or None, parallel=parallel)
        join_phase_losses(folder)
        write_method_training_set(run, "tailored")
        return {"rounds": len(rounds), **prompt_budget(teacher), **teacher_usage(teacher)}

    return run.run_stage("tailored", params, inputs, [folder.model], work, force=force, scratch=[folder.root],
                         stage_hint="00_setup_and_data")
