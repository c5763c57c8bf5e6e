"""Paying the one-time import costs (openai and its SSL context, the grader) when a teacher is built,
not inside its first ``collect``, so that timing a collection measures the collection."""

from __future__ import annotations


def preload() -> None:
    from .client import shared_ssl_context  # imports openai

    shared_ssl_context()
    try:
        from ...records import Problem
        from ..base import make_trace

        make_trace(Problem(id="warm-up", question="", answer="1"), "", "\\boxed{1}", teacher="warm-up")
    except Exception:  # noqa: BLE001 - the grader is optional here; collect reports real errors
        pass
