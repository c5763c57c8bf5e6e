"""Supervised fine-tuning of the student (stage 04_sft; also exposure's priming SFT and EDIT's stage 1).

One entry point, :func:`train_sft`, trains a causal LM on :class:`~orion_utils.records.SFTExample`
records with the loss on the assistant turn only, in the student's own chat template, and writes a
full model (LoRA merged) that loads with ``AutoModelForCausalLM.from_pretrained``. A method with a
loss of its own (EDIT's stage 2, Tailored Learning's rounds) trains on the same run through
:func:`train_method`, with its subclass of :class:`OrionSFTTrainer` (a :class:`TrainerMethod`). The
run's steps, in order: load the tokenizer, build the training rows, choose attention and batching,
find a checkpoint to resume from, train and publish the model, write the results (``_train_rows``).
Its settings, :class:`~orion_utils.config.TrainingConfig`, live in ``config`` (importable from here too).

Backends (:func:`select_training_backend`):

* ``trl``: TRL ``SFTTrainer`` (+ PEFT ``LoraConfig`` when ``use_lora``). Works everywhere (CPU too).
* ``unsloth``: Unsloth ``FastLanguageModel`` + the same TRL trainer; chosen by ``backend="auto"``
  only when unsloth is installed *and* a CUDA GPU is present. Imported lazily.

Tokenisation has one source of truth: :func:`orion_utils.chat.encode_for_training` (prompt rendered
by the chat template with ``add_generation_prompt=True``, labels -100 on the prompt, the assistant
turn including its end-of-turn token supervised). The pre-tokenised rows go to TRL as is
(``skip_prepare_dataset``), so generation and training see exactly the same token ids.

Batching (``TrainingConfig.batching``): long CoTs vary wildly in length, so random padded batches
waste most of the compute on padding.

* ``padding_free``: the batch is flattened into one row with ``position_ids`` restarting at 0 per
  sequence (TRL ``padding_free=True``). With a varlen kernel (FlashAttention 2/3) there is no
  wasted work at all. transformers 5's sdpa/eager also accept it (``masking_utils`` detects the
  packed ``position_ids`` and builds a block-diagonal mask), but that mask is dense over the whole
  flattened batch, so attention costs ``(sum of lengths)^2`` instead of ``sum(length^2)``.
* ``length_grouped``: sequences of similar length share a batch (sorted within windows of
  ``length_group_window`` batches, batch order shuffled each epoch), padded to the batch maximum.
* ``padded``: random batches padded to their longest sequence (the naive baseline).
* ``auto``: ``padding_free`` with a varlen attention kernel, ``length_grouped`` otherwise.

Every mode computes the same loss on the same data: the loss is the sum of the per-token NLL over
the supervised tokens of an optimizer step divided by their number (see ``bench/bench_training.py``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import random
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch

from . import device as device_rules
from .chat import encode_for_training
from .config import BATCHING_MODES, OVERLONG_MODES, TrainingConfig
from .config import TRAINING_BACKENDS as BACKENDS
from .jsonl import write_json
from .records import SFTExample
from .rundir import TrainedDir, is_saved_model

__all__ = [
    "LengthGroupedSampler",
    "OrionSFTTrainer",
    "TrainResult",
    "TrainerMethod",
    "TrainingConfig",
    "TrainingWarning",
    "build_sft_rows",
    "length_grouped_batches",
    "resolve_batching",
    "resolve_liger",
    "select_training_backend",
    "sft_trainer_class",
    "train_method",
    "train_sft",
    "unsloth_first",
    "what_ran",
]

# attention kernels that run a flattened (padding-free) batch as separate sequences without a dense mask
VARLEN_ATTENTION = (
    "flash_attention_2",
    "flash_attention_3",
    "kernels-community/flash-attn",
    "kernels-community/vllm-flash-attn3",
)
# Unsloth's own LoRA targets (its FastLanguageModel.get_peft_model does not take "all-linear")
_UNSLOTH_ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TrainResult:
    model_dir: str  # a full model (LoRA merged) + tokenizer, loadable with from_pretrained
    backend: str  # "trl" or "unsloth"
    loss_history: list[dict]  # [{"step":..,"epoch":..,"loss":..,"learning_rate":..,"grad_norm":..}, ...]
    train_seconds: float
    n_examples: int
    n_tokens: int  # supervised (assistant) tokens seen
    batching: str = ""
    device: str = ""
    dtype: str = ""
    resumed_from: Optional[str] = None
    n_steps: int = 0  # optimizer steps taken

    @classmethod
    def load(cls, output_dir: Union[str, Path]) -> "TrainResult":
        """Read ``output_dir/train_result.json`` written by :func:`train_sft`."""
        data = json.loads(TrainedDir(output_dir).train_result.read_text())
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# ----------------------------------------------------------------------------------------------
# backend, device, attention and batching selection


def _unsloth_installed() -> bool:
    return importlib.util.find_spec("unsloth") is not None


def select_training_backend(requested: str = "auto") -> tuple[str, str]:
    """Return ``(backend, reason)``: ``auto`` picks unsloth iff it is installed and CUDA is available,
    otherwise trl; ``unsloth`` without either raises a clear error."""
    requested = (requested or "auto").lower()
    if requested not in BACKENDS:
        raise ValueError(f"unknown training backend {requested!r}; choose one of {', '.join(BACKENDS)}")
    if requested == "trl":
        return "trl", "requested"
    installed, cuda = _unsloth_installed(), device_rules.cuda_available()
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
    came first. Called by the stage entry points (``stages._sections``) and by every training run, before
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


def _resolve_attn(requested: str, device: str) -> str:
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
    """``(on, reason)``: Liger's fused kernels (RMSNorm, RoPE, SwiGLU, and the fused linear
    cross-entropy that never materialises the logits of a long CoT) through TRL's
    ``use_liger_kernel``, on CUDA with the TRL backend when ``liger_kernel`` is installed. Unsloth
    brings its own kernels."""
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


# ----------------------------------------------------------------------------------------------
# data


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
            truncated += 1
            enc = encode_for_training(
                tokenizer, ex.question, ex.response, template=prompt_template, max_seq_len=max_seq_len, system=system
            )
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
    from .chat import build_messages

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


class TrainingWarning(UserWarning):
    """Something about a training run worth knowing (examples cut at max_seq_len, a slow batching mode)."""


class LengthGroupedSampler(torch.utils.data.Sampler):
    """Index sampler yielding :func:`length_grouped_batches` flattened; reshuffled per epoch
    (``set_epoch`` is called by the Trainer/accelerate, which keeps resume deterministic)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, *, seed: int = 0, window: int = 64):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.window = window
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        batches = length_grouped_batches(self.lengths, self.batch_size, seed=self.seed + self.epoch, window=self.window)
        return iter([i for b in batches for i in b])


# ----------------------------------------------------------------------------------------------
# trainer


_COUNTERS_FILE = "orion_counters.json"


class OrionSFTTrainer:
    """The project's one trainer: TRL's ``SFTTrainer`` + length-grouped sampling + exact counts of the
    supervised tokens and their NLL. The methods' trainers subclass it and override its loss
    (``edit.EditTrainer``; ``tailored.TailoredTrainer``, which also brings its batch sampler).

    It and its subclasses are ordinary classes written against TRL's ``SFTTrainer``, which a run puts
    beneath them when it builds its trainer (:func:`sft_trainer_class`): the ``SFTTrainer`` current at
    that moment, which under the unsloth backend is the one Unsloth patched into TRL on import. So the
    trainers cost no TRL import where they are defined, and an Unsloth run trains on Unsloth's
    trainer whatever was imported before it."""

    def __init__(self, *args, batching: str = "padded", lengths=None, length_group_window: int = 64, **kwargs):
        self.batching = batching
        self.lengths = lengths
        self.length_group_window = length_group_window
        self.nll_sum = 0.0  # sum of per-token NLL of the supervised tokens seen in training
        self.n_supervised = 0
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        if self.batching == "length_grouped":
            lengths = self.lengths
            if lengths is None:
                lengths = [len(ids) for ids in (train_dataset or self.train_dataset)["input_ids"]]
            return LengthGroupedSampler(
                lengths, self.args.per_device_train_batch_size, seed=self.args.seed, window=self.length_group_window
            )
        return super()._get_train_sampler(train_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        n = int((inputs["labels"][:, 1:] != -100).sum())
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if model.training:
            loss = out[0] if return_outputs else out
            denom = n if num_items_in_batch is None else float(num_items_in_batch)
            self.nll_sum += float(loss.detach()) * float(denom)
            self.n_supervised += n
        return out

    # -- for the methods' trainers (EDIT, Tailored Learning), which override compute_loss --------

    def count_supervised(self, nll_sum: float, n_tokens: int) -> None:
        """Add a training batch's summed NLL over its ``n_tokens`` likelihood tokens to the counters."""
        self.nll_sum += float(nll_sum)
        self.n_supervised += int(n_tokens)

    def record_stats(self, stats: dict) -> None:
        """Loss components of one step, averaged into the next log line (and the loss history)."""
        buf = self.__dict__.setdefault("_stat_buffer", {})
        for k, v in stats.items():
            if not (isinstance(v, float) and math.isnan(v)):
                buf.setdefault(k, []).append(float(v))

    def log(self, logs: dict, *args, **kwargs) -> None:
        buf = self.__dict__.get("_stat_buffer")
        if buf and "loss" in logs:
            logs = {**logs, **{k: sum(v) / len(v) for k, v in buf.items() if v}}
            buf.clear()
        super().log(logs, *args, **kwargs)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if folder.is_dir():
            write_json(folder / _COUNTERS_FILE, {"nll_sum": self.nll_sum, "n_supervised": self.n_supervised})


_ON_SFT_TRAINER: dict = {}  # (trainer class, TRL's SFTTrainer) -> the class a run instantiates


def sft_trainer_class(cls: type = OrionSFTTrainer) -> type:
    """``cls`` (:class:`OrionSFTTrainer` or a method's subclass of it) on TRL's current ``SFTTrainer``:
    the class a run instantiates. One per (class, ``SFTTrainer``), each on its parent's, so that
    ``isinstance(trainer, sft_trainer_class())`` holds for every method's trainer."""
    import trl

    if not (isinstance(cls, type) and issubclass(cls, OrionSFTTrainer)):
        raise TypeError(f"a trainer must subclass training.OrionSFTTrainer, got {cls!r}")
    if issubclass(cls, trl.SFTTrainer):
        return cls  # already on it
    key = (cls, trl.SFTTrainer)
    if key not in _ON_SFT_TRAINER:
        parent = trl.SFTTrainer if cls is OrionSFTTrainer else sft_trainer_class(cls.__base__)
        _ON_SFT_TRAINER[key] = type(cls.__name__, (cls, parent),
                                    {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__})
    return _ON_SFT_TRAINER[key]


_trainer_class = sft_trainer_class  # the older private name, which tests still use


@dataclass
class TrainerMethod:
    """What a method changes in the one SFT training run (EDIT's stage 2, Tailored Learning's rounds):
    its trainer (a subclass of :class:`OrionSFTTrainer` that overrides ``compute_loss`` and, for
    Tailored Learning, the batch sampler), its data collator and its log columns. Everything else —
    backend, precision, batching rule, ``overlong``, resume, files — is :func:`train_method`'s, i.e.
    ``train_sft``'s."""

    name: str  # what the [training] line says, e.g. "edit stage 2"
    trainer_class: type  # a subclass of OrionSFTTrainer (put on TRL's SFTTrainer by sft_trainer_class)
    collator: Callable[[object], object]  # tokenizer -> data collator
    trainer_kwargs: dict = dataclasses.field(default_factory=dict)
    batching: Optional[Callable[[str], tuple[str, str]]] = None  # resolved mode -> (mode, reason)
    log_keys: tuple = ()  # loss components kept in loss_history.json


def optimizer_steps(cfg, n_rows: int) -> int:
    """Optimizer steps of a run, counted as the Trainer counts them (any flat training config:
    ``TrainingConfig``, ``EditConfig``, ``TailoredConfig``)."""
    if cfg.max_steps and cfg.max_steps > 0:
        return cfg.max_steps
    per_epoch = max(1, math.ceil(n_rows / cfg.batch_size) // cfg.grad_accum)
    return math.ceil(cfg.num_epochs * per_epoch)


def warmup_steps(cfg, n_rows: int) -> int:
    """``warmup_ratio`` as whole steps: a float < 1 reads as a ratio only in transformers >= 5."""
    if not 0 <= cfg.warmup_ratio < 1:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {cfg.warmup_ratio}")
    return math.ceil(cfg.warmup_ratio * optimizer_steps(cfg, n_rows))


def checkpointing_argument(args_class) -> str:
    """The TrainingArguments field that turns on activation checkpointing: transformers renamed
    ``gradient_checkpointing`` (a deprecated alias since 5.x, gone in 6)."""
    import dataclasses as dc

    fields = {f.name for f in dc.fields(args_class)}
    return "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"


def _sft_args(cfg: TrainingConfig, ckpt_dir: Path, batching: str, device: str, dtype: str, n_rows: int,
              liger: bool = False):
    from trl import SFTConfig

    return SFTConfig(
        **{checkpointing_argument(SFTConfig): cfg.gradient_checkpointing},
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_epochs,
        max_steps=cfg.max_steps,
        warmup_steps=warmup_steps(cfg, n_rows),
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler,
        optim=cfg.optim,
        max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        save_strategy="steps" if cfg.save_steps > 0 else ("epoch" if cfg.save_steps == 0 else "no"),
        save_steps=cfg.save_steps if cfg.save_steps > 0 else 500,
        save_total_limit=1,
        seed=cfg.seed,
        data_seed=cfg.seed,
        **device_rules.trainer_autocast(device, dtype),
        use_cpu=(device == "cpu"),
        report_to="none",
        disable_tqdm=not cfg.progress_bar,
        dataloader_num_workers=0,
        dataloader_pin_memory=(device == "cuda"),
        # the dataset is pre-tokenised (and pre-truncated) with encode_for_training
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=None,
        padding_free=(batching == "padding_free"),
        completion_only_loss=None,
        use_liger_kernel=liger,
    )


def _build_trainer(model, tokenizer, rows, cfg, ckpt_dir, batching, device, dtype, peft_config=None, method=None,
                   liger=False):
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    args = _sft_args(cfg, ckpt_dir, batching, device, dtype, len(rows), liger=liger)
    extra: dict = {}
    if method is not None:
        args.remove_unused_columns = False  # the method's collator reads its own columns
        extra = {"data_collator": method.collator(tokenizer), **method.trainer_kwargs}
    trainer = sft_trainer_class(method.trainer_class if method is not None else OrionSFTTrainer)(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
        batching=batching,
        lengths=[int(r.get("length", len(r["input_ids"]))) for r in rows],
        length_group_window=cfg.length_group_window,
        **extra,
    )
    if method is None:
        _check_collated_labels(trainer, rows[0])
    if not cfg.progress_bar:
        for cb in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(cb)
        with contextlib.suppress(Exception):
            from transformers.utils.notebook import NotebookProgressCallback

            trainer.remove_callback(NotebookProgressCallback)
    return trainer


def _check_collated_labels(trainer, row: dict) -> None:
    """The loss must fall on exactly the assistant tokens we labelled. Some TRL versions rebuild
    labels from input_ids in their collator (training on the prompt too, silently): stop loudly."""
    batch = trainer.data_collator([dict(row)])
    expected = sum(1 for t in row["labels"][1:] if t != -100)
    got = int((batch["labels"] != -100).sum())
    if got != expected:
        import trl

        raise RuntimeError(
            f"the installed TRL {trl.__version__} does not keep the pre-tokenised labels (its collator supervises "
            f"{got} tokens of an example where {expected} are the assistant turn); upgrade TRL: pip install -U trl"
        )


@contextlib.contextmanager
def _quiet(enabled: bool = True):
    """Silence library info/warnings and loading progress bars (the one [training] line is ours)."""
    if not enabled:
        yield
        return
    import transformers

    tlog = transformers.utils.logging
    old = tlog.get_verbosity()
    bars = tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("default", TrainingWarning)  # ours stay visible
            yield
    finally:
        tlog.set_verbosity(old)
        if bars:
            tlog.enable_progress_bar()


def _epoch_nll(trainer) -> tuple[float, int]:
    """Sum of per-token NLL and number of supervised tokens over one pass of the training dataloader
    at the current weights (no update), batched exactly as training batches them."""
    model = trainer.model
    was_training = model.training
    model.eval()
    nll, n_tok = 0.0, 0
    try:
        with torch.no_grad():
            for batch in trainer.get_train_dataloader():
                batch = trainer._prepare_inputs(batch)
                n = int((batch["labels"][:, 1:] != -100).sum())
                loss = trainer.compute_loss(model, batch, num_items_in_batch=n)
                nll += float(loss) * n
                n_tok += n
    finally:
        model.train(was_training)
    return nll, n_tok


# ----------------------------------------------------------------------------------------------
# files


def _publish_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Replace ``final_dir`` by the fully written ``tmp_dir`` (rename: never half-written)."""
    old = None
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}.old-{os.getpid()}")
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def looks_like_local_path(name: str) -> bool:
    """A Hub id is ``name`` or ``org/name``; anything else path-like is a local path."""
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def _check_base_model(base_model: Union[str, Path]) -> str:
    name = str(base_model)
    if not name.strip():
        raise ValueError("train_sft: base_model is empty")
    path = Path(name).expanduser()
    if path.exists():
        if not is_saved_model(path):
            raise FileNotFoundError(f"train_sft: base model directory {name!r} has no config.json (not a saved model)")
        return str(path)
    if isinstance(base_model, Path) or looks_like_local_path(name):
        raise FileNotFoundError(f"train_sft: base model {name!r} does not exist (expected a directory saved with save_pretrained)")
    return name  # a Hugging Face Hub id


def _fingerprint(base_model: str, cfg: TrainingConfig, rows: list, prompt_template: str, system: Optional[str],
                 method: str = "sft") -> str:
    # what changes the optimisation; bookkeeping fields may differ between a run and its resume
    bookkeeping = ("progress_bar", "keep_checkpoints", "cpu_threads", "save_steps", "logging_steps")
    semantic = {k: v for k, v in asdict(cfg).items() if k not in bookkeeping}
    h = hashlib.sha256()
    head = {"base_model": base_model, "cfg": semantic, "template": prompt_template, "system": system}
    if method != "sft":
        head["method"] = method
    h.update(json.dumps(head, sort_keys=True).encode())
    for r in rows:
        h.update(json.dumps([r["input_ids"], r["labels"]] if method == "sft" else r, sort_keys=True).encode())
    return h.hexdigest()


def _find_resumable(layout: TrainedDir, fingerprint: str) -> Optional[Path]:
    from transformers.trainer_utils import get_last_checkpoint

    ckpt_dir = layout.checkpoints
    if not ckpt_dir.is_dir():
        return None
    fp_file = layout.checkpoint_fingerprint
    saved = json.loads(fp_file.read_text()).get("fingerprint") if fp_file.is_file() else None
    last = get_last_checkpoint(str(ckpt_dir))
    if last is None or saved != fingerprint:
        return None
    return Path(last)


def _loss_history(log_history: list, extra_keys: Sequence[str] = ()) -> list:
    out = []
    for entry in log_history:
        if "loss" not in entry:
            continue
        item = {"step": entry.get("step"), "epoch": entry.get("epoch"), "loss": entry.get("loss"), "learning_rate": entry.get("learning_rate")}
        if "grad_norm" in entry:
            item["grad_norm"] = entry["grad_norm"]
        item.update({k: entry[k] for k in extra_keys if k in entry})
        out.append(item)
    return out


# ----------------------------------------------------------------------------------------------
# backends


def _lora_targets(spec: str, unsloth: bool = False):
    spec = (spec or "all-linear").strip()
    if spec.lower() == "all-linear":
        return list(_UNSLOTH_ALL_LINEAR) if unsloth else "all-linear"
    return [s.strip() for s in spec.split(",") if s.strip()]


def _train_trl(base_model, tokenizer, rows, cfg, ckpt_dir, batching, attn, device, dtype, resume_from, model_tmp, method=None,
               announce=None):
    """TRL (+ PEFT): load the model, train (resuming from ``resume_from``), save it merged to ``model_tmp``."""
    model = _load_model(base_model, cfg, attn, device, dtype)
    liger = resolve_liger(device, "trl")[0] and method is None  # the methods' losses read the logits
    trainer = _build_trainer(model, tokenizer, rows, cfg, ckpt_dir, batching, device, dtype, _lora_config(cfg), method,
                             liger=liger)
    if announce is not None:
        announce(trainer)  # the [training] line, from the trainer as built
    seconds = _run(trainer, resume_from)
    _save_merged(trainer.model, tokenizer, base_model, cfg, ckpt_dir, device, dtype, model_tmp)
    return trainer, seconds


def _load_model(base_model: str, cfg: TrainingConfig, attn: str, device: str, dtype: str):
    """The base model to train, in the precision ``device.training_load_dtype`` gives (4-bit: QLoRA)."""
    from transformers import AutoModelForCausalLM

    load_dtype = device_rules.training_load_dtype(device, dtype, use_lora=cfg.use_lora,
                                                  load_in_4bit=cfg.load_in_4bit)
    load_kwargs: dict = {"attn_implementation": attn, "dtype": load_dtype}
    if cfg.load_in_4bit:
        from transformers import BitsAndBytesConfig

        load_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=getattr(torch, dtype),
        )
    if device == "cuda":
        load_kwargs["device_map"] = {"": torch.cuda.current_device()}
    return AutoModelForCausalLM.from_pretrained(base_model, **load_kwargs)


def _lora_config(cfg: TrainingConfig):
    """PEFT's ``LoraConfig`` when ``use_lora``, else None (full fine-tuning)."""
    if not cfg.use_lora:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=_lora_targets(cfg.lora_target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def _save_merged(trained, tokenizer, base_model: str, cfg: TrainingConfig, ckpt_dir: Path, device: str, dtype: str,
                 model_tmp: Path) -> None:
    """The trained model, LoRA merged, in its saved precision, with the tokenizer, to ``model_tmp``."""
    from accelerate.utils import is_peft_model

    if is_peft_model(trained):
        if cfg.load_in_4bit:
            # merging into 4-bit weights loses precision: reload the base in 16 bit and merge the adapter there
            from peft import PeftModel
            from transformers import AutoModelForCausalLM

            adapter_dir = ckpt_dir / "final_adapter"
            trained.save_pretrained(str(adapter_dir))
            base = AutoModelForCausalLM.from_pretrained(base_model, dtype=getattr(torch, dtype))
            trained = PeftModel.from_pretrained(base, str(adapter_dir))
        trained = trained.merge_and_unload()
    save_dtype = device_rules.saved_dtype(device, dtype)
    if save_dtype is not None:
        trained = trained.to(save_dtype)
    trained.save_pretrained(str(model_tmp))
    tokenizer.save_pretrained(str(model_tmp))


def _train_unsloth(base_model, tokenizer, rows, cfg, ckpt_dir, batching, attn, device, dtype, resume_from, model_tmp, method=None,
                   announce=None):
    """Unsloth: FastLanguageModel (4-bit/16-bit LoRA or full fine-tuning) + the same TRL trainer,
    saved merged with ``save_pretrained_merged(..., save_method="merged_16bit")``."""
    # Unsloth patches transformers/TRL and asks to be imported before them: the stage entry points and
    # _train_rows import it first (unsloth_first); here it is already in sys.modules.
    import unsloth  # noqa: F401
    from unsloth import FastLanguageModel

    compute = getattr(torch, dtype)
    model, u_tokenizer = FastLanguageModel.from_pretrained(
        model_name=base_model,
        max_seq_length=cfg.max_seq_len,
        dtype=compute,
        load_in_4bit=cfg.load_in_4bit,
        full_finetuning=not cfg.use_lora,
        use_gradient_checkpointing="unsloth" if cfg.gradient_checkpointing else False,
        random_state=cfg.seed,
    )
    if cfg.use_lora:
        model = FastLanguageModel.get_peft_model(
            model,
            r=cfg.lora_r,
            target_modules=_lora_targets(cfg.lora_target_modules, unsloth=True),
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            bias="none",
            use_gradient_checkpointing="unsloth" if cfg.gradient_checkpointing else False,
            random_state=cfg.seed,
        )
    # token ids come from `tokenizer` (encode_for_training); Unsloth's tokenizer only pads/collates.
    # Gradient checkpointing is Unsloth's own (set above), not the Trainer's on top of it.
    trainer = _build_trainer(
        model, u_tokenizer, rows, dataclasses.replace(cfg, gradient_checkpointing=False), ckpt_dir, batching, device, dtype,
        method=method,
    )
    if announce is not None:
        announce(trainer)  # the [training] line, from the trainer as built
    seconds = _run(trainer, resume_from)
    if cfg.use_lora:
        model.save_pretrained_merged(str(model_tmp), tokenizer, save_method="merged_16bit")
    else:
        model.save_pretrained(str(model_tmp))
        tokenizer.save_pretrained(str(model_tmp))
    return trainer, seconds


def _run(trainer, resume_from: Optional[Path]) -> float:
    if resume_from is not None:
        counters = resume_from / _COUNTERS_FILE
        if counters.is_file():
            c = json.loads(counters.read_text())
            trainer.nll_sum, trainer.n_supervised = float(c["nll_sum"]), int(c["n_supervised"])
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------
# entry point


def train_sft(
    base_model: Union[str, Path],
    examples: Sequence[SFTExample],
    output_dir: Union[str, Path],
    cfg: Optional[TrainingConfig] = None,
    *,
    prompt_template: str = "{question}",
    system: Optional[str] = None,
    resume: bool = True,
) -> TrainResult:
    """Fine-tune ``base_model`` on ``examples`` (loss on the assistant turn only) and write

    * ``output_dir/model``: the full model (LoRA merged) + tokenizer, published by an atomic rename,
    * ``output_dir/loss_history.json`` and ``output_dir/train_result.json`` (written last),
    * ``output_dir/checkpoints`` while training (removed at the end unless ``keep_checkpoints``).

    ``resume=True`` continues from the last checkpoint in ``output_dir/checkpoints`` when it was made
    by the same base model, data and config (a fingerprint is stored next to the checkpoints).
    Prints one line: ``[training] backend=... (reason) device=... dtype=... lora=... examples=N batching=...``.
    """
    cfg = cfg or TrainingConfig()
    examples = list(examples)
    if not examples:
        raise ValueError("train_sft: no training examples were given (empty list); check the stage that builds them")
    bad = [i for i, ex in enumerate(examples) if not isinstance(ex, SFTExample)]
    if bad:
        raise TypeError(f"train_sft: examples must be SFTExample records; item {bad[0]} is {type(examples[bad[0]]).__name__}")

    def rows_for(tokenizer) -> tuple[list, dict]:
        return build_sft_rows(
            tokenizer, examples, prompt_template=prompt_template, system=system, max_seq_len=cfg.max_seq_len,
            overlong=cfg.overlong,
        )

    return _train_rows(base_model, output_dir, cfg, rows_for, len(examples), None, prompt_template, system, resume)


def train_method(
    base_model: Union[str, Path],
    output_dir: Union[str, Path],
    cfg: TrainingConfig,
    rows_for: Callable[[object], tuple[list, dict]],
    n_items: int,
    method: TrainerMethod,
    *,
    prompt_template: str = "{question}",
    system: Optional[str] = None,
    resume: bool = True,
) -> TrainResult:
    """Train with a method's own trainer on the one SFT stack: what :func:`train_sft` does (backend,
    precision, batching rule, ``overlong``, resume, files and the [training] line) with ``method``'s
    trainer class and collator. ``rows_for(tokenizer)`` returns ``(rows, stats)`` like
    :func:`build_sft_rows`: rows are JSON-able dicts with at least ``input_ids`` and ``labels`` (and
    ``length``, for length-grouped batching), stats count ``dropped``/``truncated``/``overlong_dropped``
    of the ``n_items`` given."""
    if not isinstance(cfg, TrainingConfig):
        raise TypeError(f"train_method: cfg must be a TrainingConfig (or a method's subclass of it), got {type(cfg).__name__}")
    return _train_rows(base_model, output_dir, cfg, rows_for, n_items, method, prompt_template, system, resume)


def _train_rows(base_model, output_dir, cfg, rows_for, n_items, method, prompt_template, system, resume) -> TrainResult:
    """The one training run behind :func:`train_sft` and :func:`train_method`, step by step."""
    who = "train_sft" if method is None else method.name
    base_model = _check_base_model(base_model)
    backend, reason = select_training_backend(cfg.backend)
    if backend == "unsloth":
        unsloth_first(replace(cfg, backend="unsloth"))  # before anything below imports transformers
    device, dtype = device_rules.device_and_dtype()
    cfg = _fit_to_device(cfg, device)
    layout = TrainedDir(output_dir)
    layout.root.mkdir(parents=True, exist_ok=True)

    with _quiet(not cfg.progress_bar), device_rules.torch_threads(_cpu_threads(cfg, base_model, device)):
        tokenizer = _load_tokenizer(base_model, who)
        rows, stats = _training_rows(rows_for, tokenizer, n_items, cfg, who)
        attn, batching = _attention_and_batching(cfg, backend, device, method, who)
        fingerprint = _fingerprint(base_model, cfg, rows, prompt_template, system, "sft" if method is None else method.name)
        resume_from = _prepare_checkpoints(layout, fingerprint, resume)
        ran: dict = {}

        def announce(trainer) -> None:
            """The [training] line, read back from the built trainer: what runs, not what was asked."""
            ran.update(what_ran(trainer, batching, dtype))
            print(_training_line(backend, reason, device, ran["dtype"], cfg, rows, ran["batching"], attn, method,
                                 stats, resume_from, liger=ran["liger"]), flush=True)

        train_fn = _train_unsloth if backend == "unsloth" else _train_trl
        trainer, seconds = _train_and_publish(layout, train_fn, base_model, tokenizer, rows, cfg, batching, attn,
                                              device, dtype, resume_from, method, announce)

    result = TrainResult(
        model_dir=str(layout.model),
        backend=backend,
        loss_history=_loss_history(trainer.state.log_history, method.log_keys if method is not None else ()),
        train_seconds=round(seconds, 3),
        n_examples=len(rows),
        n_tokens=int(trainer.n_supervised),
        batching=ran.get("batching", batching),
        device=device,
        dtype=ran.get("dtype", dtype),
        resumed_from=resume_from.name if resume_from is not None else None,
        n_steps=int(trainer.state.global_step),
    )
    _write_results(layout, result, cfg, base_model, prompt_template, system, attn, stats, method)
    return result


def _fit_to_device(cfg: TrainingConfig, device: str) -> TrainingConfig:
    """``cfg`` as this device can run it (4-bit weights need a CUDA GPU; they need LoRA anywhere)."""
    if cfg.load_in_4bit and not cfg.use_lora:
        raise ValueError("load_in_4bit=True needs use_lora=True (4-bit weights cannot be fine-tuned directly)")
    if cfg.load_in_4bit and device != "cuda":
        # a GPU profile run where there is none (a CPU rehearsal, a Colab CPU runtime): same LoRA, full precision
        print("[training] load_in_4bit needs a CUDA GPU (bitsandbytes); none here, so LoRA trains on full-precision weights", flush=True)
        cfg = replace(cfg, load_in_4bit=False)
    return cfg


def _cpu_threads(cfg: TrainingConfig, base_model: str, device: str) -> Optional[int]:
    """torch's intra-op threads while training on CPU (``cpu_threads``; auto: ``device.cpu_threads_for``)."""
    if device != "cpu":
        return None
    return device_rules.cpu_threads_for(base_model, device, cfg.cpu_threads if cfg.cpu_threads > 0 else "auto")


def _load_tokenizer(base_model: str, who: str):
    """The base model's tokenizer, with a pad token and a chat template (the one source of token ids)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(base_model)
    except OSError as e:
        raise FileNotFoundError(
            f"{who}: cannot load the tokenizer of base model {base_model!r}: not a local model directory "
            f"and not available from the Hugging Face Hub ({e})"
        ) from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{who}: the tokenizer of {base_model!r} has no chat template")
    return tokenizer


def _training_rows(rows_for, tokenizer, n_items: int, cfg: TrainingConfig, who: str) -> tuple[list, dict]:
    """``rows_for(tokenizer)``, refused when nothing is left to train on; what was cut or left out is
    said in a :class:`TrainingWarning`."""
    rows, stats = rows_for(tokenizer)
    if not rows:
        raise ValueError(
            f"{who}: none of the {n_items} examples has an assistant token within max_seq_len={cfg.max_seq_len}"
            + (f" ({stats['overlong_dropped']} longer ones were left out: overlong='drop')" if stats.get("overlong_dropped") else "")
        )
    if stats.get("overlong_dropped"):
        warnings.warn(
            f"{who}: {stats['overlong_dropped']} of {n_items} examples are longer than "
            f"max_seq_len={cfg.max_seq_len} and were left out (overlong='drop')",
            TrainingWarning,
            stacklevel=5,
        )
    if stats.get("truncated"):
        warnings.warn(
            f"{who}: {stats['truncated']} of {n_items} examples are longer than max_seq_len={cfg.max_seq_len} "
            "and were cut (they lose their end-of-turn token)",
            TrainingWarning,
            stacklevel=5,
        )
    return rows, stats


def _attention_and_batching(cfg: TrainingConfig, backend: str, device: str, method, who: str) -> tuple[str, str]:
    """The attention kernel and the batching mode of this run (a method may change the mode)."""
    attn = "unsloth" if backend == "unsloth" and cfg.attn_implementation == "auto" else _resolve_attn(cfg.attn_implementation, device)
    batching, _why = resolve_batching(cfg.batching, attn, backend)
    if method is not None and method.batching is not None:
        batching, _why = method.batching(batching)
    if batching == "padding_free" and backend != "unsloth" and attn not in VARLEN_ATTENTION:
        warnings.warn(
            f"{who}: batching='padding_free' with attn={attn} is correct but builds a dense mask over the "
            "whole flattened batch (slower than 'length_grouped' there; see bench/bench_training.py)",
            TrainingWarning,
            stacklevel=5,
        )
    return attn, batching


def _prepare_checkpoints(layout: TrainedDir, fingerprint: str, resume: bool) -> Optional[Path]:
    """The checkpoint to resume from (one made from the same fingerprint), if any and if ``resume``;
    other checkpoints are removed, and the fingerprint is stored for the checkpoints to come."""
    resume_from = _find_resumable(layout, fingerprint) if resume else None
    if resume_from is None and layout.checkpoints.exists():
        shutil.rmtree(layout.checkpoints)  # stale (other data/config) or resume=False
    layout.checkpoints.mkdir(parents=True, exist_ok=True)
    write_json(layout.checkpoint_fingerprint, {"fingerprint": fingerprint})
    return resume_from


def what_ran(trainer, batching: str, dtype: str) -> dict:
    """What a built trainer will run, read from it and its arguments (a backend may change what was asked:
    Unsloth turns ``padding_free`` off, e.g. for a custom collator): ``batching`` (padding-free only when
    the arguments still say so; a padding-free request they dropped trains padded), ``dtype`` (the
    autocast dtype, else the weights'), ``liger``."""
    args = trainer.args
    sampler = getattr(trainer, "batching", batching)
    if getattr(args, "padding_free", False):
        actual = "padding_free"
    else:
        actual = "padded" if sampler == "padding_free" else sampler
    if getattr(args, "bf16", False):
        ran_dtype = "bfloat16"
    elif getattr(args, "fp16", False):
        ran_dtype = "float16"
    else:
        weights = next((p for p in trainer.model.parameters()), None) if hasattr(trainer.model, "parameters") else None
        ran_dtype = device_rules.dtype_name(weights.dtype) if weights is not None else dtype
    return {"batching": actual, "dtype": ran_dtype, "liger": bool(getattr(args, "use_liger_kernel", False))}


def _training_line(backend, reason, device, dtype, cfg, rows, batching, attn, method, stats, resume_from,
                   liger: bool = False) -> str:
    """``[training] backend=... (reason) device=... dtype=... lora=... examples=N batching=... (attn=...)``."""
    line = (
        f"[training] backend={backend} ({reason}) device={device} dtype={dtype} lora={cfg.use_lora} "
        f"examples={len(rows)} batching={batching} (attn={attn}" + (", liger" if liger else "") + ")"
    )
    if method is not None:
        line += f" method={method.name}"
    for key in ("truncated", "dropped", "overlong_dropped"):
        if stats.get(key):
            line += f" {key}={stats[key]}"
    if resume_from is not None:
        line += f" resume={resume_from.name}"
    return line


def _train_and_publish(layout: TrainedDir, train_fn, base_model, tokenizer, rows, cfg, batching, attn, device, dtype,
                       resume_from, method, announce=None):
    """Train with the backend's ``train_fn`` (``_train_trl``/``_train_unsloth``), which saves the model to
    a temporary folder, then publish it as ``layout.model`` by a rename. Returns ``(trainer, seconds)``."""
    for stale in [*layout.root.glob(".model.tmp-*"), *layout.root.glob(".model.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)  # left by a crashed run
    model_tmp = layout.root / f".model.tmp-{os.getpid()}"
    try:
        trainer, seconds = train_fn(base_model, tokenizer, rows, cfg, layout.checkpoints, batching, attn, device, dtype,
                                    resume_from, model_tmp, method, announce=announce)
        _publish_dir(model_tmp, layout.model)
    finally:
        if model_tmp.exists():
            shutil.rmtree(model_tmp, ignore_errors=True)
    return trainer, seconds


def _write_results(layout: TrainedDir, result: TrainResult, cfg, base_model, prompt_template, system, attn, stats,
                   method) -> None:
    """``loss_history.json``, then ``train_result.json`` (last: it says the run finished); the checkpoints
    go unless ``keep_checkpoints``."""
    write_json(layout.loss_history, result.loss_history)
    write_json(
        layout.train_result,
        {**asdict(result), "base_model": base_model, "prompt_template": prompt_template, "system": system,
         "config": asdict(cfg), "attn_implementation": attn, "truncated": stats.get("truncated", 0),
         "dropped": stats.get("dropped", 0), "overlong_dropped": stats.get("overlong_dropped", 0),
         **({"method": method.name} if method is not None else {})},
    )
    if not cfg.keep_checkpoints:
        shutil.rmtree(layout.checkpoints, ignore_errors=True)
