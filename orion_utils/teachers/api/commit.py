"""Committing replies to the cache off the event loop, a burst of replies in one transaction.

With ``synchronous=FULL`` every commit costs an fsync (milliseconds), and 32 replies arriving
together would otherwise queue behind each other; all replies waiting at that moment share one.
"""

from __future__ import annotations

import asyncio
from typing import Optional

from ..cache import TeacherCache


class GroupCommitter:
    """``commit(row)`` returns once the row is durably stored in the cache."""

    def __init__(self, cache: TeacherCache):
        self._cache = cache
        self._pending: list[tuple[dict, asyncio.Future]] = []
        self._task: Optional[asyncio.Task] = None

    async def commit(self, row: dict) -> None:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((row, future))
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._drain())
        # shield: if the waiting request is cancelled, its reply is still stored
        await asyncio.shield(future)

    async def close(self) -> None:
        """Wait until every reply handed to ``commit`` is stored."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await asyncio.to_thread(self._cache.put_successes, [row for row, _ in batch])
            except BaseException as exc:  # noqa: BLE001 - every waiter learns about it
                _settle(batch, exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
            else:
                _settle(batch, None)


def _settle(batch: list[tuple[dict, asyncio.Future]], exc: Optional[BaseException]) -> None:
    """Wake the waiters of a batch: stored, or the error that kept it from being stored."""
    for _, future in batch:
        if future.done():
            continue
        if exc is None:
            future.set_result(None)
        else:
            future.set_exception(exc)
