"""Reading a chat-completion reply: the thinking, the solution, the finish reason and the token usage.

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
    meta = {f"response_{name}": data[name][:200] for name in ("id", "model", "system_fingerprint")
            if isinstance(data.get(name), str)}
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
