"""kill -9 in the middle of stage 03 and of a Tailored Learning exam, then a re-run: the finished chunks are
read back (at most the chunk in flight is lost) and the files are byte for byte those of a run that was
never interrupted (each chunk samples with its own seed, ``rundir.chunk_seed``).

The stage runs for real in a child process (the transformers backend on a tiny random model whose
end-of-turn row is scaled up, so its samples end at random lengths and the seeds show in the files); the
child's generation and scoring calls are wrapped only to print each call and, at a chosen one, wait to be
killed, so the kill lands mid-stage at a known point."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from orion_utils.config import GenerationConfig, StudentConfig, TailoredConfig
from orion_utils.jsonl import read_jsonl, write_json, write_jsonl
from orion_utils.layouts import TailoredDir
from orion_utils.records import Problem, Refinement, SFTExample, StudentAttempt
from orion_utils.reflection import ReflectionConfig, run_reflection
from orion_utils.rundir import RunDir
from orion_utils.teachers.toy import ToyTeacher
from orion_utils.toy.domain import generate_problems
from orion_utils.transformers_backend import TransformersBackend

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

# the run's own reflector samples (the toy `student` reflector: 2 chunks of 2 questions); the compared `rule`
# reflector's rewrites are accepted, so its selection scores (2 chunks)
REFLECTION = ReflectionConfig(reflector="student", m=2, max_new_tokens=16, temperature=1.0, top_p=1.0,
                              selection="perplexity", chunk_questions=2, compare="rule", seed=3)
EXAM = TailoredConfig(exam_samples=2, exam_temperature=1.0, exam_max_new_tokens=12, exam_chunk_questions=2, seed=3)


@pytest.fixture(scope="module")
def ending_model(tmp_path_factory) -> str:
    """The tiny random Llama with its end-of-turn output row scaled by 20: samples end after a few tokens."""
    import torch
    from conftest import IM_END, build_tiny_model_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny_model_dir(tmp_path_factory.mktemp("ending"))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight[AutoTokenizer.from_pretrained(path).convert_tokens_to_ids(IM_END)] *= 20
    model.save_pretrained(path)
    return path


def stage_03_inputs(root: Path, model_dir: str) -> RunDir:
    """What stage 03 reads: 4 toy questions, the toy teacher's CoTs, one wrong attempt each (the teacher's
    CoT corrupted), ``model_dir`` as the base student."""
    teacher = ToyTeacher(error_rate=0.0, seed=0)
    problems = generate_problems(4)
    traces = {t.problem_id: t for t in teacher.collect(problems, 1)}
    run = RunDir(root)
    write_json(run.student_info, {"model": model_dir, "in_run_dir": False})
    write_jsonl(run.train_problems, problems)
    write_jsonl(run.teacher_sft_set, [SFTExample(p.id, p.question, traces[p.id].cot, "teacher", {}) for p in problems])
    write_jsonl(run.error_attempts,
                [StudentAttempt(p.id, 0, teacher.corrupt(p, traces[p.id]).cot, None, False, "base") for p in problems])
    return run


def reflect(root: Path, model_dir: str) -> dict:
    """Stage 03 on the run at ``root`` (made on first call), as the child and the test run it."""
    run = RunDir(root) if (root / "data").exists() else stage_03_inputs(root, model_dir)
    return run_reflection(run, REFLECTION, StudentConfig(model="toy"), GenerationConfig(backend="transformers"))


def exam(root: Path, model_dir: str) -> Path:
    """Round 0's exam (``tailored.run_exam``, its chunks in the round's ``exam_partial``) of 5 toy questions."""
    from orion_utils.generation import open_generator
    from orion_utils.grading import grade
    from orion_utils.tailored import run_exam

    round0 = TailoredDir(root).round(0)
    generator = open_generator(model_dir, GenerationConfig(backend="transformers"))
    attempts = run_exam(generator, generate_problems(5), EXAM, grade, partial=round0.exam_partial, model_name="base")
    generator.close()
    return write_jsonl(round0.exam, attempts)


_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from orion_utils.transformers_backend import TransformersBackend

    what, root, model_dir, wait_at = sys.argv[1:5]
    calls = {"generate": 0, "score": 0}

    def announced(name, real):
        def call(self, *args, **kwargs):
            calls[name] += 1
            print("@", name, calls[name], flush=True)
            if f"{name} {calls[name]}" == wait_at:  # mid-stage: wait here to be killed
                print("@ waiting", flush=True)
                time.sleep(600)
            return real(self, *args, **kwargs)
        return call

    TransformersBackend.generate = announced("generate", TransformersBackend.generate)
    TransformersBackend.score = announced("score", TransformersBackend.score)
    import test_chunk_resume as t

    getattr(t, what)(Path(root), model_dir)
    print("@ done", flush=True)
    """
)


def _killed_at(tmp_path: Path, what: str, root: Path, model_dir: str, wait_at: str) -> list[str]:
    """Run ``what`` (``reflect`` or ``exam``) on ``root`` in a child process, SIGKILL it once it waits at call
    ``wait_at``; the calls it made, the one it was killed in last."""
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")])}
    err = tmp_path / "child.err"  # a file, not a pipe: the stage's progress bars never fill a buffer and block it
    with open(err, "w") as errors:
        child = subprocess.Popen([sys.executable, str(script), what, str(root), model_dir, wait_at], env=env,
                                 stdout=subprocess.PIPE, stderr=errors, text=True)
    timer = threading.Timer(300, child.kill)  # a child that never reaches its call fails the test, never hangs it
    timer.start()
    lines = []
    for line in child.stdout:  # the calls it announces, among the stage's own lines
        if line.startswith("@ "):
            lines.append(line[2:].strip())
            if lines[-1] == "waiting":
                break
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stdout.close()
    timer.cancel()
    assert lines and lines[-1] == "waiting", err.read_text()[-3000:]
    assert child.returncode == -signal.SIGKILL
    return lines[:-1]


def _counted(monkeypatch) -> dict:
    """This process's generation and scoring calls, counted."""
    calls = {"generate": 0, "score": 0}
    for name in calls:
        real = getattr(TransformersBackend, name)

        def call(self, *args, _name=name, _real=real, **kwargs):
            calls[_name] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(TransformersBackend, name, call)
    return calls


def _torn(path: Path) -> None:
    """A process killed while appending: a half-written last line."""
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"problem_id": "toy-tr')


def test_stage_03_killed_mid_generation_and_mid_scoring_resumes_to_the_same_files(tmp_path, ending_model,
                                                                                   monkeypatch):
    whole = tmp_path / "whole"
    reflect(whole, ending_model)
    done = RunDir(whole)
    texts = [c["text"] for r in read_jsonl(done.refinements, Refinement) for c in r.meta["candidates"]]
    assert len(set(texts)) >= 3  # sampled rewrites, each ended by the model: the seeds show in the file
    assert all("nll" in r.meta and "teacher_nll" in r.meta for r in read_jsonl(done.reflector_comparison, Refinement))

    cut = RunDir(tmp_path / "cut")
    stage_03_inputs(cut.root, ending_model)
    # 1: killed while sampling the run's reflector's second chunk
    assert _killed_at(tmp_path, "reflect", cut.root, ending_model, "generate 2") == ["generate 1", "generate 2"]
    sampled = cut.refinements_partial("student", "candidates")
    assert [p["problem_id"] for p in map(_json, sampled.read_text().splitlines())] == [p.id for p in generate_problems(2)]
    assert not cut.refinements.exists() and cut.manifest()["stages"]["reflection"]["status"] == "running"
    _torn(sampled)
    # 2: the re-run samples only that chunk, then is killed while scoring the compared reflector's second chunk
    assert _killed_at(tmp_path, "reflect", cut.root, ending_model, "score 2") == ["generate 1", "score 1", "score 2"]
    assert cut.refinements.exists() and not cut.reflector_comparison.exists()
    assert len(sampled.read_text().splitlines()) == 4
    assert len(cut.refinements_partial("rule", "selected").read_text().splitlines()) == 2
    # 3: the last re-run makes only what was left: one chunk scored
    calls = _counted(monkeypatch)
    reflect(cut.root, ending_model)
    assert calls == {"generate": 0, "score": 1}
    for name in ("refinements", "orion_sft_set", "reflector_comparison"):
        assert getattr(cut, name).read_bytes() == getattr(done, name).read_bytes(), name
    assert not list(cut.path("data").glob("*.partial.jsonl"))


def test_a_tailored_exam_killed_mid_way_resumes_to_the_same_attempts(tmp_path, ending_model, monkeypatch):
    whole = TailoredDir(tmp_path / "whole").round(0)
    exam(whole.root.parent, ending_model)
    cut = TailoredDir(tmp_path / "cut").round(0)
    assert _killed_at(tmp_path, "exam", cut.root.parent, ending_model, "generate 3") == ["generate 1", "generate 2", "generate 3"]
    assert not cut.exam.exists() and len(cut.exam_partial.read_text().splitlines()) == 8  # 2 chunks x 2 x 2
    _torn(cut.exam_partial)
    calls = _counted(monkeypatch)
    exam(cut.root.parent, ending_model)
    assert calls["generate"] == 1  # the last chunk (of 1 question) only
    assert cut.exam.read_bytes() == whole.exam.read_bytes()
    attempts = read_jsonl(whole.exam, StudentAttempt)
    assert len(attempts) == 10 and len({a.response for a in attempts}) > 2  # sampled, of several lengths


def test_a_changed_knob_starts_stage_03_afresh(tmp_path, ending_model, monkeypatch):
    """The chunks saved under one setting are never read back under another (the stage's fingerprint)."""

    class Stop(RuntimeError):
        pass

    run = stage_03_inputs(tmp_path / "run", ending_model)
    real = TransformersBackend.generate
    calls = []

    def generate(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Stop("disconnected")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(TransformersBackend, "generate", generate)
    with pytest.raises(Stop):
        run_reflection(run, REFLECTION, StudentConfig(model="toy"), GenerationConfig(backend="transformers"))
    assert run.refinements_partial("student", "candidates").exists()
    monkeypatch.setattr(TransformersBackend, "generate", real)
    calls = _counted(monkeypatch)
    from dataclasses import replace

    run_reflection(run, replace(REFLECTION, m=3, compare=""), StudentConfig(model="toy"),
                   GenerationConfig(backend="transformers"))
    assert calls["generate"] == 2  # both chunks sampled again
    assert {r.problem_id for r in read_jsonl(run.refinements, Refinement)} == {p.id for p in read_jsonl(
        run.train_problems, Problem)}


def _json(line: str) -> dict:
    import json

    return json.loads(line)
