"""The worker pool: math-verify runs in persistent subprocesses that can be killed on a timeout.

math-verify's built-in timeouts use ``signal.alarm`` (main thread only); they are disabled.
Instead the sympy-heavy step runs in a pool of persistent worker subprocesses
(``subprocess.Popen`` of this interpreter running :mod:`.worker`, talking JSON lines over pipes),
so it works from any thread, from daemonic worker processes (which may not use
``multiprocessing`` children) and after ``fork``. The caller waits for the reply (a queue fed by a
reader thread) up to its deadline; on expiry the worker is killed (SIGKILL) and
:class:`WorkerTimeout` is raised. Two workers are kept started (:data:`SPARE_WORKERS`), and a
killed one is replaced in the background, so the next pair does not wait for a restart. Starting a
worker (importing sympy, about 1-3 s, once per worker) is not charged to the caller's deadline but
is itself bounded by :data:`STARTUP_TIMEOUT_S`. A thread cannot be a fallback (sympy's big-integer
arithmetic holds the GIL, so even ``join(timeout)`` would hang): where no subprocess can be
started, :class:`WorkerFailed` is raised (logged once) and starting is retried after a minute.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from .worker import BOOT

STARTUP_TIMEOUT_S = 60.0  # starting one worker (imports sympy + math-verify); not part of timeout_s
MAX_WORKERS = max(2, min(8, os.cpu_count() or 2))
SPARE_WORKERS = 2  # kept started: while one is killed and restarted, the other serves


class WorkerTimeout(Exception):
    """The caller's deadline passed before a worker answered (the worker was killed)."""


class WorkerFailed(Exception):
    """No worker could be started, or one died or reported an error."""



class _Worker:
    """One worker subprocess: started (waiting for its "ready" line), asked, killed."""

    def __init__(self) -> None:
        pkg_parent = str(Path(__file__).resolve().parents[2])
        paths = json.dumps([pkg_parent] + [p for p in sys.path if isinstance(p, str)])
        env = dict(os.environ)
        env.setdefault("PYTHONWARNINGS", "ignore")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", BOOT, paths],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            bufsize=0,
            env=env,
            close_fds=True,
        )
        self.pid_owner = os.getpid()
        # a reader thread turns the worker's replies into a queue: waiting with a timeout then
        # works on every platform (select() does not on Windows pipes) and from any thread
        self.replies: queue.Queue = queue.Queue()
        out, replies = self.proc.stdout, self.replies

        def reader() -> None:
            with contextlib.suppress(Exception):
                for line in iter(out.readline, b""):
                    replies.put(line)
            replies.put(None)

        threading.Thread(target=reader, daemon=True, name="orion-grading-reader").start()
        try:
            msg = self._read_line(time.monotonic() + STARTUP_TIMEOUT_S)
        except BaseException:
            self.kill()
            raise
        if not msg.get("ready"):
            self.kill()
            raise WorkerFailed("worker did not start")

    def _read_line(self, deadline: float) -> dict:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WorkerTimeout()
        try:
            line = self.replies.get(timeout=remaining)
        except queue.Empty:
            raise WorkerTimeout() from None
        if line is None:
            raise WorkerFailed("worker exited")
        return json.loads(line)

    def call(self, golds: list[str], preds: list[str], deadline: float) -> bool:
        data = (json.dumps({"g": golds, "p": preds}) + "\n").encode("utf-8")
        fd = self.proc.stdin.fileno()
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        except OSError as exc:
            raise WorkerFailed(str(exc))
        reply = self._read_line(deadline)
        if "err" in reply:
            raise WorkerFailed(reply["err"])
        return bool(reply["ok"])

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=2)
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(Exception):
                f.close()


class _Pool:
    """Worker subprocesses shared by all threads. Workers are started by background threads (so a
    replacement for a killed worker warms up while the caller already has its "timeout" answer);
    callers wait for an idle one."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.idle: list[_Worker] = []
        self.all: set[_Worker] = set()
        self.n = 0  # started or starting
        self.starting = 0
        self.failures = 0  # consecutive failed starts
        self.max = MAX_WORKERS
        self.broken = False  # no subprocess could be started here (retried after a minute)
        self.broken_at = 0.0

    def _spawn_bg(self) -> None:  # with self.cond held; self.n already counts the new worker
        self.starting += 1

        def run() -> None:
            try:
                w: _Worker | None = _Worker()
            except BaseException:  # noqa: BLE001
                w = None
            with self.cond:
                self.starting -= 1
                if w is None:
                    self.n -= 1
                    self.failures += 1
                    if self.failures >= 2:
                        self.broken, self.broken_at = True, time.monotonic()
                else:
                    self.failures = 0
                    self.all.add(w)
                    self.idle.append(w)
                self.cond.notify_all()

        threading.Thread(target=run, daemon=True, name="orion-grading-start").start()

    def prestart(self, k: int = 1) -> None:
        with self.cond:
            while self.n < min(k, self.max) and not self.broken:
                self.n += 1
                self._spawn_bg()

    def acquire(self, deadline: float) -> tuple[_Worker, float]:
        """An idle worker, and the seconds spent waiting for workers to start (which are not
        charged to the caller's timeout; bounded by STARTUP_TIMEOUT_S)."""
        excluded = 0.0
        with self.cond:
            while True:
                if self.broken and time.monotonic() - self.broken_at > 60.0:
                    self.broken, self.failures = False, 0  # try again
                if self.broken:
                    raise WorkerFailed("cannot start worker subprocesses")
                if self.idle:
                    return self.idle.pop(), excluded
                if self.starting == 0 and self.n < self.max:
                    self.n += 1
                    self._spawn_bg()
                if self.starting > 0:
                    if excluded > STARTUP_TIMEOUT_S:
                        raise WorkerTimeout()
                    t = time.monotonic()
                    self.cond.wait(0.5)
                    excluded += time.monotonic() - t
                    continue
                remaining = deadline + excluded - time.monotonic()
                if remaining <= 0:
                    raise WorkerTimeout()
                self.cond.wait(remaining)

    def release(self, w: _Worker, healthy: bool) -> None:
        if not healthy:
            w.kill()
        with self.cond:
            if healthy:
                self.idle.append(w)
            else:
                self.all.discard(w)
                self.n -= 1
                if self.n < SPARE_WORKERS and not self.broken:  # warm a replacement up now
                    self.n += 1
                    self._spawn_bg()
            self.cond.notify_all()

    def shutdown(self) -> None:
        with self.cond:
            workers = list(self.all)
            self.all.clear()
            self.idle.clear()
            self.n = self.starting
        for w in workers:
            if w.pid_owner == os.getpid():
                w.kill()


_POOL = _Pool()


def _after_fork_in_child() -> None:
    """A forked child starts with an empty pool of its own; the parent's workers are left alone."""
    global _POOL
    old = _POOL
    _POOL = _Pool()
    for w in list(old.all):  # the parent's workers: close our copies of the pipes, never kill
        for f in (w.proc.stdin, w.proc.stdout):
            with contextlib.suppress(Exception):
                f.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(lambda: _POOL.shutdown())


_WARNED_NO_WORKER = False


def verify_in_worker(golds: list[str], preds: list[str], deadline: float) -> bool:
    """math-verify's verdict from a worker subprocess; raises WorkerTimeout or WorkerFailed."""
    global _WARNED_NO_WORKER
    for attempt in range(2):  # a worker that died between calls is replaced once
        pool = _POOL
        try:
            w, startup = pool.acquire(deadline)
        except WorkerFailed:
            if not _WARNED_NO_WORKER:
                _WARNED_NO_WORKER = True
                logging.getLogger(__name__).warning(
                    "orion_utils.grading: cannot start worker subprocesses; pairs that need "
                    "math-verify are graded reason='error' (the in-process fast path still works)"
                )
            raise
        deadline += startup
        healthy = False
        try:
            ok = w.call(golds, preds, deadline)
            healthy = True
            return ok
        except WorkerFailed:
            if attempt == 1 or time.monotonic() >= deadline:
                raise
        finally:
            pool.release(w, healthy)
    raise WorkerFailed("unreachable")


def allow_workers(n: int) -> None:
    """Let the pool grow to at least ``n`` workers (one per thread grading at a time)."""
    pool = _POOL
    with pool.cond:
        pool.max = max(pool.max, int(n))


def prestart_spares() -> None:
    """Start the spare workers in the background if they are not there yet (a no-op when they
    are, or while no subprocess can be started)."""
    pool = _POOL
    if pool.n < SPARE_WORKERS and not pool.broken:
        pool.prestart(SPARE_WORKERS)


def warm_up(n: int = 1, wait: bool = True) -> None:
    """Start ``n`` worker subprocesses now (each takes 1-3 s to import sympy) instead of on the
    first pair that needs one; with ``wait`` return once they are ready (at most STARTUP_TIMEOUT_S)."""
    allow_workers(n)
    pool = _POOL
    pool.prestart(max(1, int(n)))
    if wait:
        end = time.monotonic() + STARTUP_TIMEOUT_S
        with pool.cond:
            while pool.starting > 0 and time.monotonic() < end:
                pool.cond.wait(0.5)


def shutdown() -> None:
    """Stop all worker subprocesses (they are restarted on demand; also done at exit)."""
    _POOL.shutdown()
