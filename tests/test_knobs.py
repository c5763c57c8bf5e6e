"""Knobs are checked when the profile loads: enums and ranges of every section (declared once, in each
field's metadata), cross-section checks, every problem in one error; each knob has a help text."""
import dataclasses
import typing

import pytest

from orion_utils.config import CONFIG_DIR, SECTIONS, ConfigError, load_profile, section_class
from orion_utils.display import profile_rows, profile_table
from orion_utils.knobs import help_text


def _fields(section):
    return dataclasses.fields(section_class(section))


def _restricted(kind):
    return [(s, f) for s in SECTIONS for f in _fields(s) if kind(f.metadata)]


def _load_problems(overrides, profile="toy"):
    with pytest.raises(ConfigError) as info:
        load_profile(profile, overrides)
    return info.value.problems, str(info.value)


def test_every_knob_of_every_section_has_a_one_line_help():
    missing = [f"{s}.{f.name}" for s in SECTIONS for f in _fields(s) if not f.metadata.get("help", "").strip()]
    assert missing == []
    multi_line = [f"{s}.{f.name}" for s in SECTIONS for f in _fields(s) if "\n" in f.metadata["help"]]
    assert multi_line == []


@pytest.mark.parametrize("profile", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_shipped_profiles_load(profile):
    assert load_profile(profile).sections.keys() == SECTIONS.keys()


def test_the_issue_example_names_knob_and_allowed_values():
    problems, message = _load_problems({"reflection": {"selection": "perplexty"}})
    assert problems == ["reflection.selection: 'perplexty' is not one of 'perplexity', 'shortest', 'first'"]
    assert "reflection.selection" in message and "'perplexity', 'shortest', 'first'" in message


ENUMS = _restricted(lambda m: "choices" in m or "each" in m)


def test_every_section_with_a_fixed_set_of_values_is_covered():
    assert {s for s, _ in ENUMS} >= {"student", "teacher", "generation", "training", "edit", "tailored", "exposure",
                                     "reflection", "evaluation", "analysis", "toy_student", "toy_pretrain"}


@pytest.mark.parametrize("section,f", ENUMS, ids=[f"{s}.{f.name}" for s, f in ENUMS])
def test_a_typo_in_an_enum_knob_is_one_error_naming_knob_and_values(section, f):
    allowed = f.metadata.get("choices") or f.metadata["each"]
    typo = "tyop" if "choices" in f.metadata else [allowed[0], "tyop"]
    problems, _ = _load_problems({section: {f.name: typo}})
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{section}.{f.name}: ") and "tyop" in problems[0]
    assert all(repr(v) in problems[0] for v in allowed)
    load_profile("toy", {section: {f.name: allowed[-1] if "choices" in f.metadata else [allowed[-1]]}})


def _out_of_range(f, hint):
    meta = f.metadata
    number = float if float in (hint, *typing.get_args(hint)) else int
    if "le" in meta:
        return number(meta["le"] + 1)
    return number(meta["gt"]) if "gt" in meta else number(meta["ge"] - 1)


RANGES = _restricted(lambda m: {"ge", "gt", "le"} & set(m))


@pytest.mark.parametrize("section,f", RANGES, ids=[f"{s}.{f.name}" for s, f in RANGES])
def test_a_value_out_of_range_names_the_knob_and_its_range(section, f):
    value = _out_of_range(f, typing.get_type_hints(section_class(section))[f.name])
    problems, _ = _load_problems({section: {f.name: value}})
    line = [p for p in problems if p.startswith(f"{section}.{f.name}: ")]
    assert line and "out of range; must be" in line[0], problems


def test_every_problem_of_a_profile_is_reported_together():
    problems, message = _load_problems({
        "reflection": {"selection": "perplexty", "m": 0},
        "teacher": {"kind": "datset", "top_p": 1.5},
        "training": {"batch_size": 0, "overlong": "cut"},
        "evaluation": {"methods": ["base", "orin"], "workers": 0},
        "exposure": {"kk": 1, "k": "four"},
        "toy_student": {"architecture": "gpt2", "num_heads": 3},
        "nosuch": {},
    })
    expected = ["reflection.selection", "reflection.m", "teacher.kind", "teacher.top_p", "training.batch_size",
                "training.overlong", "evaluation.methods", "evaluation.workers", "'exposure.k' should be int",
                "unknown key 'exposure.kk'", "toy_student.architecture", "toy_student.hidden_size",
                "unknown section 'nosuch'"]
    assert len(problems) == len(expected), problems
    assert all(any(e in p for p in problems) for e in expected), problems
    assert message.startswith("profile 'toy': 13 problem(s):") and all(p in message for p in problems)
    # a value the method sections inherit from `training` is reported once, on `training`
    assert not any(p.startswith(("edit.batch_size", "tailored.batch_size")) for p in problems)


@pytest.mark.parametrize("overrides,knob", [
    ({"reflection": {"reflector": "student"}, "teacher": {"kind": "dataset"}}, "reflection.reflector"),
    ({"teacher": {"kind": "dataset"}, "edit": {"pair_source": "teacher"}}, "edit.pair_source"),
    ({"teacher": {"kind": "dataset"}, "evaluation": {"methods": ["base", "tailored"]}, "tailored": {"rounds": 2}},
     "evaluation.methods"),
    ({"analysis": {"judge": True}}, "analysis.judge"),
    ({"generation": {"max_model_len": 9000}, "exposure": {"max_new_tokens": 9000}}, "exposure.max_new_tokens"),
])
def test_cross_section_checks(overrides, knob):
    problems, _ = _load_problems(overrides)
    assert len(problems) == 1 and knob in problems[0], problems


def test_cross_section_checks_pass_where_the_pair_is_sound():
    load_profile("toy", {"teacher": {"kind": "dataset"}, "evaluation": {"methods": ["base", "tailored"]},
                         "tailored": {"rounds": 1}, "edit": {"pair_source": "auto"}})
    load_profile("toy", {"reflection": {"reflector": "llm"}, "student": {"model": "some/real-model"}})
    load_profile("toy", {"reflection": {"reflector": "student"}, "student": {"model": "some/real-model"}})
    load_profile("toy", {"teacher": {"kind": "api"}, "analysis": {"judge": True}})


def test_a_section_built_in_code_is_checked_too():
    from orion_utils.reflection import ReflectionConfig

    with pytest.raises(ConfigError, match=r"selection: 'x' is not one of") as info:
        ReflectionConfig(selection="x", m=0)
    assert len(info.value.problems) == 2


def test_the_stages_check_the_same_tuples_the_knobs_declare():
    from orion_utils import collection, exposure, reflection
    from orion_utils.config import TeacherConfig

    meta = {(s, f.name): f.metadata for s in SECTIONS for f in _fields(s)}
    assert meta["reflection", "selection"]["choices"] is reflection.SELECTION_RULES
    assert meta["exposure", "source"]["choices"] is exposure.EXPOSURE_SOURCES
    assert meta["teacher", "kind"]["choices"] is collection.TEACHER_KINDS
    with pytest.raises(ConfigError, match="teacher.kind"):
        load_profile("toy", {"teacher": {"kind": "remote"}})
    cfg = TeacherConfig()
    cfg.kind = "remote"  # changed after the check: the stage still refuses it
    with pytest.raises(ValueError, match="teacher.kind must be one of"):
        collection.make_teacher(cfg)


def test_profile_table_shows_each_knobs_help(capsys):
    cfg = load_profile("smoke")
    rows = profile_rows(cfg, ["reflection"])
    selection = next(r for r in rows if r["key"] == "selection")
    field = next(f for f in _fields("reflection") if f.name == "selection")
    assert selection["help"] == help_text(field) and "'perplexity', 'shortest', 'first'" in selection["help"]
    profile_table(cfg, ["reflection"])
    out = capsys.readouterr().out
    assert "section | key | value | help" in out
    assert "selection | 'perplexity' | which accepted rewrite is kept" in out


@pytest.mark.parametrize("overrides,line", [
    ({"training": {"load_in_4bit": True}}, "training.load_in_4bit: QLoRA trains adapters; set use_lora: true"),
    ({"evaluation": {"n_samples": 0, "greedy": False}}, "evaluation.n_samples: 0 with greedy: false decodes nothing"),
    ({"toy_domain": {"min_steps": 4, "max_steps": 3}}, "toy_domain.min_steps: need min_steps <= max_steps"),
])
def test_checks_across_the_knobs_of_one_section(overrides, line):
    problems, _ = _load_problems(overrides)
    assert problems == [line]  # once: the method sections inheriting `training` do not repeat it
