"""The methods a run trains and evaluates, named once.

Each entry says what a method is, which notebook trains it, where the CoTs it is fine-tuned on come
from (the methods stage 04 trains), whether its notebook runs only when the method is evaluated, the
layout of its folder ``models/<name>/`` and its colour in figures. Evaluation, stage 04, the runner,
``RunDir`` and the plots read their lists and paths from here, so a new method is one entry here plus
the code that makes its data (ARCHITECTURE.md, "A method"). Imports nothing heavy.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

from .layouts import EditDir, TailoredDir, TrainedDir


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    trained_in: str = ""  # the notebook that trains it ("": not trained, the base student)
    # stage 04's methods: the notebook whose outputs its set (data/training_set_<name>.jsonl) comes from
    cots_from: str = ""
    # the function stage 04 calls to make that set from stage 01's outputs, imported here plainly:
    # (problems, teacher traces, a count of the student's tokens) -> SFTExamples; None: an earlier stage writes it
    builds_set: Optional[Callable[..., list]] = None
    only_when_evaluated: bool = False  # its notebook runs only when evaluation.methods lists it
    folder: type = TrainedDir  # the layout of models/<name>/ (orion_utils.layouts): phases, training files
    colour: str = "#DD8452"


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("base", "the student before any fine-tuning", colour="#8C8C8C"),
    Method("sft", "fine-tuned on the teacher's verified CoTs", "04_sft", "01_teacher_cots", colour="#4C72B0"),
    Method("orion", "fine-tuned on the teacher's CoTs rewritten by the student around its own errors",
           "04_sft", "03_error_aware_reflection", colour="#C44E52"),
    Method("edit", "EDIT: SFT on the teacher's CoTs, then key reasoning steps learnt from dual CoT pairs",
           "05_edit", only_when_evaluated=True, folder=EditDir, colour="#55A868"),
    Method("tailored",
           "Tailored Learning: rounds of teacher rationales, weighted MLE + a self-reflection triplet",
           "06_tailored_learning", only_when_evaluated=True, folder=TailoredDir, colour="#8172B3"),
)}


def method(name: str) -> Method:
    """The registry's entry for ``name``; an unknown name is an error that lists the known ones."""
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}: the registry (orion_utils.methods) has {list(METHODS)}")
    return METHODS[name]


def cot_methods(notebook: str = "04_sft") -> dict[str, str]:
    """The methods ``notebook`` fine-tunes on a set of CoTs → the notebook that writes each set."""
    return {m.name: m.cots_from for m in METHODS.values() if m.trained_in == notebook and m.cots_from}


def methods_to_train(notebook: str, evaluated: Sequence[str]) -> list[str]:
    """What ``notebook`` trains in a run that evaluates ``evaluated``: its methods that are evaluated,
    in registry order (a model nobody evaluates is not trained)."""
    return [name for name in cot_methods(notebook) if name in evaluated]


def notebooks_run_when_evaluated() -> dict[str, str]:
    """Notebooks that only train one method, run when it is among evaluation.methods → that method."""
    return {m.trained_in: m.name for m in METHODS.values() if m.only_when_evaluated}
