"""Data-parallel generation on vLLM's real CPU engine (`make test-vllm`): two engines, each in its own worker
process pinned to one core (``VLLM_CPU_OMP_THREADS_BIND``), against one engine in this process.

The model is a tiny random Qwen2 (as in test_vllm_backend.py) with its end-of-turn output row scaled up, so
samples end at different lengths. Each request carries its own seed, so a prompt's samples must not depend
on which engine runs it or on what else is in its batch: the merged result must equal one engine's, byte
for byte (texts, token counts, finish reasons). An engine starts in 30-60 s on two cores: the file takes a
few minutes."""
from __future__ import annotations

import pytest
import torch

from orion_utils.config import ParallelConfig
from orion_utils.generation import SamplingConfig, VLLMBackend, load_generator
from orion_utils.parallel_generation import ParallelGenerator

QUESTIONS = [f"Ann has {i} apples and buys {3 * i + 1} more. How many apples does she have?" for i in range(7)]
QUESTIONS[3] = "Hi"
KV_CACHE = 256 * 2**20
SAMPLED = SamplingConfig(n=3, temperature=1.0, top_p=0.95, max_new_tokens=24, seed=11)
GREEDY = SamplingConfig(n=1, temperature=0.0, max_new_tokens=24, seed=11)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    from conftest import IM_END, build_tiny_model_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny_model_dir(tmp_path_factory.mktemp("qwen2"), architecture="qwen2", hidden_size=128,
                                num_attention_heads=2, num_key_value_heads=1, intermediate_size=256)
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        m.lm_head.weight[AutoTokenizer.from_pretrained(path).convert_tokens_to_ids(IM_END)] *= 40
    m.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def alone(model):
    """One engine in this process: what the two engines must give."""
    g = load_generator(model, backend="vllm", seed=0, progress=False, kv_cache_memory_bytes=KV_CACHE)
    assert isinstance(g, VLLMBackend)
    out = (g.generate(QUESTIONS, SAMPLED), g.generate_groups([(QUESTIONS, GREEDY), (QUESTIONS[:4], SAMPLED)]))
    g.close()
    return out


def test_two_cpu_engines_give_one_engines_samples_byte_for_byte(model, alone, capsys):
    sampled, groups = alone
    lengths = {g.n_tokens for row in sampled for g in row}
    assert len(lengths) > 3 and {g.finish_reason for row in sampled for g in row} == {"stop", "length"}, lengths
    gen = load_generator(model, backend="vllm", seed=0, kv_cache_memory_bytes=KV_CACHE, parallel=ParallelConfig(gpus=2))
    try:
        assert isinstance(gen, ParallelGenerator) and gen.name == "vllm"
        line = capsys.readouterr().out
        assert "rank 0: cpu [cores 0], rank 1: cpu [cores 1]" in line, line
        assert gen.generate(QUESTIONS, SAMPLED) == sampled
        assert gen.generate_groups([(QUESTIONS, GREEDY), (QUESTIONS[:4], SAMPLED)]) == groups
    finally:
        gen.close()
