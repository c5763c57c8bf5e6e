"""Reading a chat-completion reply: the thinking, the solution, the finish reason, the token usage, and
the model the server says served it (``served_model_check`` compares it with the one asked for).

The thinking comes from the message's ``reasoning_content`` (DeepSeek) or ``reasoning`` (recent
vLLM) field, else from ``<think>`` tags in the content (``base.split_thinking``). A reply that
cannot be used raises ``MalformedResponse``, which the request path retries.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from ..base import split_thinking
from ..prompts import Completion

_USAGE_COUNTS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "prompt_cache_hit_tokens",
    "prompt_cache_miss_tokens",
)


class MalformedResponse(Exception):
    """A reply that is not a usable chat completion (bad JSON, no choices, empty content ...).

    ``usage`` holds the token counts the reply reported, if any: a provider may bill for them.
    """

    def __init__(self, message: str, usage: Optional[dict] = None):
        super().__init__(message)
        self.usage = usage or {}


def parse_reply(data: Any) -> Completion:
    """A chat-completion JSON object -> Completion; raises MalformedResponse if it is not usable.

    Empty content counts as malformed unless the reply was cut by the length limit after some
    thinking (then it is a real, if unfinished, reply: re-sending would pay for the same again).
    """
    message, finish_reason = _first_message(data)
    content = _text_of(message.get("content"))
    thinking, solution = split_thinking(content, _reasoning_of(message))
    if not solution.strip() and not (finish_reason == "length" and thinking.strip()):
        raise MalformedResponse(
            "empty content" + (f" (finish_reason={finish_reason})" if finish_reason else ""),
            usage=normalize_usage(data.get("usage")),
        )
    meta = {f"response_{name}": data[name][:200] for name in ("id", "system_fingerprint")
            if isinstance(data.get(name), str)}
    if isinstance(data.get("model"), str):
        meta["served_model"] = data["model"][:200]  # the model the server says served it
    return Completion(
        thinking=thinking,
        solution=solution,
        usage=normalize_usage(data.get("usage")),
        finish_reason=finish_reason,
        meta=meta,
    )


def normalize_usage(usage: Any) -> dict:
    """Token counts from a reply's ``usage`` (OpenAI, DeepSeek and vLLM spellings); {} if absent.

    Counts that are not finite non-negative numbers are left out: they must not discard a good reply."""
    if not isinstance(usage, dict):
        return {}
    out = {name: _count(usage.get(name)) for name in _USAGE_COUNTS}
    out = {name: n for name, n in out.items() if n is not None}
    details = usage.get("completion_tokens_details")
    if isinstance(details, dict) and _count(details.get("reasoning_tokens")) is not None:
        out["reasoning_tokens"] = _count(details.get("reasoning_tokens"))
    pdetails = usage.get("prompt_tokens_details")
    if isinstance(pdetails, dict) and _count(pdetails.get("cached_tokens")) is not None:
        out["cached_tokens"] = _count(pdetails.get("cached_tokens"))
    return out


def _first_message(data: Any) -> tuple[dict, Optional[str]]:
    """(message, finish_reason) of the first choice; MalformedResponse when there is none."""
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
    finish_reason = choice.get("finish_reason")
    return choice["message"], finish_reason if isinstance(finish_reason, str) else None


def _reasoning_of(message: dict) -> Optional[str]:
    """The thinking a server puts in a field of its own (DeepSeek, vLLM), if any."""
    for name in ("reasoning_content", "reasoning"):
        value = message.get(name)
        if isinstance(value, str) and value.strip():
            return value
    return None


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
    """A token count, or None for anything that is not a finite non-negative number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value) if math.isfinite(value) and value >= 0 else None


def served_model_check(configured: str, metas) -> tuple[dict, str]:
    """({served model: replies}, a warning or ''): the models the server says served the replies whose
    ``meta`` are given (their ``served_model``; replies that record none are left out), and a warning when
    any is not ``configured``, the model the profile asks for (``teacher.model``). A provider may answer a
    model id with another model (an alias moved on, a fallback route): the CoTs are then not the named
    teacher's."""
    served: dict = {}
    for meta in metas:
        name = (meta or {}).get("served_model")
        if name:
            served[name] = served.get(name, 0) + 1
    other = {m: n for m, n in served.items() if m != configured}
    if not other:
        return served, ""
    total = sum(served.values())
    named = ", ".join(f"{m!r} ({n})" for m, n in sorted(other.items(), key=lambda x: -x[1]))
    return served, (f"WARNING: {sum(other.values())} of {total} teacher replies were served by another model "
                    f"than the configured {configured!r}: {named}")
