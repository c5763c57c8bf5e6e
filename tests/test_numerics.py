"""fp16 that cannot go wrong silently (orion_utils.numerics): a NaN or infinite score or training loss stops
the stage with one error naming the dtype and the fix, NaN never wins a selection, and degenerate
generations ("!!!!...") are counted in the generating stages' lines.

No GPU here, and float16 overflow does not happen on a CPU in float32: the non-finite values are injected
(a forward hook making the LM head's logits NaN, a loss multiplied by NaN) and the degenerate texts are
put in place of real generations (the transformers backend's output rewritten); CUDA's name and compute
capability are faked where a message names them."""
from __future__ import annotations

import math

import pytest
import torch

from orion_utils import device, generation, numerics, training
from orion_utils.config import DataConfig, GenerationConfig, StudentConfig
from orion_utils.generation import TransformersBackend, completion_nll
from orion_utils.jsonl import write_json, write_jsonl
from orion_utils.numerics import NonFiniteError, degenerate_note, degenerate_unit, is_degenerate
from orion_utils.records import SFTExample

QS = ["What is 2+2?", "Hi", "Add 17 and 25."]
CS = ["<think>\n2+2=4\n</think>\n\n\\boxed{4}", "Hello!", "17+25=42. \\boxed{42}"]
BANGS = "!" * 200


@pytest.fixture(autouse=True)
def one_thread():
    with device.torch_threads(1):
        yield


def nan_logits(model):
    """A forward hook on the LM head: every logit NaN (what float16 overflow gives)."""
    return model.get_output_embeddings().register_forward_hook(lambda _m, _a, out: out * float("nan"))


# --------------------------------------------------------------------------------------------------
# degenerate generations


@pytest.mark.parametrize("text,unit", [
    (BANGS, "!"),
    ("Let me think. 3 + 4 = 7, so" + "!" * 500 + "\n  ", "!"),  # a real start, then the symptom to the end
    ("ab" * 40, "ab"),
    ("The answer is" + " the" * 40, " the"),
    ("! " * 40, " !"),
])
def test_one_short_string_repeated_to_the_end_is_degenerate(text, unit):
    assert degenerate_unit(text) == unit and is_degenerate(text)


@pytest.mark.parametrize("text", [
    "",
    "!!!",  # too few repeats
    "!" * (numerics.DEGENERATE_MIN_REPEATS - 1),
    "I think so" + "!" * 200 + " so the answer is \\boxed{7}.",  # repeated, but not to the end
    "=" * 20 + "\nThe answer is \\boxed{4}.",
    " " * 300,  # only whitespace
    "abcdefghij" * 40,  # a unit longer than DEGENERATE_MAX_UNIT characters
    "<think>\n2+2=4\n</think>\n\n\\boxed{4}",
])
def test_ordinary_text_is_not_degenerate(text):
    assert not is_degenerate(text)


def test_the_note_counts_and_says_what_it_means():
    assert degenerate_note(["fine", "also fine"], "attempts") == "0 of 2 attempts degenerate"
    note = degenerate_note([BANGS, "fine", "x" * 64], "answers")
    assert note.startswith("2 of 3 answers degenerate (") and "float16" in note and "generation.dtype=float32" in note


# --------------------------------------------------------------------------------------------------
# the error: dtype, GPU and fix


def fake_gpu(monkeypatch, name: str, capability: tuple):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


def test_the_error_names_the_precision_the_gpu_and_the_fix(monkeypatch):
    fake_gpu(monkeypatch, "Tesla T4", (7, 5))
    assert numerics.precision_words(torch.float16, "cuda") == "float16 on Tesla T4 (sm 75)"
    with pytest.raises(NonFiniteError) as info:
        numerics.check_finite_scores([1.0, math.nan, math.inf], [True, True, True], torch.float16, "cuda:0")
    message = str(info.value)
    assert message.startswith("2 of 3 completion scores (mean token NLL) are NaN or infinite, computed in "
                              "float16 on Tesla T4 (sm 75): ")
    assert "set generation.dtype=float32, e.g. --set generation.dtype=float32" in message and "bfloat16" not in message
    with pytest.raises(NonFiniteError, match=r"the OrionSFTTrainer loss is nan at step 3, computed in float16 on "
                                             r"Tesla T4 \(sm 75\): .*set training\.dtype=float32"):
        numerics.check_finite_loss(math.nan, 3, "float16", "cuda", "OrionSFTTrainer")
    fake_gpu(monkeypatch, "NVIDIA A100-SXM4-80GB", (8, 0))  # a GPU with bf16: it is named as the other way
    with pytest.raises(NonFiniteError, match=r"float16 on NVIDIA A100-SXM4-80GB \(sm 80\).*\(or bfloat16: this GPU has it\)"):
        numerics.check_finite_loss(math.inf, 1, torch.float16, "cuda:0")
    # in float32 it is not a precision problem, and the message does not pretend it is
    with pytest.raises(NonFiniteError, match="float32 on the CPU: in float32 this is not a precision problem"):
        numerics.check_finite_scores([math.nan], [True], torch.float32, "cpu")
    # a completion without scored tokens is NaN by definition; finite scores pass
    numerics.check_finite_scores([math.nan, 2.5], [False, True], torch.float16, "cpu")
    numerics.check_finite_loss(0.7, 1, "float16", "cpu")


# --------------------------------------------------------------------------------------------------
# scores


def test_nan_scores_stop_completion_nll_with_the_dtype_and_the_fix(tiny_model_dir):
    model, tok = generation.load_scoring_model(tiny_model_dir, dtype="float16")  # the scoring dtype follows the knob
    assert next(model.parameters()).dtype == torch.float16
    finite = completion_nll(model, tok, QS, CS)
    assert all(math.isfinite(x) for x in finite)
    hook = nan_logits(model)
    try:
        with pytest.raises(NonFiniteError, match=r"^3 of 3 completion scores .* computed in float16 on the CPU: "
                                                 r".*set generation\.dtype=float32"):
            completion_nll(model, tok, QS, CS)
    finally:
        hook.remove()


def test_nan_never_wins_a_selection():
    from orion_utils.reflection import select_candidate

    cands = ["a", "b", "c"]
    assert select_candidate(cands, "perplexity", [math.nan, 2.0, 1.0]) == 2
    assert select_candidate(cands, "perplexity", [0.5, math.nan, 1.0]) == 0  # min over NaN used to depend on order
    assert select_candidate(cands, "perplexity", [math.nan, 3.0, math.inf]) == 1
    with pytest.raises(NonFiniteError, match="every candidate's NLL is NaN or infinite"):
        select_candidate(cands, "perplexity", [math.nan, math.nan, math.inf])


def test_a_nan_scorer_stops_stage_03(tmp_path, tiny_model_dir, monkeypatch):
    """The reflection stage (llm reflector, perplexity selection) on a student generating and scoring in
    float16 whose logits turn NaN while it scores: the stage stops with the one error, marked failed,
    its outputs not written."""
    from test_gpu_memory import _reflection_run

    from orion_utils.reflection import LLMReflector, ReflectionConfig, run_reflection

    run = _reflection_run(tmp_path, tiny_model_dir)
    real_propose, real_score = LLMReflector.propose, TransformersBackend.score

    def propose_and_add_the_teacher_cot(self, items, m, seed=None):  # a candidate that verifies, so selection scores
        return [cands + [i.teacher_cot] for cands, i in zip(real_propose(self, items, m, seed=seed), items)]

    def score_with_nan_logits(self, *args, **kwargs):
        hook = nan_logits(self.model)
        try:
            return real_score(self, *args, **kwargs)
        finally:
            hook.remove()

    monkeypatch.setattr(LLMReflector, "propose", propose_and_add_the_teacher_cot)
    monkeypatch.setattr(TransformersBackend, "score", score_with_nan_logits)
    cfg = ReflectionConfig(reflector="llm", m=2, max_new_tokens=8, selection="perplexity",
                           reflect_window=None, min_coverage=0.0, min_added_chars=0, reject_echoes=False)
    with pytest.raises(NonFiniteError, match=r"computed in float16 on the CPU: .*generation\.dtype=float32"):
        run_reflection(run, cfg, StudentConfig(model="toy-like"),
                       GenerationConfig(backend="transformers", dtype="float16"))
    assert run.stage_info("reflection")["status"] == "failed"
    assert not run.refinements.exists()


# --------------------------------------------------------------------------------------------------
# losses: one check in the trainer's step, for every method


def _examples(n: int) -> list[SFTExample]:
    return [SFTExample(f"p{i}", f"{3 + i}+4?", f"<think>{3 + i}+4={7 + i}</think> \\boxed{{{7 + i}}}", "teacher")
            for i in range(n)]


def test_a_nan_sft_loss_stops_training_with_the_dtype_and_the_fix(tiny_model_dir, tmp_path, monkeypatch):
    from orion_utils.config import TrainingConfig

    real = training.OrionSFTTrainer.compute_loss

    def nan_loss(self, *args, **kwargs):  # the loss hook: what an overflowing forward pass gives
        out = real(self, *args, **kwargs)
        return out * float("nan") if self.state.global_step >= 1 else out

    monkeypatch.setattr(training.OrionSFTTrainer, "compute_loss", nan_loss)
    cfg = TrainingConfig(max_steps=3, batch_size=2, learning_rate=1e-3, warmup_ratio=0.0, save_steps=10**6,
                         cpu_threads=1)
    with pytest.raises(NonFiniteError, match=r"loss is nan at step 2, computed in float32 on the CPU: in float32 "
                                             r"this is not a precision problem"):
        training.train_sft(tiny_model_dir, _examples(4), tmp_path / "out", cfg)
    assert not (tmp_path / "out" / "model").exists()  # nothing published


@pytest.mark.parametrize("method", ["edit", "tailored"])
def test_every_methods_loss_goes_through_the_same_check(method, tiny_model_dir, tmp_path, monkeypatch):
    """EDIT's and Tailored Learning's trainers override compute_loss; the check is in the step they share."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples = [SFTExample(f"q{i}", e.question, e.response, "teacher",
                           meta={"positive": e.response + " again", "negative": "<think>no</think> \\boxed{0}"})
                for i, e in enumerate(_examples(2))]
    if method == "edit":
        from orion_utils.edit import EditConfig, edit_method, pair_rows
        from orion_utils.records import DualPair

        cfg = EditConfig(batch_size=2, max_seq_len=256, cpu_threads=1)
        pairs = [DualPair(e.problem_id, e.question, e.response, "<think>wrong 8</think> \\boxed{8}", "exposure")
                 for e in examples]
        rows, _, _ = pair_rows(tok, pairs, cfg)
        for row in rows:
            n_resp, n_rej = len(row["input_ids"]) - row["prompt_len"], len(row["rejected_input_ids"]) - row["rejected_prompt_len"]
            row["key_ops"] = json.dumps({"prefix_len": 0, "len_chosen": n_resp, "len_rejected": n_rej,
                                         "ops": [["replace", 0, n_resp, 0, n_rej]]})
        spec = edit_method(cfg)
    else:
        from orion_utils.tailored import TailoredConfig
        from orion_utils.tailored_training import tailored_method, tailored_rows

        cfg = TailoredConfig(batch_size=2, max_seq_len=256, cpu_threads=1)
        rows, _ = tailored_rows(tok, examples, cfg)
        spec = tailored_method(cfg)
    with training.quiet():
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
        trainer = training.build_trainer(model, tok, rows, cfg, tmp_path / method, "padded", "cpu", "float32",
                                         method=spec)
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which this step is taken outside of
    batch = trainer.data_collator(rows)
    model.train()
    assert math.isfinite(float(trainer.training_step(model, batch)))
    hook = nan_logits(model)
    try:
        with pytest.raises(NonFiniteError, match=f"the {type(trainer).__name__} loss is nan at step 1"):
            trainer.training_step(model, batch)
    finally:
        hook.remove()


# --------------------------------------------------------------------------------------------------
# degenerate generations in the stage lines


@pytest.fixture
def half_degenerate(monkeypatch):
    """The real transformers backend, every other prompt's generations replaced by the float16 symptom."""
    real = TransformersBackend._generate

    def generate(self, encoded, sampling, desc):
        out = real(self, encoded, sampling, desc)
        return [[generation.Generation(BANGS, g.n_tokens, "length") for g in row] if i % 2 == 0 else row
                for i, row in enumerate(out)]

    monkeypatch.setattr(TransformersBackend, "_generate", generate)


def test_exposure_and_evaluation_count_degenerate_generations_in_their_lines(tmp_path, tiny_model_dir,
                                                                              half_degenerate, capsys):
    from orion_utils.evaluation import EvaluationConfig, evaluate_method
    from orion_utils.exposure import ExposureConfig, run_error_exposure
    from orion_utils.prepare import run_prepare_data
    from orion_utils.rundir import RunDir

    run = RunDir(tmp_path / "run")
    run_prepare_data(run, DataConfig(train_source="toy", n_train=4, toy_test_size=3, toy_hard_size=2))
    write_json(run.student_info, {"model": tiny_model_dir, "in_run_dir": False, "kind": "pretrained"})
    write_jsonl(run.teacher_sft_set, [])
    gen, student = GenerationConfig(backend="transformers", batch_size=8), StudentConfig(model="unused")
    info = run_error_exposure(run, ExposureConfig(k=2, max_new_tokens=4, temperature=1.0), gen, student)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("[error_exposure] 8 attempts"))
    assert line.endswith("; 4 of 8 attempts degenerate (one short string repeated to the end, e.g. '!!!!': a float16 "
                         "symptom; generation.dtype=float32 is the fix if it is)")
    assert info["n_degenerate"] == 4
    evaluate_method(str(run.root), "base", EvaluationConfig(methods=["base"], n_samples=1, max_new_tokens=4), gen,
                    student)
    out = capsys.readouterr().out
    # greedy and sampled rows of toy_test (3 problems: 2 degenerate) and toy_hard (2 problems: 1)
    assert "[evaluation/base] 6 of 10 generations degenerate (" in out
    summary = __import__("json").loads(run.eval_summary("base").read_text())
    assert summary["toy_test"]["n_degenerate"] == 4 and summary["toy_hard"]["n_degenerate"] == 2


def test_tailored_exams_count_degenerate_answers(tmp_path, tiny_model_dir, half_degenerate, capsys):
    from orion_utils.layouts import TailoredDir
    from orion_utils.tailored import TailoredConfig, _Exam, exam_stats, unique_wrong_rationales
    from orion_utils.toy.domain import ToyDomainConfig, generate_problems

    problems = generate_problems(3, ToyDomainConfig(), seed=0, split="train")
    exam = _Exam(problems, lambda d: TransformersBackend(d, batch_size=8, progress=False),
                 TailoredConfig(exam_samples=2, exam_max_new_tokens=4), generation_grader(), "{question}", None)
    attempts = exam.sit(TailoredDir(tmp_path / "tailored").round(0), tiny_model_dir, "base")
    assert "[tailored] round_0 exam (base): 4 of 6 answers degenerate (" in capsys.readouterr().out
    assert exam_stats(attempts, unique_wrong_rationales(attempts))["n_exam_degenerate"] == 4


def generation_grader():
    from orion_utils.grading import grade

    return grade


# --------------------------------------------------------------------------------------------------
# the fixes the errors name are knobs that act


def test_the_fixes_named_are_knobs_that_act(tiny_model_dir, monkeypatch):
    from orion_utils.config import load_profile

    # training.dtype: float32 on a (faked) T4 trains without autocast; EDIT's and Tailored's sections inherit it
    fake_gpu(monkeypatch, "Tesla T4", (7, 5))
    paper = load_profile("paper", {"training": {"dtype": "float32"}})
    assert paper.edit.dtype == paper.tailored.dtype == "float32"
    assert device.device_and_dtype("auto", paper.training.dtype) == ("cuda", "float32")
    assert device.trainer_autocast("cuda", "float32") == {"bf16": False, "fp16": False}
    assert device.device_and_dtype("auto", load_profile("colab").training.dtype) == ("cuda", "float16")
    monkeypatch.undo()
    # generation.dtype: the scoring model a stage loads (after closing an engine that cannot score) follows it
    monkeypatch.setattr(TransformersBackend, "can_score", False)
    with generation.StageModel(tiny_model_dir, GenerationConfig(backend="transformers", dtype="float16")) as stage:
        model, _ = stage.scoring()
        assert next(model.parameters()).dtype == torch.float16


def test_nan_perplexity_stops_the_analysis_which_records_other_scorer_failures(tmp_path, tiny_model_dir, monkeypatch):
    """The analysis's default scorer (the base student, in config.json's generation.dtype) is allowed to fail
    to load (recorded, the analysis goes on); NaN scores are not a load failure: they stop it."""
    from orion_utils.analysis import _perplexity_numbers, student_scorer
    from orion_utils.rundir import RunDir

    run = RunDir(tmp_path / "run")
    run.write_config({"student": {"prompt_template": "{question}"}, "generation": {"dtype": "float16"}})
    write_json(run.student_info, {"model": tiny_model_dir, "in_run_dir": False, "kind": "pretrained"})
    real = generation.load_scoring_model

    def load_with_nan_logits(*args, **kwargs):
        model, tok = real(*args, **kwargs)
        nan_logits(model)
        return model, tok

    monkeypatch.setattr(generation, "load_scoring_model", load_with_nan_logits)
    with pytest.raises(NonFiniteError, match="computed in float16 on the CPU"):
        _perplexity_numbers("sft", list(zip(QS, CS)), student_scorer(run), default_scorer=True)

    def cannot_load(questions, completions):
        raise OSError("no such model")

    row = _perplexity_numbers("sft", list(zip(QS, CS)), cannot_load, default_scorer=True)
    assert row["cot_perplexity"] is None and row["cot_perplexity_error"] == "OSError: no such model"
