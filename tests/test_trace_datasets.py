"""Trace-dataset teachers: schema fixtures (s1K-1.1, OpenR1-Math-220k, LIMO), the five real
DeepSeek-R1 traces, the hub path (faked), ``DatasetTeacher`` and malformed rows."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from orion_utils.jsonl import RecordError
from orion_utils.records import Problem, TeacherTrace
from orion_utils.teachers.base import Teacher
from orion_utils.teachers.datasets import (
    DatasetTeacher,
    MissingTraceWarning,
    last_boxed,
    load_trace_dataset,
    load_trace_entries,
    normalize_question,
    split_reasoning_solution,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "traces"
SHARED_TRACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "traces"
R1_FILE = SHARED_TRACES / "deepseek_r1_math_samples.json"
needs_shared = pytest.mark.skipif(not R1_FILE.is_file(), reason="shared R1 traces not present")


def rows_of(name: str) -> list[dict]:
    path = next((FIXTURES / name).iterdir())
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- schema fixtures

def test_s1k_fixture():
    problems, traces = load_trace_dataset("s1k-1.1", data_dir=FIXTURES / "s1k-1.1")
    assert [p.id for p in problems] == ["s1k-1.1/0", "s1k-1.1/1", "s1k-1.1/2"]
    assert [p.answer for p in problems] == ["2", "128", "55"]  # last \boxed{} of solution, else the solution
    assert [p.meta["answer_from"] for p in problems] == ["boxed", "solution", "boxed"]
    assert problems[0].meta["cot_type"] == "math" and problems[0].source == "s1k-1.1"
    rows = rows_of("s1k-1.1")
    for t, row in zip(traces, rows):
        assert t.thinking == row["deepseek_thinking_trajectory"].strip()
        assert t.solution == row["deepseek_attempt"].strip()
        assert t.teacher == "dataset:s1k-1.1" and t.meta["model"] == "deepseek-r1"
        assert t.meta["dataset_grade"] == row["deepseek_grade"]
    assert [t.correct for t in traces] == [True, True, False]
    assert [t.answer for t in traces][2] == "50"
    assert traces[0].cot.startswith("<think>\nOkay, 2^3 = 8")


def test_openr1_fixture_every_generation_is_a_trace():
    problems, traces = load_trace_dataset("openr1-math-220k", data_dir=FIXTURES / "openr1-math-220k")
    assert [p.id for p in problems] == ["openr1-math-220k/00000000-0000-4000-8000-000000000001",
                                        "openr1-math-220k/00000000-0000-4000-8000-000000000002"]
    assert [p.answer for p in problems] == ["42", "4"]
    assert [(t.problem_id[-1], t.sample_index) for t in traces] == [
        ("1", 0), ("1", 1), ("2", 0), ("2", 1), ("2", 2)]
    assert [t.correct for t in traces] == [True, True, False, True, False]
    # our grades agree with the dataset's own math-verify flags
    assert [t.meta["math_verify"] for t in traces] == [t.correct for t in traces]
    assert traces[0].thinking == "Six sevens: 7+7+7+7+7+7 = 42."
    assert traces[0].solution == "$6 \\times 7 = \\boxed{42}$"
    truncated = traces[4]  # "<think>" without "</think>", cut off by the length limit: all thinking
    assert truncated.solution == "" and truncated.thinking.startswith("Let me think")
    assert truncated.meta["finish_reason"] == "length" and truncated.answer is None
    assert problems[1].meta["source"] == "cn_contest" and problems[1].meta["correctness_count"] == 1


def test_limo_fixture_splits_reasoning_and_final_answer():
    problems, traces = load_trace_dataset("limo", data_dir=FIXTURES / "limo")
    assert [(p.id, p.answer) for p in problems] == [("limo/0", "720"), ("limo/1", "9")]
    rows = rows_of("limo")
    assert [t.meta["split_rule"] for t in traces] == ["final_answer_marker", "last_boxed_paragraph"]
    assert traces[0].solution == "**Final Answer**\n\\boxed{720}"
    assert traces[1].solution == "So the answer is $\\boxed{9}$."
    for t, row in zip(traces, rows):  # nothing lost: thinking + solution is the original text
        assert f"{t.thinking}\n\n{t.solution}" == row["solution"].strip()
    assert [t.correct for t in traces] == [True, True]


def test_parquet_file_in_a_hub_snapshot_layout(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = rows_of("openr1-math-220k")
    path = tmp_path / "data" / "train-00000-of-00001.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), path)
    problems, traces = load_trace_dataset("openr1-math-220k", data_dir=tmp_path, limit=1)
    assert [p.answer for p in problems] == ["42"] and [t.correct for t in traces] == [True, True]


def test_limit_and_data_dir_as_file():
    problems, traces = load_trace_dataset("s1k-1.1", data_dir=FIXTURES / "s1k-1.1" / "train.jsonl", limit=2)
    assert len(problems) == 2 and len(traces) == 2


# --------------------------------------------------------------------------- the real R1 traces

@needs_shared
def test_real_deepseek_r1_traces():
    raw = json.loads(R1_FILE.read_text(encoding="utf-8"))
    problems, traces = load_trace_dataset("r1-samples", data_dir=SHARED_TRACES)
    assert len(problems) == len(traces) == 5
    assert [p.answer for p in problems] == ["0", "98", "4", "17", "6"]
    for p, t, row in zip(problems, traces, raw):
        assert p.question == row["problem"] and t.problem_id == p.id
        assert t.thinking == row["message_thinking"].strip() and len(t.thinking) > 1000
        assert t.solution == row["message_content"].strip()
        assert "<think>" not in t.cot[len("<think>"):] and "\\boxed{" in t.solution
        assert t.answer == row["gtruth_answer"]
        assert t.correct is True  # every reply's final \boxed{} matches its ground truth
        assert t.meta["model"] == "deepseek-r1"


@needs_shared
def test_real_traces_as_a_teacher_by_question_text():
    teacher = DatasetTeacher.from_dataset("r1-samples", data_dir=SHARED_TRACES)
    raw = json.loads(R1_FILE.read_text(encoding="utf-8"))
    asked = Problem(id="math/evaluate-ceiling", question="  " + raw[3]["problem"].upper() + "\n", answer="17")
    (trace,) = teacher.collect([asked])
    assert trace.problem_id == "math/evaluate-ceiling" and trace.correct
    assert trace.meta["dataset_problem_id"] == "r1-samples/3"


# --------------------------------------------------------------------------- DatasetTeacher

def test_dataset_teacher_protocol_ids_n_and_missing():
    teacher = DatasetTeacher.from_dataset("openr1-math-220k", data_dir=FIXTURES / "openr1-math-220k")
    assert isinstance(teacher, Teacher) and teacher.name == "dataset:openr1-math-220k" and len(teacher) == 2
    problems, _ = load_trace_dataset("openr1-math-220k", data_dir=FIXTURES / "openr1-math-220k")
    one = teacher.collect(problems, n=1)
    assert [(t.problem_id, t.sample_index) for t in one] == [(problems[0].id, 0), (problems[1].id, 0)]
    assert all(isinstance(t, TeacherTrace) and t.teacher == "dataset:openr1-math-220k" for t in one)
    assert [len(teacher.collect([p], n=5)) for p in problems] == [2, 3]  # up to n, as many as there are
    assert [t.sample_index for t in teacher.collect([problems[1]], n=2)] == [0, 1]

    stranger = Problem(id="x/1", question="What is the capital of France?", answer="Paris")
    with pytest.warns(MissingTraceWarning, match=r"no trace for 1 of 3 problems"):
        got = teacher.collect([problems[0], stranger, problems[1]])
    assert len(got) == 2 and teacher.last_missing == ["x/1"]
    with pytest.raises(ValueError):
        teacher.collect(problems, n=0)


def test_dataset_teacher_verified_first_and_regrading_against_the_asked_gold():
    teacher = DatasetTeacher.from_dataset("openr1-math-220k", data_dir=FIXTURES / "openr1-math-220k",
                                          order="verified_first")
    problems, _ = load_trace_dataset("openr1-math-220k", data_dir=FIXTURES / "openr1-math-220k")
    (first,) = teacher.collect([problems[1]], n=1)
    assert first.sample_index == 1 and first.correct
    other_gold = Problem(id=problems[1].id, question=problems[1].question, answer="7")
    (regraded,) = teacher.collect([other_gold], n=1)
    assert regraded.sample_index == 1 and not regraded.correct  # graded against the asked gold


def test_dataset_teacher_from_traces():
    problems, traces = load_trace_dataset("s1k-1.1", data_dir=FIXTURES / "s1k-1.1")
    teacher = DatasetTeacher.from_traces(problems, traces, name="dataset:s1k-1.1", order="verified_first")
    got = teacher.collect(problems, n=3)
    assert [t.correct for t in got] == [True, True, False]
    assert [t.thinking for t in got] == [t.thinking for t in traces]


# --------------------------------------------------------------------------- helpers

def test_split_reasoning_solution_rules():
    assert split_reasoning_solution("<think>a</think>b") == ("a", "b", "think_tags")
    assert split_reasoning_solution("x\n\n**Final Answer:**\n\\boxed{1}") == (
        "x", "**Final Answer:**\n\\boxed{1}", "final_answer_marker")
    assert split_reasoning_solution("a\n\nb $\\boxed{2}$ c") == (
        "a", "b $\\boxed{2}$ c", "last_boxed_paragraph")
    assert split_reasoning_solution("just $\\boxed{3}$") == ("", "just $\\boxed{3}$", "no_split")


def test_last_boxed_and_normalize_question():
    assert last_boxed("a \\boxed{1} then \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{\\{1,2\\}}") == "\\{1,2\\}"
    assert last_boxed("no box") is None and last_boxed("\\boxed{unclosed") is None
    assert normalize_question(" What  is\n2+2? ") == normalize_question("what is 2+2?")


def test_last_boxed_reads_a_gold_as_the_grader_reads_an_answer():
    """A reference solution's boxes are read by the grader's box reader: a list of boxes is one
    list answer, an unclosed box after a closed one is passed over, ``\\boxed 5`` is a box."""
    from orion_utils.grading import extract_answer

    reference = "The roots are $\\boxed{2}$ and $\\boxed{3}$."
    assert last_boxed(reference) == extract_answer(reference) == "2, 3"
    assert last_boxed("so \\boxed{7}, and \\boxed{unclosed") == "7"
    assert last_boxed("The answer is \\boxed 5.") == "5"


# --------------------------------------------------------------------------- the hub path, faked

def test_hub_path_streams_when_limited(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, streaming=False, **kwargs):
        calls.append((path, name, split, streaming))
        return iter(rows_of("openr1-math-220k"))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    entries = load_trace_entries("openr1-math-220k", limit=1)
    assert [e.problem.answer for e in entries] == ["42"]
    entries = load_trace_entries("OpenR1", split="train")
    assert len(entries) == 2
    assert calls == [("open-r1/OpenR1-Math-220k", "default", "train", True),
                     ("open-r1/OpenR1-Math-220k", "default", "train", False)]


def test_hub_ids_of_the_other_sets(monkeypatch):
    import datasets

    calls = []
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda path, name=None, split=None, streaming=False: calls.append((path, name)) or [])
    load_trace_entries("s1k-1.1")
    load_trace_entries("limo")
    assert calls == [("simplescaling/s1K-1.1", None), ("GAIR/LIMO", None)]
    with pytest.raises(ValueError, match="local only"):
        load_trace_entries("r1-samples")


# --------------------------------------------------------------------------- errors

def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError) as err:
        load_trace_dataset("gsm8k-traces", data_dir=FIXTURES)
    for name in ("s1k-1.1", "openr1-math-220k", "limo", "r1-samples"):
        assert name in str(err.value)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_trace_entries("limo", data_dir=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no .jsonl"):
        load_trace_entries("limo", data_dir=tmp_path)


@pytest.mark.parametrize("name,mutate,needle", [
    ("s1k-1.1", lambda r: r.pop("deepseek_attempt"), "missing field 'deepseek_attempt'"),
    ("s1k-1.1", lambda r: r.update(question=None), "missing field 'question'"),
    ("s1k-1.1", lambda r: r.update(deepseek_thinking_trajectory=3), "'deepseek_thinking_trajectory'"),
    ("s1k-1.1", lambda r: r.update(cot_type=["math"]), "'cot_type'"),
    ("openr1-math-220k", lambda r: r.update(generations="<think>x</think>y"),
     "'generations' should be a list"),
    ("openr1-math-220k", lambda r: r.update(generations=["ok", 5]), "'generations'[1]"),
    ("openr1-math-220k", lambda r: r.update(correctness_math_verify=["yes"]), "'correctness_math_verify'[0]"),
    ("openr1-math-220k", lambda r: r.pop("answer"), "missing field 'answer'"),
    ("limo", lambda r: r.pop("answer"), "missing field 'answer'"),
    ("limo", lambda r: r.update(solution=""), "'solution'"),
])
def test_malformed_rows_name_file_line_and_field(tmp_path, name, mutate, needle):
    rows = rows_of(name)
    mutate(rows[1])
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(RecordError) as err:
        load_trace_entries(name, data_dir=tmp_path)
    assert f"{path}:2" in str(err.value) and needle in str(err.value)


def test_invalid_json_line_and_json_array_errors(tmp_path):
    good = json.dumps(rows_of("limo")[0])
    path = tmp_path / "limo.jsonl"
    path.write_text(good + "\n{broken\n", encoding="utf-8")
    with pytest.raises(RecordError, match=r"limo\.jsonl:2: not valid JSON"):
        load_trace_entries("limo", data_dir=tmp_path)

    bad = tmp_path / "r1" / "deepseek_r1_math_samples.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps({"problem": "not a list"}), encoding="utf-8")
    with pytest.raises(RecordError, match="JSON array"):
        load_trace_entries("r1-samples", data_dir=bad.parent)
    no_content = [{"problem": "Q?", "gtruth_answer": "1", "message_thinking": "t"}]
    bad.write_text(json.dumps(no_content), encoding="utf-8")
    needle = r"deepseek_r1_math_samples\.json\[0\]: missing field 'message_content'"
    with pytest.raises(RecordError, match=needle):
        load_trace_entries("r1-samples", data_dir=bad.parent)


def test_duplicate_ids_are_rejected(tmp_path):
    rows = rows_of("openr1-math-220k")
    rows[1]["uuid"] = rows[0]["uuid"]
    write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(RecordError, match="duplicate problem id"):
        load_trace_entries("openr1-math-220k", data_dir=tmp_path)
