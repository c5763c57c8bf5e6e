"""The toy domain's problems: seeded multi-step arithmetic word problems with integer answers.

Each problem is a starting quantity followed by a few actions, one operation each::

    Mia has 8 apples. On Monday, she buys 7 more. On Tuesday, she gives away 5.
    How many apples does Mia have now?

Ground truth lives in ``Problem.meta["steps"]`` (one dict per action: ``a op b = result``), so the
teacher, the rule-based reflector and the analysis never have to re-read the question.

Splits: ``train`` (and ``pretrain``, the same distribution under other ids) and ``test`` draw from the
same difficulty; ``hard`` uses the config's hard variant (more steps, larger numbers). Train and
test are disjoint by construction: every problem's arithmetic content (start, operations, operands)
is hashed into a bucket and ``test``/``hard`` only use the reserved buckets, whatever the seeds.
"""
from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from dataclasses import dataclass
from typing import Optional

from ..knobs import knob, validate
from ..records import Problem

SPLITS = ("train", "pretrain", "test", "hard")

NAMES = (
    ("Mia", "She", "her"), ("Tom", "He", "his"), ("Ava", "She", "her"), ("Leo", "He", "his"),
    ("Zoe", "She", "her"), ("Sam", "He", "his"), ("Lily", "She", "her"), ("Ben", "He", "his"),
    ("Emma", "She", "her"), ("Max", "He", "his"), ("Ella", "She", "her"), ("Jack", "He", "his"),
)
ITEMS = ("apples", "coins", "stickers", "marbles", "books", "pencils", "cards", "shells")

# One sentence per action, on consecutive days of the week from a random one ("On Tuesday, she gives
# away 5."): the day names tell the actions apart, so a small model can find "the next action" by
# matching the day, and every day occurs in training whatever the number of steps.
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
# The phrase (without pronoun) is what the teacher restates in its CoT.
PLUS_PHRASES = ("buys {b} more", "finds {b} more", "gets {b} more from a friend", "wins {b} more")
MINUS_PHRASES = ("gives away {b}", "loses {b}", "sells {b}", "gives {b} to a friend")


def times_phrase(m: int, poss: str, item: str) -> str:
    if m == 2:
        return f"doubles {poss} {item}"
    if m == 3:
        return f"triples {poss} {item}"
    return f"multiplies {poss} {item} by {m}"


def apply_op(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op in ("*", "x", "×"):
        return a * b
    if op in ("/", "÷"):
        return a // b if b and a % b == 0 else a / b if b else float("nan")
    raise ValueError(f"unknown operation {op!r}")


INVERSE_OP = {"+": "-", "-": "+"}


@dataclass
class ToyDomainConfig:
    """Difficulty knobs of the toy domain (simple types, so a YAML profile can set them).

    ``ops`` is a string of allowed operations among ``+-*``; multiplications use a factor in
    ``2..max_multiplier``. Every running total stays within ``2..max_value``. The ``hard_*`` fields
    define the harder split (``hard_variant()``), the toy stand-in for GSM-Hard.
    """

    min_steps: int = knob(2, "fewest steps of a problem", ge=1)
    max_steps: int = knob(4, "most steps of a problem", ge=1)
    max_operand: int = knob(9, "the start and every added/removed amount: 1..max_operand", ge=2)
    max_value: int = knob(20, "every running total stays within 2..max_value", ge=2)
    max_multiplier: int = knob(3, "multiplications use a factor in 2..max_multiplier", ge=2)
    ops: str = knob("+-*", "allowed operations, a string over +-*")
    seed: int = knob(0, "seed of the problem generator")
    test_buckets: int = knob(25, "of 100 hash buckets, those reserved for test/hard problems", ge=1, le=99)
    hard_min_steps: int = knob(4, "hard split: fewest steps", ge=1)
    hard_max_steps: int = knob(5, "hard split: most steps", ge=1)
    hard_max_operand: int = knob(12, "hard split: largest operand", ge=2)
    hard_max_value: int = knob(30, "hard split: largest running total", ge=2)

    def __post_init__(self) -> None:
        problems = []
        if self.min_steps > self.max_steps:
            problems.append("min_steps: need min_steps <= max_steps")
        if self.hard_min_steps > self.hard_max_steps:
            problems.append("hard_min_steps: need hard_min_steps <= hard_max_steps")
        if max(self.max_steps, self.hard_max_steps) > len(DAYS):
            problems.append(f"max_steps: at most {len(DAYS)} steps (one per day of the week)")
        if set(self.ops) - {"+", "-", "*"} or not self.ops:
            problems.append(f"ops: must be a non-empty string over '+-*', got {self.ops!r}")
        if self.max_value < self.max_operand:
            problems.append("max_value: need max_operand <= max_value")
        validate(self, problems)

    def hard_variant(self) -> "ToyDomainConfig":
        """The harder split's config: more steps, larger numbers, same operations."""
        return dataclasses.replace(
            self,
            min_steps=self.hard_min_steps,
            max_steps=self.hard_max_steps,
            max_operand=self.hard_max_operand,
            max_value=self.hard_max_value,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _signature(start: int, steps: list[tuple[str, int]]) -> str:
    return f"{start}|" + "|".join(f"{op}{b}" for op, b in steps)


def _bucket(signature: str) -> int:
    return int(hashlib.sha256(signature.encode()).hexdigest()[:8], 16) % 100


def is_test_signature(signature: str, cfg: ToyDomainConfig) -> bool:
    return _bucket(signature) < cfg.test_buckets


def _sample_math(rng: random.Random, cfg: ToyDomainConfig) -> tuple[int, list[tuple[str, int]]]:
    n_steps = rng.randint(cfg.min_steps, cfg.max_steps)
    start = rng.randint(2, cfg.max_operand)
    cur = start
    steps: list[tuple[str, int]] = []
    for _ in range(n_steps):
        choices = []
        if "+" in cfg.ops and cur + 1 <= cfg.max_value:
            choices.append("+")
        if "-" in cfg.ops and cur >= 3:
            choices.append("-")
        if "*" in cfg.ops and cfg.max_multiplier >= 2 and cur * 2 <= cfg.max_value:
            choices.append("*")
        op = rng.choice(choices)
        if op == "+":
            b = rng.randint(1, min(cfg.max_operand, cfg.max_value - cur))
        elif op == "-":
            b = rng.randint(1, min(cfg.max_operand, cur - 2))
        else:
            b = rng.randint(2, min(cfg.max_multiplier, cfg.max_value // cur))
        steps.append((op, b))
        cur = apply_op(cur, op, b)
    return start, steps


def _render(pid: str, split: str, start: int, steps: list[tuple[str, int]], rng: random.Random) -> Problem:
    name, pron, poss = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    first_day = rng.randrange(len(DAYS) - len(steps) + 1)  # consecutive days from a random one
    sentences = [f"{name} has {start} {item}."]
    gold = []
    cur = start
    for op, b in steps:
        if op == "+":
            phrase = rng.choice(PLUS_PHRASES).format(b=b)
        elif op == "-":
            phrase = rng.choice(MINUS_PHRASES).format(b=b)
        else:
            phrase = times_phrase(b, poss, item)
        result = apply_op(cur, op, b)
        day = DAYS[first_day + len(gold)]
        gold.append({"a": cur, "op": op, "b": b, "result": result, "phrase": phrase, "day": day,
                     "clause": f"On {day}, {pron.lower()} {phrase}"})
        sentences.append(f"On {day}, {pron.lower()} {phrase}.")
        cur = result
    sentences.append(f"How many {item} does {name} have now?")
    return Problem(
        id=pid,
        question=" ".join(sentences),
        answer=str(cur),
        source="toy",
        meta={
            "split": split,
            "n_steps": len(steps),
            "start": start,
            "name": name,
            "pronoun": pron,
            "possessive": poss,
            "item": item,
            "steps": gold,
            "signature": _signature(start, steps),
        },
    )


def generate_problems(
    n: int, cfg: Optional[ToyDomainConfig] = None, seed: Optional[int] = None, split: str = "train"
) -> list[Problem]:
    """``n`` distinct problems of one split, deterministic in (cfg, seed, split).

    ids are ``toy-<split>-00000`` ...; ``meta["steps"]`` holds the ground-truth computations.
    ``hard`` uses ``cfg.hard_variant()``. ``seed`` defaults to ``cfg.seed``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    cfg = cfg or ToyDomainConfig()
    seed = cfg.seed if seed is None else seed
    want_test = split in ("test", "hard")
    draw_cfg = cfg.hard_variant() if split == "hard" else cfg
    rng = random.Random(f"orion-toy|{seed}|{split}")
    seen: set[str] = set()
    problems: list[Problem] = []
    attempts = 0
    while len(problems) < n:
        attempts += 1
        if attempts > 200 * n + 10_000:
            raise ValueError(
                f"could only draw {len(problems)} distinct {split} problems of {n}: the difficulty "
                "settings leave too few distinct problems"
            )
        start, steps = _sample_math(rng, draw_cfg)
        sig = _signature(start, steps)
        if sig in seen or is_test_signature(sig, cfg) != want_test:
            continue
        seen.add(sig)
        problems.append(_render(f"toy-{split}-{len(problems):05d}", split, start, steps, rng))
    return problems


# ---------------------------------------------------------------------------------------------
# Reading computations back out of any chain of thought


@dataclass(frozen=True)
class Step:
    """One written computation ``a op b = result`` found in a text.

    ``kind``: ``compute`` (a step of the solution), ``check`` (a self-check line, starting with
    "Check" or "Let me check") or ``reflect`` (a reflection line, starting with "Wait" or "Note",
    which may quote a wrong computation on purpose). ``section``: ``think`` (inside
    ``<think>...</think>``) or ``solution``. ``start``/``end``: character offsets of the equation;
    ``line``: index of its line in the text.
    """

    a: int
    op: str
    b: int
    result: int
    kind: str = "compute"
    section: str = "think"
    line: int = 0
    start: int = 0
    end: int = 0

    @property
    def expected(self):
        return apply_op(self.a, self.op, self.b)

    @property
    def correct(self) -> bool:
        """Is the written arithmetic right?"""
        return self.expected == self.result

    @property
    def text(self) -> str:
        return f"{self.a} {self.op} {self.b} = {self.result}"

    def same_computation(self, other: "Step") -> bool:
        return (self.a, self.op, self.b, self.result) == (other.a, other.op, other.b, other.result)


_EQ_RE = re.compile(r"(?<!\d)(?<!\d\.)(-?\d+)\s*([+\-*/×÷])\s*(-?\d+)\s*=\s*(-?\d+)(?!\d|\.\d)")
_CHECK_PREFIXES = ("check", "let me check", "verify", "double-check")
_REFLECT_PREFIXES = ("wait", "note", "hmm", "but wait")


def _line_kind(line: str) -> str:
    low = line.strip().lower()
    if low.startswith(_CHECK_PREFIXES):
        return "check"
    if low.startswith(_REFLECT_PREFIXES):
        return "reflect"
    return "compute"


def parse_steps(cot: str) -> list[Step]:
    """Every computation ``a op b = c`` written in a CoT (teacher, student or refined), in order.

    Works on any text: without ``<think>`` tags everything counts as ``think`` unless a
    ``</think>`` closes it. Filter on ``kind``/``section`` (or use ``solution_steps``) to get the
    steps of the solution path.
    """
    cot = cot or ""
    think_open = cot.find("<think>")
    think_close = cot.find("</think>")
    steps: list[Step] = []
    offset = 0
    for lineno, line in enumerate(cot.split("\n")):
        kind = _line_kind(line.replace("<think>", ""))
        for m in _EQ_RE.finditer(line):
            pos = offset + m.start()
            if think_close >= 0 and pos > think_close:
                section = "solution"
            elif think_close < 0 and think_open < 0:
                section = "think"
            else:
                section = "think" if pos > think_open else "solution"
            steps.append(
                Step(
                    a=int(m.group(1)), op=m.group(2), b=int(m.group(3)), result=int(m.group(4)),
                    kind=kind, section=section, line=lineno, start=pos, end=offset + m.end(),
                )
            )
        offset += len(line) + 1
    return steps


def solution_steps(cot: str) -> list[Step]:
    """The computations that make up the solution path: ``compute`` steps of the thinking, or of the
    whole text when it has no thinking computations (e.g. a reply without ``<think>``). A caught slip
    (a wrong step, then on the next line a check that ends on the right one: "..., so 8 + 7 = 15.")
    counts as its corrected step, and a step taken back by the next line ("Check: that was the last
    step, ...") does not count."""
    cot = cot or ""
    lines = cot.split("\n")
    steps: list[Step] = []
    for s in parse_steps(cot):
        if s.kind == "compute" and not _taken_back(lines, s):
            steps.append(s)
        elif s.kind == "check" and steps and _corrects(cot, s, steps[-1]):
            steps[-1] = dataclasses.replace(s, kind="compute")  # a caught slip: the corrected step counts
    think = [s for s in steps if s.section == "think"]
    return think or steps


LAST_STEP_CHECK = "Check: that was the last step"


def _taken_back(lines: list, step: Step) -> bool:
    """Is the line right after ``step`` the check that says it was one step too many?"""
    return step.line + 1 < len(lines) and lines[step.line + 1].startswith(LAST_STEP_CHECK)


def _corrects(cot: str, check: Step, last: Step) -> bool:
    """Is ``check`` a caught slip's correction of ``last`` ("Check: ..., not 14, so 8 + 7 = 15.",
    "Check: the last result is 15, so 15 + 2 = 17.")? On the line right after the slipped step, it
    writes a different, right computation after ", so "."""
    return (
        check.line == last.line + 1 and check.correct and not check.same_computation(last)
        and cot[:check.start].endswith(", so ")
    )


def gold_steps(problem: Problem) -> list[Step]:
    """The problem's ground-truth computations (from ``meta["steps"]``) as ``Step`` objects."""
    try:
        rows = problem.meta["steps"]
    except (KeyError, TypeError):
        raise ValueError(f"problem {problem.id!r} has no meta['steps']: not a toy-domain problem") from None
    return [Step(a=int(r["a"]), op=r["op"], b=int(r["b"]), result=int(r["result"])) for r in rows]
