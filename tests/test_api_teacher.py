"""APITeacher against the local fake OpenAI-compatible server: faults, stalls, retries, the cache,
kill -9 and resume, and the secret never written anywhere."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import ALL_FAULTS, FakeOpenAIServer, arithmetic_problems

from orion_utils.jsonl import write_json, write_jsonl
from orion_utils.records import Problem, TeacherTrace
from orion_utils.teachers.api import (
    APITeacher,
    MalformedResponse,
    MissingAPIKeyError,
    TeacherAPIError,
    parse_reply,
    parse_retry_after,
)
from orion_utils.teachers.base import FeedbackTeacher, Teacher

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
SECRET = "sk-test-SECRET123"


def make_teacher(server: FakeOpenAIServer, cache_dir, **kw) -> APITeacher:
    defaults = dict(
        api_key_env=None,
        concurrency=8,
        timeout_s=2.0,
        max_retries=6,
        backoff_base_s=0.02,
        backoff_max_s=0.2,
        progress=False,
    )
    defaults.update(kw)
    return APITeacher(server.base_url, "fake-reasoner", cache_dir=cache_dir, **defaults)


def assert_valid(traces: list[TeacherTrace], problems: list[Problem], n: int) -> None:
    expected = [(p.id, i) for p in problems for i in range(n)]
    assert [(t.problem_id, t.sample_index) for t in traces] == expected  # complete, ordered, no duplicates
    gold = {p.id: p.answer for p in problems}
    for t in traces:
        assert t.thinking.strip() and "\\boxed{" in t.solution and "<think>" not in t.solution
        assert t.correct and t.answer == gold[t.problem_id]
        assert t.usage["completion_tokens"] > 0 and t.meta["finish_reason"] == "stop"


# ---------------------------------------------------------------------------------------------


def test_success_path_usage_and_cost(tmp_path):
    problems = arithmetic_problems(6)
    with FakeOpenAIServer() as server:
        teacher = make_teacher(server, tmp_path / "cache", price_input_per_m=1.0, price_output_per_m=2.0)
        assert isinstance(teacher, Teacher) and isinstance(teacher, FeedbackTeacher)
        traces = teacher.collect(problems, n=2)
        assert server.request_count == 12
    assert_valid(traces, problems, 2)
    assert traces[0].thinking.startswith("The question asks for")
    u = teacher.usage_summary()
    assert (
        u["requests_sent"] == 12
        and u["requests_succeeded"] == 12
        and u["cache_hits"] == 0
        and u["failures"] == 0
    )
    assert u["prompt_tokens"] == sum(t.usage["prompt_tokens"] for t in traces)
    assert u["reasoning_tokens"] > 0
    expected = (u["prompt_tokens"] * 1.0 + u["completion_tokens"] * 2.0) / 1e6
    assert u["cost_usd"] == pytest.approx(expected, rel=1e-6)
    entry = teacher.manifest_entry()
    json.dumps(entry)  # plain JSON
    assert entry["usage"]["requests_sent"] == 12 and entry["api_key_env"] is None


@pytest.mark.parametrize(
    "reasoning_field,think_tags", [("reasoning_content", False), ("reasoning", False), (None, True)]
)
def test_thinking_from_field_or_think_tags(tmp_path, reasoning_field, think_tags):
    problems = arithmetic_problems(3)
    with FakeOpenAIServer(reasoning_field=reasoning_field, think_tags=think_tags) as server:
        traces = make_teacher(server, tmp_path).collect(problems)
    assert_valid(traces, problems, 1)
    assert all(
        t.thinking.startswith("The question asks for") and "</think>" not in t.solution for t in traces
    )


def test_twenty_percent_faults_complete_and_rerun_sends_nothing(tmp_path):
    problems = arithmetic_problems(30)
    with FakeOpenAIServer(
        fault_rate=0.2, faults=ALL_FAULTS, seed=1, retry_after_s="0.1", stall_s=5.0
    ) as server:
        teacher = make_teacher(server, tmp_path / "cache", timeout_s=0.5, max_retries=8)
        traces = teacher.collect(problems, n=2)
        assert_valid(traces, problems, 2)
        faults = [e["fault"] for e in server.log if e["fault"]]
        assert len(faults) >= 8, faults  # faults really happened, and of several kinds
        assert len(set(faults)) >= 4
        u = teacher.usage_summary()
        assert u["failures"] == 0 and u["retries"] == len(faults) and u["requests_succeeded"] == 60

        before = server.request_count
        again = make_teacher(server, tmp_path / "cache").collect(problems, n=2)
        assert server.request_count == before  # a re-run sends nothing
    assert again == traces


def test_duplicate_requests_in_one_batch_are_sent_once(tmp_path):
    p = arithmetic_problems(1)[0]
    with FakeOpenAIServer() as server:
        teacher = make_teacher(server, tmp_path)
        traces = teacher.collect([p, p, p], n=1)
        assert len(traces) == 3 and server.request_count == 1
        assert teacher.usage_summary()["deduplicated"] == 2


def test_retry_after_is_honoured(tmp_path):
    problems = arithmetic_problems(2)
    with FakeOpenAIServer(
        fault_fn=lambda body, attempt: "429" if attempt == 0 else None, retry_after_s=1
    ) as server:
        # backoff alone would retry within 20 ms; Retry-After says 1 s
        traces = make_teacher(server, tmp_path, backoff_base_s=0.01, backoff_max_s=0.02).collect(problems)
        log = server.log
    assert len(traces) == 2
    for body_hash in {e["body_hash"] for e in log}:
        times = sorted(e["t"] for e in log if e["body_hash"] == body_hash)
        assert len(times) == 2 and times[1] - times[0] >= 1.0


def test_parse_retry_after_forms():
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "0.5"}) == 0.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # a date in the past
    assert parse_retry_after({"retry-after": "soon"}) is None and parse_retry_after({}) is None


@pytest.mark.parametrize("fault", ["stall", "drip"])
def test_per_request_timeout_on_stalled_reply(tmp_path, fault):
    """A reply that never comes (stall) or trickles in byte by byte (drip: each read is quick, so only
    a total timeout catches it) is abandoned after timeout_s and retried."""
    problems = arithmetic_problems(2)
    with FakeOpenAIServer(
        fault_fn=lambda body, attempt: fault if attempt == 0 else None, stall_s=20.0
    ) as server:
        teacher = make_teacher(server, tmp_path, timeout_s=0.5)
        traces = teacher.collect(problems)  # how soon: bench/bench_time_limits.py
    assert_valid(traces, problems, 1)
    assert teacher.usage_summary()["retry_reasons"] == {"timeout": 2}


def test_failures_recorded_then_retried_next_run(tmp_path):
    problems = arithmetic_problems(4)
    with FakeOpenAIServer(fault_rate=1.0, faults=("500",)) as server:
        teacher = make_teacher(server, tmp_path / "cache", max_retries=2)
        assert teacher.collect(problems) == []
        assert server.request_count == 4 * 3  # first attempt + 2 retries each
        assert {f["reason"] for f in teacher.last_failures} == {"http 500"}
        rows = teacher.failures()
        assert len(rows) == 4 and all(r["attempts"] == 3 and r["reason"] == "http 500" for r in rows)
        assert teacher.usage_summary()["failure_reasons"] == {"http 500": 4}

        server.fault_rate = 0.0  # the server recovers; the next run sends the failed requests again
        before = server.request_count
        fresh = make_teacher(server, tmp_path / "cache")
        traces = fresh.collect(problems)
        assert server.request_count - before == 4
    assert_valid(traces, problems, 1)
    assert fresh.failures() == []


def test_malformed_replies_are_retried_not_cached(tmp_path):
    problems = arithmetic_problems(5)
    kinds = ["truncated", "empty", "no_choices", "garbage", "disconnect"]

    def fault_fn(body, attempt):  # problem k gets fault kinds[k] on its first two attempts
        k = next(i for i, p in enumerate(problems) if p.question in body["messages"][-1]["content"])
        return kinds[k] if attempt < 2 else None

    with FakeOpenAIServer(fault_fn=fault_fn) as server:
        teacher = make_teacher(server, tmp_path)
        traces = teacher.collect(problems)
        assert server.request_count == 15
    assert_valid(traces, problems, 1)
    reasons = teacher.usage_summary()["retry_reasons"]
    assert reasons == {"malformed reply": 8, "connection error": 2}


def test_parse_reply_rules():
    ok = {
        "choices": [
            {"message": {"content": "x \\boxed{1}", "reasoning_content": "think"}, "finish_reason": "stop"}
        ]
    }
    c = parse_reply(ok)
    assert (c.thinking, c.solution, c.finish_reason) == ("think", "x \\boxed{1}", "stop")
    parts = {"choices": [{"message": {"content": [{"type": "text", "text": "<think>a</think>b"}]}}]}
    assert (parse_reply(parts).thinking, parse_reply(parts).solution) == ("a", "b")
    cut = {
        "choices": [{"message": {"content": "", "reasoning_content": "long..."}, "finish_reason": "length"}]
    }
    assert parse_reply(cut).thinking == "long..."  # cut by max_tokens: a real reply, kept
    for bad in (
        [],
        {"choices": []},
        {"error": {"message": "overloaded"}},
        {"choices": [{"message": None}]},
        {"choices": [{"message": {"content": "", "reasoning_content": "t"}, "finish_reason": "stop"}]},
        {"choices": [{"message": {"content": 42}}]},
    ):
        with pytest.raises(MalformedResponse):
            parse_reply(bad)


def test_wrong_teacher_answers_come_back_incorrect(tmp_path):
    problems = arithmetic_problems(20)
    with FakeOpenAIServer(wrong_rate=0.4, seed=3) as server:
        traces = make_teacher(server, tmp_path).collect(problems)
        assert server.request_count == 20
    gold = {p.id: p.answer for p in problems}
    assert len(traces) == 20
    assert 0 < sum(not t.correct for t in traces) < 20
    for t in traces:
        assert t.correct == (t.answer == gold[t.problem_id])


def test_concurrency_is_bounded(tmp_path):
    with FakeOpenAIServer(latency_s=0.1) as server:
        make_teacher(server, tmp_path, concurrency=3).collect(arithmetic_problems(12))
        assert server.max_in_flight == 3


def test_collect_inside_a_running_event_loop(tmp_path):
    """Jupyter runs cells inside an event loop; collect must still work (it uses a worker thread)."""
    problems = arithmetic_problems(3)
    with FakeOpenAIServer() as server:
        teacher = make_teacher(server, tmp_path)

        async def cell():
            return teacher.collect(problems)

        traces = asyncio.run(cell())
    assert_valid(traces, problems, 1)


def test_rectify_corrupt_tailor_share_the_request_path(tmp_path):
    p = Problem(id="q1", question="Compute 2 + 3 * 4.", answer="14")

    def answer_fn(messages):
        text = messages[-1]["content"]
        if "Most likely wrong solution" in text:
            return "I multiply first... no.", "2 + 3 = 5, 5 * 4 = 20. \\boxed{20}"
        if "correct final answer" in text:
            return "Hint says 14.", "3 * 4 = 12, 2 + 12 = 14. \\boxed{14}"
        if "<attempt 1>" in text:
            return "The student added first.", "Multiply first: 12, then 2 + 12 = 14. \\boxed{14}"
        return "Compute.", "\\boxed{20}"

    with FakeOpenAIServer(answer_fn=answer_fn) as server:
        teacher = make_teacher(server, tmp_path / "cache")
        wrong = teacher.collect([p])[0]
        assert not wrong.correct and wrong.answer == "20"
        fixed = teacher.rectify(p, wrong)
        assert fixed.correct and fixed.meta["kind"] == "rectify"
        corrupted = teacher.corrupt(p, fixed)
        assert not corrupted.correct and corrupted.meta["kind"] == "corrupt"
        tailored = teacher.tailor(p, ["2 + 3 = 5 then 20", "2 + 3 = 5 then 20"])
        assert tailored.correct and tailored.meta["kind"] == "tailor"
        two = teacher.tailor_many([(p, ["2 + 3 = 5 then 20"])], n=2)
        assert [t.sample_index for t in two[0]] == [0, 1]
        sent = server.request_count
        assert teacher.rectify(p, wrong) == fixed and server.request_count == sent  # cached too


def test_auth_failure_stops_the_run_without_showing_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("ORION_TEST_KEY", SECRET)
    with FakeOpenAIServer(api_key="sk-the-right-one", leak_key=True) as server:
        teacher = make_teacher(server, tmp_path, api_key_env="ORION_TEST_KEY", concurrency=2)
        with pytest.raises(TeacherAPIError) as info:
            teacher.collect(arithmetic_problems(20))
        assert server.request_count <= 2  # stopped at once, not 20 x retries
    assert "ORION_TEST_KEY" in str(info.value) and SECRET not in str(info.value)
    assert SECRET not in json.dumps(teacher.failures())
    # no chained error (the client's, whose request headers hold the key) and no frame local holds it
    assert info.value.__context__ is None and info.value.__cause__ is None
    import traceback

    shown = "".join(traceback.TracebackException.from_exception(info.value, capture_locals=True).format())
    assert SECRET not in shown


def test_missing_key_is_a_clear_error_and_cached_reruns_need_no_key(tmp_path, monkeypatch):
    problems = arithmetic_problems(2)
    monkeypatch.delenv("ORION_ABSENT_KEY", raising=False)
    with FakeOpenAIServer() as server:
        teacher = make_teacher(server, tmp_path / "cache", api_key_env="ORION_ABSENT_KEY")
        with pytest.raises(MissingAPIKeyError, match="ORION_ABSENT_KEY"):
            teacher.collect(problems)
        assert server.request_count == 0
        make_teacher(server, tmp_path / "cache").collect(problems)  # fill the cache (keyless server)
        assert len(teacher.collect(problems)) == 2  # everything cached: no key needed
    with pytest.raises(ValueError) as info:
        APITeacher("http://127.0.0.1:1/v1", "m", api_key_env=SECRET)  # a key pasted in by mistake
    assert SECRET not in str(info.value)


def test_secret_never_written_anywhere(tmp_path, monkeypatch, capsys):
    """Run a collection with a hostile server that echoes the key in errors and replies, keep every
    artefact (cache, manifest, traces, failures, logs at DEBUG, console output, reprs) in a run
    directory, then scan every byte of it for the key."""
    monkeypatch.setenv("ORION_TEST_KEY", SECRET)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    handler = logging.FileHandler(run_dir / "run.log")
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    problems = arithmetic_problems(12)
    doomed = problems[0].question
    try:

        def fault_fn(body, attempt):
            content = body["messages"][-1]["content"]
            if doomed in content:  # always fails: its error message (with the key) is recorded
                return "500"
            k = next(i for i, p in enumerate(problems) if p.question in content)
            return ("429", "500", "truncated", None)[k % 4] if attempt == 0 else None

        with FakeOpenAIServer(
            api_key=SECRET, leak_key=True, retry_after_s="0.05", fault_fn=fault_fn
        ) as server:
            teacher = make_teacher(
                server, run_dir / "cache", api_key_env="ORION_TEST_KEY", progress=True, max_retries=2
            )
            traces = teacher.collect(problems)
            assert all(e["auth_ok"] for e in server.log)  # the key was sent, to this server only
        assert len(traces) == 11 and len(teacher.failures()) == 1
        assert "[REDACTED]" in traces[0].thinking  # the server did echo it
        write_jsonl(run_dir / "data" / "teacher_traces.jsonl", traces)
        write_json(
            run_dir / "manifest.json",
            {"teacher_cots": teacher.manifest_entry(), "failures": teacher.failures(), "repr": repr(teacher)},
        )
        teacher.close()
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
    out = capsys.readouterr()
    (run_dir / "console.txt").write_text(out.out + out.err)
    assert "it/s" in out.err or "req/s" in out.err or "req" in out.err  # the progress bar was there
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".sqlite") for p in files) and (run_dir / "run.log").stat().st_size > 0
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), f"the key leaked into {path.relative_to(run_dir)}"


# ---------------------------------------------------------------------------------------------
# kill -9 in mid-run, then resume


_CHILD = textwrap.dedent(
    """
    import sys
    from orion_utils.teachers.api import APITeacher
    from orion_utils.teachers.prompts import CompletionRequest, collect_messages
    from helpers import arithmetic_problems

    base_url, cache_dir = sys.argv[1], sys.argv[2]
    teacher = APITeacher(base_url, "fake-reasoner", api_key_env=None, concurrency=4, cache_dir=cache_dir,
                         timeout_s=5, progress=False)
    problems = arithmetic_problems(40)
    requests = [CompletionRequest(collect_messages(p), i, "collect", p.id)
                for p in problems for i in range(2)]
    print("start", flush=True)
    teacher._complete(requests)
    print("done", flush=True)
    """
)


def _rows(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0


def test_kill9_mid_run_then_resume_loses_and_duplicates_nothing(tmp_path):
    problems = arithmetic_problems(40)
    n, total = 2, 80
    cache_dir = tmp_path / "cache"
    db = cache_dir / "teacher_cache.sqlite"
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    pythonpath = [str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")]  # the package, the test helpers
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath)}
    with FakeOpenAIServer(latency_s=0.05) as server:
        for threshold in (10, 35):  # kill, resume in a second child, kill that one too, then finish
            delivered_before = server.success_count
            rows_before = _rows(db)
            child = subprocess.Popen(
                [sys.executable, str(script), server.base_url, str(cache_dir)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            deadline = time.monotonic() + 30
            while _rows(db) < threshold and time.monotonic() < deadline and child.poll() is None:
                time.sleep(0.01)
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            out = child.stdout.read().decode()
            assert "done" not in out, "the child finished before it was killed"
            conn = sqlite3.connect(db)
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            committed = conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
            assert conn.execute("SELECT COUNT(DISTINCT key) FROM responses").fetchone()[0] == committed
            conn.close()
            sent_by_child = server.success_count - delivered_before
            paid_not_kept = sent_by_child - (committed - rows_before)
            assert 0 <= paid_not_kept <= 4  # only requests in flight (concurrency 4) are lost
            time.sleep(0.2)  # let the server finish writing to the dead child's sockets

        before = server.request_count
        teacher = make_teacher(server, cache_dir)
        traces = teacher.collect(problems, n=n)
        assert server.request_count - before == total - committed  # nothing committed is paid again
    assert_valid(traces, problems, n)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == total
    conn.close()


def test_prompts_render_with_the_boxed_instruction():
    from orion_utils.teachers.prompts import (
        collect_messages,
        corrupt_messages,
        rectify_messages,
        tailor_messages,
    )

    p = Problem(id="q", question="Compute {x} + 1.", answer="2")  # braces in a question must survive
    wrong = TeacherTrace("q", "th", "wrong \\boxed{3}", "3", False, "t")
    for messages in (
        collect_messages(p),
        rectify_messages(p, wrong),
        rectify_messages(p, None),
        corrupt_messages(p, wrong),
        tailor_messages(p, ["a", "a", "b"]),
    ):
        text = messages[-1]["content"]
        assert "Compute {x} + 1." in text and "\\boxed{" in text and messages[-1]["role"] == "user"
    assert "wrong \\boxed{3}" in rectify_messages(p, wrong)[-1]["content"]
    assert tailor_messages(p, ["a", "a", "b"])[-1]["content"].count("<attempt") == 2  # deduplicated


def test_server_runs_from_the_command_line():
    import urllib.request

    proc = subprocess.Popen(
        [sys.executable, str(TESTS / "helpers" / "openai_server.py"), "--latency", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = proc.stdout.readline().split()[-1]
        assert base_url.startswith("http://127.0.0.1:")
        body = json.dumps(
            {"model": "m", "messages": [{"role": "user", "content": "Compute 2 + 3."}]}
        ).encode()
        req = urllib.request.Request(
            base_url + "/chat/completions", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            reply = json.loads(resp.read())
        assert "\\boxed{5}" in reply["choices"][0]["message"]["content"]
        assert reply["choices"][0]["message"]["reasoning_content"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert "RuntimeWarning" not in proc.stderr.read()


def test_problems_may_be_plain_dicts(tmp_path):
    problems = arithmetic_problems(3)
    as_dicts = [{"id": p.id, "question": p.question, "answer": p.answer} for p in problems]
    with FakeOpenAIServer() as server:
        teacher = make_teacher(server, tmp_path / "cache")
        traces = teacher.collect(as_dicts, n=2)
        assert_valid(traces, problems, 2)
        assert teacher.collect(problems, n=2) == traces and server.request_count == 6  # same cache keys
        with pytest.warns(UserWarning, match="1 problem id\\(s\\) name different questions"):
            teacher.collect([as_dicts[0], {**as_dicts[1], "id": as_dicts[0]["id"]}])
        with pytest.raises(ValueError, match="needs an 'answer'"):
            teacher.collect([{"question": "1+1?"}])
        with pytest.raises(ValueError, match="integer >= 1"):
            teacher.collect(problems, n=0)


def test_pieces_of_the_key_are_redacted_too():
    from orion_utils.teachers.api import REDACTED, _Redactor

    redact = _Redactor(SECRET)
    assert redact(f"auth: Bearer {SECRET}!") == f"auth: Bearer {REDACTED}!"
    cut = f"reply is not valid JSON (90 chars: '{{\"error\": \"bad key Bearer {SECRET[:17]}')"
    assert SECRET[:11] not in redact(cut) and redact(cut).endswith(f"Bearer {REDACTED}')")
    assert redact(f"tail {SECRET[-13:]} and head {SECRET[:12]}.") == f"tail {REDACTED} and head {REDACTED}."
    assert redact(f"x = 7 and {SECRET[3:10]} is text") == f"x = 7 and {SECRET[3:10]} is text"  # short: left
    big = "The answer is 42. " * 100_000 + SECRET[3:20]
    assert redact(big).endswith(REDACTED)  # how fast: bench/bench_time_limits.py


def test_unusable_usage_numbers_do_not_discard_a_good_reply():
    reply = json.loads('{"choices": [{"message": {"content": "\\\\boxed{5}"}, "finish_reason": "stop"}],'
                       ' "usage": {"prompt_tokens": 1e999, "completion_tokens": 7, "total_tokens": -1}}')
    completion = parse_reply(reply)
    assert completion.solution.endswith("{5}") and completion.usage == {"completion_tokens": 7}


def test_a_longer_retry_after_than_allowed_fails_now_and_is_retried_next_run(tmp_path):
    problems = arithmetic_problems(2)
    with FakeOpenAIServer(fault_fn=lambda body, attempt: "429" if attempt == 0 else None,
                          retry_after_s=3600) as server:
        teacher = make_teacher(server, tmp_path / "cache", max_retry_after_s=5)
        assert teacher.collect(problems) == []  # not waited for (how soon: bench/bench_time_limits.py)
        reasons = {f["reason"] for f in teacher.failures()}
        assert reasons == {"http 429 with Retry-After 3600s > max_retry_after_s"}
        assert len(teacher.collect(problems)) == 2 and teacher.failures() == []


def test_a_retry_after_within_the_clients_limit_but_above_ours_is_not_waited_for(tmp_path):
    """The openai client would wait up to 120 s; the teacher stops it at max_retry_after_s."""
    problems = arithmetic_problems(2)
    with FakeOpenAIServer(fault_fn=lambda body, attempt: "429" if attempt == 0 else None,
                          retry_after_s=30) as server:
        teacher = make_teacher(server, tmp_path / "cache", max_retry_after_s=5)
        assert teacher.collect(problems) == []  # not retried after 30 s: that retry would have succeeded
        assert server.request_count == 2
    assert {f["reason"] for f in teacher.failures()} == {"http 429 with Retry-After 30s > max_retry_after_s"}


def test_the_client_and_the_teacher_share_one_retry_budget(tmp_path):
    """A malformed reply (retried by the teacher) then server errors (retried by the openai client):
    max_retries + 1 attempts in all, each retry accounted with its reason."""
    problems = arithmetic_problems(3)
    with FakeOpenAIServer(fault_fn=lambda body, attempt: "truncated" if attempt == 0 else "500") as server:
        teacher = make_teacher(server, tmp_path / "cache", max_retries=3)
        assert teacher.collect(problems) == []
        assert server.request_count == 3 * 4
    rows = teacher.failures()
    assert len(rows) == 3 and all(r["attempts"] == 4 and r["reason"] == "http 500" for r in rows)
    u = teacher.usage_summary()
    assert u["requests_sent"] == 12 and u["retries"] == 9
    assert u["retry_reasons"] == {"malformed reply": 3, "http 500": 6}
