"""What the teacher's requests cost: requests, retries, failures, tokens and USD, over its lifetime.

Teacher tokens are the expensive part of the method, so every token a provider may bill for is
counted, replies that were paid for and then discarded (malformed) included, and so is what the
cache saved.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class Prices:
    """USD per million tokens; cached input tokens cost the input price unless given."""

    input_per_m: float = 0.0
    output_per_m: float = 0.0
    cached_input_per_m: Optional[float] = None

    @property
    def cached_input(self) -> float:
        return self.input_per_m if self.cached_input_per_m is None else float(self.cached_input_per_m)

    @property
    def any(self) -> bool:
        """Whether prices were given at all (else costs are not worth showing)."""
        return bool(self.input_per_m or self.output_per_m)

    def cost(self, usage: dict) -> float:
        """USD for one reply's normalized usage (``replies.normalize_usage``)."""
        prompt = usage.get("prompt_tokens", 0)
        cached = min(_cached_tokens(usage), prompt)
        return (
            (prompt - cached) * self.input_per_m
            + cached * self.cached_input
            + usage.get("completion_tokens", 0) * self.output_per_m
        ) / 1e6


@dataclass
class UsageLedger:
    """Running totals of one teacher; ``summary()`` is the plain dict shown to users and manifests."""

    prices: Prices = field(default_factory=Prices)
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

    def reply(self, usage: dict, discarded: bool = False) -> None:
        """A reply arrived: usable (a success) or ``discarded`` (malformed, but maybe billed)."""
        if discarded:
            self.discarded_replies += 1
        else:
            self.requests_succeeded += 1
        self.prompt_tokens += usage.get("prompt_tokens", 0)
        self.completion_tokens += usage.get("completion_tokens", 0)
        self.reasoning_tokens += usage.get("reasoning_tokens", 0)
        self.cached_prompt_tokens += _cached_tokens(usage)
        self.cost_usd += self.prices.cost(usage)

    def cache_hit(self, usage: dict) -> None:
        """A request answered from the cache: nothing paid, its price saved."""
        self.cache_hits += 1
        self.cache_hit_cost_saved_usd += self.prices.cost(usage)

    def retry(self, reason: str) -> None:
        self.retries += 1
        self.retry_reasons[reason] += 1

    def failure(self, reason: str) -> None:
        """A request that failed after its last retry."""
        self.failures += 1
        self.failure_reasons[reason] += 1

    def summary(self) -> dict:
        """Totals as plain JSON: requests, cache hits, failures, tokens, cost (USD), wall time."""
        return {
            "requests_sent": self.requests_sent,
            "requests_succeeded": self.requests_succeeded,
            "cache_hits": self.cache_hits,
            "deduplicated": self.deduplicated,
            "discarded_replies": self.discarded_replies,
            "failures": self.failures,
            "retries": self.retries,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "cache_hit_cost_saved_usd": round(self.cache_hit_cost_saved_usd, 6),
            "wall_s": round(self.wall_s, 3),
            "failure_reasons": dict(self.failure_reasons),
            "retry_reasons": dict(self.retry_reasons),
        }


def run_bill(paid: list[tuple[str, dict]], stage_usages: list[dict], prices: Prices) -> dict:
    """What a run's teacher cost: ``paid``, (kind, usage) of every reply in the run's cache (each paid once,
    ``TeacherCache.paid_usage``), by kind and in total (requests, prompt and output tokens, USD at
    ``prices``); ``stage_usages``, the ``usage_summary()`` of each stage's teacher, add how many requests
    the cache answered instead and what the senders saw (attempts, failures, discarded replies)."""
    kinds: dict = {}
    for kind, usage in paid:
        row = kinds.setdefault(kind or "?", {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0})
        row["requests"] += 1
        row["prompt_tokens"] += usage.get("prompt_tokens", 0)
        row["completion_tokens"] += usage.get("completion_tokens", 0)
        row["cost_usd"] += prices.cost(usage)
    total = {k: sum(r[k] for r in kinds.values()) for k in ("requests", "prompt_tokens", "completion_tokens", "cost_usd")}
    stages = {k: sum(int(u.get(k, 0)) for u in stage_usages)
              for k in ("requests_succeeded", "cache_hits", "requests_sent", "failures", "discarded_replies")}
    return {"by_kind": kinds, "total": total, "stages": stages, "priced": prices.any}


def _cached_tokens(usage: dict) -> int:
    """Prompt tokens the provider served from its own cache (DeepSeek's or OpenAI's spelling)."""
    return usage.get("prompt_cache_hit_tokens", usage.get("cached_tokens", 0))
