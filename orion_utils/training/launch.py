"""Data-parallel training: one training run on N processes (``parallel.gpus``), each a rank of
``torchrun`` (gloo, on a machine without CUDA: the CPU rehearsal) or of ``accelerate launch`` with a
shipped config (``configs/accelerate/<parallel.training>.yaml``, on CUDA).

The parent (the notebook, ``orion run``) prepares the run once (tokenizer, rows, fingerprint,
checkpoints: ``train._train_rows``), hands it to the ranks in a pickled file, streams rank 0's output,
waits, and reads back ``train_result.json``; a failed rank makes it raise one :class:`RanksFailed`
(the rank, its exit code, the last lines of its output). Each rank trains the same rows; only rank 0
writes to the run directory (the model, loss_history.json, train_result.json, the checkpoints as the
Trainer saves them: each rank adds its own RNG state).

The global batch is the profile's ``batch_size x grad_accum`` whatever N (:func:`split_batch`): each rank
accumulates ``grad_accum / N`` micro-batches when N divides ``grad_accum``, else takes ``batch_size / N``
rows of each micro-batch (accelerate's ``split_batches``: the length-grouped sampler still groups whole
micro-batches) when N divides ``batch_size``. The loss is normalised by the supervised tokens of all ranks
(transformers' ``average_tokens_across_devices``), so N = 2 trains as N = 1 does (see docs/parallel.md)."""
from __future__ import annotations

import contextlib
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..config import CHECKOUT_DIR, split_global_batch
from ..device import cores_per_rank

ACCELERATE_CONFIGS = CHECKOUT_DIR / "configs" / "accelerate"
CALL_FILE = "call.pkl"
_TAIL_LINES = 15


class RanksFailed(RuntimeError):
    """A rank of a data-parallel training run failed: which, its exit code and the end of its output."""


@dataclass(frozen=True)
class RankSplit:
    """How a step's global batch (the profile's ``batch_size x grad_accum``) falls on the ranks."""

    ranks: int
    batch_size: int  # rows a rank takes of each micro-batch
    grad_accum: int  # micro-batches a rank accumulates per optimizer step
    split_batches: bool  # True: each micro-batch is cut between the ranks (accelerate's split_batches)

    @property
    def loader_batch(self) -> int:
        """The DataLoader's batch (the sampler's micro-batch): the whole micro-batch when it is cut."""
        return self.batch_size * self.ranks if self.split_batches else self.batch_size

    def describe(self) -> str:
        if self.ranks == 1:
            return ""
        how = "micro-batches cut between ranks" if self.split_batches else "accumulation split between ranks"
        return f" ranks={self.ranks} (per rank: batch={self.batch_size} accum={self.grad_accum}; {how})"


def split_batch(batch_size: int, grad_accum: int, ranks: int, who: str = "training",
                refuse_batch_split: Optional[str] = None) -> RankSplit:
    """The :class:`RankSplit` keeping ``batch_size x grad_accum`` as the global batch on ``ranks`` processes
    (the rule is ``config.split_global_batch``'s, which a profile is checked against when it loads). A method
    whose micro-batches cannot be cut (``refuse_batch_split`` says why) and whose ``grad_accum`` the ranks
    cannot share trains in one process, said in one line; N dividing neither knob is one clear error."""
    if ranks > 1 and refuse_batch_split is not None and grad_accum % ranks:
        print(f"[training] {who}: parallel.gpus={ranks} does not divide grad_accum={grad_accum}, and "
              f"{refuse_batch_split}: it trains in one process (a grad_accum that is a multiple of {ranks} spreads "
              "it over the ranks, with the same global batch)", flush=True)
        ranks = 1
    try:
        per_rank, accum = split_global_batch(batch_size, grad_accum, ranks)
    except ValueError as exc:
        raise ValueError(f"{who}: {exc}") from None
    return RankSplit(ranks, per_rank, accum, per_rank != batch_size)


def training_ranks(parallel, backend: str) -> tuple[int, Optional[str]]:
    """``(ranks, note)``: the processes a training run uses under ``parallel`` (a ``ParallelConfig`` or None)
    with ``backend``; the note says why fewer than asked (Unsloth trains on one GPU: its patched trainer
    does not run under a distributed launch here)."""
    asked = int(getattr(parallel, "gpus", 1) or 1)
    if asked <= 1:
        return 1, None
    if backend == "unsloth":
        return 1, (f"[training] parallel.gpus={asked}: Unsloth trains on one GPU (its patched trainer is not run "
                   "distributed here); set training.backend: trl to train on every GPU")
    return asked, None


def in_rank() -> bool:
    """Whether this process is a rank of a distributed launch (torchrun, accelerate launch)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_rank() -> bool:
    return rank() == 0


def sum_over_ranks(*values: float) -> list[float]:
    """``values`` summed over the ranks (float64), as they are in one process."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return [float(v) for v in t.cpu().tolist()]


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# -- the parent: launch, stream, wait -----------------------------------------------------------


def launcher_command(ranks: int, training: str, cuda: bool, call_file: Path) -> tuple[list[str], Optional[str]]:
    """``(command, note)``: torchrun on CPU (gloo; ``accelerate launch --cpu`` would start one process), else
    ``accelerate launch`` with ``configs/accelerate/<training>.yaml``."""
    entry = ["-m", "orion_utils.training.launch", str(call_file)]
    if not cuda:
        note = None if training == "ddp" else (
            f"[training] parallel.training={training} needs CUDA (DeepSpeed/FSDP); without it the ranks run DDP on gloo")
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                *entry], note
    config = ACCELERATE_CONFIGS / f"{training}.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"parallel.training={training}: no accelerate config {config}")
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
            "--num_processes", str(ranks), "--main_process_port", str(_free_port()), *entry], None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(call: dict, ranks: int, training: str, cuda: bool) -> None:
    """Train ``call`` (``train.train_prepared``'s argument) on ``ranks`` processes; returns when rank 0 has
    written the results, raises :class:`RanksFailed` when a rank fails."""
    work = Path(tempfile.mkdtemp(prefix="orion-ranks-"))
    call_file = work / CALL_FILE
    call_file.write_bytes(pickle.dumps(call))
    command, note = launcher_command(ranks, training, cuda, call_file)
    if note:
        print(note, flush=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(CHECKOUT_DIR), *filter(None, [env.get("PYTHONPATH")])])
    if not cuda:  # the cores shared between the ranks
        env["OMP_NUM_THREADS"] = str(cores_per_rank(ranks))
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=str(work),
                            start_new_session=True, text=True, errors="replace")
    launcher_out: list[str] = []
    reader = threading.Thread(target=lambda: launcher_out.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        with _Tail(work / "rank_0.log") as tail:
            while proc.poll() is None:
                tail.show()
                time.sleep(0.2)
            reader.join(timeout=5)
            tail.show()
    except BaseException:  # a notebook's interrupt: no rank left behind
        _stop(proc)
        raise
    if proc.returncode != 0:
        (work / "launcher.log").write_text("".join(launcher_out), encoding="utf-8")
        raise RanksFailed(failure_message(work, "".join(launcher_out), ranks, proc.returncode)) from None
    shutil.rmtree(work, ignore_errors=True)


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class _Tail:
    """Prints the lines a file gains (rank 0's output, as a notebook shows it)."""

    def __init__(self, path: Path):
        self.path, self.handle, self.rest = path, None, ""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.close()

    def show(self) -> None:
        if self.handle is None:
            if not self.path.exists():
                return
            self.handle = open(self.path, encoding="utf-8", errors="replace")
        text = self.rest + self.handle.read()
        *lines, self.rest = text.split("\n")
        for line in lines:
            print(line, flush=True)


_FAILURE = re.compile(r"^\s*rank\s*:\s*(\d+)[^\n]*\n\s*exitcode\s*:\s*(-?\d+)", re.M)


def failure_message(work: Path, launcher_out: str, ranks: int, returncode: int) -> str:
    """One paragraph: the rank that failed first, its exit code (a signal named), the last lines of its output.
    First: a rank the launcher saw killed by a signal (not its own SIGTERM to the others), which could say
    nothing; else the first rank that wrote its error (``rank_<r>.exit``; its peers then fail in a collective
    after it); else the launcher's root cause."""
    failed, code = None, returncode
    reported = [(int(r), int(c)) for r, c in _FAILURE.findall(launcher_out)]
    killed = [(r, c) for r, c in reported if c < 0 and c != -signal.SIGTERM]
    exits = sorted(work.glob("rank_*.exit"), key=lambda p: p.stat().st_mtime)
    if killed:
        failed, code = killed[0]
    elif exits:
        failed, code = int(exits[0].stem.split("_")[1]), int(exits[0].read_text().strip() or 1)
    elif reported:
        root = _FAILURE.findall(launcher_out.split("Root Cause", 1)[-1]) or reported
        failed, code = int(root[0][0]), int(root[0][1])
    what = f"exit code {code}"
    if code < 0:
        with contextlib.suppress(ValueError):
            what += f" ({signal.Signals(-code).name})"
    log = work / f"rank_{failed}.log" if failed is not None else None
    if log is not None and log.is_file():
        lines = log.read_text(encoding="utf-8", errors="replace").rstrip().splitlines()[-_TAIL_LINES:]
    else:
        lines = launcher_out.rstrip().splitlines()[-_TAIL_LINES:]
    who = f"rank {failed} of {ranks}" if failed is not None else f"one of the {ranks} ranks"
    return (f"data-parallel training failed: {who} ended with {what}; the ranks' logs are in {work}. "
            f"Its last lines:\n" + "\n".join("    " + line for line in lines))


# -- a rank -------------------------------------------------------------------------------------


def _redirect_output(log: Path) -> None:
    """This rank's stdout and stderr (Python's and the C libraries') into ``log``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    sys.stderr = sys.stdout


def main(argv: list[str]) -> int:
    """A rank: train the pickled call, its output in ``rank_<r>.log`` beside it; an error is written there
    and in ``rank_<r>.exit`` (exit code 1)."""
    call_file = Path(argv[0])
    r = rank()
    _redirect_output(call_file.parent / f"rank_{r}.log")
    try:
        call = pickle.loads(call_file.read_bytes())
        call["train"](call)  # train.train_prepared, by reference: this module imports no training step
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - whatever it is, the parent reports it
        traceback.print_exc()
        sys.stdout.flush()
        (call_file.parent / f"rank_{r}.exit").write_text("1")
        os._exit(1)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
