"""The teacher-CoT stage with an API teacher: cached, accounted in the manifest, and the key leaks nowhere."""
from helpers import FakeOpenAIServer

from orion_utils.collection import run_collection
from orion_utils.config import TeacherConfig
from orion_utils.jsonl import read_jsonl, write_jsonl
from orion_utils.records import Problem, SFTExample
from orion_utils.rundir import RunDir

SECRET = "sk-test-SECRET-7f3a9"


def test_api_teacher_stage_end_to_end(tmp_path, monkeypatch):
    problems = [Problem(f"q{i}", f"Tom has {i} apples and buys 2 more. How many?", str(i + 2)) for i in range(6)]
    gold = {p.question: p.answer for p in problems}

    def solve(messages):
        question = next(q for q in gold if q in messages[-1]["content"])
        answer = gold[question] if question != problems[0].question else "999"  # one wrong teacher answer
        return f"{question} adds 2.", f"The answer is \\boxed{{{answer}}}."

    monkeypatch.setenv("ORION_TEST_KEY", SECRET)
    run = RunDir(tmp_path / "run")
    write_jsonl(run.data("train_problems.jsonl"), problems)
    with FakeOpenAIServer(answer_fn=solve, api_key=SECRET) as server:
        cfg = TeacherConfig(kind="api", base_url=server.base_url, model="fake-reasoner", api_key_env="ORION_TEST_KEY",
                            concurrency=4, timeout_s=5.0, max_retries=2, price_output_per_m=2.0)
        entry = run_collection(run, cfg)
        assert server.request_count == 6
        run_collection(run, cfg, force=True)  # a forced re-run is served from the cache
        assert server.request_count == 6
    kept = read_jsonl(run.training_set("sft"), SFTExample)
    assert [e.problem_id for e in kept] == ["q1", "q2", "q3", "q4", "q5"]  # the wrong one is filtered out
    assert entry["filter"]["correct_traces"] == 5 and entry["teacher_usage"]["requests_sent"] == 6
    for path in run.root.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), f"the key leaked into {path}"
