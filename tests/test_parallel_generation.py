"""Data-parallel generation (``parallel_generation``, ``parallel.generation: data``): two real worker processes
on this machine's cores, the real transformers backend in each, against one process.

The model is the toy student (micro size, random weights) with its end-of-turn row scaled up, so its
samples end at random lengths: texts, token counts and finish reasons all show whether a sample moved. The
evaluation stage runs the smoke profile's evaluation on the toy benchmarks; a worker is killed mid-stage with
SIGKILL from inside the stage's generation call (after its first chunk is saved), and the re-run resumes."""
from __future__ import annotations

import dataclasses
import os
import signal
import time

import pytest

from orion_utils.config import GenerationConfig, ParallelConfig, StudentConfig, load_profile
from orion_utils.generation import SamplingConfig, StageModel, load_generator, open_generator
from orion_utils.knobs import ConfigError
from orion_utils.parallel_generation import GenerationWorkerError, ParallelGenerator, rank_environment

QUESTIONS = [f"Ann has {i} apples and buys {3 * i + 1} more. How many apples does she have?" for i in range(9)]
QUESTIONS[4] = "Hi"  # prompts of different lengths: the plan's batches mix them
TWO = ParallelConfig(gpus=2)
GEN = GenerationConfig(backend="transformers", batch_size=4)
SAMPLED = SamplingConfig(n=3, temperature=1.0, top_p=0.95, max_new_tokens=24, seed=11)
GREEDY = SamplingConfig(n=2, temperature=0.0, max_new_tokens=24, seed=11)


@pytest.fixture(scope="module")
def toy_student(tmp_path_factory) -> str:
    """The micro toy student, its end-of-turn row scaled by 20 (tied: its input row too): samples end at 1 to 24 tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from orion_utils.toy.student import ToyStudentConfig, build_toy_student

    path = str(build_toy_student(tmp_path_factory.mktemp("toy_student"), ToyStudentConfig(
        hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=64, max_position_embeddings=512)))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight[AutoTokenizer.from_pretrained(path).eos_token_id] *= 20
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def one(toy_student):
    g = open_generator(toy_student, GEN, seed=0, progress=False)
    yield g
    g.close()


@pytest.fixture(scope="module")
def two(toy_student):
    g = open_generator(toy_student, GEN, seed=0, parallel=TWO)
    yield g
    g.close()


def test_two_workers_give_one_process_samples_byte_for_byte(one, two, capsys):
    assert isinstance(two, ParallelGenerator) and two.name == "transformers" and not two.can_score
    assert [p.is_alive() for p in two._procs] == [True, True]
    for sampling in (SAMPLED, GREEDY):
        a, b = one.generate(QUESTIONS, sampling), two.generate(QUESTIONS, sampling)
        assert b == a  # texts, token counts, finish reasons, in input order
    a = one.generate(QUESTIONS, SAMPLED)
    assert len({g.n_tokens for row in a for g in row}) > 3 and {g.finish_reason for row in a for g in row} == {"stop", "length"}
    # groups (evaluation's greedy + sampled chunk), an assistant prefix, and a call smaller than the worker count
    groups = [(QUESTIONS, GREEDY), (QUESTIONS[:5], SAMPLED)]
    assert two.generate_groups(groups) == one.generate_groups(groups)
    assert (two.generate(QUESTIONS, SAMPLED, assistant_prefix="Step 1:")
            == one.generate(QUESTIONS, SAMPLED, assistant_prefix="Step 1:"))
    tiny = SamplingConfig(n=1, temperature=1.0, max_new_tokens=8, seed=2)
    assert two.generate(QUESTIONS[:1], tiny) == one.generate(QUESTIONS[:1], tiny) and two.generate([], tiny) == []


def test_each_batch_of_the_plan_samples_the_same_alone_in_any_order(one):
    """The property the workers rest on: a batch's samples depend on its index and the call, not on the batches
    run before it in the same process."""
    from orion_utils.sampling import encode_prompts

    encoded = encode_prompts(one.tokenizer, QUESTIONS)
    whole = dict(one.generate_share(encoded, SAMPLED))
    parts = {}
    for rank in (2, 0, 1):  # any order, three "ranks"
        parts.update(one.generate_share(encoded, SAMPLED, rank=rank, world=3))
    assert parts == whole and len(whole) == len(QUESTIONS) * SAMPLED.n
    plan = one.batch_plan([len(e) for e in encoded], SAMPLED.n, SAMPLED.max_new_tokens)
    assert len(plan) >= 3  # more batches than ranks: every rank had work


@pytest.mark.slow
def test_stage_model_keeps_scoring_in_the_main_process(toy_student, capsys):
    with StageModel(toy_student, GEN, seed=0, parallel=TWO) as model:
        gen = model.generator()
        assert isinstance(gen, ParallelGenerator)
        procs = list(gen._procs)
        nll = model.score(QUESTIONS[:2], ["4", "5"])
        assert model._generator is None and not any(p.is_alive() for p in procs)  # workers closed before scoring
    with StageModel(toy_student, GEN, seed=0) as alone:
        assert nll == alone.score(QUESTIONS[:2], ["4", "5"])


def test_a_killed_worker_stops_the_call_with_one_error_naming_it(toy_student):
    gen = load_generator(toy_student, "transformers", batch_size=4, parallel=TWO, progress=False)
    procs = list(gen._procs)
    os.kill(procs[1].pid, signal.SIGKILL)
    started = time.time()
    with pytest.raises(GenerationWorkerError, match=r"worker rank 1 of 2 .* died \(exit code -9, killed by SIGKILL\)") as err:
        gen.generate(QUESTIONS, SAMPLED)
    assert time.time() - started < 10
    assert (err.value.rank, err.value.exitcode) == (1, -9)
    assert not any(p.is_alive() for p in procs)  # the other worker was closed too
    with pytest.raises(RuntimeError, match="closed"):
        gen.generate(QUESTIONS, SAMPLED)
    gen.close()


@pytest.mark.slow
def test_a_worker_that_raises_names_its_rank_and_the_others_are_closed(tmp_path):
    from conftest import build_tiny_model_dir

    path = build_tiny_model_dir(tmp_path / "m")
    os.remove(os.path.join(path, "model.safetensors"))  # the tokenizer loads here, the model in no worker
    with pytest.raises(GenerationWorkerError, match=r"worker rank [01] of 2 failed: "):
        load_generator(path, "transformers", parallel=TWO, progress=False)


def test_tensor_parallelism_with_the_transformers_backend_is_one_clear_error(toy_student):
    tensor = ParallelConfig(gpus=2, generation="tensor")
    with pytest.raises(ConfigError, match="parallel.generation: tensor needs the vLLM backend"):
        open_generator(toy_student, GEN, parallel=tensor)
    with pytest.raises(ConfigError, match="tensor needs the vLLM backend"):
        StageModel(toy_student, GEN, parallel=tensor).generator()


def test_each_rank_gets_its_gpu_or_its_share_of_the_cores(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert rank_environment(1, 2, cuda=True) == ({"CUDA_VISIBLE_DEVICES": "1"}, None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert rank_environment(1, 2, cuda=True) == ({"CUDA_VISIBLE_DEVICES": "6"}, None)
    assert rank_environment(0, 2, cuda=False, cores=[0, 1]) == ({"OMP_NUM_THREADS": "1", "VLLM_CPU_OMP_THREADS_BIND": "0"}, 1)
    assert rank_environment(1, 2, cuda=False, cores=[0, 1, 2, 3, 4]) == (
        {"OMP_NUM_THREADS": "2", "VLLM_CPU_OMP_THREADS_BIND": "2-3"}, 2)
    assert rank_environment(2, 3, cuda=False, cores=[0, 1])[0]["VLLM_CPU_OMP_THREADS_BIND"] == "0"  # more ranks than cores


# ------------------------------------------------------------------------------------------------
# a stage at N = 2: the evaluation stage of the smoke profile's run


def _smoke_run(root, student_dir):
    from orion_utils.jsonl import write_json
    from orion_utils.prepare import run_prepare_data
    from orion_utils.rundir import RunDir

    cfg = load_profile("smoke")
    run = RunDir(root)
    run_prepare_data(run, cfg.data, cfg.toy_domain)
    write_json(run.student_info, {"model": student_dir, "in_run_dir": False, "kind": "pretrained"})
    evaluation = dataclasses.replace(cfg.evaluation, methods=["base"], chunk_questions=4, max_new_tokens=32)
    return run, evaluation, dataclasses.replace(cfg.generation, backend="transformers", batch_size=8)


@pytest.mark.slow  # three generators opened, two of them spawning workers: about 20-30 s on 2 busy cores
def test_the_evaluation_stage_at_two_workers_resumes_after_a_kill_and_writes_the_same_files(
        tmp_path, toy_student, monkeypatch, capsys):
    from orion_utils.evaluation import run_evaluation

    student = StudentConfig(model="unused")
    run1, cfg, gen = _smoke_run(tmp_path / "one", toy_student)
    metrics = run_evaluation(run1, cfg, gen, student)
    files = run1.eval_files("base")
    assert len(files) == 2 and sum(len(f.read_text().splitlines()) for f in files) == 24 * 3  # 24 problems x (1 + 2)

    # SIGKILL rank 1 from inside the second generation call: chunk 0 is saved, the call fails with one error
    real, calls = ParallelGenerator.generate_groups, []

    def killing(self, *args, **kwargs):
        calls.append(self)
        if len(calls) == 2:
            os.kill(self._procs[1].pid, signal.SIGKILL)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ParallelGenerator, "generate_groups", killing)
    run2, _, _ = _smoke_run(tmp_path / "two", toy_student)
    with pytest.raises(GenerationWorkerError, match="worker rank 1 of 2 .* died"):
        run_evaluation(run2, cfg, gen, student, parallel=TWO)
    assert "[generation] data-parallel over 2 worker processes" in capsys.readouterr().out
    assert not any(p.is_alive() for p in calls[-1]._procs)
    assert not run2.eval_files("base") and run2.manifest()["stages"]["evaluation/base"]["status"] == "failed"
    # the re-run at N = 2 resumes, and every chunk (the one saved before the kill, the others after) is N = 1's
    monkeypatch.setattr(ParallelGenerator, "generate_groups", real)
    assert run_evaluation(run2, cfg, gen, student, parallel=TWO) == metrics
    assert "resumed: 1 of 3 chunks read back" in capsys.readouterr().out
    assert [f.read_bytes() for f in run2.eval_files("base")] == [f.read_bytes() for f in files]


# ------------------------------------------------------------------------------------------------
# the real student


@pytest.mark.slow
def test_smollm2_sampled_at_two_workers_equals_one_process():
    """SmolLM2-135M-Instruct (converted once from the packaged GGUF file): 4 real questions, 3 samples each."""
    from orion_utils.students import resolve_student

    smol = resolve_student("smollm2-135m-instruct")
    questions = ["Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                 "How many clips did Natalia sell altogether in April and May?", "What is 7 * 8?",
                 "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
                 "How much did she earn?", "Hi"]
    sampling = SamplingConfig(n=3, temperature=0.7, top_p=0.95, max_new_tokens=16, seed=4)
    gen = GenerationConfig(backend="transformers", batch_size=4)
    with open_generator(smol, gen, progress=False) as one:
        alone = one.generate(questions, sampling)
    with open_generator(smol, gen, parallel=TWO) as two:
        assert isinstance(two, ParallelGenerator)
        assert two.generate(questions, sampling) == alone
    assert len({g.text for row in alone for g in row}) > 4  # real, varied samples
