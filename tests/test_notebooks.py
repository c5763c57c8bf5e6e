"""Notebooks are committed clean, take only the profile (and overrides) as parameters, show every knob
they use, and keep logic in the package."""
import ast
import re
from pathlib import Path

import nbformat
import pytest

from orion_utils.config import SECTIONS, load_profile
from orion_utils.runner import DEFAULT_PROFILE, NOTEBOOK_DIR, NOTEBOOKS, notebook_parameters, parameters_cell
from orion_utils.stages import READS


def _code(name):
    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    return nb, [c for c in nb.cells if c.cell_type == "code"]


def _shown_sections(source: str) -> list:
    """The section list of the notebook's ``profile_table(cfg, ...)`` call (a list, or ``reads(...)``
    of the stages it runs, plus a list)."""
    from orion_utils.stages import reads

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "profile_table":
            return eval(compile(ast.Expression(node.args[1]), "<cell>", "eval"), {"reads": reads})
    raise AssertionError("no profile_table(cfg, ...) call")


@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_notebook_is_clean_and_parameterised(name):
    nb, code = _code(name)
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell must be tagged 'parameters'"
    assert all(not c.outputs and c.execution_count is None for c in code), "commit notebooks without outputs"
    assert all(len(c.source.splitlines()) <= 25 for c in code), "long cells belong in orion_utils"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith(f"# {name[:2]}")
    # the parameters cell is the profile's name and overrides (every knob lives in configs/<profile>.yaml),
    # exactly what `orion params --profile smol_demo` (the default profile) prints, and the names the runner passes
    assert code[0].source == parameters_cell(DEFAULT_PROFILE, name[:2])
    values: dict = {}
    exec(code[0].source, {}, values)
    assert values == {"profile": "smol_demo", "overrides": {}, "run_dir": "../outputs/smol_demo", "force": False}
    assert set(values) == set(notebook_parameters(load_profile("smol_demo"), Path("../outputs/smol_demo"), False))


@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_notebook_loads_the_profile_once_and_shows_the_knobs_it_uses(name):
    _, code = _code(name)
    colab = next(i for i, c in enumerate(code) if "ORION_REPO = " in c.source)
    cell = code[colab + 1].source  # right after the Colab cell: the package is importable there
    assert "cfg = load_profile(profile, overrides)" in cell
    assert sum("load_profile(" in c.source for c in code) == 1, "load the profile once"
    shown = _shown_sections(cell)
    assert set(shown) <= set(SECTIONS)
    used = {m for c in code for m in re.findall(r"\bcfg\.(\w+)", c.source)}
    # a stage called as stages.<name>(run, cfg, ...) takes the sections stages.READS names
    used |= {s for c in code for stage in re.findall(r"\bstages\.(\w+)\(run, cfg", c.source) for s in READS[stage]}
    # the table shows exactly the sections the notebook's code takes from the profile
    assert set(shown) == used, f"{name}: shown {sorted(shown)}, used {sorted(used)}"
    # no section is rebuilt from a dict: stages take the profile's own section objects
    assert not any(re.search(r"Config\(\*\*", c.source) for c in code)


def test_every_pipeline_notebook_exists():
    assert sorted(p.stem for p in Path(NOTEBOOK_DIR).glob("*.ipynb")) == sorted(NOTEBOOKS)


def test_profile_table_shows_every_key_of_the_named_sections(capsys):
    from orion_utils.display import profile_rows, profile_table

    cfg = load_profile("smoke", {"evaluation": {"n_samples": 7}})
    rows = profile_rows(cfg, ["evaluation", "student"])
    shown = [{k: r[k] for k in ("section", "key", "value")} for r in rows]
    assert {"section": "evaluation", "key": "n_samples", "value": "7"} in shown
    assert {"section": "student", "key": "model", "value": "'toy'"} in shown
    assert len(rows) == len(vars(cfg.evaluation)) + len(vars(cfg.student))
    profile_table(cfg, ["evaluation"])
    out = capsys.readouterr().out
    assert "profile smoke: evaluation" in out and "n_samples | 7" in out and "{'evaluation': {'n_samples': 7}}" in out
    with pytest.raises(KeyError, match="evaluaton"):
        profile_rows(cfg, ["evaluaton"])


class _Stop(Exception):
    pass


class _RefusingRun:
    """A run directory that refuses every use: a stage's module function stops at its first use of it."""

    def __getattr__(self, name):
        raise _Stop(name)

    def __fspath__(self):
        raise _Stop("__fspath__")

    def __str__(self):
        raise _Stop("__str__")


def _called_with(wrapper, cfg) -> list:
    """The (parameter, argument) pairs the stage module function that ``wrapper`` calls received: the
    wrapper is run on a run directory that refuses every use, and the function's frame read where it stopped."""
    with pytest.raises(Exception) as stopped:
        wrapper(_RefusingRun(), cfg)
    tb = stopped.value.__traceback__
    while tb.tb_frame.f_code is not wrapper.__code__:
        tb = tb.tb_next
    frame = tb.tb_next.tb_frame
    code = frame.f_code
    return [(name, frame.f_locals[name]) for name in code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]]


PARALLEL_STAGES = {"teacher_cots", "error_exposure", "reflection", "sft", "edit", "tailored", "evaluation"}


def test_stages_take_the_sections_reads_names_in_their_modules_order():
    """``stages.READS`` is the one place naming what each stage takes: its order is the stage module
    function's (``cfg`` is the stage's own section, ``<name>_cfg`` or ``<name>`` section ``<name>``),
    as the wrapper calls it."""
    import inspect

    from orion_utils import stages

    cfg = load_profile("smoke")
    section_of = {id(getattr(cfg, name)): name for name in SECTIONS}
    for stage, sections in READS.items():
        wrapper = getattr(stages, stage)
        assert list(inspect.signature(wrapper).parameters) == ["run", "cfg", "force"]
        called = _called_with(wrapper, cfg)
        # ``parallel`` (how many devices share the work) goes, by keyword, to the stages that generate or train
        assert (dict(called).get("parallel") is cfg.parallel) == (stage in PARALLEL_STAGES), stage
        received = [(p, section_of[id(v)]) for p, v in called if id(v) in section_of and p != "parallel"]
        assert [s for _, s in received] == list(sections), (stage, received)
        names = [sections[0] if p == "cfg" else p.removesuffix("_cfg") for p, _ in received]
        assert names == list(sections), (stage, received)
