"""Stage 03's optional judge (``reflection.judge``, ``orion_utils.rewrite_judge``): the teacher is asked about each
candidate rewrite that passed every rule, a verdict other than yes rejects it under "judge", the verdicts are saved
with their chunk, the judge's requests are counted in the stage's manifest entry, and with the judge off no request
is sent.

The teacher is the offline OpenAI-compatible test server (``helpers.FakeOpenAIServer``), standing in for a paid
API; the refinement, the acceptance checks, the API teacher, its cache and the stage are the real ones.
"""
from __future__ import annotations

import pytest
from helpers import FakeOpenAIServer
from test_acceptance import QUESTION, REFLECTS, TEACHER, WRONG, Fixed, _stage_03_inputs  # the same short case
from test_fingerprints import _small_run

from orion_utils import stages
from orion_utils.acceptance import REASONS
from orion_utils.config import StudentConfig, TeacherConfig, load_profile
from orion_utils.knobs import ConfigError
from orion_utils.records import Problem, StudentAttempt
from orion_utils.reflection import ReflectionConfig, refine, run_reflection
from orion_utils.rundir import RunDir
from orion_utils.teachers.api import APITeacher
from orion_utils.teachers.prompts import parse_verdict, rewrite_judge_messages

# passes every rule too, but the judge is told to say no to it
DOUBTFUL = REFLECTS.replace("Wait, that is wrong: half as many means dividing",
                            "Wait, that is wrong: I simply feel it should be smaller")
SILENT = REFLECTS.replace("Wait, that is wrong", "Hmm, let me check, that is wrong")  # the judge answers untagged


def _judge_reply(messages):
    """The fake judge: no for DOUBTFUL's reflection, an untagged reply for SILENT's, yes otherwise."""
    text = messages[-1]["content"]
    if "I simply feel" in text:
        return "read it", "<verdict>no</verdict> <reason>It gives no reason why the step is wrong.</reason>"
    if "Hmm, let me check" in text:
        return "read it", "Looks fine to me."
    return "read it", "<verdict>yes</verdict><reason>It quotes 48 * 2 and corrects it to 48 / 2.</reason>"


def _teacher(server, tmp_path) -> APITeacher:
    return APITeacher(server.base_url, "fake-judge", api_key_env=None, concurrency=4,
                      cache_dir=str(tmp_path / "cache"), timeout_s=5.0, max_retries=1, progress=False)


@pytest.mark.parametrize("text, parsed", [
    ("<verdict>yes</verdict><reason>Fine.</reason>", ("yes", "Fine.")),
    ("<verdict> NO </verdict>", ("no", "")),
    ("<verdict>yes</verdict> then <verdict>no</verdict><reason>a</reason><reason> b </reason>", ("no", "b")),
    ("verdict: yes", (None, "")),
    ("", (None, "")),
])
def test_parse_verdict(text, parsed):
    assert parse_verdict(text) == parsed


def test_the_prompt_shows_the_question_the_wrong_attempt_and_the_rewrite():
    content = rewrite_judge_messages(QUESTION, WRONG, REFLECTS, system="Be strict.")
    assert content[0] == {"role": "system", "content": "Be strict."}
    assert all(t in content[-1]["content"] for t in (QUESTION, WRONG, REFLECTS, "<verdict>yes</verdict>"))


def test_only_candidates_that_pass_every_rule_are_judged_and_a_no_rejects(tmp_path):
    p = Problem("q", QUESTION, "72")
    errors = {"q": [StudentAttempt("q", 0, WRONG, "144", False, "s")]}
    texts = [TEACHER, REFLECTS, DOUBTFUL, SILENT, REFLECTS.replace("72", "70")]  # a copy and a wrong answer
    cfg = ReflectionConfig(m=len(texts), selection="first")
    with FakeOpenAIServer(answer_fn=_judge_reply) as server:
        judged = refine([p], {"q": TEACHER}, errors, Fixed(texts), cfg, judge=_teacher(server, tmp_path))[0]
        assert server.request_count == 3  # REFLECTS, DOUBTFUL, SILENT: the copy and the wrong answer cost nothing
        plain = refine([p], {"q": TEACHER}, errors, Fixed(texts), cfg)[0]
        assert server.request_count == 3  # no judge, no request
    verdicts = judged.meta["candidates"]
    assert [v["rejected"] for v in verdicts] == ["copy", None, "judge", "judge", "unverified"]
    assert verdicts[1]["judge"] == {"verdict": "yes", "reason": "It quotes 48 * 2 and corrects it to 48 / 2."}
    assert verdicts[2]["judge"] == {"verdict": "no", "reason": "It gives no reason why the step is wrong."}
    assert verdicts[3]["judge"] == {"verdict": "unparseable", "reason": ""}
    assert "judge" not in verdicts[0] and "judge" not in verdicts[4]
    assert judged.accepted and judged.refined_cot == REFLECTS and judged.n_accepted == 1
    assert [v["rejected"] for v in plain.meta["candidates"]] == ["copy", None, None, None, "unverified"]
    assert REASONS[-1] == "judge"


def test_a_failed_request_rejects_and_is_counted_apart(tmp_path):
    p = Problem("q", QUESTION, "72")
    errors = {"q": [StudentAttempt("q", 0, WRONG, "144", False, "s")]}
    with FakeOpenAIServer(answer_fn=_judge_reply, fault_fn=lambda body, attempt: "500") as server:
        r = refine([p], {"q": TEACHER}, errors, Fixed([REFLECTS]), ReflectionConfig(m=1, selection="first"),
                   judge=_teacher(server, tmp_path))[0]
    assert r.meta["candidates"][0]["judge"]["verdict"] == "failed" and r.meta["candidates"][0]["rejected"] == "judge"
    assert not r.accepted and r.refined_cot == TEACHER


def test_the_verdicts_are_saved_with_their_chunk_and_a_resumed_stage_asks_nothing_twice(tmp_path):
    problems = [Problem(f"q{i}", f"{QUESTION} (shop {i})", "72") for i in range(3)]  # three distinct requests
    errors = {p.id: [StudentAttempt(p.id, 0, WRONG, "144", False, "s")] for p in problems}
    teacher_cots = {p.id: TEACHER for p in problems}
    partials = {"candidates": tmp_path / "cands.partial.jsonl", "selected": tmp_path / "sel.partial.jsonl"}
    cfg = ReflectionConfig(m=2, selection="first", chunk_questions=1)

    class Crashing(Fixed):
        calls = 0

        def propose(self, items, m, seed=None):
            Crashing.calls += 1
            if Crashing.calls == 2:
                raise KeyboardInterrupt("disconnected")
            return super().propose(items, m, seed)

    with FakeOpenAIServer(answer_fn=_judge_reply) as server:
        with pytest.raises(KeyboardInterrupt):
            refine(problems, teacher_cots, errors, Crashing([REFLECTS, DOUBTFUL]), cfg, partials=partials,
                   judge=_teacher(server, tmp_path / "a"))
        assert server.request_count == 2  # the first chunk's two candidates, saved with it
        # a fresh cache: only the server's count says which requests the resumed run sends
        resumed = refine(problems, teacher_cots, errors, Fixed([REFLECTS, DOUBTFUL]), cfg, partials=partials,
                         judge=_teacher(server, tmp_path / "b"))
        assert server.request_count == 2 + 4
    assert all([v["rejected"] for v in r.meta["candidates"]] == [None, "judge"] for r in resumed)


def test_stage_03_counts_the_judge_and_records_its_usage(tiny_model_dir, tmp_path, capsys):
    """run_reflection with the toy ``rule`` reflector and the fake server as the profile's api teacher: a request
    per candidate that passed every rule, the first question's rejected, the usage in the manifest entry."""
    run, problems = _stage_03_inputs(tmp_path, tiny_model_dir, 3)

    def reply(messages):
        no = problems[0].question in messages[-1]["content"]
        return "", f"<verdict>{'no' if no else 'yes'}</verdict><reason>one sentence</reason>"

    with FakeOpenAIServer(answer_fn=reply) as server:
        teacher_cfg = TeacherConfig(kind="api", base_url=server.base_url, model="fake-judge", api_key_env="",
                                    timeout_s=5.0, max_retries=1)
        cfg = dict(reflector="rule", m=2, selection="first")
        off = run_reflection(run, ReflectionConfig(**cfg), StudentConfig(model="toy"), None, teacher_cfg)
        assert server.request_count == 0 and "teacher_usage" not in off and "judge" not in off
        assert "judge off (reflection.judge): no teacher request" in capsys.readouterr().out
        on = run_reflection(run, ReflectionConfig(**cfg, judge=True), StudentConfig(model="toy"), None, teacher_cfg)
        assert server.request_count == 6  # 3 questions x 2 candidates, all past the rules
        out = capsys.readouterr().out
    assert on["judge"] == {"judged": 6, "rejected": 2,
                           "verdicts": {"yes": 4, "no": 2, "unparseable": 0, "failed": 0, "left out": 0}}
    assert on["acceptance"]["rejected"]["judge"] == 2 and on["acceptance_rate"] == pytest.approx(2 / 3)
    assert "judge: 6 candidates that passed every rule judged, 2 rejected (no 2;" in out
    entry = RunDir(run.root).stage_info("reflection")
    assert entry["teacher_usage"]["requests_succeeded"] == 6 and entry["prompt_budget"]["judge_rewrite"]["fit"] == 6


def test_the_judge_and_its_teacher_are_in_the_fingerprint_only_when_on(tmp_path, monkeypatch):
    from orion_utils.rundir import stable_hash
    from orion_utils.teachers import prompts

    seen = []

    def run_stage(self, name, params, inputs, outputs, work, **kw):
        seen.append(stable_hash(params))
        return {}

    monkeypatch.setattr(RunDir, "run_stage", run_stage)
    run = _small_run(tmp_path / "run")
    api = {"kind": "api", "base_url": "http://127.0.0.1:9/v1", "model": "m"}

    def fingerprint(judge: bool, temperature: float = 0.6, prompt: str = "") -> str:
        monkeypatch.setitem(prompts.PROMPTS, "rewrite_judge", prompts.REWRITE_JUDGE_TEMPLATE + prompt)
        stages.reflection(run, load_profile("smoke", {"teacher": {**api, "temperature": temperature},
                                                      "reflection": {"judge": judge}}))
        return seen[-1]

    assert fingerprint(False) == fingerprint(False, 0.9) == fingerprint(False, prompt="edited")
    assert len({fingerprint(False), fingerprint(True), fingerprint(True, 0.9), fingerprint(True, prompt="edited")}) == 4


def test_a_toy_teacher_cannot_judge():
    with pytest.raises(ConfigError, match="reflection.judge: the judge of the rewrites needs a prompted teacher"):
        load_profile("toy", {"reflection": {"judge": True}})
