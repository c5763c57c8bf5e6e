"""What 16-bit precision can get wrong, noticed: non-finite scores and losses stop the stage, degenerate
generations are counted.

fp16 on a GPU without bf16 (a T4, compute capability 7.5) is known to overflow with Qwen2.5: NaN scores
and losses, and generations of one character repeated to the end ("!!!!...", vLLM issue 14126). None of
it raises by itself: a NaN NLL loses every comparison (``min`` over NaN scores picks by position), a NaN
loss trains nothing, a degenerate answer is graded wrong like any other. Here:

* :class:`NonFiniteError`, the one error for a NaN or infinite score (``scoring.completion_nll``) or
  training loss (``training.OrionSFTTrainer.training_step``, every method's trainer): it names the
  precision it was computed in (dtype, GPU and compute capability) and the knob that fixes it
  (``generation.dtype`` for scores, ``training.dtype`` for losses);
* :func:`is_degenerate`: a generation whose text ends in one short string (at most
  ``DEGENERATE_MAX_UNIT`` characters, not only spaces) repeated at least ``DEGENERATE_MIN_REPEATS``
  times; :func:`degenerate_note` is the count the generating stages (exposure, reflection, evaluation,
  Tailored Learning's exams) print in their stage line.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = [
    "DEGENERATE_MAX_UNIT",
    "DEGENERATE_MIN_REPEATS",
    "NonFiniteError",
    "check_finite_loss",
    "check_finite_scores",
    "degenerate_note",
    "degenerate_unit",
    "is_degenerate",
    "n_degenerate",
    "precision_words",
]

DEGENERATE_MAX_UNIT = 8  # characters: "!", "!!", " the", ...
DEGENERATE_MIN_REPEATS = 32


class NonFiniteError(RuntimeError):
    """A score or a training loss came out NaN or infinite: the stage stops (the message names the
    precision it was computed in and the fix)."""


def precision_words(dtype: Any, device: Any) -> str:
    """``"float16 on Tesla T4 (sm 75)"``, ``"float32 on the CPU"``: a dtype and where it ran."""
    from .device import cuda_capability, dtype_name

    name = dtype_name(dtype)
    dev = str(device)
    if not dev.startswith("cuda"):
        return f"{name} on the CPU" if dev.startswith("cpu") else f"{name} on {dev}"
    cap = cuda_capability(dev)
    gpu = "a CUDA GPU"
    try:
        import torch

        gpu = torch.cuda.get_device_name(dev)
    except Exception:  # noqa: BLE001 - the name is only words in a message
        pass
    return f"{name} on {gpu}" + (f" (sm {cap[0]}{cap[1]})" if cap else "")


def _sixteen_bit(dtype: Any) -> bool:
    from .device import dtype_name

    return dtype_name(dtype) in ("float16", "bfloat16")


def _fix(knob: str, dtype: Any, device: Any) -> str:
    from .device import bf16_capable, dtype_name

    if not _sixteen_bit(dtype):
        return (f"in {dtype_name(dtype)} this is not a precision problem: the model's weights are likely broken "
                "(a training run that diverged?); look at the model that ran")
    also = " (or bfloat16: this GPU has it)" if dtype_name(dtype) == "float16" and bf16_capable(str(device)) else ""
    return (f"16-bit overflow (Qwen2.5 in float16 is known to do this); set {knob}=float32{also}, "
            f"e.g. --set {knob}=float32, and run the stage again")


def check_finite_scores(scores: Iterable[float], scored: Iterable[bool], dtype: Any, device: Any,
                        what: str = "completion scores (mean token NLL)") -> None:
    """Raise :class:`NonFiniteError` when a score of a completion that has scored tokens (``scored``) is
    NaN or infinite. A completion without scored tokens is NaN by definition and passes."""
    bad = total = 0
    for score, has_tokens in zip(scores, scored):
        total += 1
        if has_tokens and not math.isfinite(score):
            bad += 1
    if bad:
        raise NonFiniteError(f"{bad} of {total} {what} are NaN or infinite, computed in "
                             f"{precision_words(dtype, device)}: {_fix('generation.dtype', dtype, device)}")


def check_finite_loss(loss: float, step: int, dtype: Any, device: Any, who: str = "training") -> None:
    """Raise :class:`NonFiniteError` when a training loss is NaN or infinite."""
    if not math.isfinite(loss):
        raise NonFiniteError(f"the {who} loss is {loss} at step {step}, computed in {precision_words(dtype, device)}: "
                             f"{_fix('training.dtype', dtype, device)}")


# --------------------------------------------------------------------------------------------------
# degenerate generations


def degenerate_unit(text: str) -> str | None:
    """The short string ``text`` repeats to its end (trailing whitespace aside), when it repeats it at
    least ``DEGENERATE_MIN_REPEATS`` times and it is at most ``DEGENERATE_MAX_UNIT`` characters and not
    only whitespace; else None."""
    t = text.rstrip()
    n = len(t)
    for size in range(1, DEGENERATE_MAX_UNIT + 1):
        if n < size * DEGENERATE_MIN_REPEATS:
            break
        unit = t[n - size:]
        if not unit.strip():
            continue
        repeats = 1
        while repeats < DEGENERATE_MIN_REPEATS and t[n - (repeats + 1) * size: n - repeats * size] == unit:
            repeats += 1
        if repeats >= DEGENERATE_MIN_REPEATS:
            return unit
    return None


def is_degenerate(text: str) -> bool:
    """One short string repeated to the end of ``text`` (``degenerate_unit``): "!!!!!!..."."""
    return degenerate_unit(text) is not None


def n_degenerate(texts: Iterable[str]) -> int:
    return sum(is_degenerate(t) for t in texts)


def degenerate_note(texts: Iterable[str], what: str = "generations") -> str:
    """``"0 of 120 generations degenerate"``, with what it means when there are some (for a stage line)."""
    texts = list(texts)
    n = n_degenerate(texts)
    note = f"{n} of {len(texts)} {what} degenerate"
    if n:
        note += (" (one short string repeated to the end, e.g. '!!!!': a float16 symptom; "
                 "generation.dtype=float32 is the fix if it is)")
    return note
