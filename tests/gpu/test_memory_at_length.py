"""The GPU tier at full length (issue 26, items 1 and 10): one training step of SFT, EDIT (two rows) and
Tailored Learning (three rows) at the `colab` profile's maximum length, a scoring probe at its maximum
model length, and float16 scores on a random model of Qwen2.5-1.5B's shape, each with a ``[gpu-tier]``
line (peak memory, tokens/s).

Collected only where CUDA is present (``tests/conftest.py``). The models are random, of real shapes
(Qwen2.5-0.5B's for the steps and the probe, Qwen2.5-1.5B's for float16), with the tests' tokenizer: no
model hub. The steps run through the whole training run (``length_probe.train_probe``: Unsloth or TRL,
LoRA, precision, as a stage trains) on synthetic token ids (``length_probe.probe_rows``).

What is held: a method's memory above the weights stays within its rows times SFT's (EDIT's and Tailored
Learning's losses never hold the logits of a whole sequence: ``lm_loss``), and below what the float32
logits of its rows alone would take; scoring at 16k tokens holds less than one sequence's float32 logits;
every score is finite.
"""
from __future__ import annotations

import math
import time

import pytest
import torch

from test_colab_on_gpu import CUDA, GiB, QWEN25_05B, build_qwen25_05b

from orion_utils import length_probe
from orion_utils.config import load_profile

pytestmark = pytest.mark.skipif(not CUDA, reason="tests/gpu needs a CUDA GPU (torch.cuda.is_available() is False)")

# Qwen2.5-1.5B-Instruct's shape (its config.json), random weights
QWEN25_15B = {
    "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
    "num_key_value_heads": 2, "max_position_embeddings": 32768, "vocab_size": 151936,
    "tie_word_embeddings": True, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
}


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    path, weights = build_qwen25_05b(tmp_path_factory.mktemp("qwen25_05b_random") / "model")
    return {"path": path, "weights": weights, "peaks": {}}


def colab_sections():
    """The shipped `colab` profile's training sections (4-bit only where bitsandbytes is installed)."""
    import dataclasses
    import importlib.util

    cfg = load_profile("colab")
    sections = {"sft": cfg.training, "edit": cfg.edit, "tailored": cfg.tailored}
    if importlib.util.find_spec("bitsandbytes") is None:
        sections = {k: dataclasses.replace(v, load_in_4bit=False) for k, v in sections.items()}
    return sections


@pytest.mark.parametrize("method", length_probe.METHODS)  # in this order: SFT's peak is the yardstick
def test_one_step_at_the_profiles_maximum_length(method, student, tmp_path, capsys):
    section = colab_sections()[method]
    length = section.max_seq_len
    rows = length_probe.ROWS_PER_STEP[method]
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = length_probe.train_probe(method, student["path"], tmp_path / method, length, cfg=section)
    wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated()
    extra = peak - student["weights"]
    student["peaks"][method] = extra
    logits_fp32 = rows * length * QWEN25_05B["vocab_size"] * 4
    with capsys.disabled():  # shown whatever the outcome
        print(f"\n[gpu-tier] {method} step at {length} tokens x {rows} rows ({result.backend}, {result.dtype}): "
              f"torch peak {peak / GiB:.2f} GiB ({extra / GiB:.2f} above the weights; the float32 logits of its rows "
              f"alone: {logits_fp32 / GiB:.2f}), {rows * length / result.train_seconds:.0f} tokens/s trained "
              f"({result.train_seconds:.1f} s step, {wall:.1f} s with load and save)", flush=True)
    assert result.n_steps == 1 and result.n_tokens > 0
    assert extra < logits_fp32
    if method != "sft":
        assert "sft" in student["peaks"], "the SFT step runs first"
        assert extra <= rows * student["peaks"]["sft"] * 1.25 + GiB // 2


def _scoring_text(n_tokens: int) -> str:
    """A completion of about ``n_tokens`` tokens in the tests' byte-level tokenizer (one per byte)."""
    return ("The sum of 17 and 25 is 42, and twice that is 84. " * (n_tokens // 51 + 1))[:n_tokens]


def test_scoring_probe_at_the_maximum_model_length(student, capsys):
    from orion_utils.scoring import completion_nll, load_scoring_model

    length = load_profile("colab").generation.max_model_len - 64  # room for the chat template and question
    model, tokenizer = load_scoring_model(student["path"], "cuda")
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    (nll,) = completion_nll(model, tokenizer, ["What is 17+25, doubled?"], [_scoring_text(length)], device="cuda")
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated()
    whole_logits = length * QWEN25_05B["vocab_size"] * 4
    with capsys.disabled():
        print(f"\n[gpu-tier] scoring probe at {length} tokens: nll {nll:.3f}, torch peak {peak / GiB:.2f} GiB "
              f"(weights {student['weights'] / GiB:.2f}), {length / seconds:.0f} tokens/s scored", flush=True)
    del model
    assert math.isfinite(nll)
    assert peak - student["weights"] < whole_logits


def test_float16_scores_on_a_qwen25_15b_shape_are_finite(tmp_path, capsys):
    from conftest import IM_END, PAD_TOKEN, build_tiny_tokenizer
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from orion_utils import lm_loss
    from orion_utils.scoring import completion_nll
    from orion_utils.training import token_nll

    tokenizer = build_tiny_tokenizer()
    config = Qwen2Config(**QWEN25_15B, bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
                         pad_token_id=tokenizer.convert_tokens_to_ids(PAD_TOKEN))
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(config).to(torch.float16).eval()
    questions = ["What is 17+25?", "Double 42.", "What is 2+2?"]
    completions = [_scoring_text(n) for n in (4000, 1500, 200)]
    start = time.perf_counter()
    scores = completion_nll(model, tokenizer, questions, completions, device="cuda")
    seconds = time.perf_counter() - start
    with torch.no_grad():  # the training-side NLL in float16 too, on the bounded path
        ids = torch.tensor([tokenizer(completions[1])["input_ids"]], device="cuda")
        nll, _ = lm_loss.forward_token_nll(model, ids, torch.ones_like(ids), ids)
        whole = token_nll(model(input_ids=ids).logits, ids)
    with capsys.disabled():
        print(f"\n[gpu-tier] float16 Qwen2.5-1.5B shape: scores {[round(s, 3) for s in scores]}, "
              f"{sum(len(c) for c in completions) / seconds:.0f} tokens/s scored", flush=True)
    assert all(math.isfinite(s) for s in scores), scores
    assert torch.isfinite(nll).all()
    torch.testing.assert_close(nll, whole, rtol=2e-2, atol=2e-2)  # float16 logits vs the float32 tile kernel
