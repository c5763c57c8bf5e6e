"""A training run's files: the base model it starts from, the fingerprint that lets a run resume from
its checkpoints, the loss history, and a model folder published whole (by a rename, or by links)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence, Union

from ..config import TrainingConfig
from ..jsonl import write_json
from ..layouts import TrainedDir, is_saved_model


def publish_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Replace ``final_dir`` by the fully written ``tmp_dir`` (rename: never half-written)."""
    old = None
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}.old-{os.getpid()}")
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def link_or_copy_tree(src: Path, dst: Path) -> None:
    """Place a saved model at ``dst`` (hard links where possible: no second copy on disk), published
    whole like :func:`publish_dir`."""
    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, copy_function=link)
    publish_dir(tmp, dst)


def looks_like_local_path(name: str) -> bool:
    """A Hub id is ``name`` or ``org/name``; anything else path-like is a local path."""
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def check_base_model(base_model: Union[str, Path]) -> str:
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


def training_fingerprint(base_model: str, cfg: TrainingConfig, rows: list, prompt_template: str, system: Optional[str],
                 method: str = "sft") -> str:
    # what changes the optimisation; bookkeeping fields may differ between a run and its resume
    bookkeeping = ("progress_bar", "keep_checkpoints", "cpu_threads", "save_steps", "logging_steps", "report_to")
    semantic = {k: v for k, v in asdict(cfg).items() if k not in bookkeeping}
    h = hashlib.sha256()
    head = {"base_model": base_model, "cfg": semantic, "template": prompt_template, "system": system}
    if method != "sft":
        head["method"] = method
    h.update(json.dumps(head, sort_keys=True).encode())
    for r in rows:
        h.update(json.dumps([r["input_ids"], r["labels"]] if method == "sft" else r, sort_keys=True).encode())
    return h.hexdigest()


@contextlib.contextmanager
def tracker_logs(cfg: TrainingConfig, layout: TrainedDir):
    """While the trainer is built and trains: TensorBoard's events go to ``layout.tracker_logs`` (transformers'
    ``TENSORBOARD_LOGGING_DIR``), not to its default under ``checkpoints/``, which goes once the model is saved."""
    if cfg.report_to not in ("tensorboard", "all"):
        yield
        return
    before = os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(layout.tracker_logs)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
        else:
            os.environ["TENSORBOARD_LOGGING_DIR"] = before


def _find_resumable(layout: TrainedDir, fingerprint: str) -> Optional[Path]:
    """The last complete checkpoint (the trainer's counters, written last, are in it: a run killed while saving
    leaves an incomplete one) made from ``fingerprint``."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    from .trainer import COUNTERS_FILE

    ckpt_dir = layout.checkpoints
    if not ckpt_dir.is_dir():
        return None
    fp_file = layout.checkpoint_fingerprint
    saved = json.loads(fp_file.read_text()).get("fingerprint") if fp_file.is_file() else None
    if saved != fingerprint:
        return None
    done = [p for p in ckpt_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
            if p.name.rsplit("-", 1)[1].isdigit() and (p / COUNTERS_FILE).is_file()]
    return max(done, key=lambda p: int(p.name.rsplit("-", 1)[1])) if done else None


def loss_history_from(log_history: list, extra_keys: Sequence[str] = ()) -> list:
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


def prepare_checkpoints(layout: TrainedDir, fingerprint: str, resume: bool) -> Optional[Path]:
    """The checkpoint to resume from (one made from the same fingerprint), if any and if ``resume``;
    other checkpoints are removed, and the fingerprint is stored for the checkpoints to come."""
    resume_from = _find_resumable(layout, fingerprint) if resume else None
    if resume_from is None and layout.checkpoints.exists():
        shutil.rmtree(layout.checkpoints)  # stale (other data/config) or resume=False
    elif resume_from is not None:  # an incomplete checkpoint after it (a run killed while saving) goes
        for other in layout.checkpoints.glob("checkpoint-*"):
            if other != resume_from and other.is_dir():
                shutil.rmtree(other)
    layout.checkpoints.mkdir(parents=True, exist_ok=True)
    write_json(layout.checkpoint_fingerprint, {"fingerprint": fingerprint})
    return resume_from
