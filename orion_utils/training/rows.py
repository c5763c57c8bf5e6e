"""Training rows: SFT examples tokenised once (``chat.encode_for_training``), with the loss masked on
given spans of a response; batches of similar lengths; rows padded into a batch."""
from __future__ import annotations

import random
from typing import Optional, Sequence

import torch

from ..chat import encode_for_training
from ..config import OVERLONG_MODES
from ..records import SFTExample


def build_sft_rows(
    tokenizer,
    examples: Sequence[SFTExample],
    *,
    prompt_template: str = "{question}",
    system: Optional[str] = None,
    max_seq_len: Optional[int] = None,
    overlong: str = "truncate",
) -> tuple[list[dict], dict]:
    """Tokenise examples with :func:`encode_for_training` (the one source of token ids).

    Returns ``(rows, stats)``: rows ``{"input_ids", "labels"}`` (labels -100 on the prompt) and
    ``{"dropped": n_without_supervised_tokens, "truncated": n_cut_at_max_seq_len,
    "overlong_dropped": n_longer_than_max_seq_len_left_out}`` (``overlong="drop"``)."""
    if overlong not in OVERLONG_MODES:
        raise ValueError(f"overlong must be one of {OVERLONG_MODES}, got {overlong!r}")
    rows, dropped, truncated, overlong_dropped = [], 0, 0, 0
    for ex in examples:
        full = encode_for_training(tokenizer, ex.question, ex.response, template=prompt_template, system=system)
        enc = full
        if max_seq_len is not None and len(full["input_ids"]) > max_seq_len:
            if overlong == "drop":
                overlong_dropped += 1
                continue
            truncated += 1  # cut as encode_for_training(max_seq_len=...) cuts, without encoding again
            enc = dict(full, input_ids=full["input_ids"][:max_seq_len], labels=full["labels"][:max_seq_len])
        spans = ex.loss_mask_spans
        if spans:
            enc = dict(enc, labels=mask_response_spans(tokenizer, ex.question, ex.response, enc, spans,
                                                       template=prompt_template, system=system))
        if all(t == -100 for t in enc["labels"][1:]):
            dropped += 1
            continue
        rows.append({"input_ids": list(enc["input_ids"]), "labels": list(enc["labels"])})
    return rows, {"dropped": dropped, "truncated": truncated, "overlong_dropped": overlong_dropped}


def mask_response_spans(tokenizer, question: str, response: str, enc: dict, spans: Sequence, *,
                        template: str = "{question}", system: Optional[str] = None) -> list[int]:
    """``enc["labels"]`` with -100 on every response token overlapping a character span
    ``[start, end)`` of ``response`` (``SFTExample.loss_mask_spans``, e.g. ORION's quoted wrong
    step), found through the tokenizer's offsets of the assistant turn as ``encode_for_training``
    tokenises it."""
    from ..chat import build_messages

    messages = build_messages(question, template, system)
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
    answer = full[len(prompt):]
    at = answer.find(response)
    if at < 0:
        raise ValueError("the chat template changes the response text: cannot place loss_mask_spans")
    answer_enc = tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)
    labels = list(enc["labels"])
    first = enc["prompt_len"]
    for t, (s, e) in enumerate(answer_enc["offset_mapping"]):
        if first + t >= len(labels):
            break
        if e > s and any(s < at + b and at + a < e for a, b in spans):
            labels[first + t] = -100
    return labels


def length_grouped_batches(lengths: Sequence[int], batch_size: int, *, seed: int = 0, window: int = 64) -> list[list[int]]:
    """Batches of indices with similar lengths: shuffle, sort by length (descending) within windows of
    ``window`` batches, cut into batches, shuffle the full batches; the (at most one) partial batch
    comes last so that a DataLoader re-cutting the flat order sees the same batches."""
    n = len(lengths)
    rng = random.Random(seed)
    order = list(range(n))
    rng.shuffle(order)  # random tie-breaking
    span = batch_size * max(1, window)
    full, partial = [], []
    for start in range(0, n, span):
        chunk = sorted(order[start : start + span], key=lambda i: lengths[i], reverse=True)
        for b in range(0, len(chunk), batch_size):
            batch = chunk[b : b + batch_size]
            (full if len(batch) == batch_size else partial).append(batch)
    rng.shuffle(full)
    return full + partial


def shuffled_batches(n: int, batch_size: int, *, seed: int = 0) -> list[list[int]]:
    """Batches of indices in a random order (``padded`` and ``padding_free`` batching), the partial one last."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[b : b + batch_size] for b in range(0, n, batch_size)]


def pad_for_ranks(batches: list[list[int]], batch_size: int, ranks: int, split_batches: bool,
                  null: Optional[int]) -> list[list[int]]:
    """``batches`` as ``ranks`` data-parallel ranks take them without a row counted twice: each batch filled up to
    ``batch_size`` with ``null`` (a row whose labels are all -100: no loss, no token, no gradient) and, when each
    rank takes whole batches (not ``split_batches``), their number up to a multiple of ``ranks`` with batches of
    ``null``. So accelerate (``even_batches``) never fills an epoch's last step with rows from its start, and every
    step holds the rows one process would take (``launch``). One process, or no ``null``: ``batches`` as they are."""
    if ranks <= 1 or null is None:
        return batches
    out = [b + [null] * (batch_size - len(b)) for b in batches]
    return out + [[null] * batch_size for _ in range(-len(out) % ranks)] if not split_batches else out


class LengthGroupedSampler(torch.utils.data.Sampler):
    """Index sampler yielding :func:`length_grouped_batches` (``shuffle`` only: :func:`shuffled_batches`)
    flattened, for ``ranks`` data-parallel ranks padded with the ``null`` row (:func:`pad_for_ranks`);
    reshuffled per epoch (``set_epoch`` is called by the Trainer/accelerate, which keeps resume deterministic)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, *, seed: int = 0, window: int = 64,
                 shuffle: bool = False, ranks: int = 1, split_batches: bool = False, null: Optional[int] = None):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.window = window
        self.shuffle = shuffle
        self.ranks, self.split_batches, self.null = ranks, split_batches, null
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._order())

    def __iter__(self):
        return iter(self._order())

    def _order(self) -> list[int]:
        seed = self.seed + self.epoch
        if self.shuffle:
            batches = shuffled_batches(len(self.lengths), self.batch_size, seed=seed)
        else:
            batches = length_grouped_batches(self.lengths, self.batch_size, seed=seed, window=self.window)
        batches = pad_for_ranks(batches, self.batch_size, self.ranks, self.split_batches, self.null)
        return [i for b in batches for i in b]


def pad_rows(rows: list[list], value, length: int) -> list[list]:
    """Each row extended with ``value`` to ``length`` (the methods' collators pad their batches with it)."""
    return [list(r) + [value] * (length - len(r)) for r in rows]
