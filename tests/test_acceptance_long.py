"""Stage 03's acceptance on real long CoTs (R1-Distill-Qwen-32B on LIMO's problems, median ~9,000 characters):
rewrites of known kind (tests/helpers/long_rewrites.py) go through ``reflection.refine`` with the default
knobs, and each kind is accepted at its expected share: the teacher's CoT with one reflection inserted at the
wrong step (six wordings, four positions) accepted; the prompt echoed back, the wrong step quoted and declared
fine, copies, truncations (with or without a reflection before the cut) and another question's CoT rejected."""
from __future__ import annotations

import time

import pytest
from helpers.long_rewrites import EXPECTED, TRACES, Fixed, candidates, load_cases

from orion_utils.acceptance import REASONS
from orion_utils.records import Problem, StudentAttempt
from orion_utils.reflection import ReflectionConfig, refine

N_TRACES = 40


@pytest.fixture(scope="module")
def judged():
    """Every candidate's verdict, by kind: (first failed check or None, its statistics)."""
    cases = load_cases(N_TRACES, TRACES)
    assert len(cases) == N_TRACES
    by_kind = candidates(cases)
    out: dict = {}
    start = time.process_time()
    for kind, items in by_kind.items():
        problems, texts = {}, {}
        for case, text in items:
            pid = f"limo-{case.index}"
            problems[pid] = Problem(pid, case.question, case.gold)
            texts.setdefault(pid, []).append(text)
        errors = {pid: [StudentAttempt(pid, 0, next(c for c in cases if f"limo-{c.index}" == pid).wrong_attempt,
                                       None, False, "made")] for pid in problems}
        teacher = {f"limo-{c.index}": c.cot for c in cases}
        m = max(len(t) for t in texts.values())
        refs = refine(list(problems.values()), teacher, errors, Fixed(texts), ReflectionConfig(m=m, selection="first"))
        out[kind] = [c for r in refs for c in r.meta["candidates"]]
        assert len(out[kind]) == len({(c.index, t) for c, t in items})  # every candidate judged (distinct texts)
    out["cpu_s"] = time.process_time() - start
    return out


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_each_kind_is_accepted_at_its_expected_share(judged, kind):
    verdicts = judged[kind]
    lo, hi = EXPECTED[kind]
    share = sum(v["rejected"] is None for v in verdicts) / len(verdicts)
    reasons = {r: sum(v["rejected"] == r for v in verdicts) for r in (None,) + REASONS}
    assert lo <= share <= hi, f"{kind}: {share:.2f} accepted of {len(verdicts)}; {reasons}"


def test_rejections_are_named_for_what_is_wrong(judged):
    """Echoes as echoes, copies as copies, quotes left standing as uncorrected, cut CoTs as not carried on."""
    def reasons(kind):
        return {v["rejected"] for v in judged[kind]}

    assert reasons("echo") == {"echo"}
    assert reasons("copy") == {"copy"}
    uncorrected = [v["rejected"] for v in judged["uncorrected"]]
    assert uncorrected.count("uncorrected") >= 0.8 * len(uncorrected)
    assert {v["rejected"] for v in judged["truncation"]} == {"low coverage"}
    inserted = [v for v in judged["inserted"] if v["rejected"] is None]
    # what was added is a small part of the rewrite (a paragraph; or the wrong line and one), the rest is kept
    assert all(v["added_chars"] < 0.25 * len(v["text"]) and v["coverage"] >= 0.8 for v in inserted)


def test_fast_enough_for_the_fast_tier(judged):
    n = sum(len(v) for k, v in judged.items() if k != "cpu_s")
    assert judged["cpu_s"] / n < 0.05, f"{judged['cpu_s']:.1f} s of CPU for {n} candidates"
