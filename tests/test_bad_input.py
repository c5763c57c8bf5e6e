"""Bad input gives one clear error and leaves nothing half-written."""
import subprocess
import sys

import pytest

from orion_utils.config import ConfigError, DataConfig, StudentConfig
from orion_utils.exposure import ExposureConfig, run_error_exposure
from orion_utils.prepare import run_prepare_data, run_prepare_student
from orion_utils.rundir import RunDir, StageInputMissing


def test_missing_model_path_is_named(tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        run_prepare_student(run, StudentConfig(model=str(tmp_path / "does-not-exist")))
    assert not run.data("student.json").exists()
    assert run.stage_info("prepare_student")["status"] == "failed"


def test_empty_training_set_is_refused(tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"n_train: 0 is out of range; must be >= 1"):  # where the profile loads
        DataConfig(n_train=0)
    cfg = DataConfig(benchmarks=["toy_test"], toy_test_size=2)
    cfg.n_train = 0  # changed after the check: the stage still refuses it
    with pytest.raises(ValueError, match="training set is empty"):
        run_prepare_data(run, cfg)
    assert not run.data("train_problems.jsonl").exists()
    assert not run.path("data", "benchmarks").exists()


def test_stage_before_its_inputs_names_the_notebook_to_run(tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(StageInputMissing, match="01_teacher_cots"):
        run_error_exposure(run, ExposureConfig())
    assert not run.data("student_attempts.jsonl").exists()


def test_runner_names_the_failing_notebook_and_cell(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "orion_utils.runner", "run", "--profile", "smoke", "--run-dir", str(tmp_path / "r"),
         "--only", "00", "--set", f"student.model={tmp_path / 'missing-model'}"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "00_setup_and_data.ipynb failed in cell" in proc.stderr and "missing-model" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_runner_rejects_unknown_profile_key(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "orion_utils.runner", "run", "--profile", "smoke",
                           "--run-dir", str(tmp_path / "r"), "--set", "exposure.kk=3"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "unknown key 'exposure.kk'" in proc.stderr


def test_runner_reports_every_bad_knob_before_any_notebook(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "orion_utils.runner", "run", "--profile", "smoke",
                           "--run-dir", str(tmp_path / "r"), "--set", "reflection.selection=perplexty",
                           "--set", "evaluation.workers=0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "reflection.selection: 'perplexty' is not one of 'perplexity', 'shortest', 'first'" in proc.stderr
    assert "evaluation.workers: 0 is out of range; must be >= 1" in proc.stderr
    assert not (tmp_path / "r").exists()  # notebook 00 never started
