"""Stage 04, supervised fine-tuning: every method of the registry trained on a set of CoTs (`sft` on the
teacher's CoTs, `orion` on the refined CoTs), those that are evaluated.

All start from the same base student with the same hyperparameters, so the only difference is
the training text; a method whose entry names a ``builds_set`` gets its set made here first. Each
method's model, loss curve and training facts go to ``models/<method>/``.
"""
from __future__ import annotations

import json
from typing import Optional, Sequence

from .collection import (
    TokenCounter,
    fit_to_question_set,
    kept_to_question_set,
    question_set_inputs,
    read_question_set,
)
from .config import StudentConfig, ParallelConfig
from .jsonl import read_jsonl, write_jsonl
from .methods import cot_methods
from .methods import method as registered
from .records import Problem, SFTExample, TeacherTrace
from .rundir import RunDir
from .stage_specs import fingerprint


def run_sft(run: RunDir, cfg, student: Optional[StudentConfig] = None,
            methods: Optional[Sequence[str]] = None, force: bool = False, parallel: Optional[ParallelConfig] = None) -> dict:
    """Train each of ``methods`` (default: every method stage 04 trains, ``methods.cot_methods``) on its
    training set; returns {method: manifest entry}. ``stages.sft`` passes the methods that are evaluated
    (``methods.methods_to_train``)."""
    student, known = student or StudentConfig(), cot_methods("04_sft")
    entries = {}
    for method in known if methods is None else methods:
        if method not in known:
            raise ValueError(f"no training set for method {method!r}; known: {list(known)}")
        if registered(method).builds_set is not None:
            _build_set(run, method, cfg, student, force)
        entries[method] = _train(run, method, cfg, student, force, parallel)
    return entries


def _build_set(run: RunDir, method: str, cfg, student: StudentConfig, force: bool) -> dict:
    """A method's training set made by its registry entry's ``builds_set`` from stage 01's questions and
    teacher traces, lengths in the student's tokens; its own stage ``set/<method>``."""
    build = registered(method).builds_set
    params, models = fingerprint(run, "sft", None, student)  # the builder reads no training knob
    params["builds_set"] = f"{build.__module__}.{build.__qualname__}"
    inputs = [run.train_problems, run.teacher_traces, *models]

    def work() -> dict:
        count = TokenCounter(run.student_model(), student.prompt_template, student.system_prompt or None)
        examples = build(read_jsonl(inputs[0], Problem), read_jsonl(inputs[1], TeacherTrace), count)
        write_jsonl(run.training_set(method), examples)
        return {"n_examples": len(examples)}

    return run.run_stage(f"set/{method}", params, inputs, [run.training_set(method)], work, force=force,
                         stage_hint=registered(method).cots_from)


def _train(run: RunDir, method: str, cfg, student: StudentConfig, force: bool,
           parallel: Optional[ParallelConfig] = None) -> dict:
    """One method fine-tuned on ``RunDir.training_set(method)``: stage ``train/<method>``."""
    from .training import train_sft

    data_path, out_dir = run.training_set(method), run.model(method)
    params, models = fingerprint(run, "sft", cfg, student)
    inputs = [data_path, *models]
    keep = kept_to_question_set(run, method)
    if keep:
        inputs += question_set_inputs(run) + [run.teacher_sft_set]

    def work() -> dict:
        examples = read_jsonl(data_path, SFTExample)
        if not examples:
            raise ValueError(f"{data_path} is empty: no examples to train '{method}' on")
        kept = {}
        if keep:  # the question set: its questions only, a too-long rewrite replaced by the teacher CoT
            count = TokenCounter(run.student_model(), student.prompt_template, student.system_prompt or None)
            examples, kept = fit_to_question_set(examples, read_jsonl(run.teacher_sft_set, SFTExample),
                                                 read_question_set(run), count)
            if any(kept.values()):
                print(f"[{method}] question set: {kept['replaced_by_teacher_cot']} examples longer than "
                      f"max_seq_len replaced by the teacher CoT, {kept['outside_question_set']} outside the set")
        result = train_sft(run.student_model(), examples, out_dir, cfg, prompt_template=student.prompt_template,
                           system=student.system_prompt or None, parallel=parallel)
        return {"backend": result.backend, "train_seconds": result.train_seconds,
                "n_examples": result.n_examples, "n_tokens": result.n_tokens, "question_set": kept}

    return run.run_stage(f"train/{method}", params, inputs, [run.trained(method).model], work, force=force,
                         stage_hint=registered(method).cots_from)


def load_loss_history(run: RunDir, method: str) -> list[dict]:
    path = run.loss_history(method)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else []


def label_segments(tokenizer, input_ids: Sequence[int], labels: Sequence[int], prompt_len: int) -> list[dict]:
    """Consecutive tokens grouped by what the loss does with them: ``prompt`` (label -100: the user turn),
    ``masked`` (label -100 inside the response: e.g. ORION's quoted wrong step) or ``trained``; each
    segment with its token count and decoded text."""
    segments: list[dict] = []
    for i, (tok, label) in enumerate(zip(input_ids, labels)):
        kind = "prompt" if i < prompt_len else ("masked" if label == -100 else "trained")
        if segments and segments[-1]["kind"] == kind:
            segments[-1]["ids"].append(tok)
        else:
            segments.append({"kind": kind, "ids": [tok]})
    return [{"kind": s["kind"], "tokens": len(s["ids"]), "text": tokenizer.decode(s["ids"])}
            for s in segments]


def look_inside(run: RunDir, method: str = "orion", problem_id: Optional[str] = None,
                show: bool = True) -> dict:
    """One training example of ``method`` as the trainer sees it: ``training.build_sft_rows`` turns it into
    token ids and labels (-100 on the prompt, and on any ``loss_mask_spans`` such as the quoted wrong
    step), shown decoded segment by segment. Without ``problem_id``, an example with a masked span if any."""
    from transformers import AutoTokenizer

    from .chat import encode_for_training, run_prompt_format
    from .display import key_values, table
    from .training import build_sft_rows

    examples = read_jsonl(run.training_set(method), SFTExample)
    if problem_id is None:
        ex = next((e for e in examples if e.loss_mask_spans), examples[0])
    else:
        ex = next(e for e in examples if e.problem_id == problem_id)
    template, system = run_prompt_format(run)
    tokenizer = AutoTokenizer.from_pretrained(run.student_model())
    rows, _ = build_sft_rows(tokenizer, [ex], prompt_template=template, system=system)
    enc = encode_for_training(tokenizer, ex.question, ex.response, template, system=system)
    prompt_len = enc["prompt_len"]
    row = rows[0]
    segments = label_segments(tokenizer, row["input_ids"], row["labels"], prompt_len)
    look = {"method": method, "problem_id": ex.problem_id, "source": ex.source,
            "tokens": len(row["input_ids"]), "trained tokens": sum(label != -100 for label in row["labels"]),
            "masked spans": len(ex.loss_mask_spans), "segments": segments}
    if show:
        key_values({k: v for k, v in look.items() if k != "segments"},
                   title=f"one '{method}' training example")
        table(segments, ["kind", "tokens", "text"], max_chars=600,
              title="its tokens, by what the loss does with them")
    return look
