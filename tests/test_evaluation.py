"""Stage 07 with several methods evaluated at once in worker processes (``evaluation.workers``)."""
import shutil

import pytest

from orion_utils.config import DataConfig, GenerationConfig, StudentConfig
from orion_utils.evaluation import EvaluationConfig, run_evaluation
from orion_utils.jsonl import write_json
from orion_utils.prepare import run_prepare_data
from orion_utils.rundir import RunDir


def _run_with_two_models(root, tiny_model_dir) -> RunDir:
    from conftest import build_tiny_model_dir

    run = RunDir(root)
    run_prepare_data(run, DataConfig(train_source="toy", n_train=4, toy_test_size=6, toy_hard_size=5))
    write_json(run.student_info, {"model": tiny_model_dir, "in_run_dir": False, "kind": "pretrained"})
    build_tiny_model_dir(run.trained("sft").model, seed=1)  # a second, different model
    return run


def test_workers_give_the_same_samples_as_one_at_a_time(tmp_path, tiny_model_dir, capsys):
    cfg = dict(methods=["base", "sft"], n_samples=2, temperature=1.0, top_p=1.0, max_new_tokens=12, seed=3)
    gen, student = GenerationConfig(backend="transformers", batch_size=4), StudentConfig(model="unused")
    one = _run_with_two_models(tmp_path / "one", tiny_model_dir)
    two = _run_with_two_models(tmp_path / "two", tiny_model_dir)
    metrics_one = run_evaluation(one, EvaluationConfig(**cfg, workers=1), gen, student)
    capsys.readouterr()
    metrics_two = run_evaluation(two, EvaluationConfig(**cfg, workers=2), gen, student)
    printed = capsys.readouterr().out  # what the workers printed is shown where the stage runs
    assert printed.count("[generation] backend=transformers") == 2
    assert "[evaluation/base] done" in printed and "[evaluation/sft] done" in printed
    assert metrics_one == metrics_two and set(metrics_two) == {"base", "sft"}
    for method in ("base", "sft"):
        for a, b in zip(one.eval_files(method), two.eval_files(method)):
            assert a.name == b.name and a.read_bytes() == b.read_bytes()
    manifest = two.manifest()["stages"]
    assert manifest["evaluation/base"]["status"] == manifest["evaluation/sft"]["status"] == "done"
    # the worker count is not a parameter of a method's samples: a rerun one at a time is up to date
    assert manifest["evaluation/sft"]["param_hash"] == one.manifest()["stages"]["evaluation/sft"]["param_hash"]


def test_a_failing_method_fails_the_stage_after_the_others_finish(tmp_path, tiny_model_dir):
    run = _run_with_two_models(tmp_path / "run", tiny_model_dir)
    shutil.rmtree(run.trained("sft").model)
    (run.trained("sft").model).mkdir(parents=True)  # exists but holds no model
    cfg = EvaluationConfig(methods=["base", "sft"], n_samples=0, max_new_tokens=8, workers=2)
    with pytest.raises(Exception):
        run_evaluation(run, cfg, GenerationConfig(backend="transformers"), StudentConfig(model="unused"))
    stages = run.manifest()["stages"]
    assert stages["evaluation/base"]["status"] == "done" and stages["evaluation/sft"]["status"] == "failed"


def test_workers_must_be_positive(tmp_path, tiny_model_dir):
    run = _run_with_two_models(tmp_path / "run", tiny_model_dir)
    with pytest.raises(ValueError, match="workers"):
        run_evaluation(run, EvaluationConfig(methods=["base"], workers=0))


def test_an_interrupted_evaluation_resumes_from_its_last_chunk_with_the_same_files(tmp_path, tiny_model_dir,
                                                                                   monkeypatch):
    from test_exposure import _counting_generators, _Interrupted

    cfg = EvaluationConfig(methods=["base"], n_samples=2, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=2,
                           chunk_questions=2)
    gen, student = GenerationConfig(backend="transformers", batch_size=4), StudentConfig(model="unused")
    whole = _run_with_two_models(tmp_path / "whole", tiny_model_dir)
    calls = _counting_generators(monkeypatch)
    metrics = run_evaluation(whole, cfg, gen, student)
    assert calls == [2, 2, 2, 2, 1, 1] + [2] * 6  # toy_hard's 5 and toy_test's 6 problems: greedy + sampled per chunk

    cut = _run_with_two_models(tmp_path / "cut", tiny_model_dir)
    calls = _counting_generators(monkeypatch, fail_on_call=9)  # toy_hard done, toy_test's chunk 0 done, chunk 1 cut
    with pytest.raises(_Interrupted):
        run_evaluation(cut, cfg, gen, student)
    assert not cut.eval_files("base") and cut.eval_partial("base", "toy_test").exists()
    calls = _counting_generators(monkeypatch)
    assert run_evaluation(cut, cfg, gen, student) == metrics
    assert calls == [2] * 4  # only toy_test's chunks 1 and 2 (greedy + sampled each)
    files = whole.eval_files("base")
    assert [f.name for f in files] == [f.name for f in cut.eval_files("base")] == ["toy_hard.jsonl", "toy_test.jsonl"]
    for a in files:
        assert a.read_bytes() == (cut.eval_method_dir("base") / a.name).read_bytes()
    assert not list(cut.eval_method_dir("base").glob("*.partial.jsonl"))
