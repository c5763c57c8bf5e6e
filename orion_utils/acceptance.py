"""Stage 03's acceptance checks: is a candidate rewrite a reflection, not a copy of the teacher's CoT?

The reflection prompt shows the teacher's CoT, which ends in ``\\boxed{gold}``, so a candidate whose
answer verifies may be a copy. ``refine`` accepts a candidate only when it passes, in this order:

1. ``verified``: its final answer verifies against the gold answer (``grading.grade``).
2. ``reflects`` (``reflection_evidence``): it quotes the wrong attempt. A *marker* is a line, an
   equation or a number of the student's wrong attempt that neither the teacher's CoT nor the question
   contains (so only the wrong attempt can have put it there); the rewrite reflects when a marker
   occurs in it within ``reflect_window`` characters of reflection language (``CUE_RE``: wait, check,
   mistake, wrong, not, instead, ...). The statistic is that distance (None: no marker in the rewrite).
3. ``coverage`` (``teacher_coverage``): it keeps the teacher's reasoning. The share of the teacher
   CoT's distinct numbers, those not already in the question (the values the teacher derived), that the
   rewrite contains.
4. ``copy`` (``copy_similarity``): it is more than a copy. The normalised Indel similarity of the
   rewrite and the teacher's CoT (rapidfuzz ``fuzz.ratio`` / 100 on lower-cased, whitespace-collapsed
   text; 1.0 = identical); at or above ``max_copy_similarity`` the candidate is a near-verbatim copy.

The quoted marker the "reflects" check finds is also where the wrong step sits in the rewrite: the
longest quoted wrong line (else the quoted wrong equation) is the span ``mask_wrong_step`` takes out of
the loss (``Evidence.span``), for reflectors that do not record their own spans.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

# Checks in the order they are applied; a rejected candidate is counted under the first it fails.
REASONS = ("unverified", "no reflection", "low coverage", "copy")

CUE_RE = re.compile(
    r"\b(wait|check|careful|mistake|mistaken|wrong|incorrect|error|oops|instead|actually|should|not|"
    r"tempted|earlier|previous(?:ly)?|realis\w*|realiz\w*|re-?check\w*|re-?examin\w*|correct(?:ion|ed))\b",
    re.IGNORECASE,
)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")
EQUATION_RE = re.compile(r"[\d(][\d\s.,+\-*/×÷()^x]*[+\-*/×÷^x][\d\s.,+\-*/×÷()^x]*=\s*-?\$?\d+(?:[.,]\d+)*")


def _norm(text: str) -> str:
    return " ".join((text or "").lower().split())


def numbers(text: str) -> set[str]:
    """The distinct numbers written in a text, thousands separators dropped, ``5.0`` read as ``5``."""
    out = set()
    for n in NUMBER_RE.findall(_THOUSANDS.sub("", text or "")):
        out.add(n[:-2] if n.endswith(".0") else n.rstrip("0").rstrip(".") if "." in n else n)
    return out


def _eq_key(text: str) -> str:
    return re.sub(r"[\s$]", "", _THOUSANDS.sub("", text)).replace("×", "*").replace("x", "*").rstrip(".,")


@dataclass
class Markers:
    """What only the wrong attempt says: its lines, equations and numbers absent from the teacher's CoT
    and the question (normalised)."""

    lines: set
    equations: set
    numbers: set


def wrong_markers(wrong_attempt: str, teacher_cot: str, question: str = "") -> Markers:
    known = _norm(teacher_cot) + "\n" + _norm(question)
    known_eq = {_eq_key(m.group()) for m in EQUATION_RE.finditer(teacher_cot + "\n" + question)}
    known_eq |= {_eq_key(m) for m in re.findall(r"<<([^>]*)>>", teacher_cot)}  # GSM8K's <<48/2=24>>
    lines = {_norm(line) for line in (wrong_attempt or "").splitlines()}
    lines = {ln for ln in lines if len(ln.split()) >= 3 and re.search(r"\d", ln) and ln not in known}
    equations = {_eq_key(m.group()) for m in EQUATION_RE.finditer(wrong_attempt or "")} - known_eq
    nums = numbers(wrong_attempt) - numbers(teacher_cot) - numbers(question)
    return Markers(lines, equations, nums)


@dataclass
class Evidence:
    """Where a rewrite quotes the wrong attempt: the closest (marker, cue) found."""

    distance: Optional[int]  # characters from a quoted marker to the nearest reflection cue; None: no marker
    #                          quoted, or no cue anywhere in the rewrite
    kind: str = ""  # the closest marker's kind: "line" | "equation" | "number"; "": none quoted


def _occurrences(rewrite: str, markers: Markers) -> list:
    """(start, end, kind) of every marker quoted in the rewrite."""
    found = []
    pos = 0
    for line in rewrite.splitlines(keepends=True):
        stripped = line.rstrip("\n")
        if markers.lines and _norm(stripped) in markers.lines:
            lead = len(stripped) - len(stripped.lstrip())
            found.append((pos + lead, pos + len(stripped.rstrip()), "line"))
        pos += len(line)
    for m in EQUATION_RE.finditer(rewrite):
        if _eq_key(m.group()) in markers.equations:
            found.append((m.start(), m.end(), "equation"))
    for m in NUMBER_RE.finditer(rewrite):
        if numbers(m.group()) & markers.numbers and not rewrite[m.end():m.end() + 1].isdigit():
            found.append((m.start(), m.end(), "number"))
    return found


def reflection_evidence(rewrite: str, markers: Markers) -> Evidence:
    """The distance from a quoted marker to the nearest reflection cue (the smallest over the markers)."""
    occurrences = _occurrences(rewrite or "", markers)
    if not occurrences:
        return Evidence(None)
    cues = [(m.start(), m.end()) for m in CUE_RE.finditer(rewrite)]
    if not cues:
        return Evidence(None, occurrences[0][2])

    def distance(occ) -> int:
        s, e, _ = occ
        return min(0 if cs < e and s < ce else (cs - e if cs >= e else s - ce) for cs, ce in cues)

    scored = [(distance(o), o) for o in occurrences]
    best = min(d for d, _ in scored)
    kind = min((o for d, o in scored if d == best), key=lambda o: _KIND_ORDER[o[2]])[2]
    return Evidence(best, kind)


_KIND_ORDER = {"line": 0, "equation": 1, "number": 2}


def wrong_step_span(rewrite: str, markers: Markers, window: Optional[int]) -> Optional[tuple]:
    """The quoted wrong step to mask: the longest quoted wrong line within ``window`` characters of a
    cue, else the longest such equation; None when only numbers (or nothing) are quoted."""
    occurrences = _occurrences(rewrite or "", markers)
    cues = [(m.start(), m.end()) for m in CUE_RE.finditer(rewrite or "")]
    if not occurrences or not cues:
        return None

    def near(s: int, e: int) -> bool:
        return window is None or any(cs - e <= window and s - ce <= window for cs, ce in cues)

    for kind in ("line", "equation"):
        spans = [(s, e) for s, e, k in occurrences if k == kind and near(s, e)]
        if spans:
            return max(spans, key=lambda se: (se[1] - se[0], -se[0]))
    return None


def teacher_coverage(rewrite: str, teacher_cot: str, question: str = "") -> Optional[float]:
    """Share of the teacher CoT's distinct numbers not in the question that the rewrite contains;
    None when the teacher's CoT derives no number."""
    derived = numbers(teacher_cot) - numbers(question)
    if not derived:
        return None
    return len(derived & numbers(rewrite)) / len(derived)


def copy_similarity(rewrite: str, teacher_cot: str) -> float:
    """Normalised Indel similarity in [0, 1] of the two texts, lower-cased, whitespace collapsed."""
    from rapidfuzz import fuzz

    return fuzz.ratio(_norm(rewrite), _norm(teacher_cot)) / 100.0


def check_candidate(text: str, verified: bool, teacher_cot: str, question: str, markers: Markers,
                    reflect_window: Optional[int], min_coverage: float,
                    max_copy_similarity: Optional[float]) -> dict:
    """Every check's statistic and verdict for one candidate; ``rejected``: the first check it fails
    (``REASONS``), None when accepted. ``reflect_window`` None / ``min_coverage`` 0 /
    ``max_copy_similarity`` None switch that check off."""
    evidence = reflection_evidence(text, markers)
    coverage = teacher_coverage(text, teacher_cot, question)
    similarity = copy_similarity(text, teacher_cot)
    reflects = reflect_window is None or (evidence.distance is not None and evidence.distance <= reflect_window)
    covers = coverage is None or coverage >= min_coverage
    original = max_copy_similarity is None or similarity < max_copy_similarity
    failed = [r for r, ok in zip(REASONS, (verified, reflects, covers, original)) if not ok]
    return {"reflect_distance": evidence.distance, "marker": evidence.kind,
            "coverage": None if coverage is None else round(coverage, 4), "similarity": round(similarity, 4),
            "rejected": failed[0] if failed else None}


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
