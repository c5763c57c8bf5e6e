"""EDIT's dual pairs as the paper builds them from several teacher samples: a question's wrong and correct
CoTs taken in turn, replies that are no rewrite (cut off, untagged, empty) rejected and counted, the
key-token share measured with the real alignment in a real tokenizer, pairs above edit.max_key_share dropped."""
from __future__ import annotations

import json
import statistics

import pytest

from orion_utils.config import EditConfig, TrainingConfig
from orion_utils.edit import KeyOps, encode_pair, measure_key_shares, run_edit
from orion_utils.edit_pairs import (
    build_dual_pairs,
    key_share_summary,
    mark_key_share_drops,
    quantile,
    stage1_examples,
    summary_line,
)
from orion_utils.records import DualPair, Problem, SFTExample, TeacherTrace, format_cot
from orion_utils.teachers.prompts import Completion, PromptedTeacher


def _tagged(reasoning: str, answer: str) -> str:
    return (f"<rewritten_reasoning>\n{reasoning}\n</rewritten_reasoning>\n"
            f"<rewritten_solution>\nSo \\boxed{{{answer}}}.\n</rewritten_solution>")


def _trace(pid: str, thinking: str, answer: str, correct: bool, i: int = 0) -> TeacherTrace:
    return TeacherTrace(pid, thinking, f"So \\boxed{{{answer}}}.", answer, correct, "teacher", i)


class ScriptedTeacher(PromptedTeacher):
    """A PromptedTeacher (the API and local teachers' prompts, reply parsing and grading) whose completion
    call returns, per problem, a scripted reply: ``script[problem id](kind, prompt) -> Completion``. The
    stand-in is for the model only: a paid API or a large local model cannot run here."""

    def __init__(self, script):
        self.script, self.asked = script, []

    def _complete(self, requests):
        self.asked += [(r.problem_id, r.kind) for r in requests]
        return [self.script[r.problem_id](r.kind, r.messages[-1]["content"]) for r in requests]


def good(kind: str, prompt: str) -> Completion:
    """A reply that does what the prompt asks: the CoT back with one number changed (wrong for corrupt,
    the hinted answer for rectify)."""
    if kind == "corrupt":
        return Completion("plan", _tagged("First 3 * 4 = 13. Then 2 + 13 = 15.", "15"), finish_reason="stop")
    return Completion("plan", _tagged("First 3 * 4 = 12. Then 2 + 12 = 14.", "14"), finish_reason="stop")


PROBLEMS = [Problem(f"q{i}", "Compute 2 + 3 * 4.", "14") for i in range(5)]
RIGHT = "First 3 * 4 = 12. Then 2 + 12 = 14."
WRONG = "First 3 * 4 = 11. Then 2 + 11 = 13."


def test_four_samples_give_a_question_one_rectified_and_one_corrupted_pair():
    # q0: wrong, right, right, wrong; q1: all right; q2: all wrong. Limit 2 pairs a question.
    traces = ([_trace("q0", WRONG, "13", False, 0), _trace("q0", RIGHT, "14", True, 1),
               _trace("q0", RIGHT, "14", True, 2), _trace("q0", WRONG, "13", False, 3)]
              + [_trace("q1", RIGHT, "14", True, i) for i in range(4)]
              + [_trace("q2", WRONG, "13", False, i) for i in range(4)])
    teacher = ScriptedTeacher({p.id: good for p in PROBLEMS})
    counts: dict = {}
    pairs = build_dual_pairs("teacher", PROBLEMS, traces, teacher=teacher, max_pairs_per_problem=2, counts=counts)
    kinds = [(p.problem_id, p.meta["kind"], p.meta["trace_sample"]) for p in pairs]
    assert kinds == [("q0", "rectified", 0), ("q0", "corrupted", 1), ("q1", "corrupted", 0),
                     ("q1", "corrupted", 1), ("q2", "rectified", 0), ("q2", "rectified", 1)]
    assert counts["asked"] == {"rectify": 3, "corrupt": 3}
    assert counts["rejected"] == {"cut_off": 0, "untagged": 0, "empty": 0}
    rectified = next(p for p in pairs if p.problem_id == "q0" and p.meta["kind"] == "rectified")
    assert rectified.rejected == format_cot(WRONG, "So \\boxed{13}.") and "2 + 12 = 14" in rectified.chosen


def test_replies_cut_off_untagged_or_empty_are_rejected_with_counts():
    def cut_off(kind, prompt):  # the teacher's output hit max_tokens mid-rewrite: its solution tag never came
        return Completion("plan", "<rewritten_reasoning>\nFirst 3 * 4 = 13. Then", finish_reason="length")

    def untagged(kind, prompt):  # a wrong answer, but no rewrite of the CoT
        return Completion("plan", "2 + 3 = 5 and 5 * 4 = 20, so \\boxed{20}.", finish_reason="stop")

    def empty(kind, prompt):  # the tags, nothing in the reasoning
        return Completion("plan", _tagged("", "20"), finish_reason="stop")

    def still_right(kind, prompt):
        return good("rectify", prompt)

    script = {"q0": good, "q1": cut_off, "q2": untagged, "q3": empty, "q4": still_right}
    traces = [_trace(p.id, RIGHT, "14", True) for p in PROBLEMS] + [_trace("q1", WRONG, "13", False, 1)]
    counts: dict = {}
    pairs = build_dual_pairs("teacher", PROBLEMS, traces, teacher=ScriptedTeacher(script), counts=counts)
    assert [(p.problem_id, p.meta["kind"]) for p in pairs] == [("q0", "corrupted")]
    assert counts == {"asked": {"rectify": 1, "corrupt": 5},
                      "rejected": {"cut_off": 2, "untagged": 1, "empty": 1},  # q1's corrupt and its rectify
                      "not_a_pair": {"prompt_left_out": 0, "corruption_still_correct": 1,
                                     "rectification_still_wrong": 0}}


def test_the_key_token_share_is_measured_with_the_real_alignment(tiny_tokenizer):
    near = DualPair("q0", "Compute 2 + 3 * 4.", format_cot(RIGHT, "So \\boxed{14}."),
                    format_cot(WRONG, "So \\boxed{13}."), "teacher_prompts", {"kind": "corrupted"})
    other = DualPair("q1", "Compute 2 + 3 * 4.", format_cot(RIGHT, "So \\boxed{14}."),
                     "Multiply everything together: 2 * 3 * 4 is twenty-four. \\boxed{24}", "teacher_prompts",
                     {"kind": "rectified"})
    measured = measure_key_shares(tiny_tokenizer, [near, other])
    for pair in measured:  # the share is the stage-2 alignment's: key tokens of the correct response / its tokens
        ops = KeyOps.from_dict(encode_pair(tiny_tokenizer, pair)["key_ops"])
        assert pair.meta["key_ops"] == ops.to_dict()
        assert pair.meta["key_share"] == pytest.approx(ops.n_key_chosen / ops.len_chosen, abs=1e-6)
        assert pair.meta["key_share_rejected"] == pytest.approx(ops.n_key_rejected / ops.len_rejected, abs=1e-6)
    shares = [p.meta["key_share"] for p in measured]
    assert shares[0] < 0.15 and shares[1] > 0.5  # one digit per step vs another text

    kept = mark_key_share_drops(measured, 0.5)
    assert not kept[0].meta.get("dropped") and "edit.max_key_share 0.5" in kept[1].meta["dropped"]
    summary = key_share_summary(kept, 0.5, {"asked": {"rectify": 1, "corrupt": 1},
                                            "rejected": {"cut_off": 0, "untagged": 0, "empty": 0}, "not_a_pair": {}})
    assert summary["kinds"] == {"rectified": 1, "corrupted": 1, "exposure": 0}
    assert summary["kinds_kept"] == {"rectified": 0, "corrupted": 1, "exposure": 0}
    assert summary["dropped_above_max_key_share"] == 1 and summary["n_kept"] == 1
    assert summary["key_share"]["median"] == pytest.approx(statistics.median(shares))
    assert summary["key_share"]["p90"] == pytest.approx(shares[0] + 0.9 * (shares[1] - shares[0]))
    line = summary_line(summary)
    assert line.startswith("[edit] 2 dual pairs: 1 rectified, 1 corrupted, 0 exposure") and "p90" in line
    # the dropped rectified pair gives stage 1 no D−+
    assert [e.source for e in stage1_examples(PROBLEMS, [], kept)] == []
    assert mark_key_share_drops(kept, 1.0)[1].meta.get("dropped") is None  # 1 keeps every pair


def test_quantile_is_numpy_linear():
    np = pytest.importorskip("numpy")
    xs = [0.3, 0.01, 0.9, 0.42, 0.05, 0.77, 0.6]
    for q in (0.0, 0.1, 0.5, 0.9, 1.0):
        assert quantile(xs, q) == pytest.approx(float(np.quantile(xs, q)))
    assert quantile([], 0.9) is None


def test_stage1_positives_are_the_sft_set_one_cot_per_question():
    traces = [_trace("q0", RIGHT, "14", True, i) for i in range(3)] + [_trace("q1", RIGHT + " Done.", "14", True)]
    sft_set = [SFTExample("q0", PROBLEMS[0].question, traces[1].cot, "teacher", {"teacher": "t"})]
    assert len(stage1_examples(PROBLEMS, traces)) == 2  # every distinct correct trace
    assert [(e.problem_id, e.response) for e in stage1_examples(PROBLEMS, traces, (), sft_set)] == [
        ("q0", traces[1].cot)]


def test_run_edit_drops_pairs_above_the_share_and_writes_their_summary(tiny_model_dir, tmp_path, capsys):
    checked = RIGHT + " Check: 3 * 4 = 12, yes. Check: 2 + 12 = 14, yes. So the value is 14 in the end."
    traces = [_trace("q0", RIGHT, "14", True), _trace("q1", checked, "14", True)]

    def rewrite(kind, prompt):  # a short other text, wrong: a "corruption" that keeps almost nothing of the CoT
        return Completion("plan", _tagged("Zzzz kkkk wwww.", "24"), finish_reason="stop")

    teacher = ScriptedTeacher({"q0": good, "q1": rewrite})
    cfg = EditConfig(pair_source="teacher", max_steps=1, batch_size=2, max_seq_len=256, max_key_share=0.5)
    sft = TrainingConfig(max_steps=1, batch_size=2, max_seq_len=256, logging_steps=1)
    out = tmp_path / "edit"
    summary = run_edit(tiny_model_dir, PROBLEMS[:2], traces, out, cfg, sft, teacher=teacher,
                       stage1_model_dir=tiny_model_dir)  # stage 1 as given: stage 2 is what reads the pairs
    stored = json.loads((out / "pairs_summary.json").read_text())
    assert summary["n_pairs"] == 1 and summary["pairs"] == stored
    assert stored["kinds"]["corrupted"] == 2 and stored["dropped_above_max_key_share"] == 1
    assert stored["teacher_replies"]["asked"] == {"rectify": 0, "corrupt": 2}
    assert "[edit] 2 dual pairs: 0 rectified, 2 corrupted" in capsys.readouterr().out
    trained = [json.loads(line) for line in (out / "stage2" / "pairs_with_ops.jsonl").read_text().splitlines()]
    assert [p["problem_id"] for p in trained] == ["q0"]  # stage 2 trained on the kept pair only

    again = run_edit(tiny_model_dir, PROBLEMS[:2], traces, out, cfg, sft, teacher=None,
                     stage1_model_dir=tiny_model_dir)  # the pairs and their summary read back
    assert again["pairs"] == stored

    every = EditConfig(pair_source="teacher", max_steps=1, batch_size=2, max_seq_len=256, max_key_share=0.01)
    with pytest.raises(ValueError, match="max_key_share"):
        run_edit(tiny_model_dir, PROBLEMS[:2], traces, tmp_path / "edit_none", every, sft, teacher=teacher)
