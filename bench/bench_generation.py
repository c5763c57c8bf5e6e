"""Benchmark: batched vs one-prompt-at-a-time generation on the toy student (transformers backend).

The same 64 prompts are generated greedily twice in one run: in one batch of 64 (left padding, KV
cache) and one prompt at a time; generated tokens/s of each and their ratio are printed (target:
batched >= 5x). Greedy, so the two runs must also produce identical outputs, which is checked.

Model: ``orion_utils.toy.student.build_toy_student`` with its default config when that module
exists, else a random ~1 M-parameter Llama with the test suite's tiny byte-level tokenizer.

    python bench/bench_generation.py [--n-prompts 64] [--max-new-tokens 64] [--strict]
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orion_utils.generation import SamplingConfig, TransformersBackend

TARGET = 5.0


def _fallback_student(tmp: str) -> tuple[str, str]:
    spec = importlib.util.spec_from_file_location("_tiny_builders", ROOT / "tests" / "conftest.py")
    builders = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builders)
    path = builders.build_tiny_model_dir(
        os.path.join(tmp, "student"), hidden_size=128, intermediate_size=384, num_hidden_layers=5
    )
    return path, "random Llama + tiny byte-level tokenizer (toy student not available yet)"


def _toy_student(tmp: str) -> tuple[str, str]:
    """The toy student at its default config, saved to a directory; falls back when it does not exist."""
    try:
        from orion_utils.toy.student import build_toy_student
    except ImportError:
        return _fallback_student(tmp)
    out_dir = os.path.join(tmp, "student")
    params = inspect.signature(build_toy_student).parameters
    dir_names = [n for n in ("output_dir", "out_dir", "path", "save_dir", "model_dir", "directory") if n in params]
    if dir_names:
        result = build_toy_student(**{dir_names[0]: out_dir})
    elif params and next(iter(params.values())).default is inspect.Parameter.empty:
        result = build_toy_student(out_dir)
    else:
        result = build_toy_student()
    if isinstance(result, (str, os.PathLike)):
        return os.fspath(result), "toy student (orion_utils.toy.student.build_toy_student, default config)"
    if isinstance(result, tuple) and len(result) >= 2 and hasattr(result[0], "save_pretrained"):
        result[0].save_pretrained(out_dir)
        result[1].save_pretrained(out_dir)
        return out_dir, "toy student (orion_utils.toy.student.build_toy_student, default config)"
    if os.path.isfile(os.path.join(out_dir, "config.json")):
        return out_dir, "toy student (orion_utils.toy.student.build_toy_student, default config)"
    raise TypeError(f"cannot use build_toy_student's result ({type(result).__name__}) as a model directory")


def make_prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    prompts = []
    for _ in range(n):
        steps = rng.randint(1, 4)
        expr = str(rng.randint(1, 99)) + "".join(f" {rng.choice('+-')} {rng.randint(1, 99)}" for _ in range(steps))
        prompts.append(f"Compute {expr}. What is the result?")
    return prompts


def timed(gen: TransformersBackend, prompts, cfg, batch_size: int):
    gen.batch_size = batch_size
    start = time.perf_counter()
    out = gen.generate(prompts, cfg, desc=f"batch {batch_size}")
    seconds = time.perf_counter() - start
    return out, sum(row[0].n_tokens for row in out), seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-prompts", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--num-threads", default="auto", help="'auto' (device.cpu_threads_for) or an int")
    ap.add_argument("--strict", action="store_true", help=f"exit 1 when the speed-up is below {TARGET:g}x")
    args = ap.parse_args(argv)
    threads = args.num_threads if args.num_threads == "auto" else int(args.num_threads)

    with tempfile.TemporaryDirectory() as tmp:
        path, what = _toy_student(tmp)
        gen = TransformersBackend(path, device="auto", progress=False, num_threads=threads)
        n_params = sum(p.numel() for p in gen.model.parameters())
        prompts = make_prompts(args.n_prompts)
        cfg = SamplingConfig(temperature=0.0, max_new_tokens=args.max_new_tokens)
        gen.generate(prompts[:2], SamplingConfig(max_new_tokens=4))  # warm-up: first-call costs out of the timing

        batched, tok_b, sec_b = timed(gen, prompts, cfg, args.batch_size)
        single, tok_s, sec_s = timed(gen, prompts, cfg, 1)
        gen.close()

    rate_b, rate_s = tok_b / sec_b, tok_s / sec_s
    ratio = rate_b / rate_s
    same = sum(a[0] == b[0] for a, b in zip(batched, single))
    stopped = sum(r[0].finish_reason == "stop" for r in batched)
    import torch

    print("== generation benchmark: batched vs one prompt at a time (transformers backend)")
    print(f"model:   {what}, {n_params / 1e6:.2f} M parameters")
    print(f"setup:   {len(prompts)} prompts, greedy, max_new_tokens={args.max_new_tokens}, device={gen.device}, "
          f"dtype={str(gen.dtype).replace('torch.', '')}, torch threads during generate="
          f"{gen.num_threads or torch.get_num_threads()} (machine default {torch.get_num_threads()})")
    print(f"batched (batch {args.batch_size:>3}):  {tok_b:6d} tokens in {sec_b:7.2f} s = {rate_b:9.1f} tokens/s")
    print(f"one at a time (batch 1): {tok_s:6d} tokens in {sec_s:7.2f} s = {rate_s:9.1f} tokens/s")
    print(f"speed-up (tokens/s ratio): {ratio:.1f}x  (target >= {TARGET:g}x: {'PASS' if ratio >= TARGET else 'BELOW'})")
    print(f"greedy outputs identical batched vs one at a time: {same}/{len(prompts)}; "
          f"stopped at EOS: {stopped}/{len(prompts)}")
    return 1 if args.strict and ratio < TARGET else 0


if __name__ == "__main__":
    sys.exit(main())
