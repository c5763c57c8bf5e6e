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


def test_the_demo_is_smol_toy_cut_to_size_and_smol_full_adds_the_baselines():
    """smol_demo changes only sizes from smol_toy (configs/smol_demo.yaml says how they were fixed): fewer
    questions, a batch of 2 for at least smol_toy's 18 optimizer steps, no LLM reflector comparison."""
    toy, demo, full = load_profile("smol_toy"), load_profile("smol_demo"), load_profile("smol_full")
    assert (demo.data.n_train, demo.data.toy_test_size, demo.data.toy_hard_size) == (16, 32, 32)
    assert demo.training.batch_size == 2 and demo.reflection.compare == "" and demo.analysis.max_cots == 8
    changed = {(name, k) for name in ("student", "teacher", "exposure", "reflection", "training", "evaluation",
                                      "generation", "toy_domain")
               for k, v in demo.section_dict(name).items() if toy.section_dict(name)[k] != v}
    assert changed == {("reflection", "compare"), ("training", "batch_size")}
    assert full.evaluation.methods == ["base", "sft", "orion", "edit", "tailored"]
    assert full.student == toy.student and full.data == toy.data
