"""A knob's value is labelled "paper" or "as published" only where a paper we can cite gives it: the values of
``knobs.CITED_VALUES`` (EDIT: Dai et al.; Tailored Learning: Wang et al.). ORION's own paper publishes only its
abstract, so none of ORION's knobs is "the paper's". Checked in the knobs' help texts, in the comments beside
the knobs' declarations, and in the profiles under configs/."""
from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest
import yaml

from orion_utils.config import SECTIONS, section_class
from orion_utils.knobs import CITED_VALUES

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LABEL = re.compile(r"\bpaper'?s?\b(?!\.yaml)|\bas published\b", re.I)
CLAUSE = re.compile(r"[;,():]|\.\s")  # a label must sit next to its knob: in its clause or the one after it
ALIASES = {"lam": ("λ", "lambda")}


def _fields(section: str) -> list[str]:
    return [f.name for f in dataclasses.fields(section_class(section))]


def _names(field: str) -> tuple[str, ...]:
    return (field, field.replace("_", " "), *ALIASES.get(field, ()))


def _mentions(text: str, field: str) -> bool:
    return any(re.search(rf"(?<![\w.]){re.escape(n)}(?![\w])", text, re.I) for n in _names(field))


def _labelled_sentence_problems(text: str, section: str, where: str) -> list[str]:
    """Each clause of ``text`` that says "paper"/"as published" must name, in it or in the clause after it, a
    cited knob of ``section`` and no knob of it that is not cited."""
    problems = []
    clauses = [c for c in CLAUSE.split(" ".join(text.split())) if c.strip()]
    for i, clause in enumerate(clauses):
        if not LABEL.search(clause):
            continue
        sentence = " / ".join(clauses[i: i + 2])
        named = [f for f in _fields(section) if _mentions(sentence, f)]
        uncited = [f for f in named if (section, f) not in CITED_VALUES]
        if uncited or not [f for f in named if (section, f) in CITED_VALUES]:
            problems.append(f"{where} [{section}]: {sentence!r} labels " + (
                f"{uncited}, not in knobs.CITED_VALUES" if uncited else "no knob of knobs.CITED_VALUES"))
    return problems


def _same(value, cited) -> bool:
    if isinstance(cited, (int, float)) and not isinstance(cited, bool):
        try:
            return float(value) == float(cited)
        except (TypeError, ValueError):
            return False
    return str(value).strip() == str(cited)


def test_the_cited_values_are_the_knobs_defaults_or_a_profiles_choice_of_them():
    for (section, field), (value, source) in CITED_VALUES.items():
        assert field in _fields(section), (section, field)
        assert source.split(",")[0].endswith("et al.") and "arXiv" in source


@pytest.mark.parametrize("section", list(SECTIONS))
def test_help_texts_say_paper_only_beside_a_cited_value(section):
    for f in dataclasses.fields(section_class(section)):
        text = f.metadata.get("help", "")
        if not LABEL.search(text):
            continue
        assert (section, f.name) in CITED_VALUES, f"{section}.{f.name}: help {text!r} says paper; not a cited value"
        stated = re.search(r"paper:\s*([^,;)]+)", text)
        assert stated and _same(stated.group(1), CITED_VALUES[(section, f.name)][0]), (
            f"{section}.{f.name}: help {text!r} does not state the cited value {CITED_VALUES[(section, f.name)][0]!r}")


@pytest.mark.parametrize("section", list(SECTIONS))
def test_comments_beside_the_knob_declarations_say_paper_only_beside_a_cited_knob(section):
    lines = inspect.getsource(section_class(section)).splitlines()
    blocks, block = [], []
    for line in lines + [""]:
        comment = line.split("#", 1)[1] if "#" in line and not line.strip().startswith(('"', "'")) else None
        if comment is not None and line.strip().startswith("#"):
            block.append(comment)
            continue
        if block:
            blocks.append(" ".join(block))
            block = []
        if comment is not None and LABEL.search(comment):
            field = line.strip().split(":", 1)[0]
            assert (section, field) in CITED_VALUES, f"{section}.{field}: comment {comment!r} says paper"
    problems = [p for b in blocks for p in _labelled_sentence_problems(b, section, "class comment")]
    assert not problems, "\n".join(problems)


def _yaml_labels(path: Path) -> list[str]:
    """The problems of one profile: inline comments that label a knob not cited (or state another value), and
    comment blocks whose labelled sentences name no cited knob of the section they stand in or above."""
    lines = path.read_text(encoding="utf-8").splitlines()
    problems, block, section = [], [], None
    for line in lines + ["end_of_file:"]:
        stripped = line.strip()
        if stripped.startswith("#"):
            block.append((line[: len(line) - len(line.lstrip())], stripped[1:]))
            continue
        top = re.match(r"^([A-Za-z_]\w*):", line)
        if block:
            indented = bool(block[0][0])
            target = section if indented else (top.group(1) if top else section)
            text = " ".join(c for _, c in block)
            if target in SECTIONS:
                problems += _labelled_sentence_problems(text, target, path.name)
            elif LABEL.search(text):
                problems.append(f"{path.name}: {text!r} says paper outside a knob section")
            block = []
        if top:
            section = top.group(1)
        inline = re.match(r"^\s+(\w+):\s*([^#]*?)\s*#(.*)$", line)
        if inline and LABEL.search(inline.group(3)):
            key, value = inline.group(1), yaml.safe_load(inline.group(2) or "null")
            cited = CITED_VALUES.get((section, key))
            if cited is None or not _same(value, cited[0]):
                problems.append(f"{path.name}: {section}.{key}: {value!r} labelled paper ({inline.group(3).strip()!r});"
                                f" cited: {cited[0] if cited else 'none'}")
    return problems


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_profiles_say_paper_only_beside_a_cited_knob(path):
    problems = _yaml_labels(path)
    assert not problems, "\n".join(problems)


def test_the_check_catches_an_uncited_label(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("# Tailored Learning: two teacher rationales as in the paper.\ntailored:\n"
                   "  teacher_samples: 2  # paper: 2\n  lam: 0.3  # as published\n  exam_samples: 4  # paper: 4\n"
                   "# Reflection as published: m 4.\nreflection:\n  m: 4\n")
    problems = _yaml_labels(bad)
    assert len(problems) == 4, problems  # the block, teacher_samples, lam's other value, reflection's m
    assert any("teacher_samples" in p for p in problems) and any("lam" in p for p in problems)
    assert any("[reflection]" in p and "['m']" in p for p in problems)
