"""Knobs: the fields of a profile's section dataclasses, each with its help text and its allowed values.

As in TRL's config classes, a field is declared with ``metadata``: ``help`` (one line, shown by
``display.profile_table``) and, where the value is restricted, ``choices`` (a tuple, declared once and read
by both the check and the help), ``ge``/``gt``/``le`` (a range) or ``each`` (the allowed items of a list),
and ``bookkeeping`` (why the knob changes how a stage works, not what it writes: such a knob is in no stage's
fingerprint, ``stage_specs.fingerprint``, so changing it re-runs nothing).
A section's ``__post_init__`` calls ``validate(self)``, which raises one ``ConfigError`` listing every
problem of the section, one line per knob. Imports nothing heavy (a profile loads without torch).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Optional, Sequence


class ConfigError(ValueError):
    """A profile names an unknown key or gives a value of the wrong type or out of its range.

    ``problems``: one line per knob (``section.key: ...`` once the profile names the section)."""

    def __init__(self, message: str = "", problems: Optional[Sequence[str]] = None):
        self.problems = list(problems) if problems is not None else [message]
        super().__init__(message or "\n".join(self.problems))


DAI_2025 = "Dai et al., Capture the Key in Reasoning to Enhance CoT Distillation Generalization, ACL 2025 (arXiv 2405.19737)"
WANG_2023 = "Wang et al., Democratizing Reasoning Ability: Tailored Learning from Large Language Model, EMNLP 2023 (arXiv 2310.13332)"
CITED_VALUES: dict[tuple[str, str], tuple[Any, str]] = {
    ("edit", "alpha"): (1.0, DAI_2025),
    ("edit", "beta"): (0.025, DAI_2025),
    ("edit", "pair_source"): ("teacher", DAI_2025),  # the teacher rectifies wrong CoTs and corrupts right ones
    ("tailored", "lam"): (0.5, WANG_2023),
    ("tailored", "prefix_weight"): (0.1, WANG_2023),
    ("tailored", "exam_samples"): (4, WANG_2023),
    ("tailored", "exam_temperature"): (1.0, WANG_2023),
}
"""(section, knob) → (value, source): the knob values a paper we can cite gives, the only ones a help text, a
profile or a comment may label "paper" or "as published" (``tests/test_paper_labels.py`` checks). ORION's own
paper (arXiv 2505.22131) publishes only its abstract: ORION's prompts and hyperparameters are ours."""


# The reason of every chunk-size knob (``bookkeeping=SAVED_CHUNKS``): how often finished work is saved, so a
# crash loses at most one chunk. Finished outputs stand under another size (its chunks' seeds name their
# questions, ``rundir.chunk_seed``, so a fresh run under another size draws other, equally valid, samples).
SAVED_CHUNKS = "how often finished work is saved; what is finished stands under another size"


def knob(default: Any = dataclasses.MISSING, help: str = "", *, factory: Optional[Callable[[], Any]] = None,
         choices: Optional[Sequence] = None, each: Optional[Sequence] = None, ge: Optional[float] = None,
         gt: Optional[float] = None, le: Optional[float] = None, bookkeeping: str = "") -> Any:
    """A section field: ``dataclasses.field`` with its help text and its allowed values in ``metadata``;
    ``bookkeeping``: the reason the knob changes no stage's output (it is then in no fingerprint)."""
    meta = {"help": help}
    if bookkeeping:
        meta["bookkeeping"] = bookkeeping
    meta.update({k: v for k, v in (("choices", choices), ("each", each), ("ge", ge), ("gt", gt), ("le", le))
                 if v is not None})
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _listing(values: Iterable) -> str:
    return ", ".join(repr(v) for v in values)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def allowed(f: dataclasses.Field) -> str:
    """The allowed values of a field in words ("" when any value of its type is)."""
    meta = f.metadata
    if "choices" in meta:
        return f"one of {_listing(meta['choices'])}"
    if "each" in meta:
        return f"a list of {_listing(meta['each'])}"
    bounds = [f"{op} {meta[k]}" for k, op in (("gt", ">"), ("ge", ">="), ("le", "<=")) if k in meta]
    return " and ".join(bounds)


def field_problems(obj: Any) -> list[str]:
    """``key: problem`` for each field of a dataclass instance outside its declared choices or range.
    A value of another type is left to the type check (``config.build_section``); None passes (Optional)."""
    problems = []
    for f in dataclasses.fields(obj):
        value, meta = getattr(obj, f.name), f.metadata
        if value is None:
            continue
        if "choices" in meta and value not in meta["choices"]:
            problems.append(f"{f.name}: {value!r} is not {allowed(f)}")
        elif "each" in meta and isinstance(value, (list, tuple)):
            bad = [v for v in value if v not in meta["each"]]
            if bad:
                problems.append(f"{f.name}: {_listing(bad)} not allowed; {allowed(f)}")
        elif _is_number(value) and (("ge" in meta and value < meta["ge"]) or ("gt" in meta and value <= meta["gt"])
                                    or ("le" in meta and value > meta["le"])):
            problems.append(f"{f.name}: {value!r} is out of range; must be {allowed(f)}")
    return problems


def validate(obj: Any, extra: Iterable[str] = ()) -> None:
    """A section's ``__post_init__``: raise one ``ConfigError`` naming every field outside its choices or range,
    plus ``extra`` (``key: problem`` lines of the section's own checks across its fields)."""
    problems = field_problems(obj) + list(extra)
    if problems:
        raise ConfigError(f"{type(obj).__name__}: " + "; ".join(problems), problems)


def help_text(f: dataclasses.Field) -> str:
    """A field's one-line help, with its allowed values when they are declared."""
    text = f.metadata.get("help", "")
    limits = allowed(f)
    return f"{text} [{limits}]" if limits and text else text or limits


def bookkeeping(f: dataclasses.Field) -> str:
    """Why a field changes no stage's output ("" when it may: then it is in the fingerprint of each stage that
    reads its section)."""
    return f.metadata.get("bookkeeping", "")
