"""Benchmark: vLLM sampling with and without a seed per request, on vLLM's real engine (its CPU build).

Evaluation and exposure seed their sampled requests (``SamplingConfig.seed`` → ``SamplingParams.seed``),
so that a chunk generated again after an interruption samples what it sampled the first time. A seeded
request gets its own torch generator, and vLLM's sampler draws for such requests one at a time in a
Python loop; unseeded requests are drawn in one batched call. This prints, measured in one run on one
engine, the generated tokens/s of the same sampled requests with a seed and without, alternating
(seeded, unseeded, seeded, unseeded, ...) so that warm-up and machine load fall on both, and their ratio.

Model: SmolLM2-135M-Instruct (the packaged student, converted once; see ``orion_utils.students``), the
toy domain's questions. Run it in the vLLM environment (``make setup-vllm``):

    .venv-vllm/bin/python bench/bench_vllm_seeds.py [--prompts 64] [--n 4] [--max-new-tokens 128] [--rounds 2]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=4, help="samples per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2, help="(seeded, unseeded) pairs timed")
    args = ap.parse_args()

    from orion_utils.generation import SamplingConfig, load_generator
    from orion_utils.students import resolve_student
    from orion_utils.toy.domain import generate_problems

    model = resolve_student("smollm2-135m-instruct")
    problems = generate_problems(args.prompts, seed=0)
    questions = [p.question for p in problems]
    gen = load_generator(model, backend="vllm", seed=0, progress=False, kv_cache_memory_bytes=2 * 2**30)
    try:
        def timed(seed):
            sampling = SamplingConfig(n=args.n, temperature=0.8, top_p=0.95, max_new_tokens=args.max_new_tokens,
                                      seed=seed)
            start = time.perf_counter()
            out = gen.generate(questions, sampling, desc="bench")
            elapsed = time.perf_counter() - start
            return sum(g.n_tokens for row in out for g in row) / elapsed, out

        timed(None)  # warm-up, not counted
        rates = {"seeded": [], "unseeded": []}
        for _ in range(args.rounds):
            for name, seed in (("seeded", 1234), ("unseeded", None)):
                rate, _ = timed(seed)
                rates[name].append(rate)
        _, first = timed(1234)
        _, again = timed(1234)
        same = [g.text for row in first for g in row] == [g.text for row in again for g in row]
    finally:
        gen.close()
    seeded, unseeded = (sum(v) / len(v) for v in (rates["seeded"], rates["unseeded"]))
    print(f"vLLM {gen.name} on {gen.device}, SmolLM2-135M-Instruct, {args.prompts} prompts x n={args.n}, "
          f"max {args.max_new_tokens} new tokens, {args.rounds} rounds each")
    print(f"  seeded   : {seeded:8.1f} generated tokens/s  {[round(r, 1) for r in rates['seeded']]}")
    print(f"  unseeded : {unseeded:8.1f} generated tokens/s  {[round(r, 1) for r in rates['unseeded']]}")
    print(f"  unseeded / seeded = {unseeded / seeded:.3f}; seeded requests repeat exactly: {same}")


if __name__ == "__main__":
    main()
