"""Every stage with one signature, ``stage(run, cfg, *, force=False) -> dict``.

``run`` is the run directory (``RunDir``), ``cfg`` the run's profile (``config.load_profile``), and
``force`` redoes work that is up to date. ``READS`` is the one place that says which profile sections a
stage takes, in the order its module's function takes them; the notebooks call these functions and
show those sections (``reads``). The stage modules' own functions (``reflection.run_reflection``, ...)
take single sections, for code and tests that build them by hand.
"""
from __future__ import annotations

import importlib
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Optional

from .rundir import RunDir, stable_hash

# stage → the profile sections its module's function takes after ``run``, in that order
READS: dict[str, tuple[str, ...]] = {
    "prepare_data": ("data", "toy_domain"),
    "prepare_student": ("student", "toy_student", "toy_pretrain", "toy_domain", "data"),
    "teacher_cots": ("teacher", "data", "training", "student"),
    "error_exposure": ("exposure", "generation", "student", "training"),
    "reflection": ("reflection", "student", "generation"),
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
}
# stage → the modules whose ``PROMPTS`` (the prompt texts, or a stand-in for texts written in code) it sends
PROMPTS: dict[str, tuple[str, ...]] = {
    "teacher_cots": ("teachers.prompts",),
    "reflection": ("reflection", "toy.reflect"),
    "edit": ("teachers.prompts",),
    "tailored": ("teachers.prompts", "toy.reflect"),
    "analysis": ("teachers.prompts",),  # the step-consistency judge's
}


def prompts_hash(stage: str) -> dict:
    """One hash per module listed in ``PROMPTS[stage]``: editing a prompt reruns the stages that send it."""
    return {name: stable_hash(importlib.import_module(f"{__package__}.{name}").PROMPTS) for name in PROMPTS.get(stage, ())}


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
    params["prompts"] = prompts_hash(stage)
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


def sft(run: RunDir, cfg, *, force: bool = False) -> dict:
    """Stage 04: every method fine-tuned on a set of CoTs, ``sft`` and ``orion`` (``sft.run_sft``)."""
    from .sft import run_sft

    return run_sft(run, *_sections(cfg, "sft"), force=force)


def edit(run: RunDir, cfg, *, force: bool = False) -> dict:
    """Stage 05: EDIT on the run's data (``baselines.run_edit_stage``)."""
    from .baselines import run_edit_stage

    return run_edit_stage(run, *_sections(cfg, "edit"), force=force)


def tailored(run: RunDir, cfg, *, force: bool = False) -> dict:
    """Stage 06: Tailored Learning on the run's data (``baselines.run_tailored_stage``)."""
    from .baselines import run_tailored_stage

    return run_tailored_stage(run, *_sections(cfg, "tailored"), force=force)


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
