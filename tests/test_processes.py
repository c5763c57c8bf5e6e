"""``processes.run_jobs``: the one place that runs jobs in spawned worker processes (evaluation's methods,
the runner's seeds and notebooks). Real processes; the jobs are the functions below."""
from __future__ import annotations

import os
import time

import pytest

from orion_utils.processes import run_jobs


def timed(name: str, seconds: float, fail: bool = False) -> tuple:
    """A job: sleeps, prints a line, returns (name, its process id, start, end) or raises."""
    start = time.time()
    time.sleep(seconds)
    print(f"job {name} says hello")
    if fail:
        raise ValueError(f"job {name} broke")
    return name, os.getpid(), start, time.time()


def test_results_come_back_by_name_in_the_order_given(capsys):
    jobs = {"slow": ("slow", 2.0), "fast": ("fast", 0.0), "middle": ("middle", 1.0)}  # finish in another order
    results = run_jobs(timed, jobs, workers=3, capture=True, label="t")
    assert list(results) == ["slow", "fast", "middle"] and [r[0] for r in results.values()] == list(jobs)
    assert len({r[1] for r in results.values()} | {os.getpid()}) == 4  # each in its own process, not this one
    printed = capsys.readouterr().out
    for name in jobs:  # what a job printed is shown here, before the line saying it finished
        assert printed.index(f"job {name} says hello") < printed.index(f"{name} finished")
    assert "(3/3)" in printed


def test_an_error_names_its_job_after_the_others_finish(capsys):
    jobs = {"a": ("a", 1.0), "b": ("b", 0.0, True), "c": ("c", 0.0)}
    with pytest.raises(ValueError, match="job b broke") as caught:
        run_jobs(timed, jobs, workers=2, keep_going=True, capture=True, label="t")
    assert any("job 'b' failed" in note for note in caught.value.__notes__)
    printed = capsys.readouterr().out
    assert "[t] " in printed and "b failed after" in printed and "ValueError: job b broke" in printed
    assert "a finished" in printed and "c finished" in printed  # the others ran to the end
    # without keep_going nothing new starts after a failure: c (third, 2 workers) is never run
    with pytest.raises(ValueError) as caught:
        run_jobs(timed, jobs, workers=2, label="t")
    assert any("not run: c" in note for note in caught.value.__notes__)


def test_a_job_starts_when_the_jobs_it_needs_have_finished():
    jobs = {"first": ("first", 0.5), "second": ("second", 0.0), "beside": ("beside", 0.5), "last": ("last", 0.0)}
    needs = {"second": ["first"], "last": ["second", "beside", "not a job"]}
    results = run_jobs(timed, jobs, workers=2, needs=needs)
    start, end = {n: r[2] for n, r in results.items()}, {n: r[3] for n, r in results.items()}
    assert start["second"] >= end["first"] and start["last"] >= max(end["second"], end["beside"])
    # a job whose upstream failed never starts, even with keep_going
    jobs["first"] = ("first", 0.0, True)
    with pytest.raises(ValueError) as caught:
        run_jobs(timed, jobs, workers=2, needs=needs, keep_going=True)
    assert any("not run: second, last" in note for note in caught.value.__notes__)


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="workers"):
        run_jobs(timed, {"a": ("a", 0.0)}, workers=0)
