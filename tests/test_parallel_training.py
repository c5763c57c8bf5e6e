"""Data-parallel training (``training.launch``) rehearsed on CPU: two real ranks of torchrun on the gloo
backend, real TRL/transformers/accelerate, the toy student of conftest (and SmolLM2, slow).

What must hold (issue #28): with the profile's global batch (``batch_size x grad_accum``) the loss history
and the trained weights at N = 2 equal N = 1 within float tolerance (fp32, no dropout), under both batch
rules (accumulation split; micro-batch cut); the counters count every rank; only rank 0 writes the run
directory; a killed rank fails the launch with one error and a re-run resumes from rank 0's checkpoint.

Tolerance: the accumulation split sums the same per-micro-batch gradients in another order (gloo's
all-reduce), the micro-batch cut computes each row's forward in a smaller batch: both are float32
rounding, measured at <= 1e-6 on the weights; the tests allow 1e-5 (weights) and 1e-5 relative (losses)."""
from __future__ import annotations

import json
import os
import pickle
import signal
import threading
import time
from pathlib import Path

import pytest

from orion_utils.config import EditConfig, ParallelConfig, TailoredConfig, TrainingConfig
from orion_utils.records import DualPair, SFTExample
from orion_utils.training import TrainResult, train_sft
from orion_utils.training.launch import RanksFailed, RankSplit, failure_message, split_batch, training_ranks

WEIGHT_TOL = 1e-5
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _examples(n: int = 16) -> list[SFTExample]:
    return [SFTExample(problem_id=f"p{i}", question=f"What is {i} plus {3 * i}?",
                       response=f"{i} + {3 * i} = {4 * i}. " * (1 + i % 4) + f"\\boxed{{{4 * i}}}", source="t")
            for i in range(n)]


def _cfg(**kw) -> TrainingConfig:
    base = dict(backend="trl", batch_size=2, grad_accum=2, num_epochs=1, learning_rate=1e-3, logging_steps=1,
                warmup_ratio=0.0, save_steps=-1, batching="length_grouped", lr_scheduler="constant", max_seq_len=256)
    return TrainingConfig(**{**base, **kw})


def _weights(model_dir) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(model_dir) / "model.safetensors"))


def _max_weight_diff(a, b) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def _files(root: Path) -> set:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _same_run(one: TrainResult, two: TrainResult, root1: Path, root2: Path) -> None:
    assert two.ranks == 2 and one.ranks == 1
    assert two.n_steps == one.n_steps and two.n_tokens == one.n_tokens and two.n_examples == one.n_examples
    assert two.nll_sum == pytest.approx(one.nll_sum, rel=1e-5)
    assert [h["step"] for h in two.loss_history] == [h["step"] for h in one.loss_history]
    assert [h["loss"] for h in two.loss_history] == pytest.approx([h["loss"] for h in one.loss_history], rel=1e-5)
    assert _max_weight_diff(one.model_dir, two.model_dir) <= WEIGHT_TOL
    # rank 0 alone wrote the run directory: the same files as one process, and nothing of the ranks'
    assert _files(root2) == _files(root1)


# -- the rules, no launch ----------------------------------------------------------------------------


def test_the_global_batch_is_the_profiles_whatever_n():
    assert split_batch(4, 2, 1) == RankSplit(1, 4, 2, False)
    accum = split_batch(4, 4, 2)  # N divides grad_accum: each rank accumulates half the micro-batches
    assert accum == RankSplit(2, 4, 2, False) and accum.loader_batch == 4
    cut = split_batch(4, 3, 2)  # else N divides batch_size: each rank takes half of every micro-batch
    assert cut == RankSplit(2, 2, 3, True) and cut.loader_batch == 4  # the sampler still groups whole micro-batches
    for s in (accum, cut):
        assert s.batch_size * s.grad_accum * s.ranks == 4 * (4 if s is accum else 3)
    with pytest.raises(ValueError, match=r"training: 2 devices cannot share a step of batch_size=5 x grad_accum=3"):
        split_batch(5, 3, 2)
    # a method whose micro-batches are not cut: the ranks share its accumulation, or it trains in one process
    assert split_batch(4, 2, 2, "tailored", "Tailored Learning's batches are not cut") == RankSplit(2, 4, 1, False)
    assert split_batch(4, 1, 2, "tailored", "Tailored Learning's batches are not cut") == RankSplit(1, 4, 1, False)
    assert "ranks=2 (per rank: batch=2 accum=3; micro-batches cut" in cut.describe()


def test_unsloth_trains_on_one_gpu_with_one_message():
    assert training_ranks(None, "trl") == (1, None)
    assert training_ranks(ParallelConfig(gpus=4), "trl") == (4, None)
    ranks, note = training_ranks(ParallelConfig(gpus=4), "unsloth")
    assert ranks == 1 and "Unsloth trains on one GPU" in note and "training.backend: trl" in note


def test_the_methods_pickle_for_the_ranks():
    """What a launch hands the ranks (the call file) pickles: the config and the methods' TrainerMethod."""
    from orion_utils.edit import edit_method
    from orion_utils.tailored_training import tailored_method

    for method in (edit_method(EditConfig()), tailored_method(TailoredConfig())):
        back = pickle.loads(pickle.dumps(method))
        assert back.name == method.name and back.trainer_class is method.trainer_class
        assert back.batching("padding_free") == method.batching("padding_free")
    assert tailored_method(TailoredConfig()).refuse_batch_split and edit_method(EditConfig()).refuse_batch_split is None


def test_a_failed_rank_is_named_with_its_exit_code_and_last_lines(tmp_path):
    (tmp_path / "rank_1.log").write_text("".join(f"step {i}\n" for i in range(40)))
    torchrun = ("torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\nFailures:\n  <NO_OTHER_FAILURES>\n"
                "Root Cause (first observed failure):\n[0]:\n  time      : 2025\n  host      : h\n"
                "  rank      : 1 (local_rank: 1)\n  exitcode  : -9 (pid: 123)\n")
    msg = failure_message(tmp_path, torchrun, 2, 1)
    assert msg.startswith("data-parallel training failed: rank 1 of 2 ended with exit code -9 (SIGKILL)")
    assert "step 39" in msg and "step 24" not in msg  # its last lines only
    (tmp_path / "rank_0.exit").write_text("1")  # rank 0 then failed in a collective: rank 1's kill comes first
    assert "rank 1 of 2 ended with exit code -9" in failure_message(tmp_path, torchrun, 2, 1)
    # a rank that raised says so itself; the peer the launcher then stopped (SIGTERM) is not the cause
    stopped = torchrun.replace("rank      : 1", "rank      : 0").replace("exitcode  : -9", "exitcode  : -15")
    (tmp_path / "rank_0.exit").unlink()
    (tmp_path / "rank_1.exit").write_text("1")
    assert "rank 1 of 2 ended with exit code 1;" in failure_message(tmp_path, stopped, 2, 1)


def test_tailored_trains_in_one_process_when_the_ranks_cannot_share_its_accumulation(capsys):
    split_batch(2, 1, 2, "tailored", "Tailored Learning's batches are not cut between ranks")
    out = capsys.readouterr().out
    assert "parallel.gpus=2 does not divide grad_accum=1" in out and "it trains in one process" in out


# -- two real ranks ----------------------------------------------------------------------------------


def test_two_ranks_train_as_one_accumulation_split(tiny_model_dir, tmp_path):
    """grad_accum 2 on 2 ranks: each rank 1 micro-batch of 2 a step. 17 rows: 9 micro-batches, the last of one
    row, so the 5th step has one micro-batch: rank 1 takes a batch of the null row (no label), not rows again."""
    cfg = _cfg(grad_accum=2)
    one = train_sft(tiny_model_dir, _examples(17), tmp_path / "n1", cfg)
    two = train_sft(tiny_model_dir, _examples(17), tmp_path / "n2", cfg, parallel=ParallelConfig(gpus=2))
    assert one.n_steps == 5
    _same_run(one, two, tmp_path / "n1", tmp_path / "n2")
    assert json.loads((tmp_path / "n2" / "train_result.json").read_text())["config"]["grad_accum"] == 2  # the profile's


@pytest.mark.slow
def test_two_ranks_train_as_one_micro_batch_cut(tiny_model_dir, tmp_path):
    """grad_accum 1, batch_size 4 on 2 ranks: each rank takes two rows of every length-grouped micro-batch. 15 rows:
    the last micro-batch has 3, filled up to 4 with the null row (no label), not with a row again."""
    cfg = _cfg(grad_accum=1, batch_size=4)
    one = train_sft(tiny_model_dir, _examples(15), tmp_path / "n1", cfg)
    two = train_sft(tiny_model_dir, _examples(15), tmp_path / "n2", cfg, parallel=ParallelConfig(gpus=2))
    assert one.n_steps == 4
    _same_run(one, two, tmp_path / "n1", tmp_path / "n2")


@pytest.mark.slow
def test_smollm2_two_ranks_train_as_one(tmp_path):
    from orion_utils.students import resolve_student

    smol = resolve_student("smollm2-135m-instruct")
    cfg = _cfg(grad_accum=2, batch_size=1, max_steps=2, max_seq_len=64, learning_rate=1e-5)
    examples = _examples(4)
    one = train_sft(smol, examples, tmp_path / "n1", cfg)
    two = train_sft(smol, examples, tmp_path / "n2", cfg, parallel=ParallelConfig(gpus=2))
    assert one.n_steps == 2
    _same_run(one, two, tmp_path / "n1", tmp_path / "n2")


def _pairs() -> list[DualPair]:
    return [DualPair(problem_id=f"p{i}", question=f"What is {i}+30?",
                     chosen=f"<think>\n{i}+30={i + 30}\n</think>\n\nThe answer is \\boxed{{{i + 30}}}.",
                     rejected=f"<think>\n{i}+30={i + 20}\n</think>\n\nThe answer is \\boxed{{{i + 20}}}.",
                     source="error_exposure") for i in range(8)]


@pytest.mark.slow
def test_edit_stage2_two_ranks_train_as_one(tiny_model_dir, tmp_path):
    """EDIT's loss is a mean over a micro-batch's pairs, which DDP averages over the ranks: exact when each
    rank takes whole micro-batches (the accumulation split)."""
    from orion_utils.edit import train_edit_stage2

    cfg = EditConfig(batch_size=2, grad_accum=2, num_epochs=1, learning_rate=1e-3, lr_scheduler="constant",
                     max_seq_len=256, logging_steps=1, warmup_ratio=0.0, save_steps=-1, nll_guard=None)
    one = train_edit_stage2(tiny_model_dir, _pairs(), tmp_path / "n1", cfg)
    two = train_edit_stage2(tiny_model_dir, _pairs(), tmp_path / "n2", cfg, parallel=ParallelConfig(gpus=2))
    _same_run(one, two, tmp_path / "n1", tmp_path / "n2")
    for key in ("chosen_term", "rejected_term"):  # every rank's micro-batches in the logged components
        assert [h[key] for h in two.loss_history] == pytest.approx([h[key] for h in one.loss_history], rel=1e-5)


@pytest.mark.slow
def test_tailored_round_two_ranks_train_as_one(tiny_model_dir, tmp_path):
    """Tailored Learning's own sampler: each rank takes whole batches (here 4 batches of 3, 3, 3 and 2 rows: an
    epoch of whole steps; an odd number of batches would repeat one under accelerate's even_batches)."""
    from orion_utils.tailored_training import train_tailored_round

    examples = [SFTExample(f"q{i % 4}", f"What is {i % 4}?", f"answer {i} " * (1 + i % 3), "teacher",
                           meta={"positive": f"also {i}", "negative": f"wrong {i}"}) for i in range(11)]
    cfg = TailoredConfig(batch_size=3, grad_accum=2, num_epochs=1, learning_rate=1e-3, lr_scheduler="constant",
                         max_seq_len=256, logging_steps=1, warmup_ratio=0.0, save_steps=-1)
    one = train_tailored_round(tiny_model_dir, examples, tmp_path / "n1", cfg)
    two = train_tailored_round(tiny_model_dir, examples, tmp_path / "n2", cfg, parallel=ParallelConfig(gpus=2))
    _same_run(one, two, tmp_path / "n1", tmp_path / "n2")


def _rank_pid(rank: int):
    """The pid of a running rank of a launch (its environment says RANK)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"orion_utils.training.launch" in cmd and f"RANK={rank}".encode() in env:
            return int(proc.name)
    return None


@pytest.mark.slow
def test_a_killed_rank_fails_the_launch_and_a_rerun_resumes(tiny_model_dir, tmp_path):
    cfg = _cfg(grad_accum=2, num_epochs=12, save_steps=4)  # 48 steps, a checkpoint every 4
    examples = _examples()
    whole = train_sft(tiny_model_dir, examples, tmp_path / "whole", cfg, parallel=ParallelConfig(gpus=2))
    out = tmp_path / "killed"
    killed: list = []

    def kill_rank_1_after_a_checkpoint():
        deadline = time.time() + 240
        while time.time() < deadline:
            ckpts = list((out / "checkpoints").glob("checkpoint-*/orion_counters.json"))
            pid = _rank_pid(1)
            if ckpts and pid:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_rank_1_after_a_checkpoint, daemon=True)
    killer.start()
    with pytest.raises(RanksFailed) as failed:
        train_sft(tiny_model_dir, examples, out, cfg, parallel=ParallelConfig(gpus=2))
    killer.join()
    assert killed, "the run ended before rank 1 could be killed"
    assert "rank 1 of 2 ended with exit code -9 (SIGKILL)" in str(failed.value)
    assert failed.value.__cause__ is None and not (out / "model").exists()
    again = train_sft(tiny_model_dir, examples, out, cfg, parallel=ParallelConfig(gpus=2))
    assert again.resumed_from is not None and again.resumed_from.startswith("checkpoint-")
    assert again.n_steps == whole.n_steps == 48 and again.n_tokens == whole.n_tokens
    assert again.nll_sum == pytest.approx(whole.nll_sum, rel=1e-5)
    assert _max_weight_diff(whole.model_dir, again.model_dir) <= WEIGHT_TOL


@pytest.mark.slow
def test_one_launched_rank_trains_as_this_process(tiny_model_dir, tmp_path):
    """The launch itself changes nothing: one torchrun rank gives this process's run to the last bit (the GPU
    tier asks the same of one `accelerate launch` process on CUDA: tests/gpu/test_parallel_on_gpu.py)."""
    from orion_utils.training.rows import build_sft_rows
    from orion_utils.training.train import launch_prepared, prepare_run

    cfg = _cfg()
    one = train_sft(tiny_model_dir, _examples(), tmp_path / "here", cfg)
    call, _ = prepare_run(tiny_model_dir, tmp_path / "launched", cfg,
                          lambda tok: build_sft_rows(tok, _examples(), max_seq_len=cfg.max_seq_len), len(_examples()))
    launched = launch_prepared(call, 1)
    assert launched.n_steps == one.n_steps and launched.n_tokens == one.n_tokens
    assert [h["loss"] for h in launched.loss_history] == [h["loss"] for h in one.loss_history]
    assert _max_weight_diff(one.model_dir, launched.model_dir) == 0.0


def test_the_ranks_last_steps_are_filled_with_the_null_row_not_rows_again():
    from orion_utils.training.rows import LengthGroupedSampler, pad_for_ranks

    batches = [[0, 1, 2], [3, 4, 5], [6]]
    assert pad_for_ranks(batches, 3, 1, False, 9) == batches  # one process: as they are
    # each rank takes whole batches: every batch full, and as many as the ranks can share
    assert pad_for_ranks(batches, 3, 2, False, 9) == [[0, 1, 2], [3, 4, 5], [6, 9, 9], [9, 9, 9]]
    # each micro-batch cut between the ranks: filled up to the micro-batch
    assert pad_for_ranks(batches, 3, 3, True, 9) == [[0, 1, 2], [3, 4, 5], [6, 9, 9]]
    lengths = [5, 3, 8, 1, 9, 4, 2]
    one = list(LengthGroupedSampler(lengths, 2, seed=3))
    two = list(LengthGroupedSampler(lengths, 2, seed=3, ranks=2, null=7))
    assert [i for i in two if i != 7] == one and len(two) == 8  # 4 batches of 2: the last is the null row's
    shuffled = list(LengthGroupedSampler(lengths, 2, seed=3, shuffle=True, ranks=2, split_batches=True, null=7))
    assert sorted(i for i in shuffled if i != 7) == list(range(7)) and len(shuffled) == 8
