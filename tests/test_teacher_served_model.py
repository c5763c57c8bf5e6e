"""The model the API server says served each reply: recorded in the cache, checked against the configured one
in stage 01 (a warning in its line and in the report). Against the local fake OpenAI-compatible server (a test
double: a paid API cannot run here), which can name another model in its replies (``served_model``)."""
from __future__ import annotations

import json
import sqlite3

from helpers import FakeOpenAIServer, arithmetic_problems

from orion_utils.collection import run_collection
from orion_utils.config import TeacherConfig
from orion_utils.jsonl import write_json, write_jsonl
from orion_utils.report import teacher_check_lines
from orion_utils.rundir import RunDir
from orion_utils.teachers.api import APITeacher
from orion_utils.teachers.api.replies import served_model_check
from orion_utils.teachers.cache import CACHE_FILENAME, TeacherCache

ASKED, SERVED = "deepseek-ai/DeepSeek-R1", "deepseek-ai/DeepSeek-V3.1"


def _teacher(server, cache_dir) -> APITeacher:
    return APITeacher(server.base_url, ASKED, api_key_env=None, concurrency=4, cache_dir=cache_dir,
                      timeout_s=5.0, max_retries=2, progress=False)


def test_every_cached_reply_records_the_model_that_served_it(tmp_path):
    problems = arithmetic_problems(3)
    with FakeOpenAIServer(served_model=SERVED) as server:
        teacher = _teacher(server, tmp_path / "cache")
        traces = teacher.collect(problems, n=2)
        teacher.close()
        assert server.request_count == 6 and {e["model"] for e in server.log} == {ASKED}  # asked for R1
    assert [t.meta["served_model"] for t in traces] == [SERVED] * 6
    with sqlite3.connect(tmp_path / "cache" / CACHE_FILENAME) as db:
        rows = db.execute("SELECT model, served_model FROM responses").fetchall()
    assert rows == [(ASKED, SERVED)] * 6  # the model asked for and the one that answered, per reply
    with FakeOpenAIServer() as server:  # a re-run is served from the cache, the served model with it
        again = _teacher(server, tmp_path / "cache").collect(problems, n=2)
        assert server.request_count == 0
    assert [t.meta["served_model"] for t in again] == [SERVED] * 6


def test_a_cache_written_before_the_served_model_was_recorded_gets_the_column(tmp_path):
    path = tmp_path / CACHE_FILENAME
    with sqlite3.connect(path) as db:  # the responses table as it was before the column
        db.execute("CREATE TABLE responses (key TEXT PRIMARY KEY, model TEXT NOT NULL, kind TEXT NOT NULL DEFAULT '', "
                   "problem_id TEXT NOT NULL DEFAULT '', sample_index INTEGER NOT NULL DEFAULT 0, request TEXT NOT NULL, "
                   "thinking TEXT NOT NULL, solution TEXT NOT NULL, usage TEXT NOT NULL, finish_reason TEXT, "
                   "meta TEXT NOT NULL DEFAULT '{}', attempts INTEGER NOT NULL DEFAULT 1, latency_s REAL, "
                   "created_at REAL NOT NULL)")
        db.execute("INSERT INTO responses (key, model, request, thinking, solution, usage, meta, created_at) VALUES "
                   "('k0', 'm', '{}', 't', 's', '{}', ?, 0)", (json.dumps({"response_model": SERVED}),))
    cache = TeacherCache(path)
    assert cache.get("k0")["served_model"] == ""  # not recorded then (the teacher falls back on the meta)
    cache.put_success("k1", model=ASKED, request={}, thinking="t", solution="s", usage={}, finish_reason="stop",
                      served_model=ASKED)
    assert cache.get("k1")["served_model"] == ASKED
    cache.close()


def test_served_model_check():
    assert served_model_check(ASKED, [{"served_model": ASKED}, {}, None]) == ({ASKED: 1}, "")
    served, warning = served_model_check(ASKED, [{"served_model": ASKED}, {"served_model": SERVED},
                                                 {"served_model": SERVED}])
    assert served == {ASKED: 1, SERVED: 2}
    assert warning.startswith("WARNING: 2 of 3 teacher replies") and repr(SERVED) in warning and repr(ASKED) in warning


def _stage_01(tmp_path, served_model, capsys):
    run = RunDir(tmp_path / served_model.replace("/", "_"))
    write_jsonl(run.train_problems, arithmetic_problems(4))
    write_json(run.config_file, {"teacher": {"kind": "api", "model": ASKED, "price_input_per_m": 3.0,
                                             "price_output_per_m": 7.0, "price_date": "2026-12-07"}})
    with FakeOpenAIServer(served_model=served_model) as server:
        cfg = TeacherConfig(kind="api", base_url=server.base_url, model=ASKED, api_key_env="", concurrency=4,
                            timeout_s=5.0, max_retries=2)
        entry = run_collection(run, cfg)
    return run, entry, capsys.readouterr().out


def test_stage_01_warns_in_its_line_and_the_report_when_another_model_served(tmp_path, capsys):
    run, entry, out = _stage_01(tmp_path, SERVED, capsys)
    assert entry["served_models"] == {SERVED: 4} and entry["configured_model"] == ASKED
    assert f"[teacher] WARNING: 4 of 4 teacher replies were served by another model than the configured {ASKED!r}: {SERVED!r} (4)" in out
    assert run.stage_info("teacher_cots")["served_model_warning"] == entry["served_model_warning"]
    lines = "\n".join(teacher_check_lines(run))
    assert entry["served_model_warning"] in lines and "read on 2026-12-07" in lines

    run, entry, out = _stage_01(tmp_path, ASKED, capsys)  # the model asked for: no warning
    assert entry["served_model_warning"] == "" and "WARNING" not in out
    lines = "\n".join(teacher_check_lines(run))
    assert "WARNING" not in lines and f"`{ASKED}` (4)" in lines
