"""An OpenAI-compatible API teacher (DeepSeek ``deepseek-reasoner``, a vLLM server, others).

Teacher tokens are the expensive part of the method, so this module never loses one and never
pays for one twice:

- every reply is committed to a crash-safe SQLite cache (``cache.TeacherCache``) as soon as it
  arrives; a request whose reply is cached is never sent again (re-runs cost nothing, and a
  ``kill -9`` loses only the requests in flight);
- bounded concurrency; retries with exponential backoff and full jitter on 429/5xx/timeouts/
  connection errors/malformed replies, honouring ``Retry-After``; a total per-request timeout
  (also against replies that trickle in); the ``openai`` client's own retries are off;
- requests that still fail are recorded (reason, attempts, last error) and sent again next run;
- the API key is read from the environment variable named by ``api_key_env`` only when a request
  must be sent, is held only for the duration of a run, and is redacted from everything that is
  stored, logged or raised (replies and error bodies included, in case a server echoes it).

The thinking comes from the message's ``reasoning_content`` (DeepSeek) or ``reasoning`` (recent
vLLM) field, else from ``<think>`` tags in the content (``base.split_thinking``).
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import importlib
import json
import logging
import math
import os
import queue
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union
from urllib.parse import urlsplit, urlunsplit

from .base import split_thinking
from .cache import TeacherCache, request_key
from .prompts import (
    COLLECT_TEMPLATE,
    DEFAULT_CONTRASTIVE_DEMOS,
    Completion,
    CompletionRequest,
    PromptedTeacher,
)

log = logging.getLogger(__name__)

REDACTED = "[REDACTED]"
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DUMMY_KEY = "EMPTY"  # what vLLM and most local servers accept when they run without auth


class MissingAPIKeyError(RuntimeError):
    """The environment variable that should hold the API key is not set."""


class TeacherAPIError(RuntimeError):
    """An error that makes every request fail (bad key, no permission): the run stops."""


class MalformedResponse(Exception):
    """A reply that is not a usable chat completion (bad JSON, no choices, empty content ...).

    ``usage`` holds the token counts the reply reported, if any: a provider may bill for them.
    """

    def __init__(self, message: str, usage: Optional[dict] = None):
        super().__init__(message)
        self.usage = usage or {}


# ---------------------------------------------------------------------------------------------
# small helpers


class _Redactor:
    """Replaces the secret with ``[REDACTED]`` in any text; holds the secret only for one run.

    Pieces of the secret are redacted too (a server may echo the key into a reply it then cuts
    off): any run of at least ``2 * _BLOCK - 1`` characters of the key contains one of its aligned
    ``_BLOCK``-character blocks, which ``str.find`` spots quickly even in megabytes of text, and is
    then widened to the whole piece."""

    _BLOCK = 6

    def __init__(self, secret: Optional[str]):
        self._secret = secret if secret and secret != DUMMY_KEY and len(secret) >= 6 else None
        self._blocks: list[str] = []
        if self._secret is not None and len(self._secret) >= 2 * self._BLOCK:
            b = self._BLOCK
            self._blocks = [self._secret[i : i + b] for i in range(0, len(self._secret) - b + 1, b)]

    def __call__(self, text: Any) -> Any:
        if self._secret is None or not isinstance(text, str):
            return text
        text = text.replace(self._secret, REDACTED)
        return self._redact_pieces(text) if self._blocks else text

    def _redact_pieces(self, text: str) -> str:
        secret, spans = self._secret, []
        for block in self._blocks:
            start = text.find(block)
            while start != -1:
                lo, hi = start, start + len(block)
                while lo > 0 and text[lo - 1 : hi] in secret:
                    lo -= 1
                while hi < len(text) and text[lo : hi + 1] in secret:
                    hi += 1
                spans.append((lo, hi))
                start = text.find(block, hi)
        if not spans:
            return text
        merged: list[list[int]] = []
        for lo, hi in sorted(spans):
            if merged and lo <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        out, pos = [], 0
        for lo, hi in merged:
            out += [text[pos:lo], REDACTED]
            pos = hi
        out.append(text[pos:])
        return "".join(out)

    def json(self, obj: Any) -> Any:
        """Redact every string (keys included) inside a JSON-like structure."""
        if self._secret is None:
            return obj
        if isinstance(obj, str):
            return self(obj)
        if isinstance(obj, dict):
            return {self(k): self.json(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self.json(v) for v in obj]
        return obj

    def __repr__(self) -> str:
        return "_Redactor(<hidden>)"


def sanitize_url(url: str) -> str:
    """The URL without credentials or query string (safe to log and to write to a manifest)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
    except ValueError:
        return "<unparseable url>"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


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


def _text_of(content: Any) -> str:
    """Message content as text: a string, None, or a list of {"type": "text", "text": ...} parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                raise MalformedResponse("message content is a list with a part that is not text")
        return "".join(parts)
    raise MalformedResponse(f"message content is a {type(content).__name__}, not text")


def _count(value: Any) -> Optional[int]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return int(value)


def normalize_usage(usage: Any) -> dict:
    """Token counts from a reply's ``usage`` (OpenAI, DeepSeek and vLLM spellings); {} if absent."""
    if not isinstance(usage, dict):
        return {}
    out: dict = {}
    for name in (
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "prompt_cache_hit_tokens",
        "prompt_cache_miss_tokens",
    ):
        n = _count(usage.get(name))
        if n is not None:
            out[name] = n
    details = usage.get("completion_tokens_details")
    if isinstance(details, dict) and _count(details.get("reasoning_tokens")) is not None:
        out["reasoning_tokens"] = _count(details.get("reasoning_tokens"))
    pdetails = usage.get("prompt_tokens_details")
    if isinstance(pdetails, dict) and _count(pdetails.get("cached_tokens")) is not None:
        out["cached_tokens"] = _count(pdetails.get("cached_tokens"))
    return out


def parse_reply(data: Any) -> Completion:
    """A chat-completion JSON object -> Completion; raises MalformedResponse if it is not usable.

    Empty content counts as malformed unless the reply was cut by the length limit after some
    thinking (then it is a real, if unfinished, reply: re-sending would pay for the same again).
    """
    if not isinstance(data, dict):
        raise MalformedResponse(f"reply is a JSON {type(data).__name__}, not an object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        err = data.get("error")
        if err:
            msg = err.get("message") if isinstance(err, dict) else err
            raise MalformedResponse(f"error in a 200 reply: {msg}")  # cut after redaction, by the caller
        raise MalformedResponse("reply has no choices")
    choice = choices[0]
    if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
        raise MalformedResponse("first choice has no message")
    message = choice["message"]
    content = _text_of(message.get("content"))
    reasoning = None
    for name in ("reasoning_content", "reasoning"):
        value = message.get(name)
        if isinstance(value, str) and value.strip():
            reasoning = value
            break
    finish_reason = choice.get("finish_reason")
    finish_reason = finish_reason if isinstance(finish_reason, str) else None
    thinking, solution = split_thinking(content, reasoning)
    if not solution.strip() and not (finish_reason == "length" and thinking.strip()):
        raise MalformedResponse(
            "empty content" + (f" (finish_reason={finish_reason})" if finish_reason else ""),
            usage=normalize_usage(data.get("usage")),
        )
    meta = {}
    for name in ("id", "model", "system_fingerprint"):
        if isinstance(data.get(name), str):
            meta[f"response_{name}"] = data[name][:200]
    return Completion(
        thinking=thinking,
        solution=solution,
        usage=normalize_usage(data.get("usage")),
        finish_reason=finish_reason,
        meta=meta,
    )


# ---------------------------------------------------------------------------------------------
# accounting


@dataclass
class _Stats:
    requests_sent: int = 0  # HTTP attempts (retries included)
    requests_succeeded: int = 0
    cache_hits: int = 0
    deduplicated: int = 0  # identical requests in one batch answered by one reply
    discarded_replies: int = 0  # malformed replies that reported token usage (counted in tokens and cost)
    failures: int = 0  # requests that failed after their last retry
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_prompt_tokens: int = 0
    cost_usd: float = 0.0
    cache_hit_cost_saved_usd: float = 0.0
    wall_s: float = 0.0
    failure_reasons: Counter = field(default_factory=Counter)
    retry_reasons: Counter = field(default_factory=Counter)


@dataclass
class _Run:
    """What one run needs and nobody keeps: the client (which holds the key) and the redactor."""

    client: Any = field(repr=False)
    redact: _Redactor
    pbar: Any
    send_slots: asyncio.Semaphore
    committer: "_GroupCommitter"
    cached: int = 0  # requests of this call answered from the cache
    succeeded: int = 0  # requests of this call answered by the server
    fatal: Optional[BaseException] = None


class _GroupCommitter:
    """Commits replies to the cache off the event loop, all replies waiting at that moment in one
    transaction: one fsync for a burst of replies instead of one each (with ``synchronous=FULL`` an
    fsync takes milliseconds, and 32 replies arriving together would otherwise queue behind each
    other). ``commit`` returns once the reply is durably stored."""

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
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
            else:
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)


class APITeacher(PromptedTeacher):
    """Teacher behind any OpenAI-compatible chat-completions API.

    >>> teacher = APITeacher("https://api.deepseek.com", "deepseek-reasoner", api_key_env="DEEPSEEK_API_KEY",
    ...                      concurrency=16, cache_dir=run_dir / "cache", price_input_per_m=0.55,
    ...                      price_output_per_m=2.19)            # doctest: +SKIP
    >>> traces = teacher.collect(problems, n=1)                  # doctest: +SKIP
    >>> teacher.usage_summary()                                  # doctest: +SKIP

    Parameters
    ----------
    base_url: the server's OpenAI-compatible base URL (".../v1" for vLLM).
    model: the model name sent with each request (part of the cache key).
    api_key_env: NAME of the environment variable holding the key; None (or "") for a server
        without authentication (a dummy key is sent). The key itself is never a parameter.
    concurrency: requests in flight at once.
    cache_dir: directory of the SQLite cache (or a ``.sqlite`` path); None: in memory only.
    timeout_s: total time allowed for one request (connect + wait + read).
    max_retries: retries after the first attempt (so ``max_retries + 1`` attempts at most).
    temperature, top_p, max_tokens, seed, extra_body: sampling parameters (None: not sent); all
        are part of the cache key. ``seed`` is sent only if set (as ``seed + sample_index``).
    price_input_per_m, price_output_per_m, price_cached_input_per_m: USD per million tokens
        (cached input defaults to the input price) for ``usage_summary()['cost_usd']``.
    backoff_base_s, backoff_max_s: exponential backoff with full jitter between attempts.
    max_retry_after_s: longest ``Retry-After`` waited for; a request asked to wait longer is recorded
        as failed (never sent earlier than the server asked) and sent again on the next run.
    prompt_template, system_prompt: the collection prompt (default: question + step by step/\\boxed{}).
    progress: show a tqdm bar (rate and ETA).
    name: recorded as ``TeacherTrace.teacher`` (default: the model name).
    """

    def __init__(
        self,
        base_url: str = "https://api.deepseek.com",
        model: str = "deepseek-reasoner",
        api_key_env: Optional[str] = "DEEPSEEK_API_KEY",
        concurrency: int = 8,
        cache_dir: Union[str, Path, None] = None,
        timeout_s: float = 600.0,
        max_retries: int = 6,
        *,
        temperature: Optional[float] = 0.6,
        top_p: Optional[float] = 0.95,
        max_tokens: Optional[int] = None,
        seed: Optional[int] = None,
        extra_body: Optional[dict] = None,
        price_input_per_m: float = 0.0,
        price_output_per_m: float = 0.0,
        price_cached_input_per_m: Optional[float] = None,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        max_retry_after_s: float = 120.0,
        prompt_template: str = COLLECT_TEMPLATE,
        system_prompt: Optional[str] = None,
        contrastive_demos: Sequence[dict] = DEFAULT_CONTRASTIVE_DEMOS,
        rectify_include_wrong: bool = True,
        progress: bool = True,
        name: Optional[str] = None,
        cache_synchronous: str = "FULL",
    ):
        if api_key_env == "":
            api_key_env = None
        if api_key_env is not None and (
            not isinstance(api_key_env, str) or not _ENV_NAME_RE.match(api_key_env)
        ):
            # never echo the value: it may be a key pasted in by mistake
            raise ValueError(
                "api_key_env must be the NAME of an environment variable that holds the key "
                "(e.g. 'DEEPSEEK_API_KEY'), never the key itself"
            )
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.base_url = base_url
        self.model = model
        self.api_key_env = api_key_env
        self.concurrency = int(concurrency)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.temperature = temperature
        self.top_p = top_p
        self.max_tokens = max_tokens
        self.seed = seed
        self.extra_body = dict(extra_body or {})
        self.price_input_per_m = float(price_input_per_m)
        self.price_output_per_m = float(price_output_per_m)
        self.price_cached_input_per_m = price_cached_input_per_m
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.max_retry_after_s = float(max_retry_after_s)
        self.prompt_template = prompt_template
        self.system_prompt = system_prompt
        self.contrastive_demos = tuple(contrastive_demos)
        self.rectify_include_wrong = rectify_include_wrong
        self.progress = progress
        self.name = name or model
        if cache_dir is None:
            log.warning(
                "APITeacher without cache_dir: replies are kept in memory only and are paid again next run"
            )
        self.cache = TeacherCache(cache_dir, synchronous=cache_synchronous)
        _warm_up()
        self._stats = _Stats()
        self._rng = random.Random()
        self.last_failures: list[dict] = []

    # -- public --------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"APITeacher(model={self.model!r}, base_url={sanitize_url(self.base_url)!r}, "
            f"api_key_env={self.api_key_env!r}, concurrency={self.concurrency}, cache={self.cache!r})"
        )

    def check_key(self) -> None:
        """Raise MissingAPIKeyError now if the key's environment variable is not set."""
        self._read_key()

    def sampling_params(self) -> dict:
        params = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
        }
        return {k: v for k, v in params.items() if v is not None}

    def request_body(self, messages: list[dict], sample_index: int = 0) -> dict:
        """The JSON body sent (and hashed into the cache key), without any credential.

        With a ``seed``, sample i is sent with ``seed + i`` so that n samples differ on servers
        that sample deterministically given a seed (vLLM)."""
        body: dict = {"model": self.model, "messages": messages}
        if self.temperature is not None:
            body["temperature"] = float(self.temperature)
        if self.top_p is not None:
            body["top_p"] = float(self.top_p)
        if self.max_tokens is not None:
            body["max_tokens"] = int(self.max_tokens)
        if self.seed is not None:
            body["seed"] = int(self.seed) + int(sample_index)
        for k, v in self.extra_body.items():
            body.setdefault(k, v)
        return body

    def cache_key(self, messages: list[dict], sample_index: int = 0) -> str:
        return request_key(self.request_body(messages, sample_index), sample_index)

    def usage_summary(self) -> dict:
        """Totals over this teacher's lifetime: requests, cache hits, failures, tokens, cost (USD)."""
        s = self._stats
        return {
            "requests_sent": s.requests_sent,
            "requests_succeeded": s.requests_succeeded,
            "cache_hits": s.cache_hits,
            "deduplicated": s.deduplicated,
            "discarded_replies": s.discarded_replies,
            "failures": s.failures,
            "retries": s.retries,
            "prompt_tokens": s.prompt_tokens,
            "completion_tokens": s.completion_tokens,
            "reasoning_tokens": s.reasoning_tokens,
            "cached_prompt_tokens": s.cached_prompt_tokens,
            "cost_usd": round(s.cost_usd, 6),
            "cache_hit_cost_saved_usd": round(s.cache_hit_cost_saved_usd, 6),
            "wall_s": round(s.wall_s, 3),
            "failure_reasons": dict(s.failure_reasons),
            "retry_reasons": dict(s.retry_reasons),
        }

    def manifest_entry(self) -> dict:
        """A plain, secret-free dict for the run manifest: configuration and usage."""
        return {
            "teacher": "api",
            "name": self.name,
            "model": self.model,
            "base_url": sanitize_url(self.base_url),
            "api_key_env": self.api_key_env,
            "sampling": self.sampling_params(),
            "extra_body": self.extra_body,
            "concurrency": self.concurrency,
            "timeout_s": self.timeout_s,
            "max_retries": self.max_retries,
            "prices_usd_per_m": {
                "input": self.price_input_per_m,
                "cached_input": self._cached_price(),
                "output": self.price_output_per_m,
            },
            "cache": str(self.cache.path) if self.cache.path else None,
            "usage": self.usage_summary(),
            "open_failures": len(self.cache.failures()),
        }

    def failures(self) -> list[dict]:
        """Requests that failed after their last retry and have not succeeded since (all runs)."""
        return self.cache.failures()

    def close(self) -> None:
        self.cache.close()

    # -- PromptedTeacher -----------------------------------------------------------------------

    def _complete(self, requests: Sequence[CompletionRequest]) -> list[Optional[Completion]]:
        results: list[Optional[Completion]] = [None] * len(requests)
        for i, completion in self._iter_complete(requests):
            results[i] = completion
        return results

    def _iter_complete(
        self, requests: Sequence[CompletionRequest]
    ) -> Iterator[tuple[int, Optional[Completion]]]:
        """Runs ``acomplete`` on an event loop in a worker thread (so it also works inside Jupyter's
        running loop) and yields each (index, completion) in the caller's thread as it arrives, so
        the caller grades while later requests are still in flight. Ctrl-C or an error in the
        caller cancels the requests in flight; committed replies stay cached."""
        q: queue.SimpleQueue = queue.SimpleQueue()
        done = object()
        box: dict = {}

        def target() -> None:
            loop = asyncio.new_event_loop()
            try:
                box["loop"] = loop
                box["task"] = loop.create_task(self.acomplete(requests, on_result=lambda i, c: q.put((i, c))))
                loop.run_until_complete(box["task"])
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                box["error"] = exc
            finally:
                try:
                    loop.run_until_complete(loop.shutdown_asyncgens())
                    loop.run_until_complete(loop.shutdown_default_executor())
                finally:
                    loop.close()
                    q.put(done)

        thread = threading.Thread(target=target, name="api-teacher", daemon=True)
        thread.start()
        finished = False
        try:
            while True:
                try:
                    item = q.get(timeout=0.25)
                except queue.Empty:
                    continue
                if item is done:
                    finished = True
                    break
                yield item
        finally:
            if not finished:  # the caller stopped early (Ctrl-C, an exception): cancel and wait
                loop, task = box.get("loop"), box.get("task")
                if loop is not None and task is not None:
                    try:
                        loop.call_soon_threadsafe(task.cancel)
                    except RuntimeError:  # the loop already closed
                        pass
            thread.join()
        if "error" in box:
            raise box["error"]

    async def acomplete(
        self,
        requests: Sequence[CompletionRequest],
        on_result: Optional[Callable[[int, Optional[Completion]], None]] = None,
    ) -> list[Optional[Completion]]:
        """Async core: cached replies without a request, the rest sent; None where a request failed.

        ``on_result(index, completion)`` is called once per request as soon as its outcome is known.
        """
        t0 = time.monotonic()
        notify = on_result or (lambda i, c: None)
        requests = list(requests)
        bodies = [self.request_body(r.messages, r.sample_index) for r in requests]
        keys = [request_key(b, r.sample_index) for b, r in zip(bodies, requests, strict=True)]
        cached = self.cache.get_many(keys)
        results: list[Optional[Completion]] = [None] * len(requests)
        pending: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            row = cached.get(key)
            if row is not None:
                results[i] = Completion(
                    row["thinking"], row["solution"], row["usage"], row["finish_reason"], row["meta"]
                )
                notify(i, results[i])
                self._stats.cache_hits += 1
                self._stats.cache_hit_cost_saved_usd += self._cost(row["usage"])
            else:
                pending.setdefault(key, []).append(i)
        self._stats.deduplicated += sum(len(v) - 1 for v in pending.values())
        self.last_failures = []
        kinds = sorted({r.kind for r in requests})
        if pending:
            log.info(
                "%s: %d requests, %d cached, %d to send",
                self.name,
                len(requests),
                len(requests) - sum(len(v) for v in pending.values()),
                len(pending),
            )
            await self._send_all(
                pending,
                bodies,
                requests,
                results,
                "/".join(kinds),
                notify,
                cached=len(requests) - sum(len(v) for v in pending.values()),
            )
        self._stats.wall_s += time.monotonic() - t0
        if self.last_failures:
            reasons = Counter(f["reason"] for f in self.last_failures)
            log.warning(
                "%s: %d of %d requests failed after %d retries (%s); they are recorded in the cache and "
                "will be sent again on the next run",
                self.name,
                len(self.last_failures),
                len(pending),
                self.max_retries,
                ", ".join(f"{r}: {n}" for r, n in reasons.most_common()),
            )
        return results

    # -- the request path ----------------------------------------------------------------------

    def _read_key(self) -> str:
        if self.api_key_env is None:
            return DUMMY_KEY
        value = os.environ.get(self.api_key_env)
        if not value:
            raise MissingAPIKeyError(
                f"the API key is read from the environment variable {self.api_key_env}, which is not set "
                f"(set it in the environment of the Jupyter/papermill process, e.g. "
                f"`export {self.api_key_env}=...`; never pass the key as a parameter)"
            )
        return value

    def _make_client(self, secret: str) -> Any:
        import openai

        httpx = _httpx_module()
        timeout = httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 30.0))
        http_client = openai.DefaultAsyncHttpxClient(
            verify=_shared_ssl_context(),  # built once per process (it costs ~0.1 s), not per run
            # a pool the size of the concurrency: httpcore scans its connections on every request
            limits=httpx.Limits(
                max_connections=2 * self.concurrency + 4, max_keepalive_connections=self.concurrency + 4
            ),
            timeout=timeout,
        )
        return openai.AsyncOpenAI(
            api_key=secret, base_url=self.base_url, timeout=timeout, http_client=http_client, max_retries=0
        )  # our retries are the only ones

    async def _send_all(
        self,
        pending: dict[str, list[int]],
        bodies: list[dict],
        requests: list[CompletionRequest],
        results: list[Optional[Completion]],
        kind: str,
        notify: Callable[[int, Optional[Completion]], None],
        cached: int = 0,
    ) -> None:
        secret = self._read_key()
        redact = _Redactor(secret)
        client = self._make_client(secret)
        del secret
        pbar = _progress_bar(len(pending), f"{self.name} {kind}".strip(), self.progress)
        run = _Run(
            client=client,
            redact=redact,
            pbar=pbar,
            send_slots=asyncio.Semaphore(self.concurrency),
            committer=_GroupCommitter(self.cache),
            cached=cached,
        )
        pbar.set_postfix(self._postfix(run), refresh=False)
        todo = list(pending.items())
        todo.reverse()  # pop() from the end: sent in the order of the requests

        async def worker() -> None:
            while todo and run.fatal is None:
                key, idxs = todo.pop()
                first = idxs[0]
                completion = await self._request(run, key, bodies[first], requests[first])
                for i in idxs:
                    results[i] = completion
                    notify(i, completion)
                pbar.update(1)
                pbar.set_postfix(self._postfix(run), refresh=False)

        # More workers than send slots: a worker waiting out a backoff does not hold a slot.
        n_workers = min(len(todo), self.concurrency * 4)
        tasks = [asyncio.ensure_future(worker()) for _ in range(n_workers)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await run.committer.close()
            pbar.close()
            try:
                await client.close()
            except Exception:  # pragma: no cover - closing must not mask the real outcome
                pass
        if run.fatal is not None:
            fatal, run.fatal = run.fatal, None
            fatal.__context__ = fatal.__cause__ = None
            raise fatal

    async def _request(
        self, run: _Run, key: str, body: dict, request: CompletionRequest
    ) -> Optional[Completion]:
        attempts = 0
        reason, last_error = "", ""
        t_start = time.monotonic()
        while run.fatal is None:
            attempts += 1
            completion: Optional[Completion] = None
            try:
                async with run.send_slots:
                    if run.fatal is not None:
                        return None
                    self._stats.requests_sent += 1
                    completion = await asyncio.wait_for(self._send_once(run, body), timeout=self.timeout_s)
                    # Committed while still holding the slot: at any moment at most `concurrency`
                    # replies are paid for and not yet on disk (what a kill -9 can lose).
                    completion = self._redacted(run.redact, completion)
                    await run.committer.commit(
                        dict(
                            key=key,
                            model=self.model,
                            request=run.redact.json(body),
                            thinking=completion.thinking,
                            solution=completion.solution,
                            usage=completion.usage,
                            finish_reason=completion.finish_reason,
                            kind=request.kind,
                            problem_id=request.problem_id,
                            sample_index=request.sample_index,
                            meta=completion.meta,
                            attempts=attempts,
                            latency_s=round(time.monotonic() - t_start, 3),
                        )
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is classified below
                if completion is not None:
                    raise  # the reply arrived but could not be stored (disk full?): stop loudly
                reason, retryable, retry_after, detail = _classify(exc)
                # redact the whole text, then cut (a cut first could leave a piece of the key)
                last_error = run.redact(detail)[:500]
                detail = None  # noqa: F841 - no unredacted text left in this frame for debuggers/tracebacks
                if reason.startswith("unexpected"):
                    log.warning("unexpected error while handling a reply: %s: %s", reason, last_error)
                if isinstance(exc, MalformedResponse) and exc.usage:
                    self._account(exc.usage, discarded=True)  # a provider may bill for an unusable reply
                if reason in ("http 401", "http 403") and run.succeeded:
                    retryable = True  # the same key worked in this run: a transient refusal
                elif reason in ("http 401", "http 403"):
                    # the key is wrong (or missing): every request would fail the same way
                    run.fatal = TeacherAPIError(
                        f"{self.name}: the server refused the credentials "
                        f"({reason}: {last_error[:300]}); check "
                        f"the key in the environment variable {self.api_key_env}"
                        if self.api_key_env
                        else f"{self.name}: the server requires a key ({reason}); set api_key_env"
                    )
                    self._record_failure(key, request, reason, attempts, last_error)
                    return None  # raised by _send_all, outside any handler: no error chain holding the key
                if retryable and retry_after is not None and retry_after > self.max_retry_after_s:
                    # the server asks for a longer pause than we may wait: never send earlier than
                    # asked; recorded, and sent again next run
                    retryable = False
                    reason = f"{reason} with Retry-After {retry_after:.0f}s > max_retry_after_s"
                if not retryable or attempts > self.max_retries:
                    self._record_failure(key, request, reason, attempts, last_error)
                    return None
                self._stats.retries += 1
                self._stats.retry_reasons[reason] += 1
                delay = self._delay(attempts, retry_after)
                log.debug(
                    "%s: %s on attempt %d for %s/%s; retrying in %.2fs",
                    self.name,
                    reason,
                    attempts,
                    request.problem_id,
                    request.sample_index,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            run.succeeded += 1
            self._account(completion.usage)
            return completion
        return None

    async def _send_once(self, run: _Run, body: dict) -> Completion:
        # The client's generic POST: its auth, base URL, timeouts and error types, our own JSON
        # body and parsing (the typed ``chat.completions.create`` re-validates every message
        # against its TypedDicts, ~2 ms of CPU a request, and would reject unknown reply shapes).
        response = await run.client.post(
            "/chat/completions",
            cast_to=_httpx_module().Response,
            body=body,
            options={"timeout": self.timeout_s},
        )
        text = response.text
        try:
            data = json.loads(text)
        except ValueError:
            raise MalformedResponse(
                f"reply is not valid JSON ({len(text)} chars: {run.redact(text)[:80]!r})"
            ) from None
        return parse_reply(data)

    # -- accounting and policy ---------------------------------------------------------------

    def _delay(self, attempt: int, retry_after: Optional[float]) -> float:
        if retry_after is not None:  # at most max_retry_after_s (longer ones are not retried)
            return retry_after + self._rng.uniform(0, 0.1 * retry_after + 0.01)  # never earlier than asked
        cap = min(self.backoff_max_s, self.backoff_base_s * (2 ** (attempt - 1)))
        return self._rng.uniform(0, cap)  # full jitter

    def _cached_price(self) -> float:
        return (
            self.price_input_per_m
            if self.price_cached_input_per_m is None
            else float(self.price_cached_input_per_m)
        )

    def _cost(self, usage: dict) -> float:
        prompt = usage.get("prompt_tokens", 0)
        cached = usage.get("prompt_cache_hit_tokens", usage.get("cached_tokens", 0))
        cached = min(cached, prompt)
        return (
            (prompt - cached) * self.price_input_per_m
            + cached * self._cached_price()
            + usage.get("completion_tokens", 0) * self.price_output_per_m
        ) / 1e6

    def _account(self, usage: dict, discarded: bool = False) -> None:
        s = self._stats
        if discarded:
            s.discarded_replies += 1
        else:
            s.requests_succeeded += 1
        s.prompt_tokens += usage.get("prompt_tokens", 0)
        s.completion_tokens += usage.get("completion_tokens", 0)
        s.reasoning_tokens += usage.get("reasoning_tokens", 0)
        s.cached_prompt_tokens += usage.get("prompt_cache_hit_tokens", usage.get("cached_tokens", 0))
        s.cost_usd += self._cost(usage)

    def _record_failure(
        self, key: str, request: CompletionRequest, reason: str, attempts: int, error: str
    ) -> None:
        self._stats.failures += 1
        self._stats.failure_reasons[reason] += 1
        self.last_failures.append(
            {
                "problem_id": request.problem_id,
                "sample_index": request.sample_index,
                "kind": request.kind,
                "reason": reason,
                "attempts": attempts,
                "error": error,
            }
        )
        self.cache.put_failure(
            key,
            model=self.model,
            reason=reason,
            attempts=attempts,
            last_error=error,
            kind=request.kind,
            problem_id=request.problem_id,
            sample_index=request.sample_index,
        )

    @staticmethod
    def _redacted(redact: _Redactor, c: Completion) -> Completion:
        return Completion(
            redact(c.thinking), redact(c.solution), c.usage, redact(c.finish_reason), redact.json(c.meta)
        )

    def _postfix(self, run: _Run) -> dict:
        s = self._stats
        post = {
            "cached": run.cached,
            "ok": run.succeeded,
            "fail": len(self.last_failures),
            "retry": s.retries,
            "tok": s.prompt_tokens + s.completion_tokens,
        }
        if self.price_input_per_m or self.price_output_per_m:
            post["usd"] = f"{s.cost_usd:.2f}"
        return post


def _classify(exc: BaseException) -> tuple[str, bool, Optional[float], str]:
    """(reason, retryable, retry_after_s, detail) for a failed attempt."""
    import openai

    if isinstance(exc, MalformedResponse):
        return "malformed reply", True, None, str(exc)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, openai.APITimeoutError)):
        return "timeout", True, None, "no complete reply within the request timeout"
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retry_after = parse_retry_after(getattr(exc.response, "headers", None))
        retryable = status in (408, 409, 425, 429) or status >= 500
        return f"http {status}", retryable, retry_after if retryable else None, str(exc.message)
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        return (
            "connection error",
            True,
            None,
            f"{exc.message} ({type(cause).__name__ if cause else 'no cause'})",
        )
    if isinstance(exc, openai.APIResponseValidationError):
        return "malformed reply", True, None, str(exc)
    if isinstance(exc, (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError)):
        # unexpected: most likely a reply we do not understand; do not pay for it again and again
        return f"unexpected {type(exc).__name__}", False, None, str(exc)
    return f"unexpected {type(exc).__name__}", True, None, str(exc)


@functools.lru_cache(maxsize=1)
def _httpx_module() -> Any:
    """The httpx package the installed openai client is built on (httpx, or httpx2 in recent versions)."""
    import openai

    return importlib.import_module(openai.DefaultAsyncHttpxClient.__mro__[1].__module__.split(".")[0])


@functools.lru_cache(maxsize=1)
def _shared_ssl_context() -> Any:
    httpx = _httpx_module()
    return httpx.create_ssl_context() if hasattr(httpx, "create_ssl_context") else True


def _warm_up() -> None:
    """Pay the one-time import costs (openai, the grader) when the teacher is built, not inside the
    first ``collect``, so that timing a collection measures the collection."""
    _shared_ssl_context()  # imports openai too

    try:
        from ..records import Problem
        from .base import make_trace

        make_trace(Problem(id="warm-up", question="", answer="1"), "", "\\boxed{1}", teacher="warm-up")
    except Exception:  # noqa: BLE001 - the grader is optional here; collect reports real errors
        pass


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


__all__ = [
    "APITeacher",
    "MissingAPIKeyError",
    "TeacherAPIError",
    "MalformedResponse",
    "parse_reply",
    "parse_retry_after",
    "normalize_usage",
    "sanitize_url",
]
