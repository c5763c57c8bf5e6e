"""Canonical forms: safe string transforms that put an answer in one spelling before comparing.

Answers real models write that math-verify alone misses, or that a careless normaliser would get
wrong, handled here (both sides):

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
* mixed numbers ``2\\frac{1}{2}`` (read as 2 1/2 by :mod:`.evaluator`); number words ``seven``,
  ``forty-two`` as a whole answer.

Negatives the canonical form keeps apart: ``12`` vs ``1/2``, ``\\frac{1}{2}`` vs ``2``, ``100``
vs ``1,000``, ``2\\pi`` vs ``2``. Pure string work: no ``eval``, no sympy.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

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


def text_to_latex(s: str) -> str:
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
VAR_LHS_RE = re.compile(r"^\s*[a-zA-Z](?:_\{?[a-zA-Z0-9]+\}?)?(?:\([a-zA-Z]\))?\s*(?:=|\\in(?![a-zA-Z]))\s*")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:(?:,|\{,\}| )\d{3})+(?:\.\d+)?")
_CHOICE_RE = re.compile(r"^\(\s*([A-Ea-e])\s*\)$|^([A-E])\)$")
_BASE_RE = re.compile(r"^([0-9A-Za-z]+)_\{?(\d{1,2})\}?$")
# words that are maths, not units: never stripped from after a number
MATH_WORDS = {
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
    core = re.sub(r"(?<=[A-Za-z])\s*(?:\^\s*\{?\s*[23]\s*\}?|[²³])\s*$", "", s)  # cm^2, m^{3}, cm³
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
        if w.lower() in MATH_WORDS:
            return s
    one_letter = len(words) == 1 and len(words[0]) == 1
    if one_letter and (words[0] not in _SINGLE_LETTER_UNITS or not tail2[:1].isspace()):
        return s
    return head.rstrip()


@dataclass
class Canon:
    text: str  # canonical string
    pct: bool  # a percent sign was removed
    has_eq: bool  # still an equation / membership after canonicalisation
    base: tuple[str, int] | None = None  # "2516_8" -> ("2516", 8); text is then "2516"


def _normalise_latex(s: str) -> str:
    """One spelling of LaTeX: no sizing/spacing commands, ``\\frac{1}{2}`` for ``\\dfrac12``,
    ``\\sqrt{2}`` for ``\\sqrt2``, ``\\le``/``\\ge``/``\\ne`` for their long forms."""
    s = s.replace("\n", " ").replace("\t", " ")
    s = _DROP_RE.sub(" ", s)
    s = re.sub(r"\\[dtc]frac(?![a-zA-Z])", r"\\frac", s)
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*\{([^{}]*)\}\s*(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*(\d)\s*\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\sqrt\s*(\d)", r"\\sqrt{\1}", s)
    s = re.sub(r"\\(?:leq|leqslant)(?![a-zA-Z])", r"\\le", s)
    s = re.sub(r"\\(?:geq|geqslant)(?![a-zA-Z])", r"\\ge", s)
    return re.sub(r"\\neq(?![a-zA-Z])", r"\\ne", s)


def _drop_signs_and_text(s: str) -> tuple[str, bool]:
    """Degrees, percent and currency signs removed, ``\\text{...}`` unwrapped, ordinals made
    numbers; also whether a percent sign was removed."""
    s = _DEGREE_RE.sub("", s)
    s, n_pct = _PCT_RE.subn("", s)
    s = _CURRENCY_RE.sub("", s)
    for _ in range(3):  # unwrap \text{...} (innermost first)
        s2 = _TEXT_CMD_RE.sub(lambda m: " " + m.group(1) + " ", s)
        if s2 == s:
            break
        s = s2
    s = s.replace("{,}", ",")
    return _ORDINAL_RE.sub(r"\1", s), n_pct > 0


def _as_plain_number(s: str) -> str:
    """Scaled numbers, unit words, number words and thousands separators turned into the bare
    number ("2.5 million", "5 cm", "seven", "1,000,000"); anything else unchanged."""
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
    return s


def _split_base(s: str) -> tuple[str, tuple[str, int] | None]:
    """A numeral with its base, ``2516_8`` -> ("2516", ("2516", 8)): the digits alone (the base
    is in the question) and the base; anything else comes back unchanged with None."""
    m = _BASE_RE.match(s)
    if not (m and re.search(r"\d", m.group(1))):
        return s, None
    base = (m.group(1).upper(), int(m.group(2)))
    if 2 <= base[1] <= 36 and all(int(ch, 36) < base[1] for ch in m.group(1)):
        s = m.group(1)
    return s, base


def _squeeze(s: str) -> str:
    """Whitespace and implicit multiplication signs removed, where that keeps the meaning."""
    s = re.sub(r"([_^])\s*\{\s*([^{}\s])\s*\}", r"\1\2", s)
    # remove a multiplication sign between a number/closing brace and a letter or command
    s = re.sub(r"(?<=[\d}])\s*(?:\*|\\cdot|\\times)\s*(?=[a-zA-Z\\(])", "", s)
    s = re.sub(r"(?<=\d) +(?=\d)", "\x00", s)  # keep a separator between two numbers
    s = re.sub(r"(\\[a-zA-Z]+) +(?=[a-zA-Z])", "\\1\x00", s)  # and after a command: "\\pi r"
    s = re.sub(r"\s+", "", s).replace("\x00", " ")
    return re.sub(r"^\+(?=[\d.])", "", s)


def canon(s: str, strip_lhs: bool) -> Canon:
    """The canonical form of one answer; ``strip_lhs`` drops a single variable on the left
    (``x = 5`` -> ``5``), which is right only when the other side is not an equation."""
    s = _strip_outer(text_to_latex(s))
    s, pct = _drop_signs_and_text(_normalise_latex(s))
    s = _strip_outer(s)
    if strip_lhs:
        m = VAR_LHS_RE.match(s)
        if m and m.end() < len(s):
            s = s[m.end():]
    s = _as_plain_number(s)
    m = _CHOICE_RE.match(s)
    if m:
        s = (m.group(1) or m.group(2)).upper()
    s, base = _split_base(s)
    s = _squeeze(s)
    return Canon(s, pct, bool(re.search(r"(?<![<>!\\])=|\\in(?![a-zA-Z])", s)), base)


def is_word(s: str) -> bool:
    """A text answer (a name, a word): letters, maybe with inner spaces, hyphens or apostrophes."""
    return bool(re.fullmatch(r"[A-Za-z][A-Za-z' -]*[A-Za-z]", s))
