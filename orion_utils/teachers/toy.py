"""The toy domain's programmatic teacher behind the ``Teacher``/``FeedbackTeacher`` interface.

Every answer is deterministic in (seed, problem id, sample index) and costs nothing, so the toy
pipeline is reproducible and its stages rerun for free. Traces go through ``make_trace``, so they
are graded like any other teacher's. See ``orion_utils.toy.teacher`` for the CoT format.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from ..records import Problem, TeacherTrace, as_problem
from ..toy.teacher import N_VARIANTS, seeded_rng, render_cot, teacher_sample, write_cot, computations_with_slip
from .base import make_trace


def _require_toy(problem: Problem) -> None:
    if not isinstance(problem.meta, dict) or "steps" not in problem.meta:
        raise ValueError(
            f"ToyTeacher can only answer toy-domain problems (with meta['steps']); {problem.id!r} is not one"
        )


class ToyTeacher:
    """Programmatic R1-style teacher for toy-domain problems.

    ``error_rate``: probability that a sample contains an arithmetic slip carried to a wrong boxed
    answer (so the correctness filter has something to filter). ``style``: ``full`` (with a
    self-check line per step) or ``terse``. ``wording``: ``fixed`` (one wording per sample) or
    ``varied`` (each line's wording drawn, as an R1-style teacher varies its phrasing).
    """

    def __init__(self, error_rate: float = 0.1, seed: int = 0, style: str = "full", wording: str = "fixed"):
        from ..toy.teacher import WORDINGS

        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate must be in [0, 1], got {error_rate}")
        if wording not in WORDINGS:
            raise ValueError(f"teacher.wording must be one of {WORDINGS}, got {wording!r}")
        self.wording = wording
        self.error_rate = float(error_rate)
        self.seed = int(seed)
        self.style = style
        self.name = "toy"

    # -- raw samples (no grading) ----------------------------------------------------------------
    def sample(
        self, problem: Problem, sample_index: int = 0, style: Optional[str] = None, caught_slip_rate: float = 0.0,
        variant: Optional[int] = None, wording: Optional[str] = None,
    ) -> tuple[str, str, dict]:
        """(thinking, solution, meta) of one sample; ``meta["slip_step"]`` is the step it slipped at
        (None: correct). ``caught_slip_rate``: share of samples with a slip caught by a check (they
        stay correct; ``meta["caught_slip_step"]``) and ``variant`` (one wording for the whole CoT, other
        than the sample's own; ``wording`` then does not apply), used by the toy student's pre-training."""
        _require_toy(problem)
        return teacher_sample(problem, sample_index, self.error_rate, self.seed, style or self.style,
                              caught_slip_rate=caught_slip_rate, variant=variant, wording=wording or self.wording)

    def _trace(self, problem: Problem, thinking: str, solution: str, sample_index: int, meta: dict) -> TeacherTrace:
        usage = {"completion_chars": len(thinking) + len(solution)}
        return make_trace(problem, thinking, solution, self.name, sample_index=sample_index, usage=usage, meta=meta)

    # -- Teacher -----------------------------------------------------------------------------------
    def collect(self, problems: Sequence[Problem], n: int = 1) -> list[TeacherTrace]:
        """n graded traces per problem (sample 0 in the canonical wording, others varied)."""
        out = []
        for p in map(as_problem, problems):
            for j in range(n):
                thinking, solution, meta = self.sample(p, j)
                out.append(self._trace(p, thinking, solution, j, meta))
        return out

    # -- FeedbackTeacher ---------------------------------------------------------------------------
    def rectify(self, problem: Problem, wrong: TeacherTrace) -> TeacherTrace:
        """Answer-hint: reason to the gold answer, in the wrong trace's own wording, so the pair
        differs only from the step that went wrong (EDIT's D-+)."""
        _require_toy(problem)
        variant = int((wrong.meta or {}).get("variant", 0))
        style = (wrong.meta or {}).get("style", self.style)
        thinking, solution = write_cot(problem, variant, style)
        meta = {"variant": variant, "style": style, "slip_step": None, "rectified": True,
                "hint": problem.answer}
        return self._trace(problem, thinking, solution, wrong.sample_index, meta)

    def corrupt(self, problem: Problem, correct: TeacherTrace) -> TeacherTrace:
        """The most likely wrong answer and rationale: a plausible slip (a forgotten carry or
        borrow, off by one or ten) at one step, carried through to a wrong boxed answer, in the
        correct trace's wording (EDIT's D+-)."""
        _require_toy(problem)
        variant = int((correct.meta or {}).get("variant", 0))
        style = (correct.meta or {}).get("style", self.style)
        rng = seeded_rng("toy-corrupt", self.seed, problem.id, correct.sample_index)
        at = rng.randrange(len(problem.meta["steps"]))
        comps = computations_with_slip(problem, at, rng)
        thinking, solution = render_cot(problem, comps, variant, style)
        meta = {"variant": variant, "style": style, "slip_step": at, "corrupted": True}
        return self._trace(problem, thinking, solution, correct.sample_index, meta)

    def tailor(self, problem: Problem, wrong_attempts: Sequence[str]) -> TeacherTrace:
        """A correct rationale that addresses the student's mistake: at the step where the first
        usable wrong attempt diverges, a line in the teacher's voice ("Note: a common mistake is to
        say 8 + 7 = 14, but 8 + 7 = 15."). Without a usable attempt: the plain correct rationale
        (``meta["tailored"]`` says which)."""
        from ..toy.reflect import reflect_cot

        _require_toy(problem)
        thinking, solution = write_cot(problem, 0, self.style)
        meta: dict = {"variant": 0, "style": self.style, "slip_step": None, "tailored": False}
        for k, attempt in enumerate(wrong_attempts):
            variant = seeded_rng("toy-tailor", self.seed, problem.id, k).randrange(N_VARIANTS)
            out = reflect_cot(problem, f"<think>\n{thinking}\n</think>\n\n{solution}", attempt, variant, voice="teacher")
            if out is None:
                continue
            new_cot, div = out
            body = new_cot.split("<think>\n", 1)[1]
            thinking, solution = body.split("\n</think>\n\n", 1)
            meta.update(tailored=True, attempt_index=k, divergence_step=div.index, divergence_kind=div.kind)
            break
        return self._trace(problem, thinking, solution, 0, meta)

    # -- batched forms (the API teacher's concurrency applies to these; here they just loop) ------
    def rectify_many(self, items: Sequence[tuple[Problem, TeacherTrace]], sample_index: int = 0) -> list[TeacherTrace]:
        return [self.rectify(p, w) for p, w in items]

    def corrupt_many(self, items: Sequence[tuple[Problem, TeacherTrace]], sample_index: int = 0) -> list[TeacherTrace]:
        return [self.corrupt(p, c) for p, c in items]

    def tailor_many(self, items: Sequence[tuple[Problem, Sequence[str]]], n: int = 1) -> list[list[TeacherTrace]]:
        out = []
        for p, wrong in items:
            trace = self.tailor(p, wrong)
            out.append([dataclasses.replace(trace, sample_index=i) for i in range(n)])
        return out
