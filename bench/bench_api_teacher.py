"""Benchmark: APITeacher throughput at concurrency 32 vs 1 against the local test server (200 ms latency).

    python bench/bench_api_teacher.py [--requests 64] [--latency 0.2] [--high 32] [--low 1] [--in-process]

The server runs in its own process (as a real server would; ``--in-process`` puts it in a thread
of this one). Each setting collects the same number of distinct problems through
``APITeacher.collect`` (requests, cache commits and grading) with a fresh cache, so every request
is really sent; a one-request warm-up first pays the one-time costs for both. The ratio of
requests/s is measured in this one run. Target: >= 20x.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER_SCRIPT = ROOT / "tests" / "helpers" / "openai_server.py"
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the package, and the test helpers (the local server)

from helpers import FakeOpenAIServer, arithmetic_problems  # noqa: E402

from orion_utils.teachers.api import APITeacher  # noqa: E402


def run_collect(base_url: str, concurrency: int, n: int, cache_dir: Path, seed: int) -> float:
    problems = arithmetic_problems(n, seed=seed, prefix=f"c{concurrency}s{seed}")
    teacher = APITeacher(
        base_url,
        "fake-reasoner",
        api_key_env=None,
        concurrency=concurrency,
        cache_dir=cache_dir,
        timeout_s=30,
        progress=False,
    )
    t0 = time.perf_counter()
    traces = teacher.collect(problems)
    elapsed = time.perf_counter() - t0
    usage = teacher.usage_summary()
    teacher.close()
    assert len(traces) == n and usage["requests_sent"] == n and usage["cache_hits"] == 0, usage
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--high", type=int, default=32)
    parser.add_argument("--low", type=int, default=1)
    parser.add_argument("--target", type=float, default=20.0)
    parser.add_argument(
        "--in-process", action="store_true", help="run the server in a thread of this process"
    )
    args = parser.parse_args()

    server = proc = None
    if args.in_process:
        server = FakeOpenAIServer(latency_s=args.latency).start()
        base_url = server.base_url
    else:
        proc = subprocess.Popen(
            [sys.executable, str(SERVER_SCRIPT), "--latency", str(args.latency)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        base_url = proc.stdout.readline().split()[-1]
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for concurrency in (args.low, args.high):
                run_collect(base_url, concurrency, 1, Path(tmp) / f"warm-c{concurrency}", seed=1)
                seconds = run_collect(
                    base_url, concurrency, args.requests, Path(tmp) / f"c{concurrency}", seed=0
                )
                rows.append({"concurrency": concurrency, "seconds": seconds, "rps": args.requests / seconds})
    finally:
        if server is not None:
            server.stop()
        if proc is not None:
            proc.terminate()
            proc.wait()

    where = "in this process" if args.in_process else "in its own process"
    print(
        f"APITeacher.collect vs local OpenAI-compatible server ({where}), "
        f"latency {args.latency * 1000:.0f} ms, "
        f"{args.requests} requests each, fresh caches"
    )
    print(f"{'concurrency':>11} {'seconds':>8} {'requests/s':>11}")
    for r in rows:
        print(f"{r['concurrency']:>11} {r['seconds']:>8.2f} {r['rps']:>11.2f}")
    ratio = rows[1]["rps"] / rows[0]["rps"]
    ideal = min(args.high, args.requests) / args.low
    verdict = "PASS" if ratio >= args.target else "FAIL"
    print(
        f"speed-up concurrency {args.high} vs {args.low}: {ratio:.1f}x (ideal {ideal:.0f}x; target >= "
        f"{args.target:.0f}x) {verdict}"
    )
    sys.exit(0 if ratio >= args.target else 1)


if __name__ == "__main__":
    main()
