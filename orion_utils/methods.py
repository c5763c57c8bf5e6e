"""The methods a run trains and evaluates, named once.

Each entry says what a method is, which notebook trains it, which stage writes the CoTs it is
fine-tuned on (the methods stage 04 trains), whether its notebook runs only when the method is
evaluated, and its colour in figures. Evaluation, stage 04, the runner and the plots read their lists
from here, so a new method is one entry here plus the code that makes its data (ARCHITECTURE.md).
Imports nothing heavy.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    trained_in: str = ""  # the notebook that trains it ("": not trained, the base student)
    cots_from: str = ""  # stage 04's methods: the notebook that writes its training set (data/training_set_<name>.jsonl)
    only_when_evaluated: bool = False  # its notebook runs only when evaluation.methods lists it
    colour: str = "#DD8452"


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("base", "the student before any fine-tuning", colour="#8C8C8C"),
    Method("sft", "fine-tuned on the teacher's verified CoTs", "04_sft", "01_teacher_cots", colour="#4C72B0"),
    Method("orion", "fine-tuned on the teacher's CoTs rewritten by the student around its own errors",
           "04_sft", "03_error_aware_reflection", colour="#C44E52"),
    Method("edit", "EDIT: SFT on the teacher's CoTs, then key reasoning steps learnt from dual CoT pairs",
           "05_edit", only_when_evaluated=True, colour="#55A868"),
    Method("tailored", "Tailored Learning: rounds of teacher rationales, weighted MLE + a self-reflection triplet",
           "06_tailored_learning", only_when_evaluated=True, colour="#8172B3"),
)}


def cot_methods(notebook: str = "04_sft") -> dict[str, str]:
    """The methods ``notebook`` fine-tunes on a set of CoTs → the notebook that writes each set."""
    return {m.name: m.cots_from for m in METHODS.values() if m.trained_in == notebook and m.cots_from}


def notebooks_run_when_evaluated() -> dict[str, str]:
    """Notebooks that only train one method, run when it is among evaluation.methods → that method."""
    return {m.trained_in: m.name for m in METHODS.values() if m.only_when_evaluated}
