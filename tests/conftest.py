"""Shared pytest fixtures.

``tiny_model_dir``: a random tiny Llama (~100k parameters) with a tokenizer built locally, saved in
Hugging Face format, so tests exercise the very same ``from_pretrained`` / chat-template code paths
as a real student, in well under a second and without any download.

The tokenizer is byte-level BPE without merges (every string round-trips) plus Qwen-style chat
special tokens: ``<|endoftext|>`` (pad), ``<|im_start|>``, ``<|im_end|>`` (EOS, the end-of-turn
token). Chat template: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message and
``<|im_start|>assistant\\n`` as the generation prompt. Word embeddings are untied, so a test may
edit the output layer without changing how prompts are read.

``build_tiny_tokenizer`` / ``build_tiny_model_dir`` are plain functions for tests that need a
variant (``from conftest import build_tiny_model_dir``).
"""
from __future__ import annotations

import os
from typing import Any

import pytest


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


# tests/gpu/ (the GPU tier, `make test-gpu`) is collected only where CUDA is present
collect_ignore = [] if _cuda_available() else ["gpu"]


STACK = ("torch", "transformers", "trl", "peft", "accelerate", "datasets")


def pytest_report_header(config):
    """The library stack the tests run on (`make test`: the base dependencies' newest; `make test-gpustack`: the
    `gpu` extra's), and whether the GPU tier is collected."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    lines = ["library stack: " + ", ".join(f"{name} {installed(name)}" for name in STACK)]
    return lines + ([] if _cuda_available() else ["tests/gpu: not collected (the GPU tier needs CUDA)"])

QWEN_STYLE_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
PAD_TOKEN, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, IM_START, IM_END]

TINY_LLAMA_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": False,
}


def build_tiny_tokenizer():
    """Byte-level BPE (256 byte tokens, no merges) + Qwen-style chat tokens, as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(byte_alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        chat_template=QWEN_STYLE_CHAT_TEMPLATE,
        model_max_length=TINY_LLAMA_CONFIG["max_position_embeddings"],
    )


def build_tiny_model_dir(path, seed: int = 0, architecture: str = "llama", **config_overrides) -> str:
    """Save a random tiny Llama (or Qwen2: ``architecture="qwen2"``) + the tiny tokenizer under
    ``path``; return the path as a string."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    LlamaConfig, LlamaForCausalLM = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    }[architecture]

    tokenizer = build_tiny_tokenizer()
    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        **{**TINY_LLAMA_CONFIG, **config_overrides},
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id, do_sample=False)
    path = os.fspath(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """Directory of a saved random tiny Llama (~100k params) and its Qwen-style chat tokenizer."""
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)
