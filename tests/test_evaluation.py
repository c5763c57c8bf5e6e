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


# ------------------------------------------------------------------------------------------------
# unfinished outputs: cut off at max_new_tokens, counted apart and as wrong


def test_a_cut_off_output_is_unfinished_whatever_answer_it_states_and_counts_as_wrong():
    from orion_utils.evaluation import grade_generations, summarise
    from orion_utils.records import Problem
    from orion_utils.sampling import Generation

    problem = Problem("a", "What is 3 + 4?", "7")
    sampled = [Generation("3 + 4 = 7, so \\boxed{7}. Let me check once more: 3 +", 12, "length"),  # a box, cut off
               Generation("3 + 4 = 7. The answer is 7. Wait, let me double", 12, "length"),  # a cued answer, cut off
               Generation("3 + 4 = 7, so \\boxed{7}", 8, "stop"),
               Generation("3 + 4 = 8, so \\boxed{8}", 8, "stop")]
    greedy = [Generation("\\boxed{7} but let me", 12, "length")]
    samples = (grade_generations("sft", "b", [problem], [greedy], "greedy")
               + grade_generations("sft", "b", [problem], [sampled], "sample"))
    assert [s.unfinished for s in samples] == [True, True, True, False, False]
    assert [s.correct for s in samples] == [False, False, False, True, False]  # the cut-off ones never count
    assert samples[1].answer == "7" and samples[1].meta["graded_correct"] is True  # the grader's verdict is kept
    s = summarise(samples)
    assert s["pass@1"] == pytest.approx(0.25) and s["unfinished_rate"] == pytest.approx(0.5)
    assert s["greedy"] == 0.0 and s["greedy_unfinished_rate"] == 1.0


def test_an_eval_file_written_before_the_unfinished_field_reads_by_the_same_rule():
    from orion_utils.jsonl import from_dict
    from orion_utils.records import EvalSample

    old = {"method": "sft", "benchmark": "b", "problem_id": "a", "decoding": "sample", "sample_index": 0,
           "response": "\\boxed{7} and", "answer": "7", "gold": "7", "correct": True, "reason": "correct",
           "n_tokens": 12, "meta": {"finish_reason": "length"}}
    sample = from_dict(EvalSample, old)
    assert sample.unfinished and not sample.correct
    finished = from_dict(EvalSample, {**old, "meta": {"finish_reason": "stop"}})
    assert not finished.unfinished and finished.correct


def test_the_stage_reports_the_unfinished_rate_beside_accuracy(tmp_path, tiny_model_dir):
    from orion_utils.jsonl import read_jsonl
    from orion_utils.records import EvalSample

    # a random tiny model rarely ends its turn within 6 tokens: most outputs are cut off
    run = _run_with_two_models(tmp_path / "run", tiny_model_dir)
    cfg = EvaluationConfig(methods=["base"], n_samples=2, temperature=1.0, top_p=1.0, max_new_tokens=6)
    metrics = run_evaluation(run, cfg, GenerationConfig(backend="transformers", batch_size=8), StudentConfig(model="unused"))
    for bench, summary in metrics["base"].items():
        samples = read_jsonl(run.eval_file("base", bench), EvalSample)
        for decoding, key in (("sample", "unfinished_rate"), ("greedy", "greedy_unfinished_rate")):
            own = [s for s in samples if s.decoding == decoding]
            cut = [s for s in own if s.meta["finish_reason"] == "length"]
            assert summary[key] == pytest.approx(len(cut) / len(own))
            assert all(s.unfinished and not s.correct for s in cut)
        assert summary["unfinished_rate"] > 0
