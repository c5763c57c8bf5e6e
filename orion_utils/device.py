"""Where a model runs, in which precision, and on how many CPU threads: the one place for these rules.

Device: ``"auto"`` is CUDA when torch sees a GPU, else the CPU; a device asked for by name is kept.

Precision (``resolve_dtype``, ``training_load_dtype``, ``trainer_autocast``, ``saved_dtype``):

* compute dtype, ``"auto"``: bfloat16 on a CUDA GPU that supports it, else float16 on CUDA, float32 on
  a CPU (CPU kernels for 16-bit floats are slow: vLLM's CPU build runs bf16 at half the speed of float32);
* training, full fine-tuning: the weights load in float32 (float32 master weights: small updates to
  16-bit weights round away) and the Trainer autocasts to the compute dtype on CUDA;
* training with LoRA on CUDA, or QLoRA: the frozen base loads in the compute dtype (PEFT keeps the
  adapters in float32);
* on CUDA the trained model is saved in the compute dtype, like the base checkpoints; on a CPU as trained.

CPU threads (``cpu_threads_for``, ``torch_threads``): a model under ``SMALL_MODEL_PARAMS`` (200 M)
parameters runs on one torch intra-op thread on a CPU. Its matrix products are too small to split across
cores, and OpenMP's synchronisation per operation then dominates: on 2 busy cores a 0.1 M-parameter Llama
decodes 10-50x faster with 1 thread than with 2, and SmolLM2-135M (batches of 8 and 32) 2.5-5x faster.
Bigger models and GPUs keep torch's setting. A count asked for explicitly always wins.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "SMALL_MODEL_PARAMS",
    "cpu_threads_for",
    "cuda_available",
    "device_and_dtype",
    "dtype_name",
    "n_parameters",
    "resolve_device",
    "resolve_dtype",
    "saved_dtype",
    "torch_threads",
    "trainer_autocast",
    "training_load_dtype",
]

SMALL_MODEL_PARAMS = 200_000_000

_DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}


# --------------------------------------------------------------------------------------------------
# device


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_device(device: str | None = "auto") -> str:
    """``"auto"``: cuda if available, else cpu; anything else is passed through."""
    if device in (None, "auto"):
        return "cuda" if cuda_available() else "cpu"
    return str(device)


# --------------------------------------------------------------------------------------------------
# precision


def resolve_dtype(dtype: Any = "auto", device: str = "cpu"):
    """The compute dtype. ``"auto"``: bf16 on a CUDA device that supports it, else fp16 on CUDA,
    float32 elsewhere; a name (``"bf16"``, ``"float32"`` ...) or a ``torch.dtype`` is taken as is."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if str(device).startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    name = _DTYPE_NAMES.get(str(dtype).lower().replace("torch.", ""))
    if name is None:
        raise ValueError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    return getattr(torch, name)


def dtype_name(dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).replace("torch.", "")


def device_and_dtype(device: str | None = "auto", dtype: Any = "auto") -> tuple[str, str]:
    """``(device, dtype name)`` as ``resolve_device`` and ``resolve_dtype`` pick them."""
    dev = resolve_device(device)
    return dev, dtype_name(resolve_dtype(dtype, dev))


def training_load_dtype(device: str, dtype: str, *, use_lora: bool, load_in_4bit: bool):
    """The dtype a model's weights load in for training with compute dtype ``dtype``: the compute dtype
    for a frozen base (LoRA on CUDA, QLoRA), float32 master weights for full fine-tuning."""
    import torch

    if load_in_4bit or (device == "cuda" and use_lora):
        return resolve_dtype(dtype, device)
    return torch.float32


def trainer_autocast(device: str, dtype: str) -> dict:
    """The Trainer's mixed-precision flags: autocast to the compute dtype on CUDA, none on a CPU."""
    return {"bf16": device == "cuda" and dtype == "bfloat16", "fp16": device == "cuda" and dtype == "float16"}


def saved_dtype(device: str, dtype: str):
    """The dtype a trained model is saved in: the compute dtype on CUDA (16-bit, like the base
    checkpoints); None on a CPU (saved as trained)."""
    return resolve_dtype(dtype, device) if device == "cuda" else None


# --------------------------------------------------------------------------------------------------
# CPU threads


def n_parameters(model) -> int | None:
    """Parameters of a loaded model, or of a local model directory (read from its safetensors headers;
    ``*.bin`` weights are estimated at 2 bytes a parameter, an upper bound for 16- and 32-bit weights).
    None for anything else (a hub id, a directory without weights)."""
    if hasattr(model, "parameters"):
        return sum(p.numel() for p in model.parameters())
    if not isinstance(model, (str, os.PathLike)) or not Path(model).is_dir():
        return None
    path = Path(model)
    total = 0
    for f in sorted(path.glob("*.safetensors")):
        with f.open("rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        total += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    if not total:
        total = sum(f.stat().st_size for f in path.glob("*.bin")) // 2
    return total or None


def cpu_threads_for(model, device: str, requested: int | str | None = "auto") -> int | None:
    """Torch intra-op threads to run ``model`` (a loaded model or a local model directory) on ``device``
    with; None leaves torch's setting alone. An int or None in ``requested`` is returned as is;
    ``"auto"``: 1 for a model under ``SMALL_MODEL_PARAMS`` parameters on a CPU, else None."""
    if requested is None or isinstance(requested, int):
        return requested
    if requested != "auto":
        raise ValueError(f"num_threads must be an int, None or 'auto', got {requested!r}")
    if str(device).startswith("cpu"):
        n = n_parameters(model)
        if n is not None and n < SMALL_MODEL_PARAMS:
            return 1
    return None


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Use ``n`` torch intra-op threads inside the block and restore the previous setting after it;
    ``n`` None or 0 (or below) leaves torch's setting alone."""
    import torch

    if not n or n < 0 or n == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
