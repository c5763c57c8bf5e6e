"""A notebook teaches with its own run's numbers: its markdown states no measured number. A measurement is
shown by a cell that computes it from the run, or kept in the record the markdown links to (docs/results.md,
docs/lab_record.md), never copied into the prose, where it goes stale.

What a notebook's markdown may hold, and nothing else, is listed once, in ALLOWED."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import nbformat
import pytest

from orion_utils import config

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NUMBER = re.compile(r"(?<![\w.\-@])\d[\d,]*(?:\.\d+)?%?(?![\w])")


def _knob_defaults() -> list:
    """(name pattern, default) of every numeric knob: its name as prose spells it (``top_p``: top_p, top-p,
    top p), or ``section.knob``."""
    out = []
    for name in config.SECTIONS:
        cls = config.section_class(name)
        for f in dataclasses.fields(cls):
            default = getattr(cls(), f.name)
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                spelled = "[ _-]".join(map(re.escape, f.name.split("_")))
                out.append((re.compile(rf"(?:{re.escape(name)}\.)?\b{spelled}\b", re.I), float(default)))
    return out


# The numbers a notebook's markdown may state; everything else is a measurement and fails.
ALLOWED = {
    # text taken out before numbers are looked for
    "code span (a command, a knob setting, an example of the text a component writes)": re.compile(r"`[^`\n]*`"),
    "link target": re.compile(r"\]\([^)\s]*\)"),
    "ordered-list marker": re.compile(r"^\s*\d+\.\s", re.M),
    "notebook, stage, round or step number": re.compile(
        r"^#+ \d\d\b|\b(?:notebooks?|stages?|rounds?|steps?)\s+\d+(?:\s+(?:and|to)\s+\d+)?\b|round r ≥ \d", re.M | re.I),
    "version": re.compile(r"\b\d+\.\d+\.\d+\b|\bv\d+(?:\.\d+)*\b"),
    "publication year of a citation": re.compile(r"\b(?:ACL|EMNLP|NAACL|NeurIPS|ICLR|ICML|COLM|arXiv),? (?:19|20)\d\d\b"),
}
# a knob's default stated right after the knob's name ("temperature 0.6", "`tailored.rounds` (1)"): allowed
KNOB_DEFAULTS = _knob_defaults()
NEAR = 30  # characters between the knob's name and its default


def _is_knob_default(text: str, start: int, value: float) -> bool:
    before = text[max(0, start - NEAR):start]
    return any(default == value and pattern.search(before) for pattern, default in KNOB_DEFAULTS)


def stated_numbers(text: str) -> list[str]:
    """The numbers ``text`` (a markdown cell) states that ALLOWED does not allow."""
    spans = [m.span() for p in ALLOWED.values() for m in p.finditer(text)]
    found = []
    for m in NUMBER.finditer(text):
        if any(a <= m.start() < b for a, b in spans):
            continue
        token = m.group(0)
        value = float(token.rstrip("%").replace(",", ""))
        if not (_is_knob_default(text, m.start(), value)
                or (token.endswith("%") and _is_knob_default(text, m.start(), value / 100))):
            found.append(token)
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_markdown_states_no_measured_number(path):
    nb = nbformat.read(path, as_version=4)
    problems = [f"cell {i}: {stated_numbers(c.source)}" for i, c in enumerate(nb.cells)
                if c.cell_type == "markdown" and stated_numbers(c.source)]
    assert problems == [], (f"{path.name} states numbers a run measures (show them from the run in a cell, or "
                            f"link to the record that keeps them): {problems}")


@pytest.mark.parametrize("text", [
    "Together: 1.199 for the rewrites against 1.213 for the teacher CoTs.",
    "the check costs 0.60 nats per token",
    "marks a median **97.8%** of the teacher's tokens",
    "| base student (round-0 exam) | 53.7 | |",
    "AIME24 has 30 problems",
])
def test_a_measured_number_is_caught(text):
    assert stated_numbers(text)


@pytest.mark.parametrize("text", [
    "# 03 · Error-aware reflection", "notebooks 03 and 08", "stage 2 continues from it", "round 1 trains",
    "1. rules find the first step", "`Check: 14 - 7 = 7, not 8`", "EDIT (Dai et al., ACL 2025)",
    "transformers 5.17.0", "[the record](../docs/lab_record.md#x-1)",
    "temperature 0.6, top-p 0.95 by default",  # evaluation.temperature, evaluation.top_p
])
def test_versions_section_numbers_and_knob_defaults_pass(text):
    assert stated_numbers(text) == []


def test_notebooks_are_committed_without_outputs():
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") and c.get("execution_count") is None
                   for c in nb.cells if c.cell_type == "code"), path.name
