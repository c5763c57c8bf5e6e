"""Stage 03's acceptance checks: does a candidate rewrite reflect on the student's error, or only echo?

The reflection prompt (``reflection_prompt.REFLECTION_PROMPT``) shows the question, the teacher's CoT (which
ends in ``\\boxed{gold}``) and the student's wrong attempt, and asks for the teacher's CoT rewritten
with, at the wrong step, an explicit reflection on the mistake. The normal good answer on a long CoT is
the teacher's CoT with one reflection paragraph inserted (or a line replaced); so the checks judge
**what the rewrite adds to or changes in the teacher's CoT**, not the rewrite as a whole.

Both texts are cut into units (sentences within lines) and aligned (``difflib.SequenceMatcher`` on the
normalised units, ``diff_regions``); the rewrite's inserted or replaced units form its *added regions*.
The wrong attempt is aligned with the teacher's CoT the same way: the numbers only its changed units
have are its *wrong values*, the numbers only the teacher's corresponding units have are the *right
values* (``wrong_markers``). ``refine`` accepts a candidate only when it passes, in this order
(``REASONS``; a rejected candidate is counted under the first it fails):

1. ``unfinished``: it was cut off at ``max_new_tokens`` (``Unfinished``), whatever its text holds.
2. ``unverified``: its final answer does not verify against the gold answer (``grading.grade``).
3. ``echo`` (``echo_of_prompt``): the added text repeats the prompt: one of its headings ("## Problem",
   "## Your earlier attempt (wrong)", ...) as a line, a run of ``ECHO_NGRAM`` words of its instruction
   sentences (both read from the prompt itself, ``prompt_scaffolding``), or the prompt's texts pasted
   whole (added units copied from the teacher's CoT or the wrong attempt, half the wrong attempt's length
   or more).
4. ``other problem`` (``foreign_share``): over half of the numbers its added text writes (at least five, of
   two or more characters) are in none of the question, the teacher's CoT and the wrong attempt: another
   problem's solution. Switched off with ``min_coverage`` 0.
5. ``low coverage`` (``teacher_coverage``): it does not carry on to the end: of the numbers the teacher's
   CoT derives after the point where the rewrite first departs from it (those not in the question, of two
   or more characters where there are any), the rewrite's own text after that point holds less than
   ``min_coverage``; a truncation stops here.
6. ``copy``: it adds fewer than ``min_added_chars`` characters to the teacher's CoT (a verbatim or
   near-verbatim copy). The amount added is what counts, never the overall similarity: one paragraph
   inserted into a 9,000-character CoT is the normal case.
7. ``no reflection`` (``reflection_evidence``): no added region quotes a *marker* of the wrong attempt
   (a sentence, a line, an equation or a wrong value that neither the teacher's CoT nor the question has
   there) within ``reflect_window`` characters of reflection language (``CUE_RE``: wait, check,
   mistake, wrong, not, instead, ...; a cue negated, as in "no mistake" or "nothing wrong", does not
   count).
8. ``uncorrected``: that reflection gives no right value (a number the teacher's CoT has where the wrong
   attempt differs) within ``reflect_window`` characters of the quoted marker: a quote followed by "I see
   no mistake" is not a correction.
9. ``judge`` (only with ``reflection.judge`` on, ``rewrite_judge``): a candidate that passed every check
   above is shown to the teacher, which did not answer that it reflects on the error and reasons validly.

The quoted marker the "reflects" check finds is also where the wrong step sits in the rewrite: the
longest quoted wrong line (else the quoted wrong equation) is the span ``mask_wrong_step`` takes out of
the loss (``wrong_step_span``), for reflectors that do not record their own spans.
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from typing import Optional

# Checks in the order they are applied; a rejected candidate is counted under the first it fails.
# "judge": the teacher, asked about a candidate that passed every rule (``reflection.judge``, ``rewrite_judge``),
# did not answer yes; never set by ``check_candidate``
REASONS = ("unfinished", "unverified", "echo", "other problem", "low coverage", "copy", "no reflection", "uncorrected",
           "judge")
ECHO_NGRAM = 7  # words of an instruction sentence of the prompt that, found in the added text, make it an echo
FOREIGN_MIN, MAX_FOREIGN = 5, 0.5  # "other problem": at least 5 added numbers, over half in none of the prompt's texts
PASTED_SHARE = 0.5  # added units copied from the prompt's texts, as a share of the wrong attempt's length

CUE_RE = re.compile(
    r"\b(wait|check\w*|careful|mistake[sn]?|mistaken|wrong|incorrect\w*|error|errors|oops|instead|actually|should|not|"
    r"tempted|earlier|previous(?:ly)?|realis\w*|realiz\w*|re-?check\w*|re-?examin\w*|correct(?:ion|ed)|"
    r"slip|miscalculat\w*|misread|typo|hold on|hmm|flaw\w*|redo|recomput\w*|recalculat\w*|fix\w*)\b",
    re.IGNORECASE,
)
# a cue after one of these (within three words) is negated: "no mistake", "nothing wrong", "don't see an error"
_NEGATOR_RE = re.compile(r"\b(no|nothing|never|none|without|n't|not|cannot)\b|n't\b", re.IGNORECASE)
_WRONGNESS = re.compile(r"\b(wrong|incorrect|mistake[sn]?|mistaken|error|errors|off|flawed|a slip)\b", re.IGNORECASE)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")
_OPERAND = r"(?:[\d\s.,+\-*/×÷()^x]|\\times|\\cdot)"
EQUATION_RE = re.compile(rf"[\d(]{_OPERAND}*(?:[+\-*/×÷^x]|\\times|\\cdot){_OPERAND}*=\s*-?\$?\d+(?:[.,]\d+)*")
_TOKEN_RE = re.compile(r"\d+(?:[.,]\d+)*|\w+|[^\w\s]")
_WORD_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


class Unfinished(str):
    """A candidate rewrite cut off at ``max_new_tokens`` (a ``sampling.Generation`` whose ``finish_reason`` is "length"):
    counted as rejected ("unfinished"), never accepted, whatever an extractor can pull from it."""


def _norm(text: str) -> str:
    return " ".join((text or "").lower().split())


def _words(text: str) -> list:
    return _WORD_RE.findall((text or "").lower().replace("\u2019", "'"))


def _number_key(n: str) -> str:
    return n[:-2] if n.endswith(".0") else n.rstrip("0").rstrip(".") if "." in n else n


def numbers(text: str) -> set[str]:
    """The distinct numbers written in a text, thousands separators dropped, ``5.0`` read as ``5``."""
    return {_number_key(n) for n in NUMBER_RE.findall(_THOUSANDS.sub("", text or ""))}


def _number_spans(text: str, wanted: set, lo: int = 0, hi: Optional[int] = None) -> list[tuple[int, int]]:
    """Spans of the numbers of ``wanted`` written in ``text[lo:hi]``."""
    if not wanted:
        return []
    return [(m.start(), m.end()) for m in NUMBER_RE.finditer(text, lo, len(text) if hi is None else hi)
            if _number_key(m.group()) in wanted and not text[m.end():m.end() + 1].isdigit()]


def _eq_key(text: str) -> str:
    text = _THOUSANDS.sub("", text).replace("\\times", "*").replace("\\cdot", "*")
    return re.sub(r"[\s$]", "", text).replace("×", "*").replace("x", "*").rstrip(".,")


# --- units and the diff against the teacher's CoT ---------------------------------------------------


_BOUNDARY_RE = re.compile(r"\n|(?<=[.!?])[ \t]+")


def units(text: str) -> list[tuple[int, int]]:
    """Character spans of the text's units: its sentences within its lines, stripped, empty ones left out."""
    text = text or ""
    out, start = [], 0
    for m in [*_BOUNDARY_RE.finditer(text), None]:
        end = len(text) if m is None else m.start()
        piece = text[start:end]
        stripped = piece.strip()
        if stripped:
            lead = len(piece) - len(piece.lstrip())
            out.append((start + lead, start + lead + len(stripped)))
        start = end if m is None else m.end()
    return out


def _normed(text: str) -> tuple[list, list]:
    spans = units(text)
    return spans, [_norm(text[s:e]) for s, e in spans]


def _opcodes(a: tuple, b: tuple) -> list:
    """The opcodes turning the units ``a`` (``_normed``) into the units ``b``."""
    return SequenceMatcher(None, a[1], b[1], autojunk=False).get_opcodes()


def _trim(a: str, b: str) -> tuple[int, int]:
    """Characters of ``b`` at its start and end that ``a`` shares (common prefix, suffix), ending on word
    boundaries so that no number is cut."""
    n = min(len(a), len(b))
    p = 0
    while p < n and a[p] == b[p]:
        p += 1
    q = 0
    while q < n - p and a[-1 - q] == b[-1 - q]:
        q += 1
    while 0 < p < len(b) and b[p - 1].isalnum() and b[p].isalnum():
        p -= 1
    while 0 < q < len(b) and b[len(b) - q].isalnum() and b[len(b) - q - 1].isalnum():
        q -= 1
    return p, q


@dataclass
class Diff:
    """What a rewrite adds to or changes in the teacher's CoT."""

    regions: list  # (start, end) character spans of the rewrite's inserted/replaced text, in order (a replaced
    #                run of units trimmed of what it shares with the teacher's units it replaces)
    departs: Optional[tuple]  # (teacher offset, rewrite offset) where the rewrite first departs; None: same units
    added_units: list  # (start, end) of every inserted/replaced unit of the rewrite
    unit_spans: list = field(default_factory=list)  # (start, end) of every unit of the rewrite

    def added_chars(self, text: str) -> int:
        """Non-blank characters of the added regions: how much the rewrite adds to the teacher's CoT."""
        return sum(len("".join(text[s:e].split())) for s, e in self.regions)


def diff_regions(rewrite: str, teacher_cot: str, teacher_units: Optional[tuple] = None) -> Diff:
    """Where ``rewrite`` departs from ``teacher_cot``, unit by unit (``teacher_units``: ``_normed`` of the
    teacher's CoT, when already cut)."""
    ut = teacher_units or _normed(teacher_cot)
    ur = _normed(rewrite)
    regions, added, departs = [], [], None
    for tag, i1, i2, j1, j2 in _opcodes(ut, ur):
        if tag == "equal":
            continue
        t0 = ut[0][i1][0] if i1 < len(ut[0]) else len(teacher_cot)
        if j2 > j1:
            r0, r1 = ur[0][j1][0], ur[0][j2 - 1][1]
            if i2 > i1:
                p, q = _trim(teacher_cot[ut[0][i1][0]:ut[0][i2 - 1][1]], rewrite[r0:r1])
                r0, r1 = r0 + p, max(r0 + p, r1 - q)
            if r1 > r0:
                regions.append((r0, r1))
            added.extend(ur[0][j1:j2])
            departs = departs or (t0, r0)
        else:
            departs = departs or (t0, ur[0][j1][0] if j1 < len(ur[0]) else len(rewrite))
    return Diff(regions, departs, added, ur[0])


# --- what only the wrong attempt has, and what the teacher has there instead --------------------------


@dataclass
class Markers:
    """What only the wrong attempt says: its lines/sentences, equations and numbers absent from the
    teacher's CoT and the question (normalised); ``fixes``: the right values, numbers the teacher's CoT has
    where the wrong attempt differs from it."""

    lines: set
    equations: set
    numbers: set
    fixes: set = field(default_factory=set)


def wrong_markers(wrong_attempt: str, teacher_cot: str, question: str = "") -> Markers:
    wrong_attempt = wrong_attempt or ""
    known = _norm(teacher_cot) + "\n" + _norm(question)
    known_eq = {_eq_key(m.group()) for m in EQUATION_RE.finditer(teacher_cot + "\n" + question)}
    known_eq |= {_eq_key(m) for m in re.findall(r"<<([^>]*)>>", teacher_cot)}  # GSM8K's <<48/2=24>>
    pieces = [ln for ln in wrong_attempt.splitlines()] + [wrong_attempt[s:e] for s, e in units(wrong_attempt)]
    lines = {_norm(p) for p in pieces}
    lines = {ln for ln in lines if len(ln.split()) >= 3 and re.search(r"\d", ln) and ln not in known}
    equations = {_eq_key(m.group()) for m in EQUATION_RE.finditer(wrong_attempt)} - known_eq
    # the wrong attempt aligned with the teacher's CoT: what its changed words say, and the teacher's there
    ut, uw = _normed(teacher_cot), _normed(wrong_attempt)
    said, right = set(), set()
    for tag, i1, i2, j1, j2 in _opcodes(ut, uw):
        if tag == "equal":
            continue
        t_words = _TOKEN_RE.findall(teacher_cot[ut[0][i1][0]:ut[0][i2 - 1][1]] if i2 > i1 else "")
        w_words = _TOKEN_RE.findall(wrong_attempt[uw[0][j1][0]:uw[0][j2 - 1][1]] if j2 > j1 else "")
        for sub, a1, a2, b1, b2 in SequenceMatcher(None, t_words, w_words).get_opcodes():
            if sub != "equal":  # the teacher's number here, where the attempt writes another (and vice versa)
                t_nums, w_nums = numbers(" ".join(t_words[a1:a2])), numbers(" ".join(w_words[b1:b2]))
                right |= t_nums - w_nums
                said |= w_nums - t_nums
    asked = numbers(question)
    nums = (said - right - asked) | (numbers(wrong_attempt) - numbers(teacher_cot) - asked)
    return Markers(lines, equations, nums, right)


@dataclass
class Evidence:
    """Where a rewrite quotes the wrong attempt: the closest (marker, cue) found, and how far from that
    marker the closest right value is."""

    distance: Optional[int]  # characters from a quoted marker to the nearest reflection cue; None: no marker
    #                          quoted, or no cue near enough
    kind: str = ""  # the closest marker's kind: "line" | "equation" | "number"; "": none quoted
    correction: Optional[int] = None  # characters from that marker to the nearest right value; None: none


def _line_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the text's non-blank lines, stripped."""
    return [(m.start(), m.end()) for m in re.finditer(r"[^\s](?:[^\n]*[^\s])?", text)]


def _occurrences(rewrite: str, markers: Markers, lo: int = 0, hi: Optional[int] = None,
                 pieces: Optional[list] = None) -> list:
    """(start, end, kind) of every marker quoted in ``rewrite[lo:hi]`` (``pieces``: the rewrite's line and
    unit spans, when already cut)."""
    hi = len(rewrite) if hi is None else hi
    found = []
    if markers.lines:
        if pieces is None:
            pieces = sorted(set(_line_spans(rewrite)) | set(units(rewrite)))
        found += [(s, e, "line") for s, e in pieces if lo <= s and e <= hi and _norm(rewrite[s:e]) in markers.lines]
    for m in EQUATION_RE.finditer(rewrite, lo, hi):
        if _eq_key(m.group()) in markers.equations:
            found.append((m.start(), m.end(), "equation"))
    found += [(s, e, "number") for s, e in _number_spans(rewrite, markers.numbers, lo, hi)]
    return found


def cues(text: str, lo: int = 0, hi: Optional[int] = None) -> list[tuple[int, int]]:
    """Spans of reflection language in ``text[lo:hi]``, negated cues ("no mistake", "not wrong") left out."""
    hi = len(text) if hi is None else hi
    out = []
    for m in CUE_RE.finditer(text, lo, hi):
        before = " ".join(text[max(lo, m.start() - 40):m.start()].split()[-3:])
        if _NEGATOR_RE.search(before):
            continue
        if m.group().lower() == "not" and _WRONGNESS.match(" ".join(text[m.end():m.end() + 30].split()[:2])):
            continue  # "not wrong": the "not" negates, it does not correct
        out.append((m.start(), m.end()))
    return out


def _gap(a: tuple, b: tuple) -> int:
    return 0 if a[0] < b[1] and b[0] < a[1] else (b[0] - a[1] if b[0] >= a[1] else a[0] - b[1])


_KIND_ORDER = {"line": 0, "equation": 1, "number": 2}


def _quoted(text: str, s: int, e: int, lo: int, hi: int, source: str) -> bool:
    """Whether ``text[s:e]`` sits in a verbatim quote of ``source``: it and the 12 characters before it, or
    it and the 12 after it (within ``text[lo:hi]``, at least 8 besides it), are ``source``'s too."""
    if not source:
        return False
    left, right = text[max(lo, s - 12):e], text[s:min(hi, e + 12)]
    return any(len(side) >= e - s + 8 and side in source for side in (left, right))


def reflection_evidence(rewrite: str, markers: Markers, regions: Optional[list] = None,
                        window: Optional[int] = None, wrong_attempt: str = "",
                        unit_spans: Optional[list] = None) -> Evidence:
    """The closest quoted marker to a (non-negated) reflection cue within the same region (the added
    regions of ``diff_regions``; None: the whole rewrite), and that marker's distance to the nearest right
    value (``markers.fixes``) not inside a quote of ``wrong_attempt``. With ``window``, markers whose cue lies further are not reflections, and
    among those within it the one nearest a right value is taken."""
    rewrite = rewrite or ""
    if unit_spans is None:
        unit_spans = units(rewrite)
    pieces = sorted(set(_line_spans(rewrite)) | set(unit_spans)) if markers.lines else []
    found_any, candidates = "", []  # candidates: (cue distance, right-value distance or None, kind)
    for lo, hi in regions if regions is not None else [(0, len(rewrite))]:
        found = _occurrences(rewrite, markers, lo, hi, pieces)
        found_any = found_any or (found[0][2] if found else "")
        near = cues(rewrite, lo, hi)
        if not found or not near:
            continue
        # the right value may be the teacher's own words the added text leads into ("..., so 48 / 2 = 24"):
        # looked for up to the end of the sentence the region ends in
        end = next((e for s, e in unit_spans if s < hi <= e), hi)
        fixes = [(s, e) for s, e in _number_spans(rewrite, markers.fixes, lo, end)
                 if not _quoted(rewrite, s, e, lo, end, wrong_attempt)]
        for s, e, kind in found:
            d = min(_gap((s, e), c) for c in near)
            if window is None or d <= window:
                candidates.append((d, min((_gap((s, e), f) for f in fixes), default=None), kind))
    if not candidates:
        return Evidence(None, found_any)

    def rank(c):
        d, fix, kind = c
        corrected = fix is not None and (window is None or fix <= window)
        return (not corrected, d, _KIND_ORDER[kind])

    d, fix, kind = min(candidates, key=rank)
    return Evidence(d, kind, fix)


def wrong_step_span(rewrite: str, markers: Markers, window: Optional[int]) -> Optional[tuple]:
    """The quoted wrong step to mask: the longest quoted wrong line within ``window`` characters of a
    cue, else the longest such equation; None when only numbers (or nothing) are quoted."""
    occurrences = _occurrences(rewrite or "", markers)
    near = cues(rewrite or "")
    if not occurrences or not near:
        return None

    def close(s: int, e: int) -> bool:
        return window is None or any(cs - e <= window and s - ce <= window for cs, ce in near)

    for kind in ("line", "equation"):
        spans = [(s, e) for s, e, k in occurrences if k == kind and close(s, e)]
        if spans:
            return max(spans, key=lambda se: (se[1] - se[0], -se[0]))
    return None


# --- the prompt's scaffolding: what an echo repeats --------------------------------------------------


@dataclass(frozen=True)
class Scaffolding:
    """What the reflection prompt itself says around its three texts: its headings (as word tuples) and
    the ``ECHO_NGRAM``-word runs of its instruction sentences."""

    headings: tuple
    ngrams: frozenset


def prompt_scaffolding(template: Optional[str] = None) -> Scaffolding:
    """The headings and instruction word runs of a prompt template (its literal text, placeholders left
    out); the default is ``reflection_prompt.REFLECTION_PROMPT``, so editing the prompt keeps detection right."""
    if template is None:
        from .reflection_prompt import REFLECTION_PROMPT as template
    literal = [text for text, _, _, _ in string.Formatter().parse(template)]
    headings, grams = [], set()
    for part in literal:
        for line in part.splitlines():
            words = _words(line)
            if line.lstrip().startswith("#") and words:
                headings.append(tuple(words))
            elif len(words) >= ECHO_NGRAM:
                grams |= {tuple(words[i:i + ECHO_NGRAM]) for i in range(len(words) - ECHO_NGRAM + 1)}
    return Scaffolding(tuple(headings), frozenset(grams))


def _heading_in(line: str, headings: tuple) -> Optional[tuple]:
    """The prompt heading a line repeats: the line is the heading (markdown and a colon allowed), or, for a
    heading of several words, starts with it followed by a colon."""
    stripped = line.strip().lstrip("#*_> ").strip()
    words = _words(stripped)
    for h in headings:
        if tuple(words) == h:
            return h
        if len(h) > 1 and tuple(words[: len(h)]) == h and re.match(r"[^:]*?" + r"\W+".join(h) + r"\W*:",
                                                                     stripped, re.IGNORECASE):
            return h
    return None


@dataclass
class Reference:
    """What a candidate is judged against, prepared once per (question, teacher CoT, wrong attempt):
    the teacher CoT's units, the wrong attempt's markers, the units the prompt shows, its scaffolding."""

    question: str
    teacher_cot: str
    wrong_attempt: str
    markers: Markers
    teacher_units: tuple
    shown: frozenset
    scaffolding: Scaffolding
    known_numbers: frozenset = frozenset()  # every number the question, the teacher's CoT or the wrong attempt writes


def reference(teacher_cot: str, wrong_attempt: str, question: str = "",
              scaffolding: Optional[Scaffolding] = None) -> Reference:
    """The ``Reference`` of one reflection item (``scaffolding``: ``prompt_scaffolding()`` by default)."""
    teacher_units = _normed(teacher_cot)
    shown = frozenset(teacher_units[1]) | frozenset(_normed(wrong_attempt or "")[1])
    known = frozenset(numbers(question) | numbers(teacher_cot) | numbers(wrong_attempt))
    return Reference(question, teacher_cot, wrong_attempt or "", wrong_markers(wrong_attempt, teacher_cot, question),
                     teacher_units, shown, scaffolding or prompt_scaffolding(), known)


def foreign_share(rewrite: str, diff: Diff, known: frozenset) -> Optional[float]:
    """Share of the distinct numbers of two or more characters in the added regions that neither the question,
    the teacher's CoT nor the wrong attempt writes; None under ``FOREIGN_MIN`` such numbers. Another
    problem's CoT is mostly such numbers; a reflection or a paraphrase of the same solution hardly any."""
    added = {n for lo, hi in diff.regions for n in numbers(rewrite[lo:hi]) if len(n) > 1}
    if len(added) < FOREIGN_MIN:
        return None
    return len(added - known) / len(added)


def echo_of_prompt(rewrite: str, diff: Diff, ref: Reference) -> str:
    """What of the prompt the added text repeats: ``heading: <words>``, ``instruction: <words>``,
    ``pasted: <n> chars`` (added units copied verbatim from the teacher's CoT or the wrong attempt, at least
    ``PASTED_SHARE`` of the wrong attempt's length); "" when none."""
    scaffolding = ref.scaffolding
    for lo, hi in diff.regions:
        lo_line = rewrite.rfind("\n", 0, lo) + 1
        for line in rewrite[lo_line:hi].splitlines():
            h = _heading_in(line, scaffolding.headings)
            if h:
                return "heading: " + " ".join(h)
        words = _words(rewrite[lo:hi])
        for i in range(len(words) - ECHO_NGRAM + 1):
            gram = tuple(words[i:i + ECHO_NGRAM])
            if gram in scaffolding.ngrams:
                return "instruction: " + " ".join(gram)
    pasted = [(s, e) for s, e in diff.added_units
              if len(rewrite[s:e].split()) >= 3 and _norm(rewrite[s:e]) in ref.shown]
    chars = sum(e - s for s, e in pasted)
    if ref.wrong_attempt and len(pasted) >= 3 and chars >= PASTED_SHARE * len(ref.wrong_attempt.strip()):
        return f"pasted: {chars} chars"
    return ""


# --- carrying on to the end, and the overall similarity (a statistic, no longer a check) --------------


def _derived(text: str, question: str) -> set:
    """The numbers a text derives (not in the question); of two or more characters where it has any, since
    single digits occur in any stretch of a long CoT."""
    found = numbers(text) - numbers(question)
    longer = {n for n in found if len(n) > 1}
    return longer or found


def teacher_coverage(rewrite: str, teacher_cot: str, question: str = "", departs: Optional[tuple] = None
                     ) -> Optional[float]:
    """Share of the numbers the teacher's CoT derives (``_derived``) that the rewrite contains; with
    ``departs`` (``Diff.departs``), only those the teacher's CoT has after the point where the rewrite
    departs from it, looked for in the rewrite after that point. None: no such number."""
    t0, r0 = departs if departs is not None else (0, 0)
    derived = _derived(teacher_cot[t0:], question)
    if not derived:
        return None
    return len(derived & numbers(rewrite[r0:])) / len(derived)


def copy_similarity(rewrite: str, teacher_cot: str) -> float:
    """Normalised Indel similarity in [0, 1] of the two texts, lower-cased, whitespace collapsed
    (a statistic kept per candidate; the copy check looks at what was added, ``Diff.added_chars``)."""
    from rapidfuzz import fuzz

    return fuzz.ratio(_norm(rewrite), _norm(teacher_cot)) / 100.0


# --- all checks, for one candidate ------------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    """The checks' settings (``reflection.ReflectionConfig``'s acceptance knobs): ``reflect_window`` None
    switches off "no reflection" and "uncorrected", ``min_coverage`` 0 "low coverage", ``min_added_chars``
    0 "copy", ``reject_echoes`` False "echo"."""

    reflect_window: Optional[int] = 200
    min_coverage: float = 0.8
    min_added_chars: int = 20
    reject_echoes: bool = True


def check_candidate(text: str, verified: bool, ref: Reference, thresholds: Thresholds = Thresholds()) -> dict:
    """Every check's statistic and verdict for one candidate; ``rejected``: the first check it fails
    (``REASONS``), None when it passes them all."""
    t, markers = thresholds, ref.markers
    diff = diff_regions(text, ref.teacher_cot, ref.teacher_units)
    added = diff.added_chars(text)
    echo = echo_of_prompt(text, diff, ref) if t.reject_echoes else ""
    evidence = reflection_evidence(text, markers, diff.regions, t.reflect_window, ref.wrong_attempt, diff.unit_spans)
    coverage = teacher_coverage(text, ref.teacher_cot, ref.question, diff.departs)
    foreign = foreign_share(text, diff, ref.known_numbers) if ref.known_numbers else None
    ok = {
        "unfinished": not isinstance(text, Unfinished),
        "unverified": verified,
        "echo": not echo,
        "other problem": t.min_coverage == 0 or foreign is None or foreign <= MAX_FOREIGN,
        "low coverage": coverage is None or coverage >= t.min_coverage,
        "copy": added >= t.min_added_chars,
        "no reflection": t.reflect_window is None or evidence.distance is not None,
        "uncorrected": t.reflect_window is None or not markers.fixes or (
            evidence.correction is not None and evidence.correction <= t.reflect_window),
    }
    failed = [r for r in REASONS if not ok.get(r, True)]
    return {"finished": not isinstance(text, Unfinished), "reflect_distance": evidence.distance,
            "marker": evidence.kind, "correction_distance": evidence.correction, "echo": echo,
            "added_chars": added, "coverage": None if coverage is None else round(coverage, 4),
            "foreign": None if foreign is None else round(foreign, 4), "rejected": failed[0] if failed else None}


def acceptance_summary(refinements, mask_wrong_step: bool = True) -> dict:
    """Stage 03's counts: candidates, rejections per first failed check, accepted rewrites, how many had
    a wrong step masked, and the chosen rewrites' mean length against their teacher CoTs' (characters)."""
    cands = [c for r in refinements for c in r.meta.get("candidates", [])]
    rejected = {reason: sum(c.get("rejected") == reason for c in cands) for reason in REASONS}
    chosen = [r for r in refinements if r.accepted]
    masked = sum(bool(r.wrong_step_spans) for r in chosen) if mask_wrong_step else 0
    def mean(xs):
        return round(sum(xs) / len(xs), 1) if xs else None
    return {"candidates": len(cands), "rejected": rejected,
            "accepted_candidates": sum(c.get("rejected") is None and "rejected" in c for c in cands),
            "chosen": len(chosen), "masked": masked, "mask_wrong_step": bool(mask_wrong_step),
            "chosen_chars": mean([len(r.refined_cot) for r in chosen]),
            "teacher_chars": mean([len(r.teacher_cot) for r in chosen])}


def acceptance_line(s: dict) -> str:
    """The stage's one line on acceptance and masking."""
    rejected = ", ".join(f"{k} {v}" for k, v in s["rejected"].items())
    mask = (f"wrong step masked in {s['masked']} of {s['chosen']} chosen rewrites" if s["mask_wrong_step"]
            else "mask_wrong_step off: nothing masked")
    length = (f"; chosen rewrites {s['chosen_chars']} chars on average vs {s['teacher_chars']} for their teacher CoTs"
              if s["chosen"] else "")
    return (f"{s['candidates']} candidates, {s['accepted_candidates']} passed every check; rejected by first "
            f"failed check: {rejected}; {mask}{length}")
