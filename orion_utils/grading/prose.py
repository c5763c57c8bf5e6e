"""Answers stated without a box: which sentence of a response's ending states its final answer.

Long chains of thought often end without ``\\boxed{}``: a "**Final Answer**" heading followed by
the bare value, "Therefore, the value of \\( t \\) is 23.", "So the culprit is Alice.", or the
claim followed by closing remarks ("I think that's the answer."). :func:`prose_answer` reads,
in a bounded window at the end of a response:

1. a final-answer section -- the text after a last "Final Answer" heading, when that text ends
   the response -- or a last paragraph that is nothing but a value ("...\n\n98");
2. else the concluding claim: the last sentence that states a value (read by :mod:`.claim`),
   passing over closing remarks that state none ("Yes, that seems solid."). A response cut off
   mid-sentence, one that takes its claim back ("Wait, that can't be right."), or one whose last
   sentence states nothing and is no closing remark has none: a chain of thought is not
   credited for a number it happened to pass through;
3. the last answer cue ("the answer is X", "answer: X", "#### X", "X is the correct answer")
   wins over a concluding claim after it, unless that claim reads as a conclusion ("So ...",
   "Therefore ...", "Hence ..."): a sentence after the cue is most often a check of it;
4. else a whole response that is a bare answer ("18", "x = 5", "Evelyn").
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .claim import claimed_value, last_cue
from .sentences import MATH_SPAN_RE, is_finished, span_content, split_sentences
from .values import bare_value, clean_value

CLAIM_WINDOW = 1500  # the concluding claim is looked for in this many trailing characters
MAX_PASSED_OVER = 6  # closing remarks passed over when looking back for the claim
SECTION_CHARS = 400  # a final-answer section longer than this is no final answer
BOX_GUARD_CHARS = 400  # an empty or unclosed box this close to the end: no prose answer
BARE_CHARS = 40  # a whole response this short may be a bare answer

_HEADING_RE = re.compile(  # "**Final Answer**", "## Final Answer", "Final Answer:" on a line of its own
    r"^[ \t]*(?:#{1,6}[ \t]*)?(?:\*\*)?[ \t]*final[ \t]+answer[ \t]*:?[ \t]*(?:\*\*)?[ \t]*:?[ \t]*$",
    re.IGNORECASE | re.MULTILINE,
)
_CLOSER_RE = re.compile(  # a closing remark: "I think that's the answer.", "Yes, that seems solid."
    r"\b(?:answers?|correct(?:ly)?|right|solid|sure|confident|(?:double-)?check(?:s|ed)?|consistent|"
    r"makes\s+sense|verif(?:y|ied)|seems?|looks?|good|fine|done|hmm+|okay|ok|yes|yeah|yep|alright|"
    r"that'?s\s+it|thought\s+process|mistakes?|errors?|reasoning|hope|calculations?|steps?|works?|"
    r"holds?|reassuring|agrees?|conclusion|final|perfect|great|nice|exactly|indeed)\b",
    re.IGNORECASE,
)
_DOUBT_RE = re.compile(  # a remark that takes the claim back: "Wait, that can't be right."
    r"^\W*(?:(?:but|and|hmm+|oh|so)[,\s]+)?(?:wait|hold\s+on)\b|^\W*hmm+,?\s+(?:but|no)\b|"
    r"\b(?:can'?t|cannot)\s+be\s+(?:right|correct)|\b(?:is|was|seems?|looks?)(?:n'?t|\s+not)\s+"
    r"(?:right|correct)|\blet\s+me\s+(?:just\s+|quickly\s+|now\s+|also\s+)?(?:re-?|double-?)?"
    r"(?:check|verify|think|compute|calculate|consider|examine)",
    re.IGNORECASE,
)
_CONCLUSION_RE = re.compile(
    r"^\W*(?:(?:and|but)\s+)?(?:so|therefore|thus|hence|finally|overall|altogether|in\s+total|"
    r"in\s+conclusion|in\s+summary|to\s+summari[sz]e|consequently|as\s+a\s+result|"
    r"this\s+(?:gives|means)|that\s+means|the\s+(?:final|total|answer|result))\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class _Claim:
    start: int  # where its sentence starts in the text
    value: str
    conclusive: bool  # the sentence reads as a conclusion ("So ...", "Therefore ...")


def _box_remnant(text: str) -> bool:
    """An empty or unclosed box near the end (the reader of boxes found no answer in it)."""
    end = text[-BOX_GUARD_CHARS:]
    return "\\boxed" in end or "\\fbox" in end


def _concluding_claim(text: str) -> _Claim | None:
    """The last sentence of ``text`` that states a value, passing over closing remarks."""
    start = max(0, len(text) - CLAIM_WINDOW)
    newline = text.find("\n", start)
    if start > 0 and 0 <= newline < len(text) - 1:
        start = newline + 1  # begin at a line: never inside a formula
    sentences = split_sentences(text[start:])
    if not sentences or not is_finished(sentences[-1].text):
        return None  # cut off mid-sentence
    for sentence in reversed(sentences[-(MAX_PASSED_OVER + 1):]):
        value = claimed_value(sentence.text)
        if value:
            return _Claim(start + sentence.start, value, bool(_CONCLUSION_RE.match(sentence.text)))
        if _DOUBT_RE.search(sentence.text) or not _CLOSER_RE.search(sentence.text):
            return None  # the claim was taken back, or the text ends on something else
    return None


def _section_answer(text: str) -> str | None:
    """The answer under a last "Final Answer" heading that ends the response: a bare value line
    ("11", "x = 5") or the claim of its one paragraph ("The remainder is 35.")."""
    heading = None
    for heading in _HEADING_RE.finditer(text, max(0, len(text) - SECTION_CHARS - 100)):
        pass
    if heading is None:
        return None
    section = text[heading.end():].strip()
    if not section or len(section) > SECTION_CHARS or "\n\n" in section:
        return None
    if "\n" not in section and not is_finished(section):  # "11", "x = 5", "Alice"
        return bare_value(section) or claimed_value(section) or clean_value(section)
    claim = _concluding_claim(section)
    return claim.value if claim else None


def _value_paragraph(text: str) -> str | None:
    """A last paragraph that is nothing but a value, after a finished paragraph: the answer
    written on a line of its own, as a box would hold it."""
    cut = text.rfind("\n\n", max(0, len(text) - BARE_CHARS - 2))
    if cut < 0 or "\n" in text[cut:].strip() or not is_finished(text[:cut]):
        return None
    return bare_value(text[cut:])


def _bare_answer(text: str) -> str | None:
    """A whole response that is just an answer: "18", "$\\frac12$", "5 cm", "x = 5", "Evelyn"."""
    if len(text) > BARE_CHARS or "\n" in text:
        return None
    whole = text.strip().rstrip(".").strip()
    span = MATH_SPAN_RE.fullmatch(whole)
    if span:
        return span_content(span) or None
    words = re.findall(r"(?<![\\a-zA-Z])[A-Za-z]{3,}", whole)
    no_math_spans = whole.count("$") < 2 and "\\(" not in whole and "\\[" not in whole  # "$5" is money
    if whole and no_math_spans and (
        len(whole.split()) == 1 or (len(words) <= 1 and re.search(r"[\d\\^_=+*/]", whole))
    ):
        return whole
    return None


def prose_answer(text: str) -> str | None:
    """The final answer ``text`` states in prose (module docstring), or None."""
    text = text.rstrip()
    if not text:
        return None
    boxed_end = _box_remnant(text)
    if not boxed_end:
        section = _section_answer(text) or _value_paragraph(text)
        if section:
            return section
    cue = last_cue(text)
    claim = None if boxed_end else _concluding_claim(text)
    if cue and not (claim and claim.start > cue[0] and claim.conclusive):
        return cue[1]
    if not boxed_end:
        bare = _bare_answer(text)
        if bare:
            return bare
    return claim.value if claim else None
