import dataclasses

import pytest

from orion_utils.config import ConfigError, load_profile
from orion_utils.runner import NOTEBOOKS, parse_overrides

PROFILES = ["smoke", "toy", "smol", "colab", "paper"]


@pytest.mark.parametrize("name", PROFILES)
def test_profiles_load_and_cover_every_notebook_section(name):
    profile = load_profile(name)
    assert profile.name == name
    for sections in NOTEBOOKS.values():
        for section in sections:
            assert dataclasses.is_dataclass(profile.sections[section])


def test_loading_a_profile_imports_no_torch_trl_or_transformers():
    """The section dataclasses (the training ones included) cost no heavy import: a profile loads in
    a process that has imported none of torch, TRL and transformers, and still has not afterwards."""
    import subprocess
    import sys

    code = ("import sys\nimport orion_utils.config\nfrom orion_utils.config import load_profile\n"
            "profile = load_profile('toy')\nassert profile.sft.batch_size and profile.edit.beta >= 0\n"
            "print(sorted(m for m in ('torch', 'trl', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown key 'exposure\.kk'"):
        load_profile("toy", {"exposure": {"kk": 3}})


def test_unknown_section_is_named():
    with pytest.raises(ConfigError, match="unknown section 'exposur'"):
        load_profile("toy", {"exposur": {"k": 3}})


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"'exposure\.k' should be int"):
        load_profile("toy", {"exposure": {"k": "four"}})
    with pytest.raises(ConfigError, match=r"'evaluation\.temperature' should be float"):
        load_profile("toy", {"evaluation": {"temperature": "hot"}})


def test_unknown_profile_lists_known_ones():
    with pytest.raises(ConfigError, match="known profiles:.*toy"):
        load_profile("nope")


def test_smoke_inherits_from_toy_and_overrides():
    toy, smoke = load_profile("toy"), load_profile("smoke")
    assert smoke.student.model == toy.student.model == "toy"
    assert smoke.data.n_train < toy.data.n_train


def test_overrides_from_the_command_line():
    overrides = parse_overrides(["evaluation.n_samples=8", "student.model=some/model", "data.benchmarks=['gsm8k']"])
    assert overrides == {"evaluation": {"n_samples": 8}, "student": {"model": "some/model"},
                         "data": {"benchmarks": ["gsm8k"]}}
    assert load_profile("toy", overrides).evaluation.n_samples == 8
    with pytest.raises(ConfigError):
        parse_overrides(["n_samples=8"])


def test_seed_overrides_touch_every_seeded_section_but_data():
    from orion_utils.runner import _merge, seed_overrides

    profile = load_profile("toy")
    overrides = seed_overrides(profile, 3)
    assert "data" not in overrides and {"exposure", "sft", "evaluation", "warmup"} <= set(overrides)
    seeded = load_profile("toy", _merge({"evaluation": {"n_samples": 2}}, overrides))
    assert seeded.exposure.seed == 3 and seeded.sft.seed == 3 and seeded.evaluation.n_samples == 2
    assert seeded.data.seed == profile.data.seed


def _seed_notebook(path, fail_on_seed=None):
    import nbformat

    params = nbformat.v4.new_code_cell("run_dir = ''\nsft = {}")
    params.metadata["tags"] = ["parameters"]
    body = ("import os, time\nfrom pathlib import Path\n"
            f"if sft['seed'] == {fail_on_seed!r}:\n    raise RuntimeError('seed failed')\n"
            "Path(run_dir, 'seed.txt').write_text(f\"{sft['seed']} {os.getpid()} {time.time()}\")\n"
            "time.sleep(2)\nPath(run_dir, 'done.txt').write_text(str(time.time()))")
    nb = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(body)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def _seed_runs(tmp_path, seeds):
    from orion_utils.runner import _merge, seed_overrides

    profile = load_profile("toy")
    runs = []
    for seed in seeds:
        seeded = load_profile("toy", _merge({}, seed_overrides(profile, seed)))
        runs.append((seeded, tmp_path / f"seed_{seed}", None, False, False, f" seed {seed}"))
    return runs


def test_seeds_run_in_parallel_processes_each_with_its_seed(tmp_path):
    """``orion run --jobs N``: each seed's notebooks run in their own process, at the same time; a
    failing seed fails the run once the others have finished."""
    from orion_utils.runner import NotebookFailed, _execute_parallel

    nb = _seed_notebook(tmp_path / "04_sft.ipynb", fail_on_seed=2)
    runs = [(p, d, [nb], f, lo, lab) for p, d, _, f, lo, lab in _seed_runs(tmp_path, [0, 1, 2])]
    with pytest.raises(NotebookFailed, match="seed failed"):
        _execute_parallel(runs, jobs=3)
    seeds, pids, starts, ends = [], [], [], []
    for seed in (0, 1):
        s, pid, t = (tmp_path / f"seed_{seed}" / "seed.txt").read_text().split()
        seeds.append(int(s)), pids.append(pid), starts.append(float(t))
        ends.append(float((tmp_path / f"seed_{seed}" / "done.txt").read_text()))
    assert seeds == [0, 1] and pids[0] != pids[1]
    assert max(starts) < min(ends)  # both were running at once
    assert not (tmp_path / "seed_2" / "seed.txt").exists()


def _timed_notebook(path, fail=False, meet=None):
    """A notebook that records when it started and ended; ``meet``: it waits (up to 2 min) until that
    notebook has started too, so it only ends if the two ran at the same time."""
    import nbformat

    params = nbformat.v4.new_code_cell("run_dir = ''")
    params.metadata["tags"] = ["parameters"]
    name = path.stem
    wait = (f"t0 = time.time()\nwhile not Path(run_dir, '{meet}.start').exists():\n"
            f"    assert time.time() - t0 < 120, 'not run at the same time as {meet}'\n    time.sleep(0.1)\n"
            if meet else "time.sleep(1.5)\n")
    body = ("import time\nfrom pathlib import Path\n"
            f"Path(run_dir, '{name}.start').write_text(str(time.time()))\n"
            + ("raise RuntimeError('notebook failed')\n" if fail else wait)
            + f"Path(run_dir, '{name}.end').write_text(str(time.time()))")
    nb = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(body)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_one_seed_runs_independent_notebooks_at_once_in_pipeline_order(tmp_path):
    """``orion run --jobs 2`` with one seed: a notebook starts when every selected notebook upstream of
    it (runner.NEEDS) has finished, two at a time; after a failure nothing new starts."""
    from orion_utils.runner import NotebookFailed, _execute_graph

    names = ["01_teacher_cots", "02_error_exposure", "03_error_aware_reflection", "06_tailored_learning",
             "07_evaluation"]
    meet = {"02_error_exposure": "06_tailored_learning", "06_tailored_learning": "02_error_exposure"}
    nbs = [_timed_notebook(tmp_path / f"{n}.ipynb", fail=n.startswith("03"), meet=meet.get(n)) for n in names]
    run = tmp_path / "run"
    with pytest.raises(NotebookFailed, match="notebook failed"):
        _execute_graph(load_profile("toy"), run, nbs, False, False, "", jobs=2)

    def t(name, end):
        path = run / f"{name}.{'end' if end else 'start'}"
        return float(path.read_text()) if path.exists() else None

    assert t("02_error_exposure", False) >= t("01_teacher_cots", True)
    assert t("06_tailored_learning", False) >= t("01_teacher_cots", True)
    # exposure and Tailored Learning's training read nothing from each other: they ran at once (each
    # waited for the other to start)
    assert t("02_error_exposure", True) and t("06_tailored_learning", True)
    assert t("03_error_aware_reflection", False) >= t("02_error_exposure", True)
    assert t("07_evaluation", False) is None  # upstream (through 04) of the failed reflection: never started


def test_upstream_is_transitive():
    from orion_utils.runner import NEEDS, _upstream

    assert "03_error_aware_reflection" in _upstream("07_evaluation")  # through 04_sft
    assert _upstream("00_setup_and_data") == set()
    assert set(NEEDS) == set(__import__("orion_utils.runner", fromlist=["NOTEBOOKS"]).NOTEBOOKS)
