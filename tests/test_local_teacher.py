"""The local-model teacher runs the real generation backend on a tiny random model."""
from orion_utils.records import Problem
from orion_utils.teachers.base import FeedbackTeacher, Teacher
from orion_utils.teachers.local import LocalTeacher


def test_local_teacher_collects_graded_traces(tiny_model_dir):
    teacher = LocalTeacher(str(tiny_model_dir), temperature=0.8, max_tokens=12, seed=0)
    assert isinstance(teacher, Teacher) and isinstance(teacher, FeedbackTeacher)
    problems = [Problem("a", "What is 2 + 3?", "5"), Problem("b", "What is 7 - 4?", "3")]
    traces = teacher.collect(problems, n=2)
    teacher.close()
    assert [(t.problem_id, t.sample_index) for t in traces] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    for t in traces:
        assert t.teacher.startswith("local:") and t.correct is False  # a random model does not box 5
        assert t.meta["finish_reason"] in ("stop", "length") and t.usage["completion_tokens"] <= 12
