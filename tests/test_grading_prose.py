"""Final answers stated in prose, without a ``\\boxed{}``: the grader reads the concluding claim.

Real long chain-of-thought endings (``tests/fixtures/grading/prose_endings.jsonl``): short excerpts
of DeepSeek-R1-Distill-Qwen-32B's LIMO traces and of DeepSeek-R1's thinking, both from the shared
data folder (``data/SOURCES.md``), and two MATH500 reference solutions. Each record says how its
text was built from the source (``built``): boxes replaced by their content, or the trace cut at
its "**Final Answer**" marker so that it ends in the model's own prose. The same transforms are
applied to all 291 LIMO traces when the shared folder is present.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from orion_utils.grading import extract_answer, grade, grade_many

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "grading" / "prose_endings.jsonl"
LIMO = Path(__file__).resolve().parents[2] / "shared" / "data" / "traces" / "r1_distill_qwen32b_limo.jsonl"

ENDINGS = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize("rec", ENDINGS, ids=[f"{Path(r['source']).stem}-{r['id']}" for r in ENDINGS])
def test_real_prose_endings_are_graded_correct(rec):
    res = grade(rec["text"], rec["gold"], timeout_s=10.0)
    assert res.correct and res.reason == "correct", (res, rec["gold"], rec["text"][-200:])


@pytest.mark.parametrize(
    "response, expected",
    [
        # the value written inline in the concluding sentence
        ("Therefore, I think the value of \\( t \\) is 23.", "23"),
        ("So, calculations seem correct. Therefore, the mean of \\( \\mathcal{S} \\) is 651.", "651"),
        ("Therefore, the probability is 43/64, so p+q=43+64=107.", "107"),
        # a named answer: a person, a multiple-choice option
        ("The answer is (C)", "(C)"),
        ("Only one of them lied about the time.\n\nSo the culprit is Alice.", "Alice"),
        ("Checking each option against the graph, the correct option is (B).", "(B)"),
        ("Therefore, Evelyn is our answer.", "Evelyn"),
        # a trailing list is one answer, not its last number
        ("Both factors vanish there, so the possible values of n are 2, 3, and 5.", "2, 3, 5"),
        # closing remarks after the claim, a verdict, a chained claim
        ("Therefore, |C|=588.\n\nSo, yeah, that's the thought process.", "588"),
        ("Hence, the least integer greater than this would be 0.\n\nSo I think the answer is correct.", "0"),
        ("Therefore, the answer is 25/162, so m + n is 187.", "187"),
        ("I think 177 is the correct answer.", "177"),
        ("Thus, the answer is boxed 40.", "40"),
        # a final-answer heading without a box
        ("so p + q = 2 + 9 = 11.\n\n**Final Answer**\n11", "11"),
        ("**Final Answer**\nThe number of real numbers \\(a\\) is 10.", "10"),
    ],
)
def test_concluding_claim_extraction(response, expected):
    assert extract_answer(response) == expected


@pytest.mark.parametrize(
    "response, gold",
    [
        ("We add the three prices.\n\nSo the total is 42 dollars.", "42"),
        ("Therefore, the answer is $\\frac{3}{4}$.", "\\frac34"),
        ("Both factors vanish there, so the possible values of n are 2, 3, and 5.", "2,3,5"),
        ("Only one of them lied about the time.\n\nSo the culprit is Alice.", "\\text{Alice}"),
        ("Checking each option against the graph, the correct option is (B).", "\\text{(B)}"),
        # last sentences of GSM8K training solutions (the "#### N" line dropped): money is no formula
        ("Hence, Mr. Benson paid a total of $400 + $76 = $476.", "476"),
        ("Thus, she will get $40-$28=$12 in change.", "12"),
        ("Hence, a machine that Sue oversees can produce 30 cans x 16 = 480 cans of soda in 8 hours.", "480"),
        ("Tammy caught the ball 42 / 3 + 16 = 14 + 16 = 30 times.", "30"),
    ],
)
def test_concluding_claim_grades(response, gold):
    assert grade(response, gold, timeout_s=10.0).correct


@pytest.mark.parametrize(
    "response, expected",
    [
        # a box still wins over any prose
        ("The total is $\\boxed{41}$.\n\nSo the total is 42 dollars.", "41"),
        ("**Final Answer**\nThe smallest prime that fits the criteria is \\boxed{29}.", "29"),
        # a cue stays the answer when a check follows it
        ("So the answer is 12.\n\nWe can double-check: 3 * 4 = 12 and 12 / 2 = 6.", "12"),
        # only the concluding claim counts, not a number anywhere
        ("We found x = 4 earlier.\n\nThe function is increasing on the whole interval.", None),
        ("So far we have 3 apples and 4 pears, so the total is", None),  # cut off: no answer
        ("I computed 7 of them.\n\nLet me now think about whether the sequence", None),
        ("The answer is consistent with the constraints.", None),
        # a claim taken back, or a check announced, is no conclusion
        ("So the total is 42.\n\nWait, that can't be right.", None),
        ("So the total is 42.\n\nLet me just double-check the second step.", None),
        # a bare value as the last paragraph counts only after a finished one, and not a piece of a
        # computation
        ("So the count is 14.\n\n14", "14"),
        ("Compute the square first:\n\n68^", None),
        ("We compute the product 8*9", None),
    ],
)
def test_prose_rule_is_bounded_to_the_concluding_claim(response, expected):
    assert extract_answer(response) == expected


def _unbox(text: str) -> str:
    """``\\boxed{X}`` -> ``X`` (braces balanced), as a model that writes no box would put it."""
    out, i = [], 0
    while (j := text.find("\\boxed", i)) >= 0:
        k = text.find("{", j)
        depth, m = 0, k
        while m < len(text):
            depth += {"{": 1, "}": -1}.get(text[m], 0)
            if depth == 0:
                break
            m += 1
        out += [text[i:j], text[k + 1:m]]
        i = m + 1
    return "".join(out + [text[i:]])


@pytest.mark.skipif(not LIMO.is_file(), reason=f"shared LIMO traces not found ({LIMO})")
def test_limo_traces_without_boxes():
    """All 291 real long CoTs, graded with their boxes written as plain text, and cut at their
    "**Final Answer**" marker (the reasoning alone, ending in the model's prose)."""
    recs = [json.loads(line) for line in LIMO.read_text(encoding="utf-8").splitlines() if line.strip()]
    whole = [(_unbox(r["solution"]).rstrip(), r["gold_answer"]) for r in recs]
    thinking = [(_unbox(r["solution"].rsplit("**Final Answer**", 1)[0]).rstrip(), r["gold_answer"])
                for r in recs]
    boxed = grade_many([(r["solution"], r["gold_answer"]) for r in recs], timeout_s=10.0)
    assert all(x.correct for x in boxed)  # the boxed originals are untouched
    whole_ok = sum(x.correct for x in grade_many(whole, timeout_s=10.0))
    thinking_ok = sum(x.correct for x in grade_many(thinking, timeout_s=10.0))
    assert whole_ok >= 0.99 * len(recs), whole_ok  # 291 of 291 (the grader before: 201)
    assert thinking_ok >= 0.97 * len(recs), thinking_ok  # 288 of 291 (before: 256)
