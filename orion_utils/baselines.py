"""Stages 05 and 06: the EDIT and Tailored Learning baselines on the run's data.

Both start from the same base student and the same training questions and teacher CoTs as
`sft` and `orion`; their final models land in ``models/edit/model`` and ``models/tailored/model``
so that evaluation treats every method alike.
"""
from __future__ import annotations

import json
from typing import Optional

from .budget import prompt_budget
from .collection import (QuestionSetTeacher, TokenCounter, fitter, length_rule_applies, question_set_inputs,
                         question_set_problems, read_question_set, stage01_traces)
from .config import DataConfig, GenerationConfig, StudentConfig, TeacherConfig
from .jsonl import read_jsonl, write_jsonl
from .records import Problem, SFTExample, StudentAttempt, TeacherTrace
from .rundir import RunDir
from .stages import fingerprint
from .teachers.base import FeedbackTeacher


def _join_loss_histories(parts, dst) -> None:
    """One loss curve across phases (EDIT's two stages, Tailored Learning's rounds), steps running on."""
    history, offset = [], 0
    for label, path in parts:
        if not path.exists():
            continue
        for h in json.loads(path.read_text()):
            history.append({**h, "step": h.get("step", 0) + offset, "phase": label})
        offset = history[-1]["step"] if history else offset
    dst.write_text(json.dumps(history, indent=1))


def run_edit_stage(
    run: RunDir,
    cfg,
    training_cfg,
    teacher_cfg: Optional[TeacherConfig] = None,
    data: Optional[DataConfig] = None,
    student: Optional[StudentConfig] = None,
    force: bool = False,
) -> dict:
    """EDIT: dual CoT pairs → stage-1 SFT on correct + rectified CoTs → key-reasoning-step learning."""
    from dataclasses import replace

    from .collection import make_teacher
    from .edit import resolve_pair_source, run_edit

    student, teacher_cfg = student or StudentConfig(), teacher_cfg or TeacherConfig()
    edit_dir = run.edit()
    out_dir = edit_dir.root
    cfg_source, source = cfg.pair_source, resolve_pair_source(cfg.pair_source, teacher_cfg.kind)
    cfg = replace(cfg, pair_source=source)
    params, models = fingerprint(run, "edit", cfg, training_cfg, teacher_cfg, data, student)
    inputs = [run.train_problems, run.teacher_traces]
    if source == "exposure":
        inputs.append(run.error_attempts)
    inputs += question_set_inputs(run) + models

    def work() -> dict:
        print(f"[edit] dual pairs: {source} (edit.pair_source={cfg_source}, teacher.kind={teacher_cfg.kind})")
        problems = question_set_problems(run, read_jsonl(inputs[0], Problem))  # the question set (stage 01)
        traces = read_jsonl(inputs[1], TeacherTrace)
        attempts = read_jsonl(inputs[2], StudentAttempt) if source == "exposure" else None
        teacher = make_teacher(teacher_cfg, data, cache_dir=str(run.teacher_cache))
        result = run_edit(run.student_model(), problems, traces, out_dir, cfg, training_cfg, teacher=teacher,
                          attempts=attempts, prompt_template=student.prompt_template,
                          system=student.system_prompt or None)
        _join_loss_histories([("stage1", edit_dir.stage1.loss_history),
                              ("stage2", edit_dir.stage2.loss_history)], edit_dir.loss_history)
        stage1 = edit_dir.stage1_examples
        if stage1.exists():
            write_jsonl(run.training_set("edit"), read_jsonl(stage1, SFTExample))
        return {"edit": {k: v for k, v in result.items() if isinstance(v, (int, float, str))}, **prompt_budget(teacher)}

    # run_edit resumes from what it finds in out_dir: kept only for a re-run with the same settings
    return run.run_stage("edit", params, inputs, [edit_dir.model], work, force=force, scratch=[out_dir],
                         stage_hint="02_error_exposure")


def run_tailored_stage(
    run: RunDir,
    cfg,
    teacher_cfg: Optional[TeacherConfig] = None,
    data: Optional[DataConfig] = None,
    generation: Optional[GenerationConfig] = None,
    student: Optional[StudentConfig] = None,
    force: bool = False,
) -> dict:
    """Tailored Learning: exam → teacher feedback on the student's mistakes → training, for several rounds."""
    from .collection import make_teacher
    from .tailored import default_generator_factory, run_tailored

    student, teacher_cfg = student or StudentConfig(), teacher_cfg or TeacherConfig()
    generation = generation or GenerationConfig()
    tailored_dir = run.tailored()
    out_dir = tailored_dir.root
    inputs = [run.train_problems]
    qs_inputs = question_set_inputs(run)
    if qs_inputs:  # the question set, and the stage-01 CoTs a question without a usable rationale falls back to
        inputs += qs_inputs + [run.teacher_sft_set, run.teacher_traces]
    params, models = fingerprint(run, "tailored", cfg, teacher_cfg, data, generation, student)
    inputs += models

    def work() -> dict:
        problems = question_set_problems(run, read_jsonl(inputs[0], Problem))  # the question set (stage 01)
        teacher = make_teacher(teacher_cfg, data, cache_dir=str(run.teacher_cache))
        if not isinstance(teacher, FeedbackTeacher):
            raise ValueError(
                f"Tailored Learning asks the teacher to explain the student's wrong answers, which a "
                f"teacher.kind={teacher_cfg.kind!r} teacher cannot do; use kind 'api', 'local' or 'toy', "
                f"or leave 'tailored' out of evaluation.methods"
            )
        if read_question_set(run) is not None:
            fits = fitter(TokenCounter(run.student_model(), student.prompt_template, student.system_prompt or None),
                          cfg.max_seq_len) if length_rule_applies(cfg) else None
            teacher = QuestionSetTeacher(teacher, stage01_traces(run), fits)
        rounds = run_tailored(run.student_model(), problems, teacher,
                              default_generator_factory(generation), cfg.rounds,
                              cfg, out_dir, prompt_template=student.prompt_template,
                              system=student.system_prompt or None)
        _join_loss_histories([(rd.root.name, rd.loss_history) for rd in tailored_dir.rounds()],
                             tailored_dir.loss_history)
        train_sets = run.training_files("tailored")
        if train_sets:
            examples = [e for path in train_sets for e in read_jsonl(path, SFTExample)]
            write_jsonl(run.training_set("tailored"), examples)
        return {"rounds": len(rounds), **prompt_budget(teacher)}

    return run.run_stage("tailored", params, inputs, [tailored_dir.model], work, force=force, scratch=[out_dir],
                         stage_hint="00_setup_and_data")
