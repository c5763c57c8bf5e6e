"""Several backbones in one profile: `students: [...]` runs the pipeline once per student, each in its own
run directory, and one combined report puts them in one table."""
import json

import pytest
from test_analysis import fake_scorer, make_fake_run

from orion_utils import analysis as A
from orion_utils.config import ConfigError, load_profile, student_runs
from orion_utils.report import write_students_report
from orion_utils.rundir import RunDir
from orion_utils.runner import run_pipeline


def test_student_entries_are_named_and_validated():
    runs = student_runs(["HuggingFaceTB/SmolLM2-135M-Instruct", {"name": "toy-small", "toy_student": {"hidden_size": 64}}])
    assert runs == [("SmolLM2-135M-Instruct", {"student": {"model": "HuggingFaceTB/SmolLM2-135M-Instruct"},
                                               "students": []}),
                    ("toy-small", {"toy_student": {"hidden_size": 64}, "students": []})]
    with pytest.raises(ConfigError, match="two entries are named"):
        student_runs(["a/x", "b/x"])
    with pytest.raises(ConfigError, match="not a section"):
        student_runs([{"name": "y", "hidden_size": 64}])
    with pytest.raises(ConfigError, match=r"students\[0\]"):
        load_profile("smoke", {"students": [3]})
    profile = load_profile("smoke", {"students": ["toy"]})
    assert profile.students == ["toy"] and profile.to_dict()["students"] == ["toy"]
    assert load_profile("smoke").students == [] and "students" not in load_profile("smoke").to_dict()


@pytest.mark.slow  # notebook 00 through papermill once per student: two toy students pre-trained
def test_runner_runs_each_student_in_its_own_run_directory(tmp_path):
    students = [{"name": "toy-a", "toy_student": {"hidden_size": 32, "intermediate_size": 64}},
                {"name": "toy-b", "toy_student": {"hidden_size": 48, "intermediate_size": 96}}]
    run_dir = run_pipeline("smoke", str(tmp_path / "run"), overrides={"students": students}, only=["00"])
    for name, hidden in (("toy-a", 32), ("toy-b", 48)):
        sub = RunDir(run_dir).student_dir(name)
        config = json.loads((sub / "config.json").read_text())
        assert config["toy_student"]["hidden_size"] == hidden and "students" not in config
        assert json.loads((sub / "models" / "base" / "config.json").read_text())["hidden_size"] == hidden
        assert (sub / "notebooks" / "00_setup_and_data.ipynb").is_file()
    assert json.loads((run_dir / "config.json").read_text())["students"] == students
    assert not (run_dir / "report.md").exists()  # nothing evaluated yet: no combined report


def test_combined_report_puts_every_student_in_one_table(tmp_path):
    a = make_fake_run(tmp_path / "students" / "a")
    b = make_fake_run(tmp_path / "students" / "b", student={"model": "some/other-student", "kind": "hub"})
    A.analyse_run(a, scorer=fake_scorer, tokenizer=None)  # b: metrics.json only
    report = write_students_report(RunDir(tmp_path), {"a": a.root, "b": b.root}).read_text()
    assert "| student | method | toy_test |" in report
    assert "| a | orion | 87.5 [" in report and "| b | orion | 87.5 |" in report  # a analysed: its interval
    assert report.count("| a |") == report.count("| b |") == 3
    assert "`b` (`some/other-student`): headline — not analysed" in report
    assert "[its report](students/a/report.md)" in report
