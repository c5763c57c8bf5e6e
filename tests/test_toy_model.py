"""Toy tokenizer, toy student and pre-training (micro sizes and a handful of steps: this file runs in seconds)."""
from __future__ import annotations

import dataclasses
import json

import pytest

from orion_utils.chat import encode_for_training, prompt_text
from orion_utils.records import format_cot
from orion_utils.toy.domain import ToyDomainConfig, generate_problems
from orion_utils.toy.reflect import rule_reflect
from orion_utils.toy.teacher import N_VARIANTS, write_cot

MICRO = dict(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=64, max_position_embeddings=512)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from orion_utils.toy.tokenizer import build_toy_tokenizer

    d = tmp_path_factory.mktemp("toy_tok")
    build_toy_tokenizer(d)
    return d


@pytest.fixture(scope="module")
def tokenizer(tok_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tok_dir))


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, tokenizer):
    from orion_utils.toy.student import ToyStudentConfig, build_toy_student

    return build_toy_student(tmp_path_factory.mktemp("toy_student"), ToyStudentConfig(**MICRO), seed=0, tokenizer=tokenizer)


def _texts():
    cfg = ToyDomainConfig()
    for split in ("train", "hard"):
        for i, p in enumerate(generate_problems(40, cfg, seed=0, split=split)):
            cot = format_cot(*write_cot(p, i % N_VARIANTS))
            yield p, cot
            yield p, format_cot(*write_cot(p, 0, slip_at=i % p.meta["n_steps"]))
            yield p, format_cot(*write_cot(p, 0, style="terse"))


def test_tokenizer_roundtrip_and_files(tok_dir, tokenizer):
    assert {f.name for f in tok_dir.iterdir()} >= {"tokenizer.json", "tokenizer_config.json"}
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert len(tokenizer) < 1000
    for p, cot in _texts():
        for text in (cot, p.question):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert tokenizer.decode(ids) == text
            assert tokenizer.decode(ids, skip_special_tokens=True) == text
            assert tokenizer.unk_token_id not in ids
        toks = tokenizer.convert_ids_to_tokens(tokenizer(cot, add_special_tokens=False)["input_ids"])
        assert toks[0] == "<think>" and "</think>" in toks
        assert all(len(t.lstrip("\u2581")) == 1 for t in toks if t.lstrip("\u2581").isdigit())  # one digit each
    # anything printable round-trips (character fallback), reflections included
    odd = "Zebra-quux: 1234567890 ~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./ \n\n  two  spaces"
    assert tokenizer.decode(tokenizer(odd, add_special_tokens=False)["input_ids"]) == odd
    p, cot = next(_texts())
    wrong = cot.replace(f"\\boxed{{{p.answer}}}", "\\boxed{7777}")
    refl = rule_reflect(p, cot, wrong)
    assert tokenizer.decode(tokenizer(refl, add_special_tokens=False)["input_ids"]) == refl


def test_chat_template_and_training_encoding(tokenizer):
    p, cot = next(_texts())
    prompt = prompt_text(tokenizer, p.question)
    assert prompt == f"<|im_start|>user\n{p.question}<|im_end|>\n<|im_start|>assistant\n"
    enc = encode_for_training(tokenizer, p.question, cot)
    ids, labels, n = enc["input_ids"], enc["labels"], enc["prompt_len"]
    assert labels[:n] == [-100] * n and labels[n:] == ids[n:]
    answer = tokenizer.decode(ids[n:])
    assert answer == cot + "<|im_end|>\n"
    assert tokenizer.eos_token_id in ids[n:]
    assert tokenizer.decode(ids[:n]) == prompt
    # a system prompt and the default instruction template work too
    from orion_utils.chat import DEFAULT_PROMPT_TEMPLATE

    enc2 = encode_for_training(tokenizer, p.question, cot, template=DEFAULT_PROMPT_TEMPLATE, system="Be brief.")
    assert tokenizer.unk_token_id not in enc2["input_ids"]


def test_student_loads_and_generates(student_dir, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from orion_utils.toy.student import ToyStudentConfig, count_parameters

    model = AutoModelForCausalLM.from_pretrained(str(student_dir))
    tok = AutoTokenizer.from_pretrained(str(student_dir))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.eos_token_id == tok.eos_token_id and model.config.pad_token_id == tok.pad_token_id
    assert model.config.vocab_size == len(tok)
    assert tok.chat_template and prompt_text(tok, "Hi?").endswith("<|im_start|>assistant\n")
    tok.padding_side = "left"
    batch = tok([prompt_text(tok, "Mia has 3 apples."), prompt_text(tok, "Tom has 12 coins. He buys 7 more.")],
                return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert out.shape[0] == 2 and out.shape[1] <= batch["input_ids"].shape[1] + 5
    # the default size is in the intended range; both architectures build
    from orion_utils.toy.student import make_model_config

    default = AutoModelForCausalLM.from_config(make_model_config(ToyStudentConfig(), tokenizer))
    assert 500_000 <= count_parameters(default) <= 2_000_000
    qwen = AutoModelForCausalLM.from_config(make_model_config(ToyStudentConfig(architecture="qwen2", **MICRO), tokenizer))
    assert type(qwen).__name__ == "Qwen2ForCausalLM"
    with pytest.raises(ValueError):
        ToyStudentConfig(architecture="gpt2")


def test_build_qwen2_student_roundtrip(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM

    from orion_utils.toy.student import ToyStudentConfig, build_toy_student

    d = build_toy_student(tmp_path / "q", ToyStudentConfig(architecture="qwen2", **MICRO), seed=1, tokenizer=tokenizer)
    assert json.loads((d / "config.json").read_text())["model_type"] == "qwen2"
    assert type(AutoModelForCausalLM.from_pretrained(str(d))).__name__ == "Qwen2ForCausalLM"


def test_pretrain_few_steps_and_quick_accuracy(student_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from orion_utils.teachers.toy import ToyTeacher
    from orion_utils.toy.pretrain import PretrainConfig, quick_accuracy, pretrain_student

    problems = generate_problems(40, ToyDomainConfig(), seed=1, split="train")
    cfg = PretrainConfig(max_steps=6, batch_size=8, lr=3e-3, ramp_steps=2, log_every=0)
    stats = pretrain_student(student_dir, tmp_path / "warm", problems, ToyTeacher(error_rate=0.2, seed=0), cfg)
    assert stats["steps"] == 6 and stats["stopped_by"] == "max_steps"
    assert stats["n_examples"] < 40  # the teacher's slipped samples were left out
    assert stats["loss_history"][-1]["loss"] < stats["loss_history"][0]["loss"]
    assert stats["params"] > 0 and stats["final_loss"] > 0 and stats["seconds"] >= 0
    json.dumps(stats)  # JSON-friendly
    assert AutoModelForCausalLM.from_pretrained(str(tmp_path / "warm")) is not None
    acc = quick_accuracy(tmp_path / "warm", generate_problems(4, ToyDomainConfig(), seed=0, split="test"),
                         max_new_tokens=8, batch_size=4)
    assert 0.0 <= acc <= 1.0
    # simple types only: a profile can set every field
    assert all(isinstance(v, (int, float, str, type(None))) for v in dataclasses.asdict(cfg).values())
    # a time budget stops it early
    quick = PretrainConfig(max_steps=1000, time_budget_s=0.0, batch_size=4, log_every=0)
    assert pretrain_student(student_dir, tmp_path / "w2", problems[:8], ToyTeacher(0.0), quick)["stopped_by"] == "time_budget"
