"""The same questions for every CoT-trained method: stage 01 decides the question set once, every
method's builder keeps to it, and the report's training-set table says what each trained on.

Real components throughout: the toy domain's questions and programmatic teacher, the tiny saved
student's tokenizer and chat template (conftest), the real stage functions and table."""
import json
import statistics

import pytest

from orion_utils import analysis as A
from orion_utils.collection import (QuestionSetTeacher, TokenCounter, fit_to_question_set, question_set_problems,
                                    read_question_set, run_collection, stage01_traces)
from orion_utils.config import DataConfig, StudentConfig, TeacherConfig, TrainingConfig
from orion_utils.jsonl import read_jsonl, write_json, write_jsonl
from orion_utils.prepare import run_prepare_data
from orion_utils.records import Problem, SFTExample
from orion_utils.report import training_set_section
from orion_utils.rundir import RunDir
from orion_utils.teachers.toy import ToyTeacher
from orion_utils.training_sets import LEFT_OUT_BY_TRAINING, NOT_IN_METHOD


def _run_with_questions(root, student_dir, n_train=16) -> RunDir:
    run = RunDir(root)
    run_prepare_data(run, DataConfig(n_train=n_train, toy_test_size=4, toy_hard_size=4))
    write_json(run.student_info, {"model": student_dir, "in_run_dir": False})
    return run


def _cut_between(run, student_dir) -> int:
    """A max_seq_len that some verified teacher CoTs exceed and others fit."""
    count = TokenCounter(student_dir)
    problems = {p.id: p for p in read_jsonl(run.train_problems, Problem)}
    traces = ToyTeacher(error_rate=0.25, seed=0).collect(list(problems.values()))
    return int(statistics.median(count(problems[t.problem_id].question, t.cot) for t in traces))


def _write_method_sets(run: RunDir, student_dir: str, same: bool) -> None:
    """Each method's training set as its builder makes it from stage 01's outputs."""
    sft = read_jsonl(run.teacher_sft_set, SFTExample)
    # ORION: one example per SFT question; every other rewrite is much longer than its teacher CoT
    orion = [SFTExample(e.problem_id, e.question, e.response + (" Wait, let me re-check." * 200 if i % 2 else ""),
                        "refined") for i, e in enumerate(sft)]
    write_jsonl(run.training_set("orion"), orion)
    problems = read_jsonl(run.train_problems, Problem)
    kept = question_set_problems(run, problems)  # EDIT and Tailored Learning's one-line hook
    # EDIT's stage-1 set: the verified teacher CoTs of its questions
    write_jsonl(run.edit().stage1_examples, [e for e in sft if e.problem_id in {p.id for p in kept}]
                if same else [SFTExample(p.id, p.question, "x", "teacher") for p in kept])
    # Tailored Learning's round 1: a teacher whose every rationale is wrong, kept to the question set
    teacher = ToyTeacher(error_rate=1.0, seed=1)
    if read_question_set(run) is not None:
        teacher = QuestionSetTeacher(teacher, stage01_traces(run))
    traces = teacher.collect(kept, n=2)
    question_of = {p.id: p.question for p in kept}
    round1 = run.tailored().round(1)
    round1.root.mkdir(parents=True, exist_ok=True)
    write_jsonl(round1.train, [SFTExample(t.problem_id, question_of[t.problem_id], t.cot, "teacher")
                               for t in traces if t.correct])
    write_json(run.metrics, {m: {} for m in ("base", "sft", "orion", "edit", "tailored")})


def test_question_set_is_decided_once_and_every_method_keeps_to_it(tmp_path, tiny_model_dir):
    run = _run_with_questions(tmp_path / "run", tiny_model_dir)
    limit = _cut_between(run, tiny_model_dir)
    training = TrainingConfig(overlong="drop", max_seq_len=limit)
    run_collection(run, TeacherConfig(kind="toy", error_rate=0.25), DataConfig(n_train=16), training, StudentConfig())

    qs = json.loads(run.question_set.read_text())
    count = TokenCounter(tiny_model_dir)
    sft = read_jsonl(run.teacher_sft_set, SFTExample)
    assert qs["same_questions"] and qs["questions"] == [e.problem_id for e in sft]
    assert all(count(e.question, e.response) <= limit for e in sft)  # every kept CoT is trained on whole
    reasons = set(qs["left_out"].values())
    assert "teacher CoT longer than max_seq_len" in reasons  # the rule did leave questions out
    assert set(qs["questions"]).isdisjoint(qs["left_out"]) and len(qs["questions"]) + len(qs["left_out"]) == 16

    _write_method_sets(run, tiny_model_dir, same=True)
    write_json(run.config_file, {"training": {"max_seq_len": limit, "overlong": "drop"},
                                 "tailored": {"max_seq_len": limit, "overlong": "drop"},
                                 "student": {"prompt_template": "{question}"}})
    # stage 04's rule for ORION: a too-long rewrite is replaced by the teacher CoT, the question stays
    orion, stats = fit_to_question_set(read_jsonl(run.training_set("orion"), SFTExample), sft, qs, count)
    assert stats["replaced_by_teacher_cot"] == len(sft) // 2 and [e.problem_id for e in orion] == qs["questions"]

    table = A.training_set_table(run, ["base", "sft", "orion", "edit", "tailored"], count.tokenizer)
    assert table["same_question_ids"] is True
    assert {m: r["question_ids"] for m, r in table["methods"].items()} == {
        m: sorted(qs["questions"]) for m in ("sft", "orion", "edit", "tailored")}
    assert table["methods"]["orion"]["left_out"] == {
        "rewrites longer than max_seq_len (the teacher CoT trained instead)": len(sft) // 2}
    assert table["methods"]["sft"]["tokens"] == sum(count(e.question, e.response) for e in sft)
    text = "\n".join(training_set_section({"training_sets": table}))
    assert "same question ids: **yes**" in text and "teacher CoT longer than max_seq_len" in text


def test_with_the_option_off_the_sets_may_differ_and_the_table_says_why(tmp_path, tiny_model_dir):
    run = _run_with_questions(tmp_path / "run", tiny_model_dir)
    limit = _cut_between(run, tiny_model_dir)
    training = TrainingConfig(overlong="drop", max_seq_len=limit, same_questions=False)
    run_collection(run, TeacherConfig(kind="toy", error_rate=0.25), DataConfig(n_train=16), training, StudentConfig())
    assert read_question_set(run) is None
    assert json.loads(run.question_set.read_text())["same_questions"] is False
    _write_method_sets(run, tiny_model_dir, same=False)
    write_json(run.config_file, {"training": {"max_seq_len": limit, "overlong": "drop"},
                                 "tailored": {"max_seq_len": 100_000, "overlong": "drop"},
                                 "student": {"prompt_template": "{question}"}})
    table = A.training_set_table(run, ["sft", "orion", "edit", "tailored"], TokenCounter(tiny_model_dir).tokenizer)
    assert table["same_question_ids"] is False
    sft = table["methods"]["sft"]
    assert sft["left_out"][LEFT_OUT_BY_TRAINING] > 0  # the teacher CoTs training drops
    assert sft["left_out"][NOT_IN_METHOD] > 0  # ... whose questions the other methods keep
    assert "same question ids: **no**" in "\n".join(training_set_section({"training_sets": table}))


@pytest.mark.parametrize("overlong", ["truncate", "drop"])
def test_collection_stage_reruns_when_the_rule_changes(tmp_path, tiny_model_dir, overlong):
    run = _run_with_questions(tmp_path / "run", tiny_model_dir, n_train=6)
    teacher, data = TeacherConfig(kind="toy"), DataConfig(n_train=6)
    first = run_collection(run, teacher, data, TrainingConfig(overlong=overlong, max_seq_len=100_000))
    again = run_collection(run, teacher, data, TrainingConfig(overlong=overlong, max_seq_len=100_000))
    assert again["finished_at"] == first["finished_at"]  # up to date: skipped
    changed = run_collection(run, teacher, data, TrainingConfig(overlong=overlong, max_seq_len=100_000,
                                                               same_questions=False))
    assert changed["param_hash"] != first["param_hash"]
