"""The toy domain's reflection rules (in place of the LLM reflector of ORION's stage 3).

Two reflectors use them. ``reflector: student`` (the toy default; ``rewrite_start`` below, driven by
``reflection.StudentReflector``): rules only find the diverging step and phrase its check, and the
student model writes the rest of the rewrite. ``reflector: rule``, described next, writes the whole
reflection by rule.

A tiny student cannot follow a reflection prompt, so in the toy domain the "reflection" is written
by rule: find the first step where the student's wrong attempt diverges from the teacher's CoT, and
write into the teacher's CoT, right after that step, an explicit reflection on the student's
mistake and its correction, e.g.::

    On Monday, she buys 7 more: 8 + 7 = 15.
    Wait, I might be tempted to say 8 + 7 = 14, but 8 + 7 = 15.
    Check: 15 - 7 = 8. Correct.

The rest of the teacher's (correct) reasoning and its final answer are kept. Toy results that use
it must say that the reflector is rule-based. The same machinery writes the toy teacher's
*tailored* rationales (Tailored Learning), in the teacher's voice ("Note: a common mistake ...").
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..records import Problem
from .domain import LAST_STEP_CHECK, Step, gold_steps, parse_steps, solution_steps

_BOXED_RE = re.compile(r"\\boxed\{\s*(-?\d+)\s*\}")

KINDS = ("start", "carry", "operation", "operand", "arithmetic", "missing", "extra", "answer")
# The reflection texts are written in code below: this module's own source stands for them in the
# fingerprint of the stages that write them (``stage_specs.SENDS``: the toy reflectors, the toy teacher's
# tailored rationales), so any edit here reruns those stages.
PROMPTS = {"toy_rules": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()}


@dataclass(frozen=True)
class Divergence:
    """Where and how a wrong attempt first departs from the reference solution path.

    ``index``: the reference step it concerns (for ``extra``/``answer``: the last step);
    ``kind``: one of ``KINDS``; ``wrong``: the attempt's step there (None if it has none);
    ``right``: the reference step; ``wrong_answer``: the attempt's boxed answer, if any.
    """

    index: int
    kind: str
    right: Step
    wrong: Optional[Step] = None
    wrong_answer: Optional[str] = None


def boxed_integer(text: str) -> Optional[str]:
    """The last ``\\boxed{N}`` integer in a text (for writing reflections, not for grading)."""
    found = _BOXED_RE.findall(text or "")
    return found[-1] if found else None


def find_divergence(reference: list[Step], attempt: str) -> Optional[Divergence]:
    """Compare the attempt's solution path step by step with the reference steps.

    Returns None when the attempt has no parseable computation, or when it agrees with the
    reference everywhere (same steps and, if it has one, the same boxed answer)."""
    if not reference:
        return None
    mine = solution_steps(attempt)
    if not mine:
        return None
    answer = boxed_integer(attempt)
    for i, right in enumerate(reference):
        if i >= len(mine):
            return Divergence(i, "missing", right, None, answer)
        wrong = mine[i]
        if wrong.same_computation(right):
            continue
        if wrong.a != right.a:
            kind = "start" if i == 0 else "carry"
        elif wrong.op != right.op:
            kind = "operation"
        elif wrong.b != right.b:
            kind = "operand"
        else:
            kind = "arithmetic"
        return Divergence(i, kind, right, wrong, answer)
    last = len(reference) - 1
    if len(mine) > len(reference):
        return Divergence(last, "extra", reference[last], mine[len(reference)], answer)
    if answer is not None and answer != str(reference[last].result):
        return Divergence(last, "answer", reference[last], None, answer)
    return None


def _fmt(a, op, b, r=None) -> str:
    return f"{a} {op} {b}" + ("" if r is None else f" = {r}")


_OPENERS = {
    "self": ("Wait, I might be tempted to ", "Wait, careful: I could "),
    "teacher": ("Note: a common mistake is to ", "Note: students often "),
}


def _step_context(problem: Problem, div: Divergence) -> tuple:
    """What both reflection texts say about the diverging step: the right and wrong steps, the right
    equation, and the problem's own words for that step ("on Monday, she buys 7 more")."""
    m = problem.meta
    r, w = div.right, div.wrong
    steps = m.get("steps") or []
    row = steps[div.index] if div.index < len(steps) else {}
    clause = row.get("clause") or f"{m.get('pronoun', 'it')} {row.get('phrase', '')}"
    return r, w, _fmt(r.a, r.op, r.b, r.result), clause[:1].lower() + clause[1:]


def reflection_text(problem: Problem, div: Divergence, variant: int = 0, voice: str = "self") -> str:
    """One line reflecting on the divergence. ``voice``: ``self`` (ORION: the student's own
    reflection, "Wait, I might be tempted to ...") or ``teacher`` (Tailored Learning: "Note: a
    common mistake is to ..."). Bit 0 of ``variant`` picks the wording, bit 1 the opener."""
    if voice not in _OPENERS:
        raise ValueError(f"voice must be one of {sorted(_OPENERS)}, got {voice!r}")
    m = problem.meta
    r, w, right_eq, said = _step_context(problem, div)
    final = str(r.result) if div.kind in ("extra", "answer") else ""
    if div.kind == "arithmetic":
        wrong_claim = _fmt(w.a, w.op, w.b, w.result)
        core = (f"say {wrong_claim}, but {right_eq}", f"say {wrong_claim}, but it is {r.result}: {right_eq}")
    elif div.kind == "operation":
        core = (
            f"compute {_fmt(w.a, w.op, w.b)}, but {said}, so it is {right_eq}",
            f"use {w.op} here, but {said}, so {right_eq}",
        )
    elif div.kind == "operand":
        core = (
            f"compute {_fmt(w.a, w.op, w.b)}, but {said}, so it is {right_eq}",
            f"use {w.b} here, but the number is {r.b}, so {right_eq}",
        )
    elif div.kind == "start":
        core = (
            f"start from {w.a}, but {m.get('name', 'it')} starts with {r.a}, so {right_eq}",
            f"start from {w.a}, but the start is {r.a}, so {right_eq}",
        )
    elif div.kind == "carry":
        core = (
            f"continue from {w.a}, but the last result is {r.a}, so {right_eq}",
            f"use {w.a} here, but I have {r.a} now, so {right_eq}",
        )
    elif div.kind == "missing":
        core = (f"stop here, but {said}", f"skip the next step, but {said}")
    elif div.kind == "extra":
        core = (
            f"do one more step, but that was the last one, so the answer is {final}",
            f"go on with {_fmt(w.a, w.op, w.b)}, but no step is left, so the answer is {final}",
        )
    elif div.kind == "answer":
        core = (
            f"answer {div.wrong_answer}, but the last result is {final}, so the answer is {final}",
            f"write {div.wrong_answer}, but the answer is the last result, {final}",
        )
    else:
        raise ValueError(f"unknown divergence kind {div.kind!r}")
    opener = _OPENERS[voice][(variant >> 1) % 2]
    return f"{opener}{core[variant % 2]}."


def insert_after_step(cot: str, reference: list[Step], index: int, line: str, at_end: bool = False) -> Optional[str]:
    """Insert ``line`` after the line holding reference step ``index`` (a compute step of ``cot``),
    or, with ``at_end``, before the closing recap line of the thinking."""
    if at_end:
        close = cot.find("</think>")
        body_end = close if close >= 0 else len(cot)
        prev_nl = cot.rfind("\n", 0, body_end - 1 if body_end and cot[body_end - 1] == "\n" else body_end)
        if prev_nl < 0:
            return None
        return cot[: prev_nl + 1] + line + "\n" + cot[prev_nl + 1:]
    step = reference[index]
    nl = cot.find("\n", step.end)
    if nl < 0:
        return None
    return cot[: nl + 1] + line + "\n" + cot[nl + 1:]


def _reference(problem: Problem, teacher_cot: str) -> Optional[list[Step]]:
    ref = solution_steps(teacher_cot)
    try:
        gold = gold_steps(problem)
    except ValueError:
        gold = None
    if gold is not None and [s.text for s in ref] != [s.text for s in gold]:
        return None  # the teacher CoT does not follow the gold path (a slipped trace): don't edit it
    return ref or None


def _diverging_step(problem: Problem, teacher_cot: str, wrong_attempt: str) -> Optional[tuple[list[Step], Divergence]]:
    """The teacher CoT's steps and where the wrong attempt first leaves them, or None (no parseable
    step, no divergence, or the teacher CoT is off the gold path): what both reflectors start from."""
    ref = _reference(problem, teacher_cot)
    if ref is None:
        return None
    div = find_divergence(ref, wrong_attempt)
    return None if div is None else (ref, div)


def reflect_cot(
    problem: Problem, teacher_cot: str, wrong_attempt: str, variant: int = 0, voice: str = "self"
) -> Optional[tuple[str, Divergence]]:
    """(new CoT, divergence) or None; see ``rule_reflect``."""
    found = _diverging_step(problem, teacher_cot, wrong_attempt)
    if found is None:
        return None
    ref, div = found
    line = reflection_text(problem, div, variant, voice)
    at_end = div.kind in ("extra", "answer")
    if div.kind == "missing":
        # Reflect before the step the attempt left out: after the previous step's lines.
        new = _insert_before_step(teacher_cot, ref, div.index, line)
    else:
        new = insert_after_step(teacher_cot, ref, div.index, line, at_end=at_end)
    return (new, div) if new is not None else None


def _insert_before_step(cot: str, reference: list[Step], index: int, line: str) -> Optional[str]:
    start = reference[index].start
    prev_nl = cot.rfind("\n", 0, start)
    if prev_nl < 0:
        return None
    return cot[: prev_nl + 1] + line + "\n" + cot[prev_nl + 1:]


def rule_reflect(problem: Problem, teacher_cot: str, wrong_attempt: str, variant: int = 0) -> Optional[str]:
    """Rewrite the teacher's CoT around the student's mistake (ORION stage 3, toy reflector).

    Finds the first step where ``wrong_attempt`` diverges from ``teacher_cot`` (wrong start,
    carried value, operation, operand, arithmetic, a skipped step, an extra step, or a wrong final
    answer after right steps) and inserts an explicit reflection there ("Wait, I might be tempted
    to say 8 + 7 = 14, but 8 + 7 = 15."), keeping the rest of the teacher's CoT and its boxed
    answer. ``variant`` picks among a few phrasings, so several candidates can differ. Returns
    None when there is nothing to reflect on: the attempt has no parseable step, agrees with the
    teacher, or the teacher CoT itself is off the gold path.
    """
    out = reflect_cot(problem, teacher_cot, wrong_attempt, variant, voice="self")
    return out[0] if out else None


# ---------------------------------------------------------------------------------------------
# The student's own rewrite (``reflector: student``): rules only find the diverging step and phrase
# its check; the toy student itself writes everything after the check (see ``reflection``).

KINDS_WITH_WRONG_LINE = ("start", "carry", "operation", "operand", "arithmetic", "extra")


@dataclass(frozen=True)
class RewriteStart:
    """The beginning of the student's own rewrite of a teacher CoT, up to and including the check.

    ``text``: the reasoning before the diverging step (the student's own attempt when it is clean
    there, else the teacher's CoT: ``prefix_source``), then the student's wrong line quoted verbatim
    (none for ``missing``/``answer``), then the rule-written check of that step, ending in a newline;
    the student model continues from here. ``wrong_span``: the quoted wrong line's character span
    in ``text`` (what ``mask_wrong_step`` takes out of the loss), or None."""

    text: str
    divergence: Divergence
    prefix_source: str
    wrong_span: Optional[tuple] = None


def _line_bounds(text: str, pos: int) -> tuple[int, int]:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return start, (len(text) if end < 0 else end)


def check_line(problem: Problem, div: Divergence) -> str:
    """The rule-written check of the diverging step, in the toy CoTs' own "Check: ..." idiom; its
    equations are all right and it ends on the corrected step (or answer), which the student then
    carries on from, e.g. ``Check: 14 - 7 = 7, not 8, so 8 + 7 = 15.``"""
    m = problem.meta
    r, w, right_eq, said = _step_context(problem, div)
    final = r.result
    if div.kind == "arithmetic":
        if w.op == "*":
            check = f"{_fmt(w.b, '*', w.a, r.result)}, not {w.result}"
        else:
            inverse = INVERSE_OP_SIGN[w.op]
            back = w.result - w.b if w.op == "+" else w.result + w.b
            check = f"{_fmt(w.result, inverse, w.b, back)}, not {w.a}"
        return f"Check: {check}, so {right_eq}."
    if div.kind in ("operation", "operand", "missing"):
        return f"Check: {said}, so {right_eq}."
    if div.kind == "carry":
        return f"Check: the last result is {r.a}, so {right_eq}."
    if div.kind == "start":
        return f"Check: {m.get('name', 'it')} starts with {r.a}, so {right_eq}."
    if div.kind == "extra":
        return f"{LAST_STEP_CHECK}, so the answer is {final}."
    if div.kind == "answer":
        return f"Check: the answer is the last result, {final}."
    raise ValueError(f"unknown divergence kind {div.kind!r}")


INVERSE_OP_SIGN = {"+": "-", "-": "+"}


def _clean_prefix(prefix: str, reference: list[Step], upto: int) -> bool:
    """The student's own text before its wrong step can stand in a training CoT: it opens the
    thinking, holds the reference's first ``upto`` steps and nothing else, and every computation
    written in it (checks included) is right."""
    if not prefix.startswith("<think>") or "</think>" in prefix:
        return False
    steps = parse_steps(prefix)
    if not all(s.correct for s in steps):
        return False
    mine = [s for s in steps if s.kind == "compute"]
    return len(mine) == upto and all(a.same_computation(b) for a, b in zip(mine, reference))


def rewrite_start(problem: Problem, teacher_cot: str, wrong_attempt: str) -> Optional[RewriteStart]:
    """Where and how the student's own rewrite begins (see ``RewriteStart``), or None when there is
    nothing to reflect on (no parseable step, no divergence, or the teacher CoT is off the gold path)."""
    found = _diverging_step(problem, teacher_cot, wrong_attempt)
    if found is None:
        return None
    ref, div = found
    mine = solution_steps(wrong_attempt)
    wrong_line = None
    prefix, source = None, "teacher"
    if div.kind in KINDS_WITH_WRONG_LINE:
        j = len(ref) if div.kind == "extra" else div.index
        start, end = _line_bounds(wrong_attempt, mine[j].start)
        wrong_line = wrong_attempt[start:end]
        own = wrong_attempt[:start]
        if div.kind != "start" and _clean_prefix(own, ref, j):
            prefix, source = own, "student"
    if prefix is None:
        if div.kind in ("extra", "answer"):
            close = teacher_cot.find("</think>")
            recap_start, _ = _line_bounds(teacher_cot, max(0, teacher_cot.rfind("\n", 0, close)))
            prefix = teacher_cot[:recap_start]
        else:
            prefix = teacher_cot[: _line_bounds(teacher_cot, ref[div.index].start)[0]]
    if not prefix.endswith("\n"):
        return None
    text, span = prefix, None
    if wrong_line:
        span = (len(text), len(text) + len(wrong_line))
        text += wrong_line + "\n"
    text += check_line(problem, div) + "\n"
    return RewriteStart(text, div, source, span)
