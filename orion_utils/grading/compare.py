"""The fast path: decide a (prediction, gold) pair in process, or say it cannot.

Both sides are put in canonical form (:mod:`.canonical`) and compared as strings; then closed
arithmetic is compared by value (:mod:`.evaluator`): tuples / intervals element-wise, sets and
bare lists as sets of values, and expressions in lowercase variables at two fixed sample points
(agreeing there means the same rational function, differing means not equal, as sympy would
find). Float golds (GSM-Hard, AMC23) get a relative tolerance, and a prediction rounded to 2+
decimals matches such a long gold rounded the same way; other decimals match a fraction when
equal after rounding to 6 places, as in math-verify. :func:`fast_compare` answers True / False
when sure and None to leave the pair to math-verify.
"""
from __future__ import annotations

import math
import re
from fractions import Fraction

from .canonical import VAR_LHS_RE, Canon, canon, is_word
from .evaluator import divide, evaluate, is_huge_power, to_complex

DEFAULT_REL_TOL = 1e-4  # float golds (GSM-Hard, AMC23): Python floats, "27.0", "2.6666666666666665"


def _round6(v) -> complex:
    c = to_complex(v)
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
    cp, cg = to_complex(pv), to_complex(gv)
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
    pv = [evaluate(x) for x in pitems]
    gv = [evaluate(x) for x in gitems]
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


def _compare_symbolic(pc: Canon, gc: Canon) -> bool | None:
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
        gv = evaluate(gc.text, env)
        pv = evaluate(pc.text, env)
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


def _canon_pair(pred: str, gold: str) -> tuple[Canon, Canon]:
    """Canonical forms of (pred, gold). A single variable on the left (``x = 5``) is dropped when
    the other side is no equation, or when both are equations in that same variable."""
    gc0 = canon(gold, strip_lhs=False)
    pc0 = canon(pred, strip_lhs=False)
    gc = canon(gold, strip_lhs=True) if not pc0.has_eq else gc0
    pc = canon(pred, strip_lhs=True) if not gc0.has_eq else pc0
    if gc0.has_eq and pc0.has_eq:  # "x=5" vs "x=6": the same single variable on the left
        gm, pm = VAR_LHS_RE.match(gc0.text), VAR_LHS_RE.match(pc0.text)
        if gm and pm and gm.group(0) == pm.group(0):
            gc = canon(gold, strip_lhs=True)
            pc = canon(pred, strip_lhs=True)
    return pc, gc


def _compare_bases(pc: Canon, gc: Canon) -> bool | None:
    """Numerals in a base: the same digits, and the same base where both say; None if not numerals."""
    gd, gb = gc.base or (gc.text.upper(), None)
    pd, pb = pc.base or (pc.text.upper(), None)
    if re.fullmatch(r"[0-9A-Z]+", gd) and re.fullmatch(r"[0-9A-Z]+", pd):
        return gd == pd and (gb is None or pb is None or gb == pb)
    return None


def _compare_values(pc: Canon, gc: Canon, pv: tuple, gv: tuple, float_gold: bool,
                    rel_tol: float | None) -> bool | None:
    """Two evaluated answers; a percent on one side may also mean a hundredth ("25%" vs 0.25)."""
    g = (*gv, gc.text)
    p = (*pv, pc.text)
    verdict = _num_verdict(p, g, float_gold=float_gold, rel_tol=rel_tol)
    if verdict:
        return True
    if pc.pct and not gc.pct:
        alt = (divide(pv[0], Fraction(100)), pv[1], pv[2], pc.text)
        if _num_verdict(alt, g, float_gold=float_gold, rel_tol=rel_tol):
            return True
    if gc.pct and not pc.pct:
        alt = (divide(gv[0], Fraction(100)), gv[1], gv[2], gc.text)
        if _num_verdict(p, alt, float_gold=float_gold, rel_tol=rel_tol):
            return True
    return verdict  # False or None


def fast_compare(pred: str, gold: str, float_gold: bool, rel_tol: float | None) -> bool | None:
    """Canonical-string and numeric comparison. True / False when sure, None to ask math-verify."""
    pc, gc = _canon_pair(pred, gold)
    if gc.base or pc.base:
        verdict = _compare_bases(pc, gc)
        if verdict is not None:
            return verdict
    if pc.text and pc.text == gc.text:  # also "25%" vs "25": the same number, one with a sign
        return True
    if is_word(pc.text) and is_word(gc.text) and pc.text.lower() == gc.text.lower():
        return True
    gv = evaluate(gc.text)
    pv = evaluate(pc.text) if gv is not None else None
    if gv is not None and pv is None and is_huge_power(pc.text):
        return False if abs(to_complex(gv[0])) < 2.0 ** 1000 else None  # a tower vs an ordinary number
    if gv is None or pv is None:
        if gv is None and pv is None:
            gl, pl = _split_list(gc.text), _split_list(pc.text)
            if gl and pl:
                return _compare_lists(pl, gl, float_gold, rel_tol)
        return _compare_symbolic(pc, gc)
    return _compare_values(pc, gc, pv, gv, float_gold, rel_tol)
