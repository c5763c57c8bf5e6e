"""Candidate rewrites of known kind, built from real long CoTs (R1-Distill-Qwen-32B on LIMO's problems).

For each CoT a wrong attempt is made by changing one value the teacher derived (one occurrence, in the
middle third of its thinking, to a value the CoT and the question never write) and its final answer.
From the CoT and that attempt, candidates of each kind in ``KINDS`` are written, with the share of each
that stage 03 should accept in ``EXPECTED`` (at least / at most). Shared by the acceptance tests
(tests/test_acceptance_long.py) and ``bench/acceptance_checks.py``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from orion_utils.acceptance import numbers
from orion_utils.records import format_cot
from orion_utils.teachers.datasets import split_reasoning_solution

TRACES = Path(__file__).resolve().parents[3] / "shared" / "data" / "traces" / "r1_distill_qwen32b_limo.jsonl"

# kind -> (lowest, highest) share of its candidates that should be accepted
EXPECTED = {"inserted": (0.9, 1.0), "echo": (0.0, 0.0), "uncorrected": (0.0, 0.2), "copy": (0.0, 0.0),
            "truncation": (0.0, 0.0), "cut after reflection": (0.0, 0.1), "other question": (0.0, 0.0)}
POSITIONS = ("after the sentence", "paragraph after the line", "paragraph before the line",
             "wrong line, then the reflection")

# A reflection at the wrong step, in several wordings: {quote} is the wrong attempt's words around the
# wrong value, {wrong} the wrong value, {right} the teacher's.
REFLECTIONS = (
    "Wait, earlier I wrote \"{quote}\". That is wrong: the value here is {right}, not {wrong}. "
    "Let me redo this step with {right} and go on.",
    "Hold on. In my first attempt I had {wrong} at this point ({quote}), which is a mistake; the correct value "
    "is {right}, so I continue with {right}.",
    "Let me check this step against my earlier attempt, where I got {wrong}. That was incorrect: recomputing "
    "gives {right}. Continuing from {right}.",
    "Hmm, my previous solution said: {quote}. I made an error there, it should be {right} instead of {wrong}.",
    "I need to be careful here. I previously computed {wrong}, but that was an arithmetic slip; the right "
    "result is {right}.",
    "Actually, in my earlier work I used {wrong} for this quantity, and that led me to the wrong answer. "
    "The correct value is {right}; let me keep going with it.",
)
# The wrong step quoted and declared fine: no correction.
UNCORRECTED = (
    "Wait, earlier I wrote \"{quote}\". Checking it again, I see no mistake there, so I keep going.",
    "Let me double-check my earlier attempt, where I got {wrong} here. That looks right to me.",
    "In my first attempt I had {wrong} at this step. I re-checked it and it holds.",
    "Hmm, previously I computed: {quote}. Nothing wrong with that; moving on.",
    "My earlier solution used {wrong} for this value; I don't see an error in it.",
)


@dataclass
class Case:
    """One real CoT and the wrong attempt made from it."""

    index: int
    question: str
    gold: str
    cot: str  # the teacher's CoT, format_cot(thinking, solution)
    wrong_attempt: str
    pos: int  # where the changed value sits in the CoT
    right: str
    wrong: str

    @property
    def line(self) -> tuple[int, int]:
        """The CoT's line holding the changed value."""
        start = self.cot.rfind("\n", 0, self.pos) + 1
        end = self.cot.find("\n", self.pos)
        return start, len(self.cot) if end < 0 else end

    @property
    def sentence_end(self) -> int:
        """The end of the sentence holding the changed value (at most its line's end)."""
        _, line_end = self.line
        m = re.search(r"[.!?](\s|$)", self.cot[self.pos:line_end])
        return self.pos + m.end(0) if m else line_end

    def quote(self) -> str:
        """The wrong attempt's words around the wrong value (up to ~60 characters each side, in its line)."""
        start, end = self.line
        wpos = self.pos
        text = self.wrong_attempt[start:end + len(self.wrong) - len(self.right)]
        at = wpos - start
        lo = max(0, text.rfind(" ", 0, max(0, at - 50)) + 1)
        hi = text.find(" ", at + len(self.wrong) + 40)
        return text[lo: len(text) if hi < 0 else hi].strip()


def load_cases(limit: int = 50, path: Path = TRACES) -> list[Case]:
    """Up to ``limit`` cases from the first traces whose CoT has a value to change."""
    out = []
    for k, line in enumerate(path.read_text().splitlines()):
        if len(out) >= limit:
            break
        row = json.loads(line)
        thinking, solution, _ = split_reasoning_solution(row["solution"])
        case = make_case(k, row["question"], str(row["gold_answer"]), format_cot(thinking, solution))
        if case is not None:
            out.append(case)
    return out


def make_case(index: int, question: str, gold: str, cot: str) -> Optional[Case]:
    """The CoT with one derived value changed: the first integer of 2+ digits in the middle third of the
    thinking that the question does not have, to a value neither the CoT nor the question writes."""
    known = numbers(cot) | numbers(question)
    end = cot.find("</think>")
    end = len(cot) if end < 0 else end
    for m in re.compile(r"(?<![\d.,_^{])\d{2,5}(?![\d.,}])").finditer(cot, end // 3, 2 * end // 3):
        right = m.group()
        if right in numbers(question):
            continue
        wrong = next((str(int(right) + d) for d in (10, 7, 13, 21, 3) if str(int(right) + d) not in known), None)
        if wrong is None:
            continue
        pos = m.start()
        wrong_attempt = cot[:pos] + wrong + cot[pos + len(right):]
        boxed = wrong_attempt.rfind("\\boxed{")
        if boxed < 0:
            return None
        close = wrong_attempt.find("}", boxed)
        wrong_answer = str(int(gold) + 1) if gold.isdigit() else gold + "1"
        wrong_attempt = wrong_attempt[:boxed] + "\\boxed{" + wrong_answer + wrong_attempt[close:]
        return Case(index, question, gold, cot, wrong_attempt, pos, right, wrong)
    return None


def _box(text: str, gold: str) -> str:
    return text.rstrip() + f"\n\n**Final Answer**\n\\boxed{{{gold}}}"


def inserted(case: Case, k: int, where: int = 0) -> str:
    """The CoT with reflection wording ``k`` inserted at the wrong step, at position ``where``
    (``POSITIONS``): after the sentence, as a paragraph after the line, as a paragraph before the line, or the
    line written as the wrong attempt has it and the reflection right after it."""
    text = REFLECTIONS[k % len(REFLECTIONS)].format(quote=case.quote(), wrong=case.wrong, right=case.right)
    start, end = case.line
    cot = case.cot
    where = where % len(POSITIONS)
    if where == 0:
        at = case.sentence_end
        return cot[:at].rstrip() + " " + text + " " + cot[at:].lstrip(" ")
    if where == 1:
        return cot[:end] + "\n\n" + text + cot[end:]
    if where == 2:
        return cot[:start] + text + "\n\n" + cot[start:]
    wrong_line = case.wrong_attempt[start:end + len(case.wrong) - len(case.right)]
    return cot[:start] + wrong_line + "\n\n" + text + "\n\n" + cot[start:]


def uncorrected(case: Case, k: int) -> str:
    text = UNCORRECTED[k % len(UNCORRECTED)].format(quote=case.quote(), wrong=case.wrong, right=case.right)
    _, end = case.line
    if k % 2:
        at = case.sentence_end
        return case.cot[:at].rstrip() + " " + text + " " + case.cot[at:].lstrip(" ")
    return case.cot[:end] + "\n\n" + text + case.cot[end:]


def echoes(case: Case) -> list[str]:
    """The reflection prompt pasted back, then the gold answer boxed, in several cuts."""
    from orion_utils.reflection import REFLECTION_PROMPT

    full = REFLECTION_PROMPT.format(question=case.question, teacher_cot=case.cot, wrong_attempt=case.wrong_attempt)
    body = full.split("\n\n", 1)[1]  # without the opening sentence
    head, instruction = body.rsplit("\n\nRewrite", 1)
    bold = re.sub(r"^## (.*)$", r"**\1**", head, flags=re.M)
    return [_box(full, case.gold), _box(body, case.gold), _box(head, case.gold),
            _box(bold + "\n\nRewrite" + instruction, case.gold),
            _box("## Your earlier attempt (wrong)\n" + case.wrong_attempt + "\n\n" + case.cot, case.gold),
            _box(case.wrong_attempt + "\n\n" + case.cot, case.gold)]


def copies(case: Case) -> list[str]:
    return [case.cot, re.sub(r"[ \t]+", " ", case.cot.replace("\n\n", "\n"))]


def truncations(case: Case) -> list[str]:
    """The CoT's first half or quarter, then the box."""
    return [_box(case.cot[: len(case.cot) // 2], case.gold), _box(case.cot[: len(case.cot) // 4], case.gold)]


def cut_after_reflection(case: Case) -> str:
    """The reflection inserted (as a paragraph after the line), the CoT cut at the first line end 400
    characters later, then the box."""
    with_reflection = inserted(case, 1, 1)
    cut = with_reflection.find("\n", with_reflection.find(REFLECTIONS[1][:20]) + 400)
    return _box(with_reflection[: cut if cut > 0 else len(with_reflection)], case.gold)


def other_question(case: Case, other: Case) -> str:
    """Another question's CoT, its box changed to this question's gold answer."""
    return re.sub(r"\\boxed\{[^{}]*\}", lambda _: f"\\boxed{{{case.gold}}}", other.cot)


def candidates(cases: list[Case]) -> dict[str, list[tuple[Case, str]]]:
    """Every kind's candidates over the cases: (case, candidate text). Each case gets every reflection
    wording once, at positions that cycle with the case (every wording meets every position over 4 cases)."""
    out: dict[str, list] = {kind: [] for kind in EXPECTED}
    for i, case in enumerate(cases):
        out["inserted"] += [(case, inserted(case, k, i + k)) for k in range(len(REFLECTIONS))]
        out["echo"] += [(case, t) for t in echoes(case)]
        out["uncorrected"] += [(case, uncorrected(case, k)) for k in range(len(UNCORRECTED))]
        out["copy"] += [(case, t) for t in copies(case)]
        out["truncation"] += [(case, t) for t in truncations(case)]
        out["cut after reflection"].append((case, cut_after_reflection(case)))
        out["other question"].append((case, other_question(case, cases[(i + 1) % len(cases)])))
    return out


class Fixed:
    """A reflector proposing given texts per question (the candidates under test), as ``reflection.Reflector``."""

    name = "llm"

    def __init__(self, by_id: dict):
        self.by_id = by_id

    def propose(self, items, m, seed=None):
        return [self.by_id[i.problem.id] for i in items]
