"""A safe evaluator for closed arithmetic: a small recursive-descent reader of LaTeX arithmetic.

Never ``eval``/``sympify``. Integers, decimals, fractions, ``\\sqrt``, ``\\pi``, ``i`` and powers
give an exact :class:`~fractions.Fraction` where possible, else a complex number; lowercase
variables are allowed when given sample values (``env``), with + - * / and integer powers only,
so that two forms agreeing at sample points are the same rational function. Inputs are capped at
:data:`MAX_EVAL_CHARS` characters, depth 40 and 4096-bit integers; anything else is "not numeric".
"""
from __future__ import annotations

import cmath
import math
import re
from fractions import Fraction

MAX_EVAL_CHARS = 300  # the evaluator's input cap


class _NotNumeric(Exception):
    pass


_TOKEN_RE = re.compile(
    r"\s*(?:((?:\d+\.\d*|\.\d+)(?:[eE][-+]?\d{1,3})?|\d+[eE][-+]\d{1,3}|\d+)"  # number
    r"|(\\[a-zA-Z]+)|([-+*/^(){}\[\]])|([a-zA-Z]))"  # command, operator, letter
)
_MAX_BITS = 4096


class _Evaluator:
    """Values are Fraction (exact) or complex (inexact). Raises _NotNumeric on anything else.

    ``env`` maps lowercase variable letters to sample values (polynomial identity testing): with
    variables only rational operations and integer powers are allowed, so two forms that agree at
    sample points are the same rational function and two that differ are not equal."""

    def __init__(self, s: str, env: dict[str, complex] | None = None):
        self.env = env or {}
        self.toks: list[tuple[str, str]] = []
        pos = 0
        s = s.strip()
        while pos < len(s):
            m = _TOKEN_RE.match(s, pos)
            if not m or m.end() == pos:
                raise _NotNumeric(s[pos:pos + 10])
            pos = m.end()
            num, cmd, op, letter = m.groups()
            if num is not None:
                self.toks.append(("num", num))
            elif cmd is not None:
                self.toks.append(("cmd", cmd))
            elif op is not None:
                self.toks.append(("op", op))
            else:
                self.toks.append(("let", letter))
            if len(self.toks) > 200:
                raise _NotNumeric("too long")
        self.i = 0
        self.depth = 0
        self.inexact_literal = False  # a decimal number appears

    # -- helpers
    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        t = self.peek()
        if t is None:
            raise _NotNumeric("eof")
        self.i += 1
        return t

    def expect(self, op: str) -> None:
        t = self.take()
        if t != ("op", op):
            raise _NotNumeric(f"expected {op}")

    def run(self):
        v = self.expr()
        if self.i != len(self.toks):
            raise _NotNumeric("trailing")
        return v

    # -- grammar
    def expr(self):
        self.depth += 1
        if self.depth > 40:
            raise _NotNumeric("deep")
        v = self.term()
        while True:
            t = self.peek()
            if t in (("op", "+"), ("op", "-")):
                self.take()
                w = self.term()
                v = _add(v, w) if t[1] == "+" else _add(v, _neg(w))
            else:
                break
        self.depth -= 1
        return v

    def _starts_atom(self, t) -> bool:
        if t is None:
            return False
        kind, val = t
        if kind == "op":  # no implicit product with a following number: "2 3" is not 6
            return val == "("
        if kind == "cmd":
            return val in ("\\frac", "\\sqrt", "\\pi")
        return kind == "let" and (val == "i" or val in self.env)

    def _has_var(self, i0: int, i1: int) -> bool:
        return bool(self.env) and any(k == "let" and v in self.env for k, v in self.toks[i0:i1])

    def term(self):
        v = self.unary()
        while True:
            t = self.peek()
            if t in (("op", "*"), ("cmd", "\\cdot"), ("cmd", "\\times")):
                self.take()
                v = _mul(v, self.unary())
            elif t in (("op", "/"), ("cmd", "\\div")):
                self.take()
                v = divide(v, self.unary())
            elif self._starts_atom(t):
                v = _mul(v, self.power())
            else:
                return v

    def unary(self):
        t = self.peek()
        if t == ("op", "-"):
            self.take()
            return _neg(self.unary())
        if t == ("op", "+"):
            self.take()
            return self.unary()
        return self.power()

    def power(self):
        i0 = self.i
        base = self.atom()
        i1 = self.i
        if self.peek() == ("op", "^"):
            self.take()
            t = self.peek()
            if t == ("op", "{"):
                self.take()
                e = self.expr()
                self.expect("}")
            elif t is not None and t[0] == "num":
                if len(t[1]) != 1:  # 2^10 is 2^1 0 in LaTeX: leave it to latex2sympy
                    raise _NotNumeric("unbraced exponent")
                self.take()
                e = Fraction(int(t[1]))
            elif t == ("op", "-"):
                raise _NotNumeric("bare negative exponent")
            else:
                e = self.atom()
            if self.peek() == ("op", "^"):
                raise _NotNumeric("double superscript")
            if self._has_var(i0, i1) and not (isinstance(e, Fraction) and e.denominator == 1):
                raise _NotNumeric("non-integer power of a variable")
            if self._has_var(i1, self.i):
                raise _NotNumeric("variable exponent")
            return _pow(base, e)
        return base

    def group(self):
        t = self.take()
        if t == ("op", "{"):
            v = self.expr()
            self.expect("}")
            return v
        if t[0] == "num" and len(t[1]) == 1:
            return Fraction(int(t[1]))
        raise _NotNumeric("group")

    def atom(self):
        t = self.take()
        kind, val = t
        if kind == "num":
            if "." in val or "e" in val or "E" in val:
                self.inexact_literal = True
            if len(val) > 400:
                raise _NotNumeric("long number")
            return Fraction(val)
        if t in (("op", "("), ("op", "{")):
            self.depth += 1
            v = self.expr()
            self.expect(")" if val == "(" else "}")
            self.depth -= 1
            return v
        if t == ("cmd", "\\frac"):
            a = self.group()
            b = self.group()
            return divide(a, b)
        if t == ("cmd", "\\sqrt"):
            n = 2
            if self.peek() == ("op", "["):
                self.take()
                k = self.expr()
                self.expect("]")
                if not isinstance(k, Fraction) or k.denominator != 1 or not 2 <= k <= 10:
                    raise _NotNumeric("root index")
                n = int(k)
            i0 = self.i
            arg = self.group()
            if self._has_var(i0, self.i):
                raise _NotNumeric("root of a variable")
            return _root(arg, n)
        if t == ("cmd", "\\pi"):
            return complex(math.pi)
        if t == ("let", "i"):
            return complex(0, 1)
        if kind == "let" and val in self.env:
            return self.env[val]
        raise _NotNumeric(f"atom {val}")


def to_complex(v) -> complex:
    """A Fraction or complex value as a complex number."""
    return complex(v) if isinstance(v, complex) else complex(float(v))


def _add(a, b):
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        return a + b
    return to_complex(a) + to_complex(b)


def _neg(a):
    return -a


def _mul(a, b):
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        r = a * b
        if r.numerator.bit_length() > _MAX_BITS or r.denominator.bit_length() > _MAX_BITS:
            raise _NotNumeric("too big")
        return r
    return to_complex(a) * to_complex(b)


def divide(a, b):
    """a / b, exact for two Fractions; division by zero is "not numeric"."""
    if isinstance(b, Fraction):
        if b == 0:
            raise _NotNumeric("division by zero")
        if isinstance(a, Fraction):
            return a / b
    cb = to_complex(b)
    if cb == 0:
        raise _NotNumeric("division by zero")
    return to_complex(a) / cb


def _exact_root(x: Fraction, n: int) -> Fraction | None:
    if x < 0:
        return None
    out = []
    for part in (x.numerator, x.denominator):
        if part.bit_length() > 1024:
            return None
        r = round(part ** (1.0 / n)) if part.bit_length() < 1000 else None
        if r is None:
            return None
        for cand in (r - 1, r, r + 1):
            if cand >= 0 and cand ** n == part:
                out.append(cand)
                break
        else:
            return None
    return Fraction(out[0], out[1])


def _root(x, n: int):
    if isinstance(x, Fraction):
        r = _exact_root(x, n)
        if r is not None:
            return r
        if x < 0:
            if n == 2:
                return complex(0, math.sqrt(float(-x)))
            raise _NotNumeric("odd root of negative")  # principal vs real root: leave to sympy
        return complex(float(x) ** (1.0 / n))
    cx = to_complex(x)
    if n == 2:
        return cmath.sqrt(cx)
    raise _NotNumeric("root of inexact")


def _pow(a, e):
    if isinstance(e, Fraction) and e.denominator == 1 and isinstance(a, Fraction):
        k = int(e)
        if abs(k) > 4096:
            raise _NotNumeric("huge exponent")
        if a == 0 and k < 0:
            raise _NotNumeric("0^-k")
        bits = max(a.numerator.bit_length(), a.denominator.bit_length()) * abs(k)
        if bits > _MAX_BITS:
            raise _NotNumeric("too big")
        return a ** k
    if isinstance(e, Fraction) and e.denominator == 2 and isinstance(a, Fraction) and a >= 0:
        r = _root(a, 2)
        return _pow(r, Fraction(e.numerator)) if isinstance(r, Fraction) else to_complex(r) ** e.numerator
    ce = to_complex(e)
    if abs(ce) > 1000:
        raise _NotNumeric("huge exponent")
    ca = to_complex(a)
    if ca == 0:
        raise _NotNumeric("0^x")
    try:
        return ca ** ce
    except (OverflowError, ZeroDivisionError) as exc:
        raise _NotNumeric(str(exc))


def evaluate(s: str, env: dict[str, complex] | None = None):
    """(value, has_decimal_literal, is_plain_number) or None when not a closed arithmetic form."""
    if not s or len(s) > MAX_EVAL_CHARS:
        return None
    if s in ("\\infty", "+\\infty", "-\\infty"):
        return complex(-math.inf if s[0] == "-" else math.inf), False, False
    mixed = re.fullmatch(r"(-?)(\d+)\\frac\{(\d+)\}\{(\d+)\}", s)
    if mixed:  # mixed number 2\frac{1}{2} = 5/2 (when the fraction is proper)
        sign, w, a, b = mixed.groups()
        if int(b) != 0 and int(a) < int(b):
            v = Fraction(int(w)) + Fraction(int(a), int(b))
            return (-v if sign else v), False, False
    try:
        ev = _Evaluator(s, env)
        v = ev.run()
    except (_NotNumeric, ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None
    if isinstance(v, complex):
        if not (math.isfinite(v.real) and math.isfinite(v.imag)):
            return None
        if abs(v.imag) < 1e-14 * max(1.0, abs(v.real)):
            v = complex(v.real, 0.0)
    plain = bool(re.fullmatch(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", s))
    return v, ev.inexact_literal, plain


def is_huge_power(s: str, depth: int = 0) -> bool:
    """'10^{10^{10^{10}}}': an integer power far beyond 2^4096 (decided without computing it)."""
    m = re.fullmatch(r"(\d+)\^\{(.+)\}", s)
    if not m or depth > 6 or int(m.group(1)[:6]) < 2:
        return False
    e = evaluate(m.group(2))
    if e is not None:
        v = e[0]
        return isinstance(v, Fraction) and v > 4096
    return is_huge_power(m.group(2), depth + 1)

