"""Notebooks are committed clean, parameterised with the toy profile's values, and keep logic in the package."""
from pathlib import Path

import nbformat
import pytest

from orion_utils.config import load_profile
from orion_utils.runner import NOTEBOOK_DIR, NOTEBOOKS

TOY = load_profile("toy")


@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_notebook_is_clean_and_parameterised(name):
    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell must be tagged 'parameters'"
    assert all(not c.outputs and c.execution_count is None for c in code), "commit notebooks without outputs"
    assert all(len(c.source.splitlines()) <= 25 for c in code), "long cells belong in orion_utils"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith(f"# {name[:2]}")
    values: dict = {}
    exec(code[0].source, {}, values)  # the parameters cell is plain assignments of literals
    assert values["profile"] == "toy" and values["force"] is False
    for section in NOTEBOOKS[name]:
        assert values[section] == TOY.section_dict(section), f"{name}: '{section}' differs from configs/toy.yaml"


def test_every_pipeline_notebook_exists():
    assert sorted(p.stem for p in Path(NOTEBOOK_DIR).glob("*.ipynb")) == sorted(NOTEBOOKS)
