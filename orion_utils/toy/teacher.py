"""The toy domain's programmatic R1-style teacher: long CoTs with step computations and self-checks.

A ``full`` CoT (what the pipeline distils)::

    <think>
    Mia starts with 8 apples.
    On Monday, she buys 7 more: 8 + 7 = 15.
    Check: 15 - 7 = 8. Correct.
    On Tuesday, she gives away 5: 15 - 5 = 10.
    Check: 10 + 5 = 15. Correct.
    So Mia has 10 apples now.
    </think>

    Mia has 10 apples now. The answer is \\boxed{10}.

``terse`` drops the check lines (a shorter style, e.g. for pre-training experiments). ``variant``
changes the wording a little (intro, connective, check phrasing) so several samples of one problem
differ; sample 0 always uses variant 0. A "slip" is a plausible arithmetic mistake at one step whose
wrong result is carried through to a wrong boxed answer (the teacher believes it, so its check
line confirms it).

A *caught* slip (``caught_slip_rate``) is the R1-style "wait, ..." moment: the step is first written
with a plausible wrong result, then a check in exactly the idiom of the toy reflector
(``reflect.check_line``) finds and corrects it, and the reasoning carries on from the right value::

    On Monday, she buys 7 more: 8 + 7 = 14.
    Check: 14 - 7 = 7, not 8, so 8 + 7 = 15.
    On Tuesday, she gives away 5: 15 - 5 = 10.

The CoT stays correct (right boxed answer). The toy student's pre-training sees some of these, so the
base student knows what a check that finds a mistake looks like. One kind (``extra``) is the toy
student's most common mistake, going on past the last step; it is caught the same way::

    On Tuesday, she gives away 5: 10 - 5 = 5.
    Check: that was the last step, so the answer is 10.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

from ..records import Problem
from .domain import apply_op, gold_steps

STYLES = ("full", "terse")
WORDINGS = ("fixed", "varied")
N_VARIANTS = 4

_INTROS = ("{name} starts with {start} {item}.", "At first {name} has {start} {item}.")
_CONNECTIVES = (": ", ", so ")
_CHECKS = ("Check: {eq}. Correct.", "Let me check: {eq}. Yes.")
# An R1-style teacher (``wording="varied"``) varies its phrasing from line to line, more than one
# fixed wording does: each step line and check line draws from these.
_VARIED_CONNECTIVES = _CONNECTIVES + (", that is ", "; so ")
_VARIED_CHECKS = _CHECKS + ("Verify: {eq}. Right.", "Double-check: {eq}. OK.")


@dataclass(frozen=True)
class Computation:
    """One step as written (its result may be a slip): a op b = result."""

    a: int
    op: str
    b: int
    result: int
    phrase: str

    @property
    def text(self) -> str:
        return f"{self.a} {self.op} {self.b} = {self.result}"


def seeded_rng(*parts) -> random.Random:
    """A generator seeded by ``parts`` joined with ``|``: the same parts draw the same numbers in any process."""
    return random.Random("|".join(str(p) for p in parts))


def correct_computations(problem: Problem) -> list[Computation]:
    phrases = [row.get("phrase", "") for row in problem.meta["steps"]]
    return [Computation(s.a, s.op, s.b, s.result, p) for s, p in zip(gold_steps(problem), phrases)]


def slipped_result(a: int, op: str, b: int, rng: random.Random) -> int:
    """A plausible wrong result for ``a op b`` (carry/borrow slips, off by one or ten), never the
    right one and never negative."""
    right = apply_op(a, op, b)
    typical = []  # the classic slips, three times as likely as the generic ones
    if op == "+":
        typical.append((a % 10 + b % 10) % 10 + (a // 10 + b // 10) * 10)  # forgot the carry
        typical.append(right + 10)  # carried twice
    elif op == "-":
        typical.append(abs(a % 10 - b % 10) + (a // 10 - b // 10) * 10)  # subtracted the small digit
        typical.append(right - 10)
    else:
        typical.append((a % 10) * b % 10 + (a // 10) * b * 10)  # forgot the carry
        typical.append(right + b)  # one group too many
        typical.append(right - b)
    weighted = [(c, 3) for c in typical] + [(right + 1, 1), (right - 1, 1), (right + 10, 1)]
    weighted = [(c, w) for c, w in weighted if c != right and c >= 0]
    return rng.choices([c for c, _ in weighted], weights=[w for _, w in weighted], k=1)[0]


def computations_with_slip(problem: Problem, at: int, rng: random.Random) -> list[Computation]:
    """The problem's steps with a plausible slip at step ``at``, carried through to the end.

    Later operands stay those of the question; a later subtraction that would go negative is
    avoided by re-drawing the slip (an upward slip always keeps later values non-negative)."""
    gold = correct_computations(problem)
    for attempt in range(8):
        a0 = gold[at].a
        wrong = slipped_result(a0, gold[at].op, gold[at].b, rng) if attempt < 7 else gold[at].result + 1
        out = list(gold[:at]) + [Computation(a0, gold[at].op, gold[at].b, wrong, gold[at].phrase)]
        cur = wrong
        ok = True
        for g in gold[at + 1:]:
            r = apply_op(cur, g.op, g.b)
            if r < 0:
                ok = False
                break
            out.append(Computation(cur, g.op, g.b, r, g.phrase))
            cur = r
        if ok:
            return out
    raise AssertionError("unreachable: an upward slip keeps every later value non-negative")


def check_equation(c: Computation) -> str:
    """The self-check of one step: the inverse operation (or the multiplication commuted). It is
    written from the step as the teacher believes it, so a slipped step gets a (wrong) check too."""
    if c.op == "*":
        return f"{c.b} * {c.a} = {c.result}"
    return f"{c.result} {'-' if c.op == '+' else '+'} {c.b} = {c.a}"


def step_line(problem: Problem, c: Computation, index: int, variant: int = 0, connective: Optional[str] = None) -> str:
    """The step restates the question's sentence for it ("On Monday, she buys 7 more") and computes."""
    clause = problem.meta["steps"][index].get("clause") or f"{problem.meta['pronoun']} {c.phrase}"
    return f"{clause}{connective or _CONNECTIVES[(variant >> 1) % 2]}{c.text}."


CAUGHT_KINDS = ("arithmetic", "carry", "operand", "operation", "start", "extra")


def extra_step(comps: list[Computation]) -> Optional[Computation]:
    """The step a student adds after the last one: the last step done once more (None if that would go
    negative)."""
    last = comps[-1]
    result = apply_op(last.result, last.op, last.b)
    return Computation(last.result, last.op, last.b, result, last.phrase) if result >= 0 else None


def caught_slip(problem: Problem, comps: list[Computation], index: int, rng: random.Random) -> tuple[str, Computation]:
    """(kind, the step as first written) for a caught slip at step ``index``: a wrong sum
    (``arithmetic``), a wrong carried value or start (``carry``/``start``: then computed right from
    it), a wrong number (``operand``) or the wrong operation (``operation``): the slips a small
    model makes, each caught by the check ``reflect.check_line`` writes for that kind. ``index`` one
    past the last step: a step too many (``extra``, see ``extra_step``)."""
    if index == len(comps):
        return "extra", extra_step(comps)
    c = comps[index]
    kinds = ["arithmetic", "carry" if index else "start", "operand"]
    if c.op == "-" or (c.op == "+" and c.a >= c.b):  # the other of + and - stays non-negative
        kinds.append("operation")
    kind = rng.choice(kinds)
    if kind == "arithmetic":
        return kind, Computation(c.a, c.op, c.b, slipped_result(c.a, c.op, c.b, rng), c.phrase)
    if kind in ("carry", "start"):
        options = [x for x in (c.a + 1, c.a - 1, c.a + 10, c.a + 2) if x >= 0 and x != c.a]
        a = rng.choice([x for x in options if apply_op(x, c.op, c.b) >= 0] or [c.a + 1])
        return kind, Computation(a, c.op, c.b, apply_op(a, c.op, c.b), c.phrase)
    if kind == "operand":
        options = [x for x in (c.b + 1, c.b - 1, c.b + 2) if x >= 1 and x != c.b]
        b = rng.choice([x for x in options if apply_op(c.a, c.op, x) >= 0] or [c.b + 1])
        return kind, Computation(c.a, c.op, b, apply_op(c.a, c.op, b), c.phrase)
    op = "-" if c.op == "+" and c.a >= c.b else "+"
    return "operation", Computation(c.a, op, c.b, apply_op(c.a, op, c.b), c.phrase)


def caught_slip_lines(problem: Problem, c: Computation, index: int, wrong: Computation, kind: str,
                      variant: int = 0) -> list[str]:
    """A caught slip at step ``index``: the step as first ``wrong``ly written, then the check that
    catches it, in the toy reflector's idiom (``reflect.check_line`` for ``kind``), ending on the
    right step ``c``."""
    from .domain import Step
    from .reflect import Divergence, check_line

    right = Step(c.a, c.op, c.b, c.result)
    div = Divergence(index, kind, right, Step(wrong.a, wrong.op, wrong.b, wrong.result))
    return [step_line(problem, wrong, index, variant), check_line(problem, div)]


def _caught_extra_lines(problem: Problem, comps: list[Computation], wrong: Computation, variant: int) -> list[str]:
    """The last step written once more, then the check that says it was the last one."""
    last = len(comps) - 1
    return caught_slip_lines(problem, comps[last], last, wrong, "extra", variant)


def render_cot(
    problem: Problem,
    comps: list[Computation],
    variant: int = 0,
    style: str = "full",
    caught: Optional[tuple[int, str, Computation]] = None,
    varied: Optional[random.Random] = None,
) -> tuple[str, str]:
    """(thinking, solution) for a list of computations (correct or slipped). ``caught``: (step index,
    kind, wrong step) of a caught slip (``caught_slip_lines``) in place of that step and its check;
    index ``len(comps)``: a step too many, after the last one. ``varied``: draw each line's wording
    from this generator (an R1-style teacher varies its phrasing from line to line) instead of
    ``variant`` for the whole CoT."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    m = problem.meta
    final = comps[-1].result if comps else m["start"]
    def wording() -> int:
        return variant if varied is None else varied.randrange(N_VARIANTS)

    def step(c: Computation, i: int) -> str:
        return step_line(problem, c, i, variant, None if varied is None else varied.choice(_VARIED_CONNECTIVES))

    def check(c: Computation) -> str:
        phrasing = _CHECKS[(variant >> 1) % 2] if varied is None else varied.choice(_VARIED_CHECKS)
        return phrasing.format(eq=check_equation(c))

    lines = [_INTROS[wording() % 2].format(name=m["name"], start=m["start"], item=m["item"])]
    for i, c in enumerate(comps):
        if caught is not None and caught[0] == i:
            lines += caught_slip_lines(problem, c, i, caught[2], caught[1], wording())
            continue
        lines.append(step(c, i))
        if style == "full":
            lines.append(check(c))
    if caught is not None and caught[0] == len(comps):
        lines += _caught_extra_lines(problem, comps, caught[2], wording())
    lines.append(f"So {m['name']} has {final} {m['item']} now.")
    solution = f"{m['name']} has {final} {m['item']} now. The answer is \\boxed{{{final}}}."
    return "\n".join(lines), solution


def write_cot(
    problem: Problem,
    variant: int = 0,
    style: str = "full",
    slip_at: Optional[int] = None,
    rng: Optional[random.Random] = None,
    caught_at: Optional[int] = None,
    varied: Optional[random.Random] = None,
) -> tuple[str, str]:
    """The teacher's (thinking, solution) for a toy problem; ``slip_at``: make a slip at that step
    (carried to a wrong answer); ``caught_at``: make a slip at that step and catch it (correct CoT)."""
    if slip_at is not None and caught_at is not None:
        raise ValueError("a CoT has either a carried slip or a caught one, not both")
    caught = None
    if slip_at is None:
        comps = correct_computations(problem)
        if caught_at is not None:
            kind, wrong = caught_slip(problem, comps, caught_at, rng or seeded_rng("caught", problem.id, caught_at))
            caught = (caught_at, kind, wrong)
    else:
        comps = computations_with_slip(problem, slip_at, rng or seeded_rng("slip", problem.id, slip_at))
    return render_cot(problem, comps, variant, style, caught, varied)


def teacher_sample(
    problem: Problem,
    sample_index: int = 0,
    error_rate: float = 0.0,
    seed: int = 0,
    style: str = "full",
    caught_slip_rate: float = 0.0,
    variant: Optional[int] = None,
    wording: str = "fixed",
) -> tuple[str, str, dict]:
    """One teacher sample, deterministic in (seed, problem id, sample index): (thinking, solution, meta).

    The wording: ``variant``, one wording for the whole CoT (the toy student's pre-training passes its own,
    ``PretrainConfig.own_variant``); without it, the sample's own: with ``wording="fixed"`` one wording
    (0 for sample 0, else drawn), with ``wording="varied"`` each line's wording drawn (an R1-style
    teacher varies its phrasing line to line). A ``variant`` passed always wins over ``wording``.

    With probability ``error_rate`` the sample has a slip at a random step (``meta["slip_step"]``);
    otherwise, with probability ``caught_slip_rate``, a caught slip at a random step, or one step too
    many (``meta["caught_slip_step"]`` = the number of steps) (the CoT stays correct). The caught-slip draw has its own random
    stream, so a rate of 0 gives exactly the CoTs without it."""
    rng = seeded_rng("toy-teacher", seed, problem.id, sample_index)
    if wording not in WORDINGS:
        raise ValueError(f"wording must be one of {WORDINGS}, got {wording!r}")
    varies = wording == "varied" and variant is None  # a variant passed fixes the wording
    drawn = 0 if sample_index == 0 else rng.randrange(N_VARIANTS)  # drawn either way: the stream stays the same
    variant = drawn if variant is None else variant
    varied = seeded_rng("toy-teacher-wording", seed, problem.id, sample_index) if varies else None
    slip_at = None
    if rng.random() < error_rate:
        slip_at = rng.randrange(len(problem.meta["steps"]))
    caught_at = None
    if slip_at is None and caught_slip_rate > 0:
        crng = seeded_rng("toy-teacher-caught", seed, problem.id, sample_index)
        if crng.random() < caught_slip_rate:
            comps = correct_computations(problem)
            caught_at = crng.randrange(len(comps) + 1)
            if caught_at == len(comps) and extra_step(comps) is None:
                caught_at = crng.randrange(len(comps))
            kind, wrong = caught_slip(problem, comps, caught_at, crng)
            thinking, solution = render_cot(problem, comps, variant, style, (caught_at, kind, wrong), varied)
            return thinking, solution, {"variant": variant, "style": style, "slip_step": None,
                                        "caught_slip_step": caught_at, "caught_slip_kind": kind}
    thinking, solution = write_cot(problem, variant, style, slip_at, rng, varied=varied)
    return thinking, solution, {"variant": variant, "style": style, "slip_step": slip_at,
                                **({"wording": "varied"} if varied else {})}
