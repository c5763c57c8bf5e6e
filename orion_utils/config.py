"""Profiles: one YAML file per setting (smoke, toy, toy3, smol, colab, paper) in ``configs/``.

A profile is a set of sections; each section is a flat dataclass owned by the stage that uses it
(``exposure`` → ``orion_utils.exposure.ExposureConfig`` ...), or defined here when several stages
share it or when its stage's module imports torch: the training sections (``training``, ``edit``,
``tailored``: ``TrainingConfig`` and the methods' extensions of it). ``SECTIONS`` names each section's
class itself, imported here: the stage sections whose module imports this one are ``orion_utils.sections``'s
(each stage module imports its own from there). Loading a profile imports no
torch, transformers or TRL. A profile may start from another (``base: toy``) and override some keys.
Unknown sections, unknown keys, wrong types, values outside a knob's choices or range (each section's
``__post_init__``, ``orion_utils.knobs``) and knobs that do not fit together (``cross_section_problems``) are
rejected before any stage runs, in one ``ConfigError`` that names every such key, one line each.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from .device import DTYPE_CHOICES as DTYPES
from .jsonl import matches_type
from .knobs import SAVED_CHUNKS, ConfigError, knob, validate
from .lengths import LongCotsConfig
from .sections import AnalysisConfig, EvaluationConfig, ExposureConfig, PretrainConfig, ReflectionConfig
from .toy.domain import ToyDomainConfig
from .toy.student import ToyStudentConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

# The allowed values of the enum knobs declared here (each read by the check in ``__post_init__``, the
# help text and the stage that acts on it: training, edit, collection, generation import them from here).
TEACHER_KINDS = ("toy", "api", "dataset", "local")
FEEDBACK_TEACHER_KINDS = ("toy", "api", "local")  # teacher kinds whose teacher can rectify and corrupt (edit)
PROMPTED_TEACHER_KINDS = ("api", "local")  # teacher kinds that are sent the texts of teachers.prompts
TEACHER_WORDINGS = ("fixed", "varied")
GENERATION_BACKENDS = ("auto", "transformers", "hf", "vllm")  # hf: transformers
TRAINING_BACKENDS = ("auto", "trl", "unsloth")
BATCHING_MODES = ("auto", "padding_free", "length_grouped", "padded")
OVERLONG_MODES = ("truncate", "drop")
PAIR_SOURCES = ("auto", "exposure", "teacher")
# where TRL sends the loss curves besides our own loss_history.json (transformers' reporting integrations)
REPORT_TO = ("none", "tensorboard", "wandb", "trackio", "mlflow", "comet_ml", "clearml", "dvclive", "swanlab",
             "neptune", "azure_ml", "codecarbon", "dagshub", "flyte", "kubeflow", "all")


@dataclass
class StudentConfig:
    model: str = knob(
        "toy", "\"toy\": build the local toy student; else a local path, a hub id or a .gguf file")
    prompt_template: str = knob("{question}", "how a question becomes the user turn ({question} is replaced)")
    system_prompt: str = knob("", "system turn of every student prompt (\"\": none)")
    dtype: str = knob(
        "auto", "the student's weights when trained/loaded: auto picks bf16/fp16 on CUDA, float32 elsewhere", choices=DTYPES)

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class DataConfig:
    train_source: str = knob(
        "toy", "where the training questions (and a dataset teacher's CoTs) come from: toy | s1k-1.1 | openr1-math-220k | limo | r1-samples")
    train_dir: str = knob("", "local copy of the trace dataset (\"\": the hub)")
    n_train: int = knob(200, "training questions", ge=1)
    benchmarks: list = knob(
        factory=lambda: ["toy_test", "toy_hard"], help="benchmarks evaluated (toy_test, toy_hard, gsm8k, math500, aime24, ...)")
    benchmark_dir: str = knob("", "local benchmark JSONL files (\"\": the hub)")
    benchmark_limit: int = knob(0, "items per benchmark (0: every item)", ge=0)
    toy_test_size: int = knob(100, "problems in the toy test benchmark", ge=1)
    toy_hard_size: int = knob(100, "problems in the toy hard benchmark", ge=1)
    seed: int = knob(0, "seed of the question sampling and the toy benchmarks")

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class TeacherConfig:
    kind: str = knob(
        "toy", "who writes the CoTs: toy (the toy domain), api (an OpenAI-compatible server), dataset (existing traces), local (vLLM)", choices=TEACHER_KINDS)
    n_per_question: int = knob(1, "teacher CoTs sampled per question", ge=1)
    error_rate: float = knob(0.1, "toy teacher only: share of CoTs with a wrong step", ge=0.0, le=1.0)
    wording: str = knob(
        "fixed", "toy teacher only: fixed (one wording per CoT) or varied (drawn line by line, as R1 does)", choices=TEACHER_WORDINGS)
    base_url: str = knob("", "api: the server's base URL")
    model: str = knob("", "api: the model name; local: the model path")
    api_key_env: str = knob("", "api: name of the environment variable holding the key (never the key)",
                            bookkeeping="where the key is read from, not what is asked")
    concurrency: int = knob(8, "api: requests in flight at once", ge=1,
                            bookkeeping="how many requests at once; each request and its reply are the same")
    timeout_s: float = knob(600.0, "api: seconds before a request is retried", gt=0,
                            bookkeeping="when a request is retried; a failed one is recorded and sent again later")
    max_retries: int = knob(6, "api: retries of a failed request", ge=0,
                            bookkeeping="how often a request is retried; a failed one is recorded and sent again later")
    temperature: float = knob(0.6, "teacher sampling temperature", ge=0.0)
    top_p: float = knob(0.95, "teacher nucleus sampling", gt=0.0, le=1.0)
    max_tokens: int = knob(16384, "longest teacher output, in tokens", ge=1)
    price_input_per_m: float = knob(0.0, "api: price of a million prompt tokens (for the cost line)", ge=0.0)
    price_output_per_m: float = knob(0.0, "api: price of a million output tokens (for the cost line)", ge=0.0)
    price_date: str = knob(
        "", "api: the date (YYYY-MM-DD) the prices were read from the provider's pricing page (for the report)",
        bookkeeping="the report says it; no stage reads it")
    seed: int = knob(0, "teacher sampling seed")
    samples_per_seed: bool = knob(
        False, "api: each seed of a run pays for its own teacher samples (the seed enters the cache key); "
        "false: every seed and student of a run shares one paid reply per request (three seeds pay once)")
    gpu_memory_utilization: float = knob(
        0.0, "local teacher on vLLM: share of GPU memory (0: vLLM's default)", ge=0.0, le=1.0)
    max_model_len: int = knob(
        0, "local teacher on vLLM: context length (0: the model's own; may not fit the GPU)", ge=0)
    # api: the model's context in tokens (prompt + output), for the prompt budget (orion_utils.budget);
    # 0: 131072, deepseek-reasoner's 128K. Prompts are counted approximately there (3 characters a token).
    max_context_tokens: int = knob(
        0, "api: the model's context in tokens, for the prompt budget (0: 131072)", ge=0)

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class GenerationConfig:
    backend: str = knob(
        "auto", "student generation engine: auto (vLLM where installed and CUDA is there, else transformers)", choices=GENERATION_BACKENDS)
    batch_size: int = knob(64, "transformers: most sequences per batch (vLLM schedules its own batches)", ge=1)
    # the KV cache grows with both: a batch of batch_size long generations would not fit a 16 GB card
    batch_tokens: int = knob(
        0, "transformers: most tokens per batch, prompt + max_new_tokens per sequence (0: batch_size x 2048)", ge=0)
    dtype: str = knob(
        "auto", "dtype the student generates and is scored in (auto: bf16/fp16 on CUDA, float32 elsewhere)",
        choices=DTYPES)
    gpu_memory_utilization: float = knob(
        0.0, "vLLM: share of GPU memory it may take (0: vLLM's default)", ge=0.0, le=1.0)
    max_model_len: int = knob(0, "vLLM: context length, prompt + completion (0: the model's own)", ge=0)

    def __post_init__(self) -> None:
        validate(self)


# How the stages that generate or train spread their work over devices (``orion run --gpus N``). The results do
# not depend on it (docs/parallel.md: what is exact, what holds within float tolerance), so no knob here is in
# a fingerprint: a run under another N finds its finished stages up to date.
PARALLEL_TRAINING = ("ddp", "zero2", "zero3", "fsdp2")  # configs/accelerate/<mode>.yaml
PARALLEL_GENERATION = ("data", "tensor")
SAME_WHATEVER_N = "how many devices share the work, not what it writes (docs/parallel.md)"


@dataclass
class ParallelConfig:
    gpus: int = knob(
        1, "devices the generating and training stages use: GPUs, or processes sharing the cores on a machine "
        "without one (a CPU rehearsal); 1: one process, as before", ge=1, bookkeeping=SAME_WHATEVER_N)
    training: str = knob(
        "ddp", "how training spreads over the devices: ddp (a whole copy on each), zero2, zero3 or fsdp2 "
        "(sharded, for a student that does not fit one device)", choices=PARALLEL_TRAINING,
        bookkeeping=SAME_WHATEVER_N)
    generation: str = knob(
        "data", "how generation spreads: data (one engine per device, the prompts split between them) or tensor "
        "(one vLLM engine over all devices, for a model that does not fit one)", choices=PARALLEL_GENERATION,
        bookkeeping=SAME_WHATEVER_N)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def active(self) -> bool:
        """More than one device: the stages spread their work."""
        return self.gpus > 1


def split_global_batch(batch_size: int, grad_accum: int, ranks: int) -> tuple[int, int]:
    """``(sequences per device per micro-batch, micro-batches each rank accumulates)`` that keep a training
    section's global batch, ``batch_size`` x ``grad_accum`` sequences a step, on ``ranks`` devices: the ranks
    share the accumulation when ``ranks`` divides ``grad_accum`` (each a whole micro-batch), else each
    micro-batch when it divides ``batch_size``. Otherwise the global batch cannot stay the profile's:
    ``ValueError`` naming both knobs."""
    if ranks <= 1:
        return batch_size, grad_accum
    if grad_accum % ranks == 0:
        return batch_size, grad_accum // ranks
    if batch_size % ranks == 0:
        return batch_size // ranks, grad_accum
    raise ValueError(f"{ranks} devices cannot share a step of batch_size={batch_size} x grad_accum={grad_accum} "
                     f"sequences: one of the two must be a multiple of {ranks} (parallel.gpus), so that the "
                     "global batch stays the profile's")


# --- the training sections: `training` trains with them (EDIT's stage 2 and Tailored Learning's rounds
# through their trainers in `edit` and `tailored_training`), which imports torch and TRL; here they cost nothing.


@dataclass
class TrainingConfig:
    """Hyper-parameters of one SFT run. Flat and simple-typed: it is a profile section and a set of
    notebook parameters. ``sft`` and ``orion`` are trained with the same instance."""

    backend: str = knob(
        "auto", "training stack: auto (Unsloth where installed and CUDA is there, else TRL)", choices=TRAINING_BACKENDS)
    use_lora: bool = knob(False, "train LoRA adapters instead of every weight")
    lora_r: int = knob(16, "LoRA rank", ge=1)
    lora_alpha: int = knob(32, "LoRA scaling alpha", gt=0)
    lora_dropout: float = knob(0.0, "LoRA dropout", ge=0.0, le=1.0)
    lora_target_modules: str = knob(
        "all-linear", "LoRA targets: all-linear or a comma-separated list (q_proj,k_proj,...)")
    load_in_4bit: bool = knob(False, "QLoRA: 4-bit base weights (CUDA + bitsandbytes; needs use_lora)")
    merge_lora: bool = knob(
        False, "with use_lora: save the merged model instead of the LoRA adapter (vLLM, PEFT and the next stage load an adapter)")
    learning_rate: float = knob(5e-4, "peak learning rate", ge=0.0)
    num_epochs: float = knob(2.0, "epochs over the training set (max_steps > 0 overrides)", gt=0.0)
    max_steps: int = knob(-1, "optimizer steps; > 0 overrides num_epochs, -1: by epochs", ge=-1)
    batch_size: int = knob(16, "examples per device per step", ge=1)
    grad_accum: int = knob(1, "gradient accumulation steps", ge=1)
    max_seq_len: int = knob(512, "longest training sequence, prompt + assistant turn, in tokens", ge=1)
    overlong: str = knob(
        "truncate", "examples longer than max_seq_len: truncate (lose their end of turn) or drop", choices=OVERLONG_MODES)
    # drop for real long-CoT runs: a cut CoT teaches never finishing
    same_questions: bool = knob(
        True, "every CoT-trained method trains on the same questions (decided in stage 01)")
    # (collection's docstring: the rule); false: each keeps what its own data gives
    warmup_ratio: float = knob(0.05, "share of the steps warming the learning rate up", ge=0.0, le=1.0)
    weight_decay: float = knob(0.0, "AdamW weight decay", ge=0.0)
    lr_scheduler: str = knob(
        "cosine", "learning-rate schedule (a transformers scheduler name: cosine, linear, constant, ...)")
    batching: str = knob(
        "auto", "how sequences are batched (auto: see training.resolve_batching)", choices=BATCHING_MODES)
    gradient_checkpointing: bool = knob(
        False, "recompute activations in the backward pass (less memory, slower)")
    logging_steps: int = knob(5, "log the loss every this many steps", ge=1,
                              bookkeeping="how often the loss is logged, not what is trained")
    report_to: str = knob(
        "none", "also send the logged losses to a tracker (tensorboard: models/<m>/runs/; wandb, trackio: "
        "their own settings); none: our machines are offline; bookkeeping, not in any fingerprint", choices=REPORT_TO,
        bookkeeping="where the loss curves are also sent")
    seed: int = knob(0, "training seed")
    # --- additions (flat as well) ---
    attn_implementation: str = knob(
        "auto", "attention kernel: auto (flash_attention_2 on CUDA when installed, else sdpa) | sdpa | eager | ...")
    length_group_window: int = knob(64, "length_grouped: sort within windows of this many batches", ge=1)
    max_grad_norm: float = knob(1.0, "gradient clipping norm", ge=0.0)
    optim: str = knob("adamw_torch", "optimizer (a transformers optim name)")
    save_steps: int = knob(0, "checkpoint every N optimizer steps; 0: every epoch; < 0: never",
                           bookkeeping="when checkpoints are saved, not what is trained")
    keep_checkpoints: bool = knob(False, "keep output_dir/checkpoints after the final model is written",
                                  bookkeeping="whether checkpoints are kept after the final model is written")
    progress_bar: bool = knob(False, "show the Trainer's progress bar and log table",
                              bookkeeping="what is printed while training")
    cpu_threads: int = knob(
        0, "CPU only: torch threads while training (0: auto, 1 for a small local model)", ge=0,
        bookkeeping="how fast a CPU trains")
    dtype: str = knob(
        "auto", "compute dtype of training: auto (bf16 on CUDA >= 8.0, fp16 on older CUDA, float32 on a CPU)",
        choices=DTYPES)
    # auto: device.cpu_threads_for, 1 for a local model under 200M parameters; else torch's

    def __post_init__(self) -> None:
        four_bit = ["load_in_4bit: QLoRA trains adapters; set use_lora: true"] if self.load_in_4bit and not self.use_lora else []
        validate(self, four_bit)


@dataclass
class EditConfig(TrainingConfig):
    """EDIT's knobs (the ``edit`` section of a profile): the shared training config (``training``'s fields,
    whose values a profile's ``edit`` section inherits from its ``training`` section) plus EDIT's own.
    Stage 1 is ``train_sft`` with the ``training`` section; stage 2 trains with this one."""

    pair_source: str = knob(
        "auto", "where EDIT's dual CoT pairs come from: auto (teacher if it can rectify/corrupt, else exposure)", choices=PAIR_SOURCES)
    max_pairs_per_problem: int = knob(4, "dual pairs kept per problem (0: no limit)", ge=0)
    alpha: float = knob(1.0, "weight of the chosen CoT's key tokens (paper: 1.0)", ge=0.0)
    beta: float = knob(0.025, "weight of the rejected CoT's key tokens (paper: 0.025)", ge=0.0)
    nll_guard: Optional[float] = knob(
        5.0, "skip rejected key tokens whose NLL is already above this (None: no guard)", gt=0.0)
    max_key_share: float = knob(
        0.5, "drop a pair whose correct CoT has more than this share of its tokens marked key (1: keep all)",
        ge=0.0, le=1.0)
    # ours (Dai et al. drop no pair): above half, a pair is no longer two near-copies differing at a
    # few steps, and stage 2 weights most of the CoT like SFT. Measured in the toy student's tokenizer (400 toy
    # questions, the toy profile's teacher): its corrupted / rectified pairs median 25% / 15%, p90 32% / 21%, max
    # 43%; exposure pairs with a stand-in student attempt (its own wording, one slip) median 23%, p90 31%: none
    # above 0.5. Real R1 CoTs against SmolLM2's wrong attempts: median 98%, p10 96.5% (notebook 05): all above.
    # stage 2 defaults where they differ from training's (a profile's values come from its training section)
    num_epochs: float = knob(
        1.0, "stage-2 epochs (the training section's value when the profile gives one)", gt=0.0)
    batch_size: int = knob(2, "pairs per step (2 sequences each in the forward pass)", ge=1)


@dataclass
class TailoredConfig(TrainingConfig):
    """Tailored Learning's knobs (the ``tailored`` section of a profile): the shared training config
    (``training``'s fields, whose values a profile's ``tailored`` section inherits from its ``training``
    section) plus Tailored Learning's own. Every round trains with it."""

    rounds: int = knob(2, "learning rounds after the round-0 exam (1: teacher rationales only)", ge=1)
    # exam
    exam_samples: int = knob(4, "exam answers per question (paper: 4)", ge=1)
    exam_temperature: float = knob(1.0, "exam sampling temperature (paper: 1.0)", ge=0.0)
    exam_top_p: float = knob(1.0, "exam nucleus sampling", gt=0.0, le=1.0)
    exam_max_new_tokens: int = knob(1024, "longest exam answer, in tokens", ge=1)
    # each finished chunk of an exam is saved (round_<r>/exam.partial.jsonl): a crash loses at most one
    exam_chunk_questions: int = knob(32, "exam questions per generation call; each finished chunk is saved", ge=1,
                                     bookkeeping=SAVED_CHUNKS)
    # teacher
    teacher_samples: int = knob(
        2, "round-1 rationales per question (>= 2 gives the triplet its positives)", ge=1)
    tailor_samples: int = knob(1, "rounds >= 2: tailored rationales per question the student got wrong", ge=1)
    max_wrong_shown: int = knob(4, "wrong rationales shown to the teacher per question", ge=1)
    # loss
    prefix_weight: float = knob(
        0.0, "MLE weight of the prompt tokens; rationale tokens get 1 (paper: 0.1)", ge=0.0)
    # the paper's prefix_weight 0.1 cost the toy student 13 points of exam accuracy after round 1 (docs/lab_record.md)
    lam: float = knob(0.5, "lambda, weight of the self-reflection (triplet) loss (paper: 0.5)", ge=0.0)
    margin: float = knob(1.0, "triplet margin; the distance is -cosine", ge=0.0)
    triplet_layer: int = knob(
        -1, "hidden state fed to the triplet loss: -1 the last (post-norm), -2 the one below, ...")
    # training defaults where they differ from training's (a profile's values come from its training section)
    num_epochs: float = knob(
        1.0, "epochs per round (the training section's value when the profile gives one)", gt=0.0)
    batch_size: int = knob(4, "rationales per step, all of different questions", ge=1)


SECTIONS: dict[str, type] = {
    "student": StudentConfig,
    "toy_student": ToyStudentConfig,
    "toy_domain": ToyDomainConfig,
    "toy_pretrain": PretrainConfig,
    "data": DataConfig,
    "teacher": TeacherConfig,
    "generation": GenerationConfig,
    "exposure": ExposureConfig,
    "reflection": ReflectionConfig,
    "training": TrainingConfig,
    "edit": EditConfig,
    "tailored": TailoredConfig,
    "evaluation": EvaluationConfig,
    "analysis": AnalysisConfig,
    "long_cots": LongCotsConfig,
    "parallel": ParallelConfig,
}
TOP_LEVEL = {"profile": str, "description": str, "base": str, "seeds": list, "students": list}
# One training stack: a method's section is the shared training config plus the method's own fields,
# and the training values a profile gives in its `training` section hold for these sections too (each may
# still override them), so that only the method differs.
SECTION_BASES = {"edit": "training", "tailored": "training"}
# former section names: a profile that still uses one is told the new name
RENAMED = {"sft": "training", "warmup": "toy_pretrain"}


def section_class(name: str) -> type:
    """The dataclass of section ``name`` (``SECTIONS[name]``)."""
    return SECTIONS[name]


def build_section(cls: type, values: dict, where: str) -> Any:
    """Make a section dataclass from a dict. One ``ConfigError`` names every unknown key, wrongly typed
    value and value outside its choices or range (the section's ``__post_init__``), one line each."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where} should be a mapping of keys to values, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    problems = []
    for key, value in values.items():
        if key not in known:
            problems.append(f"unknown key '{where}.{key}' (known keys: {', '.join(known)})")
        elif not matches_type(value, hints[key]):
            problems.append(f"'{where}.{key}' should be {getattr(hints[key], '__name__', hints[key])}, "
                            f"got {type(value).__name__} {value!r}")
    if problems:
        raise ConfigError("\n".join(problems), problems)
    try:
        return cls(**values)
    except ConfigError as exc:  # the section's own checks: name the section in each line
        lines = [f"{where}.{p}" for p in exc.problems]
        raise ConfigError("\n".join(lines), lines) from None


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


def deep_merge(base: dict, override: dict) -> dict:
    """``base`` with ``override`` merged in, nested dicts key by key (copies: neither is changed)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
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
        raw = deep_merge(_raw_profile(base, seen + (path,)), raw)
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
    problems = token_budget_problems(sections)
    if problems:
        raise ConfigError("; ".join(problems) + " (max_new_tokens must be below the context length)", problems)


def token_budget_problems(sections: dict) -> list[str]:
    """``check_token_budgets``'s problems, one line each."""
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
    return problems


def cross_section_problems(sections: dict) -> list[str]:
    """Checks across sections that need no tokenizer (one line each): token budgets, and knobs that ask
    something of another section (the teacher a method needs, the student a reflector works for)."""
    problems = token_budget_problems(sections)
    kind = getattr(sections.get("teacher"), "kind", "toy")
    methods = getattr(sections.get("evaluation"), "methods", []) or []
    for key in ("reflector", "compare"):
        if getattr(sections.get("reflection"), key, "") == "student" and kind != "toy":
            problems.append(f"reflection.{key}: 'student' continues a rewrite begun by the toy domain's rules, "
                            f"which read the toy teacher's CoTs, not teacher.kind={kind!r}; use 'llm'")
    if getattr(sections.get("edit"), "pair_source", "") == "teacher" and kind not in FEEDBACK_TEACHER_KINDS:
        problems.append(f"edit.pair_source: 'teacher' needs a teacher that can rectify and corrupt "
                        f"(teacher.kind one of {FEEDBACK_TEACHER_KINDS}), not teacher.kind={kind!r}; use 'auto'")
    tailored = sections.get("tailored")
    if "tailored" in methods and kind == "dataset" and getattr(tailored, "rounds", 1) >= 2:
        problems.append("evaluation.methods: 'tailored' with tailored.rounds >= 2 asks the teacher for tailored "
                        "rationales, which teacher.kind='dataset' cannot write; set tailored.rounds: 1, "
                        "another teacher.kind, or leave 'tailored' out")
    if getattr(sections.get("analysis"), "judge", False) and kind not in PROMPTED_TEACHER_KINDS:
        problems.append(f"analysis.judge: needs a prompted teacher (teacher.kind 'api' or 'local'), "
                        f"not teacher.kind={kind!r}")
    ranks = getattr(sections.get("parallel"), "gpus", 1)
    # each trainer a run trains keeps its global batch on N devices (Tailored Learning, whose micro-batches are
    # not cut, trains in one process when the ranks cannot share its accumulation: training.launch.split_batch)
    for name in ("training", "edit"):
        section = sections.get(name)
        if ranks > 1 and section is not None and (name == "training" or name in methods):
            try:
                split_global_batch(section.batch_size, section.grad_accum, ranks)
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
    if getattr(sections.get("reflection"), "judge", False) and kind not in PROMPTED_TEACHER_KINDS:
        problems.append(f"reflection.judge: the judge of the rewrites needs a prompted teacher (teacher.kind 'api' "
                        f"or 'local'), not teacher.kind={kind!r}")
    return problems


def _build_sections(raw: dict) -> tuple[dict, list[str]]:
    """The sections a raw profile gives, and every problem found in them (one line each)."""
    sections, problems = {}, []

    def build(name: str, values: Any) -> None:
        try:
            sections[name] = build_section(section_class(name), values, name)
        except ConfigError as exc:
            problems.extend(exc.problems)

    for key, value in raw.items():
        if key in TOP_LEVEL:
            if not isinstance(value, TOP_LEVEL[key]):
                problems.append(f"'{key}' should be {TOP_LEVEL[key].__name__}, got {type(value).__name__}")
        elif key in RENAMED:
            problems.append(f"section '{key}' is now called '{RENAMED[key]}': rename it in the profile")
        elif key not in SECTIONS:
            problems.append(f"unknown section '{key}' (known: {', '.join(sorted(set(SECTIONS) | set(TOP_LEVEL)))})")
        elif key not in SECTION_BASES:
            build(key, value or {})
    for name, base in SECTION_BASES.items():
        inherited = raw.get(base) or {}
        own = raw.get(name) or {}
        if not isinstance(own, dict):
            build(name, own)
        elif isinstance(inherited, dict) and inherited:
            before = len(problems)
            build(name, {**inherited, **own})
            # a value it inherits is reported once, on the base section
            stated = tuple(f"{base}.{k}:" for k in inherited if k not in own)
            repeated = tuple(f"{name}.{k}:" for k in inherited if k not in own)
            problems[before:] = [p for p in problems[before:] if not (
                p.startswith(repeated) and any(q.startswith(stated) for q in problems[:before]))]
        elif name in raw:
            build(name, own)
    return sections, problems


def load_profile(name_or_path: Union[str, Path], overrides: Optional[dict] = None) -> Profile:
    """Load a profile by name (``configs/<name>.yaml``) or path, apply overrides, validate.

    Every knob of a run comes from here: ``orion run`` and each notebook load the same profile with the
    same overrides (a notebook's parameters are only the profile and the overrides)."""
    raw = _raw_profile(name_or_path)
    if overrides:
        raw = deep_merge(raw, overrides)
    sections, problems = _build_sections(raw)
    for name in SECTIONS:  # sections a profile leaves out take their defaults
        if name not in sections:
            sections[name] = section_class(name)()
    if not problems:  # cross-section checks read every section as built
        problems = cross_section_problems(sections)
    if problems:
        raise ConfigError(f"profile {raw.get('profile')!r}: {len(problems)} problem(s):\n  " + "\n  ".join(problems),
                          problems)
    _resolve_paths(sections)
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
