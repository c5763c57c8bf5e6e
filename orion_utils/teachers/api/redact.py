"""Keeping the API key out of everything the teacher stores, logs or raises.

A server may echo the key (whole, or a piece of it in a reply it then cuts off) into an error
message or a reply; ``Redactor`` replaces it in any text before that text leaves the request path.
``sanitize_url`` strips credentials from a URL before it is logged or written to a manifest.
"""

from __future__ import annotations

from typing import Any, Optional
from urllib.parse import urlsplit, urlunsplit

from .credentials import DUMMY_KEY

REDACTED = "[REDACTED]"


class Redactor:
    """Replaces the secret with ``[REDACTED]`` in any text; holds the secret only for one run.

    Pieces of the secret are redacted too: any run of at least ``2 * _BLOCK - 1`` characters of the
    key contains one of its aligned ``_BLOCK``-character blocks, which ``str.find`` spots quickly
    even in megabytes of text, and is then widened to the whole piece. Shorter keys, and the dummy
    key of servers without authentication, are nothing to hide."""

    _BLOCK = 6

    def __init__(self, secret: Optional[str]):
        self._secret = secret if secret and secret != DUMMY_KEY and len(secret) >= self._BLOCK else None
        self._blocks: list[str] = []
        if self._secret is not None and len(self._secret) >= 2 * self._BLOCK:
            b = self._BLOCK
            self._blocks = [self._secret[i : i + b] for i in range(0, len(self._secret) - b + 1, b)]

    def __call__(self, text: Any) -> Any:
        """The text with the secret and its pieces replaced; anything that is not a string unchanged."""
        if self._secret is None or not isinstance(text, str):
            return text
        text = text.replace(self._secret, REDACTED)
        return self._redact_pieces(text) if self._blocks else text

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
        return "Redactor(<hidden>)"

    def _redact_pieces(self, text: str) -> str:
        spans = _merge(self._piece_spans(text))
        if not spans:
            return text
        out, pos = [], 0
        for lo, hi in spans:
            out += [text[pos:lo], REDACTED]
            pos = hi
        out.append(text[pos:])
        return "".join(out)

    def _piece_spans(self, text: str) -> list[tuple[int, int]]:
        """(start, end) of every piece of the secret that contains one of its blocks."""
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
        return spans


def _merge(spans: list[tuple[int, int]]) -> list[list[int]]:
    """Overlapping or touching spans joined, in order."""
    merged: list[list[int]] = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return merged


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
