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
    monkeypatch.setattr(device, "gpu_probe", lambda: _probe(gpu_present=False))
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


def _fake_gpu(monkeypatch, capability, name):
    """No GPU here: torch is told it has one of ``capability``; ``is_bf16_supported`` answers True as it
    does on a real T4 (it counts emulation), so only the capability can tell."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


def test_dtype_on_a_t4_is_float16_although_torch_says_bf16(monkeypatch):
    _fake_gpu(monkeypatch, (7, 5), "Tesla T4")
    assert device.cuda_capability() == (7, 5) and not device.bf16_capable()
    assert resolve_dtype("auto", "cuda") is torch.float16
    assert resolve_dtype("auto", "cuda:0") is torch.float16
    assert device_and_dtype() == ("cuda", "float16")
    assert trainer_autocast(*device_and_dtype()) == {"bf16": False, "fp16": True}  # fp16: loss scaling
    assert training_load_dtype("cuda", "float16", use_lora=True, load_in_4bit=True) is torch.float16
    assert saved_dtype(*device_and_dtype()) is torch.float16
    assert resolve_dtype("fp16", "cuda") is torch.float16 and resolve_dtype("float32", "cuda") is torch.float32
    # bf16 asked for by name is refused with one error that names the card and the fix
    for asked in ("bf16", "bfloat16", torch.bfloat16):
        with pytest.raises(ValueError, match=r"compute capability >= 8\.0; Tesla T4 has 7\.5.*use dtype: auto"):
            resolve_dtype(asked, "cuda")
    with pytest.raises(ValueError, match="Tesla T4 has 7.5"):
        device_and_dtype("auto", "bf16")
    assert resolve_dtype("bf16", "cpu") is torch.bfloat16  # a CPU run asked for bf16: kept


def test_dtype_on_ampere_and_later_is_bf16(monkeypatch):
    for cap, name in (((8, 0), "NVIDIA A100-SXM4-80GB"), ((8, 9), "NVIDIA L4"), ((9, 0), "NVIDIA H100")):
        _fake_gpu(monkeypatch, cap, name)
        assert resolve_dtype("auto", "cuda") is torch.bfloat16, name
        assert device_and_dtype() == ("cuda", "bfloat16")
        assert resolve_dtype("bf16", "cuda") is torch.bfloat16
        assert trainer_autocast("cuda", "bfloat16") == {"bf16": True, "fp16": False}


def test_device_and_dtype(monkeypatch):
    monkeypatch.setattr(device, "cuda_available", lambda: False)
    monkeypatch.setattr(device, "gpu_probe", lambda: _probe(gpu_present=False))
    assert device_and_dtype() == ("cpu", "float32")
    assert device_and_dtype("auto", "bf16") == ("cpu", "bfloat16")  # asked for: kept


def test_the_dtype_handed_to_vllm_follows_the_capability(monkeypatch, tiny_model_dir):
    """vLLM cannot run here on a GPU: a stand-in ``vllm`` module records what VLLMBackend hands
    ``vllm.LLM``; its platform says cuda, as vLLM's does on a GPU."""
    import sys
    import types

    from orion_utils.generation import VLLMBackend

    seen = {}

    class LLM:
        def __init__(self, **kwargs):
            seen.update(kwargs)

    fake = types.ModuleType("vllm")
    fake.LLM, fake.SamplingParams = LLM, object
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(device_type="cuda")
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    _fake_gpu(monkeypatch, (7, 5), "Tesla T4")
    assert VLLMBackend(tiny_model_dir).dtype == "float16" and seen["dtype"] == "float16"
    with pytest.raises(ValueError, match="Tesla T4 has 7.5"):
        VLLMBackend(tiny_model_dir, dtype="bf16")
    _fake_gpu(monkeypatch, (8, 6), "NVIDIA A10")
    assert VLLMBackend(tiny_model_dir).dtype == "bfloat16" and seen["dtype"] == "bfloat16"


# ---------------------------------------------------------------------------------------------
# a GPU that torch cannot use


def _probe(**kw):
    base = {"gpu_present": True, "driver": "550.54.15", "torch_version": "2.14.0", "torch_cuda": "13.0",
            "cuda_available": False, "visible_devices": None}
    return device.GPUProbe(**{**base, **kw})


_PROC_VERSION = ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n"
                 "GCC version:  gcc version 12.3.0 (Ubuntu 12.3.0-1ubuntu1~22.04)\n")


def test_probe_reads_the_driver_file_and_nvidia_smi(monkeypatch, tmp_path):
    """The driver file and nvidia-smi are stood in by files of the same format; torch's view is faked."""
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "version").write_text(_PROC_VERSION)
    (tmp_path / "nvidia0").touch()
    p = device.probe_gpu(tmp_path / "version", tmp_path / "nvidia0", nvidia_smi=None)
    assert p.gpu_present and p.driver == "550.54.15" and p.torch_cuda == "13.0" and not p.cuda_available
    # the driver file without a device node: a container given no GPU, not a GPU torch fails to use
    p = device.probe_gpu(tmp_path / "version", tmp_path / "none", nvidia_smi=None)
    assert not p.gpu_present and p.driver == "550.54.15" and device.gpu_problem(p) is None
    open_module = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  535.183.01  Release Build  (dvs-builder@U16)\n"
    (tmp_path / "version").write_text(open_module)
    assert device.probe_gpu(tmp_path / "version", tmp_path / "none", nvidia_smi=None).driver == "535.183.01"
    # no driver file (a container): nvidia-smi answers
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 545.23.08\n")
    smi.chmod(0o755)
    p = device.probe_gpu(tmp_path / "none", tmp_path / "none", nvidia_smi=str(smi))
    assert p.gpu_present and p.driver == "545.23.08"
    # no GPU at all
    p = device.probe_gpu(tmp_path / "none", tmp_path / "none", nvidia_smi=None)
    assert not p.gpu_present and p.driver is None and device.gpu_problem(p) is None


def test_an_old_driver_stops_the_run_with_the_fix(monkeypatch):
    message = device.gpu_problem(_probe())
    assert message.startswith("torch 2.14.0 is built for CUDA 13.0, which needs NVIDIA driver >= 580 (580.65.06); "
                              "this machine has driver 550.54.15: install the CUDA 12 builds")
    assert ("pip install torch==2.14.0 torchvision==0.29.0 xformers torchao "
            "--index-url https://download.pytorch.org/whl/cu126") in message
    assert "make setup-gpu-cu12" in message
    monkeypatch.setattr(device, "cuda_available", lambda: False)
    monkeypatch.setattr(device, "gpu_probe", lambda: _probe())
    with pytest.raises(device.GPUUnusableError, match="needs NVIDIA driver >= 580"):
        resolve_device("auto")
    with pytest.raises(device.GPUUnusableError):
        device_and_dtype()
    assert resolve_device("cpu") == "cpu"  # a device asked for by name is not checked
    # a CUDA 12 build on that driver is fine by the version rule: what else is wrong is said
    other = device.gpu_problem(_probe(torch_cuda="12.6"))
    assert "cannot use it" in other and "nvidia-smi" in other and "needs NVIDIA driver" not in other
    # a CPU build of torch is a choice (the CPU set-up installs one): a warning, not an error
    assert device.gpu_problem(_probe(torch_cuda=None)) is None
    with pytest.warns(RuntimeWarning, match="is a CPU build: running on the CPU"):
        device.check_gpu_usable(_probe(torch_cuda=None))


def test_no_error_without_a_gpu_with_a_working_one_or_a_hidden_one():
    assert device.gpu_problem(_probe(gpu_present=False, driver=None)) is None
    assert device.gpu_problem(_probe(cuda_available=True)) is None
    assert device.gpu_problem(_probe(visible_devices="")) is None  # hidden on purpose: a CPU run
    assert device.gpu_problem(_probe(visible_devices="-1")) is None
    assert device.gpu_problem(_probe(visible_devices="0")) is not None


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
