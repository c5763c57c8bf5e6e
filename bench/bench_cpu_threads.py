"""Benchmark: one torch thread vs two on the toy student, for its pre-training (training) and for sampling.

The project's rule gives a small model one CPU thread per process (``device.cpu_threads_for``): on a
2-core machine two threads make small-batch generation several times slower, and two one-thread
processes (``evaluation.workers``, ``orion run --jobs``) use both cores better than one two-thread one. The toy pre-training trains
on batches of 12 CoTs of ~300 tokens alone on the machine, so its profile sets ``toy_pretrain.threads: 2``;
this measures both, in one run:

- pre-training: ``--steps`` steps of the toy profile's pre-training from the same random student with 1 and with
  2 threads; steps/s of each, their ratio, and whether the two trained students are bit-identical;
- sampling: the toy profile's evaluation sampling (n=3, T=0.6, top_p 0.95, batch 256) of ``--prompts``
  toy_test questions on the 2-thread student, with 1 and 2 threads; generated tokens/s and ratio.

    python bench/bench_cpu_threads.py [--steps 80] [--prompts 150]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orion_utils.config import load_profile
from orion_utils.generation import SamplingConfig, TransformersBackend
from orion_utils.teachers.toy import ToyTeacher
from orion_utils.toy.domain import generate_problems
from orion_utils.toy.student import build_toy_student
from orion_utils.toy.pretrain import pretrain_student


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--prompts", type=int, default=150)
    args = parser.parse_args()
    profile = load_profile("toy")
    problems = generate_problems(profile.toy_pretrain.n_problems, profile.toy_domain, seed=1, split="train")
    with tempfile.TemporaryDirectory() as tmp:
        init = build_toy_student(Path(tmp, "init"), profile.toy_student, seed=0)
        warm = {}
        for threads in (1, 2):
            cfg = dataclasses.replace(profile.toy_pretrain, max_steps=args.steps, threads=threads, log_every=0)
            stats = pretrain_student(init, Path(tmp, f"warm{threads}"), problems, ToyTeacher(error_rate=0.0, seed=0), cfg)
            warm[threads] = stats["steps"] / stats["seconds"]
            print(f"pre-training, {threads} thread(s): {warm[threads]:.2f} steps/s")
        from safetensors.torch import load_file

        a, b = (load_file(str(Path(tmp, f"warm{t}", "model.safetensors"))) for t in (1, 2))
        identical = all((a[k] == b[k]).all() for k in a)
        print(f"pre-training: 2 threads / 1 thread = {warm[2] / warm[1]:.2f}x; trained weights bit-identical: {identical}")

        questions = [p.question for p in generate_problems(args.prompts, profile.toy_domain, seed=0, split="test")]
        sampling = SamplingConfig(n=3, temperature=0.6, top_p=0.95, max_new_tokens=256, seed=0)
        speed = {}
        for threads in (1, 2):
            gen = TransformersBackend(str(Path(tmp, "warm2")), batch_size=256, num_threads=threads, progress=False)
            t0 = time.time()
            out = gen.generate(questions, sampling)
            speed[threads] = sum(g.n_tokens for row in out for g in row) / (time.time() - t0)
            gen.close()
            print(f"sampling, {threads} thread(s): {speed[threads]:.0f} tokens/s")
        print(f"sampling: 2 threads / 1 thread = {speed[2] / speed[1]:.2f}x (two 1-thread processes: ~2x)")


if __name__ == "__main__":
    main()
