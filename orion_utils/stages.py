"""Every stage with one signature, ``stage(run, cfg, *, force=False) -> dict``: the notebooks' and the
runner's entry points, a thin facade over the stage modules.

``run`` is the run directory (``RunDir``), ``cfg`` the run's profile (``config.load_profile``), and
``force`` redoes work that is up to date. Each function hands its stage module's function the profile
sections ``stage_specs.READS`` names, in that order (``tests/test_notebooks.py`` checks); the notebooks show
those sections (``reads``). The stages that generate or train also get ``parallel`` (``config.ParallelConfig``:
how many devices share their work, ``orion run --gpus N``), which is in no fingerprint. The stage modules' own functions (``reflection.run_reflection``,
``edit.run_edit_stage``, ...) take single sections, for code and tests that build them by hand. Stage 04
trains the evaluated methods of the registry (``sft_plan``).
"""
from __future__ import annotations

from .analysis import run_analysis
from .collection import run_collection
from .edit import run_edit_stage
from .evaluation import run_evaluation
from .exposure import run_error_exposure
from .methods import methods_to_train
from .prepare import run_prepare_data, run_prepare_student
from .reflection import run_reflection
from .rundir import RunDir
from .sft import run_sft
from .stage_specs import READS, reads
from .tailored import run_tailored_stage
from .training import unsloth_first

__all__ = ["READS", "reads", "sft_plan", "prepare_data", "prepare_student", "teacher_cots", "error_exposure",
           "reflection", "sft", "edit", "tailored", "evaluation", "analysis"]


def prepare_data(run: RunDir, cfg, *, force: bool = False) -> dict:
    """Stage 00: the training questions and the benchmarks (``prepare.run_prepare_data``)."""
    return run_prepare_data(run, cfg.data, cfg.toy_domain, force=force)


def prepare_student(run: RunDir, cfg, *, force: bool = False) -> dict:
    """Stage 00: the base student; the toy one is built and pre-trained (``prepare.run_prepare_student``)."""
    return run_prepare_student(run, cfg.student, cfg.toy_student, cfg.toy_pretrain, cfg.toy_domain, cfg.data,
                               force=force)


def teacher_cots(run: RunDir, cfg, *, force: bool = False) -> dict:
    """Stage 01: the teacher's CoTs, kept when they verify (``collection.run_collection``)."""
    return run_collection(run, cfg.teacher, cfg.data, cfg.training, cfg.student, force=force, parallel=cfg.parallel)


# The stages that may train call ``training.unsloth_first`` with their sections first: Unsloth, when it will
# train, is imported before they import transformers.

def error_exposure(run: RunDir, cfg, *, force: bool = False) -> dict:
    """Stage 02: the student's own answers, graded; its errors (``exposure.run_error_exposure``)."""
    unsloth_first(cfg.exposure, cfg.generation, cfg.student, cfg.training)
    return run_error_exposure(run, cfg.exposure, cfg.generation, cfg.student, cfg.training, force=force, parallel=cfg.parallel)


def reflection(run: RunDir, cfg, *, force: bool = False) -> dict:
    """Stage 03: the student rewrites the teacher's CoTs around its errors (``reflection.run_reflection``)."""
    return run_reflection(run, cfg.reflection, cfg.student, cfg.generation, cfg.teacher, cfg.data, force=force, parallel=cfg.parallel)


def sft_plan(cfg) -> list[str]:
    """The methods stage 04 trains for this profile: those of the registry it fine-tunes on a set of CoTs
    that ``evaluation.methods`` lists (``methods.methods_to_train``)."""
    return methods_to_train("04_sft", cfg.evaluation.methods)


def sft(run: RunDir, cfg, *, force: bool = False) -> dict:
    """Stage 04: every evaluated method fine-tuned on a set of CoTs (``sft_plan``; ``sft.run_sft``)."""
    unsloth_first(cfg.training, cfg.student)
    return run_sft(run, cfg.training, cfg.student, methods=sft_plan(cfg), force=force, parallel=cfg.parallel)


def edit(run: RunDir, cfg, *, force: bool = False) -> dict:
    """Stage 05: EDIT on the run's data (``edit.run_edit_stage``)."""
    unsloth_first(cfg.edit, cfg.training, cfg.teacher, cfg.data, cfg.student)
    return run_edit_stage(run, cfg.edit, cfg.training, cfg.teacher, cfg.data, cfg.student, force=force, parallel=cfg.parallel)


def tailored(run: RunDir, cfg, *, force: bool = False) -> dict:
    """Stage 06: Tailored Learning on the run's data (``tailored.run_tailored_stage``)."""
    unsloth_first(cfg.tailored, cfg.teacher, cfg.data, cfg.generation, cfg.student)
    return run_tailored_stage(run, cfg.tailored, cfg.teacher, cfg.data, cfg.generation, cfg.student, force=force, parallel=cfg.parallel)


def evaluation(run: RunDir, cfg, *, force: bool = False) -> dict:
    """Stage 07: every method on every benchmark; ``metrics.json`` (``evaluation.run_evaluation``)."""
    return run_evaluation(run, cfg.evaluation, cfg.generation, cfg.student, force=force, parallel=cfg.parallel)


def analysis(run: RunDir, cfg, *, force: bool = False) -> dict:
    """Stage 08: the paper's claims as numbers over the seeds, ``analysis.json`` and ``report.md``
    (``analysis.run_analysis``, with the profile's teacher as the judge when ``analysis.judge`` is on)."""
    return run_analysis(run, cfg.analysis, cfg.teacher, cfg.data, force=force)
