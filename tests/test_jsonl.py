import json
import os
import signal
import subprocess
import sys

import pytest

from orion_utils.jsonl import JsonlAppender, RecordError, read_jsonl, write_jsonl
from orion_utils.records import Problem, SFTExample, StudentAttempt, TeacherTrace


def test_round_trip(tmp_path):
    records = [Problem("p1", "What is 1+1?", "2", "toy", {"n_steps": 1}), Problem("p2", "Q", "3")]
    path = write_jsonl(tmp_path / "data" / "problems.jsonl", records)
    assert read_jsonl(path, Problem) == records


def test_loss_mask_spans_is_a_field_and_old_files_still_read(tmp_path):
    """SFTExample.loss_mask_spans is a typed field; a line written when the spans were a meta key reads
    into the field (meta keeps the rest), so a training set from before trains the same."""
    new = SFTExample("p1", "q", "2 + 2 = 5. 4", "refined", {"accepted": True}, loss_mask_spans=[[0, 9]])
    path = write_jsonl(tmp_path / "new.jsonl", [new])
    assert json.loads(path.read_text())["loss_mask_spans"] == [[0, 9]]
    assert read_jsonl(path, SFTExample) == [new]
    old = {"problem_id": "p1", "question": "q", "response": "2 + 2 = 5. 4", "source": "refined",
           "meta": {"accepted": True, "loss_mask_spans": [[0, 9]]}}
    (tmp_path / "old.jsonl").write_text(json.dumps(old) + "\n")
    assert read_jsonl(tmp_path / "old.jsonl", SFTExample) == [new]
    (tmp_path / "bad.jsonl").write_text(json.dumps({**old, "meta": {}, "loss_mask_spans": "0-9"}) + "\n")
    with pytest.raises(RecordError, match="loss_mask_spans"):
        read_jsonl(tmp_path / "bad.jsonl", SFTExample)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [Problem("p1", "q", "1")])

    def broken():
        yield Problem("p2", "q", "2")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl(path, broken())
    assert [p.id for p in read_jsonl(path, Problem)] == ["p1"]
    assert [f.name for f in tmp_path.iterdir()] == ["p.jsonl"]  # no temp file left behind


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"id": "p1", "question": "q"}', "missing field 'answer'"),
        ('{"id": "p1", "question": "q", "answer": 5}', "field 'answer'"),
        ('{"id": "p1", "question": "q", "answer": "5", "colour": 1}', "unknown field 'colour'"),
        ('{"id": "p1", "question": "q", "answer": "5"', "not valid JSON"),
    ],
)
def test_bad_row_names_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "p0", "question": "q", "answer": "1"}\n' + line + "\n")
    with pytest.raises(RecordError) as err:
        read_jsonl(path, Problem)
    assert f"{path}:2" in str(err.value) and message in str(err.value)


def test_bool_is_not_an_int_and_optional_accepts_none(tmp_path):
    path = tmp_path / "a.jsonl"
    row = dict(problem_id="p", sample_index=True, response="r", answer=None, correct=False, model="m")
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(RecordError, match="sample_index"):
        read_jsonl(path, StudentAttempt)
    row["sample_index"] = 0
    path.write_text(json.dumps(row) + "\n")
    assert read_jsonl(path, StudentAttempt)[0].answer is None


def test_appender_survives_kill_with_torn_tail(tmp_path):
    path = tmp_path / "attempts.jsonl"
    script = f"""
import os, sys
sys.path.insert(0, {os.getcwd()!r})
from orion_utils.jsonl import JsonlAppender
from orion_utils.records import Problem
with JsonlAppender({str(path)!r}) as out:
    for i in range(3):
        out.append(Problem(f"p{{i}}", "q", "1"))
    out._file.write('{{"id": "torn')
    out._file.flush()
    os.kill(os.getpid(), 9)
"""
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == -signal.SIGKILL
    assert [p.id for p in read_jsonl(path, Problem, tolerate_torn_tail=True)] == ["p0", "p1", "p2"]
    with JsonlAppender(path) as out:  # reopening repairs the torn tail before appending
        out.append(Problem("p3", "q", "1"))
    assert [p.id for p in read_jsonl(path, Problem)] == ["p0", "p1", "p2", "p3"]


def test_teacher_trace_cot_format():
    t = TeacherTrace("p", "step 1", "so \\boxed{2}", "2", True, "toy")
    assert t.cot == "<think>\nstep 1\n</think>\n\nso \\boxed{2}"


def test_as_problem_accepts_records_and_common_dict_spellings():
    from orion_utils.records import Problem, as_problem

    p = Problem(id="a", question="q?", answer="1")
    assert as_problem(p) is p
    assert as_problem({"problem": "What is 2+2?", "answer": 4, "unique_id": "x/1", "level": 2}) == Problem(
        id="x/1", question="What is 2+2?", answer="4", meta={"level": 2}
    )
    made = as_problem({"question": "What is 2+2?", "gold": "4"})
    assert made.id.startswith("q-") and made.id == as_problem({"question": "What is 2+2?", "answer": "4"}).id
    with pytest.raises(TypeError, match="a problem must be"):
        as_problem("What is 2+2?")
    with pytest.raises(ValueError, match="non-empty text 'question'"):
        as_problem({"answer": "4"})
