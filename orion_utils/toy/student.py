"""The toy student: a tiny decoder-only model of a real architecture (Llama or Qwen2), randomly
initialised and saved in Hugging Face format together with the toy tokenizer, so the very same
``AutoTokenizer``/``AutoModelForCausalLM.from_pretrained`` code paths load it as a real student."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

ARCHITECTURES = ("llama", "qwen2")


@dataclass
class ToyStudentConfig:
    """Size of the toy student (the default has about 0.7 M parameters)."""

    architecture: str = "llama"  # "llama" or "qwen2"
    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    num_kv_heads: int = 4
    intermediate_size: int = 384
    max_position_embeddings: int = 1024
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size must divide by num_heads, and num_heads by num_kv_heads")

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
