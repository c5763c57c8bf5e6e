"""Arithmetic problems whose gold answers the local test server (``openai_server``) computes."""

from __future__ import annotations

import random

from orion_utils.records import Problem


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
