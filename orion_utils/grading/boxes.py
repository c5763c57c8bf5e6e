"""Reading ``\\boxed{...}`` / ``\\fbox{...}`` answers: the last box of a text, as the grader sees it.

Nested braces, ``\\boxed 5``, an empty ``\\boxed{}`` skipped, an unclosed box read to the end (or
skipped, for callers that want closed boxes only); boxes right next to each other or separated
only by a comma / "and" / "or" are read together as a list, ``\\boxed{1/2} = \\boxed{0.5}`` is
not a list. A box argument is scanned for at most :data:`MAX_BOX_SCAN` characters.
"""
from __future__ import annotations

import re

MAX_BOX_SCAN = 4000  # how far a \boxed{ argument is scanned for its closing brace

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


def _find_last_box(text: str, closed_only: bool) -> tuple[int, str | None, bool]:
    """(start, content, closed) of the last box with something in it; start is -1 when none.

    An empty ``\\boxed{}`` (e.g. an echoed instruction) and things like ``\\boxedsymbol`` that
    are no box are skipped (at most 20 of them), and so is an unclosed box with ``closed_only``."""
    start = _last_box_start(text, len(text))
    for _ in range(20):
        if start < 0:
            break
        content, _end, closed = _read_box(text, start)
        if not closed and not closed_only:
            return start, content, closed
        if closed and content is not None and content.strip():
            return start, content, closed
        start = _last_box_start(text, start)
    return -1, None, True


def _cut_off_content(content: str | None) -> str | None:
    """What a box cut off before its closing brace holds, without trailing ``$ . \\] \\)``."""
    content = (content or "").rstrip(" \t\n$.")
    for end in ("\\]", "\\)"):
        if content.endswith(end):
            content = content[: -len(end)].rstrip(" \t\n$.")
    return content.strip() or None


def _with_list_neighbours(text: str, start: int, content: str) -> str:
    """The box at ``start`` joined with the boxes right before it that are separated only by a
    comma / "and" / "or" (a list answer, ``\\boxed{2} and \\boxed{3}`` -> "2, 3")."""
    parts = [content]
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


def last_boxed(text: str, *, closed_only: bool = False) -> str | None:
    """The content of the last non-empty box of ``text`` (adjacent boxes joined as a list), or
    None when there is none. An unclosed last box (a response cut off inside it) gives what it
    holds up to the end; with ``closed_only`` it is skipped for the closed box before it."""
    start, content, closed = _find_last_box(text, closed_only)
    if start < 0:
        return None
    if not closed:
        return _cut_off_content(content)
    if content is None:
        return None
    return _with_list_neighbours(text, start, content)
