"""EDIT key-token alignment speed: rapidfuzz (C) vs a plain Python Levenshtein table.

Long CoTs are thousands of tokens, and EDIT aligns every dual pair in the student's tokenizer.
This prints the time of ``key_token_weights`` on two 4,000-token sequences (similar: ~10% of the
tokens edited after a shared 300-token opening; different: nothing in common), the target being
under 0.5 s, and the speed-up over an O(n·m) Python dynamic programme measured on a shorter pair
in the same run (a pair with no shared opening).
Run: ``python bench/bench_edit_alignment.py [--n 4000] [--python-n 600]``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orion_utils.edit import common_prefix_len, key_token_ops, key_token_weights

VOCAB = 151_000  # a Qwen-sized vocabulary
TARGET_S = 0.5


def similar_copy(seq: list[int], rng: random.Random, rate: float) -> list[int]:
    """``seq`` with about ``rate`` of its positions replaced, deleted or followed by an inserted token."""
    out: list[int] = []
    for tok in seq:
        r = rng.random()
        if r < rate / 3:
            out.append(rng.randrange(VOCAB))
        elif r < 2 * rate / 3:
            continue
        elif r < rate:
            out.extend([tok, rng.randrange(VOCAB)])
        else:
            out.append(tok)
    return out


def python_levenshtein(a: list[int], b: list[int]) -> int:
    """The textbook O(n·m) table, two rows at a time (the thing not to do on long CoTs)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


def ops_distance(chosen: list[int], rejected: list[int]) -> int:
    """The Levenshtein distance implied by ``key_token_ops`` (replace spans count once per token)."""
    return sum(max(c1 - c0, r1 - r0) for _, c0, c1, r0, r1 in key_token_ops(chosen, rejected).ops)


def best_of(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="tokens per sequence for the timing")
    parser.add_argument(
        "--python-n", type=int, default=600, help="tokens per sequence for the Python comparison"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    chosen = [rng.randrange(VOCAB) for _ in range(args.n)]
    pairs = {
        "similar (10% edits)": similar_copy(chosen[:300], rng, 0.0) + similar_copy(chosen[300:], rng, 0.1),
        "different": [rng.randrange(VOCAB) for _ in range(args.n)],
    }
    ok = True
    print(f"key_token_weights on {args.n}-token pairs (best of 5; target < {TARGET_S} s)")
    for name, rejected in pairs.items():
        seconds = best_of(lambda r=rejected: key_token_weights(chosen, r))
        w_c, w_r = key_token_weights(chosen, rejected)
        n_c, n_r = sum(w > 0 for w in w_c), sum(w > 0 for w in w_r)
        ok &= seconds < TARGET_S
        print(
            f"  {name:<20} {seconds * 1000:8.2f} ms   key tokens: chosen {n_c}/{len(w_c)}, "
            f"rejected {n_r}/{len(w_r)}   {'OK' if seconds < TARGET_S else 'TOO SLOW'}"
        )

    m = args.python_n
    short_c = chosen[300 : 300 + m]
    short_r = similar_copy(short_c, rng, 0.1)
    p = common_prefix_len(short_c, short_r)
    start = time.perf_counter()
    reference = python_levenshtein(short_c[p:], short_r[p:])
    python_s = time.perf_counter() - start
    fast_s = best_of(lambda: key_token_ops(short_c, short_r))
    same = ops_distance(short_c, short_r) == reference
    ok &= same
    print(
        f"same {m}-token pair: Python O(n·m) table {python_s * 1000:.1f} ms, "
        f"rapidfuzz ops {fast_s * 1000:.3f} ms "
        f"→ {python_s / fast_s:.0f}x faster; same edit distance: {same} ({reference})"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
