"""On the smoke profile, a changed knob or prompt re-runs exactly the stages that use it: the pipeline is run
through the facade (``stages.<name>(run, cfg)``, as the notebooks call it), then again after one change, and
the run directory's manifest says which stages ran again (a stage that is up to date keeps its entry)."""
from __future__ import annotations


import pytest

from orion_utils import stages
from orion_utils.config import load_profile
from orion_utils.rundir import RunDir
from test_fingerprints import edit_prompt

# the stage-04 methods only (EDIT and Tailored Learning have their own tests); smaller pre-training
BASE = {"evaluation": {"methods": ["base", "sft", "orion"], "workers": 1},
        "toy_pretrain": {"n_problems": 40, "max_steps": 4}}
PIPELINE = ("prepare_data", "prepare_student", "teacher_cots", "error_exposure", "reflection", "sft", "evaluation",
            "analysis")


def _run_all(run: RunDir, overrides: dict) -> dict:
    cfg = load_profile("smoke", {section: {**BASE.get(section, {}), **overrides.get(section, {})}
                                 for section in {*BASE, *overrides}})
    for stage in PIPELINE:
        getattr(stages, stage)(run, cfg)
    return run.manifest()["stages"]


def _rerun(before: dict, after: dict) -> set[str]:
    return {name for name in after if before.get(name) != after[name]}


@pytest.mark.slow  # the smoke pipeline three times in this process (~1 min on 2 cores)
def test_a_change_reruns_exactly_the_stages_that_use_it(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run")
    first = _run_all(run, {})
    assert {"prepare_data", "teacher_cots", "reflection", "train/sft", "evaluation/orion", "analysis"} <= set(first)
    # bookkeeping knobs and a prompt no stage sends under these settings (the toy student reflects by rule)
    edit_prompt(monkeypatch, "reflection")
    edit_prompt(monkeypatch, "judge")
    second = _run_all(run, {"training": {"logging_steps": 1, "progress_bar": True},
                            "evaluation": {"chunk_questions": 5}})
    assert _rerun(first, second) == set()
    # a knob of the analysis only
    third = _run_all(run, {"analysis": {"bootstrap_resamples": 50}})
    assert _rerun(second, third) == {"analysis"}
