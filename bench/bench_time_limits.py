"""The time limits the toolkit promises, measured: each case's seconds against its limit.

The tests check what these cases return; how fast they return is measured here, where a loaded
machine makes a number slow instead of a test red:

* grading never hangs: every hostile response of ``tests/test_grading.py`` (``HOSTILE``) is graded
  within its timeout plus slack; a real timeout kills the worker in time; without subprocesses the
  pairs that need math-verify are an error at once; the answer of a 1 MB response is found in < 0.5 s;
* the API teacher (against the local test server): a 1.8 MB text redacted in < 1 s; a stalled or
  dripping reply abandoned after ``timeout_s``; a Retry-After above ``max_retry_after_s`` not waited for.

EDIT's key-token alignment has its own script (``bench_edit_alignment.py``).
Run: ``python bench/bench_time_limits.py`` (exit 1 when a case is over its limit).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the package, the test helpers and the hostile inputs

from helpers import FakeOpenAIServer, arithmetic_problems  # noqa: E402
from test_grading import HOSTILE, SLACK, TIMEOUT  # noqa: E402

from orion_utils import grading  # noqa: E402
from orion_utils.grading import extract_answer, grade  # noqa: E402
from orion_utils.teachers.api import REDACTED, APITeacher, Redactor  # noqa: E402

SECRET = "sk-test-SECRET123"


def timed(limit_s: float, fn) -> tuple[float, bool]:
    start = time.perf_counter()
    ok = bool(fn())
    seconds = time.perf_counter() - start
    return seconds, ok and seconds < limit_s


def grading_cases():
    """(name, limit in seconds, setup, case): ``case`` returns whether the result was the right one."""
    for name, response in HOSTILE:
        yield (f"grade hostile: {name}", TIMEOUT + SLACK, lambda: grading.warm_up(2),
               lambda r=response: not grade(r, "5", timeout_s=TIMEOUT).correct)
    yield ("grade: a real 1 s timeout", 1.0 + SLACK, lambda: grading.warm_up(2),
           lambda: grade("\\boxed{10^{10^{10^{10}}} + x}", "5", timeout_s=1.0).reason == "timeout")
    big = "x" * 1_000_000 + "\\boxed{5}"
    yield "extract_answer: 1 MB response", 0.5, None, lambda: extract_answer(big) == "5"


def without_subprocesses() -> bool:
    """The pairs that need math-verify are an error at once where no subprocess can start."""
    pool = grading.pool

    class NoSpawn(pool._Worker):
        def __init__(self):
            raise OSError("spawning disabled")

    saved = pool._Worker, pool._POOL
    pool._Worker, pool._POOL = NoSpawn, pool._Pool()
    try:
        return (grade("\\boxed{\\sin(x)}", "\\sin x", timeout_s=10.0).reason == "error"
                and grade("\\boxed{10^{10^{10^{10}}} + x}", "5", timeout_s=1.0).reason == "error")
    finally:
        pool._Worker, pool._POOL = saved


def teacher(server: FakeOpenAIServer, cache_dir: Path, **kw) -> APITeacher:
    settings = {"api_key_env": None, "concurrency": 8, "timeout_s": 2.0, "max_retries": 6, "backoff_base_s": 0.02,
                "backoff_max_s": 0.2, "progress": False}
    return APITeacher(server.base_url, "fake-reasoner", cache_dir=cache_dir, **{**settings, **kw})


def stalled_reply(fault: str, tmp: Path) -> tuple[float, bool]:
    problems = arithmetic_problems(2)
    with FakeOpenAIServer(fault_fn=lambda body, attempt: fault if attempt == 0 else None, stall_s=20.0) as server:
        t = teacher(server, tmp / fault, timeout_s=0.5)
        return timed(3.0, lambda: len(t.collect(problems)) == 2)


def long_retry_after(seconds: int, tmp: Path) -> tuple[float, bool]:
    problems = arithmetic_problems(2)
    with FakeOpenAIServer(fault_fn=lambda body, attempt: "429" if attempt == 0 else None,
                          retry_after_s=seconds) as server:
        t = teacher(server, tmp / f"retry{seconds}", max_retry_after_s=5)
        return timed(3.0, lambda: t.collect(problems) == [])


def main() -> int:
    rows = []
    for name, limit, setup, case in grading_cases():
        if setup is not None:
            setup()
        rows.append((name, limit, *timed(limit, case)))
    rows.append(("grade without subprocesses", 5.0, *timed(5.0, without_subprocesses)))
    redact = Redactor(SECRET)
    big = "The answer is 42. " * 100_000 + SECRET[3:20]
    rows.append(("redact a 1.8 MB text", 1.0, *timed(1.0, lambda: redact(big).endswith(REDACTED))))
    with tempfile.TemporaryDirectory() as tmp:
        for fault, what in (("stall", "a stalled"), ("drip", "a dripping")):
            rows.append((f"API teacher: {what} reply, timeout_s=0.5", 3.0, *stalled_reply(fault, Path(tmp))))
        for seconds in (3600, 30):
            rows.append((f"API teacher: Retry-After {seconds} s > max 5 s", 3.0,
                         *long_retry_after(seconds, Path(tmp))))
    for name, limit, seconds, ok in rows:
        print(f"  {name[:60]:<60} {seconds:7.3f} s  (limit {limit:.1f} s)  {'OK' if ok else 'OVER OR WRONG'}")
    over = [r for r in rows if not r[3]]
    print(f"RESULT cases={len(rows)} over_or_wrong={len(over)}")
    return 1 if over else 0


if __name__ == "__main__":
    raise SystemExit(main())
