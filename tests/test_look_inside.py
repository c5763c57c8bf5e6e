"""Each stage's ``look_inside``: one example of a run through the stage's pure functions, on a small
hand-made run directory (a tiny random student, two toy questions), and a note where a method was left out."""
import json

import pytest

from orion_utils import analysis, collection, edit, evaluation, exposure, prepare, reflection, sft, tailored
from orion_utils.jsonl import write_json, write_jsonl
from orion_utils.records import DualPair, EvalSample, Refinement, SFTExample, StudentAttempt, TeacherTrace
from orion_utils.rundir import RunDir
from orion_utils.toy.domain import generate_problems

WRONG_STEP = "3 - 1 = 3"


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir):
    run = RunDir(tmp_path_factory.mktemp("look") / "run")
    problems = generate_problems(2, seed=0, split="train")
    p0, p1 = problems
    write_json(run.path("config.json"), {"profile": "test", "student": {"prompt_template": "{question}",
                                                                          "system_prompt": ""}})
    write_json(run.data("student.json"), {"model": tiny_model_dir, "in_run_dir": False})
    write_jsonl(run.data("train_problems.jsonl"), problems)
    write_jsonl(run.data("teacher_traces.jsonl"), [
        TeacherTrace(p0.id, "some thinking", f"So the answer is \\boxed{{{p0.answer}}}.", p0.answer, True,
                     "toy"),
        TeacherTrace(p1.id, "wrong thinking", "So the answer is \\boxed{-1}.", "-1", False, "toy")])
    attempts = [StudentAttempt(p.id, i, f"\\boxed{{{p.answer if ok else -1}}}", p.answer if ok else "-1", ok,
                               "base")
                for p, oks in ((p0, (True, False)), (p1, (False, False))) for i, ok in enumerate(oks)]
    write_jsonl(run.data("student_attempts.jsonl"), attempts)
    write_jsonl(run.data("error_attempts.jsonl"), [a for a in attempts if not a.correct])
    write_json(run.data("pass_rates.json"), exposure.pass_rates(attempts))
    good = [f"Check {WRONG_STEP}: no. {'x' * n} \\boxed{{{p0.answer}}}" for n in (1, 30)]
    candidates = [{"answer": p0.answer, "verified": True, "text": t} for t in good] + [
        {"answer": "-1", "verified": False, "text": "\\boxed{-1}"}]
    write_jsonl(run.data("refinements.jsonl"), [
        Refinement(p0.id, "teacher cot", good[0], "\\boxed{-1}", True, 3, 2, "first", "rule",
                   {"reason": "accepted", "candidates": candidates}),
        Refinement(p1.id, "teacher cot", "teacher cot", "\\boxed{-1}", False, 0, 0, "first", "rule",
                   {"reason": "no candidate verified", "candidates": []})])
    span = [good[0].index(WRONG_STEP), good[0].index(WRONG_STEP) + len(WRONG_STEP)]
    write_jsonl(run.training_set("orion"), [
        SFTExample(p1.id, p1.question, "teacher cot", "teacher", {}),
        SFTExample(p0.id, p0.question, good[0], "refined", loss_mask_spans=[span])])
    write_jsonl(run.model("edit") / "pairs.jsonl", [
        DualPair(p0.id, p0.question, f"2 + 2 = 4 \\boxed{{{p0.answer}}}", "2 + 2 = 5 \\boxed{-1}",
                 "error_exposure")])
    write_jsonl(run.model("tailored") / "round_1" / "train.jsonl", [
        SFTExample(p0.id, p0.question, "anchor", "teacher", {"positive": None, "negative": None}),
        SFTExample(p1.id, p1.question, "anchor 2", "teacher",
                   {"positive": "other", "negative": "wrong one"})])
    write_jsonl(run.eval_dir() / "orion" / "toy_test.jsonl", [
        EvalSample("orion", "toy_test", p0.id, "greedy", 0, f"so \\boxed{{{p0.answer}}}", p0.answer,
                   p0.answer, True, "correct", 5)])
    write_json(run.path("analysis.json"), {"claims": [
        {"id": "stability", "claim": "more stable", "verdict": "supported", "text": "orion 0.1 vs sft 0.2",
         "numbers": {"loss_delta_std": {"orion": {"mean": 0.1, "std": 0.0, "n": 1}, "sft": 0.2}}}]})
    return run


def test_prepare_shows_gold_steps_a_teacher_cot_and_its_tokens(run):
    look = prepare.look_inside(run, show=False)
    assert look["gold_steps"] and all(" = " in s for s in look["gold_steps"])
    assert look["tokenized"] == "teacher CoT" and look["n_tokens"] >= len(look["tokens"]) > 0
    assert "".join(look["tokens"]) == look["teacher_cot"][: len("".join(look["tokens"]))]


def test_collection_splits_and_grades_a_trace(run):
    look = collection.look_inside(run, show=False)
    assert look["thinking"] == "some thinking" and look["kept"] is True and look["stored verdict"] is True
    wrong = collection.look_inside(run, problem_id="toy-train-00001", show=False)
    assert wrong["extracted answer"] == "-1" and wrong["kept"] is False


def test_exposure_prefers_a_question_the_student_sometimes_solves(run):
    look = exposure.look_inside(run, show=False)
    assert look["problem_id"] == "toy-train-00000" and look["pass rate"] == 0.5
    assert [s["correct"] for s in look["samples"]] == [True, False]


def test_reflection_replays_grading_scoring_and_selection(run):
    look = reflection.look_inside(run, show=False)
    assert [c["verified"] for c in look["candidates"]] == [True, True, False]
    assert all(isinstance(c["nll"], float) for c in look["candidates"])
    assert look["picked"] == 0 and look["matches_stored_pick"] is True  # rule "first"
    assert reflection.select_candidate(["aa", "a"], "perplexity", [2.0, 1.0]) == 1
    fallback = reflection.look_inside(run, problem_id="toy-train-00001", score=False, show=False)
    assert fallback["picked"] is None and fallback["candidates"] == [] and fallback["matches_stored_pick"]


def test_pick_refinement_prefers_a_choice_among_several(run):
    from orion_utils.jsonl import read_jsonl

    refinements = read_jsonl(run.data("refinements.jsonl"), Refinement)
    assert reflection.pick_refinement(refinements[::-1]).problem_id == "toy-train-00000"


def test_sft_labels_mask_the_prompt_and_the_quoted_wrong_step(run, tiny_tokenizer):
    look = sft.look_inside(run, "orion", show=False)
    kinds = [s["kind"] for s in look["segments"]]
    assert kinds[0] == "prompt" and "masked" in kinds and kinds[-1] == "trained"
    masked = "".join(s["text"] for s in look["segments"] if s["kind"] == "masked")
    assert WRONG_STEP in masked and look["masked spans"] == 1
    segments = sft.label_segments(tiny_tokenizer, [1, 2, 3, 4], [-100, -100, -100, 4], prompt_len=1)
    assert [(s["kind"], s["tokens"]) for s in segments] == [("prompt", 1), ("masked", 2), ("trained", 1)]


def test_edit_marks_the_differing_tokens_and_reports_a_skipped_method(run, tmp_path, capsys):
    look = edit.look_inside(run)
    assert look["n_pairs"] == 1 and "[4]" in look["marked"] and "[5]" in look["marked"]
    assert edit.look_inside(RunDir(tmp_path)) is None
    assert "EDIT was not run" in capsys.readouterr().out


def test_tailored_prefers_a_full_triplet_and_reports_a_skipped_method(run, tmp_path, capsys):
    look = tailored.look_inside(run, show=False)
    assert look["negative"] == "wrong one" and all(look["tokens"].values())
    assert tailored.look_inside(RunDir(tmp_path)) is None
    assert "Tailored Learning was not run" in capsys.readouterr().out


def test_evaluation_grades_a_sample_again(run, capsys):
    look = evaluation.look_inside(run, show=False)
    assert look["correct"] is True and look["stored verdict"] is True
    assert look["extracted answer"] == look["gold"]
    assert evaluation.look_inside(run, method="edit", show=False) is None
    assert "no evaluation samples of 'edit'" in capsys.readouterr().out


def test_analysis_shows_one_claims_numbers(run):
    look = analysis.look_inside(run, "stability", show=False)
    assert look["verdict"] == "supported"
    assert look["numbers"] == {"loss_delta_std / orion": "0.1000", "loss_delta_std / sft": 0.2}
    assert json.loads(run.path("analysis.json").read_text())["claims"][0]["id"] == look["id"]


def test_run_prompt_format_reads_the_runs_student_section(run, tmp_path):
    from orion_utils.chat import run_prompt_format

    assert run_prompt_format(run) == ("{question}", None)
    student = {"prompt_template": "Q: {question}", "system_prompt": "Be brief."}
    write_json(tmp_path / "config.json", {"student": student})
    assert run_prompt_format(RunDir(tmp_path)) == ("Q: {question}", "Be brief.")
    assert run_prompt_format(RunDir(tmp_path / "empty")) == ("{question}", None)
