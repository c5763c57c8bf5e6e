"""Why an attempt failed, whether it is worth sending again, and after how long.

Two layers retry a request, within one budget of ``max_retries + 1`` attempts. The openai client
retries what it sees as an HTTP failure (see ``client``). What it hands back with budget left is
decided here: replies that arrived but cannot be used, a refusal of a key that worked earlier in
the run, statuses the client does not retry (425), and a ``Retry-After`` longer than the client
waits for but within ``max_retry_after_s``.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional

from .replies import MalformedResponse

RETRYABLE_STATUSES = (408, 409, 425, 429)  # and every 5xx


class Failure(NamedTuple):
    """A failed attempt, classified: ``reason`` is what the accounts and the cache record."""

    reason: str  # "http 503", "timeout", "connection error", "malformed reply", "unexpected ..."
    retryable: bool
    retry_after: Optional[float]  # seconds the server asked to wait, if it did
    detail: str  # the error text, not yet redacted: redact before keeping it anywhere

    @property
    def is_auth(self) -> bool:
        """The server refused the credentials."""
        return self.reason in ("http 401", "http 403")


def parse_retry_after(headers: Any) -> Optional[float]:
    """Seconds to wait from ``retry-after-ms`` / ``Retry-After`` (seconds or an HTTP date), or None."""
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000.0)
    except (TypeError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    value = str(value).strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def classify(exc: BaseException) -> Failure:
    """The ``Failure`` behind an exception from one call of the openai client or from reading its reply."""
    import openai

    if isinstance(exc, MalformedResponse):
        return Failure("malformed reply", True, None, str(exc))
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, openai.APITimeoutError)):
        return Failure("timeout", True, None, "no complete reply within the request timeout")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retry_after = parse_retry_after(getattr(exc.response, "headers", None))
        retryable = status in RETRYABLE_STATUSES or status >= 500
        return Failure(f"http {status}", retryable, retry_after if retryable else None, str(exc.message))
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        return Failure(
            "connection error", True, None, f"{exc.message} ({type(cause).__name__ if cause else 'no cause'})"
        )
    if isinstance(exc, openai.APIResponseValidationError):
        return Failure("malformed reply", True, None, str(exc))
    if isinstance(exc, (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError)):
        # unexpected: most likely a reply we do not understand; do not pay for it again and again
        return Failure(f"unexpected {type(exc).__name__}", False, None, str(exc))
    return Failure(f"unexpected {type(exc).__name__}", True, None, str(exc))


@dataclass
class RetryPolicy:
    """The budget of attempts, the longest ``Retry-After`` waited for, and the backoff between
    the retries the teacher makes itself (exponential, full jitter)."""

    max_retries: int = 6
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    max_retry_after_s: float = 120.0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def within_wait_limit(self, failure: Failure) -> Failure:
        """The failure, made final if the server asks for a longer pause than ``max_retry_after_s``:
        never sent earlier than asked, it is recorded and sent again next run."""
        wait = failure.retry_after
        if failure.retryable and wait is not None and wait > self.max_retry_after_s:
            reason = f"{failure.reason} with Retry-After {wait:.0f}s > max_retry_after_s"
            return failure._replace(reason=reason, retryable=False)
        return failure

    def delay(self, attempts: int, retry_after: Optional[float]) -> float:
        """Seconds to wait after ``attempts`` attempts: what the server asked (a little more, never
        less), else exponential backoff with full jitter."""
        if retry_after is not None:  # at most max_retry_after_s (longer ones are not retried)
            return retry_after + self.rng.uniform(0, 0.1 * retry_after + 0.01)
        cap = min(self.backoff_max_s, self.backoff_base_s * (2 ** (attempts - 1)))
        return self.rng.uniform(0, cap)
