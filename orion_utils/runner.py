"""`orion run --profile NAME`: execute the numbered notebooks in order with papermill.

Each notebook gets four parameters: ``profile`` (the profile's name, or the absolute path of its YAML
file), ``overrides`` (``--set`` values merged with the seed's), ``run_dir`` and ``force``; it loads
every knob itself with ``config.load_profile(profile, overrides)``, so the profile is their one source.
Executed notebooks are saved in ``<run_dir>/notebooks/``. Stages inside the notebooks skip work whose
inputs and parameters are unchanged, so a re-run is cheap. On failure the runner stops and names the
notebook and cell.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import yaml

from .config import ConfigError, Profile, deep_merge, load_profile
from .generation import BackendUnavailableError
from .methods import notebooks_run_when_evaluated
from .processes import run_jobs
from .rundir import RunDir

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"

# the pipeline's notebooks, in order (each loads the profile sections it uses itself)
NOTEBOOKS: tuple[str, ...] = (
    "00_setup_and_data",
    "01_teacher_cots",
    "02_error_exposure",
    "03_error_aware_reflection",
    "04_sft",
    "05_edit",
    "06_tailored_learning",
    "07_evaluation",
    "08_analysis",
)

# the profile `make demo`, `orion run` and the notebooks' committed parameters cells name when none is given:
# SmolLM2-135M-Instruct learning the toy teacher's CoTs in 15 minutes on 2 CPU cores (configs/smol_demo.yaml)
DEFAULT_PROFILE = "smol_demo"

# the first code cell of every notebook (tagged `parameters`): papermill replaces these values
PARAMETERS_HEADER = (
    "# Parameters (`orion run`/papermill replace them). Every knob lives in the profile, configs/<profile>.yaml;\n"
    "# `overrides` changes some for this run only, e.g. {\"evaluation\": {\"n_samples\": 8}}.\n"
)


# notebooks that only train a baseline: run when their method is among evaluation.methods
BASELINE_NOTEBOOKS = notebooks_run_when_evaluated()  # orion_utils.methods

# what each notebook reads from earlier ones: with `--jobs N` a run executes up to N notebooks at once,
# each as soon as those before it here have finished (the baselines train beside exposure/reflection)
NEEDS: dict[str, list[str]] = {
    "00_setup_and_data": [],
    "01_teacher_cots": ["00_setup_and_data"],
    "02_error_exposure": ["01_teacher_cots"],
    "03_error_aware_reflection": ["02_error_exposure"],
    "04_sft": ["03_error_aware_reflection"],
    "05_edit": ["02_error_exposure"],
    "06_tailored_learning": ["01_teacher_cots"],
    "07_evaluation": ["04_sft", "05_edit", "06_tailored_learning"],
    "08_analysis": ["07_evaluation"],
}


class NotebookFailed(RuntimeError):
    pass


def notebook_parameters(profile: Profile, run_dir: Path, force: bool) -> dict:
    """What papermill passes to every notebook: how to load ``profile`` again (its source and the
    overrides it was loaded with), the run directory and ``force``."""
    return {"profile": profile.source or profile.name, "overrides": profile.overrides, "run_dir": str(run_dir),
            "force": force}


def parse_overrides(pairs: Sequence[str]) -> dict:
    """``section.key=value`` pairs → nested dict. A value is read as a Python literal (``['base', 'sft']``,
    ``8``, ``False``), else as YAML, the profiles' own syntax (``[base, sft]``, ``false``), else as a string
    (also where YAML would read a mapping or nothing: ``Q: {question}`` is a prompt)."""
    overrides: dict = {}
    for pair in pairs:
        if "=" not in pair or "." not in pair.split("=", 1)[0]:
            raise ConfigError(f"--set takes section.key=value, got {pair!r}")
        dotted, raw = pair.split("=", 1)
        section, key = dotted.split(".", 1)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                value = raw
            if isinstance(value, dict) or not raw.strip():
                value = raw
        overrides.setdefault(section, {})[key] = value
    return overrides


def seed_overrides(profile: Profile, seed: int) -> dict:
    """Set every section's ``seed`` to ``seed``, except ``data``: all seeds see the same questions.
    Sections already at ``seed`` are left out (the same profile, and shorter ``overrides`` for the
    notebooks: none for a profile's usual seed 0)."""
    import dataclasses

    return {name: {"seed": seed} for name, section in profile.sections.items()
            if name != "data" and any(f.name == "seed" for f in dataclasses.fields(section))
            and section.seed != seed}


def selected_notebooks(only: Optional[Sequence[str]] = None) -> list[Path]:
    paths = []
    for name in NOTEBOOKS:
        path = NOTEBOOK_DIR / f"{name}.ipynb"
        if only and not any(name.startswith(o) for o in only):
            continue
        if path.exists():
            paths.append(path)
    if not paths:
        raise FileNotFoundError(f"no notebooks to run in {NOTEBOOK_DIR} (only={only})")
    return paths


def parameters_cell(profile_name: str, notebook_prefix: str, run_dir: Optional[str] = None,
                    overrides: Optional[dict] = None) -> str:
    """A notebook's parameters cell for a profile, as Python source to paste (every notebook has the
    same one: ``DEFAULT_PROFILE``'s is committed in each)."""
    names = [name for name in NOTEBOOKS if name.startswith(notebook_prefix)]
    if len(names) != 1:
        raise ValueError(f"--notebook {notebook_prefix!r} matches {names or 'no notebook'}; give a unique prefix")
    profile = load_profile(profile_name, overrides)  # a profile that does not load fails here, not in Jupyter
    params = notebook_parameters(profile, Path(run_dir or f"../outputs/{profile.name}"), force=False)
    return PARAMETERS_HEADER + (
        f"profile = {json.dumps(params['profile'])}\n"
        f"overrides = {params['overrides']!r}\n"
        f"run_dir = {json.dumps(run_dir or params['run_dir'])}  # where every artifact of the run goes\n"
        "force = False  # True re-runs stages even when their inputs and parameters are unchanged"
    )


def run_pipeline(
    profile_name: str,
    run_dir: Optional[str] = None,
    force: bool = False,
    overrides: Optional[dict] = None,
    only: Optional[Sequence[str]] = None,
    log_output: bool = False,
    jobs: int = 1,
) -> Path:
    """Execute the notebooks of the pipeline for a profile; returns the run directory.

    ``jobs``: with several seeds, run up to this many seeds at once, each in its own process (on a
    CPU a toy seed uses one core, so ``jobs`` = the number of cores); with one seed, up to this many
    notebooks at once, each when the notebooks it reads from have finished (``NEEDS``: the baselines
    05/06 train beside exposure and reflection). The analysis runs after all."""
    import logging

    if log_output:  # papermill streams cell output through its logger
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    profile = load_profile(profile_name, overrides)
    check_generation_backend(profile)
    if jobs > 1 and profile.parallel.active:  # each stage already uses every device
        print(f"[orion] --jobs {jobs} with parallel.gpus={profile.parallel.gpus}: the notebooks run one at a time, "
              "each on every device", flush=True)
        jobs = 1
    run_path = Path(run_dir) if run_dir else NOTEBOOK_DIR.parent / "outputs" / profile.name  # whatever the cwd
    if profile.students:
        return run_students(profile_name, profile, run_path, force, overrides, only, log_output, jobs)
    notebooks = selected_notebooks(only)
    analysis = [nb for nb in notebooks if nb.stem == "08_analysis"]
    pipeline = [nb for nb in notebooks if nb.stem != "08_analysis"]
    started = time.time()
    # Seed 0's run is the main one; further seeds go to <run>/seeds/seed_<k>, and the analysis of
    # the main run, which comes last, reports mean ± std over all of them.
    runs = []
    for index, seed in enumerate(profile.seeds if pipeline else []):
        seed_profile = load_profile(profile_name, _merge(overrides or {}, seed_overrides(profile, seed)))
        seed_path = run_path if index == 0 else RunDir(run_path).seed_dir(seed)
        label = f" seed {seed} ({index + 1}/{len(profile.seeds)})" if len(profile.seeds) > 1 else ""
        runs.append((seed_profile, seed_path, pipeline, force, log_output, label))
    if jobs > 1 and len(runs) > 1:
        _execute_parallel(runs, jobs)
    elif jobs > 1 and runs:
        _execute_graph(*runs[0], jobs=jobs)
    else:
        for args in runs:
            _execute(*args)
    if analysis:
        _execute(load_profile(profile_name, _merge(overrides or {}, seed_overrides(profile, profile.seeds[0]))),
                 run_path, analysis, force, log_output, "")
    print(f"[orion] finished in {time.time() - started:.0f}s; report: {run_path / 'report.md'}", flush=True)
    return run_path


def check_generation_backend(profile: Profile) -> None:
    """``generation.backend: vllm`` (the GPU profiles') that cannot run on this machine stops the run before
    its first notebook, with the one error ``generation.select_backend`` gives (``BackendUnavailableError``:
    install vLLM, or set generation.backend=transformers on purpose). The notebooks check it again when they
    open a generator (and notebook 00's environment table), for a notebook run by hand."""
    if profile.generation.backend == "vllm":
        from .generation import select_backend

        select_backend("vllm")


def run_students(profile_name: str, profile: Profile, run_path: Path, force: bool = False,
                 overrides: Optional[dict] = None, only: Optional[Sequence[str]] = None, log_output: bool = False,
                 jobs: int = 1) -> Path:
    """Several backbones in one profile: the whole pipeline once per entry of ``students``
    (``config.student_runs``), each a complete run (its seeds included) in ``<run>/students/<name>/``,
    then one combined ``report.md`` at ``<run>`` with a row per student and method
    (``report.write_students_report``). Returns ``run_path``."""
    from .config import deep_merge, student_runs
    from .report import write_students_report

    run = RunDir(run_path)
    runs = {}
    for i, (name, extra) in enumerate(student_runs(profile.students), start=1):
        print(f"[orion] student {name} ({i}/{len(profile.students)})", flush=True)
        runs[name] = run_pipeline(profile_name, str(run.student_dir(name)), force,
                                  deep_merge(overrides or {}, extra), only, log_output, jobs)
    run.write_config(profile.to_dict())
    if any(RunDir(p).metrics.exists() for p in runs.values()):
        print(f"[orion] students' report: {write_students_report(run, runs)}", flush=True)
    return run_path


def _merge(a: dict, b: dict) -> dict:
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in a.items()}
    for key, value in b.items():
        merged[key] = {**merged.get(key, {}), **value}
    return merged


def _execute_parallel(runs: list, jobs: int) -> None:
    """``_execute`` each run in its own process, ``jobs`` at a time (``processes.run_jobs``); the first
    failure is raised once the others have finished (their stages are kept, so a re-run resumes)."""
    run_jobs(_execute, {args[5].strip() or str(args[1]): args for args in runs}, jobs, keep_going=True, label="orion")


def _upstream(name: str) -> set:
    """Every notebook ``name`` reads from, directly or through others (``NEEDS``, transitively)."""
    seen: set = set()
    stack = list(NEEDS.get(name, []))
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack += NEEDS.get(n, [])
    return seen


def early_jobs(methods: Sequence[str], notebooks: Sequence[str]) -> dict[str, tuple[str, list[str]]]:
    """Work of notebooks 04 and 07 that can start before them, one method at a time: ``{job: (stage, needs)}``.

    A stage-04 method whose CoTs come from a notebook before 04's own inputs (``sft``: stage 01's) trains as
    soon as they are there, beside exposure and reflection; every evaluated method is evaluated as soon as
    its model is there (``base``: the prepared student; ``orion``: notebook 04). Notebooks 04 and 07 then
    find that work up to date and show it. Only when every notebook upstream of 04 (or 07) is among the
    ``notebooks`` run (``--only 07`` starts nothing early). The base student's evaluation waits for stage 01,
    queued behind the early training that notebook 04 waits for."""
    from .methods import method as registered
    from .methods import methods_to_train

    selected, work = set(notebooks), {}
    for m in methods_to_train("04_sft", methods) if _upstream("04_sft") | {"04_sft"} <= selected else ():
        source = registered(m).cots_from
        if source not in NEEDS["04_sft"]:
            work[f"04_sft:{m}"] = ("sft", [source])
    for m in methods if _upstream("07_evaluation") | {"07_evaluation"} <= selected else ():
        trained_in = registered(m).trained_in
        after = (f"04_sft:{m}" if f"04_sft:{m}" in work else trained_in) if trained_in else "01_teacher_cots"
        work[f"07_evaluation:{m}"] = ("evaluation", [after])
    return work


def _execute_graph(profile: Profile, run_path: Path, notebooks: list, force: bool, log_output: bool, label: str,
                   jobs: int) -> None:
    """``_execute`` one run's notebooks, up to ``jobs`` at once in separate processes, each started when
    the selected notebooks upstream of it (``NEEDS``) have finished (``processes.run_jobs``), with the
    ``early_jobs`` between them (not under ``force``, which redoes every stage in its notebook). After a
    failure nothing new starts; the first failure is raised once the running notebooks have finished."""
    names = [nb.stem for nb in notebooks]
    needs = {name: _upstream(name) & set(names) for name in names}
    early = {} if force else early_jobs(profile.evaluation.methods, names)
    for job, (_, before) in early.items():
        needs[job] = set(before)
        needs[job.split(":")[0]].add(job)  # the notebook shows what the job did
    # the order a job is picked in when several may start: the early training before the baselines' notebooks
    # (notebook 04 waits for it), the early evaluations last
    up_to_04 = [n for n in names if NOTEBOOKS.index(n) <= NOTEBOOKS.index("04_sft")]
    order = up_to_04 + [j for j in early if j.startswith("04")]
    order += [n for n in names if n not in up_to_04] + [j for j in early if not j.startswith("04")]
    work = {name: ("notebook", profile, run_path, [notebooks[names.index(name)]], force, log_output, label,
                   names.index(name) + 1, len(notebooks)) if name in names else
            ("stage", profile, run_path, early[name][0], name.split(":")[1], label) for name in order}
    run_jobs(_run_job, work, jobs, needs=needs, label="orion")


def _run_job(kind: str, *args) -> None:
    """One job of ``_execute_graph``: a notebook (``_execute``) or one method's part of a stage (``_execute_stage``)."""
    return (_execute if kind == "notebook" else _execute_stage)(*args)


def _execute_stage(profile: Profile, run_path: Path, stage: str, method: str, label: str) -> None:
    """Stage 04's or 07's work for one ``method`` (``early_jobs``), what it prints kept in
    ``notebooks/<stage>_<method>.log`` beside the executed notebooks."""
    import contextlib

    from . import stages

    cfg = load_profile(profile.source or profile.name,
                       deep_merge(profile.overrides, {"evaluation": {"methods": [method]}}))
    log = run_path / "notebooks" / f"{stage}_{method}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[orion] {stage} of {method}{label} started early (its inputs are there); output: {log}", flush=True)
    with open(log, "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        {"sft": stages.sft, "evaluation": stages.evaluation}[stage](RunDir(run_path), cfg)


def _execute(profile: Profile, run_path: Path, notebooks: list, force: bool, log_output: bool, label: str,
             first: int = 1, total: Optional[int] = None) -> None:
    import papermill as pm

    (run_path / "notebooks").mkdir(parents=True, exist_ok=True)
    RunDir(run_path).write_config(profile.to_dict())
    total = total or len(notebooks)
    if first == 1:
        print(f"[orion] profile={profile.name}{label} run_dir={run_path} notebooks={total}", flush=True)
    methods = profile.section_dict("evaluation")["methods"]
    for i, nb in enumerate(notebooks, start=first):
        out = run_path / "notebooks" / nb.name
        t0 = time.time()
        method = BASELINE_NOTEBOOKS.get(nb.stem)
        if method and method not in methods:
            print(f"[orion] ({i}/{total}) {nb.stem} skipped: '{method}' is not in evaluation.methods", flush=True)
            continue
        print(f"[orion] ({i}/{total}) {nb.stem} ...", flush=True)
        try:
            for attempt in range(1, KERNEL_START_TRIES + 1):
                try:
                    pm.execute_notebook(
                        str(nb), str(out), parameters=notebook_parameters(profile, run_path.resolve(), force),
                        kernel_name="python3", progress_bar=False, log_output=log_output, cwd=str(nb.parent),
                    )
                    break
                except RuntimeError as exc:  # the kernel never started: no cell ran, so starting again is safe
                    if "Kernel died before replying to kernel_info" not in str(exc) or attempt == KERNEL_START_TRIES:
                        raise
                    print(f"[orion] ({i}/{total}) {nb.stem}: its kernel did not start ({exc}); starting it again",
                          flush=True)
        except pm.PapermillExecutionError as exc:
            raise NotebookFailed(
                f"{nb.name} failed in cell {exc.cell_index} (execution count {exc.exec_count}): "
                f"{exc.ename}: {exc.evalue}\nthe executed notebook with the traceback is {out}"
            ) from None
        print(f"[orion] ({i}/{total}) {nb.stem} done in {time.time() - t0:.0f}s", flush=True)


# A kernel whose ports another process took between jupyter_client choosing and binding them dies before it
# answers ("Address already in use"): with notebooks or seeds run side by side this happens now and then.
KERNEL_START_TRIES = 3


def _parser() -> argparse.ArgumentParser:
    """The `orion` command line: run, params, colab-links, doctor, plan."""
    parser = argparse.ArgumentParser(prog="orion", description="Reasoning-distillation pipeline runner")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute the numbered notebooks for a profile with papermill")
    run.add_argument("--profile", default=DEFAULT_PROFILE, help="smol_demo | smoke | toy | colab | paper | ... | path to a YAML profile")
    run.add_argument("--run-dir", default=None, help="default: outputs/<profile> in the checkout")
    run.add_argument("--force", action="store_true", help="re-run every stage even if it is up to date")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override a profile value (a Python literal or YAML), e.g. --set evaluation.n_samples=8, "
                          "--set 'evaluation.methods=[base, sft]'")
    run.add_argument("--only", action="append", default=None, metavar="PREFIX",
                     help="run only the notebooks whose names start with PREFIX (repeatable), e.g. --only 07")
    run.add_argument("--log-output", action="store_true", help="stream the notebooks' output")
    run.add_argument("--jobs", type=int, default=1, metavar="N",
                     help="run N seeds at once in separate processes; with one seed, N independent notebooks "
                          "at once (toy: N = CPU cores)")
    run.add_argument("--gpus", type=int, default=None, metavar="N",
                     help="spread the generating and training stages over N devices (parallel.gpus; on a machine "
                          "without GPUs, N processes share the cores: a rehearsal); docs/parallel.md")
    params = sub.add_parser("params", help="print a notebook's parameters cell for a profile (to paste in Jupyter/Colab)")
    params.add_argument("--profile", default=DEFAULT_PROFILE, help="smol_demo | smoke | toy | colab | paper | ... | path to a YAML profile")
    params.add_argument("--notebook", required=True, metavar="PREFIX", help="e.g. 03")
    params.add_argument("--run-dir", default=None, help="default: ../outputs/<profile>")
    params.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="put an override in the cell's `overrides`, e.g. --set evaluation.n_samples=8")
    links = sub.add_parser("colab-links", help="write the README's Colab links and the install cell's default repository")
    links.add_argument("--repo", default=None, help="OWNER/NAME on GitHub (default: [project.urls] Repository)")
    links.add_argument("--branch", default="main")
    links.add_argument("--cells", action="store_true",
                       help="only rewrite every notebook's install cell from colab.install_cell, keeping its default")
    doctor = sub.add_parser("doctor", help="what this machine runs (device, dtype, backends and why) and how fast")
    doctor.add_argument("--profile", default="toy", help="the profile whose student and settings to check")
    doctor.add_argument("--model", default=None, help="measure this model (local path or hub id) instead")
    doctor.add_argument("--generation-backend", default=None, help="auto | transformers | vllm (default: the profile's)")
    doctor.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, for MFU")
    doctor.add_argument("--no-benchmark", action="store_true", help="only say what loads; measure nothing")
    doctor.add_argument("--json", default=None, metavar="PATH", help="also write the table and numbers as JSON")
    plan = sub.add_parser("plan", help="each stage's tokens, time, peak GPU memory, disk and API cost on a card")
    plan.add_argument("--profile", default=DEFAULT_PROFILE, help="smol_demo | smoke | toy | colab | paper | ... | path to a YAML profile")
    plan.add_argument("--gpu", default=None, help="T4 | L4 | A10G | A100-40 | A100-80 | H100 | H200 "
                                                  "(default: the profile's card in the README's table, else T4)")
    plan.add_argument("--doctor", default=None, metavar="JSON", help="`orion doctor --json` output: its tokens/s")
    plan.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                      help="plan with a profile value changed, e.g. --set data.benchmark_limit=100")
    plan.add_argument("--gpus", type=int, default=None, metavar="N",
                      help="plan for N GPUs of the card (parallel.gpus): peak memory per GPU")
    plan.add_argument("--disk-gb", type=float, default=None, help="disk available (default: the card's, Colab ~100)")
    plan.add_argument("--cot-median", type=int, default=None, metavar="TOKENS",
                      help="median teacher CoT length (default: plan.COT_MEDIAN for the profile's data.train_source)")
    return parser


def _doctor(args) -> int:
    from .doctor import main_doctor

    return main_doctor(args)


def _plan(args) -> int:
    from .plan import main_plan

    overrides = parse_overrides(args.overrides)
    if args.gpus is not None:
        if args.gpus < 1:
            raise ConfigError(f"--gpus must be at least 1, got {args.gpus}")
        overrides = _merge(overrides, {"parallel": {"gpus": args.gpus}})
    return main_plan(args, overrides)


def _params(args) -> int:
    print(parameters_cell(args.profile, args.notebook, args.run_dir, parse_overrides(args.overrides)))
    return 0


def _colab_links(args) -> int:
    from .colab import write_colab_links, write_install_cells

    if args.cells:
        changed = write_install_cells()
        print(f"[orion] Colab install cell written into {len(changed)} notebook(s): {', '.join(changed) or 'none'}")
        return 0
    repo = write_colab_links(args.repo, args.branch)
    print(f"[orion] Colab links written for github.com/{repo} ({args.branch})")
    return 0


def _run(args) -> int:
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    overrides = parse_overrides(args.overrides)
    if args.gpus is not None:
        if args.gpus < 1:
            raise ConfigError(f"--gpus must be at least 1, got {args.gpus}")
        overrides = _merge(overrides, {"parallel": {"gpus": args.gpus}})
    run_pipeline(args.profile, args.run_dir, args.force, overrides, args.only, args.log_output, args.jobs)
    return 0


# command → (what runs it, the errors it reports as one line and exit status 1)
COMMANDS = {
    "doctor": (_doctor, (ConfigError, FileNotFoundError, OSError)),
    "params": (_params, (ConfigError, ValueError)),
    "plan": (_plan, (ConfigError, ValueError, OSError)),
    "colab-links": (_colab_links, (ValueError,)),
    "run": (_run, (ConfigError, NotebookFailed, FileNotFoundError, BackendUnavailableError)),
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    command, errors = COMMANDS[args.command]
    try:
        return command(args)
    except errors as exc:
        print(f"[orion] error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
