"""Where a model runs, in which precision, and on how many CPU threads: the one place for these rules.

Device: ``"auto"`` is CUDA when torch sees a GPU, else the CPU; a device asked for by name is kept. An
NVIDIA GPU that torch cannot use (``probe_gpu``: the driver is there, ``torch.cuda.is_available()`` is
False) stops ``"auto"`` with :class:`GPUUnusableError`, which names the driver, the CUDA version torch is
built for, the driver that needs and the fix (``check_gpu_usable``); it never falls back to the CPU silently.

Precision (``resolve_dtype``, ``training_load_dtype``, ``trainer_autocast``, ``saved_dtype``):

* compute dtype, ``"auto"``: bfloat16 on a CUDA GPU of compute capability >= 8.0 (Ampere and later), else
  float16 on CUDA (with loss scaling in training: ``fp16=True``), float32 on a CPU (CPU kernels for
  16-bit floats are slow: vLLM's CPU build runs bf16 at half the speed of float32). The capability
  decides, not ``torch.cuda.is_bf16_supported()``, which counts emulation and answers True on a T4 (7.5),
  where vLLM refuses bf16 and Unsloth's trainer stops on a float16 model with bf16 arguments. bf16 asked
  for by name on such a GPU is refused (``resolve_dtype`` raises), never silently changed;
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
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BF16_MIN_CAPABILITY",
    "CUDA_MIN_DRIVER",
    "SMALL_MODEL_PARAMS",
    "GPUProbe",
    "GPUUnusableError",
    "bf16_capable",
    "check_gpu_usable",
    "cpu_threads_for",
    "cuda_available",
    "cuda_capability",
    "device_and_dtype",
    "dtype_name",
    "gpu_problem",
    "n_parameters",
    "probe_gpu",
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
DTYPE_CHOICES = ("auto", *_DTYPE_NAMES)  # the names a profile's dtype knobs take (config.DTYPES)


# --------------------------------------------------------------------------------------------------
# device


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def vllm_device() -> str:
    """The device the installed vLLM runs on: its platform's device type ("cuda", "cpu", ...)."""
    try:
        from vllm.platforms import current_platform

        return str(current_platform.device_type)
    except (ImportError, AttributeError):  # a vLLM without this API: it runs where torch sees CUDA
        return "cuda" if cuda_available() else "cpu"


def resolve_device(device: str | None = "auto") -> str:
    """``"auto"``: cuda if available, else cpu (after ``check_gpu_usable``: an NVIDIA GPU torch cannot
    use raises :class:`GPUUnusableError`); anything else is passed through."""
    if device in (None, "auto"):
        if cuda_available():
            return "cuda"
        check_gpu_usable()
        return "cpu"
    return str(device)


# --------------------------------------------------------------------------------------------------
# a GPU that torch cannot use

# The oldest Linux driver each CUDA major version runs on (NVIDIA's CUDA compatibility guide: minor
# version compatibility within a major version).
CUDA_MIN_DRIVER = {12: "525.60.13", 13: "580.65.06"}
# Where the CUDA 12 builds of the gpu extra's torch come from (PyTorch 2.14 ships CUDA 12.6, 13.0 and
# 13.2 wheels; 12.6 is the last CUDA 12 line). docs/gpu.md "GPU install" and the Makefile's setup-gpu-cu12
# name the same route; tests/test_packaging.py checks they agree.
CUDA12_TORCH_INDEX = "https://download.pytorch.org/whl/cu126"
# What the CUDA 12 route installs from that index, in one pip command: torch and every package Unsloth
# (2026.10.9, and unsloth_zoo) requires that has CUDA builds there: torchvision (0.29.0 pins torch 2.14.0),
# xformers, torchao; their PyPI wheels are CUDA 13 builds that pip would otherwise put beside a cu126 torch.
# bitsandbytes' one PyPI wheel carries a library per CUDA version, and triton comes with torch.
CUDA12_INDEX_PACKAGES = ("torch==2.14.0", "torchvision==0.29.0", "xformers", "torchao")


def cuda12_install_command() -> str:
    """The first step of the CUDA 12 route (docs/gpu.md, GPU install; ``make setup-gpu-cu12``; the Colab cell)."""
    return f"pip install {' '.join(CUDA12_INDEX_PACKAGES)} --index-url {CUDA12_TORCH_INDEX}"

_NVIDIA_VERSION_FILE = "/proc/driver/nvidia/version"
_NVIDIA_DEVICE = "/dev/nvidia0"


class GPUUnusableError(RuntimeError):
    """An NVIDIA GPU is present but torch cannot use it (driver too old for torch's CUDA, a CPU build of
    torch, ...): the run stops instead of carrying on on the CPU."""


@dataclass(frozen=True)
class GPUProbe:
    """What this machine says about its NVIDIA GPU, and what torch says."""

    gpu_present: bool  # the NVIDIA driver is loaded or a device node exists
    driver: str | None  # e.g. "550.54.15"
    torch_version: str
    torch_cuda: str | None  # the CUDA version torch is built for (None: a CPU build)
    cuda_available: bool
    visible_devices: str | None = None  # CUDA_VISIBLE_DEVICES, when set


def _driver_from_text(text: str) -> str | None:
    m = re.search(r"\b(\d{3,4}\.\d{1,3}(?:\.\d{1,3})?)\b", text)
    return m.group(1) if m else None


def probe_gpu(version_file: str | os.PathLike = _NVIDIA_VERSION_FILE, device_node: str | os.PathLike = _NVIDIA_DEVICE,
              nvidia_smi: str | None = "nvidia-smi") -> GPUProbe:
    """Read the NVIDIA driver (``/proc/driver/nvidia/version``, else ``nvidia-smi``), whether this
    process has a GPU (its device node, else ``nvidia-smi`` answering: the driver file alone is also
    seen in a container given no GPU), and torch's view (version, CUDA build, ``is_available``). Every
    source is an argument, so a test can stand in for a machine."""
    import torch

    driver = None
    vf = Path(version_file)
    if vf.is_file():
        with contextlib.suppress(OSError, IndexError):
            driver = _driver_from_text(vf.read_text().splitlines()[0])
    present = Path(device_node).exists()
    smi = shutil.which(nvidia_smi) if nvidia_smi else None
    if (driver is None or not present) and smi:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20, check=False)
            if out.returncode == 0 and out.stdout.strip():
                present, driver = True, _driver_from_text(out.stdout) or driver
    return GPUProbe(gpu_present=present, driver=driver, torch_version=torch.__version__.split("+")[0],
                    torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
                    visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v))


def gpu_problem(p: GPUProbe) -> str | None:
    """Why torch cannot use the NVIDIA GPU of probe ``p``, with the fix; None when there is no GPU, torch
    uses it, or the GPU is hidden on purpose (``CUDA_VISIBLE_DEVICES`` empty or -1)."""
    if not p.gpu_present or p.cuda_available:
        return None
    if p.visible_devices is not None and p.visible_devices.strip() in ("", "-1"):
        return None  # hidden on purpose: a CPU run
    if p.torch_cuda is None:
        return None  # a CPU build of torch is a choice (`make setup` installs one): check_gpu_usable notes it
    driver = p.driver or "unknown"
    route = (f"install the CUDA 12 builds (docs/gpu.md, GPU install: {cuda12_install_command()}, then "
             "pip install -e \".[gpu-cu12]\"; or make setup-gpu-cu12) or upgrade the driver")
    major = _version_tuple(p.torch_cuda)[0]
    needed = CUDA_MIN_DRIVER.get(major)
    if needed and p.driver and _version_tuple(p.driver) < _version_tuple(needed):
        return (f"torch {p.torch_version} is built for CUDA {p.torch_cuda}, which needs NVIDIA driver >= "
                f"{needed.split('.')[0]} ({needed}); this machine has driver {p.driver}: {route}")
    return (f"this machine has an NVIDIA GPU (driver {driver}) but torch {p.torch_version} (CUDA {p.torch_cuda}) "
            "cannot use it (torch.cuda.is_available() is False): run nvidia-smi; if it fails, the driver is "
            "broken; if CUDA_VISIBLE_DEVICES hides the GPU, unset it; set CUDA_VISIBLE_DEVICES= (empty) to run on "
            "the CPU on purpose")


# the probe ``check_gpu_usable`` uses; a test replaces it to stand in for a machine
gpu_probe = probe_gpu


def check_gpu_usable(probe: GPUProbe | None = None) -> None:
    """Raise :class:`GPUUnusableError` when an NVIDIA GPU is present but torch cannot use it. A CPU build
    of torch on a machine with a GPU is a choice (the CPU set-up installs one): said once in a warning."""
    p = probe if probe is not None else gpu_probe()
    problem = gpu_problem(p)
    if problem:
        raise GPUUnusableError(problem)
    if p.gpu_present and p.torch_cuda is None and not p.cuda_available:
        import warnings

        warnings.warn(f"this machine has an NVIDIA GPU (driver {p.driver or 'unknown'}) but torch {p.torch_version} "
                      "is a CPU build: running on the CPU (pip install '.[gpu]' for the GPU; docs/gpu.md, GPU install)",
                      RuntimeWarning, stacklevel=3)


# --------------------------------------------------------------------------------------------------
# precision


BF16_MIN_CAPABILITY = (8, 0)  # Ampere: native bf16 tensor cores; vLLM refuses bf16 below


def cuda_capability(device: str = "cuda") -> tuple[int, int] | None:
    """The compute capability of a CUDA ``device`` (``(7, 5)`` on a T4), None without CUDA."""
    import torch

    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return None
    index = str(device).partition(":")[2]
    return tuple(torch.cuda.get_device_capability(int(index) if index else None))[:2]


def bf16_capable(device: str = "cuda") -> bool:
    """bf16 in hardware: compute capability >= 8.0. Not ``torch.cuda.is_bf16_supported()``, which
    counts emulation and answers True on a T4 (7.5)."""
    cap = cuda_capability(device)
    return cap is not None and cap >= BF16_MIN_CAPABILITY


def resolve_dtype(dtype: Any = "auto", device: str = "cpu"):
    """The compute dtype. ``"auto"``: bf16 on a CUDA device of compute capability >= 8.0, else fp16 on
    CUDA, float32 elsewhere; a name (``"bf16"``, ``"float32"`` ...) or a ``torch.dtype`` is taken as is,
    except bf16 on a CUDA GPU below 8.0, which is refused with a ``ValueError`` (vLLM refuses it and
    Unsloth's trainer stops on it there)."""
    import torch

    if dtype in (None, "auto"):
        if str(device).startswith("cuda"):
            return torch.bfloat16 if bf16_capable(device) else torch.float16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    else:
        name = _DTYPE_NAMES.get(str(dtype).lower().replace("torch.", ""))
        if name is None:
            raise ValueError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
        resolved = getattr(torch, name)
    if resolved is torch.bfloat16 and str(device).startswith("cuda"):
        cap = cuda_capability(device)
        if cap is not None and cap < BF16_MIN_CAPABILITY:
            gpu = "this GPU"
            with contextlib.suppress(Exception):
                gpu = torch.cuda.get_device_name(device)
            raise ValueError(
                f"dtype bfloat16 needs a GPU of compute capability >= {BF16_MIN_CAPABILITY[0]}.{BF16_MIN_CAPABILITY[1]}; "
                f"{gpu} has {cap[0]}.{cap[1]} (bf16 only emulated: vLLM refuses it, Unsloth's trainer stops): "
                "use dtype: auto (float16 there) or float16"
            )
    return resolved


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


def allowed_cores() -> list[int]:
    """The CPU cores this process may run on (its affinity; elsewhere than Linux, every core)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return list(range(os.cpu_count() or 1))


def cores_per_rank(ranks: int, cores: list[int] | None = None) -> int:
    """The cores each of ``ranks`` processes sharing ``cores`` (default: this machine's, ``allowed_cores``) gets,
    at least one: the one split of the cores between data-parallel ranks, for training (``training.launch``)
    and generation (``parallel_generation``)."""
    return max(1, len(cores if cores is not None else allowed_cores()) // max(1, ranks))


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
