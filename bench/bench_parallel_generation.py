"""Benchmark: sampling in one process against two worker processes (``parallel.generation: data``) on this
machine's cores, in one run, with the same prompts and settings; and whether the two give the same samples.

One process runs a small model on one torch thread (``device.cpu_threads_for``); two workers take
``cores // 2`` cores each (``parallel_generation.rank_environment``). Printed: each side's start-up (the
model loaded; for two, the worker processes spawned and loaded) and generation wall time, the ratio one /
two of the generation times and of the totals, and whether the samples are byte-identical.

    python bench/bench_parallel_generation.py [--model smollm2|toy] [--prompts 24] [--n 4] [--max-new-tokens 64]

``smollm2``: SmolLM2-135M-Instruct (converted once from its packaged GGUF file) on GSM8K test questions from
the shared data; ``toy``: the toy profile's student, randomly initialised, on toy questions.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orion_utils.config import GenerationConfig, ParallelConfig, load_profile  # noqa: E402
from orion_utils.generation import SamplingConfig, open_generator  # noqa: E402

GSM8K = ROOT.parent / "shared" / "data" / "benchmarks" / "gsm8k.jsonl"


def questions_and_model(which: str, count: int, tmp: str) -> tuple[list[str], str]:
    if which == "smollm2":
        from orion_utils.students import resolve_student

        with open(GSM8K, encoding="utf-8") as f:
            questions = [json.loads(line)["question"] for _, line in zip(range(count), f)]
        return questions, resolve_student("smollm2-135m-instruct")
    from orion_utils.toy.domain import generate_problems
    from orion_utils.toy.student import build_toy_student

    profile = load_profile("toy")
    questions = [p.question for p in generate_problems(count, profile.toy_domain, seed=0, split="test")]
    return questions, str(build_toy_student(Path(tmp, "toy"), profile.toy_student, seed=0))


def timed(model: str, questions: list[str], sampling: SamplingConfig, gen: GenerationConfig, parallel):
    started = time.perf_counter()
    generator = open_generator(model, gen, parallel=parallel, progress=False)
    loaded = time.perf_counter()
    outputs = generator.generate(questions, sampling)
    done = time.perf_counter()
    generator.close()
    return outputs, loaded - started, done - loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("smollm2", "toy"), default="smollm2")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    sampling = SamplingConfig(n=args.n, temperature=0.7, top_p=0.95, max_new_tokens=args.max_new_tokens, seed=0)
    gen = GenerationConfig(backend="transformers", batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        questions, model = questions_and_model(args.model, args.prompts, tmp)
        one, load1, gen1 = timed(model, questions, sampling, gen, None)
        two, load2, gen2 = timed(model, questions, sampling, gen, ParallelConfig(gpus=2))
    tokens = sum(g.n_tokens for row in one for g in row)
    print(f"[bench] {args.model}: {len(questions)} prompts x {args.n} samples, max_new_tokens {args.max_new_tokens}, "
          f"batch_size {args.batch_size}: {tokens} tokens generated")
    print(f"[bench] one process:  start {load1:.1f} s, generation {gen1:.1f} s ({tokens / gen1:.0f} tokens/s)")
    print(f"[bench] two workers:  start {load2:.1f} s, generation {gen2:.1f} s ({tokens / gen2:.0f} tokens/s)")
    print(f"[bench] one / two: generation {gen1 / gen2:.2f}x, start + generation {(load1 + gen1) / (load2 + gen2):.2f}x; "
          f"samples byte-identical: {one == two}")


if __name__ == "__main__":
    main()
