"""Reading one stated value out of prose: the value a clause starts with or a sentence ends with.

A value is a formula (its right-hand side when it is a chain of equalities), a number or
expression with its unit words ("42 dollars"), a prose list ("2, 3, and 5" -> "2, 3, 5"), a
multiple-choice option or a name. Decoration is dropped: bold, quotes, hedges ("approximately"),
the word "boxed", a stray closing ``\\)``. A verdict ("correct", "consistent with ...") is no value.
"""
from __future__ import annotations

import re

from .canonical import MATH_WORDS
from .sentences import MATH_SPAN_RE, span_content

NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")

_HEDGE_RE = re.compile(
    r"^(?:(?:indeed|definitely|probably|likely|clearly|exactly|simply|just|then|therefore|thus|"
    r"still|now|also|actually|approximately|about|roughly|around|\\?boxed)\s+)+",
    re.IGNORECASE,
)
_VERDICT_RE = re.compile(
    r"^(?:not|correct|right|wrong|incorrect|consistent|valid|invalid|confirmed|verified|solid|"
    r"reasonable|plausible|fine|good|the\s+same|same|as\s+follows|below|above|clear|obvious|"
    r"unique|different|unchanged|in\s+the|given|that|this|it)\b",
    re.IGNORECASE,
)
# a list item: a number, or a formula that is no equation or inequality ("$c = 14$ and $a = 5$" is no list)
_ITEM = r"-?\d+(?:\.\d+)?(?:/\d+)?|\$(?:(?!\\(?:le|ge|leq|geq|ne|neq|in)(?![a-zA-Z]))[^$=<>]){1,80}\$"
_LIST_SEP = r"\s*,\s+(?:and\s+)?|,?\s+and\s+"  # "1,080" is a number, "1, 080" a list
_PROSE_LIST_RE = re.compile(rf"(?:{_ITEM})(?:(?:{_LIST_SEP})(?:{_ITEM}))+")
_LIST_AT_END_RE = re.compile(rf"(?<![\w$])(?:{_ITEM})(?:(?:{_LIST_SEP})(?:{_ITEM}))+$")
_LIST_SEP_RE = re.compile(_LIST_SEP)
_TOKEN = r"-?\$?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)|[^\s,;]+"  # "220,000" is one number
_EXPR_RE = re.compile(rf"(?:{_TOKEN})(?:\s*[-+*/=×·^]\s*(?:{_TOKEN}))*")  # "43+64=107", "4√678"
_UNIT_WORD_RE = re.compile(r"\s+([A-Za-z²³°%']+)")
_ATTACHED_UNIT_RE = re.compile(r"(-?\d[\d,.]*)([A-Za-z]{2,}|[gmshlLKJWNVA])")
_NOT_UNITS = {"after", "before", "at", "in", "on", "from", "to", "with", "per", "each", "of", "for", "by", "than"}
_NUMBER_AT_END_RE = re.compile(rf"(?:{NUMBER_RE.pattern})(?:\s+([A-Za-z]+))?$")
_BARE_NUMBER_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_NAME_RE = re.compile(r"[A-Z][a-z]+(?:\s+[A-Z][a-z]+){0,2}")
_NOT_NAMES = {"I", "The", "This", "That", "It", "There", "We", "He", "She", "They", "A", "An", "So", "Then"}
_CHOICE_RE = re.compile(r"\(\s*[A-Ea-e]\s*\)|[A-E]")


def whole_span(s: str) -> str | None:
    """The formula inside ``s`` when ``s`` is exactly one math span, else None."""
    m = MATH_SPAN_RE.fullmatch(s)
    return span_content(m) if m else None


def rhs(formula: str) -> str:
    """The right-hand side of a chain of equalities ("43+64=107" -> "107")."""
    return formula.rsplit("=", 1)[-1].strip().rstrip(".,;").strip()


def _join_list(items_text: str) -> str:
    """A prose list of numbers or formulas "2, 3, and 5" as one list answer "2, 3, 5"."""
    items = [x.strip() for x in _LIST_SEP_RE.split(items_text) if x.strip()]
    return ", ".join(whole_span(x) or x for x in items)


def undecorated(s: str) -> str | None:
    """``s`` without bold, quotes, a leading colon, hedges ("approximately"), the word "boxed" or a
    stray closing delimiter; None when empty or a verdict ("correct", "consistent with ...")."""
    s = s.strip().strip("*_\"'` ").lstrip(":").rstrip(".,;:!?").strip()
    s = _HEDGE_RE.sub("", s)
    s = re.sub(r",?\s*\\?boxed$", "", s).strip()
    for close, open_ in (("\\)", "\\("), ("\\]", "\\[")):
        if s.endswith(close) and open_ not in s:  # "17\)" left by a stray delimiter
            s = s[: -len(close)].rstrip()
    if not s or _VERDICT_RE.match(s):
        return None
    return s


def clean_value(s: str) -> str | None:
    """A stated value as written, without decoration; a whole formula unwrapped, a prose list
    joined. None when it is a verdict ("correct") or empty."""
    s = undecorated(s)
    if s is None:
        return None
    inner = whole_span(s)
    if inner is not None:
        return inner
    return _join_list(s) if _PROSE_LIST_RE.fullmatch(s) else s


def _unit_words(s: str, pos: int) -> str:
    """Up to two unit words after a number at ``pos`` ("dollars", "miles away"), stopping at a
    word that is maths ("times", "and", "million"): those the canonical form would not strip."""
    out = ""
    for _ in range(2):
        m = _UNIT_WORD_RE.match(s, pos)
        if not m or m.group(1).lower() in MATH_WORDS | _NOT_UNITS:
            break
        out += m.group(0)
        pos = m.end()
    return out


def _spaced_unit(value: str) -> str:
    """A unit written onto its number set apart ("100g" -> "100 g", "12cm" -> "12 cm"), as the
    canonical form strips it; "5x", "3i" and "2pi" stay maths."""
    m = _ATTACHED_UNIT_RE.fullmatch(value)
    if not m or m.group(2).lower() in MATH_WORDS:
        return value
    return f"{m.group(1)} {m.group(2)}"


def option_or_name(s: str) -> str | None:
    """``s`` when it is a multiple-choice option ("(C)", "C") or a name ("Alice"), else None."""
    if _CHOICE_RE.fullmatch(s):
        return s
    if _NAME_RE.fullmatch(s) and s.split()[0] not in _NOT_NAMES:
        return s
    return None


def leading_value(clause: str) -> str | None:
    """The value a clause starts with: a prose list, a formula (its right-hand side), a number or
    expression with up to two unit words, an option, or a name. None when the clause starts with
    words ("minimal, we take ...", "the 100th term")."""
    s = undecorated(clause)
    if s is None:
        return None
    items = _PROSE_LIST_RE.match(s)
    if items:
        return _join_list(items.group(0))
    span = MATH_SPAN_RE.match(s)
    if span:
        return rhs(span_content(span)) or None
    expr = _EXPR_RE.match(s)
    if expr and re.search(r"\d|\\[a-zA-Z]|[√π∞]", expr.group(0)):
        return _spaced_unit(rhs(expr.group(0))) + _unit_words(s, expr.end())
    choice = _CHOICE_RE.match(s)
    if choice and s[0] == "(":
        return choice.group(0)
    return option_or_name(s)


def ending_value(text: str, numbers: bool = False) -> str | None:
    """The value ``text`` ends with (final punctuation aside): a prose list or a formula (its
    right-hand side); with ``numbers`` also a number, maybe with one unit word ("37 feet")."""
    t = text.rstrip().rstrip("*").rstrip(".!;:,").rstrip()
    items = _LIST_AT_END_RE.search(t[-300:])
    if items:
        return _join_list(items.group(0))
    last = None
    for last in MATH_SPAN_RE.finditer(t, max(0, len(t) - 700)):
        pass
    if last is not None and last.end() == len(t):
        return rhs(span_content(last)) or None
    number = _NUMBER_AT_END_RE.search(t[-100:]) if numbers else None
    if number and (number.group(1) is None or number.group(1).lower() not in MATH_WORDS | _NOT_UNITS):
        return number.group(0).rstrip(",")
    return None


def last_value(sentence: str) -> str | None:
    """The last formula (its right-hand side) or number of a sentence."""
    spans = list(MATH_SPAN_RE.finditer(sentence))
    if spans:
        return rhs(span_content(spans[-1])) or None
    nums = list(NUMBER_RE.finditer(sentence))
    return (rhs(nums[-1].group(0)) or None) if nums else None


def bare_value(text: str) -> str | None:
    """``text`` when it is nothing but a finished value, as a box's content would be: a formula
    (its right-hand side), a number or fraction, a LaTeX term ("2\\sqrt{3}"), an option "(C)". A piece
    of a computation ("8*9", "15^2=22", "68^") is none."""
    s = undecorated(text)
    if not s:
        return None
    inner = whole_span(s)
    if inner is not None:
        return rhs(inner) or None
    if _BARE_NUMBER_RE.fullmatch(s) or re.fullmatch(r"\(\s*[A-E]\s*\)", s):
        return s
    if re.fullmatch(r"-?\d*\\[a-zA-Z]+(?:\{[^{}\s]{1,20}\}){1,2}", s):  # \frac{3}{4}, 2\sqrt{3}
        return s
    return None


def is_bare_value(clause: str) -> bool:
    """Just a formula or a number, nothing else ("$1.$", "16/3")."""
    s = undecorated(clause)
    return bool(s) and (MATH_SPAN_RE.fullmatch(s) is not None or bool(re.fullmatch(r"-?[\d.,/]+", s)))
