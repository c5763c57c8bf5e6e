"""Benchmark: graded pairs per second of ``orion_utils.grading`` on MATH500-style pairs.

Pairs are built from MATH500 (the shared local copy, ``--data`` to point elsewhere; a small
built-in set of MATH-style answers when absent): for every problem its worked ``solution`` as
the response (ending in the gold's ``\\boxed{}``) graded against the gold ``answer``; the same
response with the final box reformatted (``\\dfrac``, spaces, ``x = ...``, ``\\left(``), still
correct; and with the final box perturbed (one digit changed or ``+1`` appended), wrong. Each
verdict is checked against its expected label. Timed warm (the worker subprocesses' one-off
start-up is reported separately), with ``grade_many(workers=1)`` and ``workers=2``; for reference,
plain math-verify (parse + verify in the main thread, its timeouts off) on a subset.

    python bench/bench_grading.py [--data PATH] [--limit N] [--strict]

Target: >= 300 graded pairs/s on 2 cores (``--strict`` exits 1 below it).
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orion_utils import grading
from orion_utils.grading import grade_many

TARGET = 300.0
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "benchmarks" / "math500.jsonl"

# used only when the MATH500 copy is absent: answers in the shapes MATH500 has
_BUILTIN_ANSWERS = [
    "12", "-3", "\\frac{3}{4}", "2\\sqrt{5}", "\\frac{\\sqrt{3}}{3}", "6+9i", "(2,12) \\cup (12,102)",
    "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", "x^5 - x^4 + x^3 - x^2 + x - 1", "76^\\circ",
    "(15,-29)", "-2,1", "2516_8", "\\text{Evelyn}", "4.5", "12\\pi", "\\left( 3, \\frac{\\pi}{2} \\right)",
    "y = 2x + 3", "[2,5)", "27648", "\\dfrac{33}{100}", "15\\mbox{ cm}^2", "\\$18.90", "10\\%",
]


def load_records(path: Path, limit: int) -> list[dict]:
    if path.is_file():
        with path.open(encoding="utf-8") as f:
            recs = [json.loads(line) for line in f if line.strip()]
    else:
        print(f"  ({path} not found: using {len(_BUILTIN_ANSWERS)} built-in MATH-style answers)")
        recs = [
            {"answer": a, "solution": f"Working step by step, we find the value. So it is $\\boxed{{{a}}}$."}
            for a in _BUILTIN_ANSWERS * 20
        ]
    return recs[:limit] if limit else recs


def last_box_span(s: str) -> tuple[int, int]:
    """(start, end) of the content of the last \\boxed{...} in s."""
    i = s.rfind("\\boxed{")
    depth, j = 0, i + len("\\boxed")
    while j < len(s):
        if s[j] == "{":
            depth += 1
        elif s[j] == "}":
            depth -= 1
            if depth == 0:
                return i + len("\\boxed{"), j
        j += 1
    raise ValueError("unclosed box")


def reformat(a: str) -> str:
    """A correct answer written differently."""
    b = a.replace("\\frac", "\\dfrac") if "\\frac" in a and "\\dfrac" not in a else a
    b = re.sub(r",(?=\S)(?!\d{3}(?!\d))", ", ", b)  # not inside a thousands separator
    if b.startswith("(") and b.endswith(")") and "\\cup" not in b:
        b = "\\left" + b[:-1] + "\\right)"
    if b == a:
        b = "x = " + a if "=" not in a and "," not in a and "\\text" not in a else " " + a + " "
    return b


def perturb(a: str) -> str:
    """A wrong answer close to the right one: its first digit changed, or '+1' appended."""
    m = re.search(r"\d", a)
    if m:
        i = m.start()
        return a[:i] + str((int(a[i]) + 1) % 10) + a[i + 1:]
    return a + "+1"


def build_pairs(recs: list[dict]) -> list[tuple[str, str, bool]]:
    pairs: list[tuple[str, str, bool]] = []
    for r in recs:
        sol, gold = r["solution"], r["answer"]
        try:
            s, e = last_box_span(sol)
        except ValueError:
            continue
        box = sol[s:e]
        pairs.append((sol, gold, True))
        pairs.append((sol[:s] + reformat(box) + sol[e:], gold, True))
        wrong = perturb(box)
        if wrong != box:
            pairs.append((sol[:s] + wrong + sol[e:], gold, False))
    return pairs


def time_ours(pairs, workers: int) -> tuple[float, list]:
    t0 = time.perf_counter()
    res = grade_many([(p, g) for p, g, _ in pairs], workers=workers)
    return time.perf_counter() - t0, res


def time_math_verify(pairs, n: int) -> float:
    """Plain math-verify, as it is usually called, for reference (pairs/s)."""
    import math_verify.grader as mg
    import math_verify.parser as mp
    from math_verify import parse, verify

    mp.TIMEOUT_WARNING_SHOWN = mg.TIMEOUT_WARNING_SHOWN = True
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    sub = pairs[:n]
    t0 = time.perf_counter()
    for p, g, _ in sub:
        gold = parse("$" + g + "$", parsing_timeout=None)
        verify(gold, parse(p, parsing_timeout=None), timeout_seconds=None)
    return len(sub) / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N problems")
    ap.add_argument("--mv-pairs", type=int, default=150, help="pairs timed with plain math-verify")
    ap.add_argument("--strict", action="store_true", help=f"exit 1 below {TARGET:.0f} pairs/s")
    args = ap.parse_args()

    recs = load_records(args.data, args.limit)
    pairs = build_pairs(recs)
    n_pos = sum(1 for *_, y in pairs if y)
    print(f"grading throughput on {len(pairs)} MATH500-style pairs "
          f"({n_pos} correct incl. reformatted, {len(pairs) - n_pos} perturbed wrong)")

    t0 = time.perf_counter()
    grading.warm_up(2)
    print(f"  worker start-up (once per process, not in the timings): {time.perf_counter() - t0:.2f} s")

    best = 0.0
    for workers in (1, 2):
        if workers > 1:  # fresh workers: nothing cached from the previous run
            grading.shutdown()
            grading.warm_up(workers)
        dt, res = time_ours(pairs, workers)
        rate = len(pairs) / dt
        best = max(best, rate)
        agree = sum(1 for r, (_, _, y) in zip(res, pairs) if r.correct == y)
        reasons = {k: sum(1 for r in res if r.reason == k) for k in grading.REASONS}
        print(f"  workers={workers}: {dt:.2f} s -> {rate:,.0f} pairs/s "
              f"(target >= {TARGET:.0f}/s: {rate / TARGET:.2f}x); "
              f"verdicts as labelled: {agree}/{len(pairs)}; reasons {reasons}")
        if workers == 1:
            mism = [(g, r.predicted, y) for r, (_, g, y) in zip(res, pairs) if r.correct != y]
            for g, p, y in mism[:5]:
                print(f"    mismatch: gold {g!r} predicted {p!r} labelled {'correct' if y else 'wrong'}")
    if args.mv_pairs:
        sub = pairs[: args.mv_pairs]
        mv_rate = time_math_verify(sub, len(sub))
        print(f"  plain math-verify (main thread, {len(sub)} pairs): {mv_rate:,.0f} pairs/s "
              f"-> grading.grade is {best / mv_rate:.1f}x")
    print(f"RESULT pairs_per_s={best:.0f} target={TARGET:.0f} ratio={best / TARGET:.2f}")
    grading.shutdown()
    return 1 if args.strict and best < TARGET else 0


if __name__ == "__main__":
    sys.exit(main())
