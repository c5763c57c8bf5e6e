"""Pure logic of the exposure, reflection and evaluation stages (no model needed)."""
import pytest

from orion_utils.evaluation import results_table, summarise
from orion_utils.exposure import dedupe_errors, pass_rates
from orion_utils.records import EvalSample, Problem, StudentAttempt
from orion_utils.reflection import ReflectionConfig, acceptance_rate, refine, select_candidate


def attempt(pid, i, response, correct):
    return StudentAttempt(pid, i, response, None, correct, "base")


def test_dedupe_errors_and_pass_rates():
    attempts = [attempt("a", 0, "x  = 3", False), attempt("a", 1, "x = 3", False), attempt("a", 2, "ok", True),
                attempt("b", 0, "x = 3", False), attempt("b", 1, "y", False)]
    errors = dedupe_errors(attempts)
    assert [(e.problem_id, e.sample_index) for e in errors] == [("a", 0), ("b", 0), ("b", 1)]
    assert pass_rates(attempts) == {"a": pytest.approx(1 / 3), "b": 0.0}


def test_select_candidate_rules():
    cands = ["long one", "short", "mid one"]
    assert select_candidate(cands, "first") == 0
    assert select_candidate(cands, "shortest") == 1
    assert select_candidate(cands, "perplexity", [2.0, 3.0, 1.5]) == 2
    with pytest.raises(ValueError):
        select_candidate(cands, "perplexity")
    with pytest.raises(ValueError):
        select_candidate(cands, "random")


class ScriptedReflector:
    """Stands in for the student: returns fixed candidates so the acceptance logic can be checked."""

    name = "scripted"

    def __init__(self, by_question):
        self.by_question = by_question

    def propose(self, items, m, seed=None):
        return [self.by_question[i.problem.id][:m] for i in items]


def test_refine_accepts_verified_selects_and_falls_back():
    problems = [Problem("a", "qa", "5"), Problem("b", "qb", "7"), Problem("c", "qc", "1"), Problem("d", "qd", "2")]
    teacher = {p.id: f"<think>t{p.id}</think> \\boxed{{{p.answer}}}" for p in problems[:3]}  # d has no teacher CoT
    errors = {"a": [attempt("a", 0, "wrong a", False)], "b": [attempt("b", 0, "wrong b", False)]}
    reflector = ScriptedReflector({
        "a": ["r1 \\boxed{5}", "r2 longer \\boxed{5}", "bad \\boxed{4}", "r1 \\boxed{5}"],
        "b": ["nope \\boxed{8}"],
    })
    scores = {"r1 \\boxed{5}": 2.0, "r2 longer \\boxed{5}": 1.0, teacher["a"]: 3.0}  # + a's teacher CoT (mechanism)
    only_verification = {"reflect_window": None, "min_coverage": 0.0, "min_added_chars": 0, "reject_echoes": False}  # test_acceptance
    out = refine(problems, teacher, errors, reflector,
                 ReflectionConfig(m=4, selection="perplexity", **only_verification),
                 scorer=lambda qs, cs: [scores[c] for c in cs])
    by_id = {r.problem_id: r for r in out}
    assert set(by_id) == {"a", "b", "c"}
    a = by_id["a"]
    assert a.accepted and a.refined_cot == "r2 longer \\boxed{5}" and (a.n_candidates, a.n_accepted) == (3, 2)
    assert (a.meta["nll"], a.meta["teacher_nll"]) == (1.0, 3.0)
    assert not by_id["b"].accepted and by_id["b"].refined_cot == teacher["b"]  # fallback to the teacher
    assert by_id["c"].wrong_attempt == "" and by_id["c"].refined_cot == teacher["c"]  # nothing to reflect on
    assert acceptance_rate(out) == 0.5


def sample(pid, decoding, i, correct, n_tokens=10, reason=None):
    return EvalSample("sft", "toy_test", pid, decoding, i, "r", None, "1", correct,
                      reason or ("correct" if correct else "wrong"), n_tokens)


def test_summarise_pass_at_1_is_mean_over_samples_then_problems():
    samples = [sample("a", "sample", 0, True), sample("a", "sample", 1, False),
               sample("b", "sample", 0, True), sample("b", "sample", 1, True),
               sample("a", "greedy", 0, True), sample("b", "greedy", 0, False, reason="no answer")]
    s = summarise(samples)
    assert s["pass@1"] == pytest.approx(0.75) and s["greedy"] == pytest.approx(0.5)
    assert s["n_problems"] == 2 and s["n_samples"] == 2
    assert s["no_answer_rate"] == pytest.approx(1 / 6)
    table = results_table({"base": {"toy_test": s}, "sft": {"toy_test": {"pass@1": 1.0}}})
    assert "| base | 75.0 |" in table and "| sft | 100.0 |" in table
