"""Generation backends behind one interface: transformers (everywhere) and vLLM (CUDA when installed; its CPU build on request).

    gen = load_generator("outputs/toy/models/base")   # prints the one line saying which backend ran
    outs = gen.generate(questions, SamplingConfig(n=4, temperature=0.8, top_p=0.9, max_new_tokens=512),
                        prompt_template=DEFAULT_PROMPT_TEMPLATE)
    outs[i][j].text, outs[i][j].n_tokens, outs[i][j].finish_reason
    gen.close()

Prompts: a ``str`` is a question, rendered with ``orion_utils.chat.build_messages`` and the tokenizer's
chat template (``add_generation_prompt=True``), exactly as ``chat.prompt_text`` does; a ``list[dict]``
is a ready message list. The rendered text is tokenized with ``add_special_tokens=False`` (the chat
template already carries any BOS), the same way ``chat.encode_for_training`` does, so generation
sees the very tokens training saw. ``assistant_prefix`` starts the answer: its tokens (tokenized on their
own, as a training answer is) follow the assistant header, the model continues them, and each
``Generation`` holds the continuation only.

Both backends honour the same ``SamplingConfig``: ``temperature == 0`` is greedy (one generation per
prompt, copied ``n`` times: n identical greedy runs would be wasted work); otherwise nucleus sampling
with ``temperature``/``top_p`` and no top-k or repetition penalty, whatever the checkpoint's
``generation_config.json`` suggests (so the two backends sample from the same distribution).
Generation stops at any end-of-turn token: the tokenizer's EOS, the model's generation-config EOS and
the token that ends an assistant turn in the chat template (``end_of_turn_token_ids``).

Reproducibility: the transformers backend cuts a call's prompts into its batch plan (``batch_plan``, over
the whole call) and samples batch ``b`` with its own seed, ``transformers_backend.batch_seed(SamplingConfig.seed,
b)``, in a forked torch RNG (the caller's global RNG is left untouched): a batch's samples depend only on
the call's prompts, ``SamplingConfig``, ``batch_size``, ``batch_tokens`` and the device, not on the batches
run before it nor on the process that runs it, so the plan's batches can be shared between processes
(``parallel_generation``) and give the same samples. Changing a bound, ``max_new_tokens`` (a batch's token
cost) or the prompt set changes the plan, hence which sample a prompt gets (greedy output does not
change). vLLM seeds each request with ``SamplingConfig.seed`` (its n samples with seed, seed+1, ...), so a
prompt's samples there do not depend on the batch.

Parallel generation (``parallel``, a ``config.ParallelConfig`` with ``gpus`` > 1): ``generation: data``
gives a ``parallel_generation.ParallelGenerator``, one worker process per device, each holding the same
backend, sharing every call's work and merging it in input order, byte-identical to one process;
``generation: tensor`` gives one vLLM engine with ``tensor_parallel_size=gpus`` here (the transformers
backend has no tensor parallelism: a ``ConfigError``). Scoring (``StageModel.score``, ``completion_nll``)
always runs in the main process.
"""
from __future__ import annotations

import importlib.util
import os

from . import device as device_rules
from .config import GENERATION_BACKENDS
from .memory import release_memory
from .sampling import (
    Generation,
    GenerationBackend,
    Prompt,
    SamplingConfig,
    encode_prompts,
    render_prompt,
)
from .scoring import completion_nll, load_scoring_model
from .transformers_backend import TransformersBackend
from .vllm_backend import VLLMBackend, quiet_vllm_logs

__all__ = [
    "BackendUnavailableError",
    "Generation",
    "GenerationBackend",
    "Prompt",
    "SamplingConfig",
    "StageModel",
    "TransformersBackend",
    "VLLMBackend",
    "completion_nll",
    "encode_prompts",
    "load_generator",
    "load_scoring_model",
    "open_generator",
    "release_memory",
    "render_prompt",
    "select_backend",
]


# --------------------------------------------------------------------------------------------------
# backend selection


def vllm_status() -> tuple[bool, str]:
    """(installed, words) without importing vLLM (importing it takes seconds)."""
    try:
        spec = importlib.util.find_spec("vllm")
        found = spec is not None and spec.origin is not None  # not a bare folder named vllm (tests/vllm)
    except (ImportError, ValueError):
        found = False
    return found, ("installed" if found else "not installed")


def try_import_vllm() -> str | None:
    """None if ``import vllm`` works, else why not."""
    quiet_vllm_logs()
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - a broken install must not break the pipeline: fall back
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    return None


class BackendUnavailableError(RuntimeError):
    """``generation.backend: vllm`` on a CUDA machine whose vLLM does not import (or a broken vLLM
    anywhere): the run stops, never falls back to transformers silently."""


def vllm_missing_message(problem: str) -> str:
    """Why a requested vLLM cannot run here (``problem``) and the two ways on: install it, or accept
    transformers explicitly."""
    return (f"generation.backend is 'vllm' but {problem}. Install it: pip install '{_gpu_extra_vllm()}' (what "
            "the gpu extra installs: pip install -e \".[gpu]\"; docs/gpu.md); or generate with "
            "transformers on purpose (much slower, and the only way on the CUDA 12 route, gpu-cu12, which has no vLLM): "
            "--set generation.backend=transformers (in a notebook: overrides = {\"generation\": "
            "{\"backend\": \"transformers\"}})")


def _gpu_extra_vllm() -> str:
    """The gpu extra's vLLM requirement, as pyproject.toml states it (``"vllm>=0.33"``)."""
    import re
    from pathlib import Path

    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8") if pyproject.is_file() else ""
    found = re.search(r'^gpu = \[(.*?)^\]', text, re.MULTILINE | re.DOTALL)
    req = re.search(r'"(vllm[^"]*)"', found.group(1)) if found else None
    return req.group(1) if req else "vllm"


def select_backend(requested: str = "auto", *, device: str = "auto") -> tuple[str, str]:
    """Pick a generation backend: ``(name, reason)``.

    ``"auto"`` picks vLLM iff it is importable AND CUDA is available (and ``device`` is auto or CUDA),
    else transformers. ``"transformers"`` (alias ``"hf"``) is always honoured. ``"vllm"`` (the GPU
    profiles' setting) is vLLM: on a CUDA machine it must import, else :class:`BackendUnavailableError`
    names the fix (never a silent fall back to transformers); without CUDA it is vLLM's CPU build when
    installed, else transformers, said in the reason (a GPU profile rehearsed on a CPU); a vLLM that is
    installed but does not import raises everywhere.
    """
    req = (requested or "auto").strip().lower()
    if req == "hf":
        req = "transformers"
    if req not in GENERATION_BACKENDS:
        raise ValueError(f"unknown generation backend {requested!r}: use 'auto', 'transformers' or 'vllm'")
    installed, words = vllm_status()
    if req == "transformers":
        return "transformers", f"requested; vllm: {words}"
    if req == "vllm":
        cuda = device_rules.cuda_available()
        if not installed:
            if not cuda:
                return "transformers", "vllm requested, but not installed and no CUDA device: a CPU run"
            raise BackendUnavailableError(vllm_missing_message("vLLM is not installed on this CUDA machine"))
        problem = try_import_vllm()
        if problem:
            raise BackendUnavailableError(vllm_missing_message(f"`import vllm` fails here: {problem}"))
        return "vllm", "requested" + ("; CUDA available" if cuda else "; no CUDA device: vLLM's CPU build")
    # auto
    if not installed:
        return "transformers", "vllm: not installed"
    if device not in (None, "auto") and not str(device).startswith("cuda"):
        return "transformers", f"vllm: installed, but device={device} was requested"
    if not device_rules.cuda_available():
        return "transformers", "vllm: installed, but no CUDA device"
    problem = try_import_vllm()
    if problem:
        return "transformers", f"vllm: installed but import failed ({problem})"
    return "vllm", "vllm: installed and CUDA available"


def load_generator(
    model_path: str,
    backend: str = "auto",
    *,
    batch_size: int = 32,
    dtype: str = "auto",
    device: str = "auto",
    seed: int = 0,
    batch_tokens: int = 0,
    parallel=None,
    **backend_kwargs,
) -> GenerationBackend:
    """Load a generator and print one line saying which backend runs, where, and why.

    ``seed`` seeds the vLLM engine; sampling itself is seeded per call by ``SamplingConfig.seed`` in
    both backends. ``batch_size`` and ``batch_tokens`` bound the transformers backend's batches
    (``TransformersBackend``); vLLM schedules its own. ``backend_kwargs`` go to the backend:
    ``progress=False`` silences the progress bar; ``num_threads`` and ``attn_implementation`` are for transformers; anything else is for
    ``vllm.LLM`` (``gpu_memory_utilization``, ``max_model_len``, ``tensor_parallel_size`` ...).
    Keyword arguments the chosen backend does not take are dropped and named at the end of the line,
    so one call works whichever backend "auto" picks.

    ``parallel`` (a ``config.ParallelConfig``; None or one device: this process): ``generation: data`` loads
    the same generator in one worker process per device (``parallel_generation.ParallelGenerator``);
    ``generation: tensor``, one vLLM engine over every device (``tensor_parallel_size``).
    """
    model_path = os.fspath(model_path)
    if parallel is not None and parallel.active:
        if backend_kwargs.get("model") is not None:
            raise ValueError("parallel generation loads the model in each worker process: pass a model path, "
                             "not a loaded model")
        if parallel.generation == "data":
            from .parallel_generation import ParallelGenerator

            return ParallelGenerator(model_path, parallel.gpus, dict(
                backend=backend, batch_size=batch_size, dtype=dtype, device=device, seed=seed,
                batch_tokens=batch_tokens, **backend_kwargs), load_generator)
        backend_kwargs["tensor_parallel_size"] = tensor_parallel_size(backend, device, parallel.gpus)
    name, reason = select_backend(backend, device=device)
    if backend_kwargs.get("model") is None:
        release_memory(before=model_path)  # what a trainer or a closed model left: before the new one loads
    if name == "vllm":
        kwargs = {k: v for k, v in backend_kwargs.items() if k not in _TRANSFORMERS_ONLY_KWARGS}
    else:
        kwargs = {k: v for k, v in backend_kwargs.items() if k in _TRANSFORMERS_KWARGS}
    ignored = sorted(set(backend_kwargs) - set(kwargs))
    if name == "vllm":
        gen: GenerationBackend = VLLMBackend(model_path, dtype=dtype, seed=seed, **kwargs)
        dev, dt = gen.device, gen.dtype  # what the engine runs, from vLLM itself
    else:
        gen = TransformersBackend(model_path, batch_size=batch_size, batch_tokens=batch_tokens, dtype=dtype,
                                  device=device, **kwargs)
        dev, dt = gen.device, device_rules.dtype_name(gen.dtype)
    note = f" [ignored by {name}: {', '.join(ignored)}]" if ignored else ""
    print(f"[generation] backend={name} device={dev} dtype={dt} model={model_path} ({reason}){note}", flush=True)
    return gen


def tensor_parallel_size(backend: str, device: str, gpus: int) -> int:
    """``gpus``, the engine's ``tensor_parallel_size`` under ``parallel.generation: tensor``, once the backend is
    known to be vLLM; a ``ConfigError`` otherwise (transformers has no tensor-parallel generation here)."""
    from .knobs import ConfigError

    name, reason = select_backend(backend, device=device)
    if name != "vllm":
        raise ConfigError(f"parallel.generation: tensor needs the vLLM backend (one engine over {gpus} devices), but "
                          f"generation runs on {name} here ({reason}); use parallel.generation: data, or install vLLM")
    return int(gpus)


def open_generator(model_path: str, generation, *, seed: int = 0, parallel=None, **backend_kwargs) -> GenerationBackend:
    """``load_generator`` with the settings of a profile's ``generation`` section (a GenerationConfig) and, when
    more than one device is given, its ``parallel`` section (``config.ParallelConfig``)."""
    vllm_kwargs = {}
    if generation.gpu_memory_utilization:
        vllm_kwargs["gpu_memory_utilization"] = float(generation.gpu_memory_utilization)
    if generation.max_model_len:
        vllm_kwargs["max_model_len"] = int(generation.max_model_len)
    return load_generator(model_path, backend=generation.backend, batch_size=generation.batch_size,
                          batch_tokens=generation.batch_tokens, dtype=generation.dtype, seed=seed, parallel=parallel,
                          **vllm_kwargs, **backend_kwargs)


_TRANSFORMERS_KWARGS = {"progress", "num_threads", "attn_implementation", "model", "tokenizer"}
_TRANSFORMERS_ONLY_KWARGS = _TRANSFORMERS_KWARGS - {"progress"}


# --------------------------------------------------------------------------------------------------
# the one model a stage holds (orion_utils.memory: one model at a time)


class StageModel:
    """The one model a stage holds: its generator or its scoring model, never both.

        with StageModel(run.student_model(), cfg.generation, seed=0) as student:
            outs = student.generator().generate(...)       # opens the generator
            nll = student.score(questions, completions)    # scores: closes a vLLM engine first

    ``generator()`` opens ``open_generator(model_path, generation)``; ``scoring()`` gives the
    ``(model, tokenizer)`` that ``score`` uses (``completion_nll``, in bounded memory). A generator that
    scores with its own model (``can_score``: transformers) is shared; otherwise asking for the one
    closes the other first (said in one line), so the stage never holds two. ``close()`` (the ``with``
    block's end) releases whatever is open.

    ``parallel`` (``config.ParallelConfig``): the generator spreads over its devices (``open_generator``);
    scoring stays in this, the main process: a data-parallel generator's workers are closed before the
    scoring model loads, as a vLLM engine is.
    """

    def __init__(self, model_path, generation=None, *, seed: int = 0, device: str = "auto", parallel=None):
        self.model_path, self.generation, self.seed, self.device = os.fspath(model_path), generation, seed, device
        self.parallel = parallel
        self._generator: GenerationBackend | None = None
        self._scoring = None  # (model, tokenizer) from load_scoring_model

    def generator(self) -> GenerationBackend:
        if self._generator is None:
            from .config import GenerationConfig

            self._drop_scoring()
            self._generator = open_generator(self.model_path, self.generation or GenerationConfig(), seed=self.seed,
                                             parallel=self.parallel)
        return self._generator

    def scoring(self):
        """``(model, tokenizer)`` to score with (see the class docstring)."""
        gen = self._generator
        if gen is not None and gen.can_score:
            return gen.model, gen.tokenizer
        if self._scoring is None:
            if gen is not None:
                print(f"[generation] closing the {gen.name} engine before the student loads for scoring "
                      "(one model on the device at a time)", flush=True)
                self._close_generator()
            self._scoring = load_scoring_model(self.model_path, self.device, getattr(self.generation, "dtype", "auto"))
        return self._scoring

    def score(self, questions, completions, *, prompt_template: str = "{question}", system: str | None = None,
              **kwargs) -> list[float]:
        """``completion_nll`` of each completion under this model (``kwargs`` go to it)."""
        if self._generator is not None and self._generator.can_score:
            return self._generator.score(questions, completions, prompt_template=prompt_template, system=system,
                                         **kwargs)
        model, tokenizer = self.scoring()
        return completion_nll(model, tokenizer, questions, completions, prompt_template=prompt_template,
                              system=system, **kwargs)

    def _close_generator(self) -> None:
        gen, self._generator = self._generator, None
        if gen is not None:
            gen.close()

    def _drop_scoring(self) -> None:
        if self._scoring is not None:
            self._scoring = None
            release_memory()

    def close(self) -> None:
        self._close_generator()
        self._drop_scoring()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
