"""Every stage with one signature, ``stage(run, cfg, *, force=False) -> dict``.

``run`` is the run directory (``RunDir``), ``cfg`` the run's profile (``config.load_profile``), and
``force`` redoes work that is up to date. ``READS`` is the one place that says which profile sections a
stage takes, in the order its module's function takes them; the notebooks call these functions and
show those sections (``reads``). The stage modules' own functions (``reflection.run_reflection``, ...)
take single sections, for code and tests that build them by hand; those of stages 05 and 06 (EDIT and
Tailored Learning: ``run_edit_stage``, ``run_tailored_stage``) are here, beside their wrappers. Stage 04
trains the evaluated methods of the registry (``sft_plan``).
"""
from __future__ import annotations

import importlib
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from .rundir import RunDir, stable_hash

if TYPE_CHECKING:
    from .config import DataConfig, GenerationConfig, StudentConfig, TeacherConfig

# stage → the profile sections its module's function takes after ``run``, in that order
READS: dict[str, tuple[str, ...]] = {
    "prepare_data": ("data", "toy_domain"),
    "prepare_student": ("student", "toy_student", "toy_pretrain", "toy_domain", "data"),
    "teacher_cots": ("teacher", "data", "training", "student"),
    "error_exposure": ("exposure", "generation", "student", "training"),
    "reflection": ("reflection", "student", "generation", "teacher", "data"),  # teacher, data: reflection.judge
    "sft": ("training", "student"),
    "edit": ("edit", "training", "teacher", "data", "student"),
    "tailored": ("tailored", "teacher", "data", "generation", "student"),
    "evaluation": ("evaluation", "generation", "student"),
    "analysis": ("analysis", "teacher", "data"),
}


# What a stage's fingerprint (``RunDir.run_stage``'s params and inputs) takes besides the sections of READS.
# A section's fields are all in it, except: the fields a stage reads alone (FIELDS), and the settings
# that do not change any stage's results (NOT_IN_FINGERPRINT).
FIELDS: dict[tuple[str, str], tuple[str, ...]] = {
    ("prepare_student", "data"): ("seed",),
    ("teacher_cots", "training"): ("same_questions", "max_seq_len", "overlong"),  # the question-set rule
}
NOT_IN_FINGERPRINT: dict[str, tuple[str, ...]] = {
    # how many methods at a time, how many questions per saved chunk, which methods beside this one
    "evaluation": ("workers", "chunk_questions", "methods"),
    "exposure": ("chunk_questions",),
    "reflection": ("chunk_questions",),
    "teacher": ("price_date",),  # the date the prices were read: the report says it, no stage reads it
    # where the loss curves are also sent (a tracker) changes no result; EDIT's and Tailored Learning's
    # sections carry the training section's fields
    "training": ("report_to",),
    "edit": ("report_to",),
    "tailored": ("exam_chunk_questions", "report_to"),
}
# stage → the modules whose ``PROMPTS`` (the prompt texts, or a stand-in for texts written in code) it sends
PROMPTS: dict[str, tuple[str, ...]] = {
    "teacher_cots": ("teachers.prompts",),
    "reflection": ("reflection", "toy.reflect", "teachers.prompts"),  # teachers.prompts: the rewrite judge's
    "edit": ("teachers.prompts",),
    "tailored": ("teachers.prompts", "toy.reflect"),
    "analysis": ("teachers.prompts",),  # the step-consistency judge's
}


# (stage, module of PROMPTS) → the section that sends that module's prompts: they count only when the stage
# is given that section (a stage passes None for one it does not read under its settings)
PROMPTS_SENT_WITH: dict[tuple[str, str], str] = {
    ("reflection", "teachers.prompts"): "teacher",  # reflection.judge on: the teacher judges the rewrites
}


def prompts_hash(stage: str, given: Optional[dict] = None) -> dict:
    """One hash per module listed in ``PROMPTS[stage]``: editing a prompt reruns the stages that send it.
    ``given``: the sections the stage was given (None: all); a module of ``PROMPTS_SENT_WITH`` counts only
    when its section is there."""
    def sent(name: str) -> bool:
        section = PROMPTS_SENT_WITH.get((stage, name))
        return given is None or section is None or given.get(section) is not None

    names = [name for name in PROMPTS.get(stage, ()) if sent(name)]
    return {name: stable_hash(importlib.import_module(f"{__package__}.{name}").PROMPTS) for name in names}


def _section_params(stage: str, name: str, section: Any) -> Any:
    if section is None:
        return None
    values = asdict(section) if is_dataclass(section) else dict(section)
    keep = FIELDS.get((stage, name))
    return {k: v for k, v in values.items()
            if (keep is None or k in keep) and k not in NOT_IN_FINGERPRINT.get(name, ())}


def fingerprint(run: Optional[RunDir], stage: str, *sections: Any) -> tuple[dict, list[Path]]:
    """A stage's params and the models it loads, derived from its declaration (READS, FIELDS,
    NOT_IN_FINGERPRINT, PROMPTS). ``sections``: the sections of ``READS[stage]`` in that order, as the
    stage module's function takes them; None for one it does not read under these settings (a
    trailing one may be left out). The base student (``RunDir.student_inputs``) is an input of every
    stage that reads the ``student`` section, except the stage that writes it."""
    names = READS[stage]
    if len(sections) > len(names):
        raise ValueError(f"stage {stage!r} reads {names}; got {len(sections)} sections")
    given = dict(zip(names, sections))
    params = {name: _section_params(stage, name, given.get(name)) for name in names}
    params["prompts"] = prompts_hash(stage, given)
    models = run.student_inputs() if run is not None and given.get("student") is not None and stage != "prepare_student" else []
    return params, models


def reads(*stages: str) -> list[str]:
    """The profile sections the named stages take, each once, in order (what a notebook shows)."""
    out: list[str] = []
    for stage in stages:
        out += [s for s in READS[stage] if s not in out]
    return out


# the stages that may train: Unsloth, when it will train, is imported before they import transformers
TRAINS = ("error_exposure", "sft", "edit", "tailored")


def _sections(cfg, stage: str) -> list[Any]:
    sections = [getattr(cfg, name) for name in READS[stage]]
    if stage in TRAINS:
        from .training import unsloth_first

        unsloth_first(*sections)
    return sections


def prepare_data(run: RunDir, cfg, *, force: bool = False) -> dict:
    """Stage 00: the training questions and the benchmarks (``prepare.run_prepare_data``)."""
    from .prepare import run_prepare_data

    return run_prepare_data(run, *_sections(cfg, "prepare_data"), force=force)


def prepare_student(run: RunDir, cfg, *, force: bool = False) -> dict:
    """Stage 00: the base student; the toy one is built and pre-trained (``prepare.run_prepare_student``)."""
    from .prepare import run_prepare_student

    return run_prepare_student(run, *_sections(cfg, "prepare_student"), force=force)


def teacher_cots(run: RunDir, cfg, *, force: bool = False) -> dict:
    """Stage 01: the teacher's CoTs, kept when they verify (``collection.run_collection``)."""
    from .collection import run_collection

    return run_collection(run, *_sections(cfg, "teacher_cots"), force=force)


def error_exposure(run: RunDir, cfg, *, force: bool = False) -> dict:
    """Stage 02: the student's own answers, graded; its errors (``exposure.run_error_exposure``)."""
    from .exposure import run_error_exposure

    return run_error_exposure(run, *_sections(cfg, "error_exposure"), force=force)


def reflection(run: RunDir, cfg, *, force: bool = False) -> dict:
    """Stage 03: the student rewrites the teacher's CoTs around its errors (``reflection.run_reflection``)."""
    from .reflection import run_reflection

    return run_reflection(run, *_sections(cfg, "reflection"), force=force)


def sft_plan(cfg) -> list[str]:
    """The methods stage 04 trains for this profile: those of the registry it fine-tunes on a set of CoTs
    that ``evaluation.methods`` lists (``methods.methods_to_train``)."""
    from .methods import methods_to_train

    return methods_to_train("04_sft", cfg.evaluation.methods)


def sft(run: RunDir, cfg, *, force: bool = False) -> dict:
    """Stage 04: every evaluated method fine-tuned on a set of CoTs (``sft_plan``; ``sft.run_sft``)."""
    from .sft import run_sft

    return run_sft(run, *_sections(cfg, "sft"), methods=sft_plan(cfg), force=force)


def edit(run: RunDir, cfg, *, force: bool = False) -> dict:
    """Stage 05: EDIT on the run's data (``run_edit_stage``)."""
    return run_edit_stage(run, *_sections(cfg, "edit"), force=force)


def tailored(run: RunDir, cfg, *, force: bool = False) -> dict:
    """Stage 06: Tailored Learning on the run's data (``run_tailored_stage``)."""
    return run_tailored_stage(run, *_sections(cfg, "tailored"), force=force)


# --- stages 05 and 06: the EDIT and Tailored Learning baselines on the run's data ------------------------
# Both start from the same base student and the same training questions and teacher CoTs as the stage-04
# methods; their final models land in models/<method>/model (RunDir.trained) so evaluation treats every
# method alike, and their phases' loss curves are joined into the folder's loss_history.json.

def join_phase_losses(folder) -> None:
    """One loss curve across a method's phases (``TrainedDir.phases``: EDIT's two stages, Tailored
    Learning's rounds), steps running on, each point labelled with its phase's folder name."""
    import json

    history, offset = [], 0
    for phase in folder.phases():
        if not phase.loss_history.exists():
            continue
        for h in json.loads(phase.loss_history.read_text()):
            history.append({**h, "step": h.get("step", 0) + offset, "phase": phase.root.name})
        offset = history[-1]["step"] if history else offset
    folder.loss_history.write_text(json.dumps(history, indent=1))


def _copy_training_files(run: RunDir, method: str) -> None:
    """``data/training_set_<method>.jsonl``: every example the method's folder trained on, in one file."""
    from .jsonl import read_jsonl, write_jsonl
    from .records import SFTExample

    files = run.training_files(method)
    if files:
        write_jsonl(run.training_set(method), [e for path in files for e in read_jsonl(path, SFTExample)])


def run_edit_stage(run: RunDir, cfg, training_cfg, teacher_cfg: Optional[TeacherConfig] = None,
                   data: Optional[DataConfig] = None, student: Optional[StudentConfig] = None,
                   force: bool = False) -> dict:
    """EDIT: dual CoT pairs → stage-1 SFT on correct + rectified CoTs → key-reasoning-step learning."""
    from dataclasses import replace

    from .budget import prompt_budget
    from .collection import make_teacher, question_set_inputs, question_set_problems, teacher_usage
    from .config import StudentConfig, TeacherConfig
    from .edit import run_edit
    from .edit_pairs import resolve_pair_source
    from .jsonl import read_jsonl
    from .records import Problem, SFTExample, StudentAttempt, TeacherTrace

    student, teacher_cfg = student or StudentConfig(), teacher_cfg or TeacherConfig()
    folder = run.trained("edit")
    cfg_source, source = cfg.pair_source, resolve_pair_source(cfg.pair_source, teacher_cfg.kind)
    cfg = replace(cfg, pair_source=source)
    params, models = fingerprint(run, "edit", cfg, training_cfg, teacher_cfg, data, student)
    inputs = [run.train_problems, run.teacher_traces] + ([run.error_attempts] if source == "exposure" else [])
    inputs += question_set_inputs(run) + [run.teacher_sft_set] + models  # the sft set: stage 1's D+

    def work() -> dict:
        print(f"[edit] dual pairs: {source} (edit.pair_source={cfg_source}, teacher.kind={teacher_cfg.kind})")
        problems = question_set_problems(run, read_jsonl(inputs[0], Problem))  # the question set (stage 01)
        attempts = read_jsonl(inputs[2], StudentAttempt) if source == "exposure" else None
        teacher = make_teacher(teacher_cfg, data, cache_dir=str(run.teacher_cache))
        traces = read_jsonl(inputs[1], TeacherTrace)
        result = run_edit(run.student_model(), problems, traces, folder.root, cfg, training_cfg,
                          teacher=teacher, attempts=attempts, prompt_template=student.prompt_template,
                          system=student.system_prompt or None,
                          positives=read_jsonl(run.teacher_sft_set, SFTExample))
        join_phase_losses(folder)
        _copy_training_files(run, "edit")
        facts = {k: v for k, v in result.items() if isinstance(v, (int, float, str))}
        return {"edit": facts, "pairs": result["pairs"], **prompt_budget(teacher), **teacher_usage(teacher)}

    # run_edit resumes from what it finds in its folder: kept only for a re-run with the same settings
    return run.run_stage("edit", params, inputs, [folder.model], work, force=force, scratch=[folder.root],
                         stage_hint="02_error_exposure")


def run_tailored_stage(run: RunDir, cfg, teacher_cfg: Optional[TeacherConfig] = None,
                       data: Optional[DataConfig] = None, generation: Optional[GenerationConfig] = None,
                       student: Optional[StudentConfig] = None, force: bool = False) -> dict:
    """Tailored Learning: exam → teacher feedback on the student's mistakes → training, for several rounds."""
    from .budget import prompt_budget
    from .collection import (
        QuestionSetTeacher,
        TokenCounter,
        fitter,
        length_rule_applies,
        make_teacher,
        question_set_inputs,
        question_set_problems,
        read_question_set,
        stage01_traces,
        teacher_usage,
    )
    from .config import GenerationConfig, StudentConfig, TeacherConfig
    from .jsonl import read_jsonl
    from .records import Problem
    from .tailored import default_generator_factory, run_tailored
    from .teachers.base import FeedbackTeacher

    student, teacher_cfg = student or StudentConfig(), teacher_cfg or TeacherConfig()
    generation, folder = generation or GenerationConfig(), run.trained("tailored")
    inputs = [run.train_problems]
    # the question set, and the stage-01 CoTs a question without a usable rationale falls back to
    if question_set_inputs(run):
        inputs += question_set_inputs(run) + [run.teacher_sft_set, run.teacher_traces]
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
            count = TokenCounter(run.student_model(), student.prompt_template, student.system_prompt or None)
            fits = fitter(count, cfg.max_seq_len) if length_rule_applies(cfg) else None
            teacher = QuestionSetTeacher(teacher, stage01_traces(run), fits)
        rounds = run_tailored(run.student_model(), problems, teacher, default_generator_factory(generation),
                              cfg.rounds, cfg, folder.root, prompt_template=student.prompt_template,
                              system=student.system_prompt or None)
        join_phase_losses(folder)
        _copy_training_files(run, "tailored")
        return {"rounds": len(rounds), **prompt_budget(teacher), **teacher_usage(teacher)}

    return run.run_stage("tailored", params, inputs, [folder.model], work, force=force, scratch=[folder.root],
                         stage_hint="00_setup_and_data")


def evaluation(run: RunDir, cfg, *, force: bool = False) -> dict:
    """Stage 07: every method on every benchmark; ``metrics.json`` (``evaluation.run_evaluation``)."""
    from .evaluation import run_evaluation

    return run_evaluation(run, *_sections(cfg, "evaluation"), force=force)


def analysis(run: RunDir, cfg, *, force: bool = False) -> dict:
    """Stage 08: the paper's claims as numbers over the seeds, ``analysis.json`` and ``report.md``
    (``analysis.analyse_run``, with the profile's teacher as the judge when ``analysis.judge`` is on)."""
    from .analysis import analyse_run, make_judge

    analysis_cfg, teacher, data = _sections(cfg, "analysis")
    return analyse_run(run, cfg=analysis_cfg, judge=make_judge(analysis_cfg, teacher, data, run),
                       judge_from=(teacher, data), force=force)
