"""Toy teacher (CoT format, error rate, rectify/corrupt/tailor) and the rule-based reflector."""
from __future__ import annotations

import re

import pytest

from orion_utils.records import Problem, TeacherTrace, format_cot
from orion_utils.teachers.base import FeedbackTeacher, Teacher, split_thinking
from orion_utils.teachers.toy import ToyTeacher
from orion_utils.toy.domain import ToyDomainConfig, generate_problems, gold_steps, parse_steps, solution_steps
from orion_utils.toy.reflect import find_divergence, rule_reflect
from orion_utils.toy.teacher import N_VARIANTS, teacher_sample, write_cot

_BOXED = re.compile(r"\\boxed\{(-?\d+)\}")


def _boxed(text: str):
    found = _BOXED.findall(text)
    return found[-1] if found else None


@pytest.fixture(scope="module")
def problems() -> list[Problem]:
    cfg = ToyDomainConfig()
    return generate_problems(60, cfg, seed=0, split="train") + generate_problems(20, cfg, seed=0, split="hard")


def _computations(cot: str) -> list[str]:
    return [s.text for s in solution_steps(cot)]


def test_teacher_cot_format_and_correctness(problems):
    for p in problems:
        for variant in range(N_VARIANTS):
            thinking, solution = write_cot(p, variant)
            cot = format_cot(thinking, solution)
            assert cot.startswith("<think>\n") and "\n</think>\n\n" in cot
            assert split_thinking(cot) == (thinking, solution)
            assert _boxed(solution) == p.answer and solution.endswith(f"\\boxed{{{p.answer}}}.")
            steps = parse_steps(cot)
            assert all(s.correct for s in steps)
            assert _computations(cot) == [s.text for s in gold_steps(p)]
            checks = [s for s in steps if s.kind == "check"]
            assert len(checks) == p.meta["n_steps"]  # one self-check per step
            assert thinking.splitlines()[-1].startswith("So ")  # the recap
            terse = format_cot(*write_cot(p, variant, style="terse"))
            assert not [s for s in parse_steps(terse) if s.kind == "check"]
            assert _computations(terse) == _computations(cot)
    example = problems[0]
    th, _ = write_cot(example)
    assert th.splitlines()[0] == f"{example.meta['name']} starts with {example.meta['start']} {example.meta['item']}."


def test_slipped_cot_carries_the_error(problems):
    for i, p in enumerate(problems):
        at = i % p.meta["n_steps"]
        cot = format_cot(*write_cot(p, 0, slip_at=at))
        comp = solution_steps(cot)
        gold = gold_steps(p)
        assert [s.text for s in comp[:at]] == [s.text for s in gold[:at]]
        assert not comp[at].correct  # the slip itself
        assert all(s.correct for s in comp[at + 1:])  # later steps are right, from the wrong value
        for k in range(1, len(comp)):
            assert comp[k].a == comp[k - 1].result  # carried through
        assert _boxed(cot) == str(comp[-1].result) != p.answer
        assert all(s.result >= 0 for s in comp)


def test_error_rate_is_controllable(problems):
    many = generate_problems(400, ToyDomainConfig(), seed=1, split="train")
    assert all(teacher_sample(p, 0, error_rate=0.0)[2]["slip_step"] is None for p in many)
    assert all(teacher_sample(p, 0, error_rate=1.0)[2]["slip_step"] is not None for p in many[:50])
    rate = sum(teacher_sample(p, 0, error_rate=0.25, seed=5)[2]["slip_step"] is not None for p in many) / len(many)
    assert 0.17 < rate < 0.33
    # deterministic per (seed, problem, sample)
    assert teacher_sample(many[0], 2, 0.5, seed=1) == teacher_sample(many[0], 2, 0.5, seed=1)


def test_toy_teacher_collect(problems):
    teacher = ToyTeacher(error_rate=0.3, seed=0)
    assert isinstance(teacher, Teacher) and isinstance(teacher, FeedbackTeacher)
    traces = teacher.collect(problems[:40], n=2)
    assert len(traces) == 80 and [t.sample_index for t in traces[:2]] == [0, 1]
    for t in traces:
        assert isinstance(t, TeacherTrace) and t.teacher == "toy"
        assert t.correct == (t.meta["slip_step"] is None)
        assert t.answer == _boxed(t.solution)
    assert 0 < sum(not t.correct for t in traces) < 50
    assert traces == ToyTeacher(error_rate=0.3, seed=0).collect(problems[:40], n=2)
    with pytest.raises(ValueError, match="toy-domain"):
        teacher.collect([Problem(id="x", question="1+1?", answer="2")])


def test_rectify_corrupt_tailor(problems):
    teacher = ToyTeacher(error_rate=1.0, seed=0)
    for p in problems[:30]:
        wrong = teacher.collect([p], n=2)[1]
        assert not wrong.correct
        fixed = teacher.rectify(p, wrong)
        assert fixed.correct and fixed.answer == p.answer and fixed.meta["rectified"]
        # same wording as the wrong trace: the pair differs from the slipped step on
        assert fixed.thinking.splitlines()[0] == wrong.thinking.splitlines()[0]

        bad = teacher.corrupt(p, fixed)
        assert not bad.correct and bad.answer != p.answer
        slip = bad.meta["slip_step"]
        assert [s.text for s in solution_steps(bad.cot)][:slip] == [s.text for s in gold_steps(p)][:slip]

        tailored = teacher.tailor(p, ["no steps at all", wrong.cot])
        assert tailored.correct and tailored.meta["tailored"] and tailored.meta["attempt_index"] == 1
        assert tailored.meta["divergence_step"] == wrong.meta["slip_step"]
        notes = [ln for ln in tailored.thinking.splitlines() if ln.startswith("Note:")]
        assert len(notes) == 1
        assert _computations(tailored.cot) == [s.text for s in gold_steps(p)]

    plain = teacher.tailor(problems[0], [])
    assert plain.correct and not plain.meta["tailored"]


def _attempt(p: Problem, replace_step: int, new_text: str) -> str:
    """The teacher's CoT for p with the computation of one step replaced (and nothing carried)."""
    cot = format_cot(*write_cot(p))
    step = solution_steps(cot)[replace_step]
    return cot[: step.start] + new_text + cot[step.end:]


def test_rule_reflect_inserts_at_the_diverging_step(problems):
    p = next(q for q in problems if q.meta["n_steps"] >= 3 and q.meta["steps"][1]["op"] == "+")
    teacher_cot = format_cot(*write_cot(p))
    g = gold_steps(p)[1]
    wrong = _attempt(p, 1, f"{g.a} + {g.b} = {g.result + 1}")
    out = rule_reflect(p, teacher_cot, wrong)
    assert out is not None
    lines = out.splitlines()
    k = next(i for i, ln in enumerate(lines) if ln.startswith("Wait"))
    assert g.text in lines[k - 1] and not lines[k - 1].startswith("Wait")  # right after step 2
    assert lines[k] == f"Wait, I might be tempted to say {g.a} + {g.b} = {g.result + 1}, but {g.text}."
    assert lines[k + 1].startswith("Check")
    # the rest of the teacher's reasoning and its answer are kept
    assert out.replace(lines[k] + "\n", "") == teacher_cot
    assert _boxed(out) == p.answer
    assert _computations(out) == [s.text for s in gold_steps(p)]
    wrong_lines = [s for s in parse_steps(out) if not s.correct]
    assert len(wrong_lines) == 1 and wrong_lines[0].kind == "reflect"
    # other phrasings differ but say the same
    variants = {rule_reflect(p, teacher_cot, wrong, variant=v) for v in range(4)}
    assert len(variants) == 4 and all(_boxed(v) == p.answer for v in variants)


def test_rule_reflect_kinds_and_none(problems):
    p = next(q for q in problems if q.meta["n_steps"] >= 3)
    teacher_cot = format_cot(*write_cot(p))
    gold = gold_steps(p)
    g0, g1 = gold[0], gold[1]
    other = "+" if g1.op != "+" else "-"
    cases = {
        "operation": _attempt(p, 1, f"{g1.a} {other} {g1.b} = 0"),
        "operand": _attempt(p, 1, f"{g1.a} {g1.op} {g1.b + 1} = 0"),
        "start": _attempt(p, 0, f"{g0.a + 1} {g0.op} {g0.b} = {g0.result}"),
        "carry": _attempt(p, 1, f"{g1.a + 2} {g1.op} {g1.b} = {g1.result}"),
    }
    for kind, attempt in cases.items():
        ref = solution_steps(teacher_cot)
        div = find_divergence(ref, attempt)
        assert div is not None and div.kind == kind, kind
        out = rule_reflect(p, teacher_cot, attempt)
        assert out is not None and _boxed(out) == p.answer
        assert _computations(out) == [s.text for s in gold]
    # stopped after the first step: reflection before the step it left out
    short = f"<think>\n{g0.text}\n</think>\n\n\\boxed{{{g0.result}}}"
    out = rule_reflect(p, teacher_cot, short)
    lines = out.splitlines()
    k = next(i for i, ln in enumerate(lines) if ln.startswith("Wait"))
    assert g1.text in lines[k + 1]
    # all steps right but a wrong final answer
    bad_answer = teacher_cot.replace(f"\\boxed{{{p.answer}}}", "\\boxed{1234}")
    out = rule_reflect(p, teacher_cot, bad_answer)
    assert "1234" in out and _boxed(out) == p.answer
    # one step too many
    extra = teacher_cot.replace("\n</think>", f"\n{p.answer} + 1 = {int(p.answer) + 1}\n</think>")
    out = rule_reflect(p, teacher_cot, extra)
    assert out is not None and _boxed(out) == p.answer
    # nothing to reflect on
    assert rule_reflect(p, teacher_cot, "I do not know. \\boxed{3}") is None
    assert rule_reflect(p, teacher_cot, teacher_cot) is None
    # a slipped teacher CoT is not edited
    slipped = format_cot(*write_cot(p, slip_at=0))
    assert rule_reflect(p, slipped, cases["operand"]) is None


def test_caught_slip_is_checked_in_the_reflector_idiom(problems):
    from orion_utils.toy.reflect import rewrite_start

    n_caught, kinds = 0, set()
    for p in problems:
        thinking, solution, meta = teacher_sample(p, 0, caught_slip_rate=1.0)
        at = meta["caught_slip_step"]
        assert meta["slip_step"] is None and at is not None
        n_caught += 1
        gold = gold_steps(p)
        cot = format_cot(thinking, solution)
        steps = parse_steps(cot)
        # the slipped step is written wrong, then a check line: right arithmetic, ending on the right step
        think = [s for s in steps if s.kind == "compute" and s.section == "think"]
        wrong = [s for s in think if not any(s.same_computation(g) for g in gold)]
        assert len(wrong) == 1
        lines = cot.split("\n")
        check = lines[wrong[0].line + 1]
        kinds.add(meta["caught_slip_kind"])
        if meta["caught_slip_kind"] == "extra":  # the last step once more, then taken back
            assert at == len(gold) and wrong[0].a == gold[-1].result and wrong[0].correct
            assert check == f"Check: that was the last step, so the answer is {p.answer}."
            assert [s.text for s in think if s is not wrong[0]] == [g.text for g in gold]
        else:
            assert check.startswith("Check: ") and check.endswith(f", so {gold[at].text}.")
            check_steps = [s for s in steps if s.line == wrong[0].line + 1]
            assert check_steps and all(s.kind == "check" and s.correct for s in check_steps)
            # every other step is the gold one: the reasoning carries on from the corrected value
            assert [s.text for s in think if s is not wrong[0]] == [g.text for i, g in enumerate(gold) if i != at]
        assert _boxed(solution) == p.answer
        # the solution path reads the caught slip as its corrected step: nothing left to reflect on
        assert _computations(cot) == [g.text for g in gold]
        assert find_divergence(gold, cot) is None
        # the toy reflector writes the very same check for a student attempt with that wrong line
        attempt_lines = format_cot(*write_cot(p)).split("\n")
        if meta["caught_slip_kind"] == "extra":
            last = max(i for i, ln in enumerate(attempt_lines) if ln.startswith("Check"))
            attempt_lines.insert(last + 1, lines[wrong[0].line])
        else:
            right_line = next(i for i, ln in enumerate(attempt_lines) if gold[at].text in ln and not ln.startswith("Check"))
            attempt_lines[right_line] = lines[wrong[0].line]
        begin = rewrite_start(p, format_cot(*write_cot(p)), "\n".join(attempt_lines))
        assert begin is not None and begin.divergence.kind == meta["caught_slip_kind"]
        assert begin.text.rstrip("\n").split("\n")[-1] == check
    assert n_caught == len(problems)
    assert kinds == {"arithmetic", "carry", "operand", "operation", "start", "extra"}


def test_pretraining_wording_is_mostly_the_students_own():
    """The pre-training CoTs are worded the student's own way (``own_variant``) but for a seeded
    ``teacher_wording_share`` of the problems, worded as the R1-style teacher (line by line)."""
    from orion_utils.toy.teacher import teacher_sample as ts
    from orion_utils.toy.pretrain import PretrainConfig, _teacher_responses

    probs = generate_problems(200, seed=3)
    teacher = ToyTeacher(error_rate=0.0)
    cfg = PretrainConfig(own_variant=3, teacher_wording_share=0.25, caught_slip_rate=0.0)
    pairs = _teacher_responses(probs, teacher, cfg)
    own = [format_cot(*ts(p, 0, variant=3)[:2]) for p in probs]
    canonical = [format_cot(*ts(p, 0)[:2]) for p in probs]
    r1_like = [format_cot(*ts(p, 0, wording="varied")[:2]) for p in probs]
    n_own = sum(c == o for (_, c), o in zip(pairs, own))
    n_teacher = sum(c == t != o for (_, c), t, o in zip(pairs, r1_like, own))
    assert n_own + n_teacher == len(probs) and 0.15 < n_teacher / len(probs) < 0.35
    assert _teacher_responses(probs, teacher, cfg) == pairs  # seeded
    assert [c for _, c in _teacher_responses(probs, teacher, PretrainConfig(caught_slip_rate=0.0))] == canonical
    with pytest.raises(ValueError, match="own_variant"):
        PretrainConfig(own_variant=7)


def test_pretraining_wording_is_one_decision():
    """``_pretrain_wording`` gives the teacher's (variant, wording) per problem: the teacher's own without
    ``own_variant``; else the student's own, or the R1-style teacher's for the seeded share."""
    from orion_utils.toy.pretrain import PretrainConfig, _pretrain_wording

    probs = generate_problems(100, seed=4)
    assert {_pretrain_wording(PretrainConfig(), p) for p in probs} == {(None, None)}
    assert {_pretrain_wording(PretrainConfig(own_variant=2, teacher_wording_share=0.0), p) for p in probs} == {(2, "fixed")}
    assert {_pretrain_wording(PretrainConfig(own_variant=2, teacher_wording_share=1.0), p) for p in probs} == {(None, "varied")}
    half = [_pretrain_wording(PretrainConfig(own_variant=2, teacher_wording_share=0.5), p) for p in probs]
    assert set(half) == {(2, "fixed"), (None, "varied")}


def test_a_passed_variant_fixes_the_wording(problems):
    """``wording="varied"`` draws each line's wording only when no ``variant`` is passed; a variant
    passed (even the one the sample would draw) gives that one wording for the whole CoT."""
    for p in problems[:40]:
        for index in (0, 1, 2):
            for variant in range(N_VARIANTS):
                fixed = teacher_sample(p, index, variant=variant, caught_slip_rate=0.3)
                assert teacher_sample(p, index, variant=variant, wording="varied", caught_slip_rate=0.3) == fixed
                assert "wording" not in fixed[2] and fixed[2]["variant"] == variant
            assert teacher_sample(p, index, wording="varied")[2]["wording"] == "varied"


def test_caught_slip_rate_is_controllable_and_zero_changes_nothing(problems):
    for p in problems:
        assert teacher_sample(p, 0, 0.0, caught_slip_rate=0.0)[:2] == teacher_sample(p, 0, 0.0)[:2]
    caught = [teacher_sample(p, 0, caught_slip_rate=0.25)[2].get("caught_slip_step") is not None for p in problems]
    assert 0 < sum(caught) < len(problems)
    # a carried (uncaught) slip is never also a caught one
    for p in problems:
        meta = teacher_sample(p, 0, error_rate=1.0, caught_slip_rate=1.0)[2]
        assert meta["slip_step"] is not None and meta.get("caught_slip_step") is None
    teacher = ToyTeacher(error_rate=0.0)
    assert teacher.sample(problems[0], 0, caught_slip_rate=1.0)[2]["caught_slip_step"] is not None


def test_varied_wording_draws_each_line_and_keeps_the_reasoning(problems):
    """``wording="varied"`` (the R1-style toy teacher): the lines' wordings are drawn one by one, the
    computations, checks and answer stay those of the fixed wording, and the draw is seeded."""
    mixed = 0
    for p in problems:
        fixed = format_cot(*teacher_sample(p, 0)[:2])
        thinking, solution, meta = teacher_sample(p, 0, wording="varied")
        varied = format_cot(thinking, solution)
        assert meta["wording"] == "varied" and varied == format_cot(*teacher_sample(p, 0, wording="varied")[:2])
        assert [s.text for s in parse_steps(varied)] == [s.text for s in parse_steps(fixed)]
        assert _boxed(solution) == p.answer and find_divergence(gold_steps(p), varied) is None
        checks = {ln.split(":")[0] for ln in varied.split("\n") if "check" in ln.lower()}
        connectives = {": " in ln.split("=")[0] for ln in varied.split("\n")[2:] if "=" in ln and "check" not in ln.lower()}
        mixed += len(checks) > 1 or len(connectives) > 1
    assert mixed > len(problems) // 3
    with pytest.raises(ValueError, match="wording"):
        ToyTeacher(wording="loose")
    assert ToyTeacher(error_rate=0.0, wording="varied").sample(problems[0], 0)[2]["wording"] == "varied"
