"""The answer one sentence claims: "the answer is X", "X is the correct answer", "the total is X".

Readings of a sentence, first that gives a value (:func:`claimed_value`):

1. the text after an answer cue ("the answer is X", "final answer: X", "#### X");
2. the subject of "X is the correct answer" / "X is our answer";
3. the formula or prose list the sentence ends with ("... we have $x=2$.", "... are 2, 3, and 5.");
4. the value after its last main-clause "is / are / = / equals / would be ..." -- not one inside
   a formula, nor "which is ..." unless that ends the sentence, nor a description ("is the 100th
   term", whose subject "981" is then the value);
5. its last formula or number.

A value with digits followed by a restatement -- ", so m + n is 187", "..., or $\\sqrt{100-49} =
\\sqrt{51}$" -- gives the restated value. Values are read by :mod:`.values`.
"""
from __future__ import annotations

import re

from .sentences import MATH_SPAN_RE, mask_math, span_content
from .values import clean_value, ending_value, is_bare_value, last_value, leading_value, option_or_name, rhs

MAX_CUED_CHARS = 400  # what follows a cue is read up to this many characters
MAX_COPULAS = 12  # the last copulas of a sentence that are tried

ANSWER_CUE_RE = re.compile(
    r"(?:final\s+answer|answer)(?:\s+(?:is|should\s+be|would\s+be|will\s+be|=)|\s*[:：=])[:\s]*"
    r"|final\s+answer\s*(?=\$|\\\[|\\\()|####\s*",
    re.IGNORECASE,
)
SUBJECT_CUE_RE = re.compile(  # "893 is the correct answer", "Evelyn is our answer"
    r"\s+(?:is|must\s+be|should\s+be)\s+(?:indeed\s+|definitely\s+|clearly\s+)?(?:the|our|my)\s+"
    r"(?:(?:correct|right|final|desired|required)\s+(?:answer|result|value|solution|choice|option)|answer)\b",
    re.IGNORECASE,
)
_COPULA_RE = re.compile(
    r"(?<![\w\\])(?:is(?:\s+equal\s+to)?|are|was|were|being|equals?|becomes|comes\s+to|"
    r"(?:would|should|must|will|to)\s+be)(?![a-zA-Z])|=|≈",
    re.IGNORECASE,
)
_RELATIVE_BEFORE_RE = re.compile(r"\b(?:which|that|who|what|where)\s*$", re.IGNORECASE)
_CLAUSE_END_RE = re.compile(  # where the value after a cue or a copula stops
    r"\.(?:\s|$)|;|\s+(?:because|since|as|which|so|where|when|for|but|while|giving|meaning|hence|"
    r"thus|therefore|then|is|are|was|were)(?![a-zA-Z])|,\s*(?:because|since|as|which|so|where|when|"
    r"for|but|while|giving|meaning|hence|thus|therefore|then|and\s+(?:so|then|thus|hence|therefore|"
    r"the|its|their|this|that|it|we|I|[a-zA-Z]\s*[+=]))(?![a-zA-Z])",
    re.IGNORECASE,
)
_CHAIN_RE = re.compile(  # ", so m + n is 187" / ", and m + n is 103" / ", or $..$"
    r"\s*(?:[,;]\s*)?(?:and\s+)?(?:so|hence|thus|therefore|giving)\b|\s*[,;]\s*(?:and|or)\b", re.IGNORECASE
)


def _clause(text: str, start: int, masked: str | None = None) -> tuple[str, int]:
    """``text`` from ``start`` to the end of its clause (math spans are never cut), and that end;
    ``masked`` is ``mask_math(text)`` when the caller has it."""
    masked = mask_math(text) if masked is None else masked
    start += len(masked[start:]) - len(masked[start:].lstrip())
    m = _CLAUSE_END_RE.search(masked, start)
    end = m.start() if m else len(text)
    return text[start:end], end


def _restated(value: str, after: str, anywhere: bool) -> str:
    """``value``, or what the text ``after`` it restates it as: a claim chained by ", so" /
    ", and" / ", or" (right after it, or ``anywhere`` in ``after``), else, with ``anywhere``, the
    last equation in ``after``. Only a value with digits is restated, only by one with digits."""
    if not re.search(r"\d", value):
        return value
    chain = (_CHAIN_RE.search if anywhere else _CHAIN_RE.match)(after)
    restated = None
    if chain:
        rest = after[chain.end():]
        span = MATH_SPAN_RE.match(rest.lstrip())
        restated = rhs(span_content(span)) if span else copula_value(rest)
    if not restated and anywhere:
        equations = [m for m in MATH_SPAN_RE.finditer(after) if "=" in span_content(m)]
        restated = rhs(span_content(equations[-1])) if equations else None
    return restated if restated and re.search(r"\d", restated) else value


def after_cue(s: str) -> str | None:
    """The answer following a cue like "answer is": its first math span or the rest of the clause
    (a verdict such as "correct" is none); a chained claim right after it ("so m + n is 187") wins."""
    s = s.lstrip(" \t*:_")[:MAX_CUED_CHARS]
    line = s.split("\n", 1)[0]
    m = MATH_SPAN_RE.match(s)
    if m:
        value, rest = span_content(m), s[m.end():].split("\n", 1)[0]
    else:
        clause, end = _clause(line, 0)
        span = MATH_SPAN_RE.search(clause)
        value = span_content(span) if span else clause
        rest = line[end:]
    value = clean_value(value)
    return _restated(value, rest, anywhere=False) if value else None


def _subject(before: str) -> str | None:
    """The value a sentence's text ``before`` a copula ends with: a number or formula, an option
    or a name ("893", "$x$", "(C)", "Evelyn")."""
    value = ending_value(before, numbers=True)
    if value:
        return value
    word = re.search(r"(\S+)$", before.rstrip())
    return option_or_name(word.group(1).strip("*_")) if word else None


def subject_value(sentence: str) -> str | None:
    """X in the last "X is the correct answer" / "X is our answer" of a sentence."""
    m = None
    for m in SUBJECT_CUE_RE.finditer(mask_math(sentence)):
        pass
    return _subject(sentence[:m.start()]) if m else None


def copula_value(sentence: str) -> str | None:
    """The value after the last main-clause copula that states one ("the total is 42 dollars",
    "p+q=107"), as restated later in the sentence; or the number before "is the <description>"."""
    masked = mask_math(sentence)
    for m in list(_COPULA_RE.finditer(masked))[::-1][:MAX_COPULAS]:
        clause, end = _clause(sentence, m.end(), masked)
        if _RELATIVE_BEFORE_RE.search(masked[max(0, m.start() - 12):m.start()]) and not (
            is_bare_value(clause) and not sentence[end:].strip(" .!")
        ):
            continue  # "which is 6 more than 36" adds to the claim; "..., which is $1$." ends it
        value = leading_value(clause)
        if value:
            return _restated(value, sentence[m.end():], anywhere=True)
        if re.match(r"the\s", clause, re.IGNORECASE):  # "981 is the 100th term"
            subject = ending_value(sentence[:m.start()], numbers=True)
            if subject:
                return subject
    return None


def last_cue(text: str) -> tuple[int, str] | None:
    """(position, value) of the last answer cue of ``text`` that states a value."""
    cues = [(m.start(), m.end(), False) for m in ANSWER_CUE_RE.finditer(text)]
    cues += [(m.start(), m.end(), True) for m in SUBJECT_CUE_RE.finditer(mask_math(text))]
    for start, end, subject in sorted(cues, reverse=True):
        if subject:
            value = subject_value(text[max(text.rfind("\n", 0, start) + 1, start - 300):end])
        else:
            value = after_cue(text[end:])
        if value:
            return start, value
    return None


def claimed_value(sentence: str) -> str | None:
    """The answer one sentence states, or None when it states none."""
    cue = last_cue(sentence)
    if cue:
        return cue[1]
    return (subject_value(sentence) or ending_value(sentence) or copula_value(sentence)
            or last_value(sentence))
