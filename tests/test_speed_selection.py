"""CUDA speed settings chosen automatically (attention kernel, padding-free batching, Liger). No GPU
here: CUDA and the optional packages are stood in; the GPU run itself is bench/bench_padding_free_cuda.py."""
import importlib.util

from orion_utils import config, training


def _installed(monkeypatch, *names):
    real = importlib.util.find_spec
    monkeypatch.setattr(training.selection.importlib.util, "find_spec",
                        lambda name, *a: object() if name in names else (None if name in (
                            "flash_attn", "flash_attn_interface", "liger_kernel") else real(name, *a)))


def test_varlen_attention_and_padding_free_on_cuda(monkeypatch):
    monkeypatch.setattr(training.selection.torch.cuda, "get_device_capability", lambda *a: (9, 0))
    _installed(monkeypatch)
    assert training.resolve_attn("auto", "cuda") == "sdpa"
    assert training.resolve_batching("auto", "sdpa") == ("length_grouped", "attn=sdpa")
    _installed(monkeypatch, "flash_attn")
    assert training.resolve_attn("auto", "cuda") == "flash_attention_2"
    assert training.resolve_attn("auto", "cpu") == "sdpa"
    assert training.resolve_batching("auto", "flash_attention_2")[0] == "padding_free"
    _installed(monkeypatch, "flash_attn", "flash_attn_interface")
    assert training.resolve_attn("auto", "cuda") == "flash_attention_3"  # Hopper
    monkeypatch.setattr(training.selection.torch.cuda, "get_device_capability", lambda *a: (8, 0))
    assert training.resolve_attn("auto", "cuda") == "flash_attention_2"  # FA3 is Hopper-only
    assert training.resolve_attn("eager", "cuda") == "eager"


def test_liger_only_on_cuda_with_trl_when_installed(monkeypatch):
    _installed(monkeypatch)
    assert training.resolve_liger("cuda", "trl") == (False, "liger-kernel not installed (pip install liger-kernel)")
    _installed(monkeypatch, "liger_kernel")
    assert training.resolve_liger("cuda", "trl") == (True, "liger-kernel installed, CUDA")
    assert training.resolve_liger("cpu", "trl")[0] is False
    assert training.resolve_liger("cuda", "unsloth")[0] is False


def test_sft_args_pass_the_flags_to_trl(tmp_path):
    cfg = config.TrainingConfig(max_steps=2)
    args = training.trainer.sft_args(cfg, tmp_path, "padding_free", "cpu", "float32", 10, liger=True)
    assert args.padding_free is True and args.use_liger_kernel is True
    args = training.trainer.sft_args(cfg, tmp_path, "length_grouped", "cpu", "float32", 10)
    assert args.padding_free is False and args.use_liger_kernel is False
