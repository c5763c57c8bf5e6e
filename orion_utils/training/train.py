"""The entry points, :func:`train_sft` and :func:`train_method`, and the one training run behind them,
step by step (``_train_rows``): tokenizer, rows, attention and batching, checkpoints, train and
publish, results; the one [training] line says what ran."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from .. import device as device_rules
from ..config import TrainingConfig
from ..jsonl import write_json
from ..layouts import TrainedDir
from ..records import SFTExample
from . import backends, launch
from ..adapters import model_source
from .files import check_base_model, loss_history_from, prepare_checkpoints, publish_dir, training_fingerprint
from .files import tracker_logs
from .rows import build_sft_rows
from .selection import (
    VARLEN_ATTENTION,
    resolve_attn,
    resolve_batching,
    select_training_backend,
    unsloth_first,
)
from .trainer import TrainerMethod


@dataclass
class TrainResult:
    model_dir: str  # the model + tokenizer: a full model, or a LoRA adapter (orion_utils.adapters)
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
    nll_sum: float = 0.0  # summed per-token NLL of the supervised tokens seen (n_tokens), every rank's
    ranks: int = 1  # processes that trained (parallel.gpus; 1: this one)

    @classmethod
    def load(cls, output_dir: Union[str, Path]) -> "TrainResult":
        """Read ``output_dir/train_result.json`` written by :func:`train_sft`."""
        data = json.loads(TrainedDir(output_dir).train_result.read_text())
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class TrainingWarning(UserWarning):
    """Something about a training run worth knowing (examples cut at max_seq_len, a slow batching mode)."""


@contextlib.contextmanager
def quiet(enabled: bool = True):
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


def train_sft(
    base_model: Union[str, Path],
    examples: Sequence[SFTExample],
    output_dir: Union[str, Path],
    cfg: Optional[TrainingConfig] = None,
    *,
    prompt_template: str = "{question}",
    system: Optional[str] = None,
    resume: bool = True,
    parallel=None,
) -> TrainResult:
    """Fine-tune ``base_model`` on ``examples`` (loss on the assistant turn only) and write

    * ``output_dir/model``: the model (a LoRA adapter, or the whole model) + tokenizer, published by an atomic rename,
    * ``output_dir/loss_history.json`` and ``output_dir/train_result.json`` (written last),
    * ``output_dir/checkpoints`` while training (removed at the end unless ``keep_checkpoints``).

    ``resume=True`` continues from the last checkpoint in ``output_dir/checkpoints`` when it was made
    by the same base model, data and config (a fingerprint is stored next to the checkpoints).
    Prints one line: ``[training] backend=... (reason) device=... dtype=... lora=... examples=N batching=...``.
    ``parallel`` (a ``ParallelConfig``): with ``gpus`` > 1 the run trains on that many ranks (``training.launch``),
    the global batch and the results as with one.
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

    return _train_rows(base_model, output_dir, cfg, rows_for, len(examples), None, prompt_template, system, resume,
                       parallel)


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
    parallel=None,
) -> TrainResult:
    """Train with a method's own trainer on the one SFT stack: what :func:`train_sft` does (backend,
    precision, batching rule, ``overlong``, resume, files and the [training] line) with ``method``'s
    trainer class and collator. ``rows_for(tokenizer)`` returns ``(rows, stats)`` like
    :func:`build_sft_rows`: rows are JSON-able dicts with at least ``input_ids`` and ``labels`` (and
    ``length``, for length-grouped batching), stats count ``dropped``/``truncated``/``overlong_dropped``
    of the ``n_items`` given."""
    if not isinstance(cfg, TrainingConfig):
        raise TypeError(f"train_method: cfg must be a TrainingConfig (or a method's subclass of it), got {type(cfg).__name__}")
    return _train_rows(base_model, output_dir, cfg, rows_for, n_items, method, prompt_template, system, resume,
                       parallel)


def _train_rows(base_model, output_dir, cfg, rows_for, n_items, method, prompt_template, system, resume,
                parallel=None) -> TrainResult:
    """The one training run behind :func:`train_sft` and :func:`train_method`, step by step: prepared here
    (tokenizer, rows, attention and batching, checkpoints), trained in this process or, under
    ``parallel.gpus`` > 1, on that many ranks (``launch``), which each train the same rows."""
    call, tokenizer = prepare_run(base_model, output_dir, cfg, rows_for, n_items, method, prompt_template, system,
                                  resume, parallel)
    split = call["split"]
    if split.ranks > 1 and not launch.in_rank():
        return launch_prepared(call, split.ranks, getattr(parallel, "training", "ddp"))
    return train_prepared(call, tokenizer)


def launch_prepared(call: dict, ranks: int, training: str = "ddp") -> TrainResult:
    """Train a prepared run (:func:`prepare_run`) on ``ranks`` launched processes (``launch.run_ranks``: torchrun
    on CPU, ``accelerate launch`` on CUDA) and read back its result. ``_train_rows`` launches only for more than
    one rank; the GPU tier launches one, which must train as this process does."""
    launch.run_ranks(call, ranks, training, call["device"] == "cuda")
    return TrainResult.load(call["output_dir"])


def prepare_run(base_model, output_dir, cfg, rows_for, n_items, method=None, prompt_template="{question}",
                system=None, resume=True, parallel=None) -> tuple[dict, object]:
    """``(call, tokenizer)``: everything a training run needs, decided once in this process (backend, device and
    precision, the ranks' split of the global batch, rows, attention and batching, the checkpoint to resume
    from), for :func:`train_prepared` here or on each launched rank."""
    who = "train_sft" if method is None else method.name
    base_model = check_base_model(base_model)
    backend, reason = select_training_backend(cfg.backend)
    ranks, note = launch.training_ranks(parallel, backend)
    if note:
        print(note, flush=True)
    if backend == "unsloth":
        unsloth_first(replace(cfg, backend="unsloth"))  # before anything below imports transformers
    device, dtype = device_rules.device_and_dtype("auto", getattr(cfg, "dtype", "auto"))
    cfg = _fit_to_device(cfg, device)
    split = launch.split_batch(cfg.batch_size, cfg.grad_accum, ranks, who,
                               method.refuse_batch_split if method is not None else None)
    layout = TrainedDir(output_dir)
    layout.root.mkdir(parents=True, exist_ok=True)

    with quiet(not cfg.progress_bar), device_rules.torch_threads(_cpu_threads(cfg, base_model, device)):
        tokenizer = _load_tokenizer(base_model, who)
        rows, stats = _training_rows(rows_for, tokenizer, n_items, cfg, who)
        attn, batching = _attention_and_batching(cfg, backend, device, method, who)
        fingerprint = training_fingerprint(base_model, cfg, rows, prompt_template, system, "sft" if method is None else method.name)
        resume_from = prepare_checkpoints(layout, fingerprint, resume)
    call = {"base_model": base_model, "output_dir": str(layout.root), "cfg": cfg, "rows": rows, "stats": stats,
            "method": method, "prompt_template": prompt_template, "system": system, "backend": backend,
            "reason": reason, "device": device, "dtype": dtype, "attn": attn, "batching": batching,
            "resume_from": resume_from, "split": split, "model_tmp": f".model.tmp-{os.getpid()}",
            "train": train_prepared}
    return call, tokenizer


def train_prepared(call: dict, tokenizer=None) -> TrainResult:
    """Train a prepared run (``_train_rows``'s ``call``) in this process, a rank of a launch or the only one;
    rank 0 alone publishes the model and writes the results. The counters count every rank's tokens."""
    cfg, method, layout = call["cfg"], call["method"], TrainedDir(call["output_dir"])
    device, dtype, batching, rows = call["device"], call["dtype"], call["batching"], call["rows"]
    who = "train_sft" if method is None else method.name
    if call["split"].ranks > 1 and device == "cuda":
        import torch

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    main_rank = launch.is_main_rank()
    with quiet(not cfg.progress_bar), device_rules.torch_threads(_cpu_threads(cfg, call["base_model"], device)):
        tokenizer = tokenizer if tokenizer is not None else _load_tokenizer(call["base_model"], who)
        ran: dict = {}

        def announce(trainer) -> None:
            """The [training] line, read back from the built trainer: what runs, not what was asked."""
            ran.update(what_ran(trainer, batching, dtype))
            if main_rank:
                print(_training_line(call["backend"], call["reason"], device, ran["dtype"], cfg, rows, ran["batching"],
                                     call["attn"], method, call["stats"], call["resume_from"], liger=ran["liger"])
                      + call["split"].describe(), flush=True)

        train_fn = backends.train_unsloth if call["backend"] == "unsloth" else backends.train_trl
        trainer, seconds = _train_and_publish(layout, train_fn, call, tokenizer, announce)
        n_tokens, nll_sum = launch.sum_over_ranks(trainer.n_supervised, trainer.nll_sum)

    result = TrainResult(
        model_dir=str(layout.model),
        backend=call["backend"],
        loss_history=loss_history_from(trainer.state.log_history, method.log_keys if method is not None else ()),
        train_seconds=round(seconds, 3),
        n_examples=len(rows),
        n_tokens=int(n_tokens),
        batching=ran.get("batching", batching),
        device=device,
        dtype=ran.get("dtype", dtype),
        resumed_from=call["resume_from"].name if call["resume_from"] is not None else None,
        n_steps=int(trainer.state.global_step),
        nll_sum=float(nll_sum),
        ranks=call["split"].ranks,
    )
    if main_rank:
        _write_results(layout, result, cfg, call["base_model"], call["prompt_template"], call["system"], call["attn"],
                       call["stats"], method)
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
    threads = device_rules.cpu_threads_for(model_source(base_model), device,
                                           cfg.cpu_threads if cfg.cpu_threads > 0 else "auto")
    if launch.in_rank():  # the ranks share the cores
        share = device_rules.cores_per_rank(int(os.environ["WORLD_SIZE"]))
        threads = min(threads, share) if threads else share
    return threads


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
    attn = "unsloth" if backend == "unsloth" and cfg.attn_implementation == "auto" else resolve_attn(cfg.attn_implementation, device)
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


def _train_and_publish(layout: TrainedDir, train_fn, call: dict, tokenizer, announce=None):
    """Train with the backend's ``train_fn`` (``train_trl``/``train_unsloth``), which saves the model to
    a temporary folder (rank 0), then publish it as ``layout.model`` by a rename. Returns ``(trainer, seconds)``."""
    main_rank = launch.is_main_rank()
    if main_rank:
        for stale in [*layout.root.glob(".model.tmp-*"), *layout.root.glob(".model.old-*")]:
            shutil.rmtree(stale, ignore_errors=True)  # left by a crashed run
    launch.barrier()
    model_tmp = layout.root / call["model_tmp"]
    try:
        with tracker_logs(call["cfg"], layout):
            trainer, seconds = train_fn(call["base_model"], tokenizer, call["rows"], call["cfg"], layout.checkpoints,
                                        call["batching"], call["attn"], call["device"], call["dtype"],
                                        call["resume_from"], model_tmp, call["method"], announce=announce,
                                        split=call["split"])
        if main_rank:
            publish_dir(model_tmp, layout.model)
    finally:
        if main_rank and model_tmp.exists():
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
