"""The method registry (orion_utils.methods) is the one list the stages, the runner, RunDir and the plots
read: stage 04 trains exactly the evaluated methods, and a newly registered method gets its paths, its
stage-04 training set and its model with no other change."""
import json
import shutil
from types import SimpleNamespace

import pytest

from orion_utils import stages
from orion_utils.config import load_profile
from orion_utils.jsonl import read_jsonl, write_json, write_jsonl
from orion_utils.layouts import TailoredDir, TrainedDir
from orion_utils.methods import METHODS, Method, cot_methods, notebooks_run_when_evaluated
from orion_utils.records import Problem, SFTExample, TeacherTrace
from orion_utils.rundir import RunDir
from orion_utils.training_sets import join_phase_losses


def test_every_module_reads_its_method_list_from_the_registry():
    from orion_utils import evaluation, plots, runner

    assert evaluation.METHODS == tuple(METHODS) == ("base", "sft", "orion", "edit", "tailored")
    assert cot_methods("04_sft") == {"sft": "01_teacher_cots", "orion": "03_error_aware_reflection"}
    assert runner.BASELINE_NOTEBOOKS == notebooks_run_when_evaluated() == {"05_edit": "edit",
                                                                          "06_tailored_learning": "tailored"}
    assert {m: plots._colour(m) for m in METHODS} == {m.name: m.colour for m in METHODS.values()}


def test_a_method_is_trained_after_the_notebook_that_writes_its_data():
    from orion_utils.runner import NOTEBOOKS, _upstream

    assert len({m.colour for m in METHODS.values()}) == len(METHODS)
    for m in METHODS.values():
        if m.name == "base":
            assert not m.trained_in and not m.cots_from
            continue
        assert m.trained_in in NOTEBOOKS, m
        if m.cots_from:
            assert m.cots_from in _upstream(m.trained_in), m
        assert m.trained_in in _upstream("07_evaluation")


def _recorded_stages(monkeypatch, run, cfg) -> list[str]:
    """The stages ``stages.sft`` runs (``RunDir.run_stage`` replaced by a recorder: what is trained, not
    the training, is under test)."""
    seen: list = []
    monkeypatch.setattr(RunDir, "run_stage", lambda self, name, *a, **kw: seen.append(name) or {})
    stages.sft(run, cfg)
    return seen


def test_stage_04_trains_exactly_the_evaluated_methods(tmp_path, monkeypatch):
    paper = load_profile("paper")
    assert stages.sft_plan(paper) == ["sft", "orion"]  # every stage-04 method is evaluated there
    for methods, plan in ((["base", "orion", "edit"], ["orion"]), (["base", "sft"], ["sft"]), (["base", "edit"], [])):
        cfg = load_profile("paper", {"evaluation": {"methods": methods}})
        assert stages.sft_plan(cfg) == plan, methods
        smoke = load_profile("smoke", {"evaluation": {"methods": methods}})
        run = RunDir(tmp_path / "_".join(methods))
        assert _recorded_stages(monkeypatch, run, smoke) == [f"train/{m}" for m in plan]
    # a method registered for stage 04 is trained when, and only when, it is evaluated
    monkeypatch.setitem(METHODS, "shortest", Method("shortest", "s", "04_sft", "01_teacher_cots", colour="#000000"))
    assert stages.sft_plan(SimpleNamespace(evaluation=SimpleNamespace(methods=["base", "shortest"]))) == ["shortest"]
    assert stages.sft_plan(SimpleNamespace(evaluation=SimpleNamespace(methods=["sft"]))) == ["sft"]


def test_rundir_names_a_registered_methods_artifacts_from_its_entry(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run")
    write_json(run.student_info, {"model": "org/student"})
    monkeypatch.setitem(METHODS, "shortest", Method("shortest", "s", "04_sft", "01_teacher_cots", colour="#000001"))
    monkeypatch.setitem(METHODS, "rounds", Method("rounds", "r", "06_tailored_learning", folder=TailoredDir,
                                                  colour="#000002"))
    rel = run.relative
    assert type(run.trained("shortest")) is TrainedDir and isinstance(run.trained("rounds"), TailoredDir)
    assert rel(run.training_set("shortest")) == "data/training_set_shortest.jsonl"
    assert run.method_model("shortest") == str(run.path("models", "shortest", "model"))
    assert rel(run.loss_history("rounds")) == "models/rounds/loss_history.json"
    assert run.method_model("base") == "org/student"  # not trained: the student
    assert run.training_files("shortest") == [] and run.phase_loss_histories("shortest") == []
    write_jsonl(run.training_set("shortest"), [Problem("a", "q", "1")])
    assert run.training_files("shortest") == [run.training_set("shortest")]
    for r in (2, 1):  # the folder layout the entry names: its rounds' files, in round order
        write_jsonl(run.trained("rounds").round(r).train, [Problem("a", "q", "1")])
        run.trained("rounds").round(r).loss_history.write_text("[]")
    assert [rel(p) for p in run.training_files("rounds")] == [f"models/rounds/round_{r}/train.jsonl" for r in (1, 2)]
    assert [rel(p) for p in run.phase_loss_histories("rounds")] == [
        f"models/rounds/round_{r}/loss_history.json" for r in (1, 2)]
    with pytest.raises(KeyError, match="registry"):
        run.trained("shortets")


def test_phase_losses_are_joined_in_the_layouts_order(tmp_path):
    folder = RunDir(tmp_path / "run").trained("edit")
    for phase, losses in ((folder.stage2, [1.0, 0.5]), (folder.stage1, [3.0, 2.0])):
        phase.root.mkdir(parents=True)
        phase.loss_history.write_text(json.dumps([{"step": i + 1, "loss": x} for i, x in enumerate(losses)]))
    join_phase_losses(folder)
    joined = json.loads(folder.loss_history.read_text())
    assert [(h["phase"], h["step"], h["loss"]) for h in joined] == [
        ("stage1", 1, 3.0), ("stage1", 2, 2.0), ("stage2", 3, 1.0), ("stage2", 4, 0.5)]


def _shortest_correct(problems, traces, count):
    """Per question, its shortest verified teacher CoT in the student's tokens (the test's builder)."""
    best: dict = {}
    question = {p.id: p.question for p in problems}
    for t in traces:
        if t.correct and t.problem_id in question:
            n = count(question[t.problem_id], t.cot)
            if t.problem_id not in best or n < best[t.problem_id][0]:
                best[t.problem_id] = (n, t)
    return [SFTExample(p.id, p.question, best[p.id][1].cot, "teacher") for p in problems if p.id in best]


def test_a_method_with_a_set_builder_is_built_and_trained_by_stage_04(tmp_path, monkeypatch, tiny_model_dir):
    """A registry entry naming a ``builds_set`` function is all stage 04 needs: its set is made from stage 01's
    traces (its own stage ``set/<m>``) and a model is trained on it into ``models/<m>/``."""
    from orion_utils.sft import run_sft

    monkeypatch.setitem(METHODS, "shortest", Method("shortest", "SFT on the shortest correct CoT", "04_sft",
                                                    "01_teacher_cots", _shortest_correct, colour="#000003"))
    run = RunDir(tmp_path / "run")
    shutil.copytree(tiny_model_dir, run.toy_student)
    write_json(run.student_info, {"model": "models/base", "in_run_dir": True})
    write_jsonl(run.train_problems, [Problem("p1", "1 + 1?", "2"), Problem("p2", "2 + 2?", "4")])
    write_jsonl(run.teacher_traces, [
        TeacherTrace("p1", "one and one make two, as counting shows", "\\boxed{2}", "2", True, "t"),
        TeacherTrace("p1", "1+1=2", "\\boxed{2}", "2", True, "t", sample_index=1),
        TeacherTrace("p1", "1", "\\boxed{3}", "3", False, "t", sample_index=2),  # shortest, but wrong
        TeacherTrace("p2", "2+2=4", "\\boxed{4}", "4", True, "t")])
    cfg = load_profile("smoke", {"training": {"max_steps": 1, "batch_size": 1, "grad_accum": 1}})
    entries = run_sft(run, cfg.training, cfg.student, methods=["shortest"])
    kept = {e.problem_id: e.response for e in read_jsonl(run.training_set("shortest"), SFTExample)}
    assert kept == {"p1": TeacherTrace("p1", "1+1=2", "\\boxed{2}", "2", True, "t").cot,
                    "p2": TeacherTrace("p2", "2+2=4", "\\boxed{4}", "4", True, "t").cot}
    assert run.stage_info("set/shortest")["status"] == "done" and entries["shortest"]["status"] == "done"
    assert (run.trained("shortest").model / "config.json").is_file()
    assert run.training_files("shortest") == [run.training_set("shortest")]
