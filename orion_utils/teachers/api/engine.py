"""Sending the requests the cache could not answer: bounded concurrency, retries, and every reply
committed to the cache as soon as it arrives.

- At most ``concurrency`` requests are in flight. A reply is committed while its request still
  holds its slot, so at any moment at most ``concurrency`` replies are paid for and not yet on disk
  (all that a ``kill -9`` can lose).
- Each request goes through the openai client, which retries HTTP failures itself (``client``);
  what it hands back with budget left is retried here (``retry``), after a backoff spent without
  holding a slot.
- A request that still fails is recorded in the cache (reason, attempts, last error) and is sent
  again on the next run; a refused key stops the run, since every request would fail the same way.
- The key lives only in the run's client and redactor; every text from the server is redacted
  before it is stored, logged or raised.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

from ..cache import TeacherCache
from ..prompts import Completion, CompletionRequest
from .accounting import UsageLedger
from .client import attempt_log, httpx_module, make_client
from .commit import GroupCommitter
from .credentials import TeacherAPIError, read_key
from .redact import Redactor
from .replies import MalformedResponse, parse_reply
from .retry import Failure, RetryPolicy, classify

log = logging.getLogger(__name__)


class APITeacher(Protocol):
    """What the engine reads of the teacher it sends for (``teachers.api.APITeacher``, which imports this module
    when it has requests to send): its server settings, its cache, its ledger and its failures."""

    name: str
    model: str
    base_url: str
    api_key_env: Optional[str]
    concurrency: int
    timeout_s: float
    retry_policy: RetryPolicy
    cache: TeacherCache
    ledger: UsageLedger
    progress: bool
    last_failures: list[dict]


@dataclass
class Batch:
    """The requests of one ``acomplete`` call that must go to the server, and where their results go."""

    pending: dict[str, list[int]]  # cache key -> indices of the identical requests one reply answers
    bodies: list[dict]
    requests: list[CompletionRequest]
    results: list[Optional[Completion]]
    notify: Callable[[int, Optional[Completion]], None]
    kind: str  # shown on the progress bar
    cached: int  # requests of the call answered from the cache


async def send_batch(teacher: "APITeacher", batch: Batch) -> None:
    """Send every pending request of ``batch``, filling ``batch.results`` (None where a request failed).

    Raises ``MissingAPIKeyError`` before sending anything if the key is not set, and
    ``TeacherAPIError`` (with no error chain that could hold the key) if the server refuses it."""
    sender = _BatchSender(teacher, batch, *_open_client(teacher))
    try:
        await sender.run()
    finally:
        await sender.close()
    sender.raise_fatal()


def _open_client(teacher: "APITeacher") -> tuple[Any, Redactor]:
    """The run's client and redactor: the key is read here and kept only inside those two."""
    secret = read_key(teacher.api_key_env)
    client = make_client(
        secret,
        teacher.base_url,
        timeout_s=teacher.timeout_s,
        concurrency=teacher.concurrency,
        max_retries=teacher.retry_policy.max_retries,
        max_retry_after_s=teacher.retry_policy.max_retry_after_s,
    )
    return client, Redactor(secret)


class _BatchSender:
    """One run over a batch: the workers, the send slots, the group committer and the progress bar."""

    def __init__(self, teacher: "APITeacher", batch: Batch, client: Any, redact: Redactor):
        self.teacher, self.batch = teacher, batch
        self.client, self.redact = client, redact
        self.slots = asyncio.Semaphore(teacher.concurrency)
        self.committer = GroupCommitter(teacher.cache)
        self.succeeded = 0  # requests of this batch answered by the server
        self.fatal: Optional[TeacherAPIError] = None
        desc = f"{teacher.name} {batch.kind}".strip()
        self.pbar = _progress_bar(len(batch.pending), desc, teacher.progress)
        self.pbar.set_postfix(self._postfix(), refresh=False)

    async def run(self) -> None:
        todo = list(self.batch.pending.items())
        todo.reverse()  # pop() from the end: sent in the order of the requests

        async def worker() -> None:
            while todo and self.fatal is None:
                await self._answer(*todo.pop())

        # More workers than send slots: a worker waiting out a backoff does not hold a slot.
        tasks = [asyncio.ensure_future(worker()) for _ in range(min(len(todo), self.teacher.concurrency * 4))]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        """Wait for the commits in progress, then close the progress bar and the client."""
        await self.committer.close()
        self.pbar.close()
        try:
            await self.client.close()
        except Exception:  # pragma: no cover - closing must not mask the real outcome
            pass

    def raise_fatal(self) -> None:
        if self.fatal is not None:
            fatal, self.fatal = self.fatal, None
            fatal.__context__ = fatal.__cause__ = None
            raise fatal

    # -- one request ---------------------------------------------------------------------------

    async def _answer(self, key: str, idxs: list[int]) -> None:
        """Send one request and hand its outcome to every identical request it answers."""
        first = idxs[0]
        completion = await self._send(key, self.batch.bodies[first], self.batch.requests[first])
        for i in idxs:
            self.batch.results[i] = completion
            self.batch.notify(i, completion)
        self.pbar.update(1)
        self.pbar.set_postfix(self._postfix(), refresh=False)

    async def _send(self, key: str, body: dict, request: CompletionRequest) -> Optional[Completion]:
        """The request until it succeeds, fails for good or the run stops; None unless it succeeded."""
        attempts, t_start = 0, time.monotonic()
        while self.fatal is None:
            async with self.slots:
                if self.fatal is not None:
                    return None
                retries_left = self.teacher.retry_policy.max_retries - attempts
                completion, error, n = await self._call(body, retries_left)
                attempts += n
                if completion is not None:
                    await self._commit(key, body, request, completion, attempts, t_start)
            if completion is not None:
                self.succeeded += 1
                self.teacher.ledger.reply(completion.usage)
                return completion
            wait = self._after_failure(key, request, error, attempts)
            error = None  # no unredacted text left in this frame for debuggers and tracebacks
            if wait is None:
                return None
            await asyncio.sleep(wait)
        return None

    async def _call(
        self, body: dict, retries_left: int
    ) -> tuple[Optional[Completion], Optional[Exception], int]:
        """One call of the client, its own retries included: (redacted completion or None, the error
        or None, the number of attempts it made)."""
        # The client's generic POST: its auth, base URL, timeouts, retries and error types, our own
        # JSON body and parsing (the typed ``chat.completions.create`` re-validates every message
        # against its TypedDicts, ~2 ms of CPU a request, and would reject unknown reply shapes).
        with attempt_log() as outcomes:
            try:
                response = await self.client.post(
                    "/chat/completions",
                    cast_to=httpx_module().Response,
                    body=body,
                    options={"max_retries": retries_left},
                )
                completion, error = self._read(response), None
            except Exception as exc:  # noqa: BLE001 - classified by the caller
                completion, error = None, exc
        ledger = self.teacher.ledger
        ledger.requests_sent += len(outcomes)
        for reason in outcomes[:-1]:  # every attempt but the last was retried by the client
            ledger.retry(reason)
        return completion, error, max(1, len(outcomes))

    def _read(self, response: Any) -> Completion:
        """The reply as a redacted Completion; MalformedResponse if it is not usable."""
        text = response.text
        try:
            data = json.loads(text)
        except ValueError:
            raise MalformedResponse(
                f"reply is not valid JSON ({len(text)} chars: {self.redact(text)[:80]!r})"
            ) from None
        c = parse_reply(data)
        r = self.redact
        return Completion(r(c.thinking), r(c.solution), c.usage, r(c.finish_reason), r.json(c.meta))

    async def _commit(
        self, key: str, body: dict, request: CompletionRequest, c: Completion, attempts: int, t_start: float
    ) -> None:
        """Store the reply durably; an error here (disk full?) stops the run loudly."""
        await self.committer.commit(
            dict(
                key=key,
                model=self.teacher.model,
                request=self.redact.json(body),
                thinking=c.thinking,
                solution=c.solution,
                usage=c.usage,
                finish_reason=c.finish_reason,
                kind=request.kind,
                problem_id=request.problem_id,
                sample_index=request.sample_index,
                meta=c.meta,
                attempts=attempts,
                latency_s=round(time.monotonic() - t_start, 3),
                served_model=c.meta.get("served_model", ""),
            )
        )

    # -- failures ------------------------------------------------------------------------------

    def _after_failure(
        self, key: str, request: CompletionRequest, error: Exception, attempts: int
    ) -> Optional[float]:
        """Seconds to wait before sending the request again, or None: it is recorded as failed (or
        the run stops)."""
        failure = classify(error)
        # redact the whole text, then cut (a cut first could leave a piece of the key)
        failure = failure._replace(detail=self.redact(failure.detail)[:500])
        if failure.reason.startswith("unexpected"):
            log.warning("unexpected error while handling a reply: %s: %s", failure.reason, failure.detail)
        if isinstance(error, MalformedResponse) and error.usage:
            # a provider may bill for an unusable reply
            self.teacher.ledger.reply(error.usage, discarded=True)
        if failure.is_auth and not self.succeeded:
            # the key is wrong (or missing): every request would fail the same way
            self.fatal = self._refused(failure)
            self._record_failure(key, request, failure, attempts)
            return None
        if failure.is_auth:
            failure = failure._replace(retryable=True)  # the same key worked in this run: a transient refusal
        policy = self.teacher.retry_policy
        failure = policy.within_wait_limit(failure)
        if not failure.retryable or attempts > policy.max_retries:
            self._record_failure(key, request, failure, attempts)
            return None
        self.teacher.ledger.retry(failure.reason)
        wait = policy.delay(attempts, failure.retry_after)
        log.debug(
            "%s: %s on attempt %d for %s/%s; retrying in %.2fs",
            self.teacher.name, failure.reason, attempts, request.problem_id, request.sample_index, wait,
        )
        return wait

    def _refused(self, failure: Failure) -> TeacherAPIError:
        """The error that stops the run when the server refuses the credentials."""
        t = self.teacher
        if t.api_key_env:
            return TeacherAPIError(
                f"{t.name}: the server refused the credentials ({failure.reason}: {failure.detail[:300]}); "
                f"check the key in the environment variable {t.api_key_env}"
            )
        return TeacherAPIError(f"{t.name}: the server requires a key ({failure.reason}); set api_key_env")

    def _record_failure(self, key: str, request: CompletionRequest, failure: Failure, attempts: int) -> None:
        """Account the failure, list it in ``last_failures`` and record it in the cache, from which
        it is sent again next run."""
        t = self.teacher
        t.ledger.failure(failure.reason)
        t.last_failures.append(
            {
                "problem_id": request.problem_id,
                "sample_index": request.sample_index,
                "kind": request.kind,
                "reason": failure.reason,
                "attempts": attempts,
                "error": failure.detail,
            }
        )
        t.cache.put_failure(
            key,
            model=t.model,
            reason=failure.reason,
            attempts=attempts,
            last_error=failure.detail,
            kind=request.kind,
            problem_id=request.problem_id,
            sample_index=request.sample_index,
        )

    def _postfix(self) -> dict:
        ledger = self.teacher.ledger
        post = {
            "cached": self.batch.cached,
            "ok": self.succeeded,
            "fail": len(self.teacher.last_failures),
            "retry": ledger.retries,
            "tok": ledger.prompt_tokens + ledger.completion_tokens,
        }
        if ledger.prices.any:
            post["usd"] = f"{ledger.cost_usd:.2f}"
        return post


def _progress_bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="req",
        disable=not enabled,
        mininterval=0.5,
        dynamic_ncols=True,
        smoothing=0.1,
    )
