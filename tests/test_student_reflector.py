"""The toy domain's `student` reflector (rules find and check the diverging step, the student model
writes the rest), the loss mask on the quoted wrong step, and verdicts that respect the seeds' spread."""
from __future__ import annotations

import pytest

from orion_utils.acceptance import Unfinished
from orion_utils import analysis as A
from orion_utils import claims as C
from orion_utils.config import StudentConfig
from orion_utils.records import Problem, SFTExample, format_cot
from orion_utils.reflection import (
    ReflectionConfig,
    ReflectionItem,
    StudentReflector,
    refine,
    resolve_reflector_kind,
)
from orion_utils.toy.domain import ToyDomainConfig, generate_problems, gold_steps, parse_steps, solution_steps
from orion_utils.toy.reflect import rewrite_start
from orion_utils.toy.teacher import write_cot


@pytest.fixture(scope="module")
def problems() -> list[Problem]:
    return generate_problems(60, ToyDomainConfig(), seed=0, split="train")


def _slipped_attempt(p: Problem, at: int) -> str:
    """A student-like attempt: the toy CoT with an arithmetic slip at step ``at``, carried on."""
    return format_cot(*write_cot(p, slip_at=at))


def test_rewrite_start_quotes_the_wrong_line_and_checks_it(problems):
    p = next(q for q in problems if q.meta["n_steps"] >= 3 and q.meta["steps"][1]["op"] in "+-")
    teacher = format_cot(*write_cot(p))
    attempt = _slipped_attempt(p, 1)
    begin = rewrite_start(p, teacher, attempt)
    assert begin is not None and begin.divergence.kind == "arithmetic" and begin.divergence.index == 1
    # the student's own (clean) attempt up to the wrong step, then its wrong line, verbatim
    assert begin.prefix_source == "student"
    s, e = begin.wrong_span
    wrong_line = begin.text[s:e]
    assert wrong_line in attempt.splitlines() and attempt.startswith(begin.text[:s])
    assert not [x for x in parse_steps(wrong_line) if x.correct]  # it is the wrong computation
    # then a check that is right arithmetic and ends on the corrected step
    check = begin.text[e:].strip()
    assert check.startswith("Check:") and "\n" not in check and begin.text.endswith("\n")
    assert all(x.correct for x in parse_steps(check))
    assert check.endswith(f"so {gold_steps(p)[1].text}.")
    # nothing to reflect on: an attempt that agrees with the teacher, or one without steps
    assert rewrite_start(p, teacher, teacher) is None
    assert rewrite_start(p, teacher, "no idea \\boxed{3}") is None


def test_rewrite_start_kinds(problems):
    p = next(q for q in problems if q.meta["n_steps"] >= 3)
    teacher = format_cot(*write_cot(p))
    g = gold_steps(p)
    lines = teacher.split("\n")
    step1 = next(i for i, ln in enumerate(lines) if g[1].text in ln)
    other = "+" if g[1].op != "+" else "-"
    cases = {
        "operation": f"{g[1].a} {other} {g[1].b} = 0",
        "carry": f"{g[1].a + 2} {g[1].op} {g[1].b} = {g[1].result}",
    }
    for kind, eq in cases.items():
        attempt = "\n".join(lines[:step1] + [lines[step1].replace(g[1].text, eq)]) + "\n</think>\n\n\\boxed{0}"
        begin = rewrite_start(p, teacher, attempt)
        assert begin is not None and begin.divergence.kind == kind
        assert begin.text[slice(*begin.wrong_span)].endswith(f"{eq}.")
        assert begin.text.strip().endswith(f"so {g[1].text}.")
    # a wrong final answer after right steps: no quoted line, a check of the answer before the recap
    bad = teacher.replace(f"\\boxed{{{p.answer}}}", "\\boxed{1234}")
    begin = rewrite_start(p, teacher, bad)
    assert begin.divergence.kind == "answer" and begin.wrong_span is None
    assert begin.text.endswith(f"Check: the answer is the last result, {p.answer}.\n")
    assert [s.text for s in solution_steps(begin.text)] == [s.text for s in g]


def test_student_reflector_continues_with_the_student_model(problems, tiny_model_dir):
    """A real (random, tiny) model writes the continuations: every candidate is the rule-written
    beginning followed by the model's own tokens, and the mask spans point at the quoted line."""
    p = next(q for q in problems if q.meta["n_steps"] >= 3 and q.meta["steps"][1]["op"] in "+-")
    item = ReflectionItem(p, format_cot(*write_cot(p)), _slipped_attempt(p, 1))
    cfg = ReflectionConfig(reflector="student", m=6, temperature=1.0, top_p=1.0, max_new_tokens=400, seed=0)
    reflector = StudentReflector(tiny_model_dir, cfg)
    begin = reflector.start(item)
    # a random model stops (samples its end-of-turn token) at random: some of the 6 samples finish, the others
    # are cut off at max_new_tokens and come back marked unfinished (counted among the rejections)
    out = reflector.propose([item, ReflectionItem(p, item.teacher_cot, item.teacher_cot)], 6)
    assert out[1] == []  # no error to reflect on: no candidates
    assert len(out[0]) == 6 and all(c.startswith(begin.text) and len(c) > len(begin.text) for c in out[0])
    finished = [c for c in out[0] if not isinstance(c, Unfinished)]
    assert 1 <= len(finished) < 6
    again = StudentReflector(tiny_model_dir, cfg).propose([item], 6)
    assert again[0] == out[0]  # seeded
    cand = begin.text + "whatever"
    spans = reflector.loss_mask_spans(item, cand)
    assert spans == [list(begin.wrong_span)] and reflector.loss_mask_spans(item, "other") == []


def test_refine_records_the_wrong_step_spans(problems):
    p = next(q for q in problems if q.meta["n_steps"] >= 3 and q.meta["steps"][1]["op"] in "+-")
    teacher = format_cot(*write_cot(p))

    class Finisher(StudentReflector):  # the continuation a competent student writes: the teacher's rest
        def propose(self, items, m, seed=None):
            out = []
            for i in items:
                b = self.start(i)
                rest = teacher[teacher.index(gold_steps(p)[1].text):].split("\n", 1)[1]
                out.append([b.text + rest] if b else [])
            return out

    from orion_utils.records import StudentAttempt

    wrong = StudentAttempt(p.id, 0, _slipped_attempt(p, 1), None, False, "base")
    cfg = ReflectionConfig(reflector="student", m=1, selection="first")
    (r,) = refine([p], {p.id: teacher}, {p.id: [wrong]}, Finisher("unused", cfg), cfg)
    assert r.accepted and r.reflector == "student"
    (s, e), = r.wrong_step_spans
    assert r.refined_cot[s:e] in wrong.response.splitlines()


def test_resolve_reflector_kind():
    toy, real = StudentConfig(model="toy"), StudentConfig(model="some/hub-model")
    assert resolve_reflector_kind(ReflectionConfig(reflector="auto"), toy) == "student"
    assert resolve_reflector_kind(ReflectionConfig(reflector="auto"), real) == "llm"
    assert resolve_reflector_kind(ReflectionConfig(reflector="rule"), toy) == "rule"
    # a real student continues the rule-begun rewrite too (the profile's check asks for the toy teacher)
    assert resolve_reflector_kind(ReflectionConfig(reflector="student"), real) == "student"
    with pytest.raises(ValueError):
        resolve_reflector_kind(ReflectionConfig(reflector="nope"), toy)


def test_build_sft_rows_masks_the_given_spans(tiny_tokenizer):
    from orion_utils.training import build_sft_rows

    response = "<think>\nstep one\n2 + 2 = 5\nCheck: 5 - 2 = 3, not 2, so 2 + 2 = 4.\n</think>\n\\boxed{4}"
    s = response.index("2 + 2 = 5")
    e = s + len("2 + 2 = 5")
    plain = SFTExample("a", "q?", response, "refined", {})
    masked = SFTExample("a", "q?", response, "refined", loss_mask_spans=[[s, e]])
    (r0, r1), _ = build_sft_rows(tiny_tokenizer, [plain, masked])
    assert r0["input_ids"] == r1["input_ids"]
    dropped = [i for i, (a, b) in enumerate(zip(r0["labels"], r1["labels"])) if a != b]
    assert dropped and all(r1["labels"][i] == -100 for i in dropped)
    # exactly the span's tokens: the byte-level tiny tokenizer has one token per character here
    assert tiny_tokenizer.decode([r0["input_ids"][i] for i in dropped]) == "2 + 2 = 5"


def _cell(mean, std, n=3):
    return {"mean": mean, "std": std, "n": n}


def test_verdicts_count_differences_within_the_spread_as_none():
    assert C.outcome(1.0, 1.1, True, within=0.2) == 0
    assert C.outcome(1.0, 1.5, True, within=0.2) == 1
    assert C.outcome(1.6, 1.0, True, within=0.2) == -1
    assert C.spread(_cell(1, 0.1), _cell(2, 0.3)) == pytest.approx(0.4) and C.spread(None, _cell(1, 0.5)) == 0.5
    agg_metrics = {"sft": {"t": {"pass@1": _cell(0.50, 0.04)}}, "orion": {"t": {"pass@1": _cell(0.53, 0.04)}}}
    methods = {"sft": {"cot_perplexity": _cell(1.02, 0.01)}, "orion": {"cot_perplexity": _cell(1.00, 0.02)}}
    claims = {c["id"]: c for c in A.assess_claims(agg_metrics, methods, n_seeds=3)}
    # +3 points > the 2-point margin, but within the spread (8 points): not a win
    assert claims["headline"]["verdict"] == "not supported" and "no difference" in claims["headline"]["text"]
    assert claims["coherence"]["verdict"] == "not supported" and "no difference" in claims["coherence"]["text"]
    # the same means with a small spread: both count
    agg_metrics = {"sft": {"t": {"pass@1": _cell(0.50, 0.005)}}, "orion": {"t": {"pass@1": _cell(0.53, 0.005)}}}
    methods = {"sft": {"cot_perplexity": _cell(1.02, 0.001)}, "orion": {"cot_perplexity": _cell(1.00, 0.001)}}
    claims = {c["id"]: c for c in A.assess_claims(agg_metrics, methods, n_seeds=3)}
    assert claims["headline"]["verdict"] == "supported" and claims["coherence"]["verdict"] == "supported"


def test_report_states_the_reflection_and_its_mechanism():
    from orion_utils.report import reflection_lines

    text = " ".join(reflection_lines({"reflector": "student", "mask_wrong_step": True, "acceptance_rate": 0.25,
                                      "mechanism": {"n": 12, "refined": 1.5, "teacher": 1.02}}))
    assert "`student`" in text and "25.0%" in text
    assert "mask" not in text  # the setting alone never claims masking (report.acceptance_section counts it)
    assert "12 accepted rewrites 1.500 vs 1.020" in text
    assert reflection_lines(None) == []


def test_mechanism_perplexity_compares_rewrites_with_the_teacher_cots():
    import math

    from orion_utils.records import Refinement
    from orion_utils.reflection import mechanism_perplexity

    refs = [Refinement("a", "T1", "R1", "w", True, 2, 1, "first", "student"),
            Refinement("b", "T2", "R2", "w", True, 2, 1, "first", "student"),
            Refinement("c", "T3", "T3", "w", False, 2, 0, "first", "student")]
    nll = {"T1": 0.1, "T2": 0.3, "R1": 0.5, "R2": 0.7}
    calls = []

    def scorer(qs, cs):
        calls.append(list(cs))
        return [nll[c] for c in cs]

    out = mechanism_perplexity(refs, {"a": "qa", "b": "qb", "c": "qc"}, scorer)
    assert out["n"] == 2 and out["refined"] == pytest.approx(math.exp(0.6), abs=1e-4)
    assert out["teacher"] == pytest.approx(math.exp(0.2), abs=1e-4)
    # selection by perplexity already scored the picks: only the teacher CoTs are scored again
    for r, v in zip(refs, (0.5, 0.7)):
        r.meta["nll"] = v
    calls.clear()
    assert mechanism_perplexity(refs, {"a": "qa", "b": "qb"}, scorer) == out and calls == [["T1", "T2"]]
    assert mechanism_perplexity(refs[2:], {}, scorer) == {"n": 0, "refined": None, "teacher": None}


def test_student_reflector_samples_through_an_open_generator(problems, tiny_model_dir):
    """Given an open generation backend, the reflector samples exactly what it samples after opening one
    itself; ``close()`` closes only a backend it opened."""
    from orion_utils.generation import TransformersBackend

    p = next(q for q in problems if q.meta["n_steps"] >= 3 and q.meta["steps"][1]["op"] in "+-")
    item = ReflectionItem(p, format_cot(*write_cot(p)), _slipped_attempt(p, 1))
    cfg = ReflectionConfig(reflector="student", m=4, temperature=1.0, top_p=1.0, max_new_tokens=60, seed=0)
    own = StudentReflector(tiny_model_dir, cfg)
    expected = own.propose([item], 4)
    opened = own.generator()
    own.close()
    assert opened._closed
    gen = TransformersBackend(tiny_model_dir, progress=False)
    shared = StudentReflector(gen, cfg)
    assert shared.propose([item], 4) == expected
    shared.close()
    assert not gen._closed  # the caller's backend: still open
    gen.close()


def _stopping_model(path, question: str, prefix: str):
    """A tiny model edited so that greedy decoding of ``question`` after the answer's start ``prefix`` ends
    its turn at a known step: (model dir, its greedy tokens ``ref`` after the prefix before the edit, the
    step j at which it now says its end-of-turn token). The prompt's and the prefix's tokens are built
    here by hand: the chat template's text, then the prefix's own tokens."""
    import torch
    from conftest import build_tiny_model_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny_model_dir(path)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    head = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    assert head.endswith("<|im_start|>assistant\n")
    ids = tok(head, add_special_tokens=False)["input_ids"] + tok(prefix, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        ref = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=24, pad_token_id=tok.pad_token_id,
                             eos_token_id=eos)[0, len(ids):].tolist()
    j = next(k for k in range(2, len(ref)) if ref[k] not in ref[:k] and eos not in ref[: k + 1])
    w = model.lm_head.weight.data  # swap two output rows: the model says <|im_end|> where it said ref[j]
    w[[eos, ref[j]]] = w[[ref[j], eos]]
    model.save_pretrained(path)
    return path, ref, j


def test_an_assistant_prefix_is_continued_not_repeated(tmp_path):
    """``generate(..., assistant_prefix=...)``: the model continues the answer's start (greedy: the tokens
    a hand-built prompt + prefix gives) and the generation holds the continuation only; the student
    reflector puts its rule-written beginning there, and returns beginning + continuation."""
    from types import SimpleNamespace

    from orion_utils.generation import SamplingConfig, TransformersBackend

    question, prefix = "What is 12 + 30?", "<think>\n12 + 30 = "
    path, ref, j = _stopping_model(tmp_path / "stops", question, prefix)
    gen = TransformersBackend(path, progress=False, batch_size=4)
    tok = gen.tokenizer
    greedy = SamplingConfig(max_new_tokens=24)
    (plain,), (prefixed,) = gen.generate([question], greedy), gen.generate([question], greedy, assistant_prefix=prefix)
    assert prefixed[0].finish_reason == "stop" and prefixed[0].n_tokens == j + 1
    assert prefixed[0].text == tok.decode(ref[:j], skip_special_tokens=True)
    assert plain[0] != prefixed[0]  # without the prefix the model writes something else
    with pytest.raises(ValueError, match="assistant prefixes"):
        gen.generate([question, question], greedy, assistant_prefix=[prefix])

    class Prefixed(StudentReflector):  # the beginning a rule would write: here, the prefix above
        def start(self, item):
            return SimpleNamespace(text=prefix, wrong_span=None) if item.wrong_attempt else None

    problem = Problem("q", question, "42")
    items = [ReflectionItem(problem, "teacher", "wrong"), ReflectionItem(problem, "teacher", "")]
    cfg = ReflectionConfig(reflector="student", m=2, temperature=0.0, max_new_tokens=24)
    out = Prefixed(gen, cfg).propose(items, 2)
    assert out == [[prefix + prefixed[0].text] * 2, []]
    short = Prefixed(gen, ReflectionConfig(reflector="student", m=2, temperature=0.0, max_new_tokens=j)).propose(items, 2)
    assert short[1] == [] and len(short[0]) == 2  # one token short of its end of turn: unfinished, kept as such
    assert all(isinstance(c, Unfinished) and c.startswith(prefix) for c in short[0])
    gen.close()


def test_stage_03_loads_the_student_once(problems, tiny_model_dir, tmp_path, monkeypatch):
    """Stage 03 with the toy `student` reflector: one load of the base student serves the reflector
    and every scoring call (selection by perplexity, then the mechanism)."""
    import transformers

    from orion_utils.jsonl import read_jsonl, write_json, write_jsonl
    from orion_utils.records import Refinement, StudentAttempt
    from orion_utils.reflection import run_reflection
    from orion_utils.rundir import RunDir

    run = RunDir(tmp_path / "run")
    chosen = [q for q in problems if q.meta["n_steps"] >= 3 and q.meta["steps"][1]["op"] in "+-"][:3]
    teacher = {q.id: format_cot(*write_cot(q)) for q in chosen}
    write_json(run.data("student.json"), {"model": tiny_model_dir, "in_run_dir": False})
    write_jsonl(run.data("train_problems.jsonl"), chosen)
    write_jsonl(run.training_set("sft"), [SFTExample(q.id, q.question, teacher[q.id], "teacher", {}) for q in chosen])
    write_jsonl(run.data("error_attempts.jsonl"),
                [StudentAttempt(q.id, 0, _slipped_attempt(q, 1), None, False, "base") for q in chosen])
    loads = []
    original = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        loads.append(args[0])
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(counting))
    given = []

    def finishing(self, items, m, seed=None):  # a competent student's continuation: the teacher's rest (verifies)
        given.append(self._generator is not None)  # the stage passed its open student
        out = []
        for i in items:
            b = self.start(i)
            step = gold_steps(i.problem)[1].text
            rest = i.teacher_cot[i.teacher_cot.index(step):].split("\n", 1)[1]
            out.append([b.text + rest, b.text + "\n" + rest] if b else [])
        return out

    monkeypatch.setattr(StudentReflector, "propose", finishing)
    cfg = ReflectionConfig(reflector="student", m=2, selection="perplexity")
    stats = run_reflection(run, cfg, StudentConfig(model="toy"))
    refinements = read_jsonl(run.refinements, Refinement)
    assert given == [True] and stats["mechanism"]["n"] == len(chosen) == len(refinements)
    assert all(r.accepted and "nll" in r.meta for r in refinements)
    assert loads == [tiny_model_dir]
