"""What each method trains on: its questions, examples and tokens, and what was left out and why.

The table the report shows under the results (``report.training_set_section``), computed from the run
directory the way training reads it: ``RunDir.training_files``, the question set of stage 01
(``data/question_set.json``), and the ``max_seq_len`` / ``overlong`` of the section each method is
trained under (``TRAINING_SECTION``).
"""
from __future__ import annotations

import json
from typing import Any, Callable, Optional, Sequence

from .jsonl import read_jsonl
from .records import SFTExample
from .rundir import RunDir

# the profile section whose max_seq_len / overlong a method's training set is trained under
TRAINING_SECTION = {"tailored": "tailored"}  # every other method trains under the `training` section
LEFT_OUT_BY_TRAINING = "longer than max_seq_len: left out by training (overlong: drop)"
NOT_IN_METHOD = "questions other methods train on, absent here"
REPLACED_BY_TEACHER_COT = "rewrites longer than max_seq_len (the teacher CoT trained instead)"


def _example_counter(run: RunDir, tokenizer: Any) -> Optional[Callable[[str, str], int]]:
    """(question, response) → prompt + assistant-turn tokens in the student's chat format, as training
    counts them; None without a tokenizer that has a chat template (lengths are then whitespace words)."""
    if tokenizer is None or not hasattr(tokenizer, "apply_chat_template"):
        return None
    from .chat import encode_for_training, run_prompt_format

    template, system = run_prompt_format(run)
    return lambda q, r: len(encode_for_training(tokenizer, q, r, template, system=system)["input_ids"])


def _method_examples(run: RunDir, method: str, qs: Any, count) -> tuple[list[SFTExample], dict]:
    """A method's examples as its stage reads them, and what was left out so far (ORION's rewrites kept
    to the question set as stage 04 keeps them)."""
    from .collection import fit_to_question_set, kept_to_question_set

    examples = [e for p in run.training_files(method)
                for e in read_jsonl(p, SFTExample, tolerate_torn_tail=True)]
    left: dict = {}
    if qs is not None and kept_to_question_set(run, method):
        teacher = read_jsonl(run.teacher_sft_set, SFTExample) if run.teacher_sft_set.is_file() else []
        examples, kept = fit_to_question_set(examples, teacher, qs, count)
        if kept["replaced_by_teacher_cot"]:
            left[REPLACED_BY_TEACHER_COT] = kept["replaced_by_teacher_cot"]
    return examples, left


def _trained_row(examples: Sequence[SFTExample], left: dict, count, limit: Optional[int]) -> dict:
    """The row of one method: the examples training keeps (``limit``: its max_seq_len under
    overlong: drop)."""
    trained, tokens = [], 0
    for e in examples:
        n = count(e.question, e.response) if count is not None else len(e.response.split())
        if limit and n > limit:
            left[LEFT_OUT_BY_TRAINING] = left.get(LEFT_OUT_BY_TRAINING, 0) + 1
            continue
        trained.append(e)
        tokens += n
    ids = sorted({e.problem_id for e in trained})
    return {"questions": len(ids), "examples": len(trained), "tokens": tokens, "left_out": left,
            "question_ids": ids}


def _question_set_summary(qs_file: Optional[dict]) -> Optional[dict]:
    if qs_file is None:
        return None
    reasons: dict = {}
    for why in (qs_file.get("left_out") or {}).values():
        reasons[why] = reasons.get(why, 0) + 1
    return {"same_questions": qs_file.get("same_questions"), "rule": qs_file.get("rule"),
            "n": len(qs_file.get("questions") or []), "left_out": reasons,
            "max_seq_len": qs_file.get("max_seq_len"), "overlong": qs_file.get("overlong")}


def training_set_table(run: RunDir, methods: Sequence[str], tokenizer: Any = None) -> dict:
    """Per CoT-trained method: the questions, examples and tokens it trains on, and what was left out and
    why; plus the question set of stage 01 (``data/question_set.json``) and whether every method trains
    on the same question ids.

    A method's examples are those of ``RunDir.training_files`` as its stage trains them: ORION's rewrites
    kept to the question set as stage 04 keeps them (``collection.fit_to_question_set``: a rewrite longer
    than max_seq_len replaced by the teacher CoT), and, under ``overlong: drop`` of the method's training
    section (``TRAINING_SECTION``), an example longer than ``max_seq_len`` left out. Tokens: prompt +
    assistant turn in the student's tokens (whitespace words of the response without a tokenizer, and
    then no length check). Returns ``{"question_set", "same_question_ids", "counted_in", "methods":
    {method: {"questions", "examples", "tokens", "left_out": {reason: n}, "question_ids"}}}``."""
    from .collection import read_question_set

    qs = read_question_set(run)
    config = run.config() or {}
    count = _example_counter(run, tokenizer)
    rows: dict = {}
    for m in methods:
        if m == "base" or not run.training_files(m):
            continue
        examples, left = _method_examples(run, m, qs, count)
        section = config.get(TRAINING_SECTION.get(m, "training")) or {}
        limit = section.get("max_seq_len") if section.get("overlong") == "drop" and count is not None else None
        rows[m] = _trained_row(examples, left, count, limit)
    union = set().union(*(set(r["question_ids"]) for r in rows.values())) if rows else set()
    for r in rows.values():
        missing = len(union) - len(r["question_ids"])
        if missing:
            r["left_out"][NOT_IN_METHOD] = missing
    qs_file = json.loads(run.question_set.read_text(encoding="utf-8")) if run.question_set.is_file() else None
    return {"question_set": _question_set_summary(qs_file),
            "same_question_ids": len({tuple(r["question_ids"]) for r in rows.values()}) <= 1,
            "counted_in": ("student tokens (prompt + assistant turn)" if count is not None
                           else "response words"),
            "methods": rows}


# --- stages 05 and 06: a method trained in phases (EDIT's two stages, Tailored Learning's rounds) ---------
# Their final models land in models/<method>/model (RunDir.trained) so evaluation treats every method alike;
# their phases' loss curves are joined into the folder's loss_history.json and their training files into one set.

def join_phase_losses(folder) -> None:
    """One loss curve across a method's phases (``TrainedDir.phases``: EDIT's two stages, Tailored
    Learning's rounds), steps running on, each point labelled with its phase's folder name."""
    history, offset = [], 0
    for phase in folder.phases():
        if not phase.loss_history.exists():
            continue
        for h in json.loads(phase.loss_history.read_text()):
            history.append({**h, "step": h.get("step", 0) + offset, "phase": phase.root.name})
        offset = history[-1]["step"] if history else offset
    folder.loss_history.write_text(json.dumps(history, indent=1))


def write_method_training_set(run: RunDir, method: str) -> None:
    """``data/training_set_<method>.jsonl``: every example the method's folder trained on, in one file."""
    from .jsonl import write_jsonl

    files = run.training_files(method)
    if files:
        write_jsonl(run.training_set(method), [e for path in files for e in read_jsonl(path, SFTExample)])
