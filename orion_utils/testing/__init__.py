"""Test helpers: a local OpenAI-compatible server with fault injection, and tiny arithmetic problems.

``FakeOpenAIServer`` and friends are loaded on first use, so that
``python -m orion_utils.testing.openai_server`` runs the module once, cleanly.
"""

from __future__ import annotations

import random
from typing import Any

from ..records import Problem

_SERVER_NAMES = ("FakeOpenAIServer", "DEFAULT_FAULTS", "ALL_FAULTS", "solve_arithmetic")


def __getattr__(name: str) -> Any:
    if name in _SERVER_NAMES:
        from . import openai_server

        return getattr(openai_server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def arithmetic_problems(n: int, seed: int = 0, prefix: str = "arith") -> list[Problem]:
    """n distinct problems like "Compute 12 + 7 * 3." whose gold answers the fake server can solve."""
    rng = random.Random(seed)
    problems: list[Problem] = []
    seen: set[str] = set()
    while len(problems) < n:
        a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
        op1, op2 = rng.choice("+-"), rng.choice("+-*")
        expr = f"{a} {op1} {b} {op2} {c}"
        if expr in seen:
            continue
        seen.add(expr)
        answer = eval(expr)  # noqa: S307 - our own digits and operators
        problems.append(
            Problem(
                id=f"{prefix}-{len(problems):05d}",
                question=f"Compute {expr}.",
                answer=str(answer),
                source="fake",
            )
        )
    return problems


__all__ = [*_SERVER_NAMES, "arithmetic_problems"]
