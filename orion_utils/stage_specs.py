"""The stage declarations: what each stage reads, which of its knobs and prompts it hashes, and its fingerprint.

The bottom of the pipeline's house: it imports no stage module, only the run directory (``stable_hash``), the
profile's kinds (``config``) and the prompt texts (``teachers.prompts``, ``reflection_prompt``,
``toy.reflect``). Each stage module calls ``fingerprint`` with the sections it was given; the facade
(``stages``) hands each stage the sections ``READS`` names, and the notebooks show them (``reads``).

A stage's fingerprint (``RunDir.run_stage``'s params) holds, for each section it reads, every knob but the
bookkeeping ones (``knob(..., bookkeeping=reason)``: how a stage works, not what it writes) and, where
``FIELDS`` names some, only those; and the hash of each prompt it sends under those sections' settings
(``SENDS``), one hash per prompt. So a prompt or a knob re-runs exactly the stages whose output it changes.
"""
from __future__ import annotations

from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from .config import PROMPTED_TEACHER_KINDS
from .knobs import bookkeeping
from .reflection_prompt import PROMPTS as STUDENT_PROMPTS
from .rundir import RunDir, stable_hash
from .teachers.prompts import PROMPTS as TEACHER_PROMPTS
from .toy.reflect import PROMPTS as TOY_RULES

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
    "analysis": ("analysis", "teacher", "data"),  # teacher, data: analysis.judge
}

# (stage, section) → the only fields of that section the stage's output depends on (elsewhere: all of them
# but the bookkeeping ones)
FIELDS: dict[tuple[str, str], tuple[str, ...]] = {
    ("prepare_student", "data"): ("seed",),
    ("teacher_cots", "training"): ("same_questions", "max_seq_len", "overlong"),  # the question-set rule
}



def _dataset_teacher(g: dict) -> bool:
    teacher = g.get("teacher")
    return teacher is not None and teacher.kind == "dataset"


# (stage, section) → when the stage's output depends on that section at all; otherwise the section is left out
# of its fingerprint. The data section reaches these stages only to build a dataset teacher (``make_teacher``).
READ_WHEN: dict[tuple[str, str], Callable[[dict], bool]] = {
    (stage, "data"): _dataset_teacher for stage in ("teacher_cots", "reflection", "edit", "tailored", "analysis")
}


def prompt_texts() -> dict[str, Any]:
    """Every prompt a stage may send, by name: the teacher's (``teachers.prompts.PROMPTS``), the student's
    reflection prompt (``reflection_prompt.PROMPTS``) and the toy rules' source, which stands for the texts
    they write in code (``toy.reflect.PROMPTS``)."""
    return {**TEACHER_PROMPTS, **STUDENT_PROMPTS, **TOY_RULES}


def _prompted(teacher: Any) -> bool:
    """The teacher is sent prompts (api, local); the toy teacher writes by rule, a dataset teacher reads."""
    return teacher is not None and teacher.kind in PROMPTED_TEACHER_KINDS


def _toy_teacher(teacher: Any) -> bool:
    return teacher is not None and teacher.kind == "toy"


# reflector → what it sends: the llm reflector prompts the student; the toy ones write by rule
REFLECTOR_PROMPTS = {"llm": ("reflection",), "student": ("toy_rules",), "rule": ("toy_rules",)}
EDIT_PROMPTS = ("rectify", "rectify_no_wrong", "corrupt", "demonstration", "contrastive_demos")


def _reflection_sends(g: dict) -> tuple[str, ...]:
    cfg = g["reflection"]  # its reflector resolved by the stage (``reflection.resolve_reflector_kind``)
    sent = REFLECTOR_PROMPTS.get(cfg.reflector, ()) + REFLECTOR_PROMPTS.get(cfg.compare, ())
    return sent + (("rewrite_judge",) if cfg.judge and _prompted(g.get("teacher")) else ())


def _edit_sends(g: dict) -> tuple[str, ...]:
    # pair_source resolved by the stage (``edit_pairs.resolve_pair_source``): only "teacher" asks the teacher
    return EDIT_PROMPTS if g["edit"].pair_source == "teacher" and _prompted(g.get("teacher")) else ()


def _tailored_sends(g: dict) -> tuple[str, ...]:
    # round 1: the teacher's rationales (stage 01's CoTs where there are; the teacher is asked for the rest);
    # rounds >= 2: rationales tailored to the student's wrong answers (the toy teacher writes them by rule)
    teacher, later = g.get("teacher"), g["tailored"].rounds >= 2
    if _prompted(teacher):
        return ("collect",) + (("tailor", "attempt") if later else ())
    return ("toy_rules",) if later and _toy_teacher(teacher) else ()


# stage → the prompts it sends, given the sections it was given (None: one it does not read under its settings)
SENDS: dict[str, Callable[[dict], tuple[str, ...]]] = {
    # the toy student's pre-training CoTs catch slips in the toy reflector's idiom (``toy.teacher.caught_slip_lines``)
    "prepare_student": lambda g: ("toy_rules",) if getattr(g.get("toy_pretrain"), "caught_slip_rate", 0) > 0 else (),
    "teacher_cots": lambda g: ("collect",) if _prompted(g.get("teacher")) else (),
    "reflection": _reflection_sends,
    "edit": _edit_sends,
    "tailored": _tailored_sends,
    "analysis": lambda g: ("judge",) if g["analysis"].judge and _prompted(g.get("teacher")) else (),
}


def prompts_hash(stage: str, given: dict) -> dict:
    """One hash per prompt the stage sends under ``given`` (its sections by name): editing a prompt reruns
    exactly the stages that send it."""
    texts = prompt_texts()
    sent = SENDS[stage](given) if stage in SENDS else ()
    return {name: stable_hash(texts[name]) for name in sorted(set(sent))}


def section_params(stage: str, name: str, section: Any) -> Any:
    """What of one section a stage's fingerprint holds: its knobs but the bookkeeping ones (``FIELDS``: only
    those named)."""
    if section is None:
        return None
    if not is_dataclass(section):
        return dict(section)
    keep = FIELDS.get((stage, name))
    values = asdict(section)
    return {f.name: values[f.name] for f in fields(section)
            if (keep is None or f.name in keep) and not bookkeeping(f)}


def fingerprint(run: Optional[RunDir], stage: str, *sections: Any) -> tuple[dict, list[Path]]:
    """A stage's params and the models it loads, derived from its declaration (READS, READ_WHEN, FIELDS, the
    knobs' ``bookkeeping``, SENDS). ``sections``: the sections of ``READS[stage]`` in that order, as the stage
    module's function takes them; None for one it does not read under these settings (a trailing one may
    be left out). The base student (``RunDir.student_inputs``) is an input of every stage that reads the
    ``student`` section, except the stage that writes it."""
    names = READS[stage]
    if len(sections) > len(names):
        raise ValueError(f"stage {stage!r} reads {names}; got {len(sections)} sections")
    given = dict(zip(names, sections))
    given = {name: None if not READ_WHEN.get((stage, name), lambda g: True)(given) else section
             for name, section in given.items()}
    params: dict = {name: section_params(stage, name, given.get(name)) for name in names}
    params["prompts"] = prompts_hash(stage, given)
    models = run.student_inputs() if run is not None and given.get("student") is not None and stage != "prepare_student" else []
    return params, models


def reads(*stages: str) -> list[str]:
    """The profile sections the named stages take, each once, in order (what a notebook shows)."""
    out: list[str] = []
    for stage in stages:
        out += [s for s in READS[stage] if s not in out]
    return out
