"""Stage 03 on vLLM's real engine (its CPU build): the `llm` reflector samples with the engine, and the
engine is closed before the student loads for scoring, so the stage never holds two models.

A tiny random Qwen2 (head size 64, which vLLM's CPU attention supports) never writes a verified
rewrite, so the teacher's CoT is added to the reflector's candidates: selection by perplexity and the
mechanism then score.
"""
from __future__ import annotations

import pytest

from orion_utils import generation, memory
from orion_utils.config import GenerationConfig, StudentConfig
from orion_utils.jsonl import read_jsonl, write_json, write_jsonl
from orion_utils.records import Refinement, SFTExample, StudentAttempt, format_cot
from orion_utils.reflection import LLMReflector, ReflectionConfig, run_reflection
from orion_utils.rundir import RunDir
from orion_utils.toy.domain import ToyDomainConfig, generate_problems
from orion_utils.toy.teacher import write_cot


def test_stage_03_closes_the_engine_before_the_scorer_loads(tmp_path, monkeypatch, capsys):
    from conftest import build_tiny_model_dir

    model_dir = build_tiny_model_dir(tmp_path / "qwen2", architecture="qwen2", hidden_size=128,
                                     num_attention_heads=2, num_key_value_heads=1, intermediate_size=256,
                                     max_position_embeddings=4096)  # the byte-level prompts are long
    run = RunDir(tmp_path / "run")
    problems = [p for p in generate_problems(30, ToyDomainConfig(), seed=0, split="train") if p.meta["n_steps"] >= 3][:3]
    write_json(run.data("student.json"), {"model": model_dir, "in_run_dir": False})
    write_jsonl(run.data("train_problems.jsonl"), problems)
    write_jsonl(run.training_set("sft"),
                [SFTExample(p.id, p.question, format_cot(*write_cot(p)), "teacher", {}) for p in problems])
    write_jsonl(run.data("error_attempts.jsonl"),
                [StudentAttempt(p.id, 0, format_cot(*write_cot(p, slip_at=1)), None, False, "base") for p in problems])
    real = LLMReflector.propose
    engines = []

    def propose(self, items, m, seed=None):
        engines.append(self.generator.name)
        return [cands + [i.teacher_cot] for cands, i in zip(real(self, items, m, seed), items)]

    monkeypatch.setattr(LLMReflector, "propose", propose)
    # the teacher's CoT is a copy: acceptance by verification alone (the checks: tests/test_acceptance.py)
    cfg = ReflectionConfig(reflector="llm", m=2, max_new_tokens=8, selection="perplexity",
                           reflect_window=None, min_coverage=0.0, min_added_chars=0, reject_echoes=False)
    with memory.watch_resident() as watch:
        stats = run_reflection(run, cfg, StudentConfig(model="tiny"), GenerationConfig(backend="vllm"))
    out = capsys.readouterr().out
    refinements = read_jsonl(run.refinements, Refinement)
    assert engines == ["vllm"] and stats["mechanism"]["n"] == 3 and all(r.accepted for r in refinements)
    assert watch.loads == [f"vllm {model_dir}", f"scoring {model_dir}"] and watch.peak == 1, watch
    assert "closing the vllm engine before the student loads for scoring" in out
    # the picks' scores are the student's NLL, as completion_nll computes it on the transformers model
    student = StudentConfig(model="tiny")
    nll = generation.completion_nll(model_dir, None, [p.question for p in problems],
                                    [r.refined_cot for r in refinements], prompt_template=student.prompt_template,
                                    system=student.system_prompt or None)
    assert [r.meta["nll"] for r in refinements] == pytest.approx(nll, abs=1e-5)
    assert memory.resident_models() == [] and memory.live_models() == []
