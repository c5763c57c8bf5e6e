import dataclasses

import pytest

from pathlib import Path

from orion_utils.config import SECTIONS, ConfigError, load_profile
from orion_utils.runner import _merge, notebook_parameters, parse_overrides, seed_overrides

PROFILES = ["smoke", "toy", "smol", "colab", "paper"]


@pytest.mark.parametrize("name", PROFILES)
def test_profiles_load_and_cover_every_section(name):
    profile = load_profile(name)
    assert profile.name == name and profile.source == name and profile.overrides == {}
    assert set(profile.sections) == set(SECTIONS)
    for section in SECTIONS:
        assert dataclasses.is_dataclass(getattr(profile, section))


@pytest.mark.parametrize("name", PROFILES + ["toy3"])
def test_a_notebook_loads_the_profile_the_runner_resolved(name):
    """The runner passes each notebook only the profile and the overrides (``--set`` and the seed's);
    the notebook's ``load_profile(profile, overrides)`` gives every section the runner saw, so stages
    take the same configs (and the same parameter hashes) as the runner's profile says."""
    profile = load_profile(name)
    for seed in profile.seeds:
        seeded = load_profile(name, _merge({"evaluation": {"n_samples": 8}}, seed_overrides(profile, seed)))
        params = notebook_parameters(seeded, Path("/tmp/run"), force=False)
        assert set(params) == {"profile", "overrides", "run_dir", "force"} and params["profile"] == name
        reloaded = load_profile(params["profile"], params["overrides"])
        assert reloaded.sections == seeded.sections and reloaded.to_dict() == seeded.to_dict()
        assert reloaded.evaluation.n_samples == 8 and reloaded.training.seed == seed
        every = {n: {"seed": seed} for n, sec in profile.sections.items() if n != "data" and hasattr(sec, "seed")}
        assert load_profile(name, every).sections == load_profile(name, seed_overrides(profile, seed)).sections


def test_loading_a_profile_imports_no_torch_trl_or_transformers():
    """The section dataclasses (the training ones included) cost no heavy import: a profile loads in
    a process that has imported none of torch, TRL and transformers, and still has not afterwards."""
    import subprocess
    import sys

    code = ("import sys\nimport orion_utils.config\nfrom orion_utils.config import load_profile\n"
            "profile = load_profile('toy')\nassert profile.training.batch_size and profile.edit.beta >= 0\n"
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
    # the profiles' YAML syntax works too; what neither reads stays a string
    assert parse_overrides(["evaluation.methods=[base, sft]", "evaluation.greedy=false", "student.prompt_template=Q: {question}"]) \
        == {"evaluation": {"methods": ["base", "sft"], "greedy": False}, "student": {"prompt_template": "Q: {question}"}}
    with pytest.raises(ConfigError):
        parse_overrides(["n_samples=8"])


def test_seed_overrides_touch_every_seeded_section_but_data():
    from orion_utils.runner import _merge, seed_overrides

    profile = load_profile("toy")
    overrides = seed_overrides(profile, 3)
    assert "data" not in overrides and {"exposure", "training", "evaluation", "toy_pretrain"} <= set(overrides)
    assert seed_overrides(profile, 0) == {}  # the profile's own seed: nothing to override
    seeded = load_profile("toy", _merge({"evaluation": {"n_samples": 2}}, overrides))
    assert seeded.exposure.seed == 3 and seeded.training.seed == 3 and seeded.evaluation.n_samples == 2
    assert seeded.data.seed == profile.data.seed


def _seed_notebook(path, fail_on_seed=None):
    import nbformat

    params = nbformat.v4.new_code_cell("profile = 'toy'\noverrides = {}\nrun_dir = ''")
    params.metadata["tags"] = ["parameters"]
    body = ("import os, time\nfrom pathlib import Path\n"  # the seed's overrides reach the notebook
            "seed = overrides['training']['seed']\n"
            f"if seed == {fail_on_seed!r}:\n    raise RuntimeError('seed failed')\n"
            "Path(run_dir, 'seed.txt').write_text(f\"{seed} {os.getpid()} {time.time()}\")\n"
            # seeds 1 and 2 end only once the other has started: they finish only if they ran at the same time
            "other, t0 = Path(run_dir).parent / f'seed_{3 - seed}' / 'seed.txt', time.time()\n"
            "while not other.exists():\n"
            "    assert time.time() - t0 < 120, 'not run at the same time as the other seed'\n"
            "    time.sleep(0.1)\n"
            "Path(run_dir, 'done.txt').write_text(str(time.time()))")
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

    nb = _seed_notebook(tmp_path / "04_sft.ipynb", fail_on_seed=3)
    runs = [(p, d, [nb], f, lo, lab) for p, d, _, f, lo, lab in _seed_runs(tmp_path, [1, 2, 3])]
    with pytest.raises(NotebookFailed, match="seed failed"):
        _execute_parallel(runs, jobs=3)
    seeds, pids, starts, ends = [], [], [], []
    for seed in (1, 2):
        s, pid, t = (tmp_path / f"seed_{seed}" / "seed.txt").read_text().split()
        seeds.append(int(s)), pids.append(pid), starts.append(float(t))
        ends.append(float((tmp_path / f"seed_{seed}" / "done.txt").read_text()))
    assert seeds == [1, 2] and pids[0] != pids[1]
    assert max(starts) < min(ends)  # both were running at once
    assert not (tmp_path / "seed_3" / "seed.txt").exists()


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


def test_a_notebook_run_by_the_runner_sees_the_overrides(tmp_path, monkeypatch):
    """``orion run --profile FILE --set ...``: a notebook gets the profile (a file as its absolute path,
    which loads from notebooks/) and the overrides, ``--set`` merged with each seed's, and loads the
    values the runner resolved."""
    import json

    import nbformat

    from orion_utils import runner

    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    params = nbformat.v4.new_code_cell("profile = 'toy'\noverrides = {}\nrun_dir = ''\nforce = False")
    params.metadata["tags"] = ["parameters"]
    body = ("import json\nfrom pathlib import Path\nfrom orion_utils.config import load_profile\n"
            "cfg = load_profile(profile, overrides)\n"
            "Path(run_dir, 'seen.json').write_text(json.dumps({'profile': profile, 'force': force, "
            "'n_samples': cfg.evaluation.n_samples, 'greedy': cfg.evaluation.greedy, "
            "'exposure_seed': cfg.exposure.seed, 'data_seed': cfg.data.seed}))")
    nb = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(body)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, notebooks / "07_evaluation.ipynb")
    (tmp_path / "mine.yaml").write_text("base: smoke\nseeds: [0, 4]\nevaluation:\n  n_samples: 5\n")
    monkeypatch.setattr(runner, "NOTEBOOK_DIR", notebooks)
    monkeypatch.chdir(tmp_path)  # the profile is given relative to here; the kernel runs in notebooks/
    run = runner.run_pipeline("mine.yaml", str(tmp_path / "run"), force=True,
                              overrides=parse_overrides(["evaluation.greedy=False"]), only=["07"])
    for path, seed in ((run, 0), (run / "seeds" / "seed_4", 4)):
        seen = json.loads((path / "seen.json").read_text())
        assert seen == {"profile": str((tmp_path / "mine.yaml").resolve()), "force": True, "n_samples": 5,
                        "greedy": False, "exposure_seed": seed, "data_seed": 0}


def test_paper_profile_compares_every_method_on_the_same_questions():
    from orion_utils.methods import METHODS
    from orion_utils.runner import BASELINE_NOTEBOOKS

    cfg = load_profile("paper")
    assert cfg.evaluation.methods == list(METHODS) == ["base", "sft", "orion", "edit", "tailored"]
    assert set(BASELINE_NOTEBOOKS.values()) <= set(cfg.evaluation.methods)  # no baseline notebook is skipped
    assert cfg.edit.pair_source == "teacher" and cfg.teacher.kind == "api"  # EDIT's own pairs; a teacher to ask
    assert cfg.training.same_questions and cfg.training.overlong == "drop"
    # the baselines inherit the training stack's length rule, so the question set holds for them too
    assert cfg.edit.max_seq_len == cfg.tailored.max_seq_len == cfg.training.max_seq_len
    assert cfg.analysis.bootstrap_resamples > 0 and cfg.analysis.decide_max_width_points > cfg.analysis.margin_points


def test_a_kernel_that_does_not_start_is_started_again(tmp_path, monkeypatch, capsys):
    """Notebooks and seeds run side by side: a kernel whose ports another process took dies before it
    answers ("Kernel died before replying to kernel_info"); no cell ran, so the runner starts it again
    (up to KERNEL_START_TRIES), and any other error is raised at once."""
    import papermill as pm

    from orion_utils import runner

    calls = []

    def flaky(path, out, **kwargs):
        calls.append(Path(path).name)
        if len(calls) == 1:
            raise RuntimeError("Kernel died before replying to kernel_info")

    monkeypatch.setattr(pm, "execute_notebook", flaky)
    nb = Path(runner.__file__).resolve().parents[1] / "notebooks" / "00_setup_and_data.ipynb"
    runner._execute(load_profile("smoke"), tmp_path, [nb], False, False, "")
    assert calls == [nb.name, nb.name] and "starting it again" in capsys.readouterr().out

    def broken(path, out, **kwargs):
        calls.append("broken")
        raise RuntimeError("something else")

    monkeypatch.setattr(pm, "execute_notebook", broken)
    with pytest.raises(RuntimeError, match="something else"):
        runner._execute(load_profile("smoke"), tmp_path, [nb], False, False, "")
    assert calls.count("broken") == 1


def test_early_jobs_start_each_methods_work_when_its_inputs_are_there():
    """``orion run --jobs N``: sft (its CoTs from stage 01) trains beside exposure and reflection; each method is
    evaluated once its model is there; nothing starts early when a notebook upstream is not run (``--only``)."""
    from orion_utils.runner import NOTEBOOKS, early_jobs

    assert early_jobs(["base", "sft", "orion", "edit", "tailored"], NOTEBOOKS) == {
        "04_sft:sft": ("sft", ["01_teacher_cots"]),
        "07_evaluation:base": ("evaluation", ["01_teacher_cots"]),
        "07_evaluation:sft": ("evaluation", ["04_sft:sft"]),
        "07_evaluation:orion": ("evaluation", ["04_sft"]),
        "07_evaluation:edit": ("evaluation", ["05_edit"]),
        "07_evaluation:tailored": ("evaluation", ["06_tailored_learning"]),
    }
    assert early_jobs(["base", "orion"], NOTEBOOKS) == {
        "07_evaluation:base": ("evaluation", ["01_teacher_cots"]), "07_evaluation:orion": ("evaluation", ["04_sft"])}
    assert early_jobs(["base", "sft", "orion"], [n for n in NOTEBOOKS if n != "02_error_exposure"]) == {}
    assert early_jobs(["base", "sft"], ["07_evaluation"]) == {}
