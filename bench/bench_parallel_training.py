"""Wall time of one training run on one process against two data-parallel ranks (torchrun, gloo) on this
machine's cores, in one run: the same rows, the same global batch (batch_size x grad_accum), N = 1 then N = 2.

    PYTHONPATH=$PWD python bench/bench_parallel_training.py [--model toy|smollm2] [--steps 8]

The toy student is conftest's tiny random Llama (no download); ``smollm2`` is the packaged SmolLM2-135M. Both
runs' wall time includes what a stage pays: N = 2 adds the launch (two interpreters importing torch and TRL,
the process group). Prints one line per run, the ratio, and whether the final weights agree."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("toy", "smollm2"), default="toy")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()

    from safetensors.torch import load_file

    from orion_utils.config import ParallelConfig, TrainingConfig
    from orion_utils.records import SFTExample
    from orion_utils.training import train_sft

    work = Path(tempfile.mkdtemp(prefix="bench-parallel-"))
    if args.model == "toy":
        from conftest import build_tiny_model_dir

        base, seq = build_tiny_model_dir(work / "base", hidden_size=256, intermediate_size=512, num_hidden_layers=4), 256
    else:
        from orion_utils.students import resolve_student

        base, seq = resolve_student("smollm2-135m-instruct"), 128
    examples = [SFTExample(problem_id=f"p{i}", question=f"What is {i} plus {3 * i}?",
                           response=f"{i} + {3 * i} = {4 * i}. " * (2 + i % 6) + f"\\boxed{{{4 * i}}}", source="bench")
                for i in range(4 * args.steps)]
    cfg = TrainingConfig(backend="trl", batch_size=2, grad_accum=2, max_steps=args.steps, learning_rate=1e-4,
                         warmup_ratio=0.0, save_steps=-1, max_seq_len=seq, batching="length_grouped", logging_steps=1)
    seconds, weights = {}, {}
    for n in (1, 2):
        t0 = time.perf_counter()
        result = train_sft(base, examples, work / f"n{n}", cfg, parallel=ParallelConfig(gpus=n))
        seconds[n] = time.perf_counter() - t0
        weights[n] = load_file(str(Path(result.model_dir) / "model.safetensors"))
        print(f"N={n}: {seconds[n]:.1f} s wall ({result.train_seconds:.1f} s in trainer.train, rank 0), "
              f"{result.n_steps} steps, {result.n_tokens} supervised tokens", flush=True)
    diff = max(float((weights[1][k] - weights[2][k]).abs().max()) for k in weights[1])
    print(f"model={args.model} steps={args.steps} global batch=4: N=2 / N=1 wall time = {seconds[2] / seconds[1]:.2f}; "
          f"max |weight difference| = {diff:.2e}")


if __name__ == "__main__":
    main()
