"""Which backend, attention kernel, fused kernels and batching mode a training run uses, and why
(``select_training_backend``, ``resolve_attn``, ``resolve_liger``, ``resolve_batching``), each
returned with its reason for the [training] line; ``unsloth_first`` imports Unsloth before the
libraries it patches."""
from __future__ import annotations

import importlib.util

import torch

from .. import device as device_rules
from ..config import BATCHING_MODES, TrainingConfig
from ..config import TRAINING_BACKENDS as BACKENDS

# attention kernels that run a flattened (padding-free) batch as separate sequences without a dense mask
VARLEN_ATTENTION = (
    "flash_attention_2",
    "flash_attention_3",
    "kernels-community/flash-attn",
    "kernels-community/vllm-flash-attn3",
)


def unsloth_installed() -> bool:
    return importlib.util.find_spec("unsloth") is not None


def select_training_backend(requested: str = "auto") -> tuple[str, str]:
    """Return ``(backend, reason)``: ``auto`` picks unsloth iff it is installed and CUDA is available,
    otherwise trl; ``unsloth`` without either raises a clear error."""
    requested = (requested or "auto").lower()
    if requested not in BACKENDS:
        raise ValueError(f"unknown training backend {requested!r}; choose one of {', '.join(BACKENDS)}")
    if requested == "trl":
        return "trl", "requested"
    installed, cuda = unsloth_installed(), device_rules.cuda_available()
    if requested == "unsloth":
        if not installed:
            raise RuntimeError(
                "backend='unsloth' was requested but unsloth is not installed "
                "(pip install unsloth, on a CUDA machine); use backend='auto' or 'trl' to train with TRL"
            )
        if not cuda:
            raise RuntimeError(
                "backend='unsloth' was requested but no CUDA GPU is available (Unsloth needs one); "
                "use backend='auto' or 'trl' to train with TRL"
            )
        return "unsloth", "requested"
    if not installed:
        return "trl", "unsloth: not installed"
    if not cuda:
        return "trl", "unsloth: no CUDA GPU"
    return "unsloth", "installed, CUDA available"


def unsloth_first(*sections) -> bool:
    """Import Unsloth now if any of ``sections`` (profile sections; the ``TrainingConfig`` ones count)
    will train with it (``select_training_backend``), so that it comes before transformers, TRL and PEFT
    in this process: Unsloth patches them on import and warns that its patches may not apply when they
    came first. Called by the stage entry points (``stages.py``) and by every training run, before
    either imports transformers. Returns whether Unsloth is (now) imported for a run."""
    import sys

    for cfg in sections:
        if not isinstance(cfg, TrainingConfig):
            continue
        try:
            backend, _ = select_training_backend(cfg.backend)
        except (RuntimeError, ValueError):
            continue  # the training run itself says why
        if backend == "unsloth":
            if "unsloth" not in sys.modules:
                try:
                    import unsloth  # noqa: F401
                except Exception:  # noqa: BLE001 - a broken install: the training run raises it where it trains
                    return False
            return True
    return False


def resolve_attn(requested: str, device: str) -> str:
    """``auto``: on CUDA a varlen FlashAttention kernel when installed (FA3's ``flash_attn_interface``
    on Hopper, else FA2's ``flash_attn``), so that padding-free batches run without a dense mask;
    sdpa otherwise."""
    if requested and requested != "auto":
        return requested
    if device == "cuda":
        if importlib.util.find_spec("flash_attn_interface") is not None and torch.cuda.get_device_capability()[0] == 9:
            return "flash_attention_3"
        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
    return "sdpa"


def resolve_liger(device: str, backend: str = "trl") -> tuple[bool, str]:
    """``(on, reason)``: Liger's fused kernels (RMSNorm, RoPE, SwiGLU) through TRL's
    ``use_liger_kernel``, on CUDA with the TRL backend when ``liger_kernel`` is installed. Unsloth
    brings its own kernels. The loss never materialises the logits of a long CoT either way: TRL >= 1.15
    trains SFT through its own fused LM head (and turns Liger's fused linear cross-entropy off), and the
    methods' losses go through ``lm_loss``."""
    if backend == "unsloth":
        return False, "unsloth uses its own kernels"
    if device != "cuda":
        return False, "Liger kernels are CUDA (Triton) kernels"
    if importlib.util.find_spec("liger_kernel") is None:
        return False, "liger-kernel not installed (pip install liger-kernel)"
    return True, "liger-kernel installed, CUDA"


def resolve_batching(requested: str, attn_implementation: str, backend: str = "trl") -> tuple[str, str]:
    """Return ``(mode, reason)``. ``auto``: padding-free where the attention kernel runs packed
    sequences natively (FlashAttention varlen, or Unsloth's own kernels), length-grouped batches
    otherwise (sdpa/eager would need a dense mask over the whole flattened batch)."""
    requested = (requested or "auto").lower()
    if requested not in BATCHING_MODES:
        raise ValueError(f"unknown batching mode {requested!r}; choose one of {', '.join(BATCHING_MODES)}")
    if requested != "auto":
        return requested, "requested"
    if backend == "unsloth" or attn_implementation in VARLEN_ATTENTION:
        return "padding_free", f"attn={attn_implementation} runs packed sequences"
    return "length_grouped", f"attn={attn_implementation}"
