"""One model at a time: every model ``orion_utils.generation`` loads is registered here.

A stage holds one model on the GPU at a time: vLLM takes `gpu_memory_utilization` of the card at
start-up, after checking that much is free, so a second model beside it (or a trainer's leftovers
before it) runs out of memory. Every model the generation modules load is registered (a weak
reference), and every load first releases what the process no longer uses (`release_memory`).
"""
from __future__ import annotations

import contextlib
import gc
import weakref
from dataclasses import dataclass, field

_RESIDENT: list = []  # (weakref to a model this module loaded, what it is)
_WATCHES: list = []


@dataclass
class ResidentWatch:
    """What ``watch_resident`` saw: every load through this module, and the most models alive at once."""

    loads: list = field(default_factory=list)
    peak: int = 0
    together: list = field(default_factory=list)  # the models alive at a load that made more than one


def resident_models() -> list[str]:
    """The models loaded through this module (generators, scoring models) still alive, garbage
    collected first: what a stage holds in memory now."""
    gc.collect()
    _RESIDENT[:] = [(ref, what) for ref, what in _RESIDENT if ref() is not None]
    return [what for _, what in _RESIDENT]


def track_model(obj, what: str):
    """Register a model just loaded; returns it."""
    _RESIDENT.append((weakref.ref(obj), what))
    if _WATCHES:
        now = resident_models()
        for watch in _WATCHES:
            watch.loads.append(what)
            watch.peak = max(watch.peak, len(now))
            if len(now) > 1:
                watch.together.append(now)
    return obj


@contextlib.contextmanager
def watch_resident():
    """``with watch_resident() as w: ...``: ``w.peak`` is the most models loaded through this module
    that were alive at once inside the block (a stage keeps it at 1), ``w.loads`` what loaded."""
    watch = ResidentWatch()
    _WATCHES.append(watch)
    try:
        yield watch
    finally:
        _WATCHES.remove(watch)


def live_models(device: str | None = None) -> list[str]:
    """Every model object alive in this process (a garbage-collector scan, collected first): top-level
    transformers models (a trainer's included) and vLLM engines; ``device="cuda"``: those with weights
    on a GPU only. Each as "class (N M parameters on device)"."""
    import sys

    from .device import vllm_device

    gc.collect()
    modeling = sys.modules.get("transformers.modeling_utils")
    llm_module = sys.modules.get("vllm.entrypoints.llm")
    kinds = tuple(k for k in (getattr(modeling, "PreTrainedModel", None), getattr(llm_module, "LLM", None)) if k)
    if not kinds:
        return []
    found = []
    for obj in gc.get_objects():
        try:
            if isinstance(obj, kinds):
                found.append(obj)
        except Exception:  # noqa: BLE001, S112 - an object whose __class__ cannot be read is no model
            continue
    inner = {id(sub) for m in found if hasattr(m, "modules") for sub in list(m.modules())[1:]}
    out = []
    for m in found:
        if id(m) in inner:
            continue  # a model's own sub-model (Qwen2ForCausalLM.model)
        params = list(m.parameters()) if hasattr(m, "parameters") else []
        where = str(params[0].device) if params else (vllm_device() if kinds[-1] is not kinds[0] else "?")
        if device is not None and not where.startswith(device):
            continue
        out.append(f"{type(m).__name__} ({sum(p.numel() for p in params) / 1e6:.1f} M parameters on {where})")
    return out


def release_memory(before: str = "") -> list[str]:
    """Free what the process no longer uses: collect garbage (a finished trainer and its model sit in
    reference cycles, alive until collected) and hand torch's cached CUDA blocks back to the driver
    (vLLM's start-up check reads the driver's free memory). With ``before`` (the model about to load),
    on a GPU: the models still on it are named in one line and returned."""
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return []
    torch.cuda.empty_cache()
    if not before:
        return []
    left = live_models("cuda")
    if left:
        free, total = torch.cuda.mem_get_info()
        print(f"[memory] before loading {before}: still on the GPU: {'; '.join(left)} "
              f"({free / 2**30:.1f} of {total / 2**30:.1f} GiB free)", flush=True)
    return left
