"""EDIT's dual pairs (Dai et al., ACL 2025): a correct and a wrong CoT of one question, from the teacher
(its wrong CoTs rectified, its correct ones corrupted: ``pairs_from_teacher``) or from error exposure
(the teacher's correct CoT against the student's wrong attempt: ``pairs_from_exposure``), and stage 1's
SFT data made from them (``stage1_examples``). The key tokens and stage 2 are in ``edit``."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Optional, Sequence

from .config import FEEDBACK_TEACHER_KINDS, PAIR_SOURCES
from .records import DualPair, Problem, SFTExample, StudentAttempt, TeacherTrace, text_key

SOURCE_LABELS = {"exposure": "error_exposure", "teacher": "teacher_prompts"}  # DualPair.source


def resolve_pair_source(source: str, teacher_kind: str) -> str:
    """``auto``: EDIT's own construction, ``teacher`` (rectify/corrupt), where the profile's teacher can
    be asked (``FEEDBACK_TEACHER_KINDS``), else ``exposure``; any other value is kept."""
    if source not in PAIR_SOURCES:
        raise ValueError(f"edit.pair_source must be one of {PAIR_SOURCES}, got {source!r}")
    if source != "auto":
        return source
    return "teacher" if teacher_kind in FEEDBACK_TEACHER_KINDS else "exposure"


def _by_problem(items) -> dict[str, list]:
    grouped = defaultdict(list)
    for item in items:
        grouped[item.problem_id].append(item)
    return grouped


def _ask_many(teacher, what: str, items: list) -> list:
    """``teacher.<what>_many(items)`` in one batched call (the API teacher sends the requests
    concurrently); a teacher without the batched form is asked item by item. A request that failed
    after every retry stops the stage with one clear error: the others are cached, so a re-run
    only asks for the failed ones."""
    if not items:
        return []
    many = getattr(teacher, f"{what}_many", None)
    if many is None:
        return [getattr(teacher, what)(p, t) for p, t in items]
    out = list(many(items))
    failed = [items[i][0].id for i, t in enumerate(out) if t is None]
    if failed:
        from .teachers.prompts import TeacherRequestFailed

        raise TeacherRequestFailed(
            f"{len(failed)} of {len(items)} {what} requests failed after every retry (first: problem "
            f"{failed[0]!r}); they are recorded, and the next run retries only them"
        )
    return out


def pairs_from_teacher(
    problems: Sequence[Problem], traces: Sequence[TeacherTrace], teacher, max_pairs_per_problem: int = 0
) -> list[DualPair]:
    """EDIT's own data: rectify the teacher's wrong CoTs and corrupt its correct ones.

    A correct trace CoT+ is sent through ``teacher.corrupt`` (contrastive prompt) → pair
    (CoT+, CoT+−), kept only if the corruption is really wrong. A wrong trace CoT− goes through
    ``teacher.rectify`` (answer-hint prompt) → pair (CoT−+, CoT−), kept only if the rectified CoT
    verifies. ``meta["kind"]`` says which ("corrupted" / "rectified"); the rectified CoTs are
    D−+ for stage 1.

    The teacher is asked in batches (``corrupt_many`` / ``rectify_many``: one call each per pass, so
    the API teacher's concurrency applies): each pass asks, for every question still short of
    ``max_pairs_per_problem`` pairs, as many of its next traces as it still needs.
    """
    from .budget import since, snapshot, stage_line

    problem_of = {p.id: p for p in problems}
    before = snapshot(teacher)  # the prompt budget's counts (orion_utils.budget): this call's are shown
    groups = {pid: list(g) for pid, g in _by_problem(traces).items() if pid in problem_of}
    order = {pid: k for k, pid in enumerate(groups)}
    kept = {pid: 0 for pid in groups}
    position = {pid: 0 for pid in groups}
    found: list[tuple[tuple[int, int], DualPair]] = []
    while todo := _next_traces(groups, position, kept, max_pairs_per_problem):
        for (pid, j), other in _ask_teacher(teacher, problem_of, groups, todo):
            pair = _dual_pair(problem_of[pid], groups[pid][j], other)
            if pair is not None:
                kept[pid] += 1
                found.append(((order[pid], j), pair))
    counts = since(teacher, before)
    if counts:
        print(stage_line("edit", counts))
    return [pair for _, pair in sorted(found, key=lambda x: x[0])]


def _next_traces(groups: dict, position: dict, kept: dict, max_pairs_per_problem: int) -> list[tuple[str, int]]:
    """The traces of one pass, as (question, index in its group): for every question still short of
    ``max_pairs_per_problem`` pairs, as many of its next traces as it still needs (all without a limit)."""
    todo = []
    for pid, group in groups.items():
        need = (max_pairs_per_problem - kept[pid]) if max_pairs_per_problem else len(group)
        take = group[position[pid] : position[pid] + max(0, need)]
        todo += [(pid, position[pid] + j) for j in range(len(take))]
        position[pid] += len(take)
    return todo


def _ask_teacher(teacher, problem_of: dict, groups: dict, todo: list) -> list[tuple[tuple[str, int], Any]]:
    """The teacher's reply to each trace of ``todo``: its correct traces corrupted, its wrong ones
    rectified, each kind in one batched call."""
    to_corrupt = [(pid, j) for pid, j in todo if groups[pid][j].correct]
    to_rectify = [(pid, j) for pid, j in todo if not groups[pid][j].correct]
    corrupted = _ask_many(teacher, "corrupt", [(problem_of[pid], groups[pid][j]) for pid, j in to_corrupt])
    rectified = _ask_many(teacher, "rectify", [(problem_of[pid], groups[pid][j]) for pid, j in to_rectify])
    return [*zip(to_corrupt, corrupted), *zip(to_rectify, rectified)]


def _dual_pair(problem: Problem, trace: TeacherTrace, other) -> Optional[DualPair]:
    """The pair of a teacher trace and the teacher's rewrite of it, or None: a rewrite whose prompt did not
    fit the teacher's budget, a corruption that is still correct, a rectification that is still wrong."""
    from .budget import is_left_out

    if is_left_out(other):
        return None
    if trace.correct:
        if other.correct:
            return None
        chosen, rejected, kind = trace, other, "corrupted"
    else:
        if not other.correct:
            return None
        chosen, rejected, kind = other, trace, "rectified"
    return DualPair(
        problem_id=problem.id,
        question=problem.question,
        chosen=chosen.cot,
        rejected=rejected.cot,
        source=SOURCE_LABELS["teacher"],
        meta={
            "kind": kind,
            "trace_sample": trace.sample_index,
            "teacher": other.teacher,
            "chosen_answer": chosen.answer,
            "rejected_answer": rejected.answer,
        },
    )


def pairs_from_exposure(
    problems: Sequence[Problem],
    teacher_traces: Sequence[TeacherTrace],
    attempts: Sequence[StudentAttempt],
    max_pairs_per_problem: int = 0,
) -> list[DualPair]:
    """Natural pairs from error exposure: the teacher's correct CoT vs the student's wrong attempt.

    Each distinct wrong attempt of a question is paired with one of the question's correct
    teacher CoTs (round-robin over them); questions without both are skipped.
    """
    problem_of = {p.id: p for p in problems}
    correct = _by_problem(t for t in teacher_traces if t.correct)
    pairs: list[DualPair] = []
    for pid, wrong in _by_problem(a for a in attempts if not a.correct).items():
        problem, good = problem_of.get(pid), correct.get(pid, [])
        if problem is None or not good:
            continue
        seen: set[str] = set()
        for attempt in wrong:
            key = text_key(attempt.response)
            if key in seen:
                continue
            if max_pairs_per_problem and len(seen) >= max_pairs_per_problem:
                break
            trace = good[len(seen) % len(good)]
            seen.add(key)
            pairs.append(
                DualPair(
                    problem_id=pid,
                    question=problem.question,
                    chosen=trace.cot,
                    rejected=attempt.response,
                    source=SOURCE_LABELS["exposure"],
                    meta={
                        "kind": "exposure",
                        "trace_sample": trace.sample_index,
                        "attempt_sample": attempt.sample_index,
                        "chosen_answer": trace.answer,
                        "rejected_answer": attempt.answer,
                    },
                )
            )
    return pairs


def build_dual_pairs(
    source: str,
    problems: Sequence[Problem],
    traces: Sequence[TeacherTrace],
    *,
    teacher=None,
    attempts: Optional[Sequence[StudentAttempt]] = None,
    max_pairs_per_problem: int = 0,
) -> list[DualPair]:
    """Dual pairs from ``source``: ``"teacher"`` (needs ``teacher``) or ``"exposure"``
    (needs ``attempts``); ``"auto"``: ``"teacher"`` when ``teacher`` can rectify and corrupt."""
    if source == "auto":
        can = teacher is not None and all(hasattr(teacher, m) or hasattr(teacher, m + "_many")
                                           for m in ("rectify", "corrupt"))
        source = "teacher" if can else "exposure"
    if source == "teacher":
        if teacher is None or not all(
            hasattr(teacher, m) or hasattr(teacher, m + "_many") for m in ("rectify", "corrupt")
        ):
            raise ValueError(
                "pair_source='teacher' needs a teacher with rectify() and corrupt() (a FeedbackTeacher)"
            )
        return pairs_from_teacher(problems, traces, teacher, max_pairs_per_problem)
    if source == "exposure":
        if attempts is None:
            raise ValueError("pair_source='exposure' needs the student's graded attempts (error exposure)")
        return pairs_from_exposure(problems, traces, attempts, max_pairs_per_problem)
    raise ValueError(f"pair_source must be one of {PAIR_SOURCES}, got {source!r}")


def stage1_examples(
    problems: Sequence[Problem], traces: Sequence[TeacherTrace], pairs: Sequence[DualPair] = ()
) -> list[SFTExample]:
    """Stage-1 SFT data: D+ (correct teacher CoTs) ∪ D−+ (rectified CoTs from the pairs), deduplicated.

    With ``pair_source="exposure"`` there is no D−+, and stage 1 is plain SFT on the teacher's
    correct CoTs (the ``sft`` baseline).
    """
    question_of = {p.id: p.question for p in problems}
    examples, seen = [], set()

    def add(pid: str, response: str, source: str, meta: dict) -> None:
        key = (pid, text_key(response))
        if pid in question_of and key not in seen:
            seen.add(key)
            examples.append(
                SFTExample(
                    problem_id=pid, question=question_of[pid], response=response, source=source, meta=meta
                )
            )

    for t in traces:
        if t.correct:
            add(t.problem_id, t.cot, "teacher", {"sample_index": t.sample_index})
    for pair in pairs:
        if pair.meta.get("kind") == "rectified":
            add(pair.problem_id, pair.chosen, "rectified", {"trace_sample": pair.meta.get("trace_sample")})
    return examples
