"""A teacher served locally: a reasoning model through vLLM (offline ``LLM``) or transformers.

Same prompts, grading and trace records as the API teacher (``PromptedTeacher``); only the
completion call differs: one batched call to the generation backend.
"""
from __future__ import annotations

from typing import Optional, Sequence

from .base import split_thinking
from .prompts import Completion, CompletionRequest, PromptedTeacher


class LocalTeacher(PromptedTeacher):
    """``LocalTeacher(model_path)``: vLLM when installed with a GPU, else transformers."""

    def __init__(self, model: str, *, backend: str = "auto", temperature: float = 0.6, top_p: float = 0.95,
                 max_tokens: int = 16384, seed: int = 0, batch_size: int = 64, generator=None,
                 name: Optional[str] = None, parallel=None, **backend_kwargs):
        """``backend_kwargs`` go to ``generation.load_generator`` (for vLLM: ``gpu_memory_utilization``,
        ``max_model_len``, ``tensor_parallel_size`` ...); ``parallel`` (``config.ParallelConfig``) too: the
        devices it generates on."""
        if not model and generator is None:
            raise ValueError("LocalTeacher needs a model path or hub id (teacher.model)")
        self.model, self.backend, self.batch_size = model, backend, batch_size
        self.temperature, self.top_p, self.max_tokens, self.seed = temperature, top_p, max_tokens, seed
        self.name = name or f"local:{model}"
        self._generator = generator
        self.backend_kwargs, self.parallel = backend_kwargs, parallel

    def _generator_or_load(self):
        if self._generator is None:
            from ..generation import load_generator

            self._generator = load_generator(self.model, backend=self.backend, batch_size=self.batch_size,
                                             seed=self.seed, parallel=self.parallel, **self.backend_kwargs)
        return self._generator

    def prompt_budget(self):
        """Its engine's context (``max_model_len``, else the model's own) less ``max_tokens``, counted with
        the engine's tokenizer (``budget.generator_budget``)."""
        from ..budget import generator_budget

        return generator_budget(self._generator_or_load(), self.max_tokens,
                                int(self.backend_kwargs.get("max_model_len") or 0))

    def _complete(self, requests: Sequence[CompletionRequest]) -> list[Optional[Completion]]:
        from ..generation import SamplingConfig

        if not requests:
            return []
        sampling = SamplingConfig(n=1, temperature=self.temperature, top_p=self.top_p,
                                  max_new_tokens=self.max_tokens, seed=self.seed)
        outputs = self._generator_or_load().generate([r.messages for r in requests], sampling, desc="teacher")
        completions = []
        for generations in outputs:
            g = generations[0]
            thinking, solution = split_thinking(g.text)
            completions.append(Completion(thinking, solution, {"completion_tokens": g.n_tokens}, g.finish_reason))
        return completions

    def close(self) -> None:
        if self._generator is not None:
            self._generator.close()
            self._generator = None
