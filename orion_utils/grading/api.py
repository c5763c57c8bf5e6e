"""The public entry points: grade one (response, gold) pair, or many, never raising or hanging.

A pair is graded in three steps: extraction of the predicted answer (:mod:`.extract`); the fast
path in process (:mod:`.compare`), which decides most pairs; and math-verify in a worker
subprocess (:mod:`.pool`) for what the fast path leaves open, under the caller's ``timeout_s``.
A pair is correct if step 2 or 3 says so.
"""
from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from . import pool
from .boxes import last_boxed
from .canonical import text_to_latex
from .compare import fast_compare
from .extract import extract_answer

REASONS = ("correct", "wrong", "no answer", "timeout", "error")

MAX_ANSWER_CHARS = 1000  # an extracted answer longer than this is graded by string equality only


@dataclass(frozen=True)
class GradeResult:
    correct: bool
    reason: str  # one of REASONS
    predicted: str | None  # the extracted final answer (None if none was found)


_FLOAT_REPR_RE = re.compile(r"-?\d+\.0|-?\d*\.\d{8,}|-?\d+(?:\.\d+)?[eE][-+]?\d+")


def _gold_text(gold: Any) -> tuple[str, bool]:
    """The gold answer as a string, and whether it is a float gold: a Python float, or a string
    that reads like one ("23.0", "2.6666666666666665", as GSM-Hard / AMC23 targets print)."""
    if isinstance(gold, bool):
        return str(gold), False
    if isinstance(gold, float):
        if not math.isfinite(gold):
            return str(gold), True
        text = repr(gold)
        if "e" in text or "E" in text:
            from decimal import Decimal

            text = format(Decimal(text), "f")
        return text, True
    if isinstance(gold, int):
        return str(gold), False
    s = "" if gold is None else str(gold)
    if "\\boxed" in s or "\\fbox" in s:
        b = last_boxed(s)
        if b:
            s = b
    elif "####" in s:
        s = s.rsplit("####", 1)[1]
    s = s.strip()
    return s, bool(_FLOAT_REPR_RE.fullmatch(s))


def _latex_forms(s: str) -> list[str]:
    """The answer as written and, if different, converted from plain text (``sqrt(3)`` ->
    ``\\sqrt{3}``): math-verify is asked about both."""
    out = [s]
    t = text_to_latex(s)
    if t != s:
        out.append(t)
    return out


def _judge(pred: str | None, gold_s: str, float_gold: bool, rel_tol: float | None,
           deadline: float) -> GradeResult:
    """The verdict on an extracted answer: the fast path, else math-verify until ``deadline``."""
    if pred is None:
        return GradeResult(False, "no answer", None)
    if not gold_s:
        return GradeResult(False, "error", pred)
    if len(pred) > MAX_ANSWER_CHARS or len(gold_s) > MAX_ANSWER_CHARS:
        same = pred.strip() == gold_s.strip()
        return GradeResult(same, "correct" if same else "wrong", pred)
    verdict = fast_compare(pred, gold_s, float_gold, rel_tol)
    if verdict is not None:
        return GradeResult(verdict, "correct" if verdict else "wrong", pred)
    if time.monotonic() >= deadline:
        return GradeResult(False, "timeout", pred)
    ok = pool.verify_in_worker(_latex_forms(gold_s), _latex_forms(pred), deadline)
    return GradeResult(ok, "correct" if ok else "wrong", pred)


def grade(
    response: str,
    gold: str | float,
    *,
    timeout_s: float = 5.0,
    rel_tol: float | None = None,
) -> GradeResult:
    """Grade one response against a gold answer. Never raises; returns within ``timeout_s``.

    ``gold`` may be a string (LaTeX, with or without ``\\boxed``, or a GSM8K ``#### N`` solution)
    or a number. A float gold (a Python float, or a string printed like one: ``27.0``,
    ``2.6666666666666665``) is compared with relative tolerance ``rel_tol`` (default
    :data:`DEFAULT_REL_TOL`); passing ``rel_tol`` applies it to every numeric gold.
    ``timeout_s`` covers extraction, the fast path, waiting for a free worker and the comparison;
    a worker's one-off start-up is not counted (see :mod:`.pool`).
    """
    t0 = time.monotonic()
    pool.prestart_spares()  # warm workers up in the background while the fast path runs
    if timeout_s is None or not (timeout_s > 0):
        timeout_s = 5.0 if timeout_s is None else 0.0
    deadline = t0 + float(timeout_s)
    pred: str | None = None
    try:
        gold_s, float_gold = _gold_text(gold)
        pred = extract_answer(response)
        return _judge(pred, gold_s, float_gold, rel_tol, deadline)
    except pool.WorkerTimeout:
        return GradeResult(False, "timeout", pred)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        return GradeResult(False, "error", pred)


def _pair_key(resp: Any, gold: Any) -> tuple:
    return (resp if isinstance(resp, str) else repr(resp), repr(gold))


def grade_many(
    pairs: Sequence[tuple[str, Any]],
    *,
    timeout_s: float = 5.0,
    rel_tol: float | None = None,
    workers: int = 1,
) -> list[GradeResult]:
    """Grade (response, gold) pairs, in order. ``workers`` > 1 grades that many pairs at a time
    (threads, each with its own math-verify subprocess); identical pairs are graded once."""
    pairs = list(pairs)
    first: dict[tuple, int] = {}  # each distinct pair -> the index it is graded at
    for i, (resp, gold) in enumerate(pairs):
        first.setdefault(_pair_key(resp, gold), i)
    todo = list(first.values())
    results: dict[int, GradeResult] = {}

    def one(i: int) -> None:
        resp, gold = pairs[i]
        results[i] = grade(resp, gold, timeout_s=timeout_s, rel_tol=rel_tol)

    workers = max(1, int(workers or 1))
    if workers == 1 or len(todo) < 2:
        for i in todo:
            one(i)
    else:
        pool.allow_workers(workers)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="orion-grade") as ex:
            list(ex.map(one, todo))
    return [results[first[_pair_key(resp, gold)]] for resp, gold in pairs]
