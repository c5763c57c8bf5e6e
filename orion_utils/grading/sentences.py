"""Sentences at the end of a response, with math spans (``$..$``, ``\\(..\\)``, ``\\[..\\]``) kept whole.

Prose answers are read sentence by sentence (:mod:`.prose`, :mod:`.claim`); a period, a
question mark or a line break inside a formula must not cut a sentence, so formulas are masked
before splitting. Callers pass a bounded window: every regex here has bounded repetition.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise

MATH_SPAN_RE = re.compile(  # $$..$$, \[..\], \(..\), $..$ (an escaped \$ is no delimiter)
    r"(?<!\\)\$\$(.{1,600}?)(?<!\\)\$\$|\\\[(.{1,600}?)\\\]|\\\((.{1,600}?)\\\)"
    r"|(?<!\\)\$((?:\\\$|[^$\n]){1,600}?)(?<!\\)\$",
    re.DOTALL,
)
MASK = "\x01"  # stands for a character inside a math span

_SENTENCE_END_RE = re.compile(  # also after a displayed formula that a new sentence follows
    r"[.!?](?=\s)|\n|(?<=\\\])(?=[ \t]*[A-Z])|(?<=\$\$)(?=[ \t]*[A-Z])"
)
_LIST_MARKER_RE = re.compile(r"\s*(?:\d{1,2}[.)]|[-*•])")  # "2." / "-" opening a list item
_FINISHED_RE = re.compile(r"(?:[.!]|\$|\\\]|\\\)|\*\*)\s*$")


@dataclass(frozen=True)
class Sentence:
    start: int  # offset in the text it was cut from
    text: str


def span_content(m: re.Match) -> str:
    """The formula inside a :data:`MATH_SPAN_RE` match, without its delimiters."""
    return next(g for g in m.groups() if g is not None).strip()


def mask_math(text: str) -> str:
    """``text`` with every character inside a math span replaced by :data:`MASK` (same length),
    so that searches for words and punctuation see the prose only."""
    out, last = [], 0
    for m in MATH_SPAN_RE.finditer(text):
        inner = next(i for i in range(1, 5) if m.group(i) is not None)
        a, b = m.span(inner)
        out += [text[last:a], MASK * (b - a)]
        last = b
    out.append(text[last:])
    return "".join(out)


def split_sentences(text: str) -> list[Sentence]:
    """The sentences and lines of ``text`` in order, stripped, empty ones dropped. A list marker
    ("2.", "-") stays with the item it opens."""
    masked = mask_math(text)
    cuts = [0] + [m.end() for m in _SENTENCE_END_RE.finditer(masked)] + [len(text)]
    out: list[Sentence] = []
    carry = None  # a list marker waiting for its item
    for a, b in pairwise(cuts):
        piece = text[a:b]
        if not piece.strip():
            continue
        if carry is not None:
            a, piece = carry, text[carry:b]
            carry = None
        if _LIST_MARKER_RE.fullmatch(piece.strip()):
            carry = a
            continue
        lead = len(piece) - len(piece.lstrip())
        out.append(Sentence(a + lead, piece.strip()))
    if carry is not None:
        out.append(Sentence(carry, text[carry:].strip()))
    return out


def is_finished(sentence: str) -> bool:
    """Whether a sentence ends like a finished one (a period, ``!``, a closed formula, bold), as
    opposed to text cut off mid-sentence."""
    return bool(_FINISHED_RE.search(sentence))
