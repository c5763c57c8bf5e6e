"""Profiles: one YAML file per setting (smoke, toy, toy3, smol, colab, paper) in ``configs/``.

A profile is a set of sections; each section is a flat dataclass owned by the stage that uses it
(``exposure`` → ``orion_utils.exposure.ExposureConfig`` ...), or defined here when several stages
share it or when its stage's module imports torch: the training sections (``sft``, ``edit``,
``tailored``: ``TrainingConfig`` and the methods' extensions of it). Loading a profile imports no
torch, transformers or TRL. A profile may start from another (``base: toy``) and override some keys.
Unknown sections, unknown keys and wrong types are rejected with a message naming the key.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from .jsonl import _type_ok

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A profile names an unknown key or gives a value of the wrong type."""


@dataclass
class StudentConfig:
    model: str = "toy"  # "toy": build the local toy student; else a local path or a hub id
    prompt_template: str = "{question}"  # how a question becomes the user turn
    system_prompt: str = ""
    dtype: str = "auto"


@dataclass
class DataConfig:
    train_source: str = "toy"  # toy | s1k-1.1 | openr1-math-220k | limo | r1-samples
    train_dir: str = ""  # local copy of the trace dataset ("" → the hub)
    n_train: int = 200
    benchmarks: list = field(default_factory=lambda: ["toy_test", "toy_hard"])
    benchmark_dir: str = ""  # local benchmark JSONL files ("" → the hub)
    benchmark_limit: int = 0  # 0 → every item
    toy_test_size: int = 100
    toy_hard_size: int = 100
    seed: int = 0


@dataclass
class TeacherConfig:
    kind: str = "toy"  # toy | api | dataset | local
    n_per_question: int = 1
    error_rate: float = 0.1  # toy teacher only
    wording: str = "fixed"  # toy teacher only: fixed (one wording per CoT) | varied (drawn line by line, as R1 does)
    base_url: str = ""  # api
    model: str = ""  # api model name, or local model path
    api_key_env: str = ""  # name of the environment variable holding the key (never the key)
    concurrency: int = 8
    timeout_s: float = 600.0
    max_retries: int = 6
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 16384
    price_input_per_m: float = 0.0
    price_output_per_m: float = 0.0
    seed: int = 0
    gpu_memory_utilization: float = 0.0  # local teacher on vLLM: share of GPU memory; 0: vLLM's default
    max_model_len: int = 0  # local teacher on vLLM: context length; 0: the model's own (may not fit the GPU)
    # api: the model's context in tokens (prompt + output), for the prompt budget (orion_utils.budget);
    # 0: 131072, deepseek-reasoner's 128K. Prompts are counted approximately there (3 characters a token).
    max_context_tokens: int = 0


@dataclass
class GenerationConfig:
    backend: str = "auto"  # auto | transformers | vllm
    batch_size: int = 64  # transformers: prompts per batch (vLLM schedules its own batches)
    dtype: str = "auto"
    gpu_memory_utilization: float = 0.0  # vLLM: share of GPU memory it may take; 0: vLLM's default
    max_model_len: int = 0  # vLLM: context length (prompt + completion); 0: the model's own


# --- the training sections: `training.py` trains with them (EDIT's stage 2 and Tailored Learning's rounds
# through their trainers in `edit` and `tailored`), which imports torch and TRL; here they cost nothing.


@dataclass
class TrainingConfig:
    """Hyper-parameters of one SFT run. Flat and simple-typed: it is a profile section and a set of
    notebook parameters. ``sft`` and ``orion`` are trained with the same instance."""

    backend: str = "auto"  # auto | trl | unsloth
    use_lora: bool = False  # the toy student is tiny: full fine-tuning by default; real profiles set True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: str = "all-linear"  # or a comma-separated list: "q_proj,k_proj,v_proj,o_proj"
    load_in_4bit: bool = False  # QLoRA (CUDA + bitsandbytes; needs use_lora)
    learning_rate: float = 5e-4
    num_epochs: float = 2.0
    max_steps: int = -1  # > 0 overrides num_epochs
    batch_size: int = 16  # per device
    grad_accum: int = 1
    max_seq_len: int = 512  # prompt + assistant turn
    overlong: str = "truncate"  # examples longer than max_seq_len: truncate (they lose their end of
    #                             turn) | drop (real long-CoT runs: a cut CoT teaches never finishing)
    same_questions: bool = True  # every CoT-trained method trains on the same questions, decided once in stage 01
    #                              (collection's docstring: the rule); false: each keeps what its own data gives
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    lr_scheduler: str = "cosine"
    batching: str = "auto"  # auto | padding_free | length_grouped | padded  (auto: see training.resolve_batching)
    gradient_checkpointing: bool = False
    logging_steps: int = 5
    seed: int = 0
    # --- additions (flat as well) ---
    attn_implementation: str = "auto"  # auto (flash_attention_2 on CUDA when installed, else sdpa) | sdpa | eager | ...
    length_group_window: int = 64  # length_grouped: sort within windows of this many batches
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    save_steps: int = 0  # checkpoint every N optimizer steps; 0: at the end of every epoch; < 0: never
    keep_checkpoints: bool = False  # keep output_dir/checkpoints after the final model is written
    progress_bar: bool = False  # show the Trainer's progress bar / log table
    cpu_threads: int = 0  # CPU only: torch intra-op threads while training; 0: auto (device.cpu_threads_for:
    #                       1 for a local model under 200M parameters; else torch's)


@dataclass
class EditConfig(TrainingConfig):
    """EDIT's knobs (the ``edit`` section of a profile): the shared training config (``sft``'s fields,
    whose values a profile's ``edit`` section inherits from its ``sft`` section) plus EDIT's own.
    Stage 1 is ``train_sft`` with the ``sft`` section; stage 2 trains with this one."""

    pair_source: str = "auto"  # auto: teacher if the teacher can rectify/corrupt, else exposure | teacher | exposure
    max_pairs_per_problem: int = 4  # 0 → no limit
    alpha: float = 1.0  # weight of the chosen CoT's key tokens (paper: 1.0)
    beta: float = 0.025  # weight of the rejected CoT's key tokens (paper: 0.025)
    nll_guard: Optional[float] = 5.0  # skip rejected key tokens whose NLL is already above this; None: no guard
    # stage 2 defaults where they differ from sft's (a profile's values come from its sft section)
    num_epochs: float = 1.0
    batch_size: int = 2  # pairs per step (2× sequences in the forward pass)


@dataclass
class TailoredConfig(TrainingConfig):
    """Tailored Learning's knobs (the ``tailored`` section of a profile): the shared training config
    (``sft``'s fields, whose values a profile's ``tailored`` section inherits from its ``sft``
    section) plus Tailored Learning's own. Every round trains with it."""

    rounds: int = 2  # learning rounds after the round-0 exam (1: teacher rationales only)
    # exam
    exam_samples: int = 4  # answers per question (paper: 4)
    exam_temperature: float = 1.0  # paper: 1.0
    exam_top_p: float = 1.0
    exam_max_new_tokens: int = 1024
    # teacher
    teacher_samples: int = 2  # round-1 rationales per question; ≥ 2 gives the triplet its positives
    tailor_samples: int = 1  # rounds ≥ 2: tailored rationales per question the student got wrong
    max_wrong_shown: int = 4  # wrong rationales shown to the teacher per question
    # loss
    prefix_weight: float = 0.0  # MLE weight of the prompt ("prefix") tokens; rationale tokens get 1. Paper:
    #                             0.1, which cost the toy student 13 points of exam accuracy after round 1 (notebook 06)
    lam: float = 0.5  # λ, weight of the self-reflection (triplet) loss
    margin: float = 1.0  # triplet margin; distance is −cosine
    triplet_layer: int = -1  # hidden state fed to the triplet loss: -1 the last (post-norm), -2 the one below...
    # training defaults where they differ from sft's (a profile's values come from its sft section)
    num_epochs: float = 1.0
    batch_size: int = 4  # rationales per step, all of different questions


SECTIONS: dict[str, str] = {
    "student": "orion_utils.config:StudentConfig",
    "toy_student": "orion_utils.toy.student:ToyStudentConfig",
    "toy_domain": "orion_utils.toy.domain:ToyDomainConfig",
    "toy_pretrain": "orion_utils.toy.pretrain:PretrainConfig",
    "data": "orion_utils.config:DataConfig",
    "teacher": "orion_utils.config:TeacherConfig",
    "generation": "orion_utils.config:GenerationConfig",
    "exposure": "orion_utils.exposure:ExposureConfig",
    "reflection": "orion_utils.reflection:ReflectionConfig",
    "training": "orion_utils.config:TrainingConfig",
    "edit": "orion_utils.config:EditConfig",
    "tailored": "orion_utils.config:TailoredConfig",
    "evaluation": "orion_utils.evaluation:EvaluationConfig",
    "analysis": "orion_utils.analysis:AnalysisConfig",
    "long_cots": "orion_utils.lengths:LongCotsConfig",
}
TOP_LEVEL = {"profile": str, "description": str, "base": str, "seeds": list, "students": list}
# One training stack: a method's section is the shared training config plus the method's own fields,
# and the training values a profile gives in its `training` section hold for these sections too (each may
# still override them), so that only the method differs.
SECTION_BASES = {"edit": "training", "tailored": "training"}
# former section names: a profile that still uses one is told the new name
RENAMED = {"sft": "training", "warmup": "toy_pretrain"}


def section_class(name: str) -> type:
    module, cls = SECTIONS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_section(cls: type, values: dict, where: str) -> Any:
    """Make a section dataclass from a dict, naming any unknown key or wrongly typed value."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where} should be a mapping of keys to values, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown key '{where}.{key}' (known keys: {', '.join(known)})")
        if not _type_ok(value, hints[key]):
            raise ConfigError(
                f"'{where}.{key}' should be {getattr(hints[key], '__name__', hints[key])}, "
                f"got {type(value).__name__} {value!r}"
            )
    return cls(**values)


@dataclass
class Profile:
    name: str
    description: str
    seeds: list
    sections: dict  # section name → dataclass instance
    # how it was loaded, so that a notebook can load the same profile: load_profile(source, overrides)
    source: str = ""  # the profile's name, or the absolute path of its YAML file when given as a file
    overrides: dict = field(default_factory=dict)
    students: list = field(default_factory=list)  # several backbones: one pipeline run per entry (student_runs)

    def __getattr__(self, item: str) -> Any:
        sections = self.__dict__.get("sections", {})
        if item in sections:
            return sections[item]
        raise AttributeError(item)

    def section_dict(self, name: str) -> dict:
        return dataclasses.asdict(self.sections[name])

    def to_dict(self) -> dict:
        return {
            "profile": self.name,
            "description": self.description,
            "seeds": list(self.seeds),
            **({"students": copy.deepcopy(self.students)} if self.students else {}),
            **{name: dataclasses.asdict(sec) for name, sec in self.sections.items()},
        }


def _deep_merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _is_file(name_or_path: Union[str, Path]) -> bool:
    path = Path(name_or_path)
    return path.suffix in (".yaml", ".yml") and path.exists()


def _profile_path(name_or_path: Union[str, Path]) -> Path:
    path = Path(name_or_path)
    if _is_file(path):
        return path
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"no profile {str(name_or_path)!r}; known profiles: {', '.join(known)}")


def _raw_profile(name_or_path: Union[str, Path], seen: tuple = ()) -> dict:
    path = _profile_path(name_or_path)
    if path in seen:
        raise ConfigError(f"profile {path.name} inherits from itself")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path.name} should be a mapping of sections")
    name = raw.get("profile", path.stem)
    base = raw.pop("base", None)
    if base:
        raw = _deep_merge(_raw_profile(base, seen + (path,)), raw)
    raw["profile"] = name
    return raw


# Local paths a profile may give relative to the checkout (e.g. ``../shared/data/...``): resolved here,
# so that they mean the same from the repository root, from notebooks/ (papermill's cwd) and from tests.
PATH_KEYS = (("data", "train_dir"), ("data", "benchmark_dir"), ("long_cots", "data_dir"))
CHECKOUT_DIR = CONFIG_DIR.parent


def _resolve_paths(sections: dict) -> None:
    keys = list(PATH_KEYS)
    student = sections.get("student")
    if student is not None and str(getattr(student, "model", "")).lower().endswith(".gguf"):
        keys.append(("student", "model"))
    for section, key in keys:
        obj = sections.get(section)
        value = getattr(obj, key, "") if obj is not None else ""
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            candidate = CHECKOUT_DIR / value
            if candidate.exists() or value.startswith(("./", "../")):
                setattr(obj, key, str(candidate.resolve()))


# (section, its max_new_tokens field) of every section that generates, beside the context it generates in
GENERATING_SECTIONS = (("exposure", "max_new_tokens"), ("reflection", "max_new_tokens"),
                       ("evaluation", "max_new_tokens"), ("tailored", "exam_max_new_tokens"))


def check_token_budgets(sections: dict) -> None:
    """Every generating section leaves room for a prompt: its max_new_tokens below the context it runs in
    (``generation.max_model_len`` for the student's sections; a teacher's ``max_model_len`` or
    ``max_context_tokens`` for ``teacher.max_tokens``). A context left at 0 (the model's own) is checked
    when the engine opens (``orion_utils.budget``)."""
    problems = []
    context = getattr(sections.get("generation"), "max_model_len", 0) or 0
    for name, key in GENERATING_SECTIONS:
        new = getattr(sections.get(name), key, 0) or 0
        if context and new >= context:
            problems.append(f"{name}.{key}={new} leaves no room for a prompt in generation.max_model_len={context}")
    teacher = sections.get("teacher")
    for key in ("max_model_len", "max_context_tokens"):
        limit = getattr(teacher, key, 0) or 0
        if limit and (getattr(teacher, "max_tokens", 0) or 0) >= limit:
            problems.append(f"teacher.max_tokens={teacher.max_tokens} leaves no room for a prompt in "
                            f"teacher.{key}={limit}")
    if problems:
        raise ConfigError("; ".join(problems) + " (max_new_tokens must be below the context length)")


def load_profile(name_or_path: Union[str, Path], overrides: Optional[dict] = None) -> Profile:
    """Load a profile by name (``configs/<name>.yaml``) or path, apply overrides, validate.

    Every knob of a run comes from here: ``orion run`` and each notebook load the same profile with the
    same overrides (a notebook's parameters are only the profile and the overrides)."""
    raw = _raw_profile(name_or_path)
    if overrides:
        raw = _deep_merge(raw, overrides)
    sections = {}
    for key, value in raw.items():
        if key in TOP_LEVEL:
            if not isinstance(value, TOP_LEVEL[key]):
                raise ConfigError(f"'{key}' should be {TOP_LEVEL[key].__name__}, got {type(value).__name__}")
            continue
        if key in RENAMED:
            raise ConfigError(f"section '{key}' is now called '{RENAMED[key]}': rename it in the profile")
        if key not in SECTIONS:
            raise ConfigError(
                f"unknown section '{key}' (known: {', '.join(sorted(set(SECTIONS) | set(TOP_LEVEL)))})"
            )
        sections[key] = build_section(section_class(key), value or {}, key)
    for name, base in SECTION_BASES.items():
        inherited = raw.get(base) or {}
        if isinstance(inherited, dict) and inherited:
            sections[name] = build_section(section_class(name), {**inherited, **(raw.get(name) or {})}, name)
    for name in SECTIONS:  # sections a profile leaves out take their defaults
        if name not in sections:
            sections[name] = section_class(name)()
    _resolve_paths(sections)
    check_token_budgets(sections)
    students = list(raw.get("students") or [])
    student_runs(students)  # a malformed entry fails here, when the profile loads
    return Profile(
        name=str(raw.get("profile")),
        description=str(raw.get("description", "")),
        seeds=list(raw.get("seeds", [0])),
        sections=sections,
        source=str(Path(name_or_path).resolve()) if _is_file(name_or_path) else str(name_or_path),
        overrides=copy.deepcopy(dict(overrides or {})),
        students=students,
    )


def _student_name(reference: str) -> str:
    """A folder name for a student reference: its last path component, other characters as '-'."""
    last = reference.rstrip("/").split("/")[-1] or reference
    last = last[: -len(".gguf")] if last.lower().endswith(".gguf") else last
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in last)


def student_runs(students: list) -> list[tuple[str, dict]]:
    """A profile's top-level ``students`` as (name, overrides) pairs, one pipeline run each.

    An entry is a student model reference (``student.model``: "toy", a hub id, a local path, a .gguf
    file), or a mapping with a ``name`` and the sections it changes, e.g.
    ``{name: toy-small, toy_student: {hidden_size: 64}}`` (its ``student`` section, if any, included).
    Each run's overrides also set ``students: []``, so a student's run is an ordinary one-student run."""
    out: list[tuple[str, dict]] = []
    for i, entry in enumerate(students):
        if isinstance(entry, str) and entry:
            name, extra = _student_name(entry), {"student": {"model": entry}}
        elif isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry["name"]:
            name, extra = _student_name(entry["name"]), {k: v for k, v in entry.items() if k != "name"}
            bad = [k for k, v in extra.items() if k not in SECTIONS or not isinstance(v, dict)]
            if bad:
                raise ConfigError(f"students[{i}]: {', '.join(map(repr, bad))} is not a section of values "
                                  f"(an entry is a model reference, or a mapping with 'name' and sections)")
        else:
            raise ConfigError(f"students[{i}] should be a model reference or a mapping with a 'name', got {entry!r}")
        if name in {n for n, _ in out}:
            raise ConfigError(f"students: two entries are named {name!r}; give each a distinct 'name'")
        out.append((name, {**extra, "students": []}))
    return out
