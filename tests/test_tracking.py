"""Experiment tracking (``training.report_to``): TRL gets the knob for every method, TensorBoard's event
files land in the method folder (``TrainedDir.tracker_logs``) and outlive the checkpoints, and the knob
is bookkeeping: no stage fingerprint and no checkpoint fingerprint changes with it.

Trains the session's random tiny Llama (``tiny_model_dir`` from conftest, standing in for the toy
student that stage 00 pre-trains) with the smoke profile's ``training`` section, on CPU, for real.
"""
from __future__ import annotations

import os

import pytest

from orion_utils import device, stage_specs
from orion_utils.config import load_profile
from orion_utils.layouts import TrainedDir
from orion_utils.records import SFTExample
from orion_utils.rundir import stable_hash
from orion_utils.training import train_sft
from orion_utils.training.files import training_fingerprint
from orion_utils.training.trainer import sft_args


def _examples(n: int) -> list[SFTExample]:
    return [SFTExample(f"p{i}", f"{3 + i}+{4 + i}?", f"<think>{3 + i}+{4 + i}={7 + 2 * i}</think> \\boxed{{{7 + 2 * i}}}",
                       "teacher") for i in range(n)]


def _scalars(logdir) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_logs_the_smoke_profiles_training_into_the_method_folder(tiny_model_dir, tmp_path):
    pytest.importorskip("tensorboard")  # the dev extra installs it
    cfg = load_profile("smoke", {"training": {"report_to": "tensorboard", "logging_steps": 1, "cpu_threads": 1}})
    assert load_profile("smoke").training.report_to == "none"  # the default: our machines are offline
    before = os.environ.get("TENSORBOARD_LOGGING_DIR")
    out = tmp_path / "sft"
    with device.torch_threads(1):
        result = train_sft(tiny_model_dir, _examples(16), out, cfg.training)
    layout = TrainedDir(out)
    events = sorted(layout.tracker_logs.glob("events.out.tfevents.*"))
    assert events, f"no TensorBoard event file in {layout.tracker_logs}"
    assert not layout.checkpoints.exists()  # the checkpoints went; the event files stayed
    scalars = _scalars(layout.tracker_logs)
    losses = [h["loss"] for h in result.loss_history]
    assert len(losses) == cfg.training.max_steps == 6
    assert scalars["train/loss"] == pytest.approx(losses, rel=1e-6)  # the curve our loss_history.json keeps
    assert os.environ.get("TENSORBOARD_LOGGING_DIR") == before  # restored after training

    # report_to: none (the default) writes no event file
    plain = tmp_path / "plain"
    with device.torch_threads(1):
        train_sft(tiny_model_dir, _examples(4), plain, load_profile("smoke", {"training": {"max_steps": 1}}).training)
    assert not TrainedDir(plain).tracker_logs.exists()


def test_every_method_passes_report_to_to_trl(tmp_path):
    """SFT/ORION train with the training section, EDIT's stage 2 and Tailored Learning's rounds with their
    own sections (which inherit it); all build their TRL arguments in ``trainer.sft_args``."""
    cfg = load_profile("smoke", {"training": {"report_to": "tensorboard"}, "tailored": {"report_to": "wandb"}})
    assert (cfg.training.report_to, cfg.edit.report_to, cfg.tailored.report_to) == ("tensorboard", "tensorboard", "wandb")
    for section, expected in ((cfg.training, ["tensorboard"]), (cfg.edit, ["tensorboard"]), (cfg.tailored, ["wandb"])):
        args = sft_args(section, tmp_path / "ckpt", "padded", "cpu", "float32", 8)
        assert args.report_to == expected
    default = load_profile("smoke")
    for section in (default.training, default.edit, default.tailored):
        assert sft_args(section, tmp_path / "ckpt", "padded", "cpu", "float32", 8).report_to == []


def test_report_to_is_checked_at_load():
    from orion_utils.knobs import ConfigError

    with pytest.raises(ConfigError, match="report_to"):
        load_profile("smoke", {"training": {"report_to": "tensorbored"}})


def test_report_to_is_bookkeeping_in_every_fingerprint():
    """Neither a stage's fingerprint (``stage_specs.fingerprint``) nor the checkpoints' (``training_fingerprint``)
    changes with it, so switching a tracker on never re-trains or drops a resumable checkpoint."""
    plain = load_profile("smoke")
    tracked = load_profile("smoke", {"training": {"report_to": "tensorboard"}})
    assert tracked.edit.report_to == tracked.tailored.report_to == "tensorboard"
    for stage, names in stage_specs.READS.items():
        one, _ = stage_specs.fingerprint(None, stage, *[getattr(plain, n) for n in names])
        two, _ = stage_specs.fingerprint(None, stage, *[getattr(tracked, n) for n in names])
        assert stable_hash(one) == stable_hash(two), stage
    rows = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}]
    for a, b in ((plain.training, tracked.training), (plain.edit, tracked.edit), (plain.tailored, tracked.tailored)):
        assert training_fingerprint("m", a, rows, "{question}", None) == training_fingerprint("m", b, rows, "{question}", None)
    # while a setting that changes the optimisation does change them
    other = load_profile("smoke", {"training": {"learning_rate": 0.5}})
    assert training_fingerprint("m", plain.training, rows, "{question}", None) != \
        training_fingerprint("m", other.training, rows, "{question}", None)
