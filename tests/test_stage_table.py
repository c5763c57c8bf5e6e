"""Which stages each prompt and each knob re-runs, on the smoke profile: a fingerprint is complete and minimal.

Every stage is called as a notebook calls it (``stages.<stage>(run, cfg)``) on a small run directory, with
``RunDir.run_stage`` replaced by a recorder that keeps the params the real ``run_stage`` would compare and
stops there (the work itself is not what is tested; ``tests/test_stage_rerun.py`` runs the pipeline). One
prompt is edited, or one knob changed, at a time; a stage re-runs when its params change. The tables below are
the expected answers, written out: a stage hashes exactly the prompts it sends under the profile's settings
(``stage_specs.SENDS``) and the knobs that change its output; a bookkeeping knob (``knob(..., bookkeeping=...)``)
re-runs nothing.
"""
from __future__ import annotations

import dataclasses

import pytest

from orion_utils import stage_specs, stages
from orion_utils.config import SECTIONS, load_profile, section_class
from orion_utils.knobs import ConfigError, bookkeeping
from orion_utils.methods import METHODS
from orion_utils.rundir import RunDir, stable_hash
from test_fingerprints import _small_run, edit_prompt


class _Recorded(Exception):
    pass


# evaluation.workers: 1, so that stage 07 runs in this process (the recorder is not in a worker's)
ONE_WORKER = {"evaluation": {"workers": 1}}
# every prompt sent: a prompted teacher, the llm reflector, both judges, EDIT's pairs from the teacher
PROMPTED = {**ONE_WORKER, "teacher": {"kind": "api", "base_url": "http://127.0.0.1:9/v1", "model": "m"},
            "reflection": {"reflector": "llm", "judge": True}, "analysis": {"judge": True},
            "edit": {"pair_source": "teacher"}}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunDir:
    run = _small_run(tmp_path_factory.mktemp("table") / "run")
    for name in METHODS:  # a (stand-in) trained model per method: stage 07 evaluates every method
        if name != "base":
            run.trained(name).model.mkdir(parents=True)
            (run.trained(name).model / "config.json").write_text("{}")
    return run


@pytest.fixture(scope="module")
def params_of():
    """stage → its params hash under a profile, each stage called through the facade."""
    seen: list = []

    def run_stage(self, name, params, inputs, outputs, work, **kw):
        seen.append(stable_hash(params))
        raise _Recorded

    mp = pytest.MonkeyPatch()
    mp.setattr(RunDir, "run_stage", run_stage)

    def params_of(run: RunDir, cfg) -> dict[str, str]:
        out = {}
        for stage in stage_specs.READS:
            seen.clear()
            try:
                getattr(stages, stage)(run, cfg)
            except _Recorded:
                out[stage] = seen[0]
            else:
                raise AssertionError(f"{stage} ran no stage")
        return out

    yield params_of
    mp.undo()


def _rerun(before: dict, after: dict) -> set[str]:
    return {stage for stage in before if before[stage] != after[stage]}


# prompt → the stages it re-runs: on the smoke profile (toy teacher, toy student's rule-based reflector, judges
# off) and with every prompt sent (PROMPTED)
PROMPT_TABLE = {
    #                   smoke                                        PROMPTED
    "collect": (set(), {"teacher_cots", "tailored"}),  # tailored: round 1 asks for what stage 01 lacks
    "rectify": (set(), {"edit"}),
    "rectify_no_wrong": (set(), {"edit"}),
    "corrupt": (set(), {"edit"}),
    "demonstration": (set(), {"edit"}),
    "contrastive_demos": (set(), {"edit"}),
    "tailor": (set(), {"tailored"}),
    "attempt": (set(), {"tailored"}),
    "judge": (set(), {"analysis"}),
    "rewrite_judge": (set(), {"reflection"}),
    "reflection": (set(), {"reflection"}),  # only the llm reflector sends it
    # the toy rules: the toy student's reflector, the toy teacher's tailored rationales, the pre-training's
    # caught slips
    "toy_rules": ({"prepare_student", "reflection", "tailored"}, {"prepare_student"}),
}


def test_each_prompt_reruns_the_stages_that_send_it(run, params_of):
    assert set(PROMPT_TABLE) == set(stage_specs.prompt_texts())
    for column, overrides in enumerate((ONE_WORKER, PROMPTED)):
        cfg = load_profile("smoke", overrides)
        before = params_of(run, cfg)
        for name, expected in PROMPT_TABLE.items():
            mp = pytest.MonkeyPatch()
            try:
                edit_prompt(mp, name)
                assert _rerun(before, params_of(run, cfg)) == expected[column], (name, list(overrides))
            finally:
                mp.undo()


# section → the stages a change of one of its knobs re-runs, on the smoke profile; KNOB_TABLE: the knobs that
# differ from their section's row. A training knob is also the edit and tailored sections' unless they set it.
SECTION_TABLE = {
    # stage 01 reads the student only under the length rule, which the toy student's run does not apply
    "student": {"prepare_student", "error_exposure", "reflection", "sft", "edit", "tailored", "evaluation"},
    "toy_student": {"prepare_student"},
    "toy_domain": {"prepare_data", "prepare_student"},
    "toy_pretrain": {"prepare_student"},
    "data": {"prepare_data"},
    "teacher": {"teacher_cots", "edit", "tailored"},
    "generation": {"error_exposure", "reflection", "tailored", "evaluation"},
    "exposure": {"error_exposure"},
    "reflection": {"reflection"},
    "training": {"sft", "edit", "tailored"},
    "edit": {"edit"},
    "tailored": {"tailored"},
    "evaluation": {"evaluation"},
    "analysis": {"analysis"},
    "long_cots": set(),  # read by the long-CoT notebooks' SFT, no stage of the pipeline
    "parallel": set(),  # how many devices share a stage's work, not what it writes: in no fingerprint
}
KNOB_TABLE = {
    "data.seed": {"prepare_data", "prepare_student"},  # the toy student's own seed
    # the question set's rule (stage 01) and each method's cut of its sequences
    "training.max_seq_len": {"teacher_cots", "sft", "edit"},  # smoke's tailored sets its own max_seq_len
    "training.overlong": {"teacher_cots", "sft", "edit", "tailored"},
    "training.same_questions": {"teacher_cots", "sft", "edit", "tailored"},
    # EDIT's stage 1 trains under the training section; smoke's tailored section sets its own
    "training.max_steps": {"sft", "edit"}, "training.batch_size": {"sft", "edit"},
    "training.num_epochs": {"sft", "edit"},
    # the first other value, "auto", is the toy student's own reflector: the same setting, nothing re-runs
    "reflection.reflector": set(),
}
# knobs whose every other value fails the profile's checks alone, or that spawn processes (workers)
NOT_CHANGED_ALONE = {"reflection.judge", "analysis.judge", "training.load_in_4bit", "edit.load_in_4bit",
                     "tailored.load_in_4bit", "teacher.max_model_len", "teacher.max_context_tokens",
                     "generation.max_model_len", "evaluation.workers"}


def _another(f: dataclasses.Field, value):
    """Other values of a knob to try, in order (the first the profile accepts is used)."""
    meta = f.metadata
    if isinstance(value, bool):
        return [not value]
    if "choices" in meta:
        return [c for c in meta["choices"] if c != value]
    if "each" in meta:
        return [list(value)[:-1]] if len(value) > 1 else [[c for c in meta["each"] if c not in value][:1]]
    if isinstance(value, int):
        return [value + 1, value * 2, value - 1, value // 2]
    if isinstance(value, float):
        new = value / 2 if value > 0 else 0.5
        return [min(new, meta.get("le", new))]
    if value is None:
        return [1]
    if isinstance(value, str):
        return [value[:-1], value + "x" if value else "x"]
    if isinstance(value, list):
        return [value[:-1]]
    raise AssertionError(f"{f.name}: no other value for {value!r}")


def _knob_table(run, params_of) -> dict[str, set]:
    smoke = load_profile("smoke", ONE_WORKER)
    before, table = params_of(run, smoke), {}
    for section in SECTIONS:
        for f in dataclasses.fields(section_class(section)):
            key = f"{section}.{f.name}"
            if key in NOT_CHANGED_ALONE:
                continue
            now = getattr(getattr(smoke, section), f.name)
            for value in [v for v in _another(f, now) if v != now]:
                try:  # a value the profile's checks or the stage itself refuses: the next one
                    cfg = load_profile("smoke", {**ONE_WORKER, section: {**ONE_WORKER.get(section, {}), f.name: value}})
                    table[key] = _rerun(before, params_of(run, cfg))
                except (ConfigError, ValueError):
                    continue
                break
            else:
                raise AssertionError(f"{key}: no other value passes the profile's and the stages' checks; list it in NOT_CHANGED_ALONE")
    return table


def test_each_knob_reruns_the_stages_whose_output_it_changes(run, params_of):
    table = _knob_table(run, params_of)
    fields = {f"{s}.{f.name}": f for s in SECTIONS for f in dataclasses.fields(section_class(s))}
    expected = {key: set() if bookkeeping(fields[key]) else KNOB_TABLE.get(key, SECTION_TABLE[key.split(".")[0]])
                for key in table}
    wrong = {key: (sorted(table[key]), sorted(expected[key])) for key in table if table[key] != expected[key]}
    assert not wrong, f"knob: (re-run, expected): {wrong}"
    # the cases
    assert table["training.logging_steps"] == table["training.progress_bar"] == table["training.cpu_threads"] == set()
    assert table["teacher.price_date"] == table["evaluation.chunk_questions"] == set()
    assert table["analysis.max_cots"] == {"analysis"}


def test_bookkeeping_knobs_say_why_and_are_in_no_fingerprint():
    cfg = load_profile("smoke")
    for section in SECTIONS:
        for f in dataclasses.fields(section_class(section)):
            if bookkeeping(f):
                assert len(bookkeeping(f)) > 20, f"{section}.{f.name}: say why it changes no output"
                for stage, names in stage_specs.READS.items():
                    if section in names:
                        params = stage_specs.section_params(stage, section, getattr(cfg, section))
                        assert f.name not in params, (stage, section, f.name)


def test_the_judge_prompt_reruns_only_analysis_and_the_reflection_prompt_only_the_llm_reflector(run, params_of):
    for reflector, expected in (("llm", {"reflection"}), ("rule", set()), ("student", set())):
        cfg = load_profile("smoke", {**ONE_WORKER, "reflection": {"reflector": reflector}})
        before = params_of(run, cfg)
        mp = pytest.MonkeyPatch()
        try:
            edit_prompt(mp, "reflection")
            assert _rerun(before, params_of(run, cfg)) == expected, reflector
        finally:
            mp.undo()


def test_the_table_covers_every_knob():
    every = {f"{s}.{f.name}" for s in SECTIONS for f in dataclasses.fields(section_class(s))}
    assert set(KNOB_TABLE) <= every and NOT_CHANGED_ALONE <= every
    assert set(SECTION_TABLE) == set(SECTIONS)


def test_the_data_section_counts_where_it_builds_a_dataset_teacher():
    for stage in ("teacher_cots", "edit", "tailored"):
        names = stage_specs.READS[stage]
        hashes = {}
        for kind in ("toy", "dataset"):
            for n_train in (7, 8):
                cfg = load_profile("smoke", {"data": {"n_train": n_train}, "teacher": {"kind": kind},
                                             "tailored": {"rounds": 1}})
                params, _ = stage_specs.fingerprint(None, stage, *[getattr(cfg, n) for n in names])
                hashes[kind, n_train] = stable_hash(params)
        assert hashes["toy", 7] == hashes["toy", 8], stage
        assert hashes["dataset", 7] != hashes["dataset", 8], stage
