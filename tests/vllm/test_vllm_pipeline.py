"""The whole notebook pipeline on the `smoke` profile with `generation.backend: vllm`: every stage that
generates with the student through the generation backend (error exposure, the toy student reflector of
stage 03, Tailored Learning's exam, evaluation) runs on vLLM's real engine (its CPU build), the toy student
in float32.
Run by `make test-vllm` in .venv-vllm."""
import json
import re

import nbformat
import pytest

from orion_utils.evaluation import METHODS
from orion_utils.jsonl import read_jsonl
from orion_utils.records import EvalSample
from orion_utils.runner import NOTEBOOKS, run_pipeline

pytestmark = pytest.mark.slow

# the stages that generate with the student, and so must say which backend ran
GENERATING = {"02_error_exposure", "03_error_aware_reflection", "06_tailored_learning", "07_evaluation"}


@pytest.fixture(scope="module")
def vllm_run(tmp_path_factory):
    # Every generating stage runs; to keep CI short (each engine starts in 30-60 s on two cores) the
    # evaluation covers base and tailored (the other methods' models are evaluated by the same code;
    # EDIT's stage does not generate) and Tailored Learning sits one exam round (later rounds run the
    # same code on the next student).
    return run_pipeline("smoke", str(tmp_path_factory.mktemp("runs") / "smoke_vllm"),
                        overrides={"generation": {"backend": "vllm"},
                                   "evaluation": {"methods": ["base", "tailored"]},
                                   "tailored": {"rounds": 1}})


def _printed(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_every_notebook_ran_and_generation_was_vllm(vllm_run):
    seen = set()
    ran = sorted(p.stem for p in (vllm_run / "notebooks").glob("*.ipynb"))
    assert ran == [name for name in NOTEBOOKS if name != "05_edit"]  # EDIT is not among the evaluated methods
    for name in ran:
        nb = nbformat.read(vllm_run / "notebooks" / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{name}: {errors[0]}"
        assert all(c.get("execution_count") for c in code), f"{name}: a cell did not run"
        lines = re.findall(r"^\[generation\] .*$", _printed(nb), re.MULTILINE)
        if lines:
            seen.add(name)
        for line in lines:
            assert line.startswith("[generation] backend=vllm device=cpu dtype=float32 "), f"{name}: {line}"
    assert seen >= GENERATING


def test_results_are_complete(vllm_run):
    metrics = json.loads((vllm_run / "metrics.json").read_text())
    assert list(metrics) == [m for m in METHODS if m in ("base", "tailored")]
    for method, per_benchmark in metrics.items():
        for bench, m in per_benchmark.items():
            samples = read_jsonl(vllm_run / "eval" / method / f"{bench}.jsonl", EvalSample)
            assert len(samples) == m["n_problems"] * (1 + m["n_samples"])
            assert all(s.n_tokens > 0 for s in samples)
    manifest = json.loads((vllm_run / "manifest.json").read_text())
    assert all(s["status"] == "done" for s in manifest["stages"].values())
