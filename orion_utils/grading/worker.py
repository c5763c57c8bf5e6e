"""The worker subprocess: math-verify's verdict on pairs read as JSON lines from stdin.

math-verify (gold parsed first, ``verify(gold, pred)``, LaTeX extraction only -- its
plain-expression extraction calls ``parse_expr``, i.e. ``eval``) decides what the fast path leaves
open (equations, matrices, functions, unions, ``\\pm`` ...). Its own ``signal.alarm`` timeouts
are turned off (``parsing_timeout=None``, ``timeout_seconds=None``): the parent kills a worker
that takes too long (:mod:`.pool`). One request ``{"g": [golds], "p": [preds]}`` per line, one
reply ``{"ok": bool}`` or ``{"err": name}`` per line; the ``{"ready": true}`` line says math-verify
is imported.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

# The command a worker runs: the parent's sys.path (notebooks may extend it at run time) first.
BOOT = (
    "import sys, json; sys.path[:0] = json.loads(sys.argv[1]); "
    "from orion_utils.grading.worker import main; main()"
)


def _math_verify_comparer() -> Callable[[list[str], list[str]], bool]:
    """Import math-verify with its signal timeouts off and its warnings silenced; return
    ``compare(golds, preds)``: True if some pred verifies against the golds."""
    import math_verify.grader as mv_grader
    import math_verify.parser as mv_parser
    from math_verify import LatexExtractionConfig, parse, verify

    mv_parser.TIMEOUT_WARNING_SHOWN = True  # we disable its timeouts on purpose
    mv_grader.TIMEOUT_WARNING_SHOWN = True
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.ERROR)
    cfg = [LatexExtractionConfig(boxed_match_priority=0)]
    cache: dict[str, Any] = {}

    def parse_one(s: str):
        if s in cache:
            return cache[s]
        out = parse("\\boxed{" + s + "}", cfg, parsing_timeout=None)
        if len(cache) > 512:
            cache.clear()
        cache[s] = out
        return out

    def compare(golds: list[str], preds: list[str]) -> bool:
        gparsed = [x for g in golds for x in parse_one(g)]
        if not gparsed:
            return False
        for p in preds:
            pp = parse_one(p)
            if pp and verify(gparsed, pp, timeout_seconds=None):
                return True
        return False

    return compare


def main() -> None:
    """Serve requests until stdin closes (runs in the subprocess)."""
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # stray prints must not corrupt the protocol
    compare = _math_verify_comparer()
    proto.write('{"ready": true}\n')
    proto.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            ok = compare(req["g"], req["p"])
            reply = {"ok": bool(ok)}
        except BaseException as exc:  # noqa: BLE001 - report, keep serving
            reply = {"err": type(exc).__name__}
        proto.write(json.dumps(reply) + "\n")
        proto.flush()
