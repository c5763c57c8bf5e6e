"""Toy domain: problem generator (determinism, splits, difficulty knobs) and parse_steps."""
from __future__ import annotations

import dataclasses

import pytest

from orion_utils.jsonl import read_jsonl, write_jsonl
from orion_utils.records import Problem
from orion_utils.toy.domain import (
    Step,
    ToyDomainConfig,
    apply_op,
    generate_problems,
    gold_steps,
    parse_steps,
    solution_steps,
)


def _check_consistent(p: Problem, cfg: ToyDomainConfig) -> None:
    steps = p.meta["steps"]
    assert cfg.min_steps <= len(steps) == p.meta["n_steps"] <= cfg.max_steps
    cur = p.meta["start"]
    assert 2 <= cur <= cfg.max_operand
    for s in steps:
        assert s["a"] == cur
        assert s["op"] in cfg.ops
        assert apply_op(s["a"], s["op"], s["b"]) == s["result"]
        if s["op"] == "*":
            assert 2 <= s["b"] <= cfg.max_multiplier
        else:
            assert 1 <= s["b"] <= cfg.max_operand
        cur = s["result"]
        assert 2 <= cur <= cfg.max_value
    assert p.answer == str(cur)
    assert p.question.endswith("have now?")
    assert str(p.meta["start"]) in p.question


def test_generator_is_deterministic_and_ids():
    cfg = ToyDomainConfig()
    a = generate_problems(50, cfg, seed=3, split="train")
    b = generate_problems(50, cfg, seed=3, split="train")
    assert a == b
    assert [p.id for p in a[:3]] == ["toy-train-00000", "toy-train-00001", "toy-train-00002"]
    assert generate_problems(50, cfg, seed=4, split="train") != a
    # a longer draw starts with the shorter one (stable prefix)
    assert generate_problems(60, cfg, seed=3, split="train")[:50] == a
    assert all(p.source == "toy" and p.meta["split"] == "train" for p in a)
    assert len({p.question for p in a}) == 50


def test_splits_are_disjoint_whatever_the_seeds():
    cfg = ToyDomainConfig()
    train = generate_problems(800, cfg, seed=0, split="train") + generate_problems(400, cfg, seed=7, split="pretrain")
    test = generate_problems(300, cfg, seed=0, split="test") + generate_problems(300, cfg, seed=7, split="test")
    hard = generate_problems(200, cfg, seed=0, split="hard")

    def sig(ps):  # the arithmetic content, not the wording
        return {p.meta["signature"] for p in ps}

    assert not sig(train) & sig(test)
    assert not sig(train) & sig(hard)
    assert {p.id.split("-")[1] for p in test} == {"test"}


def test_difficulty_knobs_and_hard_split():
    cfg = ToyDomainConfig()
    for p in generate_problems(200, cfg, seed=0, split="test"):
        _check_consistent(p, cfg)
    hard = generate_problems(200, cfg, seed=0, split="hard")
    for p in hard:
        _check_consistent(p, cfg.hard_variant())
    test = generate_problems(200, cfg, seed=0, split="test")

    def mean(ps, f):
        return sum(f(p) for p in ps) / len(ps)

    assert mean(hard, lambda p: p.meta["n_steps"]) > mean(test, lambda p: p.meta["n_steps"]) + 1.0
    assert mean(hard, lambda p: int(p.answer)) > mean(test, lambda p: int(p.answer))
    assert max(s["result"] for p in hard for s in p.meta["steps"]) > cfg.max_value  # larger numbers
    # every action is on its own day, consecutive days from a random one
    from orion_utils.toy.domain import DAYS

    for p in test + hard:
        days = [DAYS.index(s["day"]) for s in p.meta["steps"]]
        assert days == list(range(days[0], days[0] + len(days)))
        assert all(f"On {s['day']}, " in p.question for s in p.meta["steps"])
    assert len({p.meta["steps"][0]["day"] for p in test}) == 7 - cfg.min_steps + 1

    small = ToyDomainConfig(min_steps=1, max_steps=1, max_operand=5, max_value=9, ops="+")
    ps = generate_problems(10, small, seed=0, split="train")
    for p in ps:
        _check_consistent(p, small)
        assert p.meta["steps"][0]["op"] == "+"
    no_mul = ToyDomainConfig(ops="+-")
    assert all(s["op"] != "*" for p in generate_problems(100, no_mul, 0, "train") for s in p.meta["steps"])


def test_config_validation_and_too_small_space():
    with pytest.raises(ValueError):
        ToyDomainConfig(ops="+/")
    with pytest.raises(ValueError):
        ToyDomainConfig(min_steps=3, max_steps=2)
    with pytest.raises(ValueError, match="one per day"):
        ToyDomainConfig(hard_max_steps=8)
    with pytest.raises(ValueError):
        generate_problems(5, ToyDomainConfig(), split="dev")
    tiny = ToyDomainConfig(min_steps=1, max_steps=1, max_operand=2, max_value=4, ops="+")
    with pytest.raises(ValueError, match="too few distinct"):
        generate_problems(50, tiny, seed=0, split="train")
    # simple types only: a profile can set every field
    assert all(isinstance(v, (int, float, str)) for v in dataclasses.asdict(ToyDomainConfig()).values())


def test_problems_roundtrip_jsonl(tmp_path):
    ps = generate_problems(5, ToyDomainConfig(), seed=0, split="hard")
    write_jsonl(tmp_path / "p.jsonl", ps)
    assert read_jsonl(tmp_path / "p.jsonl", Problem) == ps
    assert [s.text for s in gold_steps(ps[0])] == [
        f"{r['a']} {r['op']} {r['b']} = {r['result']}" for r in ps[0].meta["steps"]
    ]


def test_parse_steps_hand_made_text():
    text = (
        "<think>\nTom has 12.\nHe buys 7 more: 12 + 7 = 19.\nCheck: 19 - 7 = 12. Correct.\n"
        "Wait, I might be tempted to say 19 - 5 = 13, but 19 - 5 = 14.\n"
        "Then 19 - 5 = 14, and 14 * 3 = 43.\n</think>\n\nSo 14 * 3 = 42. The answer is \\boxed{42}."
    )
    steps = parse_steps(text)
    assert [(s.text, s.kind, s.section) for s in steps] == [
        ("12 + 7 = 19", "compute", "think"),
        ("19 - 7 = 12", "check", "think"),
        ("19 - 5 = 13", "reflect", "think"),
        ("19 - 5 = 14", "reflect", "think"),
        ("19 - 5 = 14", "compute", "think"),
        ("14 * 3 = 43", "compute", "think"),
        ("14 * 3 = 42", "compute", "solution"),
    ]
    assert [s.correct for s in steps] == [True, True, False, True, True, False, True]
    assert text[steps[0].start:steps[0].end] == "12 + 7 = 19"
    assert [s.text for s in solution_steps(text)] == ["12 + 7 = 19", "19 - 5 = 14", "14 * 3 = 43"]
    # no think tags, odd spacing, a truncated reply, nothing at all
    assert [s.text for s in parse_steps("3+4=7 then 7 -2= 5")] == ["3 + 4 = 7", "7 - 2 = 5"]
    assert [s.section for s in parse_steps("<think>\n1 + 1 = 2\n")] == ["think"]
    assert [s.section for s in parse_steps("a 1 + 1 = 2 </think> 2 + 2 = 4")] == ["think", "solution"]
    assert parse_steps("") == [] and parse_steps("no maths here, 12 apples") == []
    assert Step(2, "-", 5, -3).correct
