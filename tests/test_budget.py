"""The prompt budget (``orion_utils.budget``) on real long CoTs: the 291 LIMO traces of
R1-Distill-Qwen-32B in ``../shared/data/traces``, counted with real tokenizers (the toy student's, and
SmolLM2-135M-Instruct's), and through the real prompted paths: the LLM reflector and a local teacher
(the tiny model on transformers) asked to rectify, corrupt, tailor and judge."""
from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from orion_utils.budget import (
    API_CONTEXT_TOKENS,
    LEFT_OUT,
    PromptBudget,
    TokenCounter,
    api_budget,
    ending,
    share,
)
from orion_utils.reflection import REFLECTION_PROMPT

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
LIMO = SHARED / "traces" / "r1_distill_qwen32b_limo.jsonl"


def _items(name: str, path: Path, limit=None) -> list:
    """(problem, its first trace graded as the dataset teacher grades it) of a real trace file."""
    from orion_utils.teachers.datasets import grade_entry, load_trace_entries

    return [(e.problem, grade_entry(e, name)[0]) for e in load_trace_entries(name, data_dir=str(path), limit=limit)]


@pytest.fixture(scope="module")
def traces():
    """The 291 real LIMO traces, as (problem, trace), the correct ones first."""
    items = _items("limo", LIMO)
    assert len(items) == 291
    return sorted(items, key=lambda pt: not pt[1].correct)


def _gsm8k_cot(n: int):
    """Real short CoTs: GSM8K worked solutions (the smol profile's teacher), as (problem, trace)."""
    return _items("gsm8k", SHARED / "train" / "gsm8k_train.jsonl", n)


@pytest.fixture(scope="module")
def smol_tokenizer():
    from transformers import AutoTokenizer

    from orion_utils.students import resolve_student

    return AutoTokenizer.from_pretrained(resolve_student("smollm2-135m-instruct"))


@pytest.fixture(scope="module")
def toy_tokenizer():
    from orion_utils.toy.tokenizer import build_toy_tokenizer

    return build_toy_tokenizer()


def reflection_messages(question: str, teacher_cot: str, wrong: str) -> list[dict]:
    return [{"role": "user", "content": REFLECTION_PROMPT.format(
        question=question, teacher_cot=teacher_cot, wrong_attempt=wrong)}]


def final_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


@pytest.mark.parametrize("which, context, reserve", [("toy", 12000, 1024), ("smol", 4096, 512)])
def test_reflection_prompts_fit_after_cutting_and_keep_the_final_answer(which, context, reserve, traces,
                                                                         toy_tokenizer, smol_tokenizer):
    """Question + teacher CoT (trace i) + a wrong attempt (trace i+1, another question's real CoT, which
    ends in its own boxed answer), for 40 real traces: every prompt sent fits, a cut one keeps the question,
    the teacher CoT and the attempt's final line whole; an item is left out exactly when the teacher CoT
    alone does not fit."""
    tokenizer = toy_tokenizer if which == "toy" else smol_tokenizer
    budget = PromptBudget(context, reserve, TokenCounter(tokenizer))
    counts = budget.counts()
    for (p, t), (_, wrong) in itertools.pairwise(traces[:41]):
        attempt = wrong.cot
        fitted = budget.fit(lambda parts, p=p, t=t: reflection_messages(p.question, t.cot, parts[0]), [attempt])
        counts.add(fitted.outcome)
        alone = budget.counter.count_messages(reflection_messages(p.question, t.cot, ""))
        if fitted.outcome == "left_out":
            assert fitted.messages is None
            # nothing of the attempt's can go: the fixed parts and the attempt's ending do not fit
            assert alone + budget.counter.count_text(ending(attempt, budget.counter)[1]) > budget.limit
            continue
        assert alone <= budget.limit
        assert budget.counter.count_messages(fitted.messages) <= budget.limit
        prompt = fitted.messages[0]["content"]
        assert p.question in prompt and t.cot in prompt  # never cut
        assert final_line(attempt) in prompt  # the wrong attempt's final answer survives
        assert re.search(r"\\boxed\{", final_line(attempt))
        if fitted.outcome == "cut":
            assert re.search(r"\[\.\.\. \d+ tokens cut \.\.\.\]", prompt)
            assert fitted.cut_tokens > 0
        else:
            assert prompt == reflection_messages(p.question, t.cot, attempt)[0]["content"]
    assert counts.total == 40
    assert counts.cut > 0 and counts.left_out > 0, counts


def test_ending_keeps_the_boxed_line_or_the_last_lines(smol_tokenizer):
    counter = TokenCounter(smol_tokenizer)
    text = "step one\n" * 50 + "So the answer is \\boxed{42}.\nDone.\n"
    middle, end = ending(text, counter)
    assert middle + end == text and end.startswith("So the answer is \\boxed{42}")
    middle, end = ending("a\nb\nc\nd\ne\n", counter)
    assert end == "c\nd\ne\n"
    long_tail = "x " * 2000
    middle, end = ending("start\n\\boxed{7} " + long_tail, counter)
    assert counter.count_text(end) <= 256 + 2 and (middle + end).endswith(end)


def test_share_is_equal_and_passes_on_what_a_short_text_leaves():
    assert share([10, 100, 100], 110) == [10, 50, 50]
    assert share([500, 500], 100) == [50, 50]
    assert share([5], 100) == [5]
    assert sum(share([7, 300, 41, 9000], 1000)) <= 1000


def test_api_budget_counts_approximately_and_over_counts(traces, smol_tokenizer):
    budget = api_budget(0, 16384)
    assert budget.context == API_CONTEXT_TOKENS and budget.limit == API_CONTEXT_TOKENS - 16384
    assert budget.counter.tokenizer is None and "chars/token" in budget.counter.how
    p, longest = max(traces, key=lambda pt: len(pt[1].cot))
    messages = reflection_messages(p.question, longest.cot, "")
    approx = budget.counter.count_messages(messages)
    exact = TokenCounter(smol_tokenizer).count_messages(messages)
    assert approx >= exact * 0.8  # 3 characters a token: near a real BPE count on this text, not far below
    # a small context: the longest real CoT does not fit and is left out, the shortest fits
    small = api_budget(8192, 2048)
    assert small.fit(lambda _: messages).outcome == "left_out"
    p, shortest = min(traces, key=lambda pt: len(pt[1].cot))
    assert small.fit(lambda _: reflection_messages(p.question, shortest.cot, "")).outcome == "fit"


# ---------------------------------------------------------------------------------------------
# through the real prompted paths: the tiny model as the reflector's engine and as a local teacher


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from conftest import build_tiny_model_dir

    # byte-level tokens: 4096 positions hold a GSM8K worked solution, never a LIMO trace
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model", max_position_embeddings=4096)


class Recorder:
    """The real generator, with the token count of every prompt it is asked to read."""

    def __init__(self, generator):
        self.generator, self.lengths = generator, []
        self.tokenizer, self.model = generator.tokenizer, generator.model

    def generate(self, prompts, sampling, **kwargs):
        counter = TokenCounter(self.tokenizer)
        self.lengths += [counter.count_messages(p) for p in prompts]
        return self.generator.generate(prompts, sampling, **kwargs)

    def close(self):
        self.generator.close()


def test_llm_reflector_cuts_leaves_out_and_never_sends_a_long_prompt(tiny_dir, traces, capsys):
    from orion_utils.generation import TransformersBackend
    from orion_utils.reflection import LLMReflector, ReflectionConfig, ReflectionItem, _budget_note

    short = _gsm8k_cot(3)
    # items: a short real teacher CoT with a long real wrong attempt (cut), with a short attempt (fits),
    # and a long LIMO teacher CoT (left out)
    items = [ReflectionItem(p, t.cot, traces[k][1].cot) for k, (p, t) in enumerate(short[:2])]
    items.append(ReflectionItem(short[2][0], short[2][1].cot, "I think it is 5.\n\\boxed{5}"))
    items.append(ReflectionItem(traces[0][0], traces[0][1].cot, "\\boxed{1}"))
    generator = Recorder(TransformersBackend(tiny_dir, progress=False))
    cfg = ReflectionConfig(m=1, max_new_tokens=8, temperature=1.0)
    reflector = LLMReflector(generator, cfg, max_model_len=16384)  # more than the model has: its own 4096 rule
    out = reflector.propose(items, 1)
    assert len(out) == 4 and out[3] == []
    counts = reflector.budget_counts
    assert (counts.fit, counts.cut, counts.left_out) == (1, 2, 1)
    assert counts.limit == 4096 - 8 and counts.counted == "tokenizer"
    assert len(generator.lengths) == 3 and max(generator.lengths) <= counts.limit
    note = _budget_note(reflector)
    assert note["prompt_budget"]["reflect"]["left_out"] == 1
    assert "[reflection] prompt budget: reflect: 1 fit as built, 2 cut, 1 left out (limit 4088 = 4096 - 8" \
        in capsys.readouterr().out


def test_local_teacher_fits_every_feedback_prompt(tiny_dir, traces, capsys):
    """rectify (wrong solution cut), corrupt and judge (never cut: a long correct CoT is left out), tailor
    (the attempts' middles cut), on the real local-teacher path; EDIT's pairs and Tailored Learning's
    rationales go on without the left-out items and say so in their lines."""
    from dataclasses import replace

    from orion_utils.config import TailoredConfig
    from orion_utils.edit_pairs import pairs_from_teacher
    from orion_utils.tailored import tailored_rationales
    from orion_utils.teachers.local import LocalTeacher

    (p0, s0), (p1, s1) = _gsm8k_cot(2)
    (_, t0), (q1, t1), (q2, t2), (q3, t3) = traces[:4]  # correct LIMO traces (a few thousand tokens each)
    # a question that holds a whole real CoT: its tailoring prompt cannot fit 4096 byte-level tokens
    long_question = replace(q3, id="long", question=q3.question + "\n\n" + t3.cot)
    teacher = LocalTeacher(tiny_dir, backend="transformers", max_tokens=8, progress=False)
    recorder = Recorder(teacher._generator_or_load())
    teacher._generator = recorder
    limit = 4096 - 8
    long_wrong = replace(s0, solution=t0.cot, correct=False)  # a long real wrong solution
    t1 = replace(t1, thinking="", solution=t1.cot)  # a long real correct solution (a reply with no thinking part)
    rectified = teacher.rectify_many([(p0, long_wrong)])
    corrupted = teacher.corrupt_many([(p1, s1), (q1, t1)])
    assert rectified[0] is not LEFT_OUT and rectified[0].meta["prompt_cut_tokens"] > 0
    assert corrupted[0] is not LEFT_OUT and corrupted[1] is LEFT_OUT
    tailored = teacher.tailor_many([(p0, [t1.cot, t2.cot]), (p1, ["\\boxed{2}"]), (long_question, ["\\boxed{2}"])])
    assert isinstance(tailored[0], list) and isinstance(tailored[1], list) and tailored[2] is LEFT_OUT
    scores = teacher.judge_many([(p0.question, s0.cot), (q2.question, t2.cot)])
    assert scores[1] is None
    counts = {k: (c.fit, c.cut, c.left_out) for k, c in teacher.prompt_counts.items()}
    assert counts == {"rectify": (0, 1, 0), "corrupt": (1, 0, 1), "tailor": (1, 1, 1), "judge": (1, 0, 1)}
    assert len(recorder.lengths) == 5 and max(recorder.lengths) <= limit

    # the stages' own calls: a long teacher trace's corruption is left out, and nothing raises
    assert s1.correct and t1.correct
    pairs_from_teacher([p1, q1], [s1, t1], teacher)
    assert "[edit] prompt budget: corrupt: 1 fit as built, 0 cut, 1 left out (limit 4088" in capsys.readouterr().out
    cfg = TailoredConfig(tailor_samples=1, max_wrong_shown=2)
    out = tailored_rationales([p0, long_question], teacher, {p0.id: [t1.cot], "long": ["\\boxed{2}"]}, cfg)
    assert len(out) == 1 and out[0].problem_id == p0.id
    assert "[tailored] prompt budget: tailor: 0 fit as built, 1 cut, 1 left out" in capsys.readouterr().out
    teacher.close()


def test_judge_consistency_records_the_counts(tiny_dir, traces):
    from orion_utils.analysis import judge_consistency
    from orion_utils.teachers.local import LocalTeacher

    teacher = LocalTeacher(tiny_dir, backend="transformers", max_tokens=8, progress=False)
    out = judge_consistency(teacher, [(traces[0][0].question, traces[0][1].cot)])
    assert out["n"] == 0 and out["failed"] == 1
    assert out["prompt_budget"]["judge"]["left_out"] == 1
    teacher.close()


def test_profile_checks_max_new_tokens_against_the_context():
    from orion_utils.config import ConfigError, load_profile

    with pytest.raises(ConfigError, match=r"reflection.max_new_tokens=4096 leaves no room.*max_model_len=4096"):
        load_profile("colab", {"generation": {"max_model_len": 4096}, "reflection": {"max_new_tokens": 4096}})
    with pytest.raises(ConfigError, match=r"teacher.max_tokens=16384 .*teacher.max_context_tokens=8192"):
        load_profile("toy", {"teacher": {"max_context_tokens": 8192}})
    load_profile("colab", {"generation": {"max_model_len": 8192}, "reflection": {"max_new_tokens": 1024},
                           "exposure": {"max_new_tokens": 1024}, "evaluation": {"max_new_tokens": 1024}})


def test_report_shows_the_counts(tmp_path):
    from orion_utils.report import budget_lines
    from orion_utils.rundir import RunDir

    run = RunDir(tmp_path / "run")
    out = tmp_path / "x.txt"
    counts = {"limit": 3584, "context": 4096, "reserve": 512, "counted": "tokenizer", "fit": 2, "cut": 3,
              "left_out": 4}
    run.run_stage("reflection", {}, [], [out], lambda: out.write_text("x") and {"prompt_budget": {"reflect": counts}})
    analysis = {"methods": {"sft": {"judge_consistency": {"prompt_budget": {"judge": {**counts, "left_out": 1}}}}}}
    text = "\n".join(budget_lines(run, analysis))
    assert "| reflection | reflect | 2 | 3 | 4 | 3584 = 4096 − 512 | tokenizer |" in text
    assert "| analysis | judge (sft) | 2 | 3 | 1 |" in text
    assert budget_lines(RunDir(tmp_path / "empty")) == []
