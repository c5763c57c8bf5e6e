"""The GPU tier: the `colab` profile, shrunk, on one CUDA GPU, stage by stage.

Collected only where CUDA is present (``tests/conftest.py`` leaves ``tests/gpu`` out elsewhere; run
explicitly on a CPU, every test here is skipped with that reason). ``make test-gpu`` runs it.

The student is a randomly initialised Qwen2 with Qwen2.5-0.5B's shape (494 M parameters, 151,936-token
vocabulary) built on the spot with the tests' locally built tokenizer: no model hub. Every stage of the
profile runs in this process as its notebook calls it (``stages.<stage>(run, cfg)``), through vLLM
and Unsloth when they are installed (the lines must say so), and each stage is held to:

* one model at a time: at most one model loaded through ``generation`` alive at once
  (``watch_resident``), and no model left on the GPU when a new one loads (``release_memory``'s report:
  the trainer's memory is freed before vLLM starts);
* torch's peak in this process (``torch.cuda.max_memory_allocated``) under the stage's budget;
* the device's peak (all processes: vLLM's engine core is one; sampled every 50 ms) under the engine's
  share (``gpu_memory_utilization``) plus this process's budget; the engine's own KV cache and weights
  (from its config) within its share;
* the precision line: ``dtype=bfloat16`` on compute capability >= 8.0, ``float16`` below, in every
  ``[generation]`` and ``[training]`` line.

A random model never writes a verified answer, so in stage 03 the teacher's CoT is added to the LLM
reflector's candidates: selection and the mechanism then score, and the stage's switch from the engine
to the scoring model runs. Budgets and the shrunk profile are below; each stage prints one
``[gpu-tier]`` line with its numbers (``pytest -s``). It takes a few minutes on one H100.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

CUDA = torch.cuda.is_available()
# then every generating stage must run on it (a spec without an origin is tests/vllm, a folder, not vLLM)
VLLM = CUDA and getattr(importlib.util.find_spec("vllm"), "origin", None) is not None
UNSLOTH = CUDA and importlib.util.find_spec("unsloth") is not None  # then training must run on it
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may come from the hub
if UNSLOTH:
    import unsloth  # noqa: F401 - Unsloth patches transformers/TRL: imported before them

from orion_utils import generation, memory, stages
from orion_utils.config import load_profile
from orion_utils.rundir import RunDir

pytestmark = pytest.mark.skipif(not CUDA, reason="tests/gpu needs a CUDA GPU (torch.cuda.is_available() is False)")

GiB = 2**30
# Qwen2.5-0.5B-Instruct's shape (its config.json), random weights
QWEN25_05B = {
    "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
    "num_key_value_heads": 2, "max_position_embeddings": 32768, "vocab_size": 151936,
    "tie_word_embeddings": True, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
}
STAGES = ["prepare_data", "prepare_student", "teacher_cots", "error_exposure", "reflection", "sft", "edit",
          "tailored", "evaluation", "analysis"]
GENERATING = {"error_exposure", "reflection", "tailored", "evaluation"}
TRAINING = {"sft", "edit", "tailored"}
NO_GPU = {"prepare_data", "prepare_student", "teacher_cots"}
SLACK = 2 * GiB  # CUDA contexts (this process and the engine core's), allocator rounding

# What a GPU run of minutes can afford; everything else is the shipped `colab` profile.
SHRINK = """
seeds: [0]
student:
  model: {student}
data:
  train_dir: {train_dir}
  n_train: 8
  benchmark_dir: {benchmark_dir}
  benchmark_limit: 2
exposure:
  k: 2
  max_new_tokens: 64
reflection:
  m: 2
  max_new_tokens: 64
  # the test adds the teacher's CoT (a copy) as a candidate: acceptance by verification alone
  reflect_window: null
  min_coverage: 0.0
  min_added_chars: 0
  reject_echoes: false
training:
  max_seq_len: 1024
  max_steps: 2
  grad_accum: 1
  batch_size: 2
  save_steps: 1
edit:
  max_pairs_per_problem: 1
tailored:
  rounds: 1
  exam_samples: 2
  exam_max_new_tokens: 64
  tailor_samples: 1
evaluation:
  methods: [base, sft, orion, edit, tailored]
  n_samples: 2
  max_new_tokens: 64
analysis:
  max_cots: 8
  judge_max_cots: 4
"""


def expected_dtype() -> str:
    return "bfloat16" if torch.cuda.get_device_capability() >= (8, 0) else "float16"


def build_qwen25_05b(path: Path) -> tuple[str, int]:
    """A random Qwen2 of Qwen2.5-0.5B's shape with the tests' tokenizer, saved in bf16 (as Qwen's
    checkpoints are); returns (path, bytes of its weights)."""
    from conftest import IM_END, PAD_TOKEN, build_tiny_tokenizer
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tiny_tokenizer()
    tokenizer.model_max_length = QWEN25_05B["max_position_embeddings"]
    eos, pad = tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    config = Qwen2Config(**QWEN25_05B, bos_token_id=None, eos_token_id=eos, pad_token_id=pad, dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, do_sample=False)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    del model
    generation.release_memory()
    return str(path), weights


class DeviceMemory:
    """The device's used memory (every process), before and at its peak, sampled every 50 ms."""

    def __enter__(self):
        self.before = self.peak = self.used()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def used() -> int:
        free, total = torch.cuda.mem_get_info()
        return total - free

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.used())
            time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.used())


@dataclass
class StageMemory:
    stage: str
    torch_peak: int = 0
    device_before: int = 0
    device_peak: int = 0
    resident_peak: int = 0
    loads: list = field(default_factory=list)
    seconds: float = 0.0
    generated_tokens: int = 0  # completion tokens of every generation call of the stage
    trained_tokens: int = 0  # supervised tokens of the training runs the stage finished (train_result.json)
    left_on_gpu: list = field(default_factory=list)  # (model about to load, models still on the GPU)
    engines: list = field(default_factory=list)  # what each vLLM engine reported
    output: str = ""


def engine_numbers(backend) -> dict:
    """A vLLM engine's share, KV cache and weights (from its config) and the device's use while it is open."""
    vcfg = backend.llm.llm_engine.vllm_config
    cache, hf = vcfg.cache_config, vcfg.model_config.hf_config
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    per_token = 2 * hf.num_hidden_layers * hf.num_key_value_heads * head_dim * torch.finfo(vcfg.model_config.dtype).bits // 8
    block = getattr(cache, "effective_attention_block_size", None) or cache.block_size or 0
    total = torch.cuda.mem_get_info()[1]
    return {
        "gpu_memory_utilization": cache.gpu_memory_utilization,
        "kv_cache_bytes": int((cache.num_gpu_blocks or 0) * block * per_token),
        "device_used_bytes": DeviceMemory.used(),
        "total_bytes": total,
        "dtype": str(vcfg.model_config.dtype).replace("torch.", ""),
    }


@pytest.fixture(scope="module")
def colab_run(tmp_path_factory):
    from test_real_profiles import BENCHMARK_DIR, write_s1k_file

    tmp = tmp_path_factory.mktemp("gpu_colab")
    student, weights = build_qwen25_05b(tmp / "qwen25_05b_random")
    extra = ""
    if importlib.util.find_spec("bitsandbytes") is None:  # the profile's QLoRA needs it (Unsloth brings it)
        extra = "training:\n  load_in_4bit: false\n"
    if not VLLM:  # the profile names vllm and stops without it: the slow path, asked for as a user would
        extra += "generation:\n  backend: transformers\n"
    text = "base: colab\n" + SHRINK.format(student=student, train_dir=write_s1k_file(tmp / "s1k-1.1"),
                                            benchmark_dir=BENCHMARK_DIR)
    profile_path = tmp / "colab_gpu.yaml"
    profile_path.write_text(text + ("\n" + extra if extra else ""))
    cfg = load_profile(str(profile_path))
    run = RunDir(tmp / "run")
    run.write_config(cfg.to_dict())  # as `orion run` does: the analysis reads the student's prompt from it
    state = {"run": run, "cfg": cfg, "weights": weights, "done": [], "results": {}}
    yield state
    if state.get("teacher_server") is not None:
        state["teacher_server"].stop()


def torch_budget(stage: str, weights: int) -> int:
    """torch's peak in this process: nothing for the stages without a model; one model plus a bounded
    working set (KV cache of a transformers batch, logits in chunks) for generation and scoring;
    QLoRA/LoRA training of 0.5 B parameters at 1,024 tokens x 2."""
    if stage in NO_GPU:
        return GiB // 4
    if stage in TRAINING:
        return weights + 6 * GiB
    return weights + 2 * GiB


def run_measured(stage: str, colab_run, monkeypatch, capsys) -> StageMemory:
    record = StageMemory(stage)
    real_release = generation.release_memory

    def reporting_release(before: str = ""):
        left = real_release(before)
        if before:
            record.left_on_gpu.append((before, left))
        return left

    real_close = generation.VLLMBackend.close

    def reporting_close(self):
        if not self._closed and self.llm is not None:
            record.engines.append(engine_numbers(self))
        real_close(self)

    from orion_utils import sampling

    real_generate = sampling.GenerationBackend.generate

    def counting_generate(self, *args, **kwargs):
        out = real_generate(self, *args, **kwargs)
        record.generated_tokens += sum(g.n_tokens for gens in out for g in gens)
        return out

    monkeypatch.setattr(generation, "release_memory", reporting_release)
    monkeypatch.setattr(generation.VLLMBackend, "close", reporting_close)
    monkeypatch.setattr(sampling.GenerationBackend, "generate", counting_generate)
    real_release()
    torch.cuda.reset_peak_memory_stats()
    started, cfg = time.time(), stage_config(stage, colab_run)
    with memory.watch_resident() as watch, DeviceMemory() as device:
        getattr(stages, stage)(colab_run["run"], cfg)
    record.seconds = time.time() - started
    record.trained_tokens = sum(json.loads(f.read_text()).get("n_tokens", 0)
                                for f in colab_run["run"].root.rglob("train_result.json") if f.stat().st_mtime >= started)
    record.torch_peak = torch.cuda.max_memory_allocated()
    record.device_before, record.device_peak = device.before, device.peak
    record.resident_peak, record.loads = watch.peak, watch.loads
    record.output = capsys.readouterr().out
    return record


def stage_config(stage: str, colab_run):
    """The profile a stage runs with: the shrunk `colab` one; for Tailored Learning, whose teacher must
    explain the student's mistakes (a dataset cannot), an API teacher: a local stand-in server
    (``helpers.FakeOpenAIServer``) answering each question with the dataset's verified CoT (stage 01)."""
    import dataclasses

    cfg = colab_run["cfg"]
    if stage != "tailored":
        return cfg
    server = colab_run["teacher_server"] = dataset_teacher_server(colab_run["run"])
    teacher = dataclasses.replace(cfg.teacher, kind="api", base_url=server.base_url, model="dataset-cots",
                                  api_key_env="", concurrency=2, timeout_s=30.0)
    return dataclasses.replace(cfg, sections={**cfg.sections, "teacher": teacher})


def dataset_teacher_server(run):
    """A started ``FakeOpenAIServer`` whose reply to a prompt holding a training question is that
    question's stage-01 CoT (thinking, solution); stopped by the module's fixture."""
    from helpers import FakeOpenAIServer

    from orion_utils.jsonl import read_jsonl
    from orion_utils.records import Problem, TeacherTrace

    question = {p.id: p.question for p in read_jsonl(run.train_problems, Problem)}
    cots = [(question[t.problem_id], t.thinking, t.solution) for t in read_jsonl(run.teacher_traces, TeacherTrace)
            if t.correct and t.problem_id in question]

    def answer(messages):
        text = "\n".join(str(m.get("content", "")) for m in messages)
        for q, thinking, solution in cots:
            if q in text:
                return thinking, solution
        return "no CoT for this question", "\\boxed{0}"

    server = FakeOpenAIServer(answer_fn=answer)
    server.start()
    return server


def add_the_teacher_cot(monkeypatch) -> None:
    from orion_utils.reflection import LLMReflector

    real = LLMReflector.propose

    def propose(self, items, m, seed=None):
        return [cands + [i.teacher_cot] for cands, i in zip(real(self, items, m, seed), items)]

    monkeypatch.setattr(LLMReflector, "propose", propose)


@pytest.mark.parametrize("stage", STAGES)
def test_colab_stage_on_gpu(stage, colab_run, monkeypatch, capsys):
    done = colab_run["done"]
    missing = [s for s in STAGES[: STAGES.index(stage)] if s not in done]
    if missing:
        pytest.fail(f"stage {stage} needs {missing[0]}, which did not finish")
    if stage == "reflection":
        add_the_teacher_cot(monkeypatch)
    record = run_measured(stage, colab_run, monkeypatch, capsys)
    colab_run["results"][stage] = record
    weights, gib = colab_run["weights"], lambda b: f"{b / GiB:.2f}"
    engine_share = max((e["gpu_memory_utilization"] * e["total_bytes"] for e in record.engines), default=0)
    with capsys.disabled():  # shown whatever the outcome
        print(f"\n[gpu-tier] {stage}: torch peak {gib(record.torch_peak)} GiB (budget "
              f"{gib(torch_budget(stage, weights))}), device peak {gib(record.device_peak)} GiB from "
              f"{gib(record.device_before)}, models at once {record.resident_peak} (loads: {record.loads}), "
              f"engines {json.dumps(record.engines)}", flush=True)
        print(f"[gpu-tier] {stage}: {record.seconds:.1f} s, {record.generated_tokens} tokens generated "
              f"({record.generated_tokens / max(record.seconds, 1e-9):.0f} tokens/s), {record.trained_tokens} tokens "
              f"trained ({record.trained_tokens / max(record.seconds, 1e-9):.0f} tokens/s, load and save included)",
              flush=True)

    # one model at a time, and nothing left on the GPU when a model loads
    assert record.resident_peak <= 1, record.loads
    assert all(not left for _, left in record.left_on_gpu), record.left_on_gpu
    # torch's peak in this process, and the device's (the engine core's process included)
    assert record.torch_peak <= torch_budget(stage, weights)
    assert record.device_peak - record.device_before <= engine_share + torch_budget(stage, weights) + SLACK
    for e in record.engines:  # the engine's own numbers: its KV cache and the weights within its share
        assert 0 < e["kv_cache_bytes"] + weights <= e["gpu_memory_utilization"] * e["total_bytes"]
        assert e["device_used_bytes"] <= e["gpu_memory_utilization"] * e["total_bytes"] + SLACK
    # the precision line, and the backends that are installed
    lines = [ln for ln in record.output.splitlines() if ln.startswith(("[generation] backend=", "[training] backend="))]
    dtypes = set(re.findall(r" dtype=(\w+)", "\n".join(lines)))
    if stage in GENERATING or stage in TRAINING:
        assert lines and dtypes == {expected_dtype()}, lines
    if stage in GENERATING and VLLM:
        assert all("backend=vllm" in ln for ln in lines if ln.startswith("[generation]")), lines
        assert record.engines and all(e["dtype"] == expected_dtype() for e in record.engines)
    if stage in TRAINING and UNSLOTH:
        assert all("backend=unsloth" in ln for ln in lines if ln.startswith("[training]")), lines
    if stage in TRAINING:
        assert record.trained_tokens > 0, f"{stage} trained nothing"
    if stage == "reflection":  # the scorer ran, after the engine (or with the transformers generator's model)
        refinements = [json.loads(x) for x in colab_run["run"].refinements.read_text().splitlines()]
        assert refinements and all(r["accepted"] for r in refinements if r["wrong_attempt"])
    done.append(stage)
