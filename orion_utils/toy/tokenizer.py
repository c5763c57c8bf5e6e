"""The toy student's tokenizer, built locally with the ``tokenizers`` library (no hub access).

Design: spaces become ``▁`` and stay attached to the piece that follows; every digit is its own
piece (so numbers are digit sequences, as arithmetic needs); punctuation and newlines are single
pieces; a BPE model trained on toy-domain text merges each word into one token, and falls back to
single characters for anything else, so any printable-ASCII text round-trips exactly through
``decode``. ``<think>``/``</think>`` are single (non-special) tokens. The chat template is
Qwen-style (``<|im_start|>role\\n...<|im_end|>\\n``); ``<|im_end|>`` is the EOS token generation
stops at, ``<|endoftext|>`` the pad token. ``save_pretrained`` writes it in Hugging Face format and
``AutoTokenizer.from_pretrained(dir)`` loads it back.
"""
from __future__ import annotations

import string
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ..chat import DEFAULT_PROMPT_TEMPLATE
from ..records import format_cot

SPACE = "\u2581"  # ▁
PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = [PAD_TOKEN, IM_START, EOS_TOKEN, UNK_TOKEN]
THINK_TOKENS = ["<think>", "</think>"]

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_PIECE_RE = f"{SPACE}?[A-Za-z]+|{SPACE}?[0-9]|\\n|{SPACE}?[^A-Za-z0-9{SPACE}\\n]|{SPACE}"


def toy_corpus(n_problems: int = 300, seed: int = 0) -> Iterator[str]:
    """Text covering the toy vocabulary: questions of every split, teacher CoTs in every wording
    and style (correct and slipped), reflections of every kind in both voices, chat roles, and
    the default prompt template."""
    from .domain import ITEMS, NAMES, ToyDomainConfig, generate_problems
    from .reflect import KINDS, Divergence, reflection_text
    from .teacher import N_VARIANTS, STYLES, write_cot
    from .domain import gold_steps

    yield "system user assistant"
    yield DEFAULT_PROMPT_TEMPLATE.format(question="")
    yield " ".join(n for n, _, _ in NAMES) + " " + " ".join(p for _, p, q in NAMES) + " " + " ".join(ITEMS)
    cfg = ToyDomainConfig(seed=seed)
    for split in ("train", "test", "hard"):
        for i, p in enumerate(generate_problems(n_problems, cfg, seed, split)):
            yield p.question
            variant, style = i % N_VARIANTS, STYLES[i % len(STYLES)]
            yield format_cot(*write_cot(p, variant, style))
            yield format_cot(*write_cot(p, variant, style, slip_at=i % len(p.meta["steps"])))
            gold = gold_steps(p)
            k = i % len(gold)
            wrong = gold[k].__class__(gold[k].a + 1, "-" if gold[k].op == "+" else "+", gold[k].b + 1, 3)
            kind = KINDS[i % len(KINDS)]
            div = Divergence(k, kind, gold[k], wrong, "41")
            for voice in ("self", "teacher"):
                for v in range(4):
                    yield reflection_text(p, div, v, voice)


def build_toy_tokenizer(
    out_dir: Optional[Union[str, Path]] = None, extra_texts: Iterable[str] = (), seed: int = 0
) -> PreTrainedTokenizerFast:
    """Train the toy tokenizer and wrap it; with ``out_dir``, also ``save_pretrained`` it there."""
    tok = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tok.normalizer = normalizers.Replace(" ", SPACE)
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(_PIECE_RE), behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.Fuse()])
    alphabet = sorted(set(string.printable) - set(" \t\r\x0b\x0c") | {SPACE})
    trainer = trainers.BpeTrainer(
        vocab_size=4000,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    texts = list(toy_corpus(seed=seed)) + list(extra_texts)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in THINK_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        extra_special_tokens=[IM_START],
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
        padding_side="right",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer
