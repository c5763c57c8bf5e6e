"""Jobs in worker processes: the one place that starts them, collects their results and errors, and says
how far they are (``run_jobs``).

    results = run_jobs(fn, {"seed 1": (a, b), "seed 2": (c, d)}, workers=2, label="orion")

Each job is ``fn(*args)`` in a fresh ``spawn`` process (nothing of the parent's state leaks in; CUDA
and vLLM refuse forked children), at most ``workers`` at a time. A job with ``needs`` starts when every
job it needs that is among ``jobs`` has finished. A line says when each job finishes or fails, with the
count so far. ``capture=True``: what a job prints is shown here, in one piece, when it finishes (a
notebook does not see a worker's output).

A failure: the other running jobs finish (what they finished is kept, so a re-run resumes); with
``keep_going`` the jobs that do not need the failed one still start, otherwise nothing new starts; a
job that needs a failed one never starts. Then the first failure is raised, as the job raised it, with
a note naming the job. Results come back by job name, in the order the jobs were given.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

__all__ = ["run_jobs"]


def run_jobs(
    fn: Callable,
    jobs: Mapping[str, tuple],
    workers: int,
    *,
    needs: Mapping[str, Iterable[str]] | None = None,
    capture: bool = False,
    keep_going: bool = False,
    label: str = "jobs",
) -> dict:
    """``{name: fn(*args)}`` for ``jobs`` (``{name: args}``), run as the module docstring says."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    waiting = {name: {n for n in (needs or {}).get(name, ()) if n in jobs and n != name} for name in jobs}
    results: dict = {}
    failed: dict = {}  # name -> exception, in the order they failed
    running: dict = {}  # future -> (name, start time)
    print(f"[{label}] {len(jobs)} jobs, up to {workers} at a time in separate processes", flush=True)
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        while True:
            for name in _ready(waiting, results, failed, keep_going)[: workers - len(running)]:
                del waiting[name]
                running[pool.submit(_in_worker, fn, jobs[name], capture)] = (name, time.time())
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name, started = running.pop(future)
                _collect(future, name, started, results, failed, len(jobs), label)
    if failed:
        name, error = next(iter(failed.items()))
        skipped = [n for n in jobs if n not in results and n not in failed]
        note = f"[{label}] job {name!r} failed" + (f"; not run: {', '.join(skipped)}" if skipped else "")
        if hasattr(error, "add_note"):  # Python >= 3.11
            error.add_note(note)
        else:
            print(note, flush=True)
        raise error
    return {name: results[name] for name in jobs}


def _ready(waiting: dict, results: dict, failed: dict, keep_going: bool) -> list:
    """The waiting jobs that may start now, in the order given."""
    if failed and not keep_going:
        return []
    return [name for name, upstream in waiting.items() if upstream <= results.keys()]


def _collect(future, name: str, started: float, results: dict, failed: dict, total: int, label: str) -> None:
    """A finished job's output shown, its result or error kept, and one progress line."""
    try:
        printed, result, error = future.result()
    except Exception as exc:  # noqa: BLE001 - the worker died or its result could not be sent back
        printed, result, error = "", None, exc
    if printed:
        print(printed, end="" if printed.endswith("\n") else "\n", flush=True)
    took = f"{time.time() - started:.0f}s"
    if error is None:
        results[name] = result
        print(f"[{label}] ({len(results) + len(failed)}/{total}) {name} finished in {took}", flush=True)
    else:
        failed[name] = error
        print(f"[{label}] ({len(results) + len(failed)}/{total}) {name} failed after {took}: "
              f"{type(error).__name__}: {error}".splitlines()[0], flush=True)


def _in_worker(fn: Callable, args: tuple, capture: bool) -> tuple:
    """In a worker: ``(what it printed if captured, fn(*args), None)``, or ``(printed, None, the exception)``."""
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed) if capture else contextlib.nullcontext():
        try:
            result = fn(*args)
        except Exception as exc:  # noqa: BLE001 - handed to the parent, which raises it
            return printed.getvalue(), None, exc
    return printed.getvalue(), result, None
