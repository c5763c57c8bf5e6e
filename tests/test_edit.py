"""EDIT: key-token alignment, dual pairs, the stage-2 loss, and one training step on a tiny model."""

from __future__ import annotations

import json
import math
import random

import pytest

from orion_utils.edit import (
    EditCollator,
    EditConfig,
    KeyOps,
    build_dual_pairs,
    edit_loss,
    encode_pair,
    key_token_ops,
    key_token_weights,
    stage1_examples,
    train_edit_stage2,
    weights_from_ops,
)
from orion_utils.edit_pairs import pairs_from_exposure
from orion_utils.records import DualPair, Problem, StudentAttempt, TeacherTrace

A, B = 1.0, 0.025  # the paper's α and β


# ------------------------------------------------------------------ alignment on hand-made pairs


@pytest.mark.parametrize(
    "chosen, rejected, w_chosen, w_rejected",
    [
        # identical: nothing is key
        ([1, 2, 3], [1, 2, 3], [0, 0, 0], [0, 0, 0]),
        # one replaced token: marked on both sides
        ([1, 2, 3, 4, 5], [1, 2, 9, 4, 5], [0, 0, A, 0, 0], [0, 0, B, 0, 0]),
        # pure deletion: a chosen token absent from the rejected CoT
        ([1, 2, 3, 4, 5], [1, 2, 4, 5], [0, 0, A, 0, 0], [0, 0, 0, 0]),
        # pure insertion: a rejected token absent from the chosen CoT
        ([1, 2, 4, 5], [1, 2, 3, 4, 5], [0, 0, 0, 0], [0, 0, B, 0, 0]),
        # the rejected CoT stops early: the chosen tail is deleted
        ([1, 2, 3, 4], [1, 2], [0, 0, A, A], [0, 0]),
        # the rejected CoT runs on: its tail is inserted
        ([1, 2], [1, 2, 3, 4], [0, 0], [0, 0, B, B]),
        # common prefix stripped first: of [7,7,7] vs [7] the *last* two 7s are the deleted ones
        ([7, 7, 7], [7], [0, A, A], [0]),
        ([5, 7], [5, 7, 7], [0, 0], [0, 0, B]),
        # replace + delete + insert in one pair (the minimal alignment is unique)
        (
            [1, 2, 3, 4, 5, 6, 7, 8],
            [1, 2, 9, 4, 5, 7, 8, 10],
            [0, 0, A, 0, 0, A, 0, 0],
            [0, 0, B, 0, 0, 0, 0, B],
        ),
        # nothing in common: everything is key
        ([1, 2, 3], [4, 5], [A, A, A], [B, B]),
        # empty sides
        ([], [1, 2], [], [B, B]),
        ([1, 2], [], [A, A], []),
        ([], [], [], []),
    ],
)
def test_key_token_weights_hand_made(chosen, rejected, w_chosen, w_rejected):
    got_c, got_r = key_token_weights(chosen, rejected)
    assert got_c == [float(w) for w in w_chosen]
    assert got_r == [float(w) for w in w_rejected]


def test_key_ops_are_stored_not_weights_and_round_trip_json():
    ops = key_token_ops([1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 9, 4, 5, 7, 8, 10])
    assert ops.prefix_len == 2 and (ops.len_chosen, ops.len_rejected) == (8, 8)
    assert ops.ops == [["replace", 2, 3, 2, 3], ["delete", 5, 6, 5, 5], ["insert", 8, 8, 7, 8]]
    assert (ops.n_key_chosen, ops.n_key_rejected) == (2, 2)
    stored = json.loads(json.dumps(ops.to_dict()))
    assert KeyOps.from_dict(stored) == ops
    # α/β change without re-aligning
    assert weights_from_ops(stored, alpha=2.0, beta=0.5) == (
        [0, 0, 2.0, 0, 0, 2.0, 0, 0],
        [0, 0, 0.5, 0, 0, 0, 0, 0.5],
    )


def test_key_token_weights_accepts_tensors_and_large_ids():
    import torch

    chosen = torch.tensor([151_643, 10, 11, 12])
    rejected = torch.tensor([151_643, 10, 99, 12])
    assert key_token_weights(chosen, rejected, alpha=1.0, beta=1.0) == ([0, 0, 1.0, 0], [0, 0, 1.0, 0])


def _similar(seq, rng, rate=0.1, vocab=32_000):
    """``seq`` with about ``rate`` of its positions replaced, deleted or followed by an insertion."""
    out = []
    for tok in seq:
        r = rng.random()
        if r < rate / 3:
            out.append(rng.randrange(vocab))
        elif r < 2 * rate / 3:
            continue
        elif r < rate:
            out.extend([tok, rng.randrange(vocab)])
        else:
            out.append(tok)
    return out


def test_key_token_weights_on_4000_token_pairs():
    """How fast: bench/bench_edit_alignment.py (target < 0.5 s a pair)."""
    rng = random.Random(0)
    chosen = [rng.randrange(32_000) for _ in range(4000)]
    similar = _similar(chosen[:300], rng, 0.0) + _similar(chosen[300:], rng, 0.1)
    different = [rng.randrange(32_000) for _ in range(4000)]
    for rejected in (similar, different):
        w_c, w_r = key_token_weights(chosen, rejected)
        assert len(w_c) == len(chosen) and len(w_r) == len(rejected)
    assert sum(w_c) == len(chosen) * A  # nothing in common with `different`


# ------------------------------------------------------------------ dual pairs


def _trace(pid, text, answer, correct, i=0):
    return TeacherTrace(
        problem_id=pid,
        thinking=text,
        solution=f"\\boxed{{{answer}}}",
        answer=answer,
        correct=correct,
        teacher="fake",
        sample_index=i,
    )


class FakeFeedbackTeacher:
    """Rectify → the gold answer; corrupt → gold + 1 (a wrong one), except for problem 'p_stubborn'."""

    name = "fake"

    def collect(self, problems, n=1):
        return [_trace(p.id, f"work for {p.question}", p.answer, True, i) for p in problems for i in range(n)]

    def rectify(self, problem, wrong):
        return _trace(problem.id, wrong.thinking + " wait, fix it", problem.answer, True)

    def corrupt(self, problem, correct):
        if problem.id == "p_stubborn":
            return _trace(problem.id, correct.thinking, problem.answer, True)  # failed to corrupt
        return _trace(problem.id, correct.thinking + " off by one", str(int(problem.answer) + 1), False)

    def tailor(self, problem, wrong_attempts):
        return _trace(problem.id, "careful: " + wrong_attempts[0], problem.answer, True)


PROBLEMS = [Problem("p1", "1+1", "2"), Problem("p2", "2+3", "5"), Problem("p_stubborn", "4+4", "8")]


def test_pairs_from_teacher_rectifies_wrong_and_corrupts_correct():
    traces = [
        _trace("p1", "1+1=2", "2", True),
        _trace("p2", "2+3=6", "6", False),
        _trace("p_stubborn", "4+4=8", "8", True),
    ]
    pairs = build_dual_pairs("teacher", PROBLEMS, traces, teacher=FakeFeedbackTeacher())
    kinds = {p.problem_id: p.meta["kind"] for p in pairs}
    assert kinds == {"p1": "corrupted", "p2": "rectified"}  # the failed corruption is dropped
    p1, p2 = sorted(pairs, key=lambda p: p.problem_id)
    assert p1.chosen == traces[0].cot and "off by one" in p1.rejected
    assert p2.rejected == traces[1].cot and "fix it" in p2.chosen
    assert all(p.source == "teacher_prompts" for p in pairs)
    # stage 1: D+ (correct traces) ∪ D−+ (rectified)
    examples = stage1_examples(PROBLEMS, traces, pairs)
    assert sorted((e.problem_id, e.source) for e in examples) == [
        ("p1", "teacher"),
        ("p2", "rectified"),
        ("p_stubborn", "teacher"),
    ]


def test_pairs_from_exposure_pairs_teacher_correct_with_unique_student_errors():
    traces = [_trace("p1", "a", "2", True, 0), _trace("p1", "b", "2", True, 1), _trace("p2", "c", "9", False)]
    attempts = [
        StudentAttempt("p1", 0, "1+1=3 \\boxed{3}", "3", False, "base"),
        StudentAttempt("p1", 1, "1+1=3  \\boxed{3}", "3", False, "base"),  # same text up to spaces
        StudentAttempt("p1", 2, "1+1=4 \\boxed{4}", "4", False, "base"),
        StudentAttempt("p1", 3, "1+1=2 \\boxed{2}", "2", True, "base"),
        StudentAttempt("p2", 0, "2+3=6 \\boxed{6}", "6", False, "base"),  # no correct teacher CoT for p2
    ]
    pairs = pairs_from_exposure(PROBLEMS, traces, attempts)
    assert [(p.problem_id, p.chosen, p.rejected) for p in pairs] == [
        ("p1", traces[0].cot, attempts[0].response),
        ("p1", traces[1].cot, attempts[2].response),
    ]
    assert pairs_from_exposure(PROBLEMS, traces, attempts, max_pairs_per_problem=1) == pairs[:1]
    with pytest.raises(ValueError):
        build_dual_pairs("exposure", PROBLEMS, traces)  # needs attempts
    with pytest.raises(ValueError):
        build_dual_pairs("nonsense", PROBLEMS, traces, attempts=attempts)


# ------------------------------------------------------------------ the loss against a hand computation


def _log_softmax(row):
    m = max(row)
    z = math.log(sum(math.exp(x - m) for x in row)) + m
    return [x - z for x in row]


def test_edit_loss_matches_hand_computation():
    import torch

    # one pair: rows 0 (chosen) and 1 (rejected); T=4, V=3; position 0 is the prompt
    logits = torch.tensor(
        [
            [[0.1, 0.2, 0.3], [1.0, -1.0, 0.5], [0.3, 0.3, 2.0], [0.0, 0.0, 0.0]],
            [[0.2, 0.1, 0.0], [2.0, 0.0, -2.0], [-1.0, 3.0, 0.0], [0.0, 0.0, 0.0]],
        ]
    )
    labels = torch.tensor([[-100, 2, 0, 1], [-100, 0, 2, -100]])  # rejected: 2 response tokens
    w_c = torch.tensor([[0.0, 0.0, 1.0, 1.0]])  # key tokens: positions 2 and 3
    w_r = torch.tensor([[0.0, 0.025, 0.025, 0.0]])  # key tokens: positions 1 and 2
    lp = [[_log_softmax(r) for r in seq] for seq in logits.tolist()]
    # label at t is predicted by the logits at t-1
    chosen = (-lp[0][1][0] - lp[0][2][1]) / 3  # 3 response tokens
    rejected = 0.025 * (-lp[1][0][0] - lp[1][1][2]) / 2  # 2 response tokens
    loss, stats = edit_loss(logits, labels, w_c, w_r, nll_guard=None)
    assert loss.item() == pytest.approx(chosen - rejected, abs=1e-6)
    assert stats["chosen_term"] == pytest.approx(chosen, abs=1e-6)

    # the guard drops rejected key tokens that are already unlikely: NLL at position 2 is ≈ 5.05
    nll_pos1, nll_pos2 = -lp[1][0][0], -lp[1][1][2]
    assert nll_pos1 < 3.0 < nll_pos2
    loss_guarded, stats = edit_loss(logits, labels, w_c, w_r, nll_guard=3.0)
    assert loss_guarded.item() == pytest.approx(chosen - 0.025 * nll_pos1 / 2, abs=1e-6)
    assert stats["guard_kept"] == pytest.approx(0.5)


def test_edit_loss_averages_over_pairs():
    import torch

    torch.manual_seed(0)
    logits = torch.randn(4, 5, 7)
    labels = torch.randint(0, 7, (4, 5))
    labels[:, :2] = -100
    w = torch.rand(4, 5)
    loss, _ = edit_loss(logits, labels, w[:2], w[2:], nll_guard=None)
    first, _ = edit_loss(logits[[0, 2]], labels[[0, 2]], w[:1], w[2:3], nll_guard=None)
    second, _ = edit_loss(logits[[1, 3]], labels[[1, 3]], w[1:2], w[3:], nll_guard=None)
    assert loss.item() == pytest.approx((first.item() + second.item()) / 2, abs=1e-6)


# ------------------------------------------------------------------ collator and one optimiser step


def _pair(question="What is 12+30?"):
    return DualPair(
        problem_id="p",
        question=question,
        chosen="<think>\n12+30=42\n</think>\n\nThe answer is \\boxed{42}.",
        rejected="<think>\n12+30=32\n</think>\n\nThe answer is \\boxed{32}.",
        source="error_exposure",
    )


def test_collator_puts_both_sides_in_one_batch_with_weights_on_response_tokens(tiny_tokenizer):
    pair = _pair()
    item = encode_pair(tiny_tokenizer, pair)
    ops = KeyOps.from_dict(item["key_ops"])
    batch = EditCollator(tiny_tokenizer.pad_token_id, alpha=1.0, beta=0.5)([item, item])
    assert batch["input_ids"].shape[0] == 4  # 2 pairs → 4 sequences, chosen first
    w = batch["key_weights"]
    plen = item["chosen"]["prompt_len"]
    assert (w[:, :plen] == 0).all()  # nothing on the prompt
    assert set(w[:2].unique().tolist()) == {0.0, 1.0} and set(w[2:].unique().tolist()) == {0.0, 0.5}
    assert int((w[0] > 0).sum()) == ops.n_key_chosen and int((w[2] > 0).sum()) == ops.n_key_rejected
    # key tokens are where the texts differ: "42" vs "32" → the digit '4' vs '3', twice
    keys = batch["input_ids"][0][w[0] > 0].tolist()
    assert tiny_tokenizer.decode(keys) == "44"
    assert tiny_tokenizer.decode(batch["input_ids"][2][w[2] > 0].tolist()) == "33"
    assert ((batch["labels"] == -100) | (batch["attention_mask"] == 1)).all()


def _key_logprob(model, batch):
    import torch

    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    labels = batch["labels"][:, 1:]
    tok = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    key = batch["key_weights"][:, 1:] > 0
    return tok[0][key[0]].sum().item(), tok[1][key[1]].sum().item()


def _one_sgd_step(model_dir, tokenizer, alpha, beta, lr=0.5):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    batch = EditCollator(tokenizer.pad_token_id, alpha=alpha, beta=beta)([encode_pair(tokenizer, _pair())])
    before = _key_logprob(model, batch)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # no guard: in a random model every token's NLL is about ln|V| ≈ 5.6, above the default guard
    loss, _ = edit_loss(
        logits, batch["labels"], batch["key_weights"][:1], batch["key_weights"][1:], nll_guard=None
    )
    loss.backward()
    optimizer.step()
    return before, _key_logprob(model, batch)


def test_one_sgd_step_raises_chosen_and_lowers_rejected_key_tokens(tiny_model_dir, tiny_tokenizer):
    (before_c, before_r), (after_c, after_r) = _one_sgd_step(tiny_model_dir, tiny_tokenizer, A, B)
    assert after_c > before_c  # chosen key tokens likelier
    assert after_r < before_r  # rejected key tokens less likely
    # the unlikelihood term alone (α = 0) also lowers the rejected key tokens
    (_, before_r), (_, after_r) = _one_sgd_step(tiny_model_dir, tiny_tokenizer, 0.0, B)
    assert after_r < before_r


def test_train_edit_stage2_runs_and_saves_a_full_model(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = EditConfig(max_steps=2, batch_size=2, learning_rate=1e-3, lr_scheduler="constant", max_seq_len=256,
                     logging_steps=1)
    pairs = [_pair(), _pair("What is 2+2?")]
    result = train_edit_stage2(tiny_model_dir, pairs, tmp_path / "stage2", cfg)
    assert result.n_steps == 2 and len(result.loss_history) == 2
    assert {"chosen_key_nll", "rejected_key_nll"} <= set(result.loss_history[0])
    # the SFT stack's files: the same loss history and train_result.json as sft writes
    on_disk = json.loads((tmp_path / "stage2" / "train_result.json").read_text())
    assert on_disk["method"] == "edit stage 2" and on_disk["dtype"] == "float32" and on_disk["n_steps"] == 2
    assert json.loads((tmp_path / "stage2" / "loss_history.json").read_text()) == result.loss_history
    AutoModelForCausalLM.from_pretrained(result.model_dir)
    stored = [
        json.loads(line) for line in (tmp_path / "stage2" / "pairs_with_ops.jsonl").read_text().splitlines()
    ]
    assert all(row["meta"]["key_ops"]["ops"] for row in stored)


# ------------------------------------------------------------------ the whole method


def test_run_edit_with_teacher_pairs_trains_both_stages_and_resumes(tiny_model_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from orion_utils.config import TrainingConfig
    from orion_utils.edit import run_edit

    traces = [
        _trace("p1", "1+1=2", "2", True),
        _trace("p2", "2+3=6", "6", False),
        _trace("p_stubborn", "4+4=8", "8", True),
    ]
    cfg = EditConfig(pair_source="teacher", max_steps=1, batch_size=2, learning_rate=1e-3, max_seq_len=128)
    sft = TrainingConfig(max_steps=1, batch_size=2, max_seq_len=128, logging_steps=1)
    out = tmp_path / "edit"
    summary = run_edit(tiny_model_dir, PROBLEMS, traces, out, cfg, sft, teacher=FakeFeedbackTeacher())
    assert summary["n_pairs"] == 2 and summary["pair_kinds"] == {"corrupted": 1, "rectified": 1}
    assert summary["n_stage1_examples"] == 3  # D+ (2) ∪ D−+ (1)
    AutoModelForCausalLM.from_pretrained(out / "model")
    assert (out / "stage1" / "model").is_dir() and (out / "stage2" / "loss_history.json").exists()

    monkeypatch.setattr(
        "orion_utils.edit.train_edit_stage2", lambda *a, **k: pytest.fail("stage 2 ran again")
    )
    again = run_edit(tiny_model_dir, PROBLEMS, traces, out, cfg, sft, teacher=None)  # pairs read back
    assert again["n_pairs"] == 2 and again["model_dir"] == summary["model_dir"]


def test_toy_teacher_pairs_differ_only_at_the_slip(tiny_tokenizer):
    """With the toy domain's teacher, a dual pair's key tokens are a small part of the CoT."""
    pytest.importorskip("orion_utils.grading")
    from orion_utils.teachers.toy import ToyTeacher
    from orion_utils.toy.domain import generate_problems

    problems = generate_problems(6, seed=1)
    teacher = ToyTeacher(error_rate=0.5, seed=0)
    traces = teacher.collect(problems, n=2)
    pairs = build_dual_pairs("teacher", problems, traces, teacher=teacher)
    assert {p.meta["kind"] for p in pairs} == {"corrupted", "rectified"}
    assert len(stage1_examples(problems, traces, pairs)) > sum(t.correct for t in traces) // 2
    for pair in pairs:
        ops = KeyOps.from_dict(encode_pair(tiny_tokenizer, pair)["key_ops"])
        assert 0 < ops.n_key_chosen + ops.n_key_rejected  # e.g. "17" vs "117" is a pure insertion
        assert ops.n_key_chosen < ops.len_chosen // 2 and ops.n_key_rejected < ops.len_rejected // 2
        assert ops.prefix_len > 0  # the CoTs agree up to the slip


# ------------------------------------------------------------------ the teacher is asked in batches


def tagged_rewrite(messages) -> tuple[str, str]:
    """The fake server's reply to a rectify/corrupt prompt as the prompt asks for it: the rewritten CoT between
    the tags, with the given correct answer (rectify) or a wrong one (corrupt)."""
    import re

    prompt = messages[-1]["content"]
    hint = re.search(r"The correct final answer to this question is: (\S+)", prompt)
    answer = hint.group(1) if hint else "-999"
    return ("I rewrite the one step.", f"<rewritten_reasoning>\nthe sum is {answer}\n</rewritten_reasoning>\n"
            f"<rewritten_solution>\nSo \\boxed{{{answer}}}.\n</rewritten_solution>")


def test_teacher_pairs_go_to_the_api_teacher_in_concurrent_batches(tmp_path):
    """Rectify and corrupt requests go out as one batched call each (corrupt_many / rectify_many),
    so the API teacher's concurrency applies: against the local fake OpenAI server they overlap."""
    from orion_utils.edit_pairs import pairs_from_teacher
    from orion_utils.teachers.api import APITeacher
    from helpers import FakeOpenAIServer

    problems = [Problem(f"p{i}", f"What is {i} + {i + 3}?", str(2 * i + 3)) for i in range(8)]
    traces = [_trace(p.id, f"{i} + {i + 3} = {2 * i + 3 + (i % 2)}", str(2 * i + 3 + (i % 2)), i % 2 == 0)
              for i, p in enumerate(problems)]  # even: correct (corrupted), odd: wrong (rectified)
    with FakeOpenAIServer(latency_s=0.3, answer_fn=tagged_rewrite) as server:
        teacher = APITeacher(server.base_url, "fake-reasoner", api_key_env=None, concurrency=4,
                             cache_dir=tmp_path / "cache", timeout_s=5.0, progress=False)
        pairs = pairs_from_teacher(problems, traces, teacher, max_pairs_per_problem=1)
        assert server.request_count == 8
        assert server.max_in_flight == 4  # four requests at once, the teacher's concurrency
    assert {p.meta["kind"] for p in pairs} == {"rectified", "corrupted"} and len(pairs) == 8
    assert [p.problem_id for p in pairs] == sorted((p.problem_id for p in pairs), key=lambda x: int(x[1:]))


# ------------------------------------------------------------------ EDIT's own construction by default


def test_pair_source_auto_asks_the_teacher_wherever_it_can():
    from orion_utils.collection import TEACHER_KINDS
    from orion_utils.config import FEEDBACK_TEACHER_KINDS
    from orion_utils.edit_pairs import resolve_pair_source
    from orion_utils.teachers.api import APITeacher
    from orion_utils.teachers.datasets import DatasetTeacher
    from orion_utils.teachers.local import LocalTeacher
    from orion_utils.teachers.toy import ToyTeacher

    assert EditConfig().pair_source == "auto"
    classes = {"toy": ToyTeacher, "api": APITeacher, "dataset": DatasetTeacher, "local": LocalTeacher}
    assert set(classes) == set(TEACHER_KINDS)
    for kind, cls in classes.items():  # the static list agrees with what each teacher can do
        can = all(hasattr(cls, m) for m in ("rectify", "corrupt"))
        assert (kind in FEEDBACK_TEACHER_KINDS) == can
        assert resolve_pair_source("auto", kind) == ("teacher" if can else "exposure")
        assert resolve_pair_source("exposure", kind) == "exposure"
    with pytest.raises(ValueError, match="pair_source"):
        resolve_pair_source("teachers", "toy")
    traces = [_trace("p1", "1+1=2", "2", True), _trace("p2", "2+3=6", "6", False)]
    pairs = build_dual_pairs("auto", PROBLEMS[:2], traces, teacher=FakeFeedbackTeacher())
    assert {p.meta["kind"] for p in pairs} == {"corrupted", "rectified"}


def test_corrupt_shows_the_full_cot_and_keeps_the_rewritten_cot_not_the_teachers_thinking():
    from orion_utils.teachers.prompts import Completion, PromptedTeacher

    p = Problem("q", "Compute 2 + 3 * 4.", "14")
    correct = TeacherTrace("q", "First 3 * 4 = 12.\nThen 2 + 12 = 14.", "So \\boxed{14}.", "14", True, "t")
    seen = []

    class Replying(PromptedTeacher):  # a teacher's completion call (as LocalTeacher/APITeacher implement it)
        def _complete(self, requests):
            seen.extend(r.messages[-1]["content"] for r in requests)
            return [Completion("I should change 12 to 13 and hide it.",
                               "Here it is.\n<rewritten_reasoning>\nFirst 3 * 4 = 13.\nThen 2 + 13 = 15.\n"
                               "</rewritten_reasoning>\n<rewritten_solution>\nSo \\boxed{15}.\n</rewritten_solution>")
                    for _ in requests]

    bad = Replying().corrupt(p, correct)
    assert "First 3 * 4 = 12.\nThen 2 + 12 = 14." in seen[0] and "So \\boxed{14}." in seen[0]  # thinking shown
    assert bad.thinking == "First 3 * 4 = 13.\nThen 2 + 13 = 15." and bad.solution == "So \\boxed{15}."
    assert not bad.correct and "hide" not in bad.cot and bad.meta["reply_format"] == "tagged"
    ops = key_token_ops([ord(c) for c in correct.cot], [ord(c) for c in bad.cot])  # near-copy: a few chars differ
    assert ops.n_key_chosen <= 6

    class Untagged(PromptedTeacher):
        def _complete(self, requests):
            return [Completion("my plan", "2 + 3 = 5, 5 * 4 = 20. \\boxed{20}") for _ in requests]

    plain = Untagged().rectify(p, bad)
    assert plain.thinking == "" and plain.solution.endswith("\\boxed{20}") and plain.meta["reply_format"] == "untagged"
