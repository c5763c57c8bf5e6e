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


def test_vllm_settings_reach_the_backend_and_are_named_when_it_ignores_them(tiny_model_dir, capsys):
    from orion_utils.collection import make_teacher
    from orion_utils.config import TeacherConfig

    teacher = make_teacher(TeacherConfig(kind="local", model=str(tiny_model_dir), max_tokens=4, max_model_len=2048,
                                         gpu_memory_utilization=0.5))
    assert teacher.backend_kwargs == {"gpu_memory_utilization": 0.5, "max_model_len": 2048}
    teacher.collect([Problem("a", "What is 2 + 3?", "5")])
    teacher.close()
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[generation]")][0]
    assert "backend=transformers" in line and "[ignored by transformers: gpu_memory_utilization, max_model_len]" in line
