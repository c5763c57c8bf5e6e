"""The teacher is paid once per run: one reply cache in the top run directory, shared by every seed and
student, keyed by the request (not by the seed's directory); ``teacher.samples_per_seed`` buys fresh
samples per seed; the report states the requests and tokens paid.

The teacher is the offline OpenAI-compatible test server (``helpers.FakeOpenAIServer``), standing in
for a paid API; the stage, the cache, the runner's seed settings and the report are the real ones.
"""
from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import replace

from helpers import FakeOpenAIServer

from orion_utils.collection import make_teacher, run_collection
from orion_utils.config import TeacherConfig, load_profile
from orion_utils.jsonl import read_jsonl, write_json, write_jsonl
from orion_utils.records import Problem, TeacherTrace
from orion_utils.report import teacher_bill_lines, write_report
from orion_utils.rundir import RunDir
from orion_utils.runner import seed_overrides
from orion_utils.teachers.api.accounting import Prices
from orion_utils.teachers.cache import TeacherCache, request_key

PROBLEMS = [Problem(f"q{i}", f"Compute {i} + 2.", str(i + 2)) for i in range(5)]


def _cfg(server: FakeOpenAIServer, **kw) -> TeacherConfig:
    return TeacherConfig(kind="api", base_url=server.base_url, model="fake-reasoner", concurrency=4, timeout_s=5.0,
                         max_retries=2, n_per_question=2, price_input_per_m=1.0, price_output_per_m=2.0, **kw)


def _seed_run(top: RunDir, seed: int) -> RunDir:
    """Where the runner puts seed ``seed`` (the first seed runs in the top directory), with its questions."""
    run = top if seed == 0 else RunDir(top.seed_dir(seed))
    write_jsonl(run.train_problems, PROBLEMS)
    return run


def test_the_seed_enters_the_key_only_when_asked():
    body = {"model": "m", "messages": [{"role": "user", "content": "2+2?"}], "temperature": 0.6}
    keys = {request_key(body, 0), request_key(body, 0, seed=0), request_key(body, 0, seed=1), request_key(body, 1)}
    assert len(keys) == 4
    assert request_key(body, 0, seed=None) == request_key(body, 0)  # caches written before the knob still answer


def test_the_seeds_and_students_of_a_run_share_one_cache_in_its_top_directory(tmp_path):
    top = RunDir(tmp_path / "run")
    student = RunDir(top.student_dir("qwen"))
    for run in (RunDir(top.seed_dir(2)), student, RunDir(student.seed_dir(1))):
        assert run.top().root == top.root and run.teacher_cache == top.teacher_cache
    assert top.teacher_cache == top.root / "cache" / "teacher" and top.top() is top
    assert [r.root for r in top.runs_within()] == [top.root, top.seed_dir(2), student.root, student.seed_dir(1)]


def test_the_second_seed_pays_nothing_and_fresh_samples_per_seed_pay_again(tmp_path):
    top = RunDir(tmp_path / "run")
    profile = load_profile("paper")
    assert profile.seeds == [0, 1, 2] and profile.teacher.samples_per_seed is False  # the default: paid once
    with FakeOpenAIServer() as server:
        cfg = _cfg(server)
        seed0 = _seed_run(top, 0)
        run_collection(seed0, cfg)
        assert server.request_count == 10  # 5 questions x 2 samples
        # seed 1 as the runner builds it: every section's seed set to 1, the teacher's included
        assert seed_overrides(profile, 1)["teacher"] == {"seed": 1}
        seed1 = _seed_run(top, 1)
        entry = run_collection(seed1, replace(cfg, seed=1))
        assert server.request_count == 10, "the second seed paid for replies the run had"
        assert entry["teacher_usage"]["requests_sent"] == 0 and entry["teacher_usage"]["cache_hits"] == 10
        assert read_jsonl(seed1.teacher_traces, TeacherTrace) == read_jsonl(seed0.teacher_traces, TeacherTrace)
        assert not (seed1.root / "cache").exists()  # no cache of its own

        # samples_per_seed: the seed enters the key, so seed 2 pays for its own samples (once)
        seed2 = _seed_run(top, 2)
        fresh = replace(cfg, seed=2, samples_per_seed=True)
        run_collection(seed2, fresh)
        assert server.request_count == 20
        run_collection(seed2, fresh, force=True)
        assert server.request_count == 20  # a re-run of that seed is still free
    with sqlite3.connect(top.teacher_cache / "teacher_cache.sqlite") as db:  # the bodies sent
        bodies = [json.loads(r) for (r,) in db.execute("SELECT request FROM responses")]
    assert len(bodies) == 20 and not any("seed" in b for b in bodies)  # the key's seed is never sent

    with TeacherCache(top.teacher_cache) as cache:
        paid = cache.paid_usage()
    assert len(paid) == 20 and {kind for kind, _ in paid} == {"collect"}
    prompt = sum(u["prompt_tokens"] for _, u in paid)
    output = sum(u["completion_tokens"] for _, u in paid)
    usd = Prices(1.0, 2.0).input_per_m * prompt / 1e6 + 2.0 * output / 1e6

    write_json(top.config_file, {"teacher": {"price_input_per_m": 1.0, "price_output_per_m": 2.0}})
    lines = teacher_bill_lines(top)
    text = "\n".join(lines)
    assert "### Teacher: requests and tokens paid" in text and "3 run(s)" in text
    assert f"| collect | 20 | {prompt:,} | {output:,} | {usd:.2f} |" in lines
    assert f"| **total** | 20 | {prompt:,} | {output:,} | {usd:.2f} |" in lines
    # the manifests keep each stage's latest run: seed 0 sent 10, seed 1 and seed 2's re-run took 10 each cached
    assert "each took 20 replies from the cache (paid for nothing) and 10 from new requests (10 attempts" in text
    assert teacher_bill_lines(RunDir(top.seed_dir(1))) == lines  # every seed's report states the run's bill
    write_json(top.metrics, {"base": {"toy_test": {"pass@1": 0.5}}})
    assert "\n".join(lines) in write_report(top).read_text()
    assert teacher_bill_lines(RunDir(tmp_path / "toy")) == []  # no paid teacher, no bill


def test_edit_and_tailored_requests_of_another_seed_come_from_the_cache(tmp_path):
    """EDIT's rectify/corrupt and Tailored Learning's tailored rationales go through ``make_teacher`` with the
    run's ``teacher_cache`` too: a later seed asking the same gets the same reply, unpaid."""
    top = RunDir(tmp_path / "run")
    problem = Problem("q1", "Compute 2 + 3 * 4.", "14")
    wrong = TeacherTrace("q1", "Add first.", "2 + 3 = 5, 5 * 4 = 20. \\boxed{20}", "20", False, "t")

    def answer_fn(messages):
        return "Multiply first.", "3 * 4 = 12, 2 + 12 = 14. \\boxed{14}"

    with FakeOpenAIServer(answer_fn=answer_fn) as server:
        cfg = _cfg(server)
        replies = []
        for run, seed in ((top, 0), (RunDir(top.seed_dir(1)), 1), (RunDir(top.student_dir("b")), 0)):
            teacher = make_teacher(replace(cfg, seed=seed), cache_dir=str(run.teacher_cache))
            replies.append((teacher.rectify(problem, wrong), teacher.tailor(problem, ["2 + 3 = 5 then 20"])))
            teacher.close()
        assert server.request_count == 2 and replies[0] == replies[1] == replies[2]


def test_seeds_run_at_once_send_each_request_once(tmp_path):
    """``orion run --jobs``: two seeds collect at the same moment; the second waits for the first's replies
    (the cache's sender lock) instead of sending the same requests."""
    top = RunDir(tmp_path / "run")
    with FakeOpenAIServer(latency_s=0.05) as server:
        cfg = _cfg(server)
        runs = [_seed_run(top, 0), _seed_run(top, 1)]
        errors: list = []

        def collect(run, seed):
            try:
                run_collection(run, replace(cfg, seed=seed))
            except BaseException as exc:  # pragma: no cover - shown by the assert below
                errors.append(exc)

        threads = [threading.Thread(target=collect, args=(run, seed)) for seed, run in enumerate(runs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert server.request_count == 10
    hits = sorted(RunDir(r.root).stage_info("teacher_cots")["teacher_usage"]["cache_hits"] for r in runs)
    assert hits == [0, 10]
