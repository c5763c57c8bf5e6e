"""Running the teacher's async request path from synchronous code, Jupyter's running loop included.

The coroutine runs on its own event loop in a worker thread; each result it emits is handed to the
caller's thread as it arrives, so the caller grades while later requests are still in flight.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any, Awaitable, Callable, Iterator, TypeVar

T = TypeVar("T")
Emit = Callable[[T], None]


def iter_in_thread(start: Callable[[Emit], Awaitable[Any]], name: str = "api-teacher") -> Iterator[T]:
    """Yields every item the coroutine ``start(emit)`` passes to ``emit``, then re-raises its error.

    If the caller stops early (Ctrl-C, an exception, or it drops the iterator), the coroutine is
    cancelled and its thread joined before control returns."""
    items: queue.SimpleQueue = queue.SimpleQueue()
    done = object()
    box: dict = {}
    thread = threading.Thread(target=_run_loop, args=(start, items.put, done, box), name=name, daemon=True)
    thread.start()
    finished = False
    try:
        while True:
            try:
                item = items.get(timeout=0.25)
            except queue.Empty:
                continue
            if item is done:
                finished = True
                break
            yield item
    finally:
        if not finished:
            _cancel(box)
        thread.join()
    if "error" in box:
        raise box["error"]


def _run_loop(start: Callable[[Emit], Awaitable[Any]], put: Emit, done: object, box: dict) -> None:
    """The worker thread: a fresh event loop running ``start(put)``; ``done`` is put last, always."""
    loop = asyncio.new_event_loop()
    try:
        box["loop"] = loop
        box["task"] = loop.create_task(start(put))
        loop.run_until_complete(box["task"])
    except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
        box["error"] = exc
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()
            put(done)


def _cancel(box: dict) -> None:
    """Cancel the coroutine from the caller's thread (committed replies stay cached)."""
    loop, task = box.get("loop"), box.get("task")
    if loop is not None and task is not None:
        try:
            loop.call_soon_threadsafe(task.cancel)
        except RuntimeError:  # the loop already closed
            pass
