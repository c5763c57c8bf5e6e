"""``APITeacher``: the teacher behind any OpenAI-compatible chat-completions API, as the rest of the
toolkit sees it: its settings, the request bodies (and so the cache keys), the cache lookup, the
accounts and the manifest entry. Sending is ``engine``'s job."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

from ..cache import TeacherCache, request_key
from ..prompts import (
    COLLECT_TEMPLATE,
    DEFAULT_CONTRASTIVE_DEMOS,
    Completion,
    CompletionRequest,
    PromptedTeacher,
)
from .accounting import Prices, UsageLedger
from .bridge import iter_in_thread
from .credentials import check_key_env_name, read_key
from .redact import sanitize_url
from .retry import RetryPolicy
from .preload import preload

log = logging.getLogger(__name__)


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
    cache_dir: directory of the SQLite cache (or a ``.sqlite`` path); None: in memory only. A run keeps one,
        shared by its seeds and students (``RunDir.teacher_cache``); one process at a time sends for it.
    key_seed: a run's seed, part of every cache key but never sent (``teacher.samples_per_seed``): each
        seed then pays for its own samples. None: the same request finds the same reply, whoever sends it.
    timeout_s: total time allowed for one attempt (connect + wait + read).
    max_retries: retries after the first attempt (so ``max_retries + 1`` attempts at most), those of
        the openai client (HTTP failures) and the teacher's own (unusable replies) together.
    temperature, top_p, max_tokens, seed, extra_body: sampling parameters (None: not sent); all
        are part of the cache key. ``seed`` is sent only if set (as ``seed + sample_index``).
    price_input_per_m, price_output_per_m, price_cached_input_per_m: USD per million tokens
        (cached input defaults to the input price) for ``usage_summary()['cost_usd']``.
    backoff_base_s, backoff_max_s: exponential backoff with full jitter before the retries the
        teacher makes itself; the openai client backs off on its own (0.5 s doubling up to 8 s).
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
        key_seed: Optional[int] = None,
    ):
        api_key_env = check_key_env_name(api_key_env)
        _check_limits(concurrency, max_retries, timeout_s)
        # where and how requests go
        self.base_url, self.model, self.api_key_env = base_url, model, api_key_env
        self.concurrency, self.timeout_s = int(concurrency), float(timeout_s)
        self.retry_policy = RetryPolicy(max_retries=int(max_retries), backoff_base_s=float(backoff_base_s),
                                        backoff_max_s=float(backoff_max_s), max_retry_after_s=float(max_retry_after_s))
        # what is asked (part of each request body, so of its cache key)
        self.temperature, self.top_p, self.max_tokens, self.seed = temperature, top_p, max_tokens, seed
        self.extra_body = dict(extra_body or {})
        self.key_seed = key_seed
        self.prompt_template, self.system_prompt = prompt_template, system_prompt
        self.contrastive_demos, self.rectify_include_wrong = tuple(contrastive_demos), rectify_include_wrong
        self.progress, self.name = progress, name or model
        # what is kept: replies, and what they cost
        self.cache = _open_cache(cache_dir, cache_synchronous)
        preload()
        self.ledger = UsageLedger(
            Prices(float(price_input_per_m), float(price_output_per_m), price_cached_input_per_m)
        )
        self.last_failures: list[dict] = []

    @property
    def max_retries(self) -> int:
        return self.retry_policy.max_retries

    # -- public --------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"APITeacher(model={self.model!r}, base_url={sanitize_url(self.base_url)!r}, "
            f"api_key_env={self.api_key_env!r}, concurrency={self.concurrency}, cache={self.cache!r})"
        )

    def check_key(self) -> None:
        """Raise MissingAPIKeyError now if the key's environment variable is not set."""
        read_key(self.api_key_env)

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
        return request_key(self.request_body(messages, sample_index), sample_index, self.key_seed)

    def usage_summary(self) -> dict:
        """Totals over this teacher's lifetime: requests, cache hits, failures, tokens, cost (USD)."""
        return self.ledger.summary()

    def manifest_entry(self) -> dict:
        """A plain, secret-free dict for the run manifest: configuration and usage."""
        prices = self.ledger.prices
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
                "input": prices.input_per_m,
                "cached_input": prices.cached_input,
                "output": prices.output_per_m,
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
        """Each (index, completion) in the caller's thread as it arrives, from ``acomplete`` running on
        an event loop in a worker thread (so it also works inside Jupyter's running loop). Ctrl-C or
        an error in the caller cancels the requests in flight; committed replies stay cached."""
        return iter_in_thread(lambda emit: self.acomplete(requests, on_result=lambda i, c: emit((i, c))))

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
        async with _one_sender(self.cache, self.name):  # another seed sending to this cache: wait, then read it
            results, pending = self._from_cache(requests, bodies, notify)
            self.last_failures = []
            n_cached = len(requests) - sum(len(v) for v in pending.values())
            if pending:
                from .engine import Batch, send_batch  # loads openai: importing the teacher stays light

                log.info(
                    "%s: %d requests, %d cached, %d to send", self.name, len(requests), n_cached, len(pending)
                )
                kind = "/".join(sorted({r.kind for r in requests}))
                await send_batch(self, Batch(pending, bodies, requests, results, notify, kind, n_cached))
        self.ledger.wall_s += time.monotonic() - t0
        if self.last_failures:
            self._warn_failures(len(pending))
        return results

    # -- helpers -------------------------------------------------------------------------------

    def _from_cache(
        self,
        requests: list[CompletionRequest],
        bodies: list[dict],
        notify: Callable[[int, Optional[Completion]], None],
    ) -> tuple[list[Optional[Completion]], dict[str, list[int]]]:
        """(results with the cached replies filled in, cache key -> indices of the requests to send).

        Identical requests in one batch share a key and are sent once."""
        keys = [request_key(b, r.sample_index, self.key_seed) for b, r in zip(bodies, requests, strict=True)]
        cached = self.cache.get_many(keys)
        results: list[Optional[Completion]] = [None] * len(requests)
        pending: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            row = cached.get(key)
            if row is None:
                pending.setdefault(key, []).append(i)
                continue
            served = row["served_model"] or row["meta"].get("served_model") or row["meta"].get("response_model")
            meta = {**row["meta"], **({"served_model": served} if served else {})}
            results[i] = Completion(row["thinking"], row["solution"], row["usage"], row["finish_reason"], meta)
            notify(i, results[i])
            self.ledger.cache_hit(row["usage"])
        self.ledger.deduplicated += sum(len(v) - 1 for v in pending.values())
        return results, pending

    def _warn_failures(self, n_sent: int) -> None:
        reasons = Counter(f["reason"] for f in self.last_failures)
        log.warning(
            "%s: %d of %d requests failed after %d retries (%s); they are recorded in the cache and "
            "will be sent again on the next run",
            self.name,
            len(self.last_failures),
            n_sent,
            self.max_retries,
            ", ".join(f"{r}: {n}" for r, n in reasons.most_common()),
        )


def _open_cache(cache_dir, synchronous: str) -> TeacherCache:
    """The teacher's reply cache; without ``cache_dir`` an in-memory one, said in a warning."""
    if cache_dir is None:
        log.warning("APITeacher without cache_dir: replies are kept in memory only and are paid again next run")
    return TeacherCache(cache_dir, synchronous=synchronous)


@contextlib.asynccontextmanager
async def _one_sender(cache: TeacherCache, name: str, poll_s: float = 0.5):
    """Hold the cache's sender lock (``<cache>.lock``, POSIX ``flock``) while looking up and sending: seeds run
    at once (``orion run --jobs``) share one cache, and the second waits for the first's replies instead of
    paying for the same requests. Polled, so the event loop stays free and a cancelled wait leaves no lock."""
    try:
        import fcntl
    except ImportError:  # Windows: seeds are not run at once there
        fcntl = None
    if cache.path is None or fcntl is None:
        yield
        return
    with open(cache.path.with_name(cache.path.name + ".lock"), "a") as handle:
        waited = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    log.info("%s: another process is sending to %s; waiting for its replies", name, cache.path)
                    waited = True
                await asyncio.sleep(poll_s)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_limits(concurrency: int, max_retries: int, timeout_s: float) -> None:
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
