"""The project's one trainer, :class:`OrionSFTTrainer` (TRL's ``SFTTrainer`` + length-grouped sampling +
exact counts of the supervised tokens and their NLL), put on TRL's current ``SFTTrainer`` by
:func:`sft_trainer_class`; a method's changes to it (:class:`TrainerMethod`); its arguments
(``sft_args``) and how a run builds and runs it (``build_trainer``, ``run_trainer``). The methods' per-token
NLL is ``lm_loss``'s (``OrionSFTTrainer.labelled_nll`` computes it in bounded memory; ``lm_loss.token_nll``
is its reference formula)."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from .. import device as device_rules
from ..config import TrainingConfig
from ..jsonl import write_json
from .rows import LengthGroupedSampler

COUNTERS_FILE = "orion_counters.json"


class OrionSFTTrainer:
    """The project's one trainer: TRL's ``SFTTrainer`` + length-grouped sampling + exact counts of the
    supervised tokens and their NLL. The methods' trainers subclass it and override its loss
    (``edit.EditTrainer``; ``tailored_training.TailoredTrainer``, which also brings its batch sampler).

    It and its subclasses are ordinary classes written against TRL's ``SFTTrainer``, which a run puts
    beneath them when it builds its trainer (:func:`sft_trainer_class`): the ``SFTTrainer`` current at
    that moment, which under the unsloth backend is the one Unsloth patched into TRL on import. So the
    trainers cost no TRL import where they are defined, and an Unsloth run trains on Unsloth's
    trainer whatever was imported before it."""

    def __init__(self, *args, batching: str = "padded", lengths=None, length_group_window: int = 64,
                 null_row: Optional[int] = None, **kwargs):
        self.batching = batching
        self.lengths = lengths
        self.length_group_window = length_group_window
        self.null_row = null_row  # data-parallel ranks: the dataset's row that fills their last steps (rows.pad_for_ranks)
        self.nll_sum = 0.0  # sum of per-token NLL of the supervised tokens seen in training
        self.n_supervised = 0
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        """The rows' order: length-grouped batches, or under data-parallel ranks with a null row (plain SFT) a
        seeded shuffle in the other modes too; both padded for the ranks (``rows.pad_for_ranks``), so that N ranks
        take exactly the rows of one process's steps. Otherwise transformers' random sampler."""
        ranked = self.null_row is not None and self.args.world_size > 1
        if self.batching == "length_grouped" or ranked:
            lengths = self.lengths
            if lengths is None:
                lengths = [len(ids) for ids in (train_dataset or self.train_dataset)["input_ids"]]
            split = bool(getattr(self.args.accelerator_config, "split_batches", False))
            return LengthGroupedSampler(
                lengths, self.args.per_device_train_batch_size, seed=self.args.seed, window=self.length_group_window,
                shuffle=self.batching != "length_grouped", ranks=self.args.world_size if ranked else 1,
                split_batches=split, null=self.null_row if ranked else None)
        return super()._get_train_sampler(train_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        n = int((inputs["labels"][:, 1:] != -100).sum())
        if fused_head_needs_triton():  # the model's own loss, as transformers' Trainer computes it
            from transformers import Trainer

            out = Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                       num_items_in_batch=num_items_in_batch)
        else:
            out = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                       num_items_in_batch=num_items_in_batch)
        if model.training:
            loss = out[0] if return_outputs else out
            denom = n if num_items_in_batch is None else float(num_items_in_batch)
            if num_items_in_batch is not None and self.args.average_tokens_across_devices:
                # num_items_in_batch counts every rank's tokens and the loss was scaled by the ranks (DDP averages)
                denom /= self.accelerator.num_processes
            self.nll_sum += float(loss.detach()) * float(denom)
            self.n_supervised += n
        return out

    def training_step(self, model, inputs, *args, **kwargs):
        """TRL's step, then its loss checked: a NaN or infinite loss (16-bit overflow) stops the run with
        ``numerics.NonFiniteError`` naming the precision and ``training.dtype``. Here, not in
        ``compute_loss``, so that every method's loss (EDIT's, Tailored Learning's) is checked too."""
        loss = super().training_step(model, inputs, *args, **kwargs)
        value = float(loss.detach().float().mean()) if torch.is_tensor(loss) else float(loss)
        if not math.isfinite(value):
            from ..numerics import check_finite_loss

            args = self.args
            dtype = "bfloat16" if args.bf16 else "float16" if args.fp16 else next(model.parameters()).dtype
            check_finite_loss(value, self.state.global_step + 1, dtype, args.device, type(self).__name__)
        return loss

    # -- for the methods' trainers (EDIT, Tailored Learning), which override compute_loss --------

    def labelled_nll(self, model, inputs: dict, hidden_layer: Optional[int] = None):
        """One forward pass over a method's batch: ``(nll, hidden)``, the per-token NLL of
        ``inputs["labels"][:, 1:]`` ([B, T-1], float32, 0 where -100) computed on the labelled positions
        only, in bounded memory, and the hidden state ``hidden_layer`` (None: not asked for); see
        ``lm_loss.forward_token_nll``. Under the run's mixed precision, as the model's own forward runs."""
        from ..lm_loss import forward_token_nll

        return forward_token_nll(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"],
                                 hidden_layer=hidden_layer, autocast=self.accelerator.autocast())

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
        if "loss" in logs and (buf or self.args.world_size > 1):
            buf = buf if buf is not None else {}
            if self.args.world_size > 1:  # every rank's micro-batches (each rank logs this step: a collective)
                import torch.distributed as dist

                every: list = [None] * self.args.world_size
                dist.all_gather_object(every, buf)
                merged: dict = {}
                for part in every:
                    for k, v in part.items():
                        merged.setdefault(k, []).extend(v)
            else:
                merged = buf
            logs = {**logs, **{k: sum(v) / len(v) for k, v in sorted(merged.items()) if v}}
            buf.clear()
        super().log(logs, *args, **kwargs)

    def _load_optimizer_and_scheduler(self, checkpoint):
        """transformers' own, except that a CPU rehearsal on several ranks loads the optimizer state onto "cpu":
        transformers up to 5.17 (the gpu extra's cap) maps it to ``args.device``, an indexed "cpu:0" there, which
        torch cannot restore (later releases use "cpu" themselves)."""
        device = self.args.device
        if checkpoint is None or self.args.world_size <= 1 or device.type != "cpu" or device.index is None:
            return super()._load_optimizer_and_scheduler(checkpoint)
        load = torch.load

        def load_on_cpu(*args, map_location=None, **kwargs):
            if isinstance(map_location, torch.device) and map_location.type == "cpu":
                map_location = "cpu"
            return load(*args, map_location=map_location, **kwargs)

        torch.load = load_on_cpu
        try:
            return super()._load_optimizer_and_scheduler(checkpoint)
        finally:
            torch.load = load

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        from .launch import sum_over_ranks

        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        nll_sum, n_supervised = sum_over_ranks(self.nll_sum, self.n_supervised)  # every rank's, written last
        if self.args.should_save and folder.is_dir():
            write_json(folder / COUNTERS_FILE, {"nll_sum": nll_sum, "n_supervised": int(n_supervised)})


def fused_head_needs_triton() -> bool:
    """Whether TRL's ``SFTTrainer`` loss (its fused LM head) cannot run here: TRL 1.15 (the ``gpu`` extra's cap)
    computes it with a Triton kernel only and leaves it None where Triton is absent (CPU torch); TRL 1.16 falls
    back to torch. Then :class:`OrionSFTTrainer` takes the model's own loss (the same mean NLL of the supervised
    tokens, without TRL's entropy and token-accuracy logs)."""
    try:
        from trl.trainer import utils
    except ImportError:
        return False
    return hasattr(utils, "_ChunkedLogProbFunction") and utils._ChunkedLogProbFunction is None


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
    # why the method cannot cut a micro-batch between data-parallel ranks (None: it can; launch.split_batch)
    refuse_batch_split: Optional[str] = None


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


def sft_args(cfg: TrainingConfig, ckpt_dir: Path, batching: str, device: str, dtype: str, n_rows: int,
              liger: bool = False, split=None):
    """The trainer's arguments; ``split`` (a ``launch.RankSplit``): a rank's share of the profile's global batch
    (the warm-up, in optimizer steps, is the profile's whatever the split)."""
    from trl import SFTConfig

    ranks: dict = {}
    if split is not None and split.ranks > 1:
        ranks = {"accelerator_config": {"split_batches": split.split_batches},
                 "ddp_find_unused_parameters": False,  # every weight trains in every step
                 **({"ddp_backend": "gloo"} if device == "cpu" else {})}
    return SFTConfig(
        **{checkpointing_argument(SFTConfig): cfg.gradient_checkpointing},
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=split.loader_batch if split is not None else cfg.batch_size,
        gradient_accumulation_steps=split.grad_accum if split is not None else cfg.grad_accum,
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
        report_to=cfg.report_to,  # a tracker besides loss_history.json (TensorBoard's folder: files.tracker_logs)
        disable_tqdm=not cfg.progress_bar,
        dataloader_num_workers=0,
        dataloader_pin_memory=(device == "cuda"),
        # the dataset is pre-tokenised (and pre-truncated) with encode_for_training
        dataset_kwargs={"skip_prepare_dataset": True},
        max_length=None,
        padding_free=(batching == "padding_free"),
        completion_only_loss=None,
        use_liger_kernel=liger,
        **ranks,
    )


def build_trainer(model, tokenizer, rows, cfg, ckpt_dir, batching, device, dtype, peft_config=None, method=None,
                   liger=False, split=None):
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    args = sft_args(cfg, ckpt_dir, batching, device, dtype, len(rows), liger=liger, split=split)
    extra: dict = {}
    if method is not None:
        args.remove_unused_columns = False  # the method's collator reads its own columns
        extra = {"data_collator": method.collator(tokenizer), **method.trainer_kwargs}
    lengths = [int(r.get("length", len(r["input_ids"]))) for r in rows]
    null_row = None
    if method is None and split is not None and split.ranks > 1:
        # the row that fills the ranks' last steps: the shortest one, with no label (no loss, no token, no gradient)
        shortest = min(range(len(rows)), key=lambda i: lengths[i])
        null_row, rows = len(rows), [*rows, dict(rows[shortest], labels=[-100] * len(rows[shortest]["labels"]))]
    trainer = sft_trainer_class(method.trainer_class if method is not None else OrionSFTTrainer)(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
        batching=batching,
        lengths=lengths,
        length_group_window=cfg.length_group_window,
        null_row=null_row,
        **extra,
    )
    if method is None:
        check_collated_labels(trainer, rows[0])
    if not cfg.progress_bar:
        for cb in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(cb)
        with contextlib.suppress(Exception):
            from transformers.utils.notebook import NotebookProgressCallback

            trainer.remove_callback(NotebookProgressCallback)
    return trainer


def check_collated_labels(trainer, row: dict) -> None:
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


def epoch_nll(trainer) -> tuple[float, int]:
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


def run_trainer(trainer, resume_from: Optional[Path]) -> float:
    if resume_from is not None and trainer.args.process_index == 0:  # the checkpoint's counters are every rank's
        counters = resume_from / COUNTERS_FILE
        if counters.is_file():
            c = json.loads(counters.read_text())
            trainer.nll_sum, trainer.n_supervised = float(c["nll_sum"]), int(c["n_supervised"])
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
    return time.perf_counter() - t0
