"""Benchmark loaders: the shared local copies, tiny fixtures, the hub path (faked) and bad rows."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from orion_utils.data import BENCHMARKS, format_number, load_benchmark
from orion_utils.jsonl import RecordError
from orion_utils.records import Problem

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BENCH_DIR = SHARED / "benchmarks"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "benchmarks"
needs_shared = pytest.mark.skipif(not BENCH_DIR.is_dir(), reason="shared benchmark copies not present")

EXPECTED_COUNTS = {"gsm_hard": 1319, "math500": 500, "aime24": 30, "amc23": 40, "gsm8k": 1319}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- shared local copies

@needs_shared
@pytest.mark.parametrize("name,count", sorted(EXPECTED_COUNTS.items()))
def test_shared_counts_ids_and_types(name, count):
    problems = load_benchmark(name, data_dir=BENCH_DIR)
    assert len(problems) == count
    assert len({p.id for p in problems}) == count
    for p in problems:
        assert isinstance(p, Problem)
        assert p.id.startswith(f"{name}/") and p.source == name
        assert isinstance(p.question, str) and p.question.strip()
        assert isinstance(p.answer, str) and p.answer.strip()


@needs_shared
def test_shared_limit():
    first3 = load_benchmark("gsm8k", data_dir=BENCH_DIR, limit=3)
    assert [p.id for p in first3] == ["gsm8k/0", "gsm8k/1", "gsm8k/2"]
    assert len(load_benchmark("aime24", data_dir=BENCH_DIR, limit=0)) == 30  # 0 → all


@needs_shared
def test_shared_math500_answer_is_last_boxed_of_solution():
    """≥ 99% of MATH500 answers verify against the last \\boxed{} of their solution."""
    from orion_utils.grading import grade

    problems = load_benchmark("math500", data_dir=BENCH_DIR)
    failures = []
    for p in problems:
        assert {"subject", "level", "unique_id", "solution"} <= set(p.meta)
        assert isinstance(p.meta["level"], int)
        result = grade(p.meta["solution"], p.answer)
        if not result.correct:
            failures.append((p.id, p.answer, result.predicted, result.reason))
    for failure in failures:  # shown with -s or on failure
        print("MATH500 exception:", failure)
    assert len(failures) <= len(problems) // 100, failures


@needs_shared
def test_shared_gsm_hard_float_targets():
    problems = load_benchmark("gsm_hard", data_dir=BENCH_DIR)
    for p in problems:
        assert p.meta["answer_is_float"] is True
        target = p.meta["target"]
        assert float(p.answer) == target  # the string round-trips exactly
        if float(target).is_integer():
            assert p.meta["answer_is_integer"] and "." not in p.answer and "e" not in p.answer
    assert problems[0].answer == "-9867630"
    assert sum(not p.meta["answer_is_integer"] for p in problems) > 100  # genuinely non-integer targets


@needs_shared
def test_shared_gsm8k_amc_aime_answers():
    gsm8k = load_benchmark("gsm8k", data_dir=BENCH_DIR)
    assert all(p.answer.lstrip("-").isdigit() for p in gsm8k)
    with_commas = [p for p in gsm8k if "," in p.meta["answer_raw"]]
    assert with_commas and all("," not in p.answer for p in with_commas)
    assert gsm8k[0].answer == "18" and gsm8k[0].meta["solution"].endswith("market.")

    amc = load_benchmark("amc23", data_dir=BENCH_DIR)
    assert amc[0].answer == "27" and amc[0].meta["answer_raw"] == 27.0 and amc[0].meta["answer_is_float"]
    assert all(float(p.answer) == p.meta["answer_raw"] for p in amc)

    aime = load_benchmark("aime24", data_dir=BENCH_DIR)
    by_raw = {p.meta.get("answer_raw"): p.answer for p in aime}
    assert by_raw["025"] == "25"  # leading zeros dropped, the raw answer kept
    assert all(p.answer.isdigit() and 0 <= int(p.answer) <= 999 for p in aime)


# --------------------------------------------------------------------------- tiny fixtures

def test_fixtures_every_benchmark():
    got = {name: load_benchmark(name, data_dir=FIXTURES) for name in BENCHMARKS}
    assert [(p.id, p.answer) for p in got["gsm_hard"]] == [
        ("gsm_hard/0", "1234570"), ("gsm_hard/1", "3.5"), ("gsm_hard/2", "-4999996")]
    assert got["gsm_hard"][1].meta["target"] == 3.5 and not got["gsm_hard"][1].meta["answer_is_integer"]
    assert [(p.id, p.answer) for p in got["math500"]] == [
        ("math500/test/prealgebra/1.json", "5"), ("math500/test/prealgebra/2.json", "\\frac{3}{4}")]
    assert got["math500"][0].meta["subject"] == "Prealgebra" and got["math500"][0].meta["level"] == 1
    assert [(p.id, p.answer) for p in got["aime24"]] == [("aime24/60", "25"), ("aime24/61", "21")]
    assert [(p.id, p.answer) for p in got["amc23"]] == [("amc23/0", "27"), ("amc23/1", "-1")]
    assert [(p.id, p.answer) for p in got["gsm8k"]] == [("gsm8k/0", "7"), ("gsm8k/1", "4000")]


def test_data_dir_may_be_the_file_and_names_are_forgiving():
    problems = load_benchmark("GSM-Hard", data_dir=FIXTURES / "gsm_hard.jsonl", limit=2)
    assert [p.id for p in problems] == ["gsm_hard/0", "gsm_hard/1"]
    assert load_benchmark("math-500", data_dir=FIXTURES)[0].source == "math500"


def test_format_number():
    assert format_number(23.0) == "23"
    assert format_number(-1.0) == "-1"
    assert format_number(3.5) == "3.5"
    assert format_number(7) == "7"
    assert format_number(1e20) == "100000000000000000000"
    with pytest.raises(ValueError):
        format_number(math.nan)


# --------------------------------------------------------------------------- the hub path, faked

HUB_ROWS = {
    # field names as on the hub (dataset cards / loaders checked with the search tool)
    "gsm_hard": [{"input": "Q1 with 1000001 apples?", "code": "def solution():\n    return 2.5\n",
                  "target": 2.5},
                 {"input": "Q2?", "code": "def solution():\n    return 4\n", "target": 4.0}],
    "math500": [{"problem": "What is $1+1$?", "solution": "$\\boxed{2}$", "answer": "2", "subject": "Algebra",
                 "level": 1, "unique_id": "test/algebra/1.json"}],
    "aime24": [{"id": 60, "problem": "Find $x$.", "solution": "$\\boxed{204}$", "answer": "204",
                "url": "https://example.org/1", "year": "2024"}],
    "amc23": [{"id": 0, "question": "How far?", "answer": 27.0, "url": "https://example.org/2"}],
    "gsm8k": [{"question": "How many?", "answer": "2 + 2 = <<2+2=4>>4\n#### 4"},
              {"question": "How much?", "answer": "So 1,000 + 250 = 1,250\n#### 1,250"}],
}


@pytest.fixture
def fake_hub(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        bench = next(spec.name for spec in BENCHMARKS.values() if spec.hub_id == path)
        return datasets.Dataset.from_list(HUB_ROWS[bench])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


def test_hub_path_uses_registry_ids_and_maps_hub_fields(fake_hub):
    got = {name: load_benchmark(name) for name in BENCHMARKS}
    assert fake_hub == [
        ("reasoning-machines/gsm-hard", None, "train"),
        ("HuggingFaceH4/MATH-500", None, "test"),
        ("HuggingFaceH4/aime_2024", None, "train"),
        ("math-ai/amc23", None, "test"),
        ("openai/gsm8k", "main", "test"),
    ]
    assert [(p.id, p.answer) for p in got["gsm_hard"]] == [("gsm_hard/0", "2.5"), ("gsm_hard/1", "4")]
    assert got["gsm_hard"][0].question == "Q1 with 1000001 apples?"
    assert got["math500"][0].id == "math500/test/algebra/1.json" and got["math500"][0].meta["level"] == 1
    assert got["aime24"][0].id == "aime24/60" and got["aime24"][0].meta["year"] == "2024"
    assert (got["amc23"][0].question, got["amc23"][0].answer) == ("How far?", "27")
    assert [(p.id, p.answer) for p in got["gsm8k"]] == [("gsm8k/0", "4"), ("gsm8k/1", "1250")]


def test_hub_limit(fake_hub):
    assert [p.id for p in load_benchmark("gsm8k", limit=1)] == ["gsm8k/0"]


# --------------------------------------------------------------------------- errors

def test_unknown_benchmark_lists_known_ones():
    with pytest.raises(ValueError) as err:
        load_benchmark("svamp", data_dir=FIXTURES)
    for name in EXPECTED_COUNTS:
        assert name in str(err.value)


def test_missing_local_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_benchmark("math500", data_dir=tmp_path)
    assert str(tmp_path / "math500.jsonl") in str(err.value)


def test_bad_limit():
    with pytest.raises(ValueError):
        load_benchmark("gsm8k", data_dir=FIXTURES, limit=-1)


GOOD_GSM_HARD = json.dumps({"input": "Q?", "code": "", "target": 1.0, "idx": 0})


@pytest.mark.parametrize("bad_line,needle", [
    ('{"input": "Q?", "code": "", "target": 2.0, ', "not valid JSON"),
    (json.dumps({"code": "", "target": 2.0, "idx": 1}), "'input'"),
    (json.dumps({"input": "Q?", "code": "", "idx": 1}), "'target'"),
    (json.dumps({"input": "Q?", "code": "", "target": "many", "idx": 1}), "'target'"),
    (json.dumps({"input": "Q?", "code": "", "target": None, "idx": 1}), "'target'"),
    (json.dumps({"input": 42, "code": "", "target": 2.0, "idx": 1}), "'input'"),
    (json.dumps({"input": "Q?", "code": 3, "target": 2.0, "idx": 1}), "'code'"),
    (json.dumps({"input": "Q?", "code": "", "target": 2.0, "idx": 0}), "duplicate id"),
    (json.dumps(["not", "an", "object"]), "JSON object"),
])
def test_malformed_row_names_file_row_and_field(tmp_path, bad_line, needle):
    path = write_lines(tmp_path / "gsm_hard.jsonl", [GOOD_GSM_HARD, "", bad_line])
    with pytest.raises(RecordError) as err:
        load_benchmark("gsm_hard", data_dir=tmp_path)
    message = str(err.value)
    assert f"{path}:3" in message  # file and line (the blank line 2 is skipped but counted)
    assert needle in message


@pytest.mark.parametrize("name,row,needle", [
    ("gsm8k", {"question": "Q?", "answer": "no final marker here", "idx": 0}, "'####'"),
    ("gsm8k", {"question": "Q?", "answer": "text\n#### seven", "idx": 0}, "not a number"),
    ("math500", {"problem": "Q?", "solution": "s", "answer": "1", "subject": "A", "level": "5",
                 "unique_id": "u"}, "'level'"),
    ("math500", {"problem": "Q?", "solution": "s", "answer": 1, "subject": "A", "level": 5,
                 "unique_id": "u"}, "'answer'"),
    ("amc23", {"id": 0, "problem": "Q?", "question": "Q?", "answer": [27.0], "url": "u"}, "'answer'"),
    ("aime24", {"id": 1.5, "problem": "Q?", "answer": "1"}, "'id'"),
])
def test_malformed_rows_other_benchmarks(tmp_path, name, row, needle):
    path = write_lines(tmp_path / BENCHMARKS[name].local_file, [json.dumps(row)])
    with pytest.raises(RecordError) as err:
        load_benchmark(name, data_dir=tmp_path)
    assert f"{path}:1" in str(err.value) and needle in str(err.value)
