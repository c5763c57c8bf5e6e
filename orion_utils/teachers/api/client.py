"""The openai client of one run, and what its HTTP client adds to every attempt.

The client's own loop retries connection errors, timeouts and 408/409/429/5xx replies within
``max_retries``, with its own backoff (0.5 s doubling up to 8 s, less up to 25 % jitter) or the
server's ``Retry-After`` when that is at most 120 s. Three things it cannot do are added in
``send`` of its HTTP client, which the client calls once per attempt:

- a limit on the whole attempt: httpx limits each network read, so a reply that trickles in a
  byte at a time would never time out;
- a record of each attempt's outcome (``attempt_log``): the client retries without telling why,
  and the teacher accounts for every attempt and every retry with its reason;
- a reply whose ``Retry-After`` exceeds ``max_retry_after_s`` is marked ``x-should-retry: false``,
  which the client obeys, so it never waits longer than the teacher allows.

Importing this module imports openai, which takes a while: the teacher imports it only to send.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import importlib
from typing import Any, Iterator, Optional

import openai

from .retry import parse_retry_after

_ATTEMPTS: contextvars.ContextVar[Optional[list[str]]] = contextvars.ContextVar("api_attempts", default=None)


@functools.lru_cache(maxsize=1)
def httpx_module() -> Any:
    """The httpx package the installed openai client is built on (httpx, or httpx2 in recent versions)."""
    return importlib.import_module(openai.DefaultAsyncHttpxClient.__mro__[1].__module__.split(".")[0])


@functools.lru_cache(maxsize=1)
def shared_ssl_context() -> Any:
    """One SSL context per process: building one costs about 0.1 s, too much for every run."""
    httpx = httpx_module()
    return httpx.create_ssl_context() if hasattr(httpx, "create_ssl_context") else True


@contextlib.contextmanager
def attempt_log() -> Iterator[list[str]]:
    """Collects the outcome of every HTTP attempt made inside the block by this task, in order:
    "" for a reply that arrived (whatever it holds), else why it failed ("http 503", "timeout",
    "connection error"). All but the last outcome of one client call are the client's retries."""
    outcomes: list[str] = []
    token = _ATTEMPTS.set(outcomes)
    try:
        yield outcomes
    finally:
        _ATTEMPTS.reset(token)


class _AttemptHttpClient(openai.DefaultAsyncHttpxClient):
    """The openai client's default HTTP client, bounding, recording and vetting each attempt."""

    def __init__(self, *, attempt_timeout_s: float, max_retry_after_s: float, **kwargs: Any):
        super().__init__(**kwargs)
        self._attempt_timeout_s = attempt_timeout_s
        self._max_retry_after_s = max_retry_after_s

    async def send(self, request: Any, **kwargs: Any) -> Any:
        httpx = httpx_module()
        outcomes = _ATTEMPTS.get()
        outcomes = outcomes if outcomes is not None else []
        try:
            response = await asyncio.wait_for(super().send(request, **kwargs), self._attempt_timeout_s)
        except asyncio.TimeoutError:
            outcomes.append("timeout")  # raised as httpx's own timeout: the client retries it as one
            raise httpx.ReadTimeout("no complete reply within the request timeout", request=request) from None
        except Exception as exc:
            outcomes.append("timeout" if isinstance(exc, httpx.TimeoutException) else "connection error")
            raise
        outcomes.append(f"http {response.status_code}" if response.is_error else "")
        self._stop_retries_past_wait_limit(response)
        return response

    def _stop_retries_past_wait_limit(self, response: Any) -> None:
        wait = parse_retry_after(response.headers)
        if response.is_error and wait is not None and wait > self._max_retry_after_s:
            response.headers["x-should-retry"] = "false"


def make_client(
    secret: str,
    base_url: str,
    *,
    timeout_s: float,
    concurrency: int,
    max_retries: int,
    max_retry_after_s: float,
) -> openai.AsyncOpenAI:
    """An AsyncOpenAI client for one run: its retries, a connection pool the size of the concurrency
    (httpcore scans its connections on every request), attempts bounded by ``timeout_s``."""
    httpx = httpx_module()
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 30.0))
    http_client = _AttemptHttpClient(
        attempt_timeout_s=timeout_s,
        max_retry_after_s=max_retry_after_s,
        verify=shared_ssl_context(),
        limits=httpx.Limits(max_connections=2 * concurrency + 4, max_keepalive_connections=concurrency + 4),
        timeout=timeout,
    )
    return openai.AsyncOpenAI(
        api_key=secret, base_url=base_url, timeout=timeout, http_client=http_client, max_retries=max_retries
    )
