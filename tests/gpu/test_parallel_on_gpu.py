"""The GPU tier's check of issue #28: on one CUDA GPU, a training run launched as one `accelerate launch` process
(configs/accelerate/ddp.yaml, what `orion run --gpus N` starts on CUDA) trains as this process does, and one
generation worker on that GPU samples as this process does.

Collected only where CUDA is present (``tests/conftest.py``). The CPU tiers check the same with torchrun and
with two ranks (tests/test_parallel_training.py, tests/test_parallel_generation.py); more than one GPU has
never run this code.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from orion_utils.config import TrainingConfig
from orion_utils.records import SFTExample

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _examples(n: int = 16) -> list[SFTExample]:
    return [SFTExample(problem_id=f"p{i}", question=f"What is {i} plus {3 * i}?",
                       response=f"{i} + {3 * i} = {4 * i}. " * (1 + i % 4) + f"\\boxed{{{4 * i}}}", source="t")
            for i in range(n)]


def _weights(model_dir) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(model_dir) / "model.safetensors"))


def test_one_accelerate_process_trains_as_this_process(tiny_model_dir, tmp_path):
    from orion_utils.training import train_sft
    from orion_utils.training.rows import build_sft_rows
    from orion_utils.training.train import launch_prepared, prepare_run

    cfg = TrainingConfig(backend="trl", batch_size=2, grad_accum=2, num_epochs=1, learning_rate=1e-3,
                         logging_steps=1, warmup_ratio=0.0, save_steps=-1, batching="length_grouped",
                         lr_scheduler="constant", max_seq_len=256, dtype="float32")
    one = train_sft(tiny_model_dir, _examples(), tmp_path / "here", cfg)
    call, _ = prepare_run(tiny_model_dir, tmp_path / "launched", cfg,
                          lambda tok: build_sft_rows(tok, _examples(), max_seq_len=cfg.max_seq_len), len(_examples()))
    assert call["device"] == "cuda"
    launched = launch_prepared(call, 1, "ddp")
    assert launched.n_steps == one.n_steps and launched.n_tokens == one.n_tokens
    assert [h["loss"] for h in launched.loss_history] == pytest.approx([h["loss"] for h in one.loss_history], rel=1e-5)
    a, b = _weights(one.model_dir), _weights(launched.model_dir)
    print(f"[gpu-tier] one accelerate process against this one: max weight difference "
          f"{max(float((a[k] - b[k]).abs().max()) for k in a):.3g}")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5


def test_one_generation_worker_samples_as_this_process(tiny_model_dir):
    from orion_utils.generation import SamplingConfig, load_generator
    from orion_utils.parallel_generation import ParallelGenerator

    questions = [f"What is {i} times {i + 2}?" for i in range(12)]
    sampling = SamplingConfig(n=3, temperature=0.8, top_p=0.95, max_new_tokens=24, seed=5)
    settings = {"backend": "transformers", "batch_size": 8, "dtype": "float32", "progress": False}
    with load_generator(tiny_model_dir, **settings) as gen:
        here = gen.generate(questions, sampling)
    with ParallelGenerator(tiny_model_dir, 1, settings, load_generator) as gen:  # one worker, pinned to GPU 0
        assert gen.device.startswith("cuda")
        there = gen.generate(questions, sampling)
    assert [[(g.text, g.n_tokens, g.finish_reason) for g in row] for row in there] == \
        [[(g.text, g.n_tokens, g.finish_reason) for g in row] for row in here]
