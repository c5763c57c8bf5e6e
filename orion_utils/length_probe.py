"""One training step of a method at a given sequence length, on synthetic token ids: how the memory of
SFT (one row), EDIT's stage 2 (two rows: the chosen and the rejected CoT of a pair) and Tailored Learning
(three rows: the anchor, its positive and its negative) grows with length.

``probe_rows`` builds one training row of exactly ``length`` tokens in the format each method's
``rows_for`` gives (``build_sft_rows``, ``edit.pair_rows``, ``tailored_training.tailored_rows``), so the
method's own collator makes its batch. Two ways to run it:

* ``probe_trainer`` + ``probe_step``: the method's trainer built on a loaded model
  (``training.build_trainer``) and one ``trainer.training_step`` (forward and backward, no optimizer
  update); ``bench/bench_memory_length.py`` measures its peak memory on CPU.
* ``train_probe``: one optimizer step through the whole training run (``training.train_method``: backend,
  LoRA, precision, saving), as a stage trains; the GPU tier runs it at a profile's maximum length.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Optional, Union

METHODS = ("sft", "edit", "tailored")
ROWS_PER_STEP = {"sft": 1, "edit": 2, "tailored": 3}  # sequences in one step's forward pass, batch size 1
PROMPT_TOKENS = 64  # the synthetic prompt (not supervised; Tailored: weighted prefix_weight), at most
EDITED_SHARE = 0.05  # EDIT: the share of the response replaced in the rejected side (its key tokens)


def _ids(rng: random.Random, n: int, vocab: range) -> list[int]:
    return [rng.randrange(vocab.start, vocab.stop) for _ in range(n)]


def prompt_tokens_for(length: int) -> int:
    """The synthetic prompt's length: ``PROMPT_TOKENS``, or a quarter of a shorter sequence."""
    return max(1, min(PROMPT_TOKENS, length // 4))


def probe_rows(method: str, length: int, vocab_size: int, *, prompt_tokens: Optional[int] = None,
               seed: int = 0, avoid: tuple = ()) -> list[dict]:
    """One training row of ``method`` whose every sequence is ``length`` tokens long (random ids below
    ``vocab_size``, none of ``avoid``, e.g. the special tokens): the prompt (``prompt_tokens``; by default
    ``prompt_tokens_for(length)``) is not supervised, the rest is. EDIT's rejected side differs from the chosen one in one block of
    ``EDITED_SHARE`` of the response (aligned by ``edit.key_token_ops``); Tailored Learning's positive and
    negative are other random sequences of the same length."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    prompt_tokens = prompt_tokens_for(length) if prompt_tokens is None else prompt_tokens
    if not 0 < prompt_tokens < length:
        raise ValueError(f"length ({length}) must exceed prompt_tokens ({prompt_tokens})")
    rng = random.Random(seed)
    avoid = set(avoid)
    vocab = range(0, vocab_size)

    def seq() -> list[int]:
        out = _ids(rng, length, vocab)
        return [t if t not in avoid else (t + 1) % vocab_size for t in out]

    ids = seq()
    labels = [-100] * prompt_tokens + ids[prompt_tokens:]
    if method == "sft":
        return [{"input_ids": ids, "labels": labels}]
    if method == "tailored":
        return [{"problem_id": "probe", "input_ids": ids, "labels": labels, "prompt_len": prompt_tokens,
                 "positive_input_ids": seq(), "negative_input_ids": seq(), "length": length}]
    from .edit import key_token_ops

    rejected = list(ids)
    n_edit = max(1, int(EDITED_SHARE * (length - prompt_tokens)))
    start = prompt_tokens + (length - prompt_tokens - n_edit) // 2
    for i in range(start, start + n_edit):
        rejected[i] = (rejected[i] + 1) % vocab_size
        while rejected[i] in avoid:
            rejected[i] = (rejected[i] + 1) % vocab_size
    ops = key_token_ops(ids[prompt_tokens:], rejected[prompt_tokens:]).to_dict()
    return [{"input_ids": ids, "labels": labels, "prompt_len": prompt_tokens,
             "rejected_input_ids": rejected, "rejected_labels": [-100] * prompt_tokens + rejected[prompt_tokens:],
             "rejected_prompt_len": prompt_tokens, "key_ops": json.dumps(ops), "length": length}]


def probe_config(method: str, base=None, length: Optional[int] = None):
    """The method's training config (``TrainingConfig``, ``EditConfig``, ``TailoredConfig``) from ``base``'s
    values (a profile's section, or the defaults), one sequence per step, one optimizer step,
    ``max_seq_len`` at least ``length``, no checkpoints."""
    import dataclasses

    from .config import EditConfig, TailoredConfig, TrainingConfig

    cls = {"sft": TrainingConfig, "edit": EditConfig, "tailored": TailoredConfig}[method]
    values = {} if base is None else {f.name: getattr(base, f.name) for f in dataclasses.fields(TrainingConfig)}
    if base is not None and isinstance(base, cls):
        values = {f.name: getattr(base, f.name) for f in dataclasses.fields(cls)}
    values.update(batch_size=1, grad_accum=1, max_steps=1, save_steps=-1, logging_steps=1, progress_bar=False,
                  warmup_ratio=0.0)
    if length is not None:
        values["max_seq_len"] = max(int(values.get("max_seq_len", 0) or 0), int(length))
    return cls(**values)


def trainer_method(method: str, cfg):
    """The ``TrainerMethod`` of EDIT's stage 2 or Tailored Learning for ``cfg``; None for SFT."""
    if method == "edit":
        from .edit import edit_method

        return edit_method(cfg)
    if method == "tailored":
        from .tailored_training import tailored_method

        return tailored_method(cfg)
    return None


def probe_trainer(model, tokenizer, method: str, length: int, out_dir: Union[str, Path], cfg=None,
                  device: str = "cpu", dtype: str = "float32", peft_config=None, seed: int = 0):
    """``method``'s trainer built on ``model`` (``training.build_trainer``) and its collated batch of one
    row of ``length`` tokens per sequence. Returns ``(trainer, batch)``."""
    from . import training

    cfg = probe_config(method, cfg, length)
    avoid = tuple(getattr(tokenizer, "all_special_ids", ()) or ())
    rows = probe_rows(method, length, len(tokenizer), seed=seed, avoid=avoid)
    batching = "no_same_question" if method == "tailored" else "padded"
    trainer = training.build_trainer(model, tokenizer, rows, cfg, Path(out_dir), batching, device, dtype,
                                     peft_config=peft_config, method=trainer_method(method, cfg))
    return trainer, trainer.data_collator([dict(r) for r in rows])


def probe_step(trainer, batch) -> float:
    """One ``trainer.training_step`` on ``batch`` (forward and backward, no optimizer update): the loss."""
    if not hasattr(trainer, "current_gradient_accumulation_steps"):  # set by trainer.train() otherwise
        trainer.current_gradient_accumulation_steps = 1
    return float(trainer.training_step(trainer.model, batch))


def train_probe(method: str, model_dir: Union[str, Path], out_dir: Union[str, Path], length: int, cfg=None,
                seed: int = 0):
    """One optimizer step of ``method`` at ``length`` tokens per sequence through the whole training run
    (``training.train_method``: the backend, LoRA and precision ``cfg`` gives, the model saved to
    ``out_dir/model``). Returns the ``TrainResult``."""
    from transformers import AutoTokenizer

    from . import training

    cfg = probe_config(method, cfg, length)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    avoid = tuple(tokenizer.all_special_ids or ())
    rows = probe_rows(method, length, len(tokenizer), seed=seed, avoid=avoid)

    def rows_for(_tokenizer):
        return [dict(r) for r in rows], {"dropped": 0, "truncated": 0, "overlong_dropped": 0}

    return training.train_method(str(model_dir), str(out_dir), cfg, rows_for, 1, trainer_method(method, cfg),
                                 resume=False)
