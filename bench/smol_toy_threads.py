"""Does a result move with the CPU thread count? SmolLM2-135M-Instruct (the smol_toy profile's student, or a
trained model directory) answers the smol_toy profile's toy_test questions greedily with 1 and with 2 torch
threads; the script counts the answers whose text differs and the verdicts that differ.

    python bench/smol_toy_threads.py [MODEL_DIR] [--n 48]

Not part of `make bench` (a few minutes on 2 CPU cores). docs/results.md ("How much a result moves from machine to machine") quotes it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orion_utils.config import load_profile  # noqa: E402
from orion_utils.generation import SamplingConfig, load_generator  # noqa: E402
from orion_utils.grading import grade  # noqa: E402
from orion_utils.prepare import load_benchmark_problems  # noqa: E402
from orion_utils.students import resolve_student  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="", help="a model directory (default: the base student)")
    ap.add_argument("--n", type=int, default=48)
    args = ap.parse_args(argv)
    cfg = load_profile("smol_toy")
    problems = load_benchmark_problems(cfg.data, cfg.toy_domain)["toy_test"][: args.n]
    path = args.model or resolve_student(cfg.student.model, progress=False)
    sampling = SamplingConfig(n=1, temperature=0.0, max_new_tokens=cfg.evaluation.max_new_tokens)
    texts = {}
    for threads in (1, 2):
        gen = load_generator(path, "transformers", batch_size=cfg.generation.batch_size, num_threads=threads,
                             progress=False)
        out = gen.generate([p.question for p in problems], sampling, prompt_template=cfg.student.prompt_template)
        gen.close()
        texts[threads] = [o[0].text for o in out]
    right = {t: [grade(x, p.answer).correct for x, p in zip(texts[t], problems)] for t in texts}
    differ = sum(a != b for a, b in zip(texts[1], texts[2]))
    flips = sum(a != b for a, b in zip(right[1], right[2]))
    print(f"{path}: {len(problems)} toy_test questions, greedy; correct with 1 thread {sum(right[1])}, "
          f"with 2 threads {sum(right[2])}; answers whose text differs {differ}, verdicts that differ {flips}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
