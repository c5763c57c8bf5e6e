"""LoRA adapters as a method's model: ``models/<method>/model/`` holds PEFT's adapter (``adapter_config.json``,
``adapter_model.safetensors``) and the tokenizer, not a merged copy of the base (``training.merge_lora`` false).

A 7B student's merged copy is about 15 GB in bf16, its rank-64 adapter a few hundred MB: with five methods,
EDIT's stage 1 and Tailored Learning's rounds, a seed keeps about 90 GB merged against a few GB of adapters.
Whoever loads a method's model goes through here: transformers and scoring load the base and apply the
adapter (merged in memory, the same weights a merged save would give), training continues the adapter
(EDIT's stage 2, Tailored Learning's next round), and vLLM serves it (``enable_lora`` + ``LoRARequest``).
The adapter's base is the one PEFT recorded (``base_model_name_or_path``): the student the run trained.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

ADAPTER_CONFIG = "adapter_config.json"
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's max_lora_rank accepts these


def is_adapter(path) -> bool:
    """A folder saved by PEFT (``adapter_config.json``), not a full model."""
    return isinstance(path, (str, os.PathLike)) and (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_config(path) -> dict:
    return json.loads((Path(path) / ADAPTER_CONFIG).read_text(encoding="utf-8"))


def adapter_base(path) -> str:
    """The base model the adapter was trained on (a Hub id or a local folder)."""
    base = adapter_config(path).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{path}: {ADAPTER_CONFIG} names no base_model_name_or_path")
    return str(base)


def model_source(path) -> str:
    """The folder (or Hub id) holding the full weights: the adapter's base, else ``path`` itself."""
    return adapter_base(path) if is_adapter(path) else os.fspath(path)


def vllm_lora_rank(path) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds this adapter's rank."""
    r = int(adapter_config(path).get("r", 16))
    return next((k for k in VLLM_LORA_RANKS if k >= r), r)


def load_causal_lm(path, **kwargs):
    """``AutoModelForCausalLM.from_pretrained(path, **kwargs)``; for an adapter, the base with the adapter
    merged in memory (inference: generation, scoring)."""
    from transformers import AutoModelForCausalLM

    if not is_adapter(path):
        return AutoModelForCausalLM.from_pretrained(os.fspath(path), **kwargs)
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(adapter_base(path), **kwargs)
    return PeftModel.from_pretrained(base, os.fspath(path)).merge_and_unload()


def load_trainable(path, **kwargs):
    """An adapter to train further: its base (``kwargs`` as for the base, e.g. 4-bit) with the adapter
    loaded trainable (a PEFT model: the trainer takes it as it is, no new adapter on top)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(adapter_base(path), **kwargs)
    return PeftModel.from_pretrained(base, os.fspath(path), is_trainable=True)
