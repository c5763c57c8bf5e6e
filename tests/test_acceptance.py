"""Stage 03's acceptance checks (orion_utils.acceptance) on short known texts: a verified copy of the
teacher's CoT is not a reflection, nor is an echo of the prompt or a quote left uncorrected; a cut-off
candidate is counted; the toy reflectors' rewrites pass; masking comes from the quoted wrong step.
(Real long CoTs: tests/test_acceptance_long.py.)"""
from __future__ import annotations

import pytest

from orion_utils.acceptance import (
    REASONS,
    Unfinished,
    acceptance_line,
    acceptance_summary,
    diff_regions,
    prompt_scaffolding,
    reflection_evidence,
    teacher_coverage,
    wrong_markers,
    wrong_step_span,
)
from orion_utils.records import Problem, StudentAttempt
from orion_utils.reflection import ReflectionConfig, RuleReflector, refine
from orion_utils.teachers.toy import ToyTeacher
from orion_utils.toy.domain import generate_problems

QUESTION = "Natalia sold 48 clips in April and half as many in May. How many clips did she sell in all?"
TEACHER = ("<think>\nIn May she sold 48 / 2 = 24 clips.\nIn all she sold 48 + 24 = 72 clips.\n</think>\n\n"
           "She sold \\boxed{72} clips.")
WRONG = "In May she sold 48 * 2 = 96 clips.\nIn all she sold 48 + 96 = 144 clips.\nThe answer is \\boxed{144}."
REFLECTS = ("<think>\nIn May she sold half as many as in April.\nIn May she sold 48 * 2 = 96 clips.\n"
            "Wait, that is wrong: half as many means dividing, so 48 / 2 = 24 clips.\n"
            "In all she sold 48 + 24 = 72 clips.\n</think>\n\nShe sold \\boxed{72} clips.")


class Fixed:
    """A reflector proposing given texts (the candidates under test), as ``reflection.Reflector``."""

    name = "llm"

    def __init__(self, texts):
        self.texts = texts

    def propose(self, items, m, seed=None):
        return [list(self.texts) for _ in items]


def _refine(texts, **cfg):
    p = Problem("q", QUESTION, "72")
    errors = {"q": [StudentAttempt("q", 0, WRONG, "144", False, "s")]}
    return refine([p], {"q": TEACHER}, errors, Fixed(texts), ReflectionConfig(m=len(texts), selection="first", **cfg))[0]


def test_the_statistics_on_known_texts():
    markers = wrong_markers(WRONG, TEACHER, QUESTION)
    assert "96" in markers.numbers and "144" in markers.numbers and "48" not in markers.numbers
    assert "48*2=96" in markers.equations
    assert reflection_evidence(TEACHER, markers).distance is None  # the teacher's CoT quotes nothing of it
    ev = reflection_evidence(REFLECTS, markers)
    assert ev.kind == "line" and ev.distance is not None and ev.distance <= 5
    start, end = wrong_step_span(REFLECTS, markers, 200)
    assert REFLECTS[start:end] == "In May she sold 48 * 2 = 96 clips."
    assert ev.correction is not None and ev.correction <= 70  # "... so 48 / 2 = 24": the right value, 24
    assert markers.fixes == {"24", "72"}  # what the teacher has where the attempt differs
    assert teacher_coverage(TEACHER, TEACHER, QUESTION) == 1.0
    assert teacher_coverage("She sold \\boxed{72} clips.", TEACHER, QUESTION) == pytest.approx(1 / 2)  # {24, 72}
    assert diff_regions(TEACHER, TEACHER).regions == [] and diff_regions(TEACHER, TEACHER).added_chars(TEACHER) == 0
    added = diff_regions(REFLECTS, TEACHER)
    assert [REFLECTS[a:b] for a, b in added.regions] == [
        "half as many as in April.\nIn May she sold 48 * 2 = 96 clips.\nWait, that is wrong: half as many means "
        "dividing, so "]  # the teacher's own "48 / 2 = 24 clips." after it is kept, not added


def test_a_verified_copy_is_rejected_and_a_reflection_accepted():
    r = _refine([TEACHER, REFLECTS])
    assert r.accepted and r.refined_cot == REFLECTS and r.n_accepted == 1
    copy, reflection = r.meta["candidates"]
    assert copy["verified"] and copy["rejected"] == "copy" and copy["added_chars"] == 0
    assert reflection["rejected"] is None and reflection["marker"] == "line"
    assert [REFLECTS[a:b] for a, b in r.wrong_step_spans] == ["In May she sold 48 * 2 = 96 clips."]


ECHO = ("## Your earlier attempt (wrong)\n" + WRONG + "\n\nWait, 96 is wrong: half is 48 / 2 = 24.\n" + TEACHER)
UNCORRECTED = TEACHER.replace("In all", "Earlier I wrote 48 * 2 = 96 clips. Checking it again, I see no mistake.\nIn all")


def test_each_check_rejects_its_case_and_can_be_switched_off():
    truncated = "Wait, not 96: it is half. \\boxed{72}"  # reflects, verifies, keeps 1 of {24, 72}
    wrong_answer = REFLECTS.replace("\\boxed{72}", "\\boxed{70}")
    near_copy = TEACHER.replace("</think>", "Wait, not 96.\n</think>")  # adds 11 characters
    cut = Unfinished(REFLECTS)  # what a reflector proposes for a generation cut off at max_new_tokens
    r = _refine([truncated, wrong_answer, near_copy, ECHO, UNCORRECTED, cut], min_coverage=0.6)
    assert [c["rejected"] for c in r.meta["candidates"]] == [
        "low coverage", "unverified", "copy", "echo", "uncorrected", "unfinished"]
    assert r.meta["candidates"][3]["echo"] == "heading: your earlier attempt wrong"
    assert r.meta["candidates"][5]["verified"] and not r.meta["candidates"][5]["finished"]
    assert not r.accepted and r.refined_cot == TEACHER and r.meta["reason"] == "no candidate accepted"
    off = _refine([TEACHER, ECHO, UNCORRECTED], reflect_window=None, min_coverage=0.0, min_added_chars=0,
                  reject_echoes=False)
    assert off.n_accepted == 3 and off.wrong_step_spans == []  # a copy quotes no wrong step: nothing to mask


def test_echo_detection_is_read_from_the_prompt():
    """The headings and instruction sentences an echo repeats come from the prompt template itself."""
    from orion_utils.reflection import REFLECTION_PROMPT

    scaffold = prompt_scaffolding(REFLECTION_PROMPT)
    assert ("your", "earlier", "attempt", "wrong") in scaffold.headings and ("problem",) in scaffold.headings
    assert ("keep", "the", "expert's", "correct", "reasoning", "at", "the") in scaffold.ngrams
    other = prompt_scaffolding("# Task\n{question}\n### Student draft\n{wrong_attempt}\nPlease fix the draft "
                               "and explain the wrong step in detail.")
    assert other.headings == (("task",), ("student", "draft")) and len(other.ngrams) == 5  # 11 words
    # the prompt pasted back: rejected whatever the markup of its headings
    echo = REFLECTION_PROMPT.format(question=QUESTION, teacher_cot=TEACHER, wrong_attempt=WRONG).replace("## ", "**")
    r = _refine([echo + "\n\\boxed{72}"])
    assert r.meta["candidates"][0]["rejected"] == "echo"


def test_toy_rule_reflector_passes_the_default_checks_and_is_masked():
    teacher = ToyTeacher(error_rate=0.0, seed=0)
    problems = generate_problems(12)
    traces = {t.problem_id: t for t in teacher.collect(problems, 1)}
    errors = {p.id: [StudentAttempt(p.id, 0, teacher.corrupt(p, traces[p.id]).cot, None, False, "toy")]
              for p in problems}
    refs = refine(problems, {p: t.cot for p, t in traces.items()}, errors, RuleReflector(0),
                  ReflectionConfig(m=2, selection="first"))
    s = acceptance_summary(refs)
    assert s["candidates"] == 24 and s["accepted_candidates"] == 24 and s["chosen"] == 12 and s["masked"] == 12
    for r in refs:
        (a, b), = r.wrong_step_spans
        assert "=" in r.refined_cot[a:b] and r.refined_cot[a:b].replace(" ", "") in r.wrong_attempt.replace(" ", "")
    copies = refine(problems, {p: t.cot for p, t in traces.items()}, errors, Fixed([traces[problems[0].id].cot]),
                    ReflectionConfig(m=1, selection="first"))
    assert acceptance_summary(copies)["rejected"]["copy"] >= 1


def test_summary_counts_reasons_and_never_claims_masking_it_did_not_do():
    r = _refine([TEACHER, REFLECTS, REFLECTS.replace("72", "70")])
    s = acceptance_summary([r])
    assert s["rejected"] == {"unfinished": 0, "unverified": 1, "echo": 0, "other problem": 0, "low coverage": 0, "copy": 1,
                             "no reflection": 0, "uncorrected": 0, "judge": 0}
    assert set(s["rejected"]) == set(REASONS) and s["masked"] == 1
    assert "masked in 1 of 1" in acceptance_line(s)
    off = acceptance_summary([r], mask_wrong_step=False)
    assert off["masked"] == 0 and "nothing masked" in acceptance_line(off)
    unmasked = _refine([TEACHER], reflect_window=None, min_coverage=0.0, min_added_chars=0)
    assert "masked in 0 of 1" in acceptance_line(acceptance_summary([unmasked]))


def test_report_section_counts_rejections_masking_and_lengths(tmp_path):
    from orion_utils.jsonl import write_jsonl
    from orion_utils.report import acceptance_section
    from orion_utils.rundir import RunDir

    run = RunDir(tmp_path)
    assert acceptance_section(run) == []  # stage 03 did not run
    run.refinements.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(run.refinements, [_refine([TEACHER, REFLECTS, REFLECTS.replace("72", "70")])])
    text = "\n".join(acceptance_section(run))
    assert "Of 3 candidates, 1 passed every check" in text
    assert ("unfinished **0**, unverified **1**, echo **0**, other problem **0**, low coverage **0**, copy **1**, no reflection **0**, "
            "uncorrected **0**") in text
    assert "in **1 of 1** chosen rewrites" in text
    assert f"{len(REFLECTS)} characters long on average, their teacher CoTs {len(TEACHER)}" in text


def _stage_03_inputs(tmp_path, model_dir, n: int):
    """A run directory holding what stage 03 reads: ``n`` toy questions, the toy teacher's CoTs, one wrong
    attempt per question (the teacher's CoT corrupted) and ``model_dir`` as the base student."""
    from orion_utils.jsonl import write_json, write_jsonl
    from orion_utils.records import SFTExample
    from orion_utils.rundir import RunDir

    teacher = ToyTeacher(error_rate=0.0, seed=0)
    problems = generate_problems(n)
    traces = {t.problem_id: t for t in teacher.collect(problems, 1)}
    run = RunDir(tmp_path / "run")
    write_json(run.data("student.json"), {"model": model_dir, "in_run_dir": False})
    write_jsonl(run.data("train_problems.jsonl"), problems)
    write_jsonl(run.training_set("sft"), [SFTExample(p.id, p.question, traces[p.id].cot, "teacher", {}) for p in problems])
    write_jsonl(run.data("error_attempts.jsonl"),
                [StudentAttempt(p.id, 0, teacher.corrupt(p, traces[p.id]).cot, None, False, "base") for p in problems])
    return run, problems


def test_stage_03_line_counts_rejections_and_masking(tiny_model_dir, tmp_path, capsys):
    """run_reflection with the toy `rule` reflector: the stage line and the stage's record carry the counts."""
    from orion_utils.config import StudentConfig
    from orion_utils.jsonl import read_jsonl
    from orion_utils.records import SFTExample
    from orion_utils.reflection import run_reflection

    run, _ = _stage_03_inputs(tmp_path, tiny_model_dir, 4)
    stats = run_reflection(run, ReflectionConfig(reflector="rule", m=2, selection="first"), StudentConfig(model="toy"))
    line = next(x for x in capsys.readouterr().out.splitlines() if "passed every check" in x)
    assert line.startswith("[reflection] 8 candidates, 8 passed every check") and "masked in 4 of 4" in line
    assert stats["acceptance"]["rejected"] == {r: 0 for r in REASONS}
    orion = read_jsonl(run.training_set("orion"), SFTExample)
    assert all(ex.loss_mask_spans and "loss_mask_spans" not in ex.meta for ex in orion)  # a field, not meta
    off = run_reflection(run, ReflectionConfig(reflector="rule", m=2, selection="first", mask_wrong_step=False),
                         StudentConfig(model="toy"))
    assert off["acceptance"]["masked"] == 0 and "nothing masked" in capsys.readouterr().out
    assert all(ex.loss_mask_spans == [] for ex in read_jsonl(run.training_set("orion"), SFTExample))


def test_a_compared_reflector_is_reported_and_never_trained_on(tiny_model_dir, tmp_path):
    """``reflection.compare``: a second reflector on the same wrong attempts; its refinements go to their own
    file and the report, the run's refinements and ORION's training set stay as without it."""
    from orion_utils.config import StudentConfig
    from orion_utils.jsonl import read_jsonl
    from orion_utils.knobs import ConfigError
    from orion_utils.records import Refinement
    from orion_utils.reflection import run_reflection
    from orion_utils.report import comparison_section

    run, problems = _stage_03_inputs(tmp_path, tiny_model_dir, 3)
    cfg = dict(reflector="student", m=2, selection="first", max_new_tokens=16)
    alone = run_reflection(run, ReflectionConfig(**cfg), StudentConfig(model="toy"))
    assert "compare" not in alone and comparison_section(run) == []
    own, trained = run.refinements.read_text(), run.training_set("orion").read_text()
    both = run_reflection(run, ReflectionConfig(**cfg, compare="rule"), StudentConfig(model="toy"))
    assert run.refinements.read_text() == own and run.training_set("orion").read_text() == trained
    compared = read_jsonl(run.reflector_comparison, Refinement)
    assert [r.problem_id for r in compared] == [p.id for p in problems] and {r.reflector for r in compared} == {"rule"}
    assert [r.wrong_attempt for r in compared] == [r.wrong_attempt for r in read_jsonl(run.refinements, Refinement)]
    info = both["compare"]
    assert info["reflector"] == "rule" and info["acceptance_rate"] == 1.0 and info["mechanism"]["n"] == 3
    text = "\n".join(comparison_section(run))
    assert "The `rule` reflector beside it" in text and "acceptance rate **100.0%**" in text
    assert f"the run's reflector: {100 * both['acceptance_rate']:.1f}%" in text and "Accepted (" in text
    with pytest.raises(ConfigError, match="compare"):
        ReflectionConfig(reflector="rule", compare="rule")
    with pytest.raises(ValueError, match="compare"):  # auto resolves to the compared reflector
        run_reflection(run, ReflectionConfig(compare="student"), StudentConfig(model="toy"))


def test_the_student_reflector_is_compared_only_on_the_toy_teacher():
    from orion_utils.config import TeacherConfig, cross_section_problems

    problems = cross_section_problems({"reflection": ReflectionConfig(reflector="llm", compare="student"),
                                       "teacher": TeacherConfig(kind="dataset")})
    assert any(p.startswith("reflection.compare: 'student'") for p in problems)
    assert not cross_section_problems({"reflection": ReflectionConfig(reflector="llm", compare="student"),
                                       "teacher": TeacherConfig(kind="toy")})


def test_report_lists_reflection_per_seed():
    from orion_utils.report import reflection_seed_lines

    rows = [{"run": f"seed_{k}", "reflector": "student", "acceptance_rate": 0.1 * k,
             "mechanism": {"n": k, "refined": 4.0, "teacher": 3.8} if k else {"n": 0, "refined": None, "teacher": None},
             "compare": {"reflector": "llm", "acceptance_rate": 0.03, "mechanism": {"n": 1, "refined": 5.0, "teacher": 3.1}}}
            for k in range(3)]
    text = "\n".join(reflection_seed_lines(rows))
    assert "| seed_1 | student | 10.0% | 4.000 vs 3.800 (n = 1) | llm | 3.0% | 5.000 vs 3.100 (n = 1) |" in text
    assert "| seed_0 | student | 0.0% | n = 0 |" in text
    assert reflection_seed_lines(rows[:1]) == []  # one seed: the report's reflection line says it
