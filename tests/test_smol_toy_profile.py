"""The smol_toy profiles: SmolLM2-135M-Instruct (the packaged student) on the toy domain, with the toy
teacher's CoTs, the toy benchmarks and the `student` reflector; they load and validate (no model needed)."""
from orion_utils.config import load_profile
from orion_utils.prepare import TOY_BENCHMARKS
from orion_utils.reflection import resolve_reflector_kind
from orion_utils.students import PACKAGED_STUDENTS, needs_conversion


def test_smol_toy_names_the_real_student_and_the_toy_benchmarks():
    for name, seeds in (("smol_toy", [0]), ("smol_toy3", [0, 1, 2])):
        cfg = load_profile(name)
        assert cfg.seeds == seeds
        assert cfg.student.model in PACKAGED_STUDENTS and needs_conversion(cfg.student.model)
        assert cfg.data.train_source == "toy" and cfg.teacher.kind == "toy"
        assert cfg.data.benchmarks == ["toy_test", "toy_hard"] and set(cfg.data.benchmarks) <= set(TOY_BENCHMARKS)
        assert resolve_reflector_kind(cfg.reflection, cfg.student) == "student"
        # the toy teacher's CoTs are at most 252 SmolLM2 tokens: the student has room to write one
        assert min(cfg.exposure.max_new_tokens, cfg.reflection.max_new_tokens, cfg.evaluation.max_new_tokens) >= 256
        assert cfg.evaluation.methods == ["base", "sft", "orion"]
    assert load_profile("smol_toy3").evaluation.workers == 1  # two seeds at once, a core each
