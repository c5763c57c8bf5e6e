"""An independent check of our evaluation on the real student (SmolLM2-135M-Instruct, CPU).

The first 20 GSM8K test questions are greedy-decoded twice: by the ``07_evaluation`` stage for
``base`` (our generation backend, answer extraction and grading), and here by plain ``transformers``
``generate`` with the tokenizer's own chat template and ``math_verify`` (``verify(parse(gold),
parse(response))``), sharing no code with the project beyond the converted checkpoint. Every question
must get the same verdict. ``max_new_tokens`` is cut to fit the test budget on 2 cores;
``ORION_SMOL_CHECK_TOKENS`` raises it (the same check, with longer answers).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
N_QUESTIONS = 20
MAX_NEW_TOKENS = int(os.environ.get("ORION_SMOL_CHECK_TOKENS", "128"))
INSTRUCTION = "\nPlease reason step by step, and put your final answer within \\boxed{}."


def independent_greedy(model_dir: str, questions: list[str], max_new_tokens: int) -> list[str]:
    """Plain transformers: chat template, left padding, greedy, stop at the tokenizer's EOS."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    texts = [tok.apply_chat_template([{"role": "user", "content": q + INSTRUCTION}], tokenize=False,
                                     add_generation_prompt=True) for q in questions]
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return [tok.decode(row[batch["input_ids"].shape[1]:], skip_special_tokens=True) for row in out]


def test_base_greedy_verdicts_match_an_independent_evaluation(tmp_path):
    import torch
    from math_verify import parse, verify

    from orion_utils.config import DataConfig, GenerationConfig, StudentConfig
    from orion_utils.evaluation import EvaluationConfig, run_evaluation
    from orion_utils.jsonl import read_jsonl
    from orion_utils.prepare import run_prepare_data, run_prepare_student
    from orion_utils.records import EvalSample
    from orion_utils.rundir import RunDir

    torch.set_num_threads(1)
    rows = [json.loads(line) for line in (SHARED / "benchmarks" / "gsm8k.jsonl").read_text().splitlines()[:N_QUESTIONS]]
    golds = [r["answer"].split("####")[-1].strip().replace(",", "") for r in rows]

    run = RunDir(tmp_path / "run")
    student = StudentConfig(model="smollm2-135m-instruct", prompt_template="{question}" + INSTRUCTION)
    run_prepare_data(run, DataConfig(train_source="gsm8k", train_dir=str(SHARED / "train" / "gsm8k_train.jsonl"),
                                     n_train=1, benchmarks=["gsm8k"], benchmark_dir=str(SHARED / "benchmarks"),
                                     benchmark_limit=N_QUESTIONS))
    run_prepare_student(run, student)
    run_evaluation(run, EvaluationConfig(methods=["base"], n_samples=0, max_new_tokens=MAX_NEW_TOKENS),
                   GenerationConfig(backend="transformers", batch_size=N_QUESTIONS), student)
    ours = read_jsonl(run.eval_dir() / "base" / "gsm8k.jsonl", EvalSample)
    assert [s.decoding for s in ours] == ["greedy"] * N_QUESTIONS

    texts = independent_greedy(run.student_model(), [r["question"] for r in rows], MAX_NEW_TOKENS)
    theirs = [bool(verify(parse(g), parse(t))) for g, t in zip(golds, texts)]
    report = [(i, s.correct, v, s.answer, s.response == t) for i, (s, v, t) in enumerate(zip(ours, theirs, texts))]
    print("question, ours, independent, our extracted answer, same text:", *report, sep="\n")
    assert [s.gold for s in ours] == golds
    assert [s.correct for s in ours] == theirs, [r for r in report if r[1] != r[2]]
    same_text = sum(s.response == t for s, t in zip(ours, texts))
    assert same_text >= N_QUESTIONS - 2, f"only {same_text} of {N_QUESTIONS} greedy texts agree"
