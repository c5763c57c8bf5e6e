"""Grading of final answers: extract the answer a response commits to and compare it with the gold.

``grade(response, gold)`` returns a :class:`GradeResult` with ``.correct``, a ``.reason`` (one of
:data:`REASONS`) and the extracted ``.predicted`` answer. It never raises and never hangs.

One job per module:

* :mod:`.extract` -- the final answer a response commits to: its box, else its prose;
* :mod:`.boxes` -- reading the last ``\\boxed{}`` / ``\\fbox{}`` of a text;
* :mod:`.prose` -- which sentence of a response's ending states its answer (no box);
* :mod:`.claim` -- the answer one sentence claims ("the answer is X", "the total is X");
* :mod:`.values` -- one value read out of prose (a formula, a number with units, a list, a name);
* :mod:`.sentences` -- the sentences of a text's ending, formulas kept whole;
* :mod:`.canonical` -- safe string transforms that put an answer in one spelling;
* :mod:`.evaluator` -- a safe recursive-descent evaluator of closed arithmetic (no ``eval``);
* :mod:`.compare` -- the fast in-process comparison that decides most pairs;
* :mod:`.worker` -- math-verify inside a subprocess, for what the fast path leaves open;
* :mod:`.pool` -- the worker subprocesses: started ahead, killed on a timeout, replaced;
* :mod:`.api` -- :func:`grade` and :func:`grade_many`, putting the steps together.
"""
from __future__ import annotations

from .api import REASONS, GradeResult, grade, grade_many
from .compare import DEFAULT_REL_TOL
from .extract import extract_answer
from .pool import STARTUP_TIMEOUT_S, shutdown, warm_up

__all__ = [
    "DEFAULT_REL_TOL",
    "REASONS",
    "STARTUP_TIMEOUT_S",
    "GradeResult",
    "extract_answer",
    "grade",
    "grade_many",
    "shutdown",
    "warm_up",
]
