"""Grading of final answers: extract the answer a response commits to and compare it with the gold.

``grade(response, gold)`` returns a :class:`GradeResult` with ``.correct``, a ``.reason`` (one of
:data:`REASONS`) and the extracted ``.predicted`` answer. It never raises and never hangs.

How a pair is graded
--------------------
1. **Extraction** (:func:`extract_answer`): the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested
   braces, ``\\boxed 5``, an empty ``\\boxed{}`` skipped, an unclosed one read to the end; boxes
   right next to each other or separated only by a comma / "and" / "or" are read together as a
   list, ``\\boxed{1/2} = \\boxed{0.5}`` is not a list), else the last "final answer is X" / "answer: X" /
   "answer is X" / "#### X", else, as a last resort, the last math or number in the final line if
   that line reads as a finished sentence (a response cut off mid-sentence gets no answer: a
   truncated chain of thought is not credited for a number it happened to pass through). Only a
   bounded window near the answer is ever scanned, so a 1 MB response costs a few ``rfind`` calls.
   After a ``</think>``, an answer in the text after it wins over one inside the reasoning.
2. **Fast path, in process, no sympy**: both sides are put in a canonical form by safe string
   transforms (see "Beyond math-verify") and compared as strings. Then a small hand-written
   recursive-descent evaluator (never ``eval``/``sympify``; inputs capped at 300 characters,
   depth 40, 4096-bit integers) decides, with a final True/False, pairs where both sides are
   closed arithmetic (integers, decimals, fractions, ``\\sqrt``, ``\\pi``, ``i``, powers; exact
   rationals where possible); tuples / intervals element-wise and sets / bare lists as sets of
   such values; and expressions in lowercase variables with + - * / and integer powers
   (polynomials, rational functions), compared at two fixed sample points -- agreeing there
   means the same rational function, differing means not equal, as sympy would find. Most pairs
   end here (all of MATH500's golds against their own solutions, ~95% of perturbed wrong ones).
3. **math-verify** (gold parsed first, ``verify(gold, pred)``, LaTeX extraction only -- its
   plain-expression extraction calls ``parse_expr``, i.e. ``eval``) for everything else
   (equations, matrices, functions, unions, ``\\pm`` ...), run in a persistent worker subprocess
   with math-verify's own signal timeouts turned off. It sees the answer as extracted and as
   converted from plain text (``sqrt(3)`` -> ``\\sqrt{3}``). A pair is correct if step 2 or 3 says so.

Timeout
-------
math-verify's built-in timeouts use ``signal.alarm`` (main thread only); they are disabled
(``parsing_timeout=None``, ``timeout_seconds=None``). Instead the sympy-heavy step runs in a pool of
persistent worker subprocesses (``subprocess.Popen`` of this interpreter, talking JSON lines over
pipes), so it works from any thread, from daemonic worker processes (which may not use
``multiprocessing`` children) and after ``fork``. The caller waits for the reply (a queue fed by a
reader thread) up to the remaining time budget; on expiry the worker is killed (SIGKILL) and the
pair comes back as ``reason="timeout"``. Two workers are kept started (:data:`SPARE_WORKERS`), and a
killed one is replaced in the background, so the next pair does not wait for a restart.
``timeout_s`` covers the whole call (extraction, fast path, waiting for a free worker, the
comparison); starting a worker (importing sympy, about 1-3 s, once per worker) is not counted
against it but is itself bounded by :data:`STARTUP_TIMEOUT_S`. A thread cannot be a fallback
(sympy's big-integer arithmetic holds the GIL, so even ``join(timeout)`` would hang): where no
subprocess can be started, pairs the fast path leaves open are graded ``reason="error"`` (logged
once) and starting is retried after a minute.

Beyond math-verify
------------------
Answers real models write that math-verify alone misses, or that a careless normaliser would get
wrong, handled by the canonical form (both sides):

* plain-text math: ``pi``/``π`` -> ``\\pi``, ``sqrt(3)``/``sqrt 3``/``√3``/``√(3)`` -> ``\\sqrt{3}``,
  ``2*sqrt(3)``, ``**`` -> ``^``, ``∞``/``infinity`` -> ``\\infty``, ``×``, ``·``, ``÷``, ``−``,
  ``≤``/``≥``/``≠``;
* ``\\dfrac``/``\\tfrac``/``\\cfrac`` -> ``\\frac``, ``\\frac12`` -> ``\\frac{1}{2}``, ``\\sqrt2``;
  ``\\left``/``\\right``/``\\displaystyle``/spacing commands dropped;
* ordinals and unit words: ``12th grade`` -> 12, ``5 cm``, ``5\\text{ cm}^2``, ``15 square
  units``, ``\\$``, ``dollars``, ``%``/``\\%``/``percent`` (``25%`` also matches 0.25), degrees
  ``^\\circ``/``°``; the unit must be words, never a math symbol (``2\\pi``, ``3i``, ``5x`` keep theirs);
* thousands separators ``1,000,000``, ``1{,}000``, ``1\\,000``, ``1 000`` -- only when the whole
  answer is one such number (``(1,234)`` stays a tuple, ``1,2`` stays a list);
* ``x = 5`` vs ``5`` (a single variable on the left, when the other side is not an equation);
  ``x \\in [2,5)`` vs ``[2,5)``;
* text answers: ``\\text{(C)}`` vs ``C`` vs ``(C)``, ``\\text{Evelyn}`` vs ``evelyn``; bases
  ``2516_8`` vs ``2516_{8}`` vs ``2516``;
* mixed numbers ``2\\frac{1}{2}`` read as 2 1/2 (latex2sympy reads a product); number words
  ``seven``, ``forty-two`` as a whole answer;
* ``(x+1)^2`` vs ``x^2+2x+1`` and similar identities decided in process (sample points);
* float golds (GSM-Hard, AMC23): a Python float, or a string that prints like one (``27.0``,
  ``2.6666666666666665``: ends in ``.0`` or has 8+ decimals, or scientific) is compared with
  relative tolerance ``rel_tol`` (default 1e-4; pass ``rel_tol`` to use one for every numeric
  gold), and a prediction rounded to 2+ decimals matches such a long gold rounded the same way
  (``2.67`` for ``2.6666666666666665``); scientific notation ``2.0107e-06``. Other decimal
  golds (MATH's ``.35625``) are exact.
Negatives the canonical form keeps apart: ``12`` vs ``1/2``, ``\\frac{1}{2}`` vs ``2``, ``100``
vs ``1,000``, ``2\\pi`` vs ``2``, ``0.33`` vs ``\\frac13`` (decimals match a fraction when equal
after rounding to 6 places, as in math-verify).
"""
from __future__ import annotations

import atexit
import cmath
import contextlib
import json
import logging
import math
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_REL_TOL",
    "REASONS",
    "STARTUP_TIMEOUT_S",
    "GradeResult",
    "extract_answer",
    "grade",
    "grade_many",
    "shutdown",
    "warm_up",
]

REASONS = ("correct", "wrong", "no answer", "timeout", "error")

DEFAULT_REL_TOL = 1e-4  # float golds (GSM-Hard, AMC23): Python floats, "27.0", "2.6666666666666665"
STARTUP_TIMEOUT_S = 60.0  # starting one worker (imports sympy + math-verify); not part of timeout_s

# Input caps: nothing longer ever reaches a regex with backtracking, the evaluator or sympy.
MAX_ANSWER_CHARS = 1000  # an extracted answer longer than this is graded by string equality only
MAX_BOX_SCAN = 4000  # how far a \boxed{ argument is scanned for its closing brace
FALLBACK_TAIL = 4000  # the "answer is X" fallbacks look at this many trailing characters
LAST_LINE_CHARS = 400
MAX_EVAL_CHARS = 300  # the fast evaluator's input cap
MAX_WORKERS = max(2, min(8, os.cpu_count() or 2))
SPARE_WORKERS = 2  # kept started: while one is killed and restarted, the other serves


@dataclass(frozen=True)
class GradeResult:
    correct: bool
    reason: str  # one of REASONS
    predicted: str | None  # the extracted final answer (None if none was found)


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------

_LIST_GAP_RE = re.compile(
    r"\s*(?:\$\s*)?(?:,|;|\\quad|\\qquad|\\text\{\s*(?:and|or|,)\s*\}|and|or|&)?\s*(?:\$\s*)?", re.IGNORECASE
)


def _scan_group(text: str, open_pos: int, limit: int) -> int | None:
    """Index of the brace closing the one at ``open_pos`` (escaped braces skipped), or None."""
    depth = 0
    i = open_pos
    end = min(len(text), open_pos + limit)
    while i < end:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _last_box_start(text: str, before: int) -> int:
    return max(text.rfind("\\boxed", 0, before), text.rfind("\\fbox", 0, before))


def _read_box(text: str, start: int) -> tuple[str | None, int, bool]:
    """Parse the box command at ``start``: (content, end index, closed)."""
    cmd_len = 6 if text.startswith("\\boxed", start) else 5
    j = start + cmd_len
    n = len(text)
    while j < n and j - start < 64 and text[j] in " \t\n":
        j += 1
    if j >= n:
        return None, n, False
    if text[j] == "{":
        close = _scan_group(text, j, MAX_BOX_SCAN)
        if close is None:
            rest = text[j + 1 : j + 1 + MAX_BOX_SCAN]
            return rest, n, False
        return text[j + 1 : close], close + 1, True
    if text[j].isalpha() and j == start + cmd_len:
        return None, j, True  # e.g. \boxedanswer: not a box command
    m = re.match(r"[^\s$]{1,64}", text[j:j + 64])
    if not m:
        return None, j, True
    tok = m.group(0).rstrip(".,;:")
    return tok, j + m.end(), True


def _extract_boxed(text: str) -> str | None:
    start = _last_box_start(text, len(text))
    content, closed = None, True
    for _ in range(20):  # skip things like \boxedsymbol that are no box
        if start < 0:
            return None
        content, _end, closed = _read_box(text, start)
        if (content is not None and content.strip()) or not closed:
            break  # (an empty \boxed{}, e.g. an echoed instruction, is skipped)
        start = _last_box_start(text, start)
    if not closed:  # cut off inside the box: what is there, without trailing $ . \] \)
        content = (content or "").rstrip(" \t\n$.")
        for end in ("\\]", "\\)"):
            if content.endswith(end):
                content = content[: -len(end)].rstrip(" \t\n$.")
        return content.strip() or None
    if content is None:
        return None
    parts = [content]
    # Boxes right before it, separated only by a comma / "and" / "or": a list answer.
    cur = start
    for _ in range(9):
        prev = _last_box_start(text, cur)
        if prev < 0 or cur - prev > MAX_BOX_SCAN:
            break
        pc, pend, pclosed = _read_box(text, prev)
        if pc is None or not pclosed or pend > cur:
            break
        gap = text[pend:cur]
        if len(gap) > 40 or not _LIST_GAP_RE.fullmatch(gap):
            break
        if pc.strip() != parts[0].strip():
            parts.insert(0, pc)
        cur = prev
    parts = [p.strip() for p in parts]
    return ", ".join(parts) if len(parts) > 1 else parts[0]


_MATH_SPAN_RE = re.compile(  # $$..$$, \[..\], \(..\), $..$ (an escaped \$ is no delimiter)
    r"(?<!\\)\$\$(.{1,600}?)(?<!\\)\$\$|\\\[(.{1,600}?)\\\]|\\\((.{1,600}?)\\\)"
    r"|(?<!\\)\$((?:\\\$|[^$\n]){1,600}?)(?<!\\)\$",
    re.DOTALL,
)
_ANSWER_CUE_RE = re.compile(
    r"(?:final\s+answer|answer)(?:\s+(?:is|should\s+be|would\s+be|will\s+be|=)|\s*[:：=])[:\s]*"
    r"|final\s+answer\s*(?=\$|\\\[|\\\()|####\s*",
    re.IGNORECASE,
)
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")


def _clean_tail_answer(s: str) -> str | None:
    """The answer following a cue like 'answer is': its first math span or the rest of the sentence."""
    s = s.lstrip(" \t*:_")
    s = s[:LAST_LINE_CHARS]
    m = _MATH_SPAN_RE.match(s)
    if m:
        return next(g for g in m.groups() if g is not None).strip() or None
    line = s.split("\n", 1)[0]
    # sentence end: a period followed by space/end (not a decimal point)
    line = re.split(r"\.(?:\s|$)|;|,?\s+(?:because|since|as|which|so|where|when|for)\s", line, maxsplit=1)[0]
    m2 = _MATH_SPAN_RE.search(line)
    if m2:
        return next(g for g in m2.groups() if g is not None).strip() or None
    line = line.strip().strip("*_ ").rstrip(".,;:!").strip()
    return line or None


def _extract_cued(tail: str) -> str | None:
    last = None
    for m in _ANSWER_CUE_RE.finditer(tail):
        last = m
    if last is None:
        return None
    return _clean_tail_answer(tail[last.end():])


def _extract_last_line(text: str) -> str | None:
    stripped = text.rstrip()
    if not stripped or "\\boxed" in stripped[-LAST_LINE_CHARS:] or "\\fbox" in stripped[-LAST_LINE_CHARS:]:
        return None  # an empty or unclosed box is no answer
    if len(stripped) <= 40 and "\n" not in stripped:  # the whole response may be a bare answer
        whole = stripped.strip().rstrip(".").strip()
        span = _MATH_SPAN_RE.fullmatch(whole)
        if span:  # "$\frac12$"
            return next(g for g in span.groups() if g is not None).strip() or None
        words = re.findall(r"(?<![\\a-zA-Z])[A-Za-z]{3,}", whole)
        no_math_spans = whole.count("$") < 2 and "\\(" not in whole and "\\[" not in whole  # "$5" is money
        if whole and no_math_spans and (
            len(whole.split()) == 1 or (len(words) <= 1 and re.search(r"[\d\\^_=+*/]", whole))
        ):
            return whole  # "18", "5 cm", "x = 5", "Evelyn"
    tail = stripped[-LAST_LINE_CHARS:]
    line = tail.rsplit("\n", 1)[-1].strip()
    if not line:
        return None
    # only a finished sentence / displayed formula counts; a cut-off response does not
    if not re.search(r"(?:[.!]|\$|\\\]|\\\)|\*\*)\s*$", line):
        return None
    spans = list(_MATH_SPAN_RE.finditer(line))
    if spans:
        ans = next(g for g in spans[-1].groups() if g is not None).strip()
    else:
        nums = list(_NUMBER_RE.finditer(line))
        if not nums:
            return None
        ans = nums[-1].group(0)
    if "=" in ans:
        ans = ans.rsplit("=", 1)[1]
    ans = ans.strip().rstrip(".,;")
    return ans or None


def extract_answer(response: str) -> str | None:
    """The final answer a response commits to, as a string, or None.

    Order: the last ``\\boxed{}``/``\\fbox{}`` (adjacent boxes joined as a list); else the last
    "final answer is X" / "the answer is X" / "answer: X" / "#### X"; else, last resort, the last
    math span or number of the final line when that line is a finished sentence (or the whole
    response when it is a bare answer). Never scans more than a bounded window.
    """
    try:
        if not isinstance(response, str):
            response = "" if response is None else str(response)
        end_think = response.rfind("</think>")
        if end_think >= 0:  # the answer after the reasoning wins over one inside it
            after = extract_answer(response[end_think + len("</think>"):])
            if after is not None:
                return after
        boxed = _extract_boxed(response)
        if boxed is not None and boxed.strip():
            return boxed.strip()
        tail = response[-FALLBACK_TAIL:]
        cued = _extract_cued(tail)
        if cued:
            return cued
        return _extract_last_line(tail)
    except Exception:  # noqa: BLE001 - extraction must never raise
        return None


# --------------------------------------------------------------------------------------------
# Canonical form (safe string transforms only)
# --------------------------------------------------------------------------------------------

_UNICODE = {
    "π": "\\pi ", "∞": "\\infty ", "−": "-", "–": "-", "—": "-", "×": "\\times ", "·": "\\cdot ",
    "⋅": "\\cdot ", "÷": "\\div ", "≤": "\\le ", "≥": "\\ge ", "≠": "\\ne ", "°": "^\\circ ",
    "\u2009": " ", "\u202f": " ", "\u00a0": " ", "＄": "$", "：": ":",
}
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE)))


def _replace_func_parens(s: str, name: str, make) -> str:
    """``name(...)`` with balanced parentheses -> make(inner), for plain-text sqrt(...)."""
    out = []
    i = 0
    pat = re.compile(rf"(?<![\\a-zA-Z]){name}\s*\(")
    while True:
        m = pat.search(s, i)
        if not m:
            out.append(s[i:])
            break
        depth = 0
        j = m.end() - 1
        close = None
        while j < len(s):
            if s[j] == "(":
                depth += 1
            elif s[j] == ")":
                depth -= 1
                if depth == 0:
                    close = j
                    break
            j += 1
        if close is None:
            out.append(s[i:])
            break
        out.append(s[i:m.start()])
        out.append(make(s[m.end():close]))
        i = close + 1
    return "".join(out)


def _text_to_latex(s: str) -> str:
    """Plain-text / unicode math to LaTeX (pi, sqrt(3), √3, **, ∞ ...). Pure string work."""
    s = _UNICODE_RE.sub(lambda m: _UNICODE[m.group(0)], s)
    if "√" in s:
        s = re.sub(r"√\s*\(", "sqrt(", s)
        s = re.sub(r"√\s*(\d+(?:\.\d+)?|[a-zA-Z])", r"\\sqrt{\1}", s)
        s = re.sub(r"√\s*\{", r"\\sqrt{", s)
    if "sqrt" in s:
        s = _replace_func_parens(s, "sqrt", lambda inner: "\\sqrt{" + inner + "}")
        s = _replace_func_parens(s, "cbrt", lambda inner: "\\sqrt[3]{" + inner + "}")
        s = re.sub(r"(?<![\\a-zA-Z])sqrt\s*(\d+(?:\.\d+)?|[a-zA-Z](?![a-zA-Z]))", r"\\sqrt{\1}", s)
        s = re.sub(r"(?<![\\a-zA-Z])sqrt\s*\{", r"\\sqrt{", s)
    s = re.sub(r"(?<![\\a-zA-Z])pi(?![a-zA-Z])", r"\\pi ", s)
    s = re.sub(r"(?<![\\a-zA-Z])(?:infinity|inf)(?![a-zA-Z])", r"\\infty ", s)
    s = s.replace("**", "^")
    return s


_DROP_RE = re.compile(
    r"\\(?:displaystyle|textstyle|left|right|bigl|bigr|Bigl|Bigr|big|Big|biggl|biggr|mleft|mright)"
    r"(?![a-zA-Z])|\\[!,;:>]|\\(?:quad|qquad)(?![a-zA-Z])|~"
)
_TEXT_CMD_RE = re.compile(
    r"\\(?:text|textbf|textit|textrm|textnormal|texttt|mathrm|mathbf|mathit|mathsf|mathtt|"
    r"mbox|hbox|operatorname)\s*\{([^{}]*)\}"
)
_DEGREE_RE = re.compile(
    r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree|\^\s*\{\s*o\s*\}|(?<=\d)\s*degrees?\b"
)
_PCT_RE = re.compile(r"\\%|%|\bpercent(?:age)?\b|\bpct\b")
_CURRENCY_RE = re.compile(r"\\\$|\$|€|£|¥|₹|\bUSD\b|\\euro")
_ORDINAL_RE = re.compile(r"(\d)\s*(?:\^\s*\{?\s*(?:st|nd|rd|th)\s*\}?|(?:st|nd|rd|th)\b)")
_VAR_LHS_RE = re.compile(r"^\s*[a-zA-Z](?:_\{?[a-zA-Z0-9]+\}?)?(?:\([a-zA-Z]\))?\s*(?:=|\\in(?![a-zA-Z]))\s*")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:(?:,|\{,\}| )\d{3})+(?:\.\d+)?")
_CHOICE_RE = re.compile(r"^\(\s*([A-Ea-e])\s*\)$|^([A-E])\)$")
_BASE_RE = re.compile(r"^([0-9A-Za-z]+)_\{?(\d{1,2})\}?$")
# words that are maths, not units: never stripped from after a number
_MATH_WORDS = {
    "pi", "i", "e", "x", "y", "z", "n", "k", "sqrt", "infty", "inf", "infinity", "ln", "log", "sin",
    "cos", "tan", "cot", "sec", "csc", "and", "or", "mod", "pmod", "bmod", "times", "plus", "minus",
    "over", "divided", "squared", "cubed", "root", "base", "hundred", "hundreds", "thousand",
    "thousands", "million", "millions", "billion", "billions", "trillion", "dozen", "dozens",
    "half", "halves", "third", "thirds", "quarter", "quarters", "tenths", "hundredths", "thousandths",
}
_NUMBER_WORDS = {
    w: i
    for i, w in enumerate([
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
        "nineteen", "twenty",
    ])
}
_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
    "ninety": 90,
}


def _number_word(s: str) -> int | None:
    """'seven' -> 7, 'forty-two' -> 42 (a whole answer written as a word), else None."""
    w = s.strip().lower()
    if w in _NUMBER_WORDS:
        return _NUMBER_WORDS[w]
    if w in _TENS:
        return _TENS[w]
    m = re.fullmatch(r"([a-z]+)[- ]([a-z]+)", w)
    if m and m.group(1) in _TENS and m.group(2) in _NUMBER_WORDS and 0 < _NUMBER_WORDS[m.group(2)] < 10:
        return _TENS[m.group(1)] + _NUMBER_WORDS[m.group(2)]
    return None


_SCALES = {
    "hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9, "trillion": 10**12, "dozen": 12,
}
_SCALE_RE = re.compile(
    r"(-?\d+(?:,\d{3})*(?:\.\d+)?)\s*(hundred|thousand|million|billion|trillion|dozen)s?\b\s*([A-Za-z ]*)$",
    re.IGNORECASE,
)
_SINGLE_LETTER_UNITS = {"m", "g", "s", "h", "l", "L", "K", "J", "W", "N", "V", "A"}


def _strip_outer(s: str) -> str:
    s = s.strip()
    for _ in range(4):
        before = s
        s = s.strip().rstrip(".").strip()
        if s.startswith("$") and s.endswith("$") and len(s) >= 2:
            s = s.strip("$")
        for a, b in (("\\(", "\\)"), ("\\[", "\\]"), ("**", "**")):
            if s.startswith(a) and s.endswith(b) and len(s) >= len(a) + len(b):
                s = s[len(a):len(s) - len(b)]
        if s == before:
            break
    return s.strip()


def _strip_units(s: str) -> str:
    """'5 cm' / '15 square units' / '12 grade' -> the number; never strips a math symbol."""
    core = re.sub(r"(?<=[A-Za-z])\s*\^\s*\{?\s*[23]\s*\}?\s*$", "", s)  # cm^2, m^{3}
    m = re.search(r"[\d})\]]", core[::-1])
    if not m:
        return s
    cut = len(core) - m.start()
    head, tail2 = core[:cut], core[cut:]
    if not tail2.strip() or not re.search(r"\d", head):
        return s
    if not re.fullmatch(r"[\sA-Za-z.'/]*", tail2):
        return s
    words = [w for w in re.split(r"[\s/]+", tail2.replace(".", " ")) if w]
    if not words:
        return s
    for w in words:
        if w.lower() in _MATH_WORDS:
            return s
    one_letter = len(words) == 1 and len(words[0]) == 1
    if one_letter and (words[0] not in _SINGLE_LETTER_UNITS or not tail2[:1].isspace()):
        return s
    return head.rstrip()


@dataclass
class _Canon:
    text: str  # canonical string
    pct: bool  # a percent sign was removed
    has_eq: bool  # still an equation / membership after canonicalisation
    base: tuple[str, int] | None = None  # "2516_8" -> ("2516", 8); text is then "2516"


def _canon(s: str, strip_lhs: bool) -> _Canon:
    s = _text_to_latex(s)
    s = _strip_outer(s)
    s = s.replace("\n", " ").replace("\t", " ")
    s = _DROP_RE.sub(" ", s)
    s = re.sub(r"\\[dtc]frac(?![a-zA-Z])", r"\\frac", s)
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*\{([^{}]*)\}\s*(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*(\d)\s*\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\sqrt\s*(\d)", r"\\sqrt{\1}", s)
    s = re.sub(r"\\(?:leq|leqslant)(?![a-zA-Z])", r"\\le", s)
    s = re.sub(r"\\(?:geq|geqslant)(?![a-zA-Z])", r"\\ge", s)
    s = re.sub(r"\\neq(?![a-zA-Z])", r"\\ne", s)
    s = _DEGREE_RE.sub("", s)
    s, n_pct = _PCT_RE.subn("", s)
    s = _CURRENCY_RE.sub("", s)
    for _ in range(3):  # unwrap \text{...} (innermost first)
        s2 = _TEXT_CMD_RE.sub(lambda m: " " + m.group(1) + " ", s)
        if s2 == s:
            break
        s = s2
    s = s.replace("{,}", ",")
    s = _ORDINAL_RE.sub(r"\1", s)
    s = _strip_outer(s)
    if strip_lhs:
        m = _VAR_LHS_RE.match(s)
        if m and m.end() < len(s):
            s = s[m.end():]
    m = _SCALE_RE.match(s.strip())
    if m:  # "2.5 million" -> 2500000, "3 dozen" -> 36
        v = Fraction(m.group(1).replace(",", "")) * _SCALES[m.group(2).lower()]
        if v.denominator == 1:
            s = str(v.numerator)
    s = _strip_units(s.strip())
    s = s.strip().rstrip(".").strip()
    if len(s) <= 14 and s[:1].isalpha():
        nw = _number_word(s)
        if nw is not None:
            s = str(nw)
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace("{,}", "").replace(",", "").replace(" ", "")
    m = _CHOICE_RE.match(s)
    if m:
        s = (m.group(1) or m.group(2)).upper()
    base = None
    m = _BASE_RE.match(s)
    if m and re.search(r"\d", m.group(1)):
        base = (m.group(1).upper(), int(m.group(2)))
        if 2 <= base[1] <= 36 and all(int(ch, 36) < base[1] for ch in m.group(1)):
            s = m.group(1)  # 2516_8 -> 2516 (the base is in the question)
    s = re.sub(r"([_^])\s*\{\s*([^{}\s])\s*\}", r"\1\2", s)
    # remove a multiplication sign between a number/closing brace and a letter or command
    s = re.sub(r"(?<=[\d}])\s*(?:\*|\\cdot|\\times)\s*(?=[a-zA-Z\\(])", "", s)
    s = re.sub(r"(?<=\d) +(?=\d)", "\x00", s)  # keep a separator between two numbers
    s = re.sub(r"(\\[a-zA-Z]+) +(?=[a-zA-Z])", "\\1\x00", s)  # and after a command: "\\pi r"
    s = re.sub(r"\s+", "", s).replace("\x00", " ")
    s = re.sub(r"^\+(?=[\d.])", "", s)
    return _Canon(s, n_pct > 0, bool(re.search(r"(?<![<>!\\])=|\\in(?![a-zA-Z])", s)), base)


def _is_word(s: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z][A-Za-z' -]*[A-Za-z]", s))


# --------------------------------------------------------------------------------------------
# Safe numeric evaluator (recursive descent over a tiny LaTeX arithmetic grammar)
# --------------------------------------------------------------------------------------------

class _NotNumeric(Exception):
    pass


_TOKEN_RE = re.compile(
    r"\s*(?:((?:\d+\.\d*|\.\d+)(?:[eE][-+]?\d{1,3})?|\d+[eE][-+]\d{1,3}|\d+)"  # number
    r"|(\\[a-zA-Z]+)|([-+*/^(){}\[\]])|([a-zA-Z]))"  # command, operator, letter
)
_MAX_BITS = 4096


class _Evaluator:
    """Values are Fraction (exact) or complex (inexact). Raises _NotNumeric on anything else.

    ``env`` maps lowercase variable letters to sample values (polynomial identity testing): with
    variables only rational operations and integer powers are allowed, so two forms that agree at
    sample points are the same rational function and two that differ are not equal."""

    def __init__(self, s: str, env: dict[str, complex] | None = None):
        self.env = env or {}
        self.toks: list[tuple[str, str]] = []
        pos = 0
        s = s.strip()
        while pos < len(s):
            m = _TOKEN_RE.match(s, pos)
            if not m or m.end() == pos:
                raise _NotNumeric(s[pos:pos + 10])
            pos = m.end()
            num, cmd, op, letter = m.groups()
            if num is not None:
                self.toks.append(("num", num))
            elif cmd is not None:
                self.toks.append(("cmd", cmd))
            elif op is not None:
                self.toks.append(("op", op))
            else:
                self.toks.append(("let", letter))
            if len(self.toks) > 200:
                raise _NotNumeric("too long")
        self.i = 0
        self.depth = 0
        self.inexact_literal = False  # a decimal number appears

    # -- helpers
    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        t = self.peek()
        if t is None:
            raise _NotNumeric("eof")
        self.i += 1
        return t

    def expect(self, op: str) -> None:
        t = self.take()
        if t != ("op", op):
            raise _NotNumeric(f"expected {op}")

    def run(self):
        v = self.expr()
        if self.i != len(self.toks):
            raise _NotNumeric("trailing")
        return v

    # -- grammar
    def expr(self):
        self.depth += 1
        if self.depth > 40:
            raise _NotNumeric("deep")
        v = self.term()
        while True:
            t = self.peek()
            if t in (("op", "+"), ("op", "-")):
                self.take()
                w = self.term()
                v = _add(v, w) if t[1] == "+" else _add(v, _neg(w))
            else:
                break
        self.depth -= 1
        return v

    def _starts_atom(self, t) -> bool:
        if t is None:
            return False
        kind, val = t
        if kind == "op":  # no implicit product with a following number: "2 3" is not 6
            return val == "("
        if kind == "cmd":
            return val in ("\\frac", "\\sqrt", "\\pi")
        return kind == "let" and (val == "i" or val in self.env)

    def _has_var(self, i0: int, i1: int) -> bool:
        return bool(self.env) and any(k == "let" and v in self.env for k, v in self.toks[i0:i1])

    def term(self):
        v = self.unary()
        while True:
            t = self.peek()
            if t in (("op", "*"), ("cmd", "\\cdot"), ("cmd", "\\times")):
                self.take()
                v = _mul(v, self.unary())
            elif t in (("op", "/"), ("cmd", "\\div")):
                self.take()
                v = _div(v, self.unary())
            elif self._starts_atom(t):
                v = _mul(v, self.power())
            else:
                return v

    def unary(self):
        t = self.peek()
        if t == ("op", "-"):
            self.take()
            return _neg(self.unary())
        if t == ("op", "+"):
            self.take()
            return self.unary()
        return self.power()

    def power(self):
        i0 = self.i
        base = self.atom()
        i1 = self.i
        if self.peek() == ("op", "^"):
            self.take()
            t = self.peek()
            if t == ("op", "{"):
                self.take()
                e = self.expr()
                self.expect("}")
            elif t is not None and t[0] == "num":
                if len(t[1]) != 1:  # 2^10 is 2^1 0 in LaTeX: leave it to latex2sympy
                    raise _NotNumeric("unbraced exponent")
                self.take()
                e = Fraction(int(t[1]))
            elif t == ("op", "-"):
                raise _NotNumeric("bare negative exponent")
            else:
                e = self.atom()
            if self.peek() == ("op", "^"):
                raise _NotNumeric("double superscript")
            if self._has_var(i0, i1) and not (isinstance(e, Fraction) and e.denominator == 1):
                raise _NotNumeric("non-integer power of a variable")
            if self._has_var(i1, self.i):
                raise _NotNumeric("variable exponent")
            return _pow(base, e)
        return base

    def group(self):
        t = self.take()
        if t == ("op", "{"):
            v = self.expr()
            self.expect("}")
            return v
        if t[0] == "num" and len(t[1]) == 1:
            return Fraction(int(t[1]))
        raise _NotNumeric("group")

    def atom(self):
        t = self.take()
        kind, val = t
        if kind == "num":
            if "." in val or "e" in val or "E" in val:
                self.inexact_literal = True
            if len(val) > 400:
                raise _NotNumeric("long number")
            return Fraction(val)
        if t in (("op", "("), ("op", "{")):
            self.depth += 1
            v = self.expr()
            self.expect(")" if val == "(" else "}")
            self.depth -= 1
            return v
        if t == ("cmd", "\\frac"):
            a = self.group()
            b = self.group()
            return _div(a, b)
        if t == ("cmd", "\\sqrt"):
            n = 2
            if self.peek() == ("op", "["):
                self.take()
                k = self.expr()
                self.expect("]")
                if not isinstance(k, Fraction) or k.denominator != 1 or not 2 <= k <= 10:
                    raise _NotNumeric("root index")
                n = int(k)
            i0 = self.i
            arg = self.group()
            if self._has_var(i0, self.i):
                raise _NotNumeric("root of a variable")
            return _root(arg, n)
        if t == ("cmd", "\\pi"):
            return complex(math.pi)
        if t == ("let", "i"):
            return complex(0, 1)
        if kind == "let" and val in self.env:
            return self.env[val]
        raise _NotNumeric(f"atom {val}")


def _c(v) -> complex:
    return complex(v) if isinstance(v, complex) else complex(float(v))


def _add(a, b):
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        return a + b
    return _c(a) + _c(b)


def _neg(a):
    return -a


def _mul(a, b):
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        r = a * b
        if r.numerator.bit_length() > _MAX_BITS or r.denominator.bit_length() > _MAX_BITS:
            raise _NotNumeric("too big")
        return r
    return _c(a) * _c(b)


def _div(a, b):
    if isinstance(b, Fraction):
        if b == 0:
            raise _NotNumeric("division by zero")
        if isinstance(a, Fraction):
            return a / b
    cb = _c(b)
    if cb == 0:
        raise _NotNumeric("division by zero")
    return _c(a) / cb


def _exact_root(x: Fraction, n: int) -> Fraction | None:
    if x < 0:
        return None
    out = []
    for part in (x.numerator, x.denominator):
        if part.bit_length() > 1024:
            return None
        r = round(part ** (1.0 / n)) if part.bit_length() < 1000 else None
        if r is None:
            return None
        for cand in (r - 1, r, r + 1):
            if cand >= 0 and cand ** n == part:
                out.append(cand)
                break
        else:
            return None
    return Fraction(out[0], out[1])


def _root(x, n: int):
    if isinstance(x, Fraction):
        r = _exact_root(x, n)
        if r is not None:
            return r
        if x < 0:
            if n == 2:
                return complex(0, math.sqrt(float(-x)))
            raise _NotNumeric("odd root of negative")  # principal vs real root: leave to sympy
        return complex(float(x) ** (1.0 / n))
    cx = _c(x)
    if n == 2:
        return cmath.sqrt(cx)
    raise _NotNumeric("root of inexact")


def _pow(a, e):
    if isinstance(e, Fraction) and e.denominator == 1 and isinstance(a, Fraction):
        k = int(e)
        if abs(k) > 4096:
            raise _NotNumeric("huge exponent")
        if a == 0 and k < 0:
            raise _NotNumeric("0^-k")
        bits = max(a.numerator.bit_length(), a.denominator.bit_length()) * abs(k)
        if bits > _MAX_BITS:
            raise _NotNumeric("too big")
        return a ** k
    if isinstance(e, Fraction) and e.denominator == 2 and isinstance(a, Fraction) and a >= 0:
        r = _root(a, 2)
        return _pow(r, Fraction(e.numerator)) if isinstance(r, Fraction) else _c(r) ** e.numerator
    ce = _c(e)
    if abs(ce) > 1000:
        raise _NotNumeric("huge exponent")
    ca = _c(a)
    if ca == 0:
        raise _NotNumeric("0^x")
    try:
        return ca ** ce
    except (OverflowError, ZeroDivisionError) as exc:
        raise _NotNumeric(str(exc))


def _evaluate(s: str, env: dict[str, complex] | None = None):
    """(value, has_decimal_literal, is_plain_number) or None when not a closed arithmetic form."""
    if not s or len(s) > MAX_EVAL_CHARS:
        return None
    if s in ("\\infty", "+\\infty", "-\\infty"):
        return complex(-math.inf if s[0] == "-" else math.inf), False, False
    mixed = re.fullmatch(r"(-?)(\d+)\\frac\{(\d+)\}\{(\d+)\}", s)
    if mixed:  # mixed number 2\frac{1}{2} = 5/2 (when the fraction is proper)
        sign, w, a, b = mixed.groups()
        if int(b) != 0 and int(a) < int(b):
            v = Fraction(int(w)) + Fraction(int(a), int(b))
            return (-v if sign else v), False, False
    try:
        ev = _Evaluator(s, env)
        v = ev.run()
    except (_NotNumeric, ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None
    if isinstance(v, complex):
        if not (math.isfinite(v.real) and math.isfinite(v.imag)):
            return None
        if abs(v.imag) < 1e-14 * max(1.0, abs(v.real)):
            v = complex(v.real, 0.0)
    plain = bool(re.fullmatch(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", s))
    return v, ev.inexact_literal, plain


def _is_huge_power(s: str, depth: int = 0) -> bool:
    """'10^{10^{10^{10}}}': an integer power far beyond 2^4096 (decided without computing it)."""
    m = re.fullmatch(r"(\d+)\^\{(.+)\}", s)
    if not m or depth > 6 or int(m.group(1)[:6]) < 2:
        return False
    e = _evaluate(m.group(2))
    if e is not None:
        v = e[0]
        return isinstance(v, Fraction) and v > 4096
    return _is_huge_power(m.group(2), depth + 1)


def _round6(v) -> complex:
    c = _c(v)
    return complex(round(c.real, 6), round(c.imag, 6))


def _num_verdict(p: tuple, g: tuple, *, float_gold: bool, rel_tol: float | None) -> bool | None:
    """p, g: (value, has decimal literal, is a plain number, canonical text).
    True / False, or None when floating point cannot decide."""
    pv, p_dec, p_plain, pt = p
    gv, g_dec, g_plain, gold_text = g
    if isinstance(pv, complex) and math.isinf(pv.real) or isinstance(gv, complex) and math.isinf(gv.real):
        return pv == gv
    if isinstance(pv, Fraction) and isinstance(gv, Fraction) and pv == gv:
        return True
    tol = rel_tol if rel_tol is not None else (DEFAULT_REL_TOL if float_gold else None)
    cp, cg = _c(pv), _c(gv)
    diff = abs(cp - cg)
    scale = max(abs(cg), 1e-12)
    if tol is not None and diff <= tol * scale:
        return True
    if (float_gold or g_dec) and p_plain and g_plain and isinstance(pv, Fraction) and gv != 0:
        # a prediction rounded to d >= 2 decimals matches a long (noisy float) gold rounded alike
        gd = gold_text.split(".", 1)[1] if "." in gold_text else ""
        d = len(pt.split(".", 1)[1]) if "." in pt else 0
        long_gold = len(gd.rstrip("0")) >= 4 and (float_gold or len(gd) >= 8)
        if d >= 2 and long_gold and round(float(gv), d) == round(float(pv), d):
            return True
    # math-verify semantics: a decimal literal equals a non-decimal value (1/3, sqrt 2) that rounds
    # to it at 6 places; two decimal literals are compared exactly (.35625 != .35626)
    if (p_dec and p_plain) != (g_dec and g_plain) and _round6(cp) == _round6(cg):
        return True
    if isinstance(pv, Fraction) and isinstance(gv, Fraction):
        return False
    if diff <= 1e-9 * max(1.0, abs(cp), abs(cg)):
        return True
    if diff > 1e-6 * max(1.0, abs(cp), abs(cg)):
        return False
    return None


def _split_list(s: str) -> tuple[str, list[str]] | None:
    """'(a,b)' / '[a,b)' -> ('()'|'[)'..., items); '\\{a,b\\}' -> ('set', items); 'a,b' -> ('list', items)."""
    kind = "list"
    inner = s
    if s.startswith("\\{") and s.endswith("\\}"):
        kind, inner = "set", s[2:-2]
    elif len(s) >= 2 and s[0] in "([" and s[-1] in ")]":
        depth = 0
        for k, ch in enumerate(s):
            if ch in "([{":
                depth += 1
            elif ch in ")]}":
                depth -= 1
                if depth == 0 and k != len(s) - 1:
                    break  # "(a)(b)": the first bracket closes early
        else:
            kind, inner = s[0] + s[-1], s[1:-1]
    items, depth, cur = [], 0, []
    for ch in inner:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            items.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    items.append("".join(cur))
    if depth != 0 or len(items) < 2 or not all(items):
        return None
    return kind, items


def _compare_lists(pl, gl, float_gold: bool, rel_tol: float | None) -> bool | None:
    """Tuples / intervals element-wise in order, sets and bare lists as sets of values."""
    (pk, pitems), (gk, gitems) = pl, gl
    ordered = {"()", "[]", "(]", "[)"}
    if (pk in ordered) != (gk in ordered) or ((pk == "set") != (gk == "set") and pk in ordered):
        return None  # tuple vs set etc.: math-verify's rules
    pv = [_evaluate(x) for x in pitems]
    gv = [_evaluate(x) for x in gitems]
    if any(v is None for v in pv) or any(v is None for v in gv):
        return None
    P = [(*v, t) for v, t in zip(pv, pitems)]
    G = [(*v, t) for v, t in zip(gv, gitems)]
    if pk in ordered:
        if len(P) != len(G):
            return False
        verdicts = [_num_verdict(a, b, float_gold=float_gold, rel_tol=rel_tol) for a, b in zip(P, G)]
        if any(v is False for v in verdicts):
            return False
        if any(v is None for v in verdicts):
            return None
        return pk == gk
    table = [[_num_verdict(a, b, float_gold=float_gold, rel_tol=rel_tol) for b in G] for a in P]
    if all(any(row[j] for row in table) for j in range(len(G))) and all(any(row) for row in table):
        return True
    if all(v is False or v is True for row in table for v in row):
        return False
    return None


_VARIABLES = "abcdfghjklmnopqrstuvwxyz"  # lowercase letters but e and i (constants)
_SAMPLE_POINTS = (  # distinct irrational-ish values per letter, two points
    {c: complex(0.5 + 0.6180339887 * k + 0.0137 * k * k) for k, c in enumerate(_VARIABLES, 1)},
    {c: complex(-1.3 + 0.4142135623 * k - 0.0071 * k * k) for k, c in enumerate(_VARIABLES, 1)},
)


def _compare_symbolic(pc: _Canon, gc: _Canon) -> bool | None:
    """Expressions in lowercase variables (polynomials, rational functions), compared at two
    sample points. Equations, single letters and anything beyond + - * / and integer powers are
    left to math-verify."""
    if pc.has_eq or gc.has_eq:
        return None
    letters = set(re.findall(r"(?<![\\a-zA-Z])[a-z]+", pc.text + " " + gc.text))
    letters = {ch for word in letters for ch in word} - {"i", "e"}
    if not letters or len(letters) > 6:
        return None
    for t in (pc.text, gc.text):
        if re.fullmatch(r"[a-z]", t) or not re.search(r"[\d+\-*/^]", t):
            return None  # "c" vs "C" (a choice) or a word: not an expression
    verdicts = []
    for point in _SAMPLE_POINTS:
        env = {k: point[k] for k in letters}
        gv = _evaluate(gc.text, env)
        pv = _evaluate(pc.text, env)
        if gv is None or pv is None:
            return None
        # sample values are not decimal literals: compare as exact-vs-exact floats
        v = _num_verdict(
            (pv[0], False, False, pc.text), (gv[0], False, False, gc.text), float_gold=False, rel_tol=None
        )
        verdicts.append(v)
    if any(v is False for v in verdicts):
        return False
    if all(v is True for v in verdicts):
        return True
    return None


def _fast_compare(pred: str, gold: str, float_gold: bool, rel_tol: float | None) -> bool | None:
    """Canonical-string and numeric comparison. True / False when sure, None to ask math-verify."""
    gc0 = _canon(gold, strip_lhs=False)
    pc0 = _canon(pred, strip_lhs=False)
    gc = _canon(gold, strip_lhs=True) if not pc0.has_eq else gc0
    pc = _canon(pred, strip_lhs=True) if not gc0.has_eq else pc0
    if gc0.has_eq and pc0.has_eq:  # "x=5" vs "x=6": the same single variable on the left
        gm, pm = _VAR_LHS_RE.match(gc0.text), _VAR_LHS_RE.match(pc0.text)
        if gm and pm and gm.group(0) == pm.group(0):
            gc = _canon(gold, strip_lhs=True)
            pc = _canon(pred, strip_lhs=True)
    if gc.base or pc.base:  # numerals in a base: same digits, and the same base where both say
        gd, gb = gc.base or (gc.text.upper(), None)
        pd, pb = pc.base or (pc.text.upper(), None)
        if re.fullmatch(r"[0-9A-Z]+", gd) and re.fullmatch(r"[0-9A-Z]+", pd):
            return gd == pd and (gb is None or pb is None or gb == pb)
    if pc.text and pc.text == gc.text:  # also "25%" vs "25": the same number, one with a sign
        return True
    if _is_word(pc.text) and _is_word(gc.text) and pc.text.lower() == gc.text.lower():
        return True
    gv = _evaluate(gc.text)
    pv = _evaluate(pc.text) if gv is not None else None
    if gv is not None and pv is None and _is_huge_power(pc.text):
        return False if abs(_c(gv[0])) < 2.0 ** 1000 else None  # a tower vs an ordinary number
    if gv is None or pv is None:
        if gv is None and pv is None:
            gl, pl = _split_list(gc.text), _split_list(pc.text)
            if gl and pl:
                return _compare_lists(pl, gl, float_gold, rel_tol)
        return _compare_symbolic(pc, gc)
    g = (*gv, gc.text)
    p = (*pv, pc.text)
    verdict = _num_verdict(p, g, float_gold=float_gold, rel_tol=rel_tol)
    if verdict:
        return True
    # percent: "25%" may also mean 0.25 (and gold "25%" may be matched by 0.25)
    if pc.pct and not gc.pct:
        alt = (_div(pv[0], Fraction(100)), pv[1], pv[2], pc.text)
        if _num_verdict(alt, g, float_gold=float_gold, rel_tol=rel_tol):
            return True
    if gc.pct and not pc.pct:
        alt = (_div(gv[0], Fraction(100)), gv[1], gv[2], gc.text)
        if _num_verdict(p, alt, float_gold=float_gold, rel_tol=rel_tol):
            return True
    return verdict  # False or None


# --------------------------------------------------------------------------------------------
# math-verify in a worker subprocess
# --------------------------------------------------------------------------------------------

class _Timeout(Exception):
    pass


class _WorkerFailed(Exception):
    pass


# The child gets the parent's sys.path (notebooks may extend it at run time) plus this package.
_WORKER_BOOT = (
    "import sys, json; sys.path[:0] = json.loads(sys.argv[1]); "
    "from orion_utils.grading import _worker_main; _worker_main()"
)


def _mv_setup():
    """Import math-verify with its signal timeouts off and its warnings silenced."""
    import logging

    import math_verify.grader as mv_grader
    import math_verify.parser as mv_parser
    from math_verify import LatexExtractionConfig, parse, verify

    mv_parser.TIMEOUT_WARNING_SHOWN = True  # we disable its timeouts on purpose
    mv_grader.TIMEOUT_WARNING_SHOWN = True
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.ERROR)
    cfg = [LatexExtractionConfig(boxed_match_priority=0)]
    cache: dict[str, Any] = {}

    def parse_one(s: str):
        if s in cache:
            return cache[s]
        out = parse("\\boxed{" + s + "}", cfg, parsing_timeout=None)
        if len(cache) > 512:
            cache.clear()
        cache[s] = out
        return out

    def compare(golds: list[str], preds: list[str]) -> bool:
        gparsed = [x for g in golds for x in parse_one(g)]
        if not gparsed:
            return False
        for p in preds:
            pp = parse_one(p)
            if pp and verify(gparsed, pp, timeout_seconds=None):
                return True
        return False

    return compare


def _worker_main() -> None:  # runs in the subprocess
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # stray prints must not corrupt the protocol
    compare = _mv_setup()
    proto.write('{"ready": true}\n')
    proto.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            ok = compare(req["g"], req["p"])
            reply = {"ok": bool(ok)}
        except BaseException as exc:  # noqa: BLE001 - report, keep serving
            reply = {"err": type(exc).__name__}
        proto.write(json.dumps(reply) + "\n")
        proto.flush()


class _Worker:
    def __init__(self) -> None:
        pkg_parent = str(Path(__file__).resolve().parents[1])
        paths = json.dumps([pkg_parent] + [p for p in sys.path if isinstance(p, str)])
        env = dict(os.environ)
        env.setdefault("PYTHONWARNINGS", "ignore")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_BOOT, paths],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            bufsize=0,
            env=env,
            close_fds=True,
        )
        self.pid_owner = os.getpid()
        # a reader thread turns the worker's replies into a queue: waiting with a timeout then
        # works on every platform (select() does not on Windows pipes) and from any thread
        self.replies: queue.Queue = queue.Queue()
        out, replies = self.proc.stdout, self.replies

        def reader() -> None:
            with contextlib.suppress(Exception):
                for line in iter(out.readline, b""):
                    replies.put(line)
            replies.put(None)

        threading.Thread(target=reader, daemon=True, name="orion-grading-reader").start()
        try:
            msg = self._read_line(time.monotonic() + STARTUP_TIMEOUT_S)
        except BaseException:
            self.kill()
            raise
        if not msg.get("ready"):
            self.kill()
            raise _WorkerFailed("worker did not start")

    def _read_line(self, deadline: float) -> dict:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Timeout()
        try:
            line = self.replies.get(timeout=remaining)
        except queue.Empty:
            raise _Timeout() from None
        if line is None:
            raise _WorkerFailed("worker exited")
        return json.loads(line)

    def call(self, golds: list[str], preds: list[str], deadline: float) -> bool:
        data = (json.dumps({"g": golds, "p": preds}) + "\n").encode("utf-8")
        fd = self.proc.stdin.fileno()
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        except OSError as exc:
            raise _WorkerFailed(str(exc))
        reply = self._read_line(deadline)
        if "err" in reply:
            raise _WorkerFailed(reply["err"])
        return bool(reply["ok"])

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=2)
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(Exception):
                f.close()


class _Pool:
    """Worker subprocesses shared by all threads. Workers are started by background threads (so a
    replacement for a killed worker warms up while the caller already has its "timeout" answer);
    callers wait for an idle one."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.idle: list[_Worker] = []
        self.all: set[_Worker] = set()
        self.n = 0  # started or starting
        self.starting = 0
        self.failures = 0  # consecutive failed starts
        self.max = MAX_WORKERS
        self.broken = False  # no subprocess could be started here (retried after a minute)
        self.broken_at = 0.0

    def _spawn_bg(self) -> None:  # with self.cond held; self.n already counts the new worker
        self.starting += 1

        def run() -> None:
            try:
                w: _Worker | None = _Worker()
            except BaseException:  # noqa: BLE001
                w = None
            with self.cond:
                self.starting -= 1
                if w is None:
                    self.n -= 1
                    self.failures += 1
                    if self.failures >= 2:
                        self.broken, self.broken_at = True, time.monotonic()
                else:
                    self.failures = 0
                    self.all.add(w)
                    self.idle.append(w)
                self.cond.notify_all()

        threading.Thread(target=run, daemon=True, name="orion-grading-start").start()

    def prestart(self, k: int = 1) -> None:
        with self.cond:
            while self.n < min(k, self.max) and not self.broken:
                self.n += 1
                self._spawn_bg()

    def acquire(self, deadline: float) -> tuple[_Worker, float]:
        """An idle worker, and the seconds spent waiting for workers to start (which are not
        charged to the caller's timeout; bounded by STARTUP_TIMEOUT_S)."""
        excluded = 0.0
        with self.cond:
            while True:
                if self.broken and time.monotonic() - self.broken_at > 60.0:
                    self.broken, self.failures = False, 0  # try again
                if self.broken:
                    raise _WorkerFailed("cannot start worker subprocesses")
                if self.idle:
                    return self.idle.pop(), excluded
                if self.starting == 0 and self.n < self.max:
                    self.n += 1
                    self._spawn_bg()
                if self.starting > 0:
                    if excluded > STARTUP_TIMEOUT_S:
                        raise _Timeout()
                    t = time.monotonic()
                    self.cond.wait(0.5)
                    excluded += time.monotonic() - t
                    continue
                remaining = deadline + excluded - time.monotonic()
                if remaining <= 0:
                    raise _Timeout()
                self.cond.wait(remaining)

    def release(self, w: _Worker, healthy: bool) -> None:
        if not healthy:
            w.kill()
        with self.cond:
            if healthy:
                self.idle.append(w)
            else:
                self.all.discard(w)
                self.n -= 1
                if self.n < SPARE_WORKERS and not self.broken:  # warm a replacement up now
                    self.n += 1
                    self._spawn_bg()
            self.cond.notify_all()

    def shutdown(self) -> None:
        with self.cond:
            workers = list(self.all)
            self.all.clear()
            self.idle.clear()
            self.n = self.starting
        for w in workers:
            if w.pid_owner == os.getpid():
                w.kill()


_POOL = _Pool()


def _after_fork_in_child() -> None:
    global _POOL
    old = _POOL
    _POOL = _Pool()
    for w in list(old.all):  # the parent's workers: close our copies of the pipes, never kill
        for f in (w.proc.stdin, w.proc.stdout):
            with contextlib.suppress(Exception):
                f.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(lambda: _POOL.shutdown())


_WARNED_NO_WORKER = False


def _math_verify(golds: list[str], preds: list[str], deadline: float) -> bool:
    """math-verify's verdict from a worker subprocess; raises _Timeout or _WorkerFailed."""
    global _WARNED_NO_WORKER
    for attempt in range(2):  # a worker that died between calls is replaced once
        pool = _POOL
        try:
            w, startup = pool.acquire(deadline)
        except _WorkerFailed:
            if not _WARNED_NO_WORKER:
                _WARNED_NO_WORKER = True
                logging.getLogger(__name__).warning(
                    "orion_utils.grading: cannot start worker subprocesses; pairs that need "
                    "math-verify are graded reason='error' (the in-process fast path still works)"
                )
            raise
        deadline += startup
        healthy = False
        try:
            ok = w.call(golds, preds, deadline)
            healthy = True
            return ok
        except _WorkerFailed:
            if attempt == 1 or time.monotonic() >= deadline:
                raise
        finally:
            pool.release(w, healthy)
    raise _WorkerFailed("unreachable")


def warm_up(n: int = 1, wait: bool = True) -> None:
    """Start ``n`` worker subprocesses now (each takes 1-3 s to import sympy) instead of on the
    first pair that needs one; with ``wait`` return once they are ready (at most STARTUP_TIMEOUT_S)."""
    pool = _POOL
    with pool.cond:
        pool.max = max(pool.max, int(n))
    pool.prestart(max(1, int(n)))
    if wait:
        end = time.monotonic() + STARTUP_TIMEOUT_S
        with pool.cond:
            while pool.starting > 0 and time.monotonic() < end:
                pool.cond.wait(0.5)


def shutdown() -> None:
    """Stop all worker subprocesses (they are restarted on demand; also done at exit)."""
    _POOL.shutdown()


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------

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
        b = _extract_boxed(s)
        if b:
            s = b
    elif "####" in s:
        s = s.rsplit("####", 1)[1]
    s = s.strip()
    return s, bool(_FLOAT_REPR_RE.fullmatch(s))


def _latex_forms(s: str) -> list[str]:
    out = [s]
    t = _text_to_latex(s)
    if t != s:
        out.append(t)
    return out


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
    ``timeout_s`` bounds the call; a worker's one-off start-up is not counted (module docstring).
    """
    t0 = time.monotonic()
    if _POOL.n < SPARE_WORKERS and not _POOL.broken:
        _POOL.prestart(SPARE_WORKERS)  # warm workers up in the background while the fast path runs
    if timeout_s is None or not (timeout_s > 0):
        timeout_s = 5.0 if timeout_s is None else 0.0
    deadline = t0 + float(timeout_s)
    pred: str | None = None
    try:
        gold_s, float_gold = _gold_text(gold)
        pred = extract_answer(response)
        if pred is None:
            return GradeResult(False, "no answer", None)
        if not gold_s:
            return GradeResult(False, "error", pred)
        if len(pred) > MAX_ANSWER_CHARS or len(gold_s) > MAX_ANSWER_CHARS:
            same = pred.strip() == gold_s.strip()
            return GradeResult(same, "correct" if same else "wrong", pred)
        verdict = _fast_compare(pred, gold_s, float_gold, rel_tol)
        if verdict is True:
            return GradeResult(True, "correct", pred)
        if verdict is False:
            return GradeResult(False, "wrong", pred)
        if time.monotonic() >= deadline:
            return GradeResult(False, "timeout", pred)
        ok = _math_verify(_latex_forms(gold_s), _latex_forms(pred), deadline)
        return GradeResult(ok, "correct" if ok else "wrong", pred)
    except _Timeout:
        return GradeResult(False, "timeout", pred)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        return GradeResult(False, "error", pred)


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
    results: list[GradeResult | None] = [None] * len(pairs)
    first: dict[tuple, int] = {}
    todo: list[int] = []
    for i, (resp, gold) in enumerate(pairs):
        key = (resp if isinstance(resp, str) else repr(resp), repr(gold))
        if key in first:
            continue
        first[key] = i
        todo.append(i)

    def one(i: int) -> None:
        resp, gold = pairs[i]
        results[i] = grade(resp, gold, timeout_s=timeout_s, rel_tol=rel_tol)

    workers = max(1, int(workers or 1))
    if workers == 1 or len(todo) < 2:
        for i in todo:
            one(i)
    else:
        with _POOL.cond:
            _POOL.max = max(_POOL.max, workers)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="orion-grade") as ex:
            list(ex.map(one, todo))
    for i, (resp, gold) in enumerate(pairs):
        if results[i] is None:
            key = (resp if isinstance(resp, str) else repr(resp), repr(gold))
            results[i] = results[first[key]]
    return results  # type: ignore[return-value]
