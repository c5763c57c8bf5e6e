"""The teacher cache: keys, first-reply-wins, failures that never block, concurrency, kill -9."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from orion_utils.teachers.api import APITeacher
from orion_utils.teachers.cache import TeacherCache, request_key

REPO = Path(__file__).resolve().parents[1]
MSGS = [{"role": "user", "content": "Compute 1 + 1."}]


def _put(cache: TeacherCache, key: str, text: str = "s") -> bool:
    return cache.put_success(
        key,
        model="m",
        request={"model": "m", "messages": MSGS},
        thinking="t",
        solution=text,
        usage={"prompt_tokens": 3, "completion_tokens": 5},
        finish_reason="stop",
        kind="collect",
        problem_id="p",
        sample_index=0,
    )


def test_key_covers_model_messages_sampling_and_sample_index():
    body = {"model": "m", "messages": MSGS, "temperature": 0.6, "top_p": 0.95}
    k = request_key(body, 0)
    assert k == request_key(dict(reversed(list(body.items()))), 0)  # canonical: key order does not matter
    assert len(k) == 64
    variants = [
        ({**body, "model": "m2"}, 0),
        ({**body, "messages": [{"role": "user", "content": "Compute 1 + 2."}]}, 0),
        ({**body, "temperature": 0.7}, 0),
        ({**body, "top_p": 1.0}, 0),
        ({**body, "max_tokens": 100}, 0),
        ({**body, "seed": 1}, 0),
        ({**body, "extra": {"x": 1}}, 0),
        (body, 1),
    ]
    assert len({k} | {request_key(b, i) for b, i in variants}) == len(variants) + 1


def test_teacher_key_ignores_the_server_address_and_normalises_numbers(tmp_path):
    a = APITeacher("http://127.0.0.1:1/v1", "m", api_key_env=None, temperature=1, cache_dir=tmp_path / "a")
    b = APITeacher("http://127.0.0.1:2/v1", "m", api_key_env=None, temperature=1.0, cache_dir=tmp_path / "b")
    assert a.cache_key(MSGS, 0) == b.cache_key(MSGS, 0) != a.cache_key(MSGS, 1)
    assert "seed" not in a.request_body(MSGS)  # sent only if the user sets it
    c = APITeacher(
        "http://x/v1", "m", api_key_env=None, seed=7, extra_body={"top_k": 20}, cache_dir=tmp_path / "c"
    )
    assert c.request_body(MSGS)["seed"] == 7 and c.request_body(MSGS)["top_k"] == 20


def test_roundtrip_first_reply_wins_and_failures_never_block(tmp_path):
    cache = TeacherCache(tmp_path)
    assert cache.path == tmp_path / "teacher_cache.sqlite"
    cache.put_failure("k1", model="m", reason="http 500", attempts=3, last_error="boom")
    cache.put_failure("k1", model="m", reason="timeout", attempts=2, last_error="slow")
    [row] = cache.failures()
    assert (row["reason"], row["attempts"], row["runs"], row["last_error"]) == ("timeout", 5, 2, "slow")
    assert cache.get("k1") is None  # a failure is not a cached reply: the request is sent again
    assert _put(cache, "k1", "first") is True
    assert _put(cache, "k1", "second") is False  # one row per key; the first reply is kept
    assert cache.get("k1")["solution"] == "first" and cache.get("k1")["usage"]["completion_tokens"] == 5
    assert cache.failures() == [] and cache.count() == 1
    cache.close()
    reopened = TeacherCache(tmp_path / "teacher_cache.sqlite")
    assert reopened.get_many(["k1", "nope"]).keys() == {"k1"}
    assert reopened.integrity_check() == "ok"
    mode = sqlite3.connect(reopened.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_concurrent_writers_tasks_and_threads(tmp_path):
    cache = TeacherCache(tmp_path)

    async def many():
        await asyncio.gather(*(asyncio.to_thread(_put, cache, f"a{i}") for i in range(100)))

    asyncio.run(many())
    threads = [
        threading.Thread(target=lambda j=j: [_put(cache, f"t{j}-{i}") for i in range(25)]) for j in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.count() == 200 and cache.integrity_check() == "ok"


_WRITER = textwrap.dedent(
    """
    import sys
    from orion_utils.teachers.cache import TeacherCache
    cache, prefix = TeacherCache(sys.argv[1]), sys.argv[2]
    for i in range(100000):
        cache.put_success(f"{prefix}{i}", model="m", request={"i": i}, thinking="t" * 2000, solution=f"s{i}",
                          usage={}, finish_reason="stop")
        print(i, flush=True)  # printed only after the commit returned
    """
)


def test_kill9_while_writing_never_corrupts_or_loses_a_commit(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for run in range(2):
        child = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "cache"), f"r{run}-"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        first = child.stdout.readline()
        assert first.strip().isdigit(), child.stderr.read()
        time.sleep(0.3 + 0.2 * run)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        acknowledged = [int(line) for line in [first] + child.stdout.read().split() if line.strip().isdigit()]
        cache = TeacherCache(tmp_path / "cache")
        assert cache.integrity_check() == "ok"
        stored = cache.get_many([f"r{run}-{i}" for i in acknowledged])
        assert len(stored) == len(acknowledged)  # every acknowledged commit survived
        assert stored[f"r{run}-{acknowledged[-1]}"]["solution"] == f"s{acknowledged[-1]}"
        n_run = cache._conn.execute(
            "SELECT COUNT(*) FROM responses WHERE key LIKE ?", (f"r{run}-%",)
        ).fetchone()[0]
        assert n_run in (len(acknowledged), len(acknowledged) + 1)  # + one committed, not yet printed
        cache.close()
