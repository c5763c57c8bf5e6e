"""Tailored Learning: the two losses, the batch sampler's guarantee, and a multi-round run on a tiny model."""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from orion_utils.layouts import TailoredDir
from orion_utils.records import Problem, SFTExample, StudentAttempt, TeacherTrace
from orion_utils.tailored import (
    TailoredConfig,
    encode_triplet_example,
    run_tailored,
    triplet_examples,
    unique_wrong_rationales,
)
from orion_utils.tailored_training import (
    NoSameQuestionBatchSampler,
    TailoredCollator,
    last_token_hidden,
    tailored_loss,
    triplet_loss,
    weighted_mle_loss,
)

# ------------------------------------------------------------------ losses against hand computation


def _log_softmax(row):
    m = max(row)
    z = math.log(sum(math.exp(x - m) for x in row)) + m
    return [x - z for x in row]


def test_weighted_mle_loss_matches_hand_computation():
    import torch

    logits = torch.tensor([[[0.5, -0.2, 1.0], [2.0, 0.0, -1.0], [0.1, 0.1, 0.1], [9.0, 9.0, 9.0]]])
    labels = torch.tensor([[0, 2, 1, -100]])  # positions 0-1 prompt ("prefix"), 2 rationale, 3 padding
    weights = torch.tensor([[0.1, 0.1, 1.0, 0.0]])
    lp = [_log_softmax(r) for r in logits[0].tolist()]
    nll_1, nll_2 = -lp[0][2], -lp[1][1]  # the label at t is predicted by the logits at t-1
    expected = (0.1 * nll_1 + 1.0 * nll_2) / 2  # divided by the number of predicted tokens
    assert weighted_mle_loss(logits, labels, weights).item() == pytest.approx(expected, abs=1e-6)


def test_triplet_loss_matches_hand_computation():
    import torch

    anchor = torch.tensor([[1.0, 0.0], [1.0, 0.0], [3.0, 4.0]])
    positive = torch.tensor([[1.0, 1.0], [-1.0, 0.0], [0.0, 1.0]])
    negative = torch.tensor([[0.0, 1.0], [1.0, 0.0], [5.0, 5.0]])
    mask = torch.tensor([1, 1, 0])  # the third question lacks a positive or negative
    # d = −cos: row 1: d(a,p) = −1/√2, d(a,n) = 0; row 2: d(a,p) = 1, d(a,n) = −1
    row1, row2 = max(0.0, -1 / math.sqrt(2) - 0 + 1.0), max(0.0, 1 + 1 + 1.0)
    assert triplet_loss(anchor, positive, negative, mask, margin=1.0).item() == pytest.approx(
        (row1 + row2) / 2
    )
    assert triplet_loss(anchor, positive, negative, mask, margin=0.1).item() == pytest.approx((0.0 + 2.1) / 2)
    # all masked: zero, but still differentiable
    anchor.requires_grad_(True)
    none = triplet_loss(anchor, positive, negative, torch.zeros(3), margin=1.0)
    assert none.item() == 0.0 and none.requires_grad


def test_last_token_hidden_skips_padding_on_either_side():
    import torch

    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
    assert last_token_hidden(hidden, right).squeeze(-1).tolist() == [1.0, 7.0]
    assert last_token_hidden(hidden, left).squeeze(-1).tolist() == [3.0, 7.0]


# ------------------------------------------------------------------ the batch sampler's guarantee


def _check_batches(question_ids, batches, batch_size):
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(question_ids)))  # every item exactly once
    for b in batches:
        assert 1 <= len(b) <= batch_size
        qs = [question_ids[i] for i in b]
        assert len(set(qs)) == len(qs), f"two rationales of one question in a batch: {qs}"


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4, 8, 64])
def test_sampler_never_puts_two_rationales_of_one_question_in_a_batch(batch_size):
    rng = random.Random(batch_size)
    question_ids = [f"q{rng.randrange(12)}" for _ in range(50)] + ["big"] * 9
    rng.shuffle(question_ids)
    sampler = NoSameQuestionBatchSampler(question_ids, batch_size, seed=3)
    orders = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        _check_batches(question_ids, batches, batch_size)
        orders.append(batches)
    if batch_size > 1:
        assert orders[0] != orders[1]  # reshuffled each epoch
    sampler.set_epoch(1)
    assert list(sampler) == orders[1]  # deterministic for a seed and an epoch


def test_sampler_with_one_dominant_question_makes_more_smaller_batches():
    question_ids = ["a"] * 5 + ["b", "c"]
    sampler = NoSameQuestionBatchSampler(question_ids, batch_size=4)
    batches = list(sampler)
    assert len(batches) == 5  # "a" needs five batches
    _check_batches(question_ids, batches, 4)


# ------------------------------------------------------------------ data and the combined loss


def test_unique_wrong_rationales_and_triplet_examples():
    attempts = [
        StudentAttempt("p1", 0, "1+1=3", "3", False, "s"),
        StudentAttempt("p1", 1, "1+1=3 ", "3", False, "s"),
        StudentAttempt("p1", 2, "1+1=2", "2", True, "s"),
        StudentAttempt("p2", 0, "x", None, False, "s"),
        StudentAttempt("p2", 1, "so far 2+2 is", None, False, "s", unfinished=True),  # cut off: not a mistake
    ]
    wrong = unique_wrong_rationales(attempts)
    assert wrong == {"p1": ["1+1=3"], "p2": ["x"]}
    problems = [Problem("p1", "1+1", "2"), Problem("p2", "2+2", "4"), Problem("p3", "3+3", "6")]
    anchors = [
        _trace("p1", "A", "2", True),
        _trace("p1", "B", "2", True, 1),
        _trace("p2", "C", "4", True),
        _trace("p3", "D", "6", True),
        _trace("p3", "E", "7", False),
    ]
    pool = {"p1": [anchors[0].cot, anchors[1].cot], "p2": [anchors[2].cot], "p3": [anchors[3].cot]}
    examples = triplet_examples(problems, anchors, pool, wrong, "teacher")
    assert [e.problem_id for e in examples] == ["p1", "p1", "p2", "p3"]  # the wrong teacher trace is dropped
    assert examples[0].meta["positive"] == anchors[1].cot and examples[1].meta["positive"] == anchors[0].cot
    assert examples[0].meta["negative"] == "1+1=3"
    assert examples[2].meta["positive"] is None and examples[2].meta["negative"] == "x"  # masked: no positive
    assert examples[3].meta["negative"] is None  # masked: no negative


def test_tailored_loss_equals_mle_plus_lambda_triplet_from_separate_forwards(tiny_model_dir, tiny_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    examples = [
        SFTExample(
            "p1",
            "What is 1+1?",
            "1+1=2, so \\boxed{2}",
            "teacher",
            meta={"positive": "one plus one is two: \\boxed{2}", "negative": "1+1=3 \\boxed{3}"},
        ),
        SFTExample(
            "p2",
            "What is 20+22?",
            "20+22=42 \\boxed{42}",
            "teacher",
            meta={"positive": None, "negative": "x"},
        ),
    ]
    items = [encode_triplet_example(tiny_tokenizer, ex) for ex in examples]
    batch = TailoredCollator(tiny_tokenizer.pad_token_id, prefix_weight=0.1)(items)
    assert batch["input_ids"].shape[0] == 4 and batch["triplet_index"].tolist() == [0]
    plen = items[0]["anchor"]["prompt_len"]
    assert (
        batch["mle_weights"][0, :plen].eq(0.1).all()
        and batch["mle_weights"][0, plen : len(items[0]["anchor"]["input_ids"])].eq(1).all()
    )
    with torch.no_grad():
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
        )
        loss, stats = tailored_loss(out.logits, out.hidden_states[-1], batch, lam=0.5, margin=1.0)

        def last_state(ids):
            o = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
            return o.hidden_states[-1][0, -1]

        a, p, n = (last_state(items[0][k]["input_ids"]) for k in ("anchor", "positive", "negative"))
        cos = torch.nn.functional.cosine_similarity
        expected_triplet = max(0.0, -cos(a, p, dim=0).item() + cos(a, n, dim=0).item() + 1.0)
        mle = weighted_mle_loss(out.logits[:2], batch["labels"][:2], batch["mle_weights"][:2]).item()
    assert stats["triplet"] == pytest.approx(expected_triplet, abs=1e-4)
    assert loss.item() == pytest.approx(mle + 0.5 * expected_triplet, abs=1e-4)


def test_trainer_dataloader_uses_the_no_same_question_sampler(tiny_model_dir, tiny_tokenizer, tmp_path):
    import dataclasses

    import torch
    from transformers import AutoModelForCausalLM

    from orion_utils import training
    from orion_utils.tailored_training import tailored_method, tailored_rows

    seen = []

    class RecordingCollator(TailoredCollator):
        def __call__(self, features):
            seen.append([f["problem_id"] for f in features])
            return super().__call__(features)

    examples = [SFTExample(f"q{i % 3}", f"Q{i % 3}", f"answer {i}", "teacher") for i in range(9)]
    cfg = TailoredConfig(batch_size=3, max_steps=1)
    rows, _ = tailored_rows(tiny_tokenizer, examples, cfg)
    method = dataclasses.replace(tailored_method(cfg), collator=lambda tok: RecordingCollator(tok.pad_token_id))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    trainer = training.build_trainer(model, tiny_tokenizer, rows, cfg, tmp_path, "no_same_question", "cpu",
                                     "float32", method=method)
    assert isinstance(trainer, training.sft_trainer_class())  # the one SFT trainer, its sampler overridden
    batches = list(trainer.get_train_dataloader())
    assert len(batches) == 3 and len(seen) == 3
    assert all(sorted(b) == ["q0", "q1", "q2"] for b in seen)


# ------------------------------------------------------------------ a multi-round run


def _trace(pid, text, answer, correct, i=0):
    return TeacherTrace(
        problem_id=pid,
        thinking=text,
        solution=f"So the answer is \\boxed{{{answer}}}.",
        answer=answer,
        correct=correct,
        teacher="fake",
        sample_index=i,
    )


class FakeTeacher:
    """collect: n correct rationales (a wrong one for 'p3'); tailor: a correct one naming the mistake."""

    name = "fake"

    def __init__(self):
        self.tailor_calls = []

    def collect(self, problems, n=1):
        out = []
        for p in problems:
            for i in range(n):
                ok = not (p.id == "p3" and i == 0)
                out.append(_trace(p.id, f"step {i}: compute {p.question}", p.answer if ok else "0", ok, i))
        return out

    def tailor(self, problem, wrong_attempts):
        self.tailor_calls.append((problem.id, list(wrong_attempts)))
        return _trace(
            problem.id, f"Careful, not '{wrong_attempts[0][:12]}': {problem.question}", problem.answer, True
        )


@dataclass
class FakeGeneration:
    text: str
    n_tokens: int
    finish_reason: str = "stop"


class FakeGenerator:
    """Per question: half the samples right, half wrong (two distinct wrong texts)."""

    def __init__(self, model_dir, log):
        self.model_dir = model_dir
        log.append(str(model_dir))

    def generate(self, questions, sampling, prompt_template="{question}", system=None):
        out = []
        for q in questions:
            gold = str(eval(q))  # the questions are sums
            rows = [
                f"{q} = {gold}, \\boxed{{{gold}}}"
                if i % 2 == 0
                else f"{q} = {int(gold) + i}, \\boxed{{{int(gold) + i}}}"
                for i in range(sampling.n)
            ]
            out.append([FakeGeneration(t, len(t)) for t in rows])
        return out

    def close(self):
        pass


@dataclass
class FakeGrade:
    correct: bool
    reason: str
    predicted: str


def boxed_grader(response, gold):
    m = re.findall(r"\\boxed\{([^}]*)\}", response)
    predicted = m[-1] if m else None
    return FakeGrade(predicted == gold, "correct" if predicted == gold else "wrong", predicted)


def test_multi_round_run_on_a_tiny_model(tiny_model_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    problems = [Problem("p1", "1+1", "2"), Problem("p2", "20+22", "42"), Problem("p3", "3+4", "7")]
    teacher, factory_log = FakeTeacher(), []
    cfg = TailoredConfig(
        rounds=2,
        exam_samples=4,
        teacher_samples=2,
        batch_size=2,
        max_steps=2,
        learning_rate=1e-3,
        lr_scheduler="constant",
        max_seq_len=256,
        exam_max_new_tokens=16,
        logging_steps=1,
    )
    out = tmp_path / "tailored"
    results = run_tailored(
        tiny_model_dir,
        problems,
        teacher,
        lambda d: FakeGenerator(d, factory_log),
        None,
        cfg,
        out,
        grader=boxed_grader,
    )

    assert [r.round for r in results] == [0, 1, 2]
    r0, r1, r2 = results
    assert r0.exam_accuracy == 0.5 and r0.n_wrong_rationales == 6 and not r0.trained
    assert (r0.n_exam_wrong, r0.n_exam_unfinished) == (6, 0)  # every answer finished here
    rounds_json = json.loads((out / "rounds.json").read_text())
    assert [(r["n_exam_wrong"], r["n_exam_unfinished"]) for r in rounds_json][:1] == [(6, 0)]
    # round 1: teacher rationales for all questions, the wrong one dropped; negatives from the round-0 exam
    assert (r1.n_teacher_rationales, r1.n_teacher_dropped, r1.n_train) == (5, 1, 5)
    assert r1.trained and r1.n_triplets == 4  # p3 has a single correct rationale: no positive
    # round 2: the round-1 student sits the exam, the teacher tailors to its mistakes, training continues
    assert factory_log == [str(tiny_model_dir), r1.model_dir]
    assert sorted(pid for pid, _ in teacher.tailor_calls) == ["p1", "p2", "p3"]
    assert all(len(w) == 2 for _, w in teacher.tailor_calls)  # two distinct wrong rationales each
    assert r2.trained and r2.meta["init_model"] == r1.model_dir and r2.n_train == 3
    train2 = [json.loads(x) for x in (out / "round_2" / "train.jsonl").read_text().splitlines()]
    assert {row["source"] for row in train2} == {"tailored"}
    assert all(
        row["meta"]["positive"] and row["meta"]["negative"] for row in train2
    )  # round-1 rationales as positives
    for r in (1, 2):
        for name in (
            "exam.jsonl" if r == 2 else "teacher.jsonl",
            "train.jsonl",
            "loss_history.json",
            "result.json",
        ):
            assert (out / f"round_{r}" / name).exists()
        history = json.loads((out / f"round_{r}" / "loss_history.json").read_text())
        assert len(history) == 2 and all("triplet" in h and "mle" in h for h in history)
    AutoModelForCausalLM.from_pretrained(out / "model")
    assert not [r for r in TailoredDir(out).rounds() if r.exam_partial.exists()]  # the exams' chunks, once done

    # resumable: a second run reads everything back and trains nothing
    def no_training(*args, **kwargs):
        raise AssertionError("a finished round was trained again")

    monkeypatch.setattr("orion_utils.tailored.train_tailored_round", no_training)
    again = run_tailored(
        tiny_model_dir,
        problems,
        teacher,
        lambda d: pytest.fail("exam sat again"),
        None,
        cfg,
        out,
        grader=boxed_grader,
    )
    assert [r.model_dir for r in again] == [r.model_dir for r in results]
    assert Counter(pid for pid, _ in teacher.tailor_calls) == Counter({"p1": 1, "p2": 1, "p3": 1})
    assert Path(results[-1].model_dir).parent == out / "round_2"


def test_tailored_rationales_go_to_the_api_teacher_in_one_concurrent_batch(tmp_path):
    """Rounds ≥ 2 ask for every tailored rationale in one batched call (tailor_many), so the API
    teacher's concurrency applies: against the local fake OpenAI server the requests overlap."""
    from orion_utils.tailored import tailored_rationales
    from orion_utils.teachers.api import APITeacher
    from helpers import FakeOpenAIServer

    problems = [Problem(f"p{i}", f"What is {i} + {i + 3}?", str(2 * i + 3)) for i in range(6)]
    wrong = {p.id: [f"{p.question} It is \\boxed{{0}}."] for p in problems[:5]}  # p5 was answered right
    cfg = TailoredConfig(tailor_samples=2)
    with FakeOpenAIServer(latency_s=0.3) as server:
        teacher = APITeacher(server.base_url, "fake-reasoner", api_key_env=None, concurrency=4,
                             cache_dir=tmp_path / "cache", timeout_s=5.0, progress=False)
        traces = tailored_rationales(problems, teacher, wrong, cfg)
        assert server.request_count == 10 and server.max_in_flight == 4
    assert sorted((t.problem_id, t.sample_index) for t in traces) == [(f"p{i}", s) for i in range(5) for s in (0, 1)]


@pytest.mark.parametrize("layer", [-1, -2])
def test_triplet_layer_picks_the_hidden_state_fed_to_the_triplet(tiny_model_dir, tiny_tokenizer, tmp_path, layer):
    """-1: the last hidden state after the final norm (what the LM head reads); -2: the residual
    stream one layer below, before any final norm."""
    import torch
    from transformers import AutoModelForCausalLM

    from orion_utils import training
    from orion_utils.tailored_training import tailored_method, tailored_rows

    examples = [SFTExample("p1", "What is 1+1?", "1+1=2 \\boxed{2}", "teacher",
                           meta={"positive": "one and one: \\boxed{2}", "negative": "1+1=3 \\boxed{3}"})]
    cfg = TailoredConfig(batch_size=1, triplet_layer=layer, lam=0.5)
    rows, _ = tailored_rows(tiny_tokenizer, examples, cfg)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    trainer = training.build_trainer(model, tiny_tokenizer, rows, cfg, tmp_path, "no_same_question", "cpu",
                                     "float32", method=tailored_method(cfg))
    batch = trainer.data_collator(rows)
    with torch.no_grad():
        got = float(trainer.compute_loss(model, dict(batch)))
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        both = {k: tailored_loss(out.logits, out.hidden_states[k], batch, 0.5, 1.0) for k in (-1, -2)}
    assert got == pytest.approx(float(both[layer][0]), rel=1e-6)
    assert both[-1][1]["triplet"] != pytest.approx(both[-2][1]["triplet"], abs=1e-5)


class ScriptedExamGenerator:
    """A test double for the student's generator (the counting under test needs known finish reasons): per
    question, a cut-off answer that boxed the right value, a cut-off one with a cued right answer, a finished
    right one and a finished wrong one."""

    def generate(self, questions, sampling, prompt_template="{question}", system=None):
        out = []
        for q in questions:
            gold = str(eval(q))  # the questions are sums
            out.append([FakeGeneration(f"{q} = {gold}, so \\boxed{{{gold}}}. Let me verify: {q} is", 16, "length"),
                        FakeGeneration(f"{q} = {gold}. The answer is {gold}. Wait, let me check", 16, "length"),
                        FakeGeneration(f"{q} = {gold}, \\boxed{{{gold}}}", 8),
                        FakeGeneration(f"{q} = 0, \\boxed{{0}}", 8)][: sampling.n])
        return out


def test_the_exam_counts_cut_off_answers_apart_from_wrong_ones_whatever_they_state():
    from orion_utils.grading import grade
    from orion_utils.tailored import RoundResult, exam_stats, run_exam

    problems = [Problem("p1", "1+1", "2"), Problem("p2", "20+22", "42")]
    cfg = TailoredConfig(exam_samples=4, exam_max_new_tokens=16)
    attempts = run_exam(ScriptedExamGenerator(), problems, cfg, grade)
    assert [a.unfinished for a in attempts[:4]] == [True, True, False, False]
    assert [a.correct for a in attempts[:4]] == [False, False, True, False]  # a cut-off right answer is not correct
    assert attempts[1].answer == "2"  # the cued answer was read, and still does not finish it
    wrong = unique_wrong_rationales(attempts)
    assert {pid: len(v) for pid, v in wrong.items()} == {"p1": 1, "p2": 1}  # the finished wrong ones only
    stats = exam_stats(attempts, wrong)
    assert stats == {"n_exam_attempts": 8, "exam_accuracy": 0.25, "n_exam_wrong": 2, "n_exam_unfinished": 4,
                     "n_wrong_rationales": 2, "n_exam_degenerate": 0}
    assert RoundResult(round=0, model_dir="m", trained=False, **stats).n_exam_unfinished == 4


def test_a_real_students_exam_counts_every_cut_off(tiny_model_dir):
    from orion_utils.config import GenerationConfig
    from orion_utils.grading import grade
    from orion_utils.tailored import default_generator_factory, exam_stats, run_exam

    # a random tiny model rarely ends its turn within 6 tokens: most exam answers are cut off
    problems = [Problem("p1", "1+1", "2"), Problem("p2", "20+22", "42")]
    cfg = TailoredConfig(exam_samples=3, exam_max_new_tokens=6, exam_temperature=1.0)
    generator = default_generator_factory(GenerationConfig(backend="transformers"))(tiny_model_dir)
    try:
        attempts = run_exam(generator, problems, cfg, grade)
    finally:
        generator.close()
    cut = [a for a in attempts if a.meta["finish_reason"] == "length"]
    stats = exam_stats(attempts, unique_wrong_rationales(attempts))
    assert cut and stats["n_exam_unfinished"] == len(cut) and not any(a.correct for a in cut)
    assert stats["n_exam_wrong"] == len(attempts) - len(cut) - sum(a.correct for a in attempts)
