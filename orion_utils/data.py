"""Benchmark loaders: GSM-Hard, MATH500, AIME24, AMC23 and GSM8K as ``Problem`` records.

``load_benchmark(name)`` fetches a benchmark from the Hugging Face hub with
``datasets.load_dataset``; ``load_benchmark(name, data_dir=...)`` reads a local JSONL copy instead
(file names as in ``BENCHMARKS[name].local_file``, e.g. ``math500.jsonl``). Both paths go through
one row converter, so a problem looks the same whichever source it came from.

Every benchmark is one entry of ``BENCHMARKS`` (hub id, config, split, local file name, which
field holds the question / answer / id on the hub and locally, how the raw answer becomes a
string). Adding a benchmark is adding one entry.

Answers are always strings (``Problem.answer``):

- GSM8K: the number after ``####`` in the worked solution, thousands separators removed.
- GSM-Hard: the float ``target``; integer-valued floats are written as integers ("23"), others in
  Python's shortest round-trip form. ``meta["answer_is_float"]`` is True and ``meta["target"]``
  keeps the raw number so that grading can compare with a relative tolerance (the set has known
  label noise; see ``../shared/data/SOURCES.md``).
- AMC23: float answers on the local copy (27.0) become "27"; ``meta["answer_raw"]`` keeps the raw
  value and ``meta["answer_is_float"]`` says it was a number.
- AIME24: digit strings lose their leading zeros ("025" → "25", AIME answers are integers
  0–999); ``meta["answer_raw"]`` keeps the original.
- MATH500: the ``answer`` field as is; ``meta`` has ``subject``, ``level``, ``unique_id`` and the
  reference ``solution`` (whose last ``\\boxed{}`` is the same answer).

Malformed rows raise ``orion_utils.jsonl.RecordError`` naming the file (or hub id), the row and
the field.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Union

from .jsonl import RecordError
from .records import Problem

PathLike = Union[str, Path]

# --------------------------------------------------------------------------- answer parsers

def format_number(x: Union[int, float]) -> str:
    """A number as an answer string: integer-valued floats without ".0", others round-trip exact."""
    if isinstance(x, bool):
        raise TypeError("a bool is not a number here")
    if isinstance(x, int):
        return str(x)
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"not a finite number: {x!r}")
    if x.is_integer():
        return str(int(x))
    return repr(x)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _field_error(where: str, fieldname: str, expected: str, value: Any) -> RecordError:
    return RecordError(
        f"{where}: field {fieldname!r} should be {expected}, got {type(value).__name__} {str(value)[:60]!r}"
    )


def parse_string_answer(value: Any, where: str, fieldname: str = "answer") -> tuple[str, dict]:
    """A string answer, kept as is (surrounding whitespace stripped)."""
    if not isinstance(value, str) or not value.strip():
        raise _field_error(where, fieldname, "a non-empty string", value)
    return value.strip(), {}


def parse_numeric_answer(value: Any, where: str, fieldname: str = "answer") -> tuple[str, dict]:
    """A number (or a numeric string) → canonical string; the raw value goes to ``meta``."""
    if _is_number(value):
        try:
            text = format_number(value)
        except ValueError:
            raise _field_error(where, fieldname, "a finite number", value) from None
        return text, {"answer_raw": value, "answer_is_float": isinstance(value, float)}
    if isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            number = float(text.replace(",", ""))
        except ValueError:
            return text, {}  # a non-numeric string answer: keep it, grading decides
        if math.isfinite(number) and number.is_integer() and re.fullmatch(r"[+-]?[\d,]+(\.0*)?", text):
            return str(int(number)), {"answer_raw": value}
        return text, {"answer_raw": value}
    raise _field_error(where, fieldname, "a number or a numeric string", value)


def parse_float_target(value: Any, where: str, fieldname: str = "target") -> tuple[str, dict]:
    """GSM-Hard's float target: a string for ``Problem.answer``, the float for tolerant grading."""
    if isinstance(value, str):  # tolerate numeric strings (some mirrors store the target as text)
        try:
            value_num = float(value.replace(",", ""))
        except ValueError:
            raise _field_error(where, fieldname, "a number", value) from None
    elif _is_number(value):
        value_num = float(value)
    else:
        raise _field_error(where, fieldname, "a number", value)
    if not math.isfinite(value_num):
        raise _field_error(where, fieldname, "a finite number", value)
    return format_number(value_num), {
        "target": value_num,
        "answer_is_float": True,
        "answer_is_integer": value_num.is_integer(),
    }


def parse_aime_answer(value: Any, where: str, fieldname: str = "answer") -> tuple[str, dict]:
    """AIME answers are integers 0–999, stored as strings with leading zeros ("025")."""
    if _is_number(value):
        return parse_numeric_answer(value, where, fieldname)
    text, meta = parse_string_answer(value, where, fieldname)
    if text.isdigit() and text != str(int(text)):
        return str(int(text)), {"answer_raw": value}
    return text, meta


_GSM8K_NUMBER = re.compile(r"^[+-]?\$?\s*[\d,]*\.?\d+$")


def parse_gsm8k_answer(value: Any, where: str, fieldname: str = "answer") -> tuple[str, dict]:
    """GSM8K's worked solution ending in ``#### N`` → "N" (commas removed); the rationale goes to meta."""
    if not isinstance(value, str):
        raise _field_error(where, fieldname, "a string ending in '#### <number>'", value)
    if "####" not in value:
        raise RecordError(f"{where}: field {fieldname!r} has no '####' final-answer marker: {value[-60:]!r}")
    rationale, _, final = value.rpartition("####")
    final = final.strip()
    cleaned = final.replace(",", "").replace("$", "").strip()
    if not cleaned or not _GSM8K_NUMBER.match(cleaned):
        raise RecordError(f"{where}: field {fieldname!r}: the text after '####' is not a number: {final!r}")
    if "." in cleaned:
        number = float(cleaned)
        if number.is_integer():
            cleaned = str(int(number))
    return cleaned, {"solution": rationale.strip(), "answer_raw": final}


# --------------------------------------------------------------------------- the registry

@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a benchmark lives and how its rows map onto ``Problem``.

    Field tuples list alternatives, first present wins: the hub copy and the local copy do not
    always use the same names (AMC23: ``question`` on the hub, ``problem`` and ``question``
    locally).
    """

    name: str
    hub_id: str
    hub_config: Optional[str]
    hub_split: str
    local_file: str
    question_fields: tuple[str, ...]
    answer_fields: tuple[str, ...]
    parse_answer: Callable[..., tuple[str, dict]]
    id_fields: tuple[str, ...] = ()  # empty or absent → the row index
    meta_fields: tuple[str, ...] = ()  # copied into ``Problem.meta`` when present
    meta_types: dict = field(default_factory=dict)  # field → expected type(s), checked when present
    notes: str = ""


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "gsm_hard": BenchmarkSpec(
        name="gsm_hard",
        hub_id="reasoning-machines/gsm-hard",  # gsmhardv2.jsonl; features input, code, target
        hub_config=None,
        hub_split="train",  # the hub copy has one split, "train", 1319 rows
        local_file="gsm_hard.jsonl",  # input, code, target, idx
        question_fields=("input",),
        answer_fields=("target",),
        parse_answer=parse_float_target,
        id_fields=("idx",),
        meta_fields=("code",),
        meta_types={"code": str},
        notes="float targets with known label noise: grade numerically with a relative tolerance",
    ),
    "math500": BenchmarkSpec(
        name="math500",
        hub_id="HuggingFaceH4/MATH-500",
        hub_config=None,
        hub_split="test",
        # local: the same fields as the hub (problem, solution, answer, subject, level, unique_id)
        local_file="math500.jsonl",
        question_fields=("problem",),
        answer_fields=("answer",),
        parse_answer=parse_string_answer,
        id_fields=("unique_id",),
        meta_fields=("subject", "level", "unique_id", "solution"),
        meta_types={"subject": str, "level": int, "unique_id": str, "solution": str},
    ),
    "aime24": BenchmarkSpec(
        name="aime24",
        hub_id="HuggingFaceH4/aime_2024",  # id, problem, solution, answer (string), url, year
        hub_config=None,
        hub_split="train",
        local_file="aime24.jsonl",  # id, problem, question, solution, answer (string), url
        question_fields=("problem", "question"),
        answer_fields=("answer",),
        parse_answer=parse_aime_answer,
        id_fields=("id",),
        meta_fields=("url", "year", "solution"),
        meta_types={"url": str, "solution": str},
    ),
    "amc23": BenchmarkSpec(
        name="amc23",
        hub_id="math-ai/amc23",  # question, answer (and id, url)
        hub_config=None,
        hub_split="test",
        local_file="amc23.jsonl",  # id, problem, question, answer (float), url
        question_fields=("question", "problem"),
        answer_fields=("answer",),
        parse_answer=parse_numeric_answer,
        id_fields=("id",),
        meta_fields=("url",),
        meta_types={"url": str},
        notes="float answers (27.0): compare numerically",
    ),
    "gsm8k": BenchmarkSpec(
        name="gsm8k",
        hub_id="openai/gsm8k",
        hub_config="main",
        hub_split="test",  # question, answer (worked solution ending '#### N')
        local_file="gsm8k.jsonl",  # question, answer, idx
        question_fields=("question",),
        answer_fields=("answer",),
        parse_answer=parse_gsm8k_answer,
        id_fields=("idx",),
    ),
}

_ALIASES = {
    "gsm-hard": "gsm_hard", "gsmhard": "gsm_hard",
    "math-500": "math500", "math_500": "math500",
    "aime2024": "aime24", "aime_2024": "aime24", "aime-24": "aime24",
    "amc2023": "amc23", "amc_2023": "amc23", "amc-23": "amc23",
    "gsm-8k": "gsm8k", "gsm_8k": "gsm8k",
}


def get_spec(name: str) -> BenchmarkSpec:
    """The registry entry for ``name`` (case-insensitive; "gsm-hard", "math-500" ... accepted)."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known benchmarks: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[key]


# --------------------------------------------------------------------------- row conversion

def _first_present(row: dict, names: tuple[str, ...]) -> tuple[Optional[str], Any]:
    for name in names:
        if name in row and row[name] is not None:
            return name, row[name]
    return None, None


def row_to_problem(spec: BenchmarkSpec, row: Any, index: int, where: str) -> Problem:
    """One raw row (hub or local schema) → ``Problem``; errors name ``where`` and the field."""
    if not isinstance(row, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(row).__name__}")

    qname, question = _first_present(row, spec.question_fields)
    if qname is None:
        wanted = " or ".join(map(repr, spec.question_fields))
        raise RecordError(f"{where}: missing field {wanted} (the question)")
    if not isinstance(question, str) or not question.strip():
        raise _field_error(where, qname, "a non-empty string", question)

    aname, raw_answer = _first_present(row, spec.answer_fields)
    if aname is None:
        raise RecordError(f"{where}: missing field {' or '.join(map(repr, spec.answer_fields))} (the answer)")
    answer, answer_meta = spec.parse_answer(raw_answer, where, aname)

    ident: Any = index
    for id_name in spec.id_fields:
        if id_name in row and row[id_name] is not None:
            ident = row[id_name]
            if not isinstance(ident, (str, int)) or isinstance(ident, bool) or str(ident).strip() == "":
                raise _field_error(where, id_name, "a string or an integer", ident)
            break

    meta: dict = {"index": index}
    for name in spec.meta_fields:
        if name in row and row[name] is not None:
            expected = spec.meta_types.get(name)
            if expected is not None and (not isinstance(row[name], expected) or isinstance(row[name], bool)):
                types = (expected,) if isinstance(expected, type) else expected
                names = " or ".join(t.__name__ for t in types)
                raise _field_error(where, name, f"of type {names}", row[name])
            meta[name] = row[name]
    meta.update(answer_meta)

    return Problem(id=f"{spec.name}/{ident}", question=question, answer=answer, source=spec.name, meta=meta)


def _convert(spec: BenchmarkSpec, rows: Iterable[tuple[int, str, Any]]) -> list[Problem]:
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for index, where, row in rows:
        problem = row_to_problem(spec, row, index, where)
        if problem.id in seen:
            raise RecordError(f"{where}: duplicate id {problem.id!r} (first seen at {seen[problem.id]})")
        seen[problem.id] = where
        problems.append(problem)
    return problems


# --------------------------------------------------------------------------- sources

def iter_local_rows(path: Path, limit: Optional[int] = None) -> Iterator[tuple[int, str, Any]]:
    """(0-based row index, "file:line", parsed row) for each non-blank line of a JSONL file."""
    if not path.exists():
        raise FileNotFoundError(f"benchmark file {path} does not exist")
    count = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if limit is not None and count >= limit:
                return
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RecordError(f"{where}: not valid JSON ({exc.msg})") from None
            yield count, where, row
            count += 1


def iter_hub_rows(hub_id: str, config: Optional[str], split: str, limit: Optional[int] = None
                  ) -> Iterator[tuple[int, str, Any]]:
    """Rows of a hub dataset through ``datasets.load_dataset`` (needs network or a warm cache)."""
    try:
        from datasets import load_dataset
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise ImportError("loading from the hub needs the `datasets` package") from exc
    ds = load_dataset(hub_id, config, split=split)
    n = len(ds) if limit is None else min(limit, len(ds))
    if n < len(ds):
        ds = ds.select(range(n))
    label = f"{hub_id}" + (f" ({config})" if config else "") + f" [{split}]"
    for i, row in enumerate(ds):
        yield i, f"{label} row {i}", row


def local_path(name: str, data_dir: PathLike) -> Path:
    """The local file for benchmark ``name`` under ``data_dir`` (or ``data_dir`` itself if it is a file)."""
    spec = get_spec(name)
    base = Path(data_dir).expanduser()
    if base.is_file():
        return base
    return base / spec.local_file


def load_benchmark(name: str, data_dir: Optional[PathLike] = None,
                   limit: Optional[int] = None) -> list[Problem]:
    """Load a benchmark as a list of ``Problem`` (``id`` "<name>/<id or index>", ``source`` = name).

    ``data_dir``: a directory with the local JSONL copies (``gsm_hard.jsonl``, ``math500.jsonl``,
    ``aime24.jsonl``, ``amc23.jsonl``, ``gsm8k.jsonl``) or one such file; ``None`` loads from
    the hub (``BENCHMARKS[name].hub_id``). ``limit``: the first ``limit`` problems only
    (``None`` or 0: all).
    """
    spec = get_spec(name)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit should be a non-negative integer or None, got {limit!r}")
        limit = limit or None
    if data_dir is not None and str(data_dir) != "":
        path = local_path(spec.name, data_dir)
        return _convert(spec, iter_local_rows(path, limit))
    return _convert(spec, iter_hub_rows(spec.hub_id, spec.hub_config, spec.hub_split, limit))


def load_benchmarks(names: Iterable[str], data_dir: Optional[PathLike] = None,
                    limit: Optional[int] = None) -> dict[str, list[Problem]]:
    """Several benchmarks at once: {canonical name: problems}."""
    return {get_spec(n).name: load_benchmark(n, data_dir=data_dir, limit=limit) for n in names}


__all__ = [
    "BENCHMARKS",
    "BenchmarkSpec",
    "format_number",
    "get_spec",
    "iter_hub_rows",
    "iter_local_rows",
    "load_benchmark",
    "load_benchmarks",
    "local_path",
    "row_to_problem",
]
