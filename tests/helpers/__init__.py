"""Helpers for the tests and the benchmarks: a local OpenAI-compatible server with fault injection
(``openai_server``) and arithmetic problems it can solve (``problems``).

They live with the tests, not in the package: users never need them. pytest puts ``tests/`` on
``sys.path`` (``from helpers import FakeOpenAIServer``); a script outside ``tests/`` adds it itself.
"""

from .openai_server import ALL_FAULTS, DEFAULT_FAULTS, FakeOpenAIServer, solve_arithmetic
from .problems import arithmetic_problems

__all__ = ["FakeOpenAIServer", "DEFAULT_FAULTS", "ALL_FAULTS", "solve_arithmetic", "arithmetic_problems"]
