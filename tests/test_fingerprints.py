"""Derived stage fingerprints (``stage_specs.fingerprint``): what each stage hashes for the resume rule.

Each stage is called as a notebook calls it (``stages.<stage>(run, cfg)``) on a small run directory,
with ``RunDir.run_stage`` replaced by a recorder that keeps the params and input digests the real
``run_stage`` would compare and stops there (the work itself is not what is tested). A change upstream
(the base student's model, a field of a section the stage reads, a prompt it sends) must change that
fingerprint; a change elsewhere (a section it does not read, a declared result-neutral setting) must not.
The end-to-end check runs stages 00-02 through ``orion run`` twice.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orion_utils import stage_specs, stages
from orion_utils.config import load_profile
from orion_utils.jsonl import write_json, write_jsonl
from orion_utils.records import Problem
from orion_utils.rundir import RunDir, stable_hash


class _Recorded(Exception):
    pass


@pytest.fixture
def record(monkeypatch):
    """Replace ``RunDir.run_stage``: keep (params hash, input digests) of the first stage called."""
    seen: list = []

    def run_stage(self, name, params, inputs, outputs, work, **kw):
        digests = self._digests([p for p in map(Path, inputs) if p.exists()])
        missing = sorted(str(p) for p in map(Path, inputs) if not p.exists())
        seen.append((name, stable_hash(params), digests, missing, params))
        raise _Recorded

    monkeypatch.setattr(RunDir, "run_stage", run_stage)
    return seen


def _small_run(root: Path) -> RunDir:
    """A run directory with a toy-like base student in the run (``models/base``) and one benchmark."""
    run = RunDir(root)
    model = root / "models" / "base"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"weights v1")
    (model / "config.json").write_text("{}")
    write_json(run.student_info, {"model": "models/base", "in_run_dir": True, "kind": "toy"})
    write_jsonl(run.benchmark("toy_test"), [Problem("q1", "1 + 1?", "2")])
    write_jsonl(run.train_problems, [Problem("t1", "2 + 2?", "4")])
    write_json(run.metrics, {})
    return run


def _fingerprint(record, run, stage, overrides=None):
    # stage 04 trains only evaluated methods (stages.sft_plan): there, one of them
    sets = {"evaluation": {"methods": ["base", "sft"] if stage == "sft" else ["base"], "workers": 1}}
    for section, values in (overrides or {}).items():
        sets[section] = {**sets.get(section, {}), **values}
    cfg = load_profile("smoke", sets)
    record.clear()
    with pytest.raises(_Recorded):
        getattr(stages, stage)(run, cfg)
    _name, param_hash, digests, _missing, params = record[0]
    return param_hash, digests, params


# stage → (changes upstream, changes elsewhere). A change is ("set", {section: {key: value}}),
# ("model",) or ("prompt", a name of stage_specs.prompt_texts()). The smoke profile's toy teacher is sent no
# prompt and its toy student reflects by rule (tests/test_stage_table.py: the prompted settings).
CASES = {
    "prepare_data": ([("set", {"data": {"n_train": 7}}), ("set", {"toy_domain": {"max_steps": 3}})],
                     [("set", {"training": {"max_steps": 9}}), ("set", {"toy_pretrain": {"max_steps": 7}})]),
    "prepare_student": ([("set", {"toy_pretrain": {"max_steps": 40}}), ("set", {"data": {"seed": 3}}),
                         ("set", {"toy_student": {"num_layers": 1}})],
                        [("set", {"data": {"n_train": 7}}), ("set", {"exposure": {"k": 3}})]),
    "teacher_cots": ([("set", {"teacher": {"error_rate": 0.3}}), ("set", {"training": {"max_seq_len": 100}})],
                     [("set", {"training": {"learning_rate": 0.5}}), ("set", {"exposure": {"k": 3}}),
                      # the data section builds only a dataset teacher; the questions are stage 00's file, an input
                      ("set", {"data": {"n_train": 7}}),
                      ("prompt", "reflection"), ("prompt", "collect")]),
    "error_exposure": ([("model",), ("set", {"exposure": {"k": 3}}), ("set", {"generation": {"batch_size": 3}}),
                        ("set", {"student": {"system_prompt": "Be brief."}})],
                       [("set", {"exposure": {"chunk_questions": 5}}), ("set", {"reflection": {"m": 3}}),
                        ("set", {"training": {"learning_rate": 0.5}}), ("prompt", "collect")]),
    "reflection": ([("model",), ("set", {"reflection": {"m": 3}}), ("set", {"generation": {"batch_size": 3}}),
                    ("prompt", "toy_rules")],
                   [("set", {"exposure": {"k": 3}}), ("set", {"training": {"max_steps": 9}}),
                    ("set", {"reflection": {"chunk_questions": 5}}),
                    # the teacher and its prompts count only with reflection.judge on (tests/test_rewrite_judge.py)
                    ("set", {"teacher": {"error_rate": 0.3}}), ("prompt", "rewrite_judge"),
                    ("prompt", "reflection")]),  # the toy student's reflector writes by rule
    "sft": ([("model",), ("set", {"training": {"max_steps": 9}}), ("set", {"student": {"system_prompt": "x"}})],
            [("set", {"reflection": {"m": 3}}), ("set", {"generation": {"batch_size": 3}}),
             ("set", {"training": {"report_to": "tensorboard"}})]),
    "edit": ([("model",), ("set", {"edit": {"max_steps": 9}}), ("set", {"teacher": {"error_rate": 0.3}})],
             [("set", {"reflection": {"m": 3}}), ("set", {"exposure": {"k": 3}}),
              ("set", {"edit": {"report_to": "tensorboard"}}), ("prompt", "rectify"), ("prompt", "judge")]),
    "tailored": ([("model",), ("set", {"tailored": {"rounds": 3}}), ("set", {"generation": {"batch_size": 3}}),
                  ("prompt", "toy_rules")],
                 [("set", {"reflection": {"m": 3}}), ("set", {"training": {"max_steps": 9}}),
                  ("set", {"tailored": {"exam_chunk_questions": 5}}),
                  ("set", {"tailored": {"report_to": "tensorboard"}}), ("prompt", "tailor")]),
    "evaluation": ([("model",), ("set", {"evaluation": {"n_samples": 3}}), ("set", {"generation": {"batch_size": 3}})],
                   [("set", {"evaluation": {"workers": 2}}), ("set", {"evaluation": {"chunk_questions": 5}}),
                    ("set", {"training": {"max_steps": 9}}), ("prompt", "reflection")]),
    "analysis": ([("model",), ("set", {"analysis": {"max_cots": 3}})],
                 [("set", {"training": {"max_steps": 9}}), ("set", {"exposure": {"k": 3}}),
                  ("prompt", "judge")]),  # the judge is off
}


def edit_prompt(monkeypatch, name: str) -> None:
    """Edit one prompt where it is declared (the ``PROMPTS`` dict of its module), as a developer would."""
    for texts in (stage_specs.TEACHER_PROMPTS, stage_specs.STUDENT_PROMPTS, stage_specs.TOY_RULES):
        if name in texts:
            text = texts[name]
            monkeypatch.setitem(texts, name, text + (({"edited": "1"},) if isinstance(text, tuple) else "edited"))
            return
    raise KeyError(name)


def _changed(record, run, stage, change, monkeypatch) -> bool:
    before = _fingerprint(record, run, stage)[:2]
    overrides = None
    if change[0] == "set":
        overrides = change[1]
    elif change[0] == "model":
        (run.root / "models" / "base" / "model.safetensors").write_bytes(b"weights v2")
    else:
        edit_prompt(monkeypatch, change[1])
    after = _fingerprint(record, run, stage, overrides)[:2]
    if change[0] == "model":
        (run.root / "models" / "base" / "model.safetensors").write_bytes(b"weights v1")
    elif change[0] == "prompt":
        monkeypatch.undo()
    return before != after


@pytest.mark.parametrize("stage", list(CASES))
def test_a_change_upstream_reruns_the_stage_and_one_elsewhere_does_not(stage, tmp_path, record, monkeypatch):
    run = _small_run(tmp_path / "run")
    upstream, elsewhere = CASES[stage]
    for change in upstream:
        mp = pytest.MonkeyPatch()
        try:
            assert _changed(record, run, stage, change, mp), f"{stage}: {change} left its fingerprint unchanged"
        finally:
            mp.undo()
    for change in elsewhere:
        mp = pytest.MonkeyPatch()
        try:
            assert not _changed(record, run, stage, change, mp), f"{stage}: {change} changed its fingerprint"
        finally:
            mp.undo()


def test_every_stage_is_covered_and_its_params_are_its_sections():
    assert set(CASES) == set(stages.READS) == set(stage_specs.READS)
    cfg = load_profile("smoke")
    for stage, names in stage_specs.READS.items():
        given = {n: getattr(cfg, n) for n in names}
        params, _ = stage_specs.fingerprint(None, stage, *given.values())
        assert set(params) == set(names) | {"prompts"}, stage
        sent = stage_specs.SENDS[stage](given) if stage in stage_specs.SENDS else ()
        assert set(params["prompts"]) == set(sent) <= set(stage_specs.prompt_texts()), stage


def test_a_section_added_to_reads_is_fingerprinted(tmp_path, monkeypatch):
    run = _small_run(tmp_path / "run")
    cfg = load_profile("smoke")
    monkeypatch.setitem(stage_specs.READS, "sft", stage_specs.READS["sft"] + ("reflection",))
    one, models = stage_specs.fingerprint(run, "sft", cfg.training, cfg.student, cfg.reflection)
    cfg2 = load_profile("smoke", {"reflection": {"m": 3}})
    two, _ = stage_specs.fingerprint(run, "sft", cfg2.training, cfg2.student, cfg2.reflection)
    assert stable_hash(one) != stable_hash(two)
    assert models == [run.student_info, run.root / "models" / "base"]


def test_a_student_outside_the_run_is_its_reference(tmp_path):
    run = RunDir(tmp_path / "run")
    write_json(run.student_info, {"model": "org/some-model", "in_run_dir": False, "kind": "pretrained"})
    assert run.student_inputs() == [run.student_info]


def _orion_run(run_dir: Path, *sets: str) -> dict:
    cmd = [sys.executable, "-m", "orion_utils.runner", "run", "--profile", "smoke", "--run-dir", str(run_dir),
           "--only", "00", "--only", "01", "--only", "02", "--set", "toy_pretrain.n_problems=40", *sets]
    subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ})
    return json.loads((run_dir / "manifest.json").read_text())["stages"]


@pytest.mark.slow  # `orion run` twice, notebooks 00-02 through papermill: the toy student pre-trained twice
def test_retrained_student_reruns_error_exposure(tmp_path):
    """The issue's scenario: a changed toy_pretrain re-trains the student and exposure follows it."""
    run_dir = tmp_path / "R"
    first = _orion_run(run_dir, "--set", "toy_pretrain.max_steps=2")
    second = _orion_run(run_dir, "--set", "toy_pretrain.max_steps=3")
    assert second["prepare_student"]["finished_at"] >= first["prepare_student"]["finished_at"]
    assert second["prepare_student"]["param_hash"] != first["prepare_student"]["param_hash"]
    assert second["teacher_cots"] == first["teacher_cots"]  # the toy teacher does not read the student
    assert second["error_exposure"]["inputs"] != first["error_exposure"]["inputs"]
    assert "models/base" in second["error_exposure"]["inputs"]
