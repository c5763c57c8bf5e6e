"""The generation interface both backends implement (``orion_utils.generation`` says how they behave):
``SamplingConfig``, ``Generation``, the prompt text each model sees (``render_prompt``, an assistant
prefix included) and the tokens that end its turn (``end_of_turn_token_ids``), and ``GenerationBackend``."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace

from .chat import prompt_text

Prompt = str | list  # a question, or a list of {"role", "content"} messages


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

def is_unfinished(finish_reason: str | None, answer: object = None) -> bool:
    """The one rule for a cut-off output, at every stage: a generation that hit ``max_new_tokens``
    (``finish_reason == "length"``) is *unfinished*, whatever an extractor can pull from it (a box, a cued
    "the answer is X" written before it ran out). It is counted apart from the wrong outputs, and never
    as a correct one. ``answer`` (what was extracted) is accepted and changes nothing."""
    return finish_reason == "length"


# --------------------------------------------------------------------------------------------------
# prompts and stop tokens (shared by both backends)


def render_prompt(tokenizer, prompt: Prompt, prompt_template: str = "{question}", system: str | None = None) -> str:
    """The exact text the model sees before its answer (see ``orion_utils.generation``): the conversation
    up to the chat template's assistant header (a question: ``chat.prompt_text``). An assistant prefix
    is tokenized on its own after it (``encode_prompts``)."""
    if isinstance(prompt, str):
        return prompt_text(tokenizer, prompt, prompt_template, system)
    if isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) for m in prompt):
        return tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
    raise TypeError(f"a prompt must be a question (str) or a list of message dicts, got {type(prompt).__name__}")


def prefixes_for(prompts: Sequence, assistant_prefix: str | Sequence[str] | None) -> list[str]:
    """One assistant prefix per prompt: none, the same for all (a ``str``) or one each (a sequence)."""
    if assistant_prefix is None or isinstance(assistant_prefix, str):
        return [assistant_prefix or ""] * len(prompts)
    prefixes = list(assistant_prefix)
    if len(prefixes) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(prefixes)} assistant prefixes")
    return prefixes


def encode_prompts(tokenizer, prompts, prompt_template="{question}", system=None, assistant_prefix=None) -> list[list[int]]:
    """Token ids of each rendered prompt, then of its assistant prefix, each tokenized on its own as
    ``chat.encode_for_training`` tokenizes a prompt and its answer: a prefix's tokens are the ones its
    text has at the start of a training answer."""
    if isinstance(prompts, (str, dict)):
        raise TypeError("prompts must be a sequence of prompts (wrap a single prompt in a list)")
    prefixes = prefixes_for(prompts, assistant_prefix)
    texts = [render_prompt(tokenizer, p, prompt_template, system) for p in prompts]
    if not texts:
        return []
    ids = [list(row) for row in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    if any(prefixes):
        ids = [row + (tokenizer(pre, add_special_tokens=False)["input_ids"] if pre else [])
               for row, pre in zip(ids, prefixes)]
    return ids


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


def context_facts(generator) -> tuple[int, int]:
    """``(the engine's own context limit, the model's max_position_embeddings)`` of an open backend, 0 where
    unknown: a vLLM engine's ``max_model_len``, a transformers model's config. A data-parallel generator
    (``parallel_generation``) holds what its workers' backend reported (its ``context_facts``)."""
    reported = getattr(generator, "context_facts", None)
    if isinstance(reported, tuple):
        return reported
    engine = getattr(getattr(getattr(generator, "llm", None), "llm_engine", None), "model_config", None)
    config = getattr(getattr(generator, "model", None), "config", None)
    return int(getattr(engine, "max_model_len", 0) or 0), int(getattr(config, "max_position_embeddings", 0) or 0)


# --------------------------------------------------------------------------------------------------
# the interface


class GenerationBackend(ABC):
    name: str
    model_path: str

    def generate(
        self,
        prompts: Sequence[Prompt],
        sampling: SamplingConfig,
        *,
        prompt_template: str = "{question}",
        system: str | None = None,
        desc: str = "generating",
        assistant_prefix: str | Sequence[str] | None = None,
    ) -> list[list[Generation]]:
        """Per prompt (input order), ``SamplingConfig.n`` generations. ``assistant_prefix`` (one for all prompts,
        or one each) starts the answer: the model continues it, and each ``Generation`` holds the
        continuation only (the caller has the prefix). Greedy decoding generates once per prompt."""
        self._check_open()
        sampling.validate()
        encoded = encode_prompts(self.tokenizer, prompts, prompt_template, system, assistant_prefix)
        if not encoded:
            return []
        results = self._generate(encoded, sampling, desc)
        return expand_greedy(results, sampling.n) if sampling.greedy else results

    def generate_groups(
        self,
        groups: Sequence[tuple[Sequence[Prompt], SamplingConfig]],
        *,
        prompt_template: str = "{question}",
        system: str | None = None,
        desc: str = "generating",
    ) -> list[list[list[Generation]]]:
        """Several ``(prompts, sampling)`` groups submitted together (e.g. a chunk's greedy and sampled
        requests): per group, what ``generate`` gives it alone. A backend that schedules its own batches
        (vLLM) takes every group in one call, so no group ends in a low-batch tail of its own; this
        default generates the groups one after another."""
        return [self.generate(prompts, sampling, prompt_template=prompt_template, system=system, desc=desc)
                for prompts, sampling in groups]

    @abstractmethod
    def _generate(self, encoded: list[list[int]], sampling: SamplingConfig, desc: str) -> list[list[Generation]]:
        """Per encoded prompt, its generations (one under greedy decoding): the backend's own part."""

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


def finish_generation(token_ids: Sequence[int], stop_ids: set, tokenizer) -> Generation:
    """Cut a generated row at its first stop token (kept in the count); the rest is padding."""
    for k, tid in enumerate(token_ids):
        if tid in stop_ids:
            kept, reason = token_ids[: k + 1], "stop"
            break
    else:
        kept, reason = token_ids, "length"
    return Generation(text=tokenizer.decode(kept, skip_special_tokens=True), n_tokens=len(kept), finish_reason=reason)


def expand_greedy(rows: list[list[Generation]], n: int) -> list[list[Generation]]:
    return [[replace(r[0]) for _ in range(n)] for r in rows]
