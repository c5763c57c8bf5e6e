"""Published trace datasets as a teacher: s1K-1.1, OpenR1-Math-220k, LIMO and local R1 samples.

``load_trace_dataset(name)`` turns a dataset into ``Problem`` records (question + gold answer)
and graded ``TeacherTrace`` records (thinking + final solution, graded with
``teachers.base.make_trace``). ``DatasetTeacher`` answers the ``Teacher`` protocol from such a
dataset: it looks traces up by problem id, or by normalised question text, instead of sampling.

Datasets (``TRACE_DATASETS``; the hub schemas were checked against the dataset cards):

``s1k-1.1`` — ``simplescaling/s1K-1.1`` (train, 1,000 rows). Columns: ``question``,
    ``solution`` (the reference solution: sometimes only the answer, sometimes a worked solution),
    ``cot_type``, ``source_type``, ``metadata``, ``gemini_thinking_trajectory``,
    ``gemini_attempt``, ``deepseek_thinking_trajectory``, ``deepseek_attempt`` (+ grade columns
    ``gemini_grade`` / ``deepseek_grade`` / ``*_grade_reason`` in recent revisions). Thinking =
    ``deepseek_thinking_trajectory``, solution = ``deepseek_attempt``. The gold answer is the
    last ``\\boxed{}`` of ``solution``, or the whole (stripped) ``solution`` when it has none
    (``meta["answer_from"]`` says which); non-math questions (``cot_type`` other than "math")
    rarely verify. ``deepseek_grade`` goes to the trace's ``meta["dataset_grade"]``.
``openr1-math-220k`` — ``open-r1/OpenR1-Math-220k``, config ``default`` (train, ~94k rows).
    Columns: ``problem``, ``solution``, ``answer``, ``problem_type``, ``question_type``,
    ``source``, ``uuid``, ``is_reasoning_complete`` (list), ``generations`` (list of R1 replies
    ``<think>…</think> solution``), ``correctness_math_verify`` (list), ``correctness_llama``
    (list or null), ``finish_reasons`` (list), ``correctness_count``, ``messages``. One trace per
    generation (``sample_index`` = its position), the dataset's own verdicts in ``meta``.
``limo`` — ``GAIR/LIMO`` (train, 817 rows, ``limo.jsonl``). Columns: ``question``,
    ``solution``, ``answer``. LIMO's ``solution`` is one long reasoning text without separate
    thinking: we put the reasoning before the last "**Final Answer**" marker (or, failing that,
    before the last paragraph holding a ``\\boxed{}``) into ``thinking`` and the rest into
    ``solution`` (``meta["split_rule"]`` says which rule applied). A solution with ``<think>``
    tags is split on them instead. The same schema with ``gold_answer`` for ``answer`` (and an ``id``)
    is read too: e.g. DeepSeek-R1-Distill-Qwen-32B's long CoTs on LIMO's problems, which have no
    ``<think>`` tags and end their thinking at "**Final Answer**".
``gsm8k`` — ``openai/gsm8k`` (config ``main``, train, 7,473 rows). Columns: ``question``, ``answer``
    (a human worked solution with ``<<48/2=24>>`` calculator annotations, ending "#### N"). Not a
    reasoning model's trace: the steps, annotations removed, become the thinking and the solution is
    "The answer is \\boxed{N}." (short CoTs a small student can learn from).
``r1-samples`` — local JSON only (a list of objects ``problem``, ``gtruth_answer``,
    ``message_thinking``, ``message_content``, as in ``deepseek_r1_math_samples.json``):
    DeepSeek-R1 replies collected through an API, ``message_thinking`` being the reasoning content.

``data_dir`` is a directory holding one such file in the same schema (JSONL, JSON or parquet;
e.g. a hub snapshot's ``data/train-*.parquet``), or the file itself; without it the hub is used
through ``datasets.load_dataset`` (streaming when a ``limit`` is given, so that 200 OpenR1 rows do
not download every shard).
"""
from __future__ import annotations

import json
import re
import unicodedata
import warnings
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

from ..grading import boxes
from ..jsonl import RecordError
from ..records import Problem, TeacherTrace, as_problem
from .base import make_trace, split_thinking

PathLike = Union[str, Path]
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


# --------------------------------------------------------------------------- parsed entries

@dataclass
class TraceSample:
    """One teacher reply from a dataset, not yet graded."""

    thinking: str
    solution: str
    sample_index: int = 0
    meta: dict = field(default_factory=dict)


@dataclass
class TraceEntry:
    """One dataset row: the problem and the teacher replies recorded for it."""

    problem: Problem
    samples: list[TraceSample]


@dataclass(frozen=True)
class TraceDatasetSpec:
    name: str
    hub_id: Optional[str]  # None: local files only
    hub_config: Optional[str]
    convert: Callable[[dict, int, str], TraceEntry]
    local_names: tuple[str, ...] = ()  # preferred file names inside data_dir
    description: str = ""


class MissingTraceWarning(UserWarning):
    """``DatasetTeacher.collect`` was asked for problems the dataset has no trace for."""


# --------------------------------------------------------------------------- field helpers

def _missing(where: str, name: str) -> RecordError:
    return RecordError(f"{where}: missing field {name!r}")


def _wrong(where: str, name: str, expected: str, value: Any) -> RecordError:
    return RecordError(
        f"{where}: field {name!r} should be {expected}, got {type(value).__name__} {str(value)[:60]!r}"
    )


def _req_str(row: dict, name: str, where: str, nonempty: bool = True) -> str:
    if name not in row or row[name] is None:
        raise _missing(where, name)
    value = row[name]
    if not isinstance(value, str):
        raise _wrong(where, name, "a string", value)
    if nonempty and not value.strip():
        raise _wrong(where, name, "a non-empty string", value)
    return value


def _opt(row: dict, name: str, where: str, types: tuple, expected: str) -> Any:
    value = row.get(name)
    if value is None:
        return None
    if not isinstance(value, types) or isinstance(value, bool) and bool not in types:
        raise _wrong(where, name, expected, value)
    return value


def _text_or_list(row: dict, name: str, where: str) -> str:
    """A string, or a list of strings (an older s1K-1.1 revision stored traces as sequences)."""
    if name not in row or row[name] is None:
        raise _missing(where, name)
    value = row[name]
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n\n".join(value)
    raise _wrong(where, name, "a string (or a list of strings)", value)


def _list_of(row: dict, name: str, where: str, item_types: tuple, expected: str,
             required: bool = False, allow_none_items: bool = False) -> Optional[list]:
    if name not in row or row[name] is None:
        if required:
            raise _missing(where, name)
        return None
    value = row[name]
    if not isinstance(value, list):
        raise _wrong(where, name, f"a list of {expected}", value)
    for i, item in enumerate(value):
        if item is None and allow_none_items:
            continue
        if not isinstance(item, item_types) or (isinstance(item, bool) and bool not in item_types):
            raise RecordError(
                f"{where}: field {name!r}[{i}] should be {expected}, "
                f"got {type(item).__name__} {str(item)[:60]!r}"
            )
    return value


def _answer_text(row: dict, name: str, where: str) -> str:
    """A gold answer given as a string or a number (numbers written without a trailing .0)."""
    if name not in row or row[name] is None:
        raise _missing(where, name)
    value = row[name]
    if isinstance(value, bool):
        raise _wrong(where, name, "a string or a number", value)
    if isinstance(value, (int, float)):
        from ..data import format_number

        return format_number(value)
    if not isinstance(value, str):
        raise _wrong(where, name, "a string or a number", value)
    return value.strip()


def last_boxed(text: str) -> Optional[str]:
    """The content of the last closed ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``.

    Read by the grader's own box reader, so that a gold answer taken from a reference solution is
    read exactly as a response's answer is (nested braces, adjacent boxes as one list)."""
    if not text:
        return None
    return boxes.last_boxed(text, closed_only=True)


def _strip_think_tags(text: str) -> str:
    text = text.strip()
    if text.startswith("<think>"):
        text = text[len("<think>"):]
    if text.endswith("</think>"):
        text = text[: -len("</think>")]
    return text.strip()


def normalize_question(text: str) -> str:
    """Key for matching a question across sources: NFKC, whitespace collapsed, case folded."""
    return " ".join(unicodedata.normalize("NFKC", text or "").split()).casefold()


# --------------------------------------------------------------------------- LIMO split

_FINAL_ANSWER_RE = re.compile(
    r"\*\*\s*Final\s+Answer\s*:?\s*\*\*|^\s*#{1,6}\s*Final\s+Answer\b|^\s*Final\s+Answer\s*:",
    re.IGNORECASE | re.MULTILINE,
)


def split_reasoning_solution(text: str) -> tuple[str, str, str]:
    """Split one reasoning text without separate thinking into (thinking, solution, rule).

    Rules, first that applies: ``<think>`` tags (``"think_tags"``); the last "**Final Answer**"
    marker starts the solution (``"final_answer_marker"``); the last paragraph holding a
    ``\\boxed{}`` starts the solution (``"last_boxed_paragraph"``); otherwise it is all solution
    (``"no_split"``, empty thinking).
    """
    text = (text or "").strip()
    if "<think>" in text or "</think>" in text:
        thinking, solution = split_thinking(text)
        return thinking, solution, "think_tags"
    markers = list(_FINAL_ANSWER_RE.finditer(text))
    if markers:
        start = markers[-1].start()
        thinking, solution = text[:start].strip(), text[start:].strip()
        if thinking and solution:
            return thinking, solution, "final_answer_marker"
    if re.search(r"\\(?:boxed|fbox)\s*\{", text):
        paragraphs = re.split(r"\n\s*\n", text)
        last = max(i for i, p in enumerate(paragraphs) if re.search(r"\\(?:boxed|fbox)\s*\{", p))
        thinking = "\n\n".join(paragraphs[:last]).strip()
        solution = "\n\n".join(paragraphs[last:]).strip()
        if thinking:
            return thinking, solution, "last_boxed_paragraph"
    return "", text, "no_split"


# --------------------------------------------------------------------------- row converters

def _convert_s1k(row: dict, index: int, where: str) -> TraceEntry:
    question = _req_str(row, "question", where)
    reference = _req_str(row, "solution", where)
    thinking_raw = _text_or_list(row, "deepseek_thinking_trajectory", where)
    attempt = _text_or_list(row, "deepseek_attempt", where)
    meta: dict = {"index": index}
    for name in ("cot_type", "source_type", "metadata"):
        value = _opt(row, name, where, (str,), "a string")
        if value is not None:
            meta[name] = value
    boxed = last_boxed(reference)
    answer = boxed if boxed else reference.strip()
    meta["answer_from"] = "boxed" if boxed else "solution"
    meta["reference_solution"] = reference
    thinking_raw = _strip_think_tags(thinking_raw)
    if thinking_raw:
        thinking, solution = split_thinking(attempt, reasoning_content=thinking_raw)
    else:
        thinking, solution = split_thinking(attempt)
    sample_meta: dict = {"model": "deepseek-r1"}
    grade = _opt(row, "deepseek_grade", where, (str,), "a string")
    if grade is not None:
        sample_meta["dataset_grade"] = grade
    problem = Problem(id=f"s1k-1.1/{index}", question=question, answer=answer, source="s1k-1.1", meta=meta)
    return TraceEntry(problem, [TraceSample(thinking, solution, 0, sample_meta)])


def _convert_openr1(row: dict, index: int, where: str) -> TraceEntry:
    question = _req_str(row, "problem", where)
    answer = _answer_text(row, "answer", where)
    generations = _list_of(row, "generations", where, (str,), "strings", required=True)
    verify = _list_of(row, "correctness_math_verify", where, (bool,), "booleans", allow_none_items=True)
    complete = _list_of(row, "is_reasoning_complete", where, (bool,), "booleans", allow_none_items=True)
    finish = _list_of(row, "finish_reasons", where, (str,), "strings", allow_none_items=True)
    llama = _list_of(row, "correctness_llama", where, (bool,), "booleans", allow_none_items=True)
    uuid = _opt(row, "uuid", where, (str,), "a string")
    meta: dict = {"index": index}
    for name in ("problem_type", "question_type", "source", "uuid"):
        value = _opt(row, name, where, (str,), "a string")
        if value is not None:
            meta[name] = value
    count = _opt(row, "correctness_count", where, (int,), "an integer")
    if count is not None:
        meta["correctness_count"] = count
    reference = _opt(row, "solution", where, (str,), "a string")
    if reference is not None:
        meta["reference_solution"] = reference
    samples = []
    for j, generation in enumerate(generations):
        thinking, solution = split_thinking(generation)
        sample_meta: dict = {"model": "deepseek-r1"}
        for key, values in (("math_verify", verify), ("is_reasoning_complete", complete),
                            ("finish_reason", finish), ("llama_judge", llama)):
            if values is not None and j < len(values) and values[j] is not None:
                sample_meta[key] = values[j]
        samples.append(TraceSample(thinking, solution, j, sample_meta))
    ident = uuid if uuid and uuid.strip() else index
    problem = Problem(id=f"openr1-math-220k/{ident}", question=question, answer=answer,
                      source="openr1-math-220k", meta=meta)
    return TraceEntry(problem, samples)


def _convert_limo(row: dict, index: int, where: str) -> TraceEntry:
    question = _req_str(row, "question", where)
    text = _req_str(row, "solution", where)
    # GAIR/LIMO names the gold answer ``answer``; re-generated LIMO traces (e.g. a distilled model's
    # long CoTs on LIMO's problems) name it ``gold_answer`` and carry their own ``id``.
    key = "answer" if row.get("answer") is not None or "gold_answer" not in row else "gold_answer"
    answer = _answer_text(row, key, where)
    if not answer:
        raise _wrong(where, key, "a non-empty string or a number", row[key])
    thinking, solution, rule = split_reasoning_solution(text)
    ident = _opt(row, "id", where, (int, str), "an integer or a string")
    meta: dict = {"index": index}
    if ident is not None:
        meta["row_id"] = ident
    score = _opt(row, "similarity_score", where, (int, float), "a number")
    if score is not None:
        meta["similarity_score"] = score
    problem = Problem(id=f"limo/{ident if ident is not None else index}", question=question, answer=answer,
                      source="limo", meta=meta)
    return TraceEntry(problem, [TraceSample(thinking, solution, 0, {"split_rule": rule})])


_CALC_RE = re.compile(r"<<[^<>]*>>")


def gsm8k_solution_to_cot(worked: str) -> tuple[str, str, str]:
    """A GSM8K worked solution as (thinking, solution, final answer).

    The ``<<48/2=24>>`` calculator annotations are removed, the steps become the thinking, and the
    ``#### N`` line becomes a final solution ending in ``\\boxed{N}``.
    """
    body, sep, final = worked.rpartition("####")
    if not sep or not final.strip():
        raise ValueError("no '#### <answer>' line")
    answer = final.strip().replace(",", "")
    steps = "\n".join(line.strip() for line in _CALC_RE.sub("", body).strip().splitlines() if line.strip())
    return steps, f"The answer is \\boxed{{{answer}}}.", answer


def _convert_gsm8k(row: dict, index: int, where: str) -> TraceEntry:
    question = _req_str(row, "question", where)
    worked = _req_str(row, "answer", where)
    try:
        thinking, solution, answer = gsm8k_solution_to_cot(worked)
    except ValueError as exc:
        raise _wrong(where, "answer", f"a worked solution ending in '#### N' ({exc})", worked) from None
    problem = Problem(id=f"gsm8k-train/{index}", question=question, answer=answer, source="gsm8k-train",
                      meta={"index": index})
    return TraceEntry(problem, [TraceSample(thinking, solution, 0, {"model": "gsm8k-worked-solution"})])


def _convert_r1_samples(row: dict, index: int, where: str) -> TraceEntry:
    question = _req_str(row, "problem", where)
    answer = _answer_text(row, "gtruth_answer", where)
    if not answer:
        raise _wrong(where, "gtruth_answer", "a non-empty string or a number", row["gtruth_answer"])
    content = _req_str(row, "message_content", where, nonempty=False)
    reasoning = _opt(row, "message_thinking", where, (str,), "a string")
    thinking, solution = split_thinking(content, reasoning_content=reasoning or None)
    problem = Problem(id=f"r1-samples/{index}", question=question, answer=answer, source="r1-samples",
                      meta={"index": index})
    return TraceEntry(problem, [TraceSample(thinking, solution, 0, {"model": "deepseek-r1"})])


TRACE_DATASETS: dict[str, TraceDatasetSpec] = {
    "s1k-1.1": TraceDatasetSpec(
        name="s1k-1.1", hub_id="simplescaling/s1K-1.1", hub_config=None, convert=_convert_s1k,
        description="1,000 questions with DeepSeek-R1 thinking and attempt",
    ),
    "openr1-math-220k": TraceDatasetSpec(
        name="openr1-math-220k", hub_id="open-r1/OpenR1-Math-220k", hub_config="default",
        convert=_convert_openr1,
        description="~94k NuminaMath 1.5 problems (default config), 2-4 DeepSeek-R1 generations each",
    ),
    "limo": TraceDatasetSpec(
        name="limo", hub_id="GAIR/LIMO", hub_config=None, convert=_convert_limo,
        local_names=("limo.jsonl",), description="817 curated long reasoning solutions",
    ),
    "gsm8k": TraceDatasetSpec(
        name="gsm8k", hub_id="openai/gsm8k", hub_config="main", convert=_convert_gsm8k,
        local_names=("gsm8k_train.jsonl",),
        description="GSM8K train: human worked solutions (<<calc>> removed) as short CoTs ending in \\boxed{}",
    ),
    "r1-samples": TraceDatasetSpec(
        name="r1-samples", hub_id=None, hub_config=None, convert=_convert_r1_samples,
        local_names=("deepseek_r1_math_samples.json",),
        description="local JSON of DeepSeek-R1 API replies "
                    "(problem, gtruth_answer, message_thinking, message_content)",
    ),
}

_ALIASES = {
    "s1k": "s1k-1.1", "s1k1.1": "s1k-1.1", "s1k_1.1": "s1k-1.1", "simplescaling/s1k-1.1": "s1k-1.1",
    "openr1": "openr1-math-220k", "openr1-math": "openr1-math-220k", "openr1_math_220k": "openr1-math-220k",
    "open-r1/openr1-math-220k": "openr1-math-220k",
    "gair/limo": "limo",
    "gsm8k-train": "gsm8k", "openai/gsm8k": "gsm8k",
    "r1_samples": "r1-samples", "deepseek-r1-samples": "r1-samples",
}


def get_trace_spec(name: str) -> TraceDatasetSpec:
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in TRACE_DATASETS:
        raise ValueError(f"unknown trace dataset {name!r}; known trace datasets: {', '.join(TRACE_DATASETS)}")
    return TRACE_DATASETS[key]


# --------------------------------------------------------------------------- sources

def find_local_files(spec: TraceDatasetSpec, data_dir: PathLike, split: str = "train") -> list[Path]:
    """The data file(s) for ``spec`` in ``data_dir`` (a file is taken as is).

    In a directory (searched recursively, hidden entries skipped): the spec's known file names
    first (``limo.jsonl`` ...), then files whose name starts with the split (``train.jsonl``,
    ``train-00000-of-00002.parquet`` ...), then the only data file there is.
    """
    base = Path(data_dir).expanduser()
    if base.is_file():
        return [base]
    if not base.exists():
        raise FileNotFoundError(f"trace dataset directory {base} does not exist")
    candidates = sorted(
        p for p in base.rglob("*")
        if p.is_file() and p.suffix in DATA_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(base).parts)
    )
    if not candidates:
        kinds = "/".join(DATA_SUFFIXES)
        raise FileNotFoundError(f"no {kinds} file in {base} for trace dataset {spec.name!r}")
    named = [p for p in candidates if p.name in spec.local_names]
    if named:
        return named[:1]
    by_split = [p for p in candidates if p.name.startswith(split)]
    if by_split:
        return by_split
    if len(candidates) == 1:
        return candidates
    raise ValueError(
        f"several data files in {base} and none named after split {split!r} or {list(spec.local_names)}: "
        f"{[str(p.relative_to(base)) for p in candidates][:10]}; pass the file itself as data_dir"
    )


def _iter_file_rows(path: Path) -> Iterator[tuple[str, Any]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        i = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
            for row in batch.to_pylist():
                yield f"{path}[{i}]", row
                i += 1
        return
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if exc.msg != "Extra data":  # anything but a JSON-lines file saved as .json
                raise RecordError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        else:
            if not isinstance(data, list):
                raise RecordError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
            for i, row in enumerate(data):
                yield f"{path}[{i}]", row
            return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecordError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        yield f"{path}:{lineno}", row


def _iter_hub_rows(spec: TraceDatasetSpec, split: str, limit: Optional[int],
                   streaming: Optional[bool]) -> Iterator[tuple[str, Any]]:
    if spec.hub_id is None:
        raise ValueError(f"trace dataset {spec.name!r} is local only: "
                         "pass data_dir (a directory or the file)")
    from datasets import load_dataset

    stream = (limit is not None) if streaming is None else streaming
    ds = load_dataset(spec.hub_id, spec.hub_config, split=split, streaming=stream)
    label = spec.hub_id + (f" ({spec.hub_config})" if spec.hub_config else "") + f" [{split}]"
    for i, row in enumerate(ds):
        yield f"{label} row {i}", row


def iter_trace_entries(name: str, data_dir: Optional[PathLike] = None, limit: Optional[int] = None,
                       split: str = "train", streaming: Optional[bool] = None) -> Iterator[TraceEntry]:
    """Parse a trace dataset row by row into ``TraceEntry`` (problem + ungraded replies)."""
    spec = get_trace_spec(name)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit should be a non-negative integer or None, got {limit!r}")
    limit = limit or None
    if data_dir is not None and str(data_dir) != "":
        rows: Iterable[tuple[str, Any]] = (
            r for path in find_local_files(spec, data_dir, split) for r in _iter_file_rows(path)
        )
    else:
        rows = _iter_hub_rows(spec, split, limit, streaming)
    seen: dict[str, str] = {}
    for index, (where, row) in enumerate(islice(rows, limit)):
        if not isinstance(row, dict):
            raise RecordError(f"{where}: expected a JSON object, got {type(row).__name__}")
        entry = spec.convert(row, index, where)
        if entry.problem.id in seen:
            first = seen[entry.problem.id]
            raise RecordError(f"{where}: duplicate problem id {entry.problem.id!r} (first at {first})")
        seen[entry.problem.id] = where
        yield entry


def load_trace_entries(name: str, data_dir: Optional[PathLike] = None, limit: Optional[int] = None,
                       split: str = "train", streaming: Optional[bool] = None) -> list[TraceEntry]:
    return list(iter_trace_entries(name, data_dir, limit, split, streaming))


def grade_entry(entry: TraceEntry, teacher: str, problem: Optional[Problem] = None,
                n: Optional[int] = None) -> list[TeacherTrace]:
    """Grade an entry's replies (the first ``n``) against ``problem`` (default: the entry's own)."""
    problem = problem or entry.problem
    samples = entry.samples if n is None else entry.samples[:n]
    traces = []
    for s in samples:
        meta = dict(s.meta)
        if problem.id != entry.problem.id:
            meta["dataset_problem_id"] = entry.problem.id
        traces.append(make_trace(problem, s.thinking, s.solution, teacher=teacher,
                                 sample_index=s.sample_index, meta=meta))
    return traces


def load_trace_dataset(name: str, data_dir: Optional[PathLike] = None, limit: Optional[int] = None,
                       split: str = "train", streaming: Optional[bool] = None
                       ) -> tuple[list[Problem], list[TeacherTrace]]:
    """A trace dataset as (problems, graded teacher traces); see the module docstring for each schema.

    ``limit``: the first ``limit`` rows (problems). Every reply is graded with ``make_trace``
    (math-verify on the last ``\\boxed{}``): use a ``limit`` on the large sets, or
    ``DatasetTeacher``, which grades only the problems asked for.
    """
    spec = get_trace_spec(name)
    problems, traces = [], []
    for entry in iter_trace_entries(name, data_dir, limit, split, streaming):
        problems.append(entry.problem)
        traces.extend(grade_entry(entry, teacher=f"dataset:{spec.name}"))
    return problems, traces


# --------------------------------------------------------------------------- the teacher

class DatasetTeacher:
    """A ``Teacher`` that returns a published dataset's traces instead of sampling new ones.

    ``collect`` looks each problem up by id (ids as ``load_trace_dataset`` makes them), then by
    normalised question text; it grades the stored replies against the *asked* problem's gold
    answer. Problems without a trace are skipped with one ``MissingTraceWarning`` giving their
    number (their ids are in ``last_missing``). ``n`` > 1 returns up to ``n`` replies where the
    dataset has several (OpenR1: 2–4 generations), in the dataset's order, or verified-first with
    ``order="verified_first"`` (by the dataset's own verdicts: OpenR1's math-verify flags,
    s1K-1.1's ``deepseek_grade``).
    """

    def __init__(self, entries: Sequence[TraceEntry], name: str = "dataset", order: str = "dataset"):
        if order not in ("dataset", "verified_first"):
            raise ValueError(f"order must be 'dataset' or 'verified_first', got {order!r}")
        self.name = name
        self.order = order
        self._by_id: dict[str, TraceEntry] = {}
        self._by_question: dict[str, TraceEntry] = {}
        for entry in entries:
            self._by_id.setdefault(entry.problem.id, entry)
            self._by_question.setdefault(normalize_question(entry.problem.question), entry)
        self.last_missing: list[str] = []

    @classmethod
    def from_dataset(cls, name: str, data_dir: Optional[PathLike] = None, limit: Optional[int] = None,
                     split: str = "train", order: str = "dataset", streaming: Optional[bool] = None
                     ) -> "DatasetTeacher":
        spec = get_trace_spec(name)
        entries = load_trace_entries(spec.name, data_dir=data_dir, limit=limit, split=split,
                                     streaming=streaming)
        return cls(entries, name=f"dataset:{spec.name}", order=order)

    @classmethod
    def from_traces(cls, problems: Sequence[Problem], traces: Sequence[TeacherTrace], name: str = "dataset",
                    order: str = "dataset") -> "DatasetTeacher":
        """From records already loaded (e.g. ``load_trace_dataset``'s output or a saved JSONL)."""
        by_pid: dict[str, list[TraceSample]] = {}
        for t in traces:
            meta = dict(t.meta)
            meta.setdefault("dataset_correct", t.correct)
            sample = TraceSample(t.thinking, t.solution, t.sample_index, meta)
            by_pid.setdefault(t.problem_id, []).append(sample)
        entries = [TraceEntry(p, sorted(by_pid.get(p.id, []), key=lambda s: s.sample_index))
                   for p in problems]
        return cls(entries, name=name, order=order)

    def __len__(self) -> int:
        return len(self._by_id)

    def lookup(self, problem: Problem) -> Optional[TraceEntry]:
        entry = self._by_id.get(problem.id)
        if entry is None:
            entry = self._by_question.get(normalize_question(problem.question))
        if entry is None or not entry.samples:
            return None
        return entry

    def _ordered(self, entry: TraceEntry) -> TraceEntry:
        if self.order == "dataset":
            return entry

        def verified(s: TraceSample) -> bool:
            m = s.meta
            return bool(m.get("math_verify") or m.get("llama_judge") or m.get("dataset_correct")
                        or str(m.get("dataset_grade", "")).strip().lower() in ("yes", "true", "correct"))

        return TraceEntry(entry.problem, sorted(entry.samples, key=lambda s: not verified(s)))

    def collect(self, problems: Sequence[Problem], n: int = 1) -> list[TeacherTrace]:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n should be a positive integer, got {n!r}")
        traces: list[TeacherTrace] = []
        missing: list[str] = []
        for problem in map(as_problem, problems):
            entry = self.lookup(problem)
            if entry is None:
                missing.append(problem.id)
                continue
            traces.extend(grade_entry(self._ordered(entry), teacher=self.name, problem=problem, n=n))
        self.last_missing = missing
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            warnings.warn(
                f"{self.name}: no trace for {len(missing)} of {len(problems)} problems, skipped ({shown})",
                MissingTraceWarning, stacklevel=2,
            )
        return traces


__all__ = [
    "DatasetTeacher",
    "MissingTraceWarning",
    "TRACE_DATASETS",
    "TraceDatasetSpec",
    "TraceEntry",
    "TraceSample",
    "find_local_files",
    "get_trace_spec",
    "grade_entry",
    "iter_trace_entries",
    "last_boxed",
    "load_trace_dataset",
    "load_trace_entries",
    "normalize_question",
    "split_reasoning_solution",
]
