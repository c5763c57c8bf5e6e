"""Extraction: the final answer a response commits to, as a string.

Order (:func:`extract_answer`): the last ``\\boxed{...}`` / ``\\fbox{...}`` (see :mod:`.boxes`),
else the last "final answer is X" / "answer: X" / "answer is X" / "#### X", else, as a last
resort, the last math or number in the final line if that line reads as a finished sentence (a
response cut off mid-sentence gets no answer: a truncated chain of thought is not credited for a
number it happened to pass through). Only a bounded window near the answer is ever scanned, so a
1 MB response costs a few ``rfind`` calls. After a ``</think>``, an answer in the text after it
wins over one inside the reasoning.
"""
from __future__ import annotations

import re

from .boxes import last_boxed

FALLBACK_TAIL = 4000  # the "answer is X" fallbacks look at this many trailing characters
LAST_LINE_CHARS = 400

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
        boxed = last_boxed(response)
        if boxed is not None and boxed.strip():
            return boxed.strip()
        tail = response[-FALLBACK_TAIL:]
        cued = _extract_cued(tail)
        if cued:
            return cued
        return _extract_last_line(tail)
    except Exception:  # noqa: BLE001 - extraction must never raise
        return None
