"""Tests of orion_utils.device: device, precision and CPU-thread rules (no model is run)."""
from __future__ import annotations

import pytest
import torch

from orion_utils import device
from orion_utils.device import (
    SMALL_MODEL_PARAMS,
    cpu_threads_for,
    device_and_dtype,
    n_parameters,
    resolve_device,
    resolve_dtype,
    saved_dtype,
    torch_threads,
    trainer_autocast,
    training_load_dtype,
)


class _Params:
    """Stands in for a loaded model with ``n`` parameters (only ``parameters()`` is read)."""

    def __init__(self, n: int):
        self.n = n

    def parameters(self):
        return iter([torch.empty(self.n, device="meta")])


# ---------------------------------------------------------------------------------------------
# device and dtype


def test_device_auto_follows_cuda(monkeypatch):
    monkeypatch.setattr(device, "cuda_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == "cpu"
    monkeypatch.setattr(device, "cuda_available", lambda: True)
    assert resolve_device() == "cuda"
    assert resolve_device("cpu") == "cpu" and resolve_device("cuda:1") == "cuda:1"  # asked for: kept


def test_dtype_on_cpu_is_float32_and_names_are_read():
    assert resolve_dtype("auto", "cpu") is torch.float32
    assert resolve_dtype(None, "cpu") is torch.float32
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("half", torch.float16),
                        ("float32", torch.float32), ("torch.bfloat16", torch.bfloat16)):
        assert resolve_dtype(name, "cpu") is dtype
    assert resolve_dtype(torch.float16, "cpu") is torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int8", "cpu")


def test_dtype_on_cuda_is_bf16_where_supported(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", "cuda") is torch.bfloat16
    assert resolve_dtype("auto", "cuda:0") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", "cuda") is torch.float16


def test_device_and_dtype(monkeypatch):
    monkeypatch.setattr(device, "cuda_available", lambda: False)
    assert device_and_dtype() == ("cpu", "float32")
    assert device_and_dtype("auto", "bf16") == ("cpu", "bfloat16")  # asked for: kept
    monkeypatch.setattr(device, "cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert device_and_dtype() == ("cuda", "bfloat16")


def test_training_precision():
    # full fine-tuning: float32 master weights everywhere; autocast only on CUDA
    assert training_load_dtype("cpu", "float32", use_lora=False, load_in_4bit=False) is torch.float32
    assert training_load_dtype("cuda", "bfloat16", use_lora=False, load_in_4bit=False) is torch.float32
    # a frozen base: in the compute dtype on CUDA (LoRA) and with 4-bit weights; LoRA on a CPU: float32
    assert training_load_dtype("cuda", "bfloat16", use_lora=True, load_in_4bit=False) is torch.bfloat16
    assert training_load_dtype("cuda", "float16", use_lora=True, load_in_4bit=True) is torch.float16
    assert training_load_dtype("cpu", "float32", use_lora=True, load_in_4bit=False) is torch.float32
    assert trainer_autocast("cpu", "float32") == {"bf16": False, "fp16": False}
    assert trainer_autocast("cuda", "bfloat16") == {"bf16": True, "fp16": False}
    assert trainer_autocast("cuda", "float16") == {"bf16": False, "fp16": True}
    assert saved_dtype("cpu", "float32") is None
    assert saved_dtype("cuda", "bfloat16") is torch.bfloat16


# ---------------------------------------------------------------------------------------------
# CPU threads


def test_one_thread_for_a_small_model_on_cpu_only():
    assert cpu_threads_for(_Params(100_000), "cpu") == 1
    assert cpu_threads_for(_Params(SMALL_MODEL_PARAMS - 1), "cpu") == 1
    assert cpu_threads_for(_Params(SMALL_MODEL_PARAMS), "cpu") is None  # big: torch's setting
    assert cpu_threads_for(_Params(100_000), "cuda") is None  # GPU: torch's setting
    assert cpu_threads_for(_Params(100_000), "cuda:0", "auto") is None


def test_an_explicit_thread_count_wins():
    assert cpu_threads_for(_Params(100_000), "cpu", 4) == 4
    assert cpu_threads_for(_Params(10**9), "cuda", 2) == 2
    assert cpu_threads_for(_Params(100_000), "cpu", None) is None
    with pytest.raises(ValueError, match="num_threads must be"):
        cpu_threads_for(_Params(1), "cpu", "many")


def test_thread_rule_for_a_model_directory(tiny_model_dir, tmp_path):
    """A local directory is counted from its weight files' headers; a hub id is not counted."""
    from transformers import AutoModelForCausalLM

    loaded = n_parameters(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    assert n_parameters(tiny_model_dir) == loaded > 0
    assert cpu_threads_for(tiny_model_dir, "cpu") == 1
    assert cpu_threads_for("HuggingFaceTB/SmolLM2-135M-Instruct", "cpu") is None
    assert cpu_threads_for(tmp_path, "cpu") is None  # no weights: unknown size
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0" * 1000)
    assert n_parameters(tmp_path) == 500  # at most one parameter per 2 bytes


def test_torch_threads_sets_and_restores_the_previous_setting():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="boom"), torch_threads(1):
            raise RuntimeError("boom")
        assert torch.get_num_threads() == 2  # restored on an error too
        for leave in (None, 0, -1):
            with torch_threads(leave):
                assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
