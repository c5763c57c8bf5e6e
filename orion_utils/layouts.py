"""The layouts of the method folders ``models/<method>/``: what one training run leaves, and the
phases of a method trained in several (EDIT's two stages, Tailored Learning's rounds).

The method registry (``methods.Method.folder``) says which layout each method's folder has, and
``RunDir.trained(method)`` builds it; code finds these files through it. Imports nothing heavy.
"""
from __future__ import annotations

from pathlib import Path

PathLike = str | Path


def is_saved_model(path: PathLike) -> bool:
    """A folder written by ``save_pretrained``: a model (its ``config.json``) or a LoRA adapter
    (``adapter_config.json``, ``orion_utils.adapters``)."""
    return (Path(path) / "config.json").is_file() or (Path(path) / "adapter_config.json").is_file()


class TrainedDir:
    """The folder one training run (``training.train_sft`` / ``train_method``) writes.

    ``model/`` the saved model, ``loss_history.json`` the logged losses, ``train_result.json``
    the training facts, ``checkpoints/`` (with ``fingerprint.json``, the fingerprint of the data
    and settings the checkpoints belong to) while training runs. A method trained in several
    phases says which (``phases``) and where it keeps its training examples (``training_files``).
    """

    def __init__(self, root: PathLike):
        self.root = Path(root)

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def loss_history(self) -> Path:
        return self.root / "loss_history.json"

    @property
    def train_result(self) -> Path:
        return self.root / "train_result.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def checkpoint_fingerprint(self) -> Path:
        return self.checkpoints / "fingerprint.json"

    @property
    def tracker_logs(self) -> Path:
        """TensorBoard's event files under ``training.report_to: tensorboard`` (kept: not in ``checkpoints/``)."""
        return self.root / "runs"

    def phases(self) -> list[TrainedDir]:
        """The trained folders of the phases, in order (their loss curves are joined into this
        folder's ``loss_history.json``); none for a method trained once."""
        return []

    def training_files(self) -> list[Path]:
        """The training examples kept in this folder (besides a ``data/training_set_<m>.jsonl``)."""
        return []


class KeyStepDir(TrainedDir):
    """EDIT stage 2 (key-reasoning-step learning): a trained folder plus ``pairs_with_ops.jsonl``
    (the dual pairs with their key operations in the student's tokenizer)."""

    @property
    def pairs_with_ops(self) -> Path:
        return self.root / "pairs_with_ops.jsonl"


class EditDir(TrainedDir):
    """``models/edit/`` (``edit.run_edit``): ``pairs.jsonl`` (dual CoT pairs), ``pairs_summary.json`` (their
    kinds and key-token share), ``stage1_examples.jsonl``
    (stage 1's training set), ``stage1/`` and ``stage2/`` (trained folders), the final ``model/`` and
    the joined ``loss_history.json``."""

    @property
    def pairs(self) -> Path:
        return self.root / "pairs.jsonl"

    @property
    def pair_summary(self) -> Path:
        """The pairs in numbers (``edit_pairs.key_share_summary``): kinds, the teacher's replies rejected, the
        key-token share, the pairs dropped above ``edit.max_key_share``."""
        return self.root / "pairs_summary.json"

    @property
    def stage1_examples(self) -> Path:
        return self.root / "stage1_examples.jsonl"

    @property
    def stage1(self) -> TrainedDir:
        return TrainedDir(self.root / "stage1")

    @property
    def stage2(self) -> KeyStepDir:
        return KeyStepDir(self.root / "stage2")

    def phases(self) -> list[TrainedDir]:
        return [self.stage1, self.stage2]

    def training_files(self) -> list[Path]:
        """Stage 1's examples (the SFT stage; stage 2 learns key steps from the pairs)."""
        return [self.stage1_examples]


class RoundDir(TrainedDir):
    """One Tailored Learning round ``round_<r>/``: ``exam.jsonl`` (the student's graded attempts; while the
    exam runs, its finished chunks in ``exam.partial.jsonl``), ``teacher.jsonl`` (the teacher's rationales), ``train.jsonl`` (the round's training set),
    ``result.json`` (the round's facts), and the trained folder's files."""

    @property
    def exam(self) -> Path:
        return self.root / "exam.jsonl"

    @property
    def exam_partial(self) -> Path:
        return self.root / "exam.partial.jsonl"

    @property
    def teacher(self) -> Path:
        return self.root / "teacher.jsonl"

    @property
    def train(self) -> Path:
        return self.root / "train.jsonl"

    @property
    def result(self) -> Path:
        return self.root / "result.json"


class TailoredDir(TrainedDir):
    """``models/tailored/`` (``tailored.run_tailored``): ``round_<r>/`` per round (``round_0`` is the
    base student's exam), ``rounds.json`` (every round's facts), the final ``model/`` and the joined
    ``loss_history.json``."""

    def round(self, r: int) -> RoundDir:
        return RoundDir(self.root / f"round_{r}")

    def rounds(self) -> list[RoundDir]:
        """The rounds on disk, in round order."""
        found = [p for p in self.root.glob("round_*") if p.is_dir() and p.name[len("round_"):].isdigit()]
        return [RoundDir(p) for p in sorted(found, key=lambda p: int(p.name[len("round_"):]))]

    @property
    def rounds_summary(self) -> Path:
        return self.root / "rounds.json"

    def phases(self) -> list[TrainedDir]:
        return list(self.rounds())

    def training_files(self) -> list[Path]:
        """Every round's ``train.jsonl``, in round order."""
        return [r.train for r in self.rounds()]
