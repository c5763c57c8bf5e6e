"""Stage 02, error exposure: saved chunk by chunk (an interruption loses one chunk, changes nothing), and
unfinished attempts counted apart from the wrong ones."""
import pytest

from orion_utils import generation
from orion_utils.config import DataConfig, GenerationConfig, StudentConfig
from orion_utils.exposure import (
    ExposureConfig,
    attempt_counts,
    dedupe_errors,
    is_unfinished,
    load_exposure,
    run_error_exposure,
)
from orion_utils.jsonl import read_jsonl, write_json, write_jsonl
from orion_utils.prepare import run_prepare_data
from orion_utils.records import StudentAttempt
from orion_utils.report import exposure_section
from orion_utils.rundir import RunDir

GEN, STUDENT = GenerationConfig(backend="transformers", batch_size=8), StudentConfig(model="unused")


def _run(root, model_dir, n_train=5) -> RunDir:
    run = RunDir(root)
    run_prepare_data(run, DataConfig(train_source="toy", n_train=n_train, toy_test_size=2, toy_hard_size=2))
    write_json(run.student_info, {"model": model_dir, "in_run_dir": False, "kind": "pretrained"})
    write_jsonl(run.teacher_sft_set, [])  # the stage's input; only exposure.source: primed reads it
    return run


class _Interrupted(RuntimeError):
    pass


def _counting_generators(monkeypatch, fail_on_call=None) -> list:
    """``open_generator`` as it is, its ``generate`` calls counted; the ``fail_on_call``-th call raises
    (a disconnect in the middle of the stage)."""
    calls, real = [], generation.open_generator

    def open_counting(*args, **kwargs):
        gen = real(*args, **kwargs)
        generate = gen.generate

        def counted(*a, **k):
            calls.append(len(a[0]))
            if fail_on_call is not None and len(calls) == fail_on_call:
                raise _Interrupted("disconnected")
            return generate(*a, **k)

        gen.generate = counted
        return gen

    monkeypatch.setattr(generation, "open_generator", open_counting)
    return calls


def test_an_interrupted_exposure_resumes_from_its_last_chunk_with_the_same_attempts(tmp_path, tiny_model_dir,
                                                                                   monkeypatch):
    cfg = ExposureConfig(k=2, chunk_questions=2, max_new_tokens=6, temperature=1.0, top_p=1.0, seed=5)
    whole = _run(tmp_path / "whole", tiny_model_dir)
    calls = _counting_generators(monkeypatch)
    run_error_exposure(whole, cfg, GEN, STUDENT)
    assert calls == [2, 2, 1]  # 5 questions in chunks of 2

    cut = _run(tmp_path / "cut", tiny_model_dir)
    calls = _counting_generators(monkeypatch, fail_on_call=2)  # chunk 0 finished, chunk 1 cut off
    with pytest.raises(_Interrupted):
        run_error_exposure(cut, cfg, GEN, STUDENT)
    saved = read_jsonl(cut.student_attempts_partial, StudentAttempt)
    assert len(saved) == 4 and not cut.student_attempts.exists()
    assert cut.manifest()["stages"]["error_exposure"]["status"] == "failed"
    # a process killed while appending chunk 1: half its records and a torn line
    chunk1 = read_jsonl(whole.student_attempts, StudentAttempt)[4:6]
    write_jsonl(cut.student_attempts_partial, saved + chunk1[:1])
    with open(cut.student_attempts_partial, "a", encoding="utf-8") as f:
        f.write('{"problem_id": "to')

    calls = _counting_generators(monkeypatch)
    run_error_exposure(cut, cfg, GEN, STUDENT)
    assert calls == [2, 1]  # chunk 0 read back; chunks 1 and 2 sampled
    for name in ("student_attempts", "error_attempts", "pass_rates"):
        assert getattr(cut, name).read_bytes() == getattr(whole, name).read_bytes(), name
    assert not cut.student_attempts_partial.exists()


def test_each_chunk_has_its_own_seed():
    from orion_utils.rundir import chunk_seed

    assert chunk_seed(0, "exposure", ["a", "b"]) == chunk_seed(0, "exposure", ["a", "b"])
    seeds = {chunk_seed(0, "exposure", ["a", "b"]), chunk_seed(0, "exposure", ["c", "d"]),
             chunk_seed(1, "exposure", ["a", "b"]), chunk_seed(0, "toy_test", ["a", "b"])}
    assert len(seeds) == 4 and all(0 <= s < 2 ** 31 for s in seeds)


def _attempt(pid, i, response, answer, correct, finish):
    return StudentAttempt(pid, i, response, answer, correct, "base", meta={"finish_reason": finish},
                          unfinished=is_unfinished(finish, answer))


def test_unfinished_attempts_are_counted_apart_and_not_errors_by_default():
    attempts = [
        _attempt("q1", 0, "so 3 + 4 = 7 and", None, False, "length"),  # cut off, no answer: unfinished
        # cut off after a cued answer: still unfinished, whatever an extractor pulls from it
        _attempt("q1", 1, "The answer is 8. Wait, let me check 3 +", "8", False, "length"),
        _attempt("q1", 2, "I give up.", None, False, "stop"),  # finished without an answer: wrong
        _attempt("q1", 3, "\\boxed{7}", "7", True, "stop"),
        _attempt("q2", 0, "\\boxed{9}", "9", False, "stop"),
    ]
    assert [a.unfinished for a in attempts] == [True, True, False, False, False]
    assert attempt_counts(attempts) == {"n_attempts": 5, "n_correct": 1, "n_wrong": 2, "n_unfinished": 2}
    assert [a.sample_index for a in dedupe_errors(attempts)] == [2, 0]
    assert [(a.problem_id, a.sample_index) for a in dedupe_errors(attempts, unfinished_as_errors=True)] == \
        [("q1", 0), ("q1", 1), ("q1", 2), ("q2", 0)]
    # the rule itself: the finish reason decides, never what was extracted
    assert is_unfinished("length", "8") and is_unfinished("length") and not is_unfinished("stop", None)
    # a record written before the field existed reads as finished
    old = {"problem_id": "q", "sample_index": 0, "response": "", "answer": None, "correct": False, "model": "base"}
    from orion_utils.jsonl import from_dict

    assert from_dict(StudentAttempt, old).unfinished is False


def test_the_stage_and_the_report_show_wrong_and_unfinished_apart(tmp_path, tiny_model_dir, capsys):
    # a random tiny model rarely ends a turn in 6 tokens: nearly every attempt is unfinished
    run = _run(tmp_path / "run", tiny_model_dir, n_train=4)
    cfg = ExposureConfig(k=3, chunk_questions=4, max_new_tokens=6, temperature=1.0, top_p=1.0)
    info = run_error_exposure(run, cfg, GEN, STUDENT)
    attempts, errors, _ = load_exposure(run)
    unfinished = [a for a in attempts if a.meta["finish_reason"] == "length"]  # whatever answer they state
    assert unfinished and [a.unfinished for a in attempts] == [a in unfinished for a in attempts]
    assert not any(a.correct for a in unfinished)
    assert info["n_unfinished"] == len(unfinished) and info["n_errors"] == len(errors)
    assert not any(a.unfinished for a in errors)
    assert info["n_wrong"] == len(attempts) - len(unfinished) - info["n_correct"]
    line = capsys.readouterr().out
    assert f"{info['n_wrong']} wrong, {len(unfinished)} unfinished" in line
    assert "exposure.unfinished_as_errors=False" in line
    section = "\n".join(exposure_section(run))
    assert f"**{len(unfinished)} unfinished**" in section and f"**{info['n_wrong']} wrong**" in section
    assert "left out (`exposure.unfinished_as_errors: false`)" in section

    # the option is a parameter of the stage: changing it reruns it, and the unfinished ones are errors
    info = run_error_exposure(run, ExposureConfig(**{**cfg.__dict__, "unfinished_as_errors": True}), GEN, STUDENT)
    _, errors, _ = load_exposure(run)
    assert sum(a.unfinished for a in errors) == len({(a.problem_id, " ".join(a.response.split()))
                                                     for a in unfinished})
    assert "included (`exposure.unfinished_as_errors: true`)" in "\n".join(exposure_section(run))
