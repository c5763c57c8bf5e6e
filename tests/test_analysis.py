"""Analysis metrics on hand-made inputs with known answers, and the analysis stage on a fake run."""
from __future__ import annotations

import json
import math
import re

import pytest

from orion_utils import analysis as A
from orion_utils import measures as M
from orion_utils import stats as S
from orion_utils.jsonl import write_json, write_jsonl
from orion_utils.records import EvalSample, Problem, SFTExample
from orion_utils.rundir import RunDir

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------
# loss stability


def test_loss_delta_std_known_value():
    # differences -0.2, -0.1, -0.3: mean -0.2, population variance (0 + 0.01 + 0.01) / 3
    assert A.loss_delta_std([1.0, 0.8, 0.7, 0.4]) == pytest.approx(math.sqrt(0.02 / 3))
    # a straight line is perfectly stable
    assert A.loss_delta_std([1.0, 0.8, 0.6, 0.4]) == pytest.approx(0.0, abs=1e-12)


def test_loss_delta_std_reads_histories_in_step_order_and_skips_non_loss_rows():
    history = [{"step": 3, "loss": 0.7}, {"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.8},
               {"step": 4, "eval_loss": 5.0}, {"step": 4, "loss": 0.4}]
    assert M.loss_deltas(history) == pytest.approx([-0.2, -0.1, -0.3])
    assert A.loss_delta_std(history) == pytest.approx(math.sqrt(0.02 / 3))


def test_loss_delta_std_segments_do_not_diff_across_stages():
    # within stages: +1, +1 and -1, -1 → deltas [1, 1, -1, -1]: mean 0, std 1; across the jump would add -9
    segments = [[{"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}, {"step": 3, "loss": 3.0}],
                [{"step": 1, "loss": 12.0}, {"step": 2, "loss": 11.0}, {"step": 3, "loss": 10.0}]]
    assert M.loss_deltas(segments) == pytest.approx([1, 1, -1, -1])
    assert A.loss_delta_std(segments) == pytest.approx(1.0)


def test_loss_delta_std_needs_two_points():
    assert A.loss_delta_std([]) is None
    assert A.loss_delta_std([{"step": 1, "loss": 1.0}]) is None


# ------------------------------------------------------------------------------------------------
# lengths and perplexity


class _CharTokenizer:
    def encode(self, text, add_special_tokens=False):
        assert add_special_tokens is False
        return list(text)


def test_token_lengths_and_length_stats_with_words_callable_and_hf_like_tokenizer():
    texts = ["a b c", "a", "a b c d e f"]
    stats = A.length_stats(A.token_lengths(texts))  # whitespace words: 3, 1, 6
    assert stats["n"] == 3 and stats["mean"] == pytest.approx(10 / 3)
    assert stats["median"] == 3 and stats["min"] == 1 and stats["max"] == 6
    assert stats["std"] == pytest.approx(math.sqrt(((3 - 10 / 3) ** 2 + (1 - 10 / 3) ** 2 + (6 - 10 / 3) ** 2) / 3))
    assert A.token_lengths(["abc", ""], _CharTokenizer()) == [3, 0]
    assert A.token_lengths(["abc", "de"], lambda t: list(t)) == [3, 2]
    assert A.length_stats(A.token_lengths([])) is None
    assert A.length_stats(list(range(1, 11)))["p90"] == 9  # nearest rank


def test_cot_perplexity_is_geometric_mean_of_per_cot_perplexities():
    assert A.cot_perplexity([math.log(2), math.log(8)]) == pytest.approx(4.0)
    assert A.cot_perplexity([math.log(3), float("nan")]) == pytest.approx(3.0)
    assert A.cot_perplexity([]) is None


# ------------------------------------------------------------------------------------------------
# step-level consistency


@pytest.mark.parametrize("a,op,b,r,ok", [
    (2, "+", 3, 5, True), (2, "+", 3, 6, False), (5, "-", 7, -2, True), (4, "*", 6, 24, True),
    (4, "×", 6, 25, False), (8, "/", 2, 4, True), (7, "/", 2, 3, False), (3, "/", 0, 0, False),
    (10**30, "*", 10**30, 10**60, True),
])
def test_arithmetic_ok(a, op, b, r, ok):
    assert M.arithmetic_ok(a, op, b, r) is ok


COT_MIXED = (
    "<think>\nMia starts with 2 apples.\nShe buys 3 more, so 2 + 3 = 5.\nCheck: 5 - 3 = 2. Correct.\n"
    "She triples her apples, so 5 * 3 = 16.\n"
    "Wait, I might be tempted to say 2 + 3 = 6, but 2 + 3 = 5.\n</think>\n\nThe answer is \\boxed{16}."
)


def test_step_consistency_counts_compute_and_check_lines_not_reflections():
    # compute 2+3=5 (right), check 5-3=2 (right), compute 5*3=16 (wrong); the reflection line is left out
    assert M.step_check(COT_MIXED) == (2, 3)
    assert M.step_consistency(COT_MIXED) == pytest.approx(2 / 3)
    assert M.step_consistency("no computation here") is None
    assert M.step_consistency(COT_MIXED, kinds=("compute", "check", "reflect")) == pytest.approx(3 / 5)


def test_step_consistency_never_evaluates_text(monkeypatch):
    import builtins

    import sympy

    def refuse(*args, **kwargs):
        raise AssertionError("text must not be evaluated")

    monkeypatch.setattr(sympy, "sympify", refuse)
    monkeypatch.setattr(sympy, "parse_expr", refuse, raising=False)
    monkeypatch.setattr(builtins, "eval", refuse)
    assert M.step_consistency(COT_MIXED) == pytest.approx(2 / 3)


def test_consistency_summary_pooled_and_per_text():
    texts = [COT_MIXED, "1 + 1 = 2", "nothing"]
    s = A.consistency_summary(texts)
    assert s["n_steps"] == 4 and s["n_right"] == 3 and s["score"] == pytest.approx(3 / 4)
    assert s["mean_per_text"] == pytest.approx((2 / 3 + 1) / 2)
    assert s["n_texts"] == 3 and s["n_texts_with_steps"] == 2
    assert A.consistency_summary([]) is None


# ------------------------------------------------------------------------------------------------
# difficulty


def _sample(method, pid, correct, decoding="sample", i=0, bench="toy_test", response="", n_tokens=10):
    return EvalSample(method, bench, pid, decoding, i, response, None, "0", correct, "", n_tokens)


def _samples(method, per_problem: dict, bench="toy_test", response="", n_tokens=10):
    """per_problem: {pid: number of correct samples out of 4}; plus one greedy sample (correct if >= 2)."""
    out = []
    for pid, k in per_problem.items():
        out += [_sample(method, pid, i < k, "sample", i, bench, response, n_tokens) for i in range(4)]
        out.append(_sample(method, pid, k >= 2, "greedy", 0, bench, response, n_tokens))
    return out


def test_bucket_edges():
    assert A.bucket_of(0.0) == "hard" and A.bucket_of(0.2499) == "hard"
    assert A.bucket_of(0.25) == "medium" and A.bucket_of(0.5) == "medium"
    assert A.bucket_of(0.75) == "easy" and A.bucket_of(1.0) == "easy"
    assert A.bucket_of(0.5, [("never", 0, 0.01), ("sometimes", 0.01, 0.99), ("always", 0.99, 1.0)]) == "sometimes"


def test_difficulty_from_base_samples_and_accuracy_by_difficulty():
    base = _samples("base", {"p0": 0, "p1": 1, "p2": 3, "p3": 4})
    difficulty = A.difficulty_from_samples(base)
    assert difficulty == {"p0": 0.0, "p1": 0.25, "p2": 0.75, "p3": 1.0}  # sampled decodings only
    orion = _samples("orion", {"p0": 2, "p1": 4, "p2": 4, "p3": 3})
    abd = A.accuracy_by_difficulty(orion, difficulty)
    assert abd["hard"] == {"accuracy": 0.5, "n_problems": 1, "range": [0.0, 0.25]}
    assert abd["medium"]["accuracy"] == 1.0 and abd["medium"]["n_problems"] == 1
    assert abd["easy"]["accuracy"] == pytest.approx((1.0 + 0.75) / 2) and abd["easy"]["n_problems"] == 2
    # an empty bucket has no accuracy; problems missing from the map are left out
    abd = A.accuracy_by_difficulty(_samples("x", {"p3": 4, "unknown": 0}), difficulty)
    assert abd["hard"] == {"accuracy": None, "n_problems": 0, "range": [0.0, 0.25]}
    assert abd["easy"]["n_problems"] == 1


def test_difficulty_falls_back_to_greedy():
    greedy_only = [_sample("base", "p0", True, "greedy"), _sample("base", "p1", False, "greedy")]
    assert A.difficulty_from_samples(greedy_only) == {"p0": 1.0, "p1": 0.0}


# ------------------------------------------------------------------------------------------------
# seeds


def test_aggregate_metrics_exact_mean_and_sample_std():
    seeds = [{"orion": {"b": {"pass@1": 0.5, "greedy": 0.4}}},
             {"orion": {"b": {"pass@1": 0.7, "greedy": 0.4}}},
             {"orion": {"b": {"pass@1": 0.9}}, "sft": {"b": {"pass@1": 0.3}}}]
    agg = A.aggregate_metrics(seeds)
    assert agg["orion"]["b"]["pass@1"]["mean"] == pytest.approx(0.7)
    assert agg["orion"]["b"]["pass@1"]["std"] == pytest.approx(0.2)
    assert agg["orion"]["b"]["pass@1"]["n"] == 3
    assert agg["orion"]["b"]["greedy"] == {"mean": pytest.approx(0.4), "std": 0.0, "n": 2}
    assert agg["sft"]["b"]["pass@1"] == {"mean": 0.3, "std": 0.0, "n": 1}
    assert A.aggregate_values([None, float("nan")]) is None


# ------------------------------------------------------------------------------------------------
# a fake run directory

TEACHER_COT = ("<think>\nMia starts with 2 apples.\nShe buys 3 more, so 2 + 3 = 5.\nCheck: 5 - 3 = 2. Correct.\n"
               "So Mia has 5 apples now.\n</think>\n\nMia has 5 apples now. The answer is \\boxed{5}.")
REFINED_COT = TEACHER_COT.replace(
    "Check: 5 - 3 = 2. Correct.\n",
    "Check: 5 - 3 = 2. Correct.\nWait, I might be tempted to say 2 + 3 = 6, but 2 + 3 = 5.\n")
GOOD_RESPONSE = "<think>\n2 + 3 = 5\n5 * 2 = 10\n</think>\n\n\\boxed{10}"
BAD_RESPONSE = "<think>\n2 + 3 = 6\n6 * 2 = 12\n</think>\n\n\\boxed{12}"

# correct sampled solutions out of 4 per benchmark problem
CORRECT = {
    "base": {"p0": 0, "p1": 1, "p2": 3, "p3": 4},
    "sft": {"p0": 1, "p1": 2, "p2": 4, "p3": 4},
    "orion": {"p0": 2, "p1": 4, "p2": 4, "p3": 4},
}
LOSSES = {"sft": [1.0, 0.5, 0.9, 0.3], "orion": [1.0, 0.8, 0.6, 0.4]}


def _metrics_of(samples):
    sampled = [s for s in samples if s.decoding == "sample"]
    greedy = [s for s in samples if s.decoding == "greedy"]
    per = {}
    for s in sampled:
        per.setdefault(s.problem_id, []).append(s.correct)
    return {"pass@1": sum(sum(v) / len(v) for v in per.values()) / len(per),
            "greedy": sum(s.correct for s in greedy) / len(greedy),
            "unfinished_rate": sum(s.unfinished for s in sampled) / len(sampled),
            "greedy_unfinished_rate": sum(s.unfinished for s in greedy) / len(greedy),
            "n_problems": len(per), "response_tokens_mean": sum(s.n_tokens for s in samples) / len(samples)}


def _cut_off(sample: EvalSample) -> EvalSample:
    """The same sample as one that hit max_new_tokens: unfinished, so never correct."""
    return EvalSample(**{**sample.__dict__, "meta": {"finish_reason": "length"}, "unfinished": False})


def make_fake_run(root, correct=CORRECT, student=None, reflection=None) -> RunDir:
    run = RunDir(root)
    write_json(run.path("config.json"), {"profile": "toy", "description": "fake", "seeds": [0],
                                         "student": {"model": "toy", "prompt_template": "{question}",
                                                     "system_prompt": ""},
                                         "teacher": {"kind": "toy"}, "data": {"train_source": "toy"},
                                         "evaluation": {"max_new_tokens": 64},
                                         **({"reflection": reflection} if reflection else {})})
    write_json(run.data("student.json"), student or {"model": "models/base", "in_run_dir": True, "kind": "toy"})
    train = [Problem(f"t{i}", f"Mia has 2 apples. She buys 3 more. ({i})", "5", "toy") for i in range(3)]
    write_jsonl(run.data("train_problems.jsonl"), train)
    write_jsonl(run.path("data", "benchmarks", "toy_test.jsonl"),
                [Problem(p, "q", "0", "toy") for p in correct["base"]])
    write_jsonl(run.training_set("sft"), [SFTExample(p.id, p.question, TEACHER_COT, "teacher") for p in train])
    write_jsonl(run.training_set("orion"), [SFTExample(p.id, p.question, REFINED_COT, "refined") for p in train])
    write_json(run.data("pass_rates.json"), {"t0": 0.0, "t1": 0.5, "t2": 1.0})
    for m, losses in LOSSES.items():
        write_json(run.model(m) / "loss_history.json",
                   [{"step": i + 1, "epoch": i / 4, "loss": x} for i, x in enumerate(losses)])
    metrics = {}
    for m, per in correct.items():
        response, n_tokens = (GOOD_RESPONSE, 10) if m == "orion" else (BAD_RESPONSE, 20)
        samples = _samples(m, per, response=response, n_tokens=n_tokens)
        if m == "sft":  # its last sample of p0 (a wrong one) was cut off at max_new_tokens: 1 of 16 sampled
            samples[3] = _cut_off(samples[3])
        write_jsonl(run.eval_dir() / m / "toy_test.jsonl", samples)
        metrics[m] = {"toy_test": _metrics_of(samples)}
    write_json(run.path("metrics.json"), metrics)
    return run


def fake_scorer(questions, completions):
    """Mean token NLL log(2) for refined CoTs (perplexity 2), log(4) for the teacher's (perplexity 4)."""
    return [math.log(2) if "Wait" in c else math.log(4) for c in completions]


def _is_png(path, min_bytes=5_000):
    data = path.read_bytes()
    return data[:8] == PNG_SIGNATURE and len(data) > min_bytes


def test_analyse_run_on_a_fake_run(tmp_path):
    run = make_fake_run(tmp_path / "run")
    result = A.analyse_run(run, scorer=fake_scorer, tokenizer=None)
    saved = json.loads(run.path("analysis.json").read_text())
    assert saved["methods"] == json.loads(json.dumps(result["methods"]))
    m = saved["methods"]

    # training-CoT metrics: null for base
    assert m["base"]["cot_perplexity"] is None and m["base"]["cot_tokens_mean"] is None
    assert m["base"]["step_consistency"]["training"] is None
    assert m["sft"]["cot_perplexity"] == pytest.approx(4.0) and m["orion"]["cot_perplexity"] == pytest.approx(2.0)
    assert m["sft"]["training_set"] == ["data/training_set_sft.jsonl"] and m["sft"]["n_training_cots"] == 3
    assert m["sft"]["cot_tokens_mean"] == len(TEACHER_COT.split())
    assert m["orion"]["cot_tokens_mean"] == len(REFINED_COT.split())
    # outputs and training
    assert m["orion"]["response_tokens_mean"] == 10 and m["sft"]["response_tokens_mean"] == 20
    assert m["orion"]["loss_delta_std"] == pytest.approx(0.0, abs=1e-12)
    assert m["sft"]["loss_delta_std"] == pytest.approx(A.loss_delta_std(LOSSES["sft"]))
    assert m["base"]["loss_delta_std"] is None
    # difficulty: base pass rates 0, .25, .75, 1 → hard p0, medium p1, easy p2 p3
    assert saved["difficulty"]["counts"]["toy_test"] == {"hard": 1, "medium": 1, "easy": 2}
    abd = m["orion"]["accuracy_by_difficulty"]["toy_test"]
    assert abd["hard"]["accuracy"] == 0.5 and abd["medium"]["accuracy"] == 1.0 and abd["easy"]["accuracy"] == 1.0
    assert m["sft"]["accuracy_by_difficulty"]["all"]["hard"]["accuracy"] == 0.25
    # step consistency: reflection lines excluded, so both training sets are fully consistent
    assert m["orion"]["step_consistency"]["training"]["score"] == 1.0
    assert m["sft"]["step_consistency"]["training"]["score"] == 1.0
    assert m["orion"]["step_consistency"]["evaluation"]["score"] == 1.0
    assert m["sft"]["step_consistency"]["evaluation"]["score"] == pytest.approx(0.5)  # 2+3=6 wrong, 6*2=12 right

    claims = {c["id"]: c for c in saved["claims"]}
    assert list(claims) == ["headline", "coherence", "stability"]  # the paper's three claims, no more
    assert all(c["verdict"] == "supported" for i, c in claims.items() if i != "headline")
    assert claims["headline"]["claim"] == ("ORION beats all baselines by more than 2 points on GSM-Hard, MATH500, "
                                           "AIME24 and AMC23")
    # coherence: decided by the checked steps (which did not choose the rewrites), the perplexity not counted
    assert "Decided by measures that did not choose ORION's rewrites" in claims["coherence"]["text"]
    own = {c["id"]: c for c in saved["own_measurements"]}
    assert list(own) == ["verbosity", "unfinished"] and own["verbosity"]["verdict"] == "yes"  # 10 vs 20 tokens
    assert own["unfinished"]["numbers"]["unfinished_rate"]["sft"]["toy_test"]["mean"] == pytest.approx(1 / 16)
    assert claims["headline"]["numbers"]["toy_test"]["margin_points"] == pytest.approx(100 * (0.875 - 0.6875))
    # 4 problems: ORION − sft per problem +25, +50, 0, 0 points; a paired interval that wide cannot decide
    vs = claims["headline"]["numbers"]["toy_test"]["vs"]
    assert vs["sft"]["status"] == "too small to decide" and vs["sft"]["lo"] <= 2.0 < vs["sft"]["hi"]
    assert claims["headline"]["verdict"] == "too small to decide"
    cell = saved["intervals"]["cells"]["orion"]["toy_test"]["pass@1"]
    assert cell["mean"] == pytest.approx(0.875) and cell["lo"] <= 0.875 <= cell["hi"] and cell["n_problems"] == 4

    # figures: valid PNGs of sensible size, all listed
    for name in ("accuracy_pass1", "accuracy_greedy", "loss_curves", "cot_lengths", "accuracy_by_difficulty",
                 "perplexity", "step_consistency", "pass_rates"):
        assert name in saved["figures"], name
        assert _is_png(run.path(saved["figures"][name])), name

    # report: the table, figures linked and present, one paragraph per claim, the toy caveat
    report = run.path("report.md").read_text()
    assert "| method | toy_test |" in report and "| orion | 87.5 [" in report and "| sft | 68.8 [" in report
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert set(links) == set(saved["figures"].values())
    assert all(run.path(link).is_file() for link in links)
    assert len(re.findall(r"^### Claim \d", report, flags=re.M)) == 3
    assert report.count("**Supported by this run.**") == 2
    claims_part, own_part = report.split("## Paper claims")[1].split("## Our own measurements")
    assert "verbose" not in claims_part and "Output length" in own_part and "Unfinished outputs" in own_part
    assert "this run compares on toy_test" in claims_part
    # the unfinished rate per method and benchmark beside the accuracy, and how it counts
    results = report.split("## Results")[1].split("\n## ")[0]
    assert "### Unfinished outputs (%)" in results and "`evaluation.max_new_tokens` = 64" in results
    assert "count an unfinished output as **wrong**" in results
    assert f"| sft | {100 / 16:.1f} |" in results and "| orion | 0.0 |" in results
    assert "**Too small to decide by this run.**" in report and "one problem = 25.0 points" in report
    lo, hi = cell["lo"] * 100, cell["hi"] * 100
    assert f"| orion | 87.5 [{lo:.1f}, {hi:.1f}] |" in report and "percentile bootstrap" in report
    assert "rule-assisted reflector" in report
    assert str(tmp_path) not in report  # no paths of this machine


def test_analysis_stage_is_skipped_when_unchanged(tmp_path):
    run = make_fake_run(tmp_path / "run")
    calls = []

    def counting_scorer(q, c):
        calls.append(len(c))
        return fake_scorer(q, c)

    first = A.analyse_run(run, scorer=counting_scorer, tokenizer=None)
    n = len(calls)
    second = A.analyse_run(run, scorer=counting_scorer, tokenizer=None)
    assert len(calls) == n and second["methods"] == json.loads(json.dumps(first["methods"]))
    A.analyse_run(run, scorer=counting_scorer, tokenizer=None, force=True)
    assert len(calls) == 2 * n


def test_claims_not_supported_and_mixed():
    agg_metrics = A.aggregate_metrics([{"sft": {"a": {"pass@1": 0.50}, "b": {"pass@1": 0.50}},
                                        "orion": {"a": {"pass@1": 0.51}, "b": {"pass@1": 0.60}}}])
    agg_methods = {"sft": {"cot_perplexity": {"mean": 2.0, "std": 0, "n": 1},
                           "response_tokens_mean": {"mean": 10.0, "std": 0, "n": 1},
                           "loss_delta_std": {"mean": 0.1, "std": 0, "n": 1}},
                   "orion": {"cot_perplexity": {"mean": 3.0, "std": 0, "n": 1},
                             "response_tokens_mean": {"mean": 10.0, "std": 0, "n": 1},
                             "loss_delta_std": {"mean": 0.2, "std": 0, "n": 1}}}
    claims = {c["id"]: c for c in A.assess_claims(agg_metrics, agg_methods)}
    assert claims["headline"]["verdict"] == "mixed"  # +1 point on a, +10 on b
    assert claims["coherence"]["verdict"] == "not supported"  # higher perplexity
    assert "favours ORION by construction" not in claims["coherence"]["text"]  # not chosen by perplexity here
    assert claims["stability"]["verdict"] == "not supported"
    assert "verbosity" not in claims
    own = {c["id"]: c for c in A.assess_own(agg_metrics, agg_methods)}
    assert own["verbosity"]["verdict"] == "no"  # a tie is not shorter
    assert "+1.0 points" in claims["headline"]["text"] and "+10.0 points" in claims["headline"]["text"]
    assert A.assess_claims({"sft": {}}, {})[0]["verdict"] == "cannot be assessed"


def _cell(x):
    return {"mean": x, "std": 0, "n": 1}


def test_coherence_by_perplexity_alone_says_it_is_circular_when_perplexity_chose_the_rewrites():
    agg_methods = {"sft": {"cot_perplexity": _cell(4.0)}, "orion": {"cot_perplexity": _cell(2.0)}}
    circular = {c["id"]: c for c in A.assess_claims({}, agg_methods, selection="perplexity")}["coherence"]
    assert circular["verdict"] == "supported"
    # the caveat stands next to the verdict, before the numbers
    assert circular["text"].startswith("**Supported by this run.** Only the base student's perplexity")
    assert "favours ORION by construction" in circular["text"] and "not evidence for the claim" in circular["text"]
    plain = {c["id"]: c for c in A.assess_claims({}, agg_methods, selection="first")}["coherence"]
    assert plain["verdict"] == "supported" and "by construction" not in plain["text"]


def test_coherence_is_decided_by_the_judge_not_by_the_perplexity_that_chose_the_rewrites():
    # the perplexity favours ORION (it chose ORION's rewrites); the judge, which did not, finds sft more consistent
    agg_methods = {"sft": {"cot_perplexity": _cell(4.0), "judge_consistency": _cell(0.9)},
                   "orion": {"cot_perplexity": _cell(2.0), "judge_consistency": _cell(0.6)}}
    claim = {c["id"]: c for c in A.assess_claims({}, agg_methods, selection="perplexity")}["coherence"]
    assert claim["verdict"] == "not supported"
    assert "the judge's step consistency of the training CoTs (%): ORION 60.0 vs sft 90.0" in claim["text"]
    assert "shown for reference and not counted: `reflection.selection: perplexity`" in claim["text"]


def test_the_judge_decides_coherence_in_a_run(tmp_path):
    """The step-consistency judge through the real API teacher path (a local OpenAI-compatible server stands
    in for the paid API): it finds ORION's refined CoTs less consistent, the base student's perplexity (which
    chose them, ``selection: perplexity``) finds them better; the judge decides, and the report says why."""
    from helpers import FakeOpenAIServer

    from orion_utils.teachers.api import APITeacher

    def judge(messages):
        cot = messages[-1]["content"]
        return "checked", "Consistent steps: 1 of 2" if "Wait" in cot else "Consistent steps: 2 of 2"

    run = make_fake_run(tmp_path / "run", reflection={"selection": "perplexity"})
    with FakeOpenAIServer(answer_fn=judge) as server:
        teacher = APITeacher(server.base_url, "fake-judge", api_key_env=None, concurrency=4,
                             cache_dir=str(tmp_path / "cache"), timeout_s=5.0, max_retries=2, progress=False)
        result = A.analyse_run(run, cfg=A.AnalysisConfig(step_consistency="off"), scorer=fake_scorer,
                               tokenizer=None, judge=teacher)
    assert result["seeds"]["methods"]["orion"]["judge_consistency"]["mean"] == pytest.approx(0.5)
    assert result["seeds"]["methods"]["sft"]["judge_consistency"]["mean"] == pytest.approx(1.0)
    coherence = {c["id"]: c for c in result["claims"]}["coherence"]
    assert coherence["verdict"] == "not supported"
    report = run.path("report.md").read_text()
    assert "judge consistency, CoTs (%)" in report and "favours ORION by construction" in report


def test_several_seeds_mean_std_in_report_and_figures(tmp_path):
    run = make_fake_run(tmp_path / "seed0")
    other = dict(CORRECT, orion={"p0": 4, "p1": 4, "p2": 4, "p3": 4})  # orion pass@1 1.0 in this seed
    seed1 = make_fake_run(tmp_path / "seed1", correct=other)
    result = A.analyse_run(run, seeds_run_dirs=[seed1.root], scorer=fake_scorer, tokenizer=None)
    cell = result["metrics"]["orion"]["toy_test"]["pass@1"]
    assert cell["n"] == 2 and cell["mean"] == pytest.approx(0.9375)
    assert cell["std"] == pytest.approx(math.sqrt(2) * 0.0625)  # sample std of 0.875 and 1.0
    assert result["metrics"]["sft"]["toy_test"]["pass@1"]["std"] == 0.0
    assert result["seeds"]["n"] == 2 and result["seeds"]["runs"] == ["seed0", "seed1"]
    assert result["seeds"]["methods"]["orion"]["cot_perplexity"]["n"] == 2
    report = run.path("report.md").read_text()
    assert "| orion | 93.8 ± 8.8 [" in report
    two = result["intervals"]["cells"]["orion"]["toy_test"]["pass@1"]
    assert two["n_seeds"] == 2 and two["mean"] == pytest.approx(0.9375) and two["lo"] <= 0.9375 <= two["hi"]
    assert "mean ± std over 2 seeds" in report
    assert _is_png(run.path("figures", "accuracy_pass1.png"))


def test_write_report_without_analysis_keeps_working(tmp_path):
    from orion_utils.report import write_report

    run = make_fake_run(tmp_path / "run")
    path = write_report(run)
    text = path.read_text()
    assert "| orion | 87.5 |" in text and "## Paper claims" not in text
    assert _is_png(run.path("figures", "accuracy_pass1.png")) and _is_png(run.path("figures", "loss_curves.png"))


def test_training_cots_discovery_for_edit_and_tailored(tmp_path):
    run = RunDir(tmp_path / "run")
    write_jsonl(run.model("edit") / "stage1_examples.jsonl", [SFTExample("a", "q", "edit cot", "teacher")])
    write_jsonl(run.model("tailored") / "round_1" / "train.jsonl", [SFTExample("a", "q", "r1", "teacher")])
    write_jsonl(run.model("tailored") / "round_2" / "train.jsonl", [SFTExample("a", "q", "r2", "tailored")])
    assert A.training_cots(run, "edit") == ([("q", "edit cot")], ["models/edit/stage1_examples.jsonl"])
    pairs, files = A.training_cots(run, "tailored")
    assert pairs == [("q", "r1"), ("q", "r2")] and len(files) == 2
    assert A.training_cots(run, "base") == ([], [])
    write_json(run.model("edit") / "stage1" / "loss_history.json", [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}])
    write_json(run.model("edit") / "stage2" / "loss_history.json", [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}])
    segments = A.loss_segments(run, "edit")
    assert len(segments) == 2
    # stage 05 also writes the joined curve (training_sets.join_phase_losses): the phases are still two segments
    from orion_utils.training_sets import join_phase_losses

    join_phase_losses(run.trained("edit"))
    assert run.loss_history("edit").is_file() and A.loss_segments(run, "edit") == segments
    assert [h["step"] for h in M.concat_segments(segments)] == [1, 2, 3, 4]


def test_student_scorer_with_a_real_tiny_model(tmp_path, tiny_model_dir):
    pytest.importorskip("orion_utils.generation")
    run = make_fake_run(tmp_path / "run", student={"model": tiny_model_dir, "in_run_dir": False, "kind": "test"})
    nlls = A.student_scorer(run, batch_size=2)(["q1", "q2", "q3"], ["2 + 3 = 5", "a longer answer here", "x"])
    assert len(nlls) == 3 and all(math.isfinite(x) and x > 0 for x in nlls)
    methods, _, _ = A.analyse_methods(run, A.AnalysisConfig(max_cots=2), scorer=None, tokenizer="auto")
    assert methods["sft"]["cot_perplexity_n"] == 2 and methods["sft"]["cot_perplexity"] > 1
    assert methods["sft"]["cot_tokens_mean"] > len(TEACHER_COT.split())  # byte-level tokens, not words


def test_max_cots_caps_scoring_and_picks_the_same_questions(tmp_path):
    run = make_fake_run(tmp_path / "run")
    seen = {}

    def recording_scorer(questions, completions):
        seen.setdefault("orion" if "Wait" in completions[0] else "sft", list(questions))
        return fake_scorer(questions, completions)

    methods, _, _ = A.analyse_methods(run, A.AnalysisConfig(max_cots=2), scorer=recording_scorer, tokenizer=None)
    assert methods["sft"]["cot_perplexity_n"] == 2 and methods["sft"]["n_training_cots"] == 3
    assert seen["sft"] == seen["orion"] and len(seen["sft"]) == 2
    methods, _, _ = A.analyse_methods(run, A.AnalysisConfig(), scorer=False, tokenizer=None)
    assert methods["orion"]["cot_perplexity"] is None and methods["orion"]["cot_tokens_mean"] is not None


def test_toy_run_is_decided_by_config_json_when_there_is_one(tmp_path):
    run = RunDir(tmp_path / "run")
    write_jsonl(run.train_problems, [Problem("a", "q", "1", "toy")])
    assert A.is_toy_run(run)  # no config.json: guessed from the data
    write_json(run.config_file, {"student": {"model": "some/real-model"}, "data": {"train_source": "gsm8k"}})
    assert not A.is_toy_run(run)
    write_json(run.config_file, {"student": {"model": "toy"}, "data": {"train_source": "toy"}})
    assert A.is_toy_run(run)


# ------------------------------------------------------------------------------------------------
# intervals: bootstrap over problems (and seeds), the headline judged against paired intervals


def _scores(values, prefix="q"):
    return {f"{prefix}{i}": float(v) for i, v in enumerate(values)}


def test_bootstrap_interval_covers_the_mean_and_is_reproducible():
    rng = __import__("random").Random(1)
    seed_scores = [_scores([rng.random() < 0.6 for _ in range(200)]) for _ in range(3)]
    a = S.bootstrap_interval(seed_scores, n_resamples=1000, seed=7)
    b = S.bootstrap_interval(seed_scores, n_resamples=1000, seed=7)
    assert a == b  # the same seed, the same interval
    assert a != S.bootstrap_interval(seed_scores, n_resamples=1000, seed=8)
    assert a["lo"] < a["mean"] < a["hi"] and a["n_problems"] == 200 and a["n_seeds"] == 3
    assert 0.05 < a["hi"] - a["lo"] < 0.25  # ~ 2 × 1.96 × sqrt(.24 / 200) = 0.13 for one seed
    one = S.bootstrap_interval(seed_scores[:1], n_resamples=1000, seed=7)
    assert one["n_seeds"] == 1 and one["mean"] == pytest.approx(sum(seed_scores[0].values()) / 200)
    # seeds that disagree widen the interval: the seed level is resampled too
    far = [_scores([1.0] * 200), _scores([0.0] * 200)]
    assert S.bootstrap_interval(far, n_resamples=500)["hi"] - S.bootstrap_interval(far, n_resamples=500)["lo"] > 0.9


def test_paired_bootstrap_detects_a_known_difference_and_says_when_too_small():
    rng = __import__("random").Random(0)
    base = [rng.random() < 0.5 for _ in range(1000)]
    # ORION solves every problem the baseline solves and 10% of the others more: +~5 points, paired
    orion = [b or (i % 10 == 0) for i, b in enumerate(base)]
    d = S.paired_difference([_scores(orion)], [_scores(base)], n_resamples=1000, seed=0)
    assert d["diff"] == pytest.approx(100 * (sum(orion) - sum(base)) / 1000)
    assert 2.0 < d["lo"] < d["diff"] < d["hi"]
    assert S.headline_status(d, margin=2.0, max_width=8.0) == "beats"
    # the same methods, equal: no difference; ORION worse: worse
    same = S.paired_difference([_scores(base)], [_scores(base)], n_resamples=200)
    assert same["lo"] == same["hi"] == 0.0 and S.headline_status(same, 2.0, 8.0) == "no difference"
    flipped = S.paired_difference([_scores(base)], [_scores(orion)], n_resamples=500)
    assert S.headline_status(flipped, 2.0, 8.0) == "worse"
    # an AIME-sized benchmark (30 problems), ORION ahead by 2 problems (6.7 points): too small to decide
    small_b = [i % 3 == 0 for i in range(30)]
    small_o = [b or i in (1, 2) for i, b in enumerate(small_b)]
    small = S.paired_difference([_scores(small_o)], [_scores(small_b)], n_resamples=2000, seed=0)
    assert small["diff"] == pytest.approx(100 * 2 / 30) and small["lo"] <= 2.0 and small["width"] > 8.0
    assert S.headline_status(small, 2.0, 8.0) == "too small to decide"
    assert S.headline_status(small, 2.0, 100.0) in ("no difference", "below the margin")


def test_headline_verdict_from_paired_intervals():
    rng = __import__("random").Random(3)
    big_b = [rng.random() < 0.5 for _ in range(1000)]
    scores = {"sft": {"big": {"pass@1": [_scores(big_b)]}},
              "orion": {"big": {"pass@1": [_scores([b or i % 10 == 0 for i, b in enumerate(big_b)])]}}}
    agg = A.aggregate_metrics([{m: {b: {"pass@1": sum(v["pass@1"][0].values()) / len(v["pass@1"][0])}
                                    for b, v in per.items()} for m, per in scores.items()}])
    claim = A.assess_claims(agg, {}, intervals=A.headline_intervals(scores, 1000, 0))[0]
    assert claim["verdict"] == "supported" and "beats" in claim["text"] and "paired bootstrap" in claim["text"]
    # add a 30-problem benchmark where ORION is 2 problems ahead: the verdict cannot be "supported" from it
    small_b = [i % 3 == 0 for i in range(30)]
    scores["sft"]["small"] = {"pass@1": [_scores(small_b)]}
    scores["orion"]["small"] = {"pass@1": [_scores([b or i in (1, 2) for i, b in enumerate(small_b)])]}
    agg = A.aggregate_metrics([{m: {b: {"pass@1": sum(v["pass@1"][0].values()) / len(v["pass@1"][0])}
                                    for b, v in per.items()} for m, per in scores.items()}])
    claim = A.assess_claims(agg, {}, intervals=A.headline_intervals(scores, 1000, 0))[0]
    assert claim["verdict"] == "too small to decide"
    assert "small (30 problems; one problem = 3.3 points): too small to decide" in claim["text"]
    assert claim["numbers"]["small"]["vs"]["sft"]["status"] == "too small to decide"
