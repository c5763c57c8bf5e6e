import json

import pytest

from orion_utils.jsonl import write_jsonl
from orion_utils.records import Problem
from orion_utils.rundir import RunDir, StageInputMissing


def _stage(run, calls, params=None, force=False, fail=False):
    inp, out = run.data("in.jsonl"), run.data("out.jsonl")

    def work():
        calls.append(1)
        write_jsonl(out, [Problem("p", "q", "1")])
        if fail:
            raise RuntimeError("boom")
        return {"backend": "test"}

    return run.run_stage("demo", params or {"k": 1}, [inp], [out], work, force=force, stage_hint="the demo stage")


def test_stage_skips_when_unchanged_and_reruns_on_change(tmp_path):
    run, calls = RunDir(tmp_path / "run"), []
    write_jsonl(run.data("in.jsonl"), [Problem("a", "q", "1")])
    _stage(run, calls)
    _stage(run, calls)
    assert len(calls) == 1
    _stage(run, calls, params={"k": 2})  # parameters changed
    assert len(calls) == 2
    write_jsonl(run.data("in.jsonl"), [Problem("b", "q", "1")])  # input content changed
    _stage(run, calls, params={"k": 2})
    assert len(calls) == 3
    _stage(run, calls, params={"k": 2}, force=True)
    assert len(calls) == 4
    entry = run.stage_info("demo")
    assert entry["status"] == "done" and entry["backend"] == "test"
    assert "torch" in entry["package_versions"] and entry["wall_seconds"] >= 0
    assert list(entry["inputs"]) == ["data/in.jsonl"]


def test_failed_stage_removes_its_outputs_and_is_marked(tmp_path):
    run, calls = RunDir(tmp_path / "run"), []
    write_jsonl(run.data("in.jsonl"), [Problem("a", "q", "1")])
    with pytest.raises(RuntimeError):
        _stage(run, calls, fail=True)
    assert not run.data("out.jsonl").exists()
    assert run.stage_info("demo")["status"] == "failed"
    _stage(run, calls)  # a failed stage is not "up to date"
    assert len(calls) == 2


def test_missing_input_names_the_stage_to_run(tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(StageInputMissing, match="the demo stage"):
        _stage(run, [])
    assert not run.data("out.jsonl").exists()


def test_student_model_resolution(tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(StageInputMissing, match="00_setup_and_data"):
        run.student_model()
    run.data("student.json").parent.mkdir(parents=True, exist_ok=True)
    run.data("student.json").write_text(json.dumps({"model": "models/base", "in_run_dir": True}))
    assert run.student_model() == str(run.root / "models/base")
    assert run.method_model("sft").endswith("models/sft/model")


def test_progress_is_resumed_only_under_the_same_settings(tmp_path):
    """A crashed attempt's progress (scratch) is kept for a re-run with the same parameters and
    inputs, and removed when they changed or on force: never resumed from other settings."""
    run = RunDir(tmp_path / "run")
    write_jsonl(run.data("in.jsonl"), [Problem("a", "q", "1")])
    progress, out = run.path("scratch", "rounds"), run.data("out.jsonl")
    seen = []

    def stage(params, crash=False, force=False):
        def work():
            seen.append(sorted(p.name for p in progress.glob("*")) if progress.exists() else [])
            progress.mkdir(parents=True, exist_ok=True)
            (progress / f"round_{len(seen)}").write_text(json.dumps(params))
            if crash:
                raise KeyboardInterrupt
            write_jsonl(out, [Problem("p", "q", "1")])

        run.run_stage("rounds", params, [run.data("in.jsonl")], [out], work, force=force, scratch=[progress])

    with pytest.raises(KeyboardInterrupt):
        stage({"lam": 0.5}, crash=True)
    assert run.stage_info("rounds")["status"] == "failed"
    stage({"lam": 0.5})  # same settings: resumes from round_1
    assert seen[-1] == ["round_1"]
    stage({"lam": 0.0})  # changed: starts clean
    assert seen[-1] == []
    stage({"lam": 0.0}, force=True)  # forced: starts clean too
    assert seen[-1] == []
    with pytest.raises(KeyboardInterrupt):
        stage({"lam": 0.1}, crash=True)
    write_jsonl(run.data("in.jsonl"), [Problem("b", "q", "1")])  # the input changed after the crash
    stage({"lam": 0.1})
    assert seen[-1] == []
