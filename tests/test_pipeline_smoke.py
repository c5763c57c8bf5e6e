"""The whole notebook pipeline under papermill on the `smoke` profile, run as `make demo` runs it (``--jobs 2``:
independent notebooks at once, each method trained and evaluated as soon as its inputs are there), then a
re-run that skips."""
import json
import subprocess
import sys

import nbformat
import pytest

from orion_utils.evaluation import METHODS
from orion_utils.jsonl import read_jsonl
from orion_utils.records import EvalSample, Refinement, StudentAttempt, TeacherTrace
from orion_utils.runner import NOTEBOOKS, main, run_pipeline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    return run_pipeline("smoke", str(tmp_path_factory.mktemp("runs") / "smoke"), jobs=2)


def test_every_notebook_executed_and_saved(smoke_run):
    for name in NOTEBOOKS:
        nb = nbformat.read(smoke_run / "notebooks" / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.get("execution_count") for c in code), f"{name}: a cell did not run"
        errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{name}: {errors[0]}"
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert injected and 'profile = "smoke"' in injected[0].source


def _printed(nb_path) -> str:
    nb = nbformat.read(nb_path, as_version=4)
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_work_started_early_is_not_done_again(smoke_run):
    """``runner.early_jobs``: sft trained beside exposure and reflection and every method evaluated as soon as
    its model was there; notebooks 04 and 07 found that work up to date (one training, one evaluation each)."""
    from orion_utils.runner import early_jobs

    early = early_jobs(METHODS, NOTEBOOKS)
    assert "04_sft:sft" in early and {f"07_evaluation:{m}" for m in METHODS} <= set(early)
    assert (smoke_run / "notebooks" / "sft_sft.log").read_text().count("[train/sft]") >= 1
    assert _printed(smoke_run / "notebooks" / "04_sft.ipynb").count("up to date: skipped") == 1  # train/sft
    assert _printed(smoke_run / "notebooks" / "07_evaluation.ipynb").count("up to date: skipped") == len(METHODS)


def test_artifacts_are_well_formed(smoke_run):
    data = smoke_run / "data"
    assert read_jsonl(data / "teacher_traces.jsonl", TeacherTrace)
    assert read_jsonl(data / "student_attempts.jsonl", StudentAttempt)
    refinements = read_jsonl(data / "refinements.jsonl", Refinement)
    assert refinements and all(r.refined_cot for r in refinements)
    manifest = json.loads((smoke_run / "manifest.json").read_text())
    assert all(s["status"] == "done" for s in manifest["stages"].values())
    assert {"prepare_data", "prepare_student", "teacher_cots", "error_exposure", "reflection", "train/sft",
            "train/orion", "edit", "tailored", "analysis"} <= set(manifest["stages"])
    assert json.loads((smoke_run / "config.json").read_text())["profile"] == "smoke"


def test_metrics_cover_every_method_and_benchmark(smoke_run):
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    assert list(metrics) == list(METHODS)
    for method, per_benchmark in metrics.items():
        assert set(per_benchmark) == {"toy_test", "toy_hard"}
        for bench, m in per_benchmark.items():
            assert 0.0 <= m["pass@1"] <= 1.0 and 0.0 <= m["greedy"] <= 1.0
            samples = read_jsonl(smoke_run / "eval" / method / f"{bench}.jsonl", EvalSample)
            assert len(samples) == m["n_problems"] * (1 + m["n_samples"])


def test_report_analysis_and_figures(smoke_run):
    report = (smoke_run / "report.md").read_text()
    for method in METHODS:
        assert f"| {method} |" in report
    for link in [line.split("](")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]:
        png = smoke_run / link
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000, link
    analysis = json.loads((smoke_run / "analysis.json").read_text())
    assert {"cot_perplexity", "loss_delta_std", "response_tokens_mean"} <= set(analysis["methods"]["orion"])


def test_rerun_skips_unchanged_stages(smoke_run):
    proc = subprocess.run([sys.executable, "-m", "orion_utils.runner", "run", "--profile", "smoke",
                           "--run-dir", str(smoke_run), "--only", "04"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    nb = nbformat.read(smoke_run / "notebooks" / "04_sft.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert printed.count("up to date: skipped") == 2  # train/sft and train/orion


def test_every_method_trains_on_the_same_questions(smoke_run):
    """training.same_questions (on by default): the question ids of every method's training set are those of
    stage 01's question set, and the report's training-set table says so."""
    from orion_utils.rundir import RunDir

    run = RunDir(smoke_run)
    question_set = json.loads(run.question_set.read_text())
    assert question_set["same_questions"] and question_set["questions"]
    ids = {m: {e["problem_id"] for p in run.training_files(m) for e in read_jsonl(p)}
           for m in ("sft", "orion", "edit", "tailored")}
    assert all(v == set(question_set["questions"]) for v in ids.values()), {m: len(v) for m, v in ids.items()}
    analysis = json.loads((smoke_run / "analysis.json").read_text())
    assert analysis["training_sets"]["same_question_ids"] is True
    assert "same question ids: **yes**" in (smoke_run / "report.md").read_text()


def test_two_processes_give_the_metrics_of_one(smoke_run, tmp_path, capfd):
    """`orion run --gpus 2` on CPU (issue #28): every generating stage on two worker processes, every training
    stage on two gloo ranks (Tailored Learning, whose accumulation of 1 two ranks cannot share, in one process,
    said), and the same `metrics.json` to the byte; the fingerprints hold no N, so at one process the two-process
    run is up to date."""
    two = tmp_path / "two"
    assert main(["run", "--profile", "smoke", "--run-dir", str(two), "--gpus", "2", "--jobs", "2"]) == 0
    # every stage uses both processes: the notebooks, and the methods' evaluations, run one at a time
    assert "the notebooks run one at a time" in capfd.readouterr().out
    out = "".join(_printed(nb) for nb in sorted((two / "notebooks").glob("*.ipynb")))  # what the notebooks showed
    assert "the methods are evaluated one at a time" in out
    assert "data-parallel over 2 worker processes" in out
    assert "ranks=2 (per rank: batch=4 accum=1; micro-batches cut between ranks)" in out
    assert "it trains in one process" in out
    assert (two / "metrics.json").read_bytes() == (smoke_run / "metrics.json").read_bytes()
    for name in ("data/student_attempts.jsonl", "data/refinements.jsonl"):
        assert (two / name).read_bytes() == (smoke_run / name).read_bytes(), name
    one_sft = json.loads((smoke_run / "models" / "sft" / "train_result.json").read_text())
    two_sft = json.loads((two / "models" / "sft" / "train_result.json").read_text())
    assert (two_sft["ranks"], two_sft["config"]["batch_size"]) == (2, 8)  # the profile's batch, not the rank's
    assert two_sft["n_tokens"] == one_sft["n_tokens"]  # no row counted twice at an epoch's end
    finished = {k: s["finished_at"] for k, s in json.loads((two / "manifest.json").read_text())["stages"].items()}
    assert main(["run", "--profile", "smoke", "--run-dir", str(two)]) == 0
    assert {k: s["finished_at"] for k, s in json.loads((two / "manifest.json").read_text())["stages"].items()} == finished
