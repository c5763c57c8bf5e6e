"""The teacher interface: every source of teacher chains of thought answers ``collect``.

Sources: the toy domain's programmatic teacher, an OpenAI-compatible API, a local model,
a published trace dataset. EDIT and Tailored Learning also ask the teacher to rectify a
wrong CoT, corrupt a right one, or write a rationale tailored to the student's mistakes.
"""
from __future__ import annotations

import re
from typing import Optional, Protocol, Sequence, runtime_checkable

from ..records import Problem, TeacherTrace

_THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def split_thinking(text: str, reasoning_content: Optional[str] = None) -> tuple[str, str]:
    """Split a reply into (thinking, solution).

    The API's ``reasoning_content`` wins when present; otherwise the text inside ``<think>`` tags
    is the thinking. A reply with an opening tag but no closing one (cut off by a length limit) is
    all thinking; R1-style replies that start inside the thinking with only ``</think>`` are handled.
    """
    text = text or ""
    if reasoning_content:
        return reasoning_content.strip(), _THINK_RE.sub("", text).strip()
    match = _THINK_RE.search(text)
    if match:
        return match.group(1).strip(), (text[: match.start()] + text[match.end():]).strip()
    if "</think>" in text:
        thinking, _, solution = text.partition("</think>")
        return thinking.strip(), solution.strip()
    if "<think>" in text:
        return text.split("<think>", 1)[1].strip(), ""
    return "", text.strip()


def make_trace(
    problem: Problem,
    thinking: str,
    solution: str,
    teacher: str,
    sample_index: int = 0,
    usage: Optional[dict] = None,
    meta: Optional[dict] = None,
) -> TeacherTrace:
    """Grade a teacher's solution against the problem's gold answer and wrap it as a record."""
    from ..grading import grade  # imported here: grading pulls in math-verify

    result = grade(solution, problem.answer)
    return TeacherTrace(
        problem_id=problem.id,
        thinking=thinking,
        solution=solution,
        answer=result.predicted,
        correct=result.correct,
        teacher=teacher,
        sample_index=sample_index,
        usage=dict(usage or {}),
        meta=dict(meta or {}),
    )


@runtime_checkable
class Teacher(Protocol):
    """What every teacher offers: long CoTs for problems, graded against their gold answers."""

    name: str

    def collect(self, problems: Sequence[Problem], n: int = 1) -> list[TeacherTrace]:
        """Return n traces per problem (correct or not; callers filter on ``.correct``)."""
        ...


@runtime_checkable
class FeedbackTeacher(Teacher, Protocol):
    """A teacher that can also rectify, corrupt and tailor (EDIT and Tailored Learning)."""

    def rectify(self, problem: Problem, wrong: TeacherTrace) -> TeacherTrace:
        """Answer-hint prompt: reason again to the given correct answer (EDIT's D-+)."""
        ...

    def corrupt(self, problem: Problem, correct: TeacherTrace) -> TeacherTrace:
        """Contrastive prompt: the most likely wrong answer and rationale (EDIT's D+-)."""
        ...

    def tailor(self, problem: Problem, wrong_attempts: Sequence[str]) -> TeacherTrace:
        """Tailored Learning: a correct rationale written around the student's mistakes."""
        ...
