"""Records: the contracts between pipeline stages.

Every stage reads and writes these dataclasses as JSONL in the run directory (see ``jsonl``),
so nothing passes between notebooks in memory. Keep them flat and JSON-friendly.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from .sampling import is_unfinished


@dataclass
class Problem:
    """A question with a gold answer (training question or benchmark item)."""

    id: str
    question: str
    answer: str
    source: str = ""
    meta: dict = field(default_factory=dict)  # e.g. {"n_steps": 3, "split": "hard"}


@dataclass
class TeacherTrace:
    """One long chain of thought from the teacher for one problem."""

    problem_id: str
    thinking: str  # the content of <think>...</think> (or the API's reasoning_content)
    solution: str  # the final solution after the thinking, ending in \boxed{...}
    answer: Optional[str]  # the final answer extracted from the solution
    correct: bool  # does `answer` verify against the problem's gold answer
    teacher: str  # which teacher produced it (e.g. "toy", "deepseek-reasoner")
    sample_index: int = 0
    usage: dict = field(default_factory=dict)  # prompt_tokens, completion_tokens, ...
    meta: dict = field(default_factory=dict)

    @property
    def cot(self) -> str:
        """The full assistant turn the student is trained on."""
        return format_cot(self.thinking, self.solution)


_ID_KEYS = ("id", "problem_id", "unique_id")
_QUESTION_KEYS = ("question", "problem", "prompt")
_ANSWER_KEYS = ("answer", "gold", "gold_answer", "target")


def as_problem(item: Any) -> Problem:
    """A Problem from a Problem or a plain dict (``{"id", "question", "answer"}``; also the common
    spellings ``problem``/``prompt`` and ``gold``/``target``). Without an id, one is made from the
    question's hash, so the same question always gets the same id."""
    if isinstance(item, Problem):
        return item if isinstance(item.id, str) else Problem(str(item.id), item.question, item.answer, item.source, item.meta)
    if not isinstance(item, Mapping):
        raise TypeError(f"a problem must be a Problem or a dict with 'question' and 'answer', got {type(item).__name__}")

    def first(keys: tuple) -> Any:
        return next((item[k] for k in keys if item.get(k) is not None), None)

    question, answer = first(_QUESTION_KEYS), first(_ANSWER_KEYS)
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"a problem dict needs a non-empty text 'question' (keys given: {sorted(map(str, item))})")
    if answer is None or isinstance(answer, (dict, list)):
        raise ValueError(f"a problem dict needs an 'answer' (keys given: {sorted(map(str, item))})")
    pid = first(_ID_KEYS)
    if pid is None:
        pid = "q-" + hashlib.sha1(question.encode("utf-8")).hexdigest()[:12]
    known = {*_ID_KEYS, *_QUESTION_KEYS, *_ANSWER_KEYS, "source", "meta"}
    meta = dict(item.get("meta") or {}) if isinstance(item.get("meta"), Mapping) else {}
    meta.update({str(k): v for k, v in item.items() if k not in known})
    return Problem(id=str(pid), question=question, answer=str(answer), source=str(item.get("source") or ""), meta=meta)


def text_key(text: str) -> str:
    """A text with its whitespace folded: two responses with the same key are the same response
    (how exposure, EDIT's pairs and Tailored Learning's rationales drop duplicates)."""
    return " ".join(text.split())


def format_cot(thinking: str, solution: str) -> str:
    return f"<think>\n{thinking.strip()}\n</think>\n\n{solution.strip()}"


@dataclass
class StudentAttempt:
    """One sampled solution of the student for one problem, graded."""

    problem_id: str
    sample_index: int
    response: str
    answer: Optional[str]
    correct: bool
    model: str  # which student produced it ("base", "primed", a checkpoint path ...)
    reason: str = ""  # grading reason: correct / wrong / no answer / timeout / error
    meta: dict = field(default_factory=dict)
    # cut off at the token limit, whatever answer it states (sampling.is_unfinished): counted apart from the
    # wrong ones, never correct, and by default not an error to reflect on (exposure.unfinished_as_errors)
    unfinished: bool = False


@dataclass
class Refinement:
    """ORION's training target for one problem: the teacher CoT rewritten around an error."""

    problem_id: str
    teacher_cot: str
    refined_cot: str  # the chosen training target; equals teacher_cot on fallback
    wrong_attempt: str  # the student's wrong solution that was reflected on ("" if none)
    accepted: bool  # False: no candidate verified, fell back to the teacher CoT
    n_candidates: int
    n_accepted: int
    selection_rule: str  # how one accepted candidate was picked
    reflector: str  # "student" or "rule" (toy domain), or "llm"
    meta: dict = field(default_factory=dict)
    # character spans [start, end) of refined_cot quoting the student's wrong step (may be left out
    # of the SFT loss: reflection.mask_wrong_step)
    wrong_step_spans: list = field(default_factory=list)


@dataclass
class SFTExample:
    """One supervised example: the prompt is the question, the completion the assistant turn."""

    problem_id: str
    question: str
    response: str
    source: str  # "teacher", "refined", "rectified", "tailored" ...
    meta: dict = field(default_factory=dict)
    # character spans [start, end) of response left out of the loss (ORION's quoted wrong step:
    # reflection.mask_wrong_step; training.build_sft_rows masks their tokens)
    loss_mask_spans: list = field(default_factory=list)

    def __post_init__(self) -> None:
        # files written before this was a field kept the spans in meta: such a record reads the same
        if isinstance(self.meta, dict) and "loss_mask_spans" in self.meta:
            meta = dict(self.meta)
            spans = meta.pop("loss_mask_spans") or []
            self.meta = meta
            self.loss_mask_spans = self.loss_mask_spans or [list(s) for s in spans]


@dataclass
class EvalSample:
    """One evaluation generation, graded."""

    method: str  # base / sft / orion / edit / tailored
    benchmark: str
    problem_id: str
    decoding: str  # "greedy" or "sample"
    sample_index: int
    response: str
    answer: Optional[str]
    gold: str
    correct: bool  # counts as correct in pass@1 and greedy accuracy: never when unfinished
    reason: str  # the grader's reason for the extracted answer
    n_tokens: int
    meta: dict = field(default_factory=dict)  # finish_reason; an unfinished one's grader verdict: graded_correct
    # cut off at evaluation.max_new_tokens, whatever answer it states (sampling.is_unfinished): counted as wrong
    unfinished: bool = False

    def __post_init__(self) -> None:
        # the one rule, also for files written before this field: a cut-off output is unfinished, never correct
        if not self.unfinished and isinstance(self.meta, dict) and is_unfinished(self.meta.get("finish_reason")):
            self.unfinished = True
        if self.unfinished and self.correct:
            self.meta = {**(self.meta if isinstance(self.meta, dict) else {}), "graded_correct": True}
            self.correct = False


@dataclass
class DualPair:
    """EDIT: a correct and a wrong CoT for the same question."""

    problem_id: str
    question: str
    chosen: str  # the correct CoT (CoT+ or CoT-+)
    rejected: str  # the wrong CoT (CoT+- or CoT-)
    source: str  # "teacher_prompts" or "error_exposure"
    meta: dict = field(default_factory=dict)


RECORD_TYPES: dict[str, Any] = {
    cls.__name__: cls
    for cls in (Problem, TeacherTrace, StudentAttempt, Refinement, SFTExample, EvalSample, DualPair)
}
