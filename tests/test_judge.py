"""The step-consistency judge for real runs: the teacher checks CoTs through the same request path."""
import pytest
from helpers import FakeOpenAIServer

from orion_utils.analysis import judge_consistency
from orion_utils.teachers.api import APITeacher
from orion_utils.teachers.prompts import judge_messages, parse_judge_score


@pytest.mark.parametrize("text, score", [
    ("Step 1 fine.\nConsistent steps: 3 of 4", 0.75),
    ("consistent steps: 2/2", 1.0),
    ("Consistent steps: 1 of 3\n...\nConsistent steps: 0 of 3", 0.0),  # the last line counts
    ("Consistent steps: 5 of 4", 1.0),
    ("Consistent steps: 0 of 0", None),
    ("looks fine to me", None),
])
def test_parse_judge_score(text, score):
    assert parse_judge_score(text) == score


def test_judge_through_the_api_teacher_is_cached(tmp_path):
    def judge(messages):
        cot = messages[-1]["content"]
        return "checked each step", "Consistent steps: 1 of 2" if "5 - 1 = 2" in cot else "Consistent steps: 2 of 2"

    cots = [("Mia has 5. She gives 1 away.", "5 - 1 = 4. \\boxed{4}"),
            ("Mia has 5. She gives 1 away.", "5 - 1 = 2. \\boxed{2}")]
    with FakeOpenAIServer(answer_fn=judge) as server:
        teacher = APITeacher(server.base_url, "fake-judge", api_key_env=None, concurrency=4,
                             cache_dir=str(tmp_path / "cache"), timeout_s=5.0, max_retries=2, progress=False)
        assert teacher.judge_many(cots) == [1.0, 0.5]
        summary = judge_consistency(teacher, cots)
        budget = summary.pop("prompt_budget")["judge"]  # both prompts fit the API context as built
        assert summary == {"score": 0.75, "n": 2, "failed": 0}
        assert (budget["fit"], budget["cut"], budget["left_out"], budget["context"]) == (2, 0, 0, 131072)
        assert server.request_count == 2  # the second judging came from the cache
    assert "5 - 1 = 2" in judge_messages(*cots[1])[-1]["content"]
