"""Supervised fine-tuning of the student (stage 04_sft; also exposure's priming SFT and EDIT's stage 1).

One entry point, :func:`train_sft`, trains a causal LM on :class:`~orion_utils.records.SFTExample`
records with the loss on the assistant turn only, in the student's own chat template, and writes a
full model (LoRA merged) that loads with ``AutoModelForCausalLM.from_pretrained``. A method with a
loss of its own (EDIT's stage 2, Tailored Learning's rounds) trains on the same run through
:func:`train_method`, with its subclass of :class:`OrionSFTTrainer` (a :class:`TrainerMethod`). The
run's steps, in order: load the tokenizer, build the training rows, choose attention and batching,
find a checkpoint to resume from, train and publish the model, write the results (``train._train_rows``).
Its settings, :class:`~orion_utils.config.TrainingConfig`, live in ``config``.

The package, one concern per module (what the other stages use is importable from ``orion_utils.training``):

* ``selection``: backend, attention kernel, Liger and batching mode, each with its reason.
* ``rows``: SFT examples → training rows (loss masks included), length-grouped batches, padding.
* ``trainer``: :class:`OrionSFTTrainer`, :class:`TrainerMethod`, the trainer's arguments and build.
* ``backends``: loading, precision and saving under TRL (+PEFT) or Unsloth.
* ``files``: base model checks, the resume fingerprint, checkpoints, publishing a model folder.
* ``train``: the entry points and the run step by step, with its [training] line.
* ``launch``: a run on N data-parallel ranks (``parallel.gpus``): the global batch split, one error for a failed rank.

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

from ..lm_loss import token_nll  # the methods' per-token NLL, as the trainers' users import it
from .files import link_or_copy_tree, looks_like_local_path
from .rows import LengthGroupedSampler, build_sft_rows, length_grouped_batches, pad_rows
from .selection import (
    resolve_attn,
    resolve_batching,
    resolve_liger,
    select_training_backend,
    unsloth_first,
)
from .train import TrainingWarning, TrainResult, quiet, train_method, train_sft, what_ran
from .trainer import (
    OrionSFTTrainer,
    TrainerMethod,
    build_trainer,
    optimizer_steps,
    sft_trainer_class,
    warmup_steps,
)

__all__ = [
    "LengthGroupedSampler",
    "OrionSFTTrainer",
    "TrainResult",
    "TrainerMethod",
    "TrainingWarning",
    "build_sft_rows",
    "build_trainer",
    "length_grouped_batches",
    "link_or_copy_tree",
    "looks_like_local_path",
    "optimizer_steps",
    "pad_rows",
    "quiet",
    "resolve_attn",
    "resolve_batching",
    "resolve_liger",
    "select_training_backend",
    "sft_trainer_class",
    "token_nll",
    "train_method",
    "train_sft",
    "unsloth_first",
    "warmup_steps",
    "what_ran",
]
