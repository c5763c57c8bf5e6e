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


def test_artifact_names_keep_the_on_disk_layout(tmp_path):
    run = RunDir(tmp_path / "run")
    rel = run.relative
    assert rel(run.config_file) == "config.json" and rel(run.manifest_path) == "manifest.json"
    assert rel(run.student_info) == "data/student.json"
    assert rel(run.train_problems) == "data/train_problems.jsonl"
    assert rel(run.benchmark("gsm8k")) == "data/benchmarks/gsm8k.jsonl"
    assert rel(run.teacher_traces) == "data/teacher_traces.jsonl"
    assert rel(run.teacher_sft_set) == "data/training_set_sft.jsonl" == rel(run.training_set("sft"))
    assert rel(run.student_attempts) == "data/student_attempts.jsonl"
    assert rel(run.student_attempts_partial) == "data/student_attempts.partial.jsonl"
    assert rel(run.error_attempts) == "data/error_attempts.jsonl"
    assert rel(run.pass_rates) == "data/pass_rates.json"
    assert rel(run.refinements) == "data/refinements.jsonl"
    assert rel(run.orion_sft_set) == "data/training_set_orion.jsonl"
    assert rel(run.training_set("edit")) == "data/training_set_edit.jsonl"
    assert rel(run.toy_student) == "models/base" and rel(run.primed_model) == "models/exposure_primed"
    assert rel(run.trained("sft").model) == "models/sft/model" == rel(run.method_model("sft"))
    assert rel(run.loss_history("orion")) == "models/orion/loss_history.json"
    assert rel(run.trained("sft").train_result) == "models/sft/train_result.json"
    assert rel(run.trained("sft").checkpoint_fingerprint) == "models/sft/checkpoints/fingerprint.json"
    edit = run.edit()
    assert rel(edit.pairs) == "models/edit/pairs.jsonl"
    assert rel(edit.stage1_examples) == "models/edit/stage1_examples.jsonl"
    assert rel(edit.stage1.model) == "models/edit/stage1/model"
    assert rel(edit.stage2.pairs_with_ops) == "models/edit/stage2/pairs_with_ops.jsonl"
    rnd = run.tailored().round(2)
    assert [rel(p) for p in (rnd.exam, rnd.teacher, rnd.train, rnd.result)] == [
        f"models/tailored/round_2/{n}" for n in ("exam.jsonl", "teacher.jsonl", "train.jsonl", "result.json")]
    assert rel(run.tailored().rounds_summary) == "models/tailored/rounds.json"
    assert rel(rnd.exam_partial) == "models/tailored/round_2/exam.partial.jsonl"
    assert rel(run.refinements_partial("llm", "selected")) == "data/refinements_llm_selected.partial.jsonl"
    assert rel(run.eval_file("orion", "gsm8k")) == "eval/orion/gsm8k.jsonl"
    assert rel(run.eval_summary("orion")) == "eval/orion/summary.json"
    assert rel(run.metrics) == "metrics.json" and rel(run.analysis_file) == "analysis.json"
    assert rel(run.report) == "report.md" and rel(run.figure("loss_curves")) == "figures/loss_curves.png"


def test_training_files_are_where_each_method_trained(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.training_files("sft") == [] and run.training_files("base") == []
    write_jsonl(run.teacher_sft_set, [Problem("a", "q", "1")])
    assert run.training_files("sft") == [run.teacher_sft_set]
    for r in (10, 2, 1):  # rounds in round order, not name order
        write_jsonl(run.tailored().round(r).train, [Problem("a", "q", "1")])
    assert run.training_files("tailored") == [run.tailored().round(r).train for r in (1, 2, 10)]


def test_read_or_make_reads_back_what_an_earlier_attempt_wrote(tmp_path):
    from orion_utils.rundir import read_or_make

    made = []

    def make():
        made.append(1)
        return [Problem("a", "q", "1")]

    path = tmp_path / "step.jsonl"
    assert read_or_make(path, Problem, make) == read_or_make(path, Problem, make) == [Problem("a", "q", "1")]
    assert len(made) == 1


def _record_stages(root: str, prefix: str, n: int) -> None:
    run = RunDir(root)
    for i in range(n):
        run._update_manifest(f"{prefix}/{i}", {"status": "done", "i": i})


def test_stages_finishing_at_once_in_separate_processes_all_reach_the_manifest(tmp_path):
    """Notebooks of one run may run at once (`orion run --jobs 2`): each process's read-modify-write
    of manifest.json holds the run's lock, so no stage's entry is lost."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_record_stages, args=(str(tmp_path), p, 40)) for p in ("a", "b", "c")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    stages = RunDir(tmp_path).manifest()["stages"]
    assert sorted(stages) == sorted(f"{p}/{i}" for p in "abc" for i in range(40))


def test_read_or_make_keeps_one_record_and_models_under_the_same_rule(tmp_path):
    """A step's result (one record, ``.json``) and a model folder are read back like records; a result
    that can no longer serve (``usable`` says no) is made again."""
    from orion_utils.layouts import is_saved_model
    from orion_utils.rundir import SavedModel, read_or_make

    made = []

    def make_one():
        made.append("one")
        return Problem("a", "q", str(len(made)))

    path = tmp_path / "result.json"
    assert read_or_make(path, Problem, make_one) == Problem("a", "q", "1")
    assert json.loads(path.read_text()) == {"id": "a", "question": "q", "answer": "1", "source": "", "meta": {}}
    assert read_or_make(path, Problem, make_one) == Problem("a", "q", "1") and made == ["one"]
    assert read_or_make(path, Problem, make_one, usable=lambda p: p.answer != "1") == Problem("a", "q", "2")
    assert read_or_make(path, Problem, make_one) == Problem("a", "q", "2")

    def save_model():
        made.append("model")
        (tmp_path / "model").mkdir()
        (tmp_path / "model" / "config.json").write_text("{}")

    assert read_or_make(tmp_path / "model", SavedModel, save_model) == tmp_path / "model"
    assert read_or_make(tmp_path / "model", SavedModel, save_model) == tmp_path / "model"
    assert made.count("model") == 1 and is_saved_model(tmp_path / "model")
