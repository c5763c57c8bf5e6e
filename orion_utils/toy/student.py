"""The toy student: a tiny decoder-only model of a real architecture (Llama or Qwen2), randomly
initialised and saved in Hugging Face format together with the toy tokenizer, so the very same
``AutoTokenizer``/``AutoModelForCausalLM.from_pretrained`` code paths load it as a real student."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from ..knobs import knob, validate

ARCHITECTURES = ("llama", "qwen2")


@dataclass
class ToyStudentConfig:
    """Size of the toy student (the default has about 0.7 M parameters)."""

    architecture: str = knob("llama", "model family of the toy student", choices=ARCHITECTURES)
    hidden_size: int = knob(128, "hidden size", ge=1)
    num_layers: int = knob(3, "transformer layers", ge=1)
    num_heads: int = knob(4, "attention heads", ge=1)
    num_kv_heads: int = knob(4, "key/value heads (grouped-query attention)", ge=1)
    intermediate_size: int = knob(384, "MLP width", ge=1)
    max_position_embeddings: int = knob(1024, "longest sequence the model takes", ge=1)
    rope_theta: float = knob(10000.0, "RoPE base", gt=0.0)
    tie_word_embeddings: bool = knob(True, "share the input and output embeddings")
    initializer_range: float = knob(0.02, "std of the initial weights", gt=0.0)

    def __post_init__(self) -> None:
        divisible = (not isinstance(self.num_heads, int) or not isinstance(self.num_kv_heads, int) or min(
            self.num_heads, self.num_kv_heads) < 1 or not (self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads))
        validate(self, [] if divisible else ["hidden_size: must divide by num_heads, and num_heads by num_kv_heads"])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def make_model_config(cfg: ToyStudentConfig, tokenizer):
    """The transformers config for ``cfg`` with the tokenizer's vocabulary and special tokens."""
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_word_embeddings,
        initializer_range=cfg.initializer_range,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
    )
    if cfg.architecture == "llama":
        return LlamaConfig(**common)
    return Qwen2Config(**common)


def count_parameters(model) -> int:
    """Distinct trainable parameters (tied embeddings counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def build_toy_student(
    out_dir: Union[str, Path],
    cfg: Optional[ToyStudentConfig] = None,
    seed: int = 0,
    tokenizer=None,
) -> Path:
    """Randomly initialise a toy student and ``save_pretrained`` model + tokenizer into ``out_dir``.

    ``tokenizer``: an existing toy tokenizer (default: build one). Returns ``out_dir``.
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from .tokenizer import build_toy_tokenizer

    cfg = cfg or ToyStudentConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer if tokenizer is not None else build_toy_tokenizer(seed=0)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(make_model_config(cfg, tokenizer), dtype=torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=256,
    )
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out
