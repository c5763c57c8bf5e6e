"""One model in memory at a time (issue 18, item 1), checked on the CPU: stage 03 never holds its
generator and its scorer together, a trained model is gone before a generator opens in the same
process, and ``completion_nll`` scores in chunks of tokens (never the logits of a whole sequence)."""
from __future__ import annotations

import gc
import weakref

import pytest
import torch

from orion_utils import device, generation, memory, scoring, training
from orion_utils.chat import encode_for_training
from orion_utils.config import GenerationConfig, StudentConfig
from orion_utils.generation import TransformersBackend, completion_nll
from orion_utils.jsonl import read_jsonl, write_json, write_jsonl
from orion_utils.records import Problem, Refinement, SFTExample, StudentAttempt, format_cot
from orion_utils.reflection import LLMReflector, ReflectionConfig, run_reflection
from orion_utils.rundir import RunDir
from orion_utils.scoring import logit_budget, logit_chunk_tokens
from orion_utils.toy.domain import ToyDomainConfig, generate_problems
from orion_utils.toy.teacher import write_cot

QS = ["What is 2+2?", "Hi", "Add 17 and 25, then double it."]
CS = ["<think>\n2+2=4\n</think>\n\n\\boxed{4}", "Hello!", "17+25=42, 42*2=84. " * 6 + "\\boxed{84}"]


@pytest.fixture(autouse=True)
def one_thread():
    with device.torch_threads(1):
        yield


@pytest.fixture(scope="module")
def tiny_qwen2_dir(tmp_path_factory):
    from conftest import build_tiny_model_dir

    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny_qwen2"), architecture="qwen2")


def full_logits_nll(model, tok, questions, completions) -> list[float]:
    """Reference: the whole sequence's logits at once, log-softmax, mean over the completion's tokens."""
    out = []
    for q, c in zip(questions, completions):
        enc = encode_for_training(tok, q, c)
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([enc["input_ids"]])).logits[0].float(), dim=-1)
        terms = [-logp[t - 1, enc["input_ids"][t]].item() for t in range(1, len(enc["input_ids"]))
                 if enc["labels"][t] != -100]
        out.append(sum(terms) / len(terms))
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_chunked_nll_equals_the_whole_logits_computation(arch, tiny_model_dir, tiny_qwen2_dir):
    path = tiny_model_dir if arch == "llama" else tiny_qwen2_dir
    model, tok = generation.load_scoring_model(path)
    expected = full_logits_nll(model, tok, QS, CS)
    rows_per_call = []
    hook = model.get_output_embeddings().register_forward_hook(
        lambda _m, args, _out: rows_per_call.append(args[0].shape[0]))
    try:
        per_token = model.config.vocab_size * (4 + 8)  # float32 logits + their copy + log-softmax
        plain = completion_nll(model, tok, QS, CS, batch_size=2)
        assert plain == pytest.approx(expected, abs=1e-5)
        n_scored = sum(rows_per_call)  # the LM head saw only the completions' tokens, each once
        assert n_scored == sum(sum(x != -100 for x in encode_for_training(tok, q, c)["labels"][1:])
                               for q, c in zip(QS, CS))
        rows_per_call.clear()
        chunked = completion_nll(model, tok, QS, CS, batch_size=2, max_logit_bytes=3 * per_token)
        assert chunked == pytest.approx(expected, abs=1e-5)
        assert max(rows_per_call) == 3 and len(rows_per_call) >= n_scored // 3  # many chunks of 3 tokens
        rows_per_call.clear()
        assert completion_nll(model, tok, QS, CS, max_logit_bytes=1) == pytest.approx(expected, abs=1e-5)
        assert set(rows_per_call) == {1}
    finally:
        hook.remove()


def test_logit_chunks_are_sized_from_free_memory(monkeypatch):
    """The CPU's fixed budget, an explicit one, and CUDA's share of free memory (the CUDA calls are
    faked: no GPU here)."""
    assert logit_budget("cpu") == scoring.CPU_LOGIT_BYTES
    assert logit_budget("cpu", max_logit_bytes=1234) == 1234
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev=None: (6 * 2**30, 24 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda dev=None: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda dev=None: 1 * 2**30)
    assert logit_budget("cuda:0") == int(scoring.GPU_LOGIT_SHARE * 8 * 2**30)
    # 152k vocabulary in bf16: 10 bytes + 8 per logit; 4 GiB holds 1,570 tokens, not 32k
    assert logit_chunk_tokens(4 * 2**30, 152_064, torch.bfloat16) == 4 * 2**30 // (152_064 * 10)
    assert logit_chunk_tokens(1, 152_064, torch.float32) == 1


def _reflection_run(tmp_path, model_dir) -> RunDir:
    run = RunDir(tmp_path / "run")
    problems = [p for p in generate_problems(30, ToyDomainConfig(), seed=0, split="train")
                if p.meta["n_steps"] >= 3][:3]
    write_json(run.data("student.json"), {"model": model_dir, "in_run_dir": False})
    write_jsonl(run.data("train_problems.jsonl"), problems)
    write_jsonl(run.training_set("sft"),
                [SFTExample(p.id, p.question, format_cot(*write_cot(p)), "teacher", {}) for p in problems])
    write_jsonl(run.data("error_attempts.jsonl"),
                [StudentAttempt(p.id, 0, format_cot(*write_cot(p, slip_at=1)), None, False, "base") for p in problems])
    return run


@pytest.mark.parametrize("engine_scores", [True, False], ids=["transformers", "engine-that-cannot-score"])
def test_stage_03_with_the_llm_reflector_holds_one_model_at_a_time(engine_scores, tmp_path, tiny_model_dir,
                                                                   monkeypatch, capsys):
    """The `llm` reflector samples with the stage's generator (the real transformers backend); its
    candidates plus the teacher's CoT (which verifies, so selection and the mechanism score) go to the
    scorer. A transformers generator scores with its own model: one load. A generator that cannot
    score (vLLM; here the transformers backend with ``can_score`` off, since vLLM is not in this
    environment: tests/vllm runs the real engine) is closed before the scoring model loads. Never two
    models at once."""
    run = _reflection_run(tmp_path, tiny_model_dir)
    if not engine_scores:
        monkeypatch.setattr(TransformersBackend, "can_score", False)
    real_propose = LLMReflector.propose
    sampled = []

    def propose_and_add_the_teacher_cot(self, items, m, seed=None):
        out = real_propose(self, items, m, seed)
        sampled.append(sum(map(len, out)) + sum(1 for _ in items))
        return [cands + [i.teacher_cot] for cands, i in zip(out, items)]

    monkeypatch.setattr(LLMReflector, "propose", propose_and_add_the_teacher_cot)
    # the teacher's CoT is a copy: acceptance by verification alone (the checks: tests/test_acceptance.py)
    cfg = ReflectionConfig(reflector="llm", m=2, max_new_tokens=8, selection="perplexity",
                           reflect_window=None, min_coverage=0.0, min_added_chars=0, reject_echoes=False)
    with memory.watch_resident() as watch:
        stats = run_reflection(run, cfg, StudentConfig(model="toy-like"), GenerationConfig(backend="transformers"))
    refinements = read_jsonl(run.refinements, Refinement)
    assert stats["reflector"] == "llm" and stats["mechanism"]["n"] == 3 == len(refinements) and sampled
    assert all(r.accepted and "nll" in r.meta for r in refinements)
    assert watch.peak == 1 and watch.together == []
    if engine_scores:
        assert watch.loads == [f"transformers {tiny_model_dir}"]
    else:
        assert watch.loads == [f"transformers {tiny_model_dir}", f"scoring {tiny_model_dir}"]
        assert "closing the transformers engine before the student loads for scoring" in capsys.readouterr().out
    assert memory.resident_models() == []  # released at the stage's end


def test_a_stage_model_never_holds_generator_and_scorer_together(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(TransformersBackend, "can_score", False)
    with memory.watch_resident() as watch, \
            generation.StageModel(tiny_model_dir, GenerationConfig(backend="transformers")) as stage:
        gen = stage.generator()
        nll = stage.score(QS, CS)
        assert gen._closed and stage.generator() is not gen  # scoring closed it; asking again reopens it
        assert stage.score(QS, CS) == nll  # ... and drops the scoring model first
    assert watch.peak == 1 and len(watch.loads) == 4
    assert memory.resident_models() == []


@pytest.fixture
def no_automatic_gc():
    """Only explicit collections free a trainer's reference cycles (so a missing one shows)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _record_trained_models(monkeypatch) -> list:
    refs = []
    real = training.backends.load_model

    def recording(*args, **kwargs):
        model = real(*args, **kwargs)
        refs.append(weakref.ref(model))
        return model

    monkeypatch.setattr(training.backends, "load_model", recording)
    return refs


def _ends_at_any_token(model_dir, path) -> str:
    """A copy of a tiny model whose every token ends its turn: each answer is one token and finished (a random
    model's answers are otherwise cut off, and a cut-off answer is never a wrong rationale to train on)."""
    import json
    import shutil

    shutil.copytree(model_dir, path)
    config = json.loads((path / "generation_config.json").read_text())
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    config["eos_token_id"] = list(range(vocab))
    (path / "generation_config.json").write_text(json.dumps(config))
    return str(path)


def test_tailored_exam_opens_after_the_trained_model_is_gone(tiny_model_dir, tmp_path, monkeypatch, no_automatic_gc):
    from test_tailored import FakeGrade, FakeTeacher

    from orion_utils.tailored import TailoredConfig, default_generator_factory, run_tailored

    tiny_model_dir = _ends_at_any_token(tiny_model_dir, tmp_path / "student")
    trained = _record_trained_models(monkeypatch)
    opened = []
    real_factory = default_generator_factory(GenerationConfig(backend="transformers"))

    def factory(model_dir):
        opened.append((str(model_dir), [r() is not None for r in trained]))
        return real_factory(model_dir)

    problems = [Problem("p1", "1+1", "2"), Problem("p2", "20+22", "42"), Problem("p3", "3+4", "7")]
    cfg = TailoredConfig(rounds=2, exam_samples=2, teacher_samples=2, batch_size=2, max_steps=1,
                         max_seq_len=128, exam_max_new_tokens=8, progress_bar=False)
    def last_word_grader(response, gold):
        # A random model's answer never reaches a boxed answer; its last word is its answer here, so that
        # round 2 has wrong rationales to train on.
        words = response.split()
        predicted = words[-1] if words else "(empty)"
        return FakeGrade(predicted == gold, "correct" if predicted == gold else "wrong", predicted)

    results = run_tailored(tiny_model_dir, problems, FakeTeacher(), factory, None, cfg, tmp_path / "tl",
                           grader=last_word_grader)
    assert results[1].trained and results[2].trained
    assert opened == [(tiny_model_dir, []), (results[1].model_dir, [False])]  # round 1's model: gone


def test_primed_exposure_samples_after_the_trained_model_is_gone(tiny_model_dir, tmp_path, monkeypatch,
                                                                 no_automatic_gc):
    from orion_utils.config import TrainingConfig
    from orion_utils.exposure import ExposureConfig, run_error_exposure

    run = _reflection_run(tmp_path, tiny_model_dir)
    trained = _record_trained_models(monkeypatch)
    alive_at_open = []

    class Checking(TransformersBackend):
        def __init__(self, *args, **kwargs):
            alive_at_open.append([r() is not None for r in trained])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(generation, "TransformersBackend", Checking)
    cfg = ExposureConfig(source="primed", k=2, max_new_tokens=8, priming_epochs=1)
    stats = run_error_exposure(run, cfg, GenerationConfig(backend="transformers"), StudentConfig(),
                               TrainingConfig(max_steps=1, batch_size=2, max_seq_len=256, progress_bar=False))
    assert stats["model"] == "primed" and len(trained) == 1
    assert alive_at_open == [[False]]
