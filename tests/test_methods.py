"""The method registry (orion_utils.methods) is the one list the stages, the runner and the plots read."""
from orion_utils.methods import METHODS, cot_methods, notebooks_run_when_evaluated


def test_every_module_reads_its_method_list_from_the_registry():
    from orion_utils import evaluation, plots, runner, sft

    assert evaluation.METHODS == tuple(METHODS) == ("base", "sft", "orion", "edit", "tailored")
    assert sft.STAGE_OF_SET == cot_methods("04_sft") == {"sft": "01_teacher_cots", "orion": "03_error_aware_reflection"}
    assert runner.BASELINE_NOTEBOOKS == notebooks_run_when_evaluated() == {"05_edit": "edit",
                                                                          "06_tailored_learning": "tailored"}
    assert {m: plots._colour(m) for m in METHODS} == {m.name: m.colour for m in METHODS.values()}


def test_a_method_is_trained_after_the_notebook_that_writes_its_data():
    from orion_utils.runner import NOTEBOOKS, _upstream

    assert len({m.colour for m in METHODS.values()}) == len(METHODS)
    for m in METHODS.values():
        if m.name == "base":
            assert not m.trained_in and not m.cots_from
            continue
        assert m.trained_in in NOTEBOOKS, m
        if m.cots_from:
            assert m.cots_from in _upstream(m.trained_in), m
        assert m.trained_in in _upstream("07_evaluation")
