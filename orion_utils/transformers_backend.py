"""The transformers generation backend: batched decoding that drops a row once it has ended
(``decode_batch``, what ``model.generate`` writes, token for token); ``orion_utils.generation`` says how both
backends sample, stop and seed."""
from __future__ import annotations

import os
from typing import Any

from . import device as device_rules
from .memory import release_memory, track_model
from .rundir import chunk_seed
from .sampling import (
    Generation,
    GenerationBackend,
    SamplingConfig,
    end_of_turn_token_ids,
    finish_generation,
)


def decode_batch(model, input_ids, attention_mask, *, max_new_tokens: int, eos_token_ids, pad_token_id: int,
                 temperature: float | None = None, top_p: float = 1.0) -> list[list[int]]:
    """``model.generate`` for one left-padded batch (greedy when ``temperature`` is None, the caller having
    decided it by ``SamplingConfig.greedy``; else sampled with temperature and top-p), that stops computing a row once it has ended: each row's new tokens, cut after
    its end-of-turn token.

    ``generate`` runs every row of a batch until the last one ends, a finished row carrying padding; its
    forward passes are wasted (a third of a toy evaluation's, ``bench/bench_decode.py``). Here a finished
    row leaves the batch and its slice of the KV cache (``Cache.batch_select_indices``). Every other step is
    ``generate``'s: the same forward arguments, the same logits processors (temperature, then top-p) and the
    same draw (``torch.multinomial`` over the whole batch's width, a finished row given all its mass on the
    padding token as ``generate`` gives it), so it samples what ``generate`` samples with the same seed, token
    for token (``tests/test_transformers_backend.py`` checks both against ``generate``)."""
    import inspect

    import torch
    from transformers import DynamicCache
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopPLogitsWarper,
    )

    processors = LogitsProcessorList()
    greedy = temperature is None
    if not greedy:
        if temperature != 1.0:
            processors.append(TemperatureLogitsWarper(float(temperature)))
        if top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p=float(top_p), min_tokens_to_keep=1))
    # transformers 5.25 names the cache `cache` (`past_key_values` a deprecated alias); 5.19 and earlier
    # `past_key_values`
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache = DynamicCache(config=model.config)
    width = input_ids.shape[0]
    eos = torch.tensor(sorted(set(eos_token_ids)), device=input_ids.device)
    rows: list[list[int]] = [[] for _ in range(width)]
    active = torch.arange(width, device=input_ids.device)  # the batch rows still running, in batch order
    step_ids, mask = input_ids, attention_mask
    for _ in range(max_new_tokens):
        logits = model(input_ids=step_ids, attention_mask=mask, use_cache=True, return_dict=True,
                       **{cache_arg: cache}).logits[:, -1].to(copy=True, dtype=torch.float32)
        if greedy:
            new = torch.argmax(logits, dim=-1)
        else:
            # the processors' ids argument: temperature and top-p never read it
            probs = torch.nn.functional.softmax(processors(step_ids, logits), dim=-1)
            full = torch.zeros((width, probs.shape[-1]), dtype=probs.dtype, device=probs.device)
            full[:, pad_token_id] = 1.0  # a finished row, as generate has it: all its mass on padding
            full[active] = probs
            new = torch.multinomial(full, num_samples=1).squeeze(1)[active]
        for r, t in zip(active.tolist(), new.tolist()):
            rows[r].append(t)
        going = ~torch.isin(new, eos)
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
        step_ids = new[:, None]
        if not bool(going.all()):
            if not bool(going.any()):
                break
            keep = going.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            active, mask, step_ids = active[keep], mask[keep], step_ids[keep]
    return rows


def batch_seed(seed: int, index: int) -> int:
    """The sampling seed of batch ``index`` of a call's ``batch_plan`` (``SamplingConfig.seed`` ``seed``)."""
    return chunk_seed(seed, "batch", index)


class TransformersBackend(GenerationBackend):
    """Batched decoding (``decode_batch``) with left padding and the KV cache.

    Prompts are sorted by length (longest first, so an out-of-memory shows up in the first batch)
    and cut, in that order, into batches of at most ``batch_size`` sequences (a prompt with n samples
    takes n rows) and at most ``batch_tokens`` tokens (``batch_plan``): a row costs its batch's longest
    prompt (left padding) plus ``max_new_tokens``, what its KV cache may grow to; a row over the budget
    alone gets a batch of its own. ``batch_tokens`` 0: ``batch_size`` x ``ROW_TOKENS``. Each batch samples
    with its own seed (``batch_seed``), so any of the plan's batches can run alone (``generate_share``). Results
    come back in input order. ``num_threads`` (default ``"auto"``, see ``device.cpu_threads_for``)
    sets torch's intra-op threads for the duration of each ``generate`` call only.
    """

    name = "transformers"
    ROW_TOKENS = 2048  # batch_tokens 0: batch_size rows of this many tokens (the toy and smol profiles' calls fit)

    def __init__(
        self,
        model_path: str,
        *,
        batch_size: int = 32,
        batch_tokens: int = 0,
        dtype: Any = "auto",
        device: str = "auto",
        progress: bool = True,
        num_threads: int | str | None = "auto",
        attn_implementation: str | None = None,
        model=None,
        tokenizer=None,
    ):
        import torch
        from transformers import AutoTokenizer

        from .adapters import load_causal_lm

        self.model_path = os.fspath(model_path) if model_path is not None else getattr(model, "name_or_path", "")
        self.batch_size = int(batch_size)
        self.batch_tokens = int(batch_tokens) or self.batch_size * self.ROW_TOKENS
        self.progress = progress
        if model is None:
            self.device = device_rules.resolve_device(device)
            self.dtype = device_rules.resolve_dtype(dtype, self.device)
            kwargs = {"dtype": self.dtype}
            if attn_implementation:
                kwargs["attn_implementation"] = attn_implementation
            model = load_causal_lm(self.model_path, **kwargs).to(self.device)  # a LoRA adapter: merged in
        else:  # an already loaded model (e.g. right after training)
            self.device, self.dtype = str(next(model.parameters()).device), model.dtype
        self.model = track_model(model.eval(), f"transformers {self.model_path}")
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
        # every knob explicit (``decode_batch`` reads nothing from the checkpoint's generation_config.json,
        # e.g. Qwen's top_k=20 or repetition_penalty=1.05): what SamplingConfig asks for, and only that
        kw: dict[str, Any] = {"max_new_tokens": sampling.max_new_tokens, "eos_token_ids": self.eos_token_ids,
                              "pad_token_id": self.pad_token_id}
        if not sampling.greedy:
            kw.update(temperature=float(sampling.temperature), top_p=float(sampling.top_p))
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

    def _generate(self, encoded: list[list[int]], sampling: SamplingConfig, desc: str) -> list[list[Generation]]:
        per_prompt = 1 if sampling.greedy else sampling.n
        results: list[list[Generation | None]] = [[None] * per_prompt for _ in encoded]
        for (i, j), generation in self.generate_share(encoded, sampling, desc=desc):
            results[i][j] = generation
        return results  # type: ignore[return-value]

    def generate_share(self, encoded: list[list[int]], sampling: SamplingConfig, *, rank: int = 0, world: int = 1,
                       desc: str = "generating", on_batch=None) -> list[tuple[tuple[int, int], Generation]]:
        """``((prompt index, sample index), Generation)`` of one rank's share of the call: the batches of
        ``batch_plan`` (over every prompt of the call) whose index is ``rank`` modulo ``world``, each sampled
        with its own seed, ``batch_seed(SamplingConfig.seed, its index)``. So a batch's samples do not depend on the
        batches before it, nor on which process runs it: the shares of ``world`` ranks together are the whole
        call's generations, byte for byte (``parallel_generation``). ``on_batch(rows)`` after each batch."""
        from tqdm.auto import tqdm

        torch = self._torch
        if any(len(e) == 0 for e in encoded):
            raise ValueError("a prompt rendered to zero tokens")
        per_prompt = 1 if sampling.greedy else sampling.n
        plan = self.batch_plan([len(e) for e in encoded], per_prompt, sampling.max_new_tokens)
        mine = [(b, batch) for b, batch in enumerate(plan) if b % world == rank]
        out: list[tuple[tuple[int, int], Generation]] = []
        stop_ids = set(self.eos_token_ids)
        gen_kwargs = self._generate_kwargs(sampling)
        devices = []
        if str(self.device).startswith("cuda"):
            index = torch.device(self.device).index
            devices = [index if index is not None else torch.cuda.current_device()]
        threads = device_rules.torch_threads(self.num_threads)
        with torch.random.fork_rng(devices=devices), torch.inference_mode(), threads:
            for b, batch in tqdm(mine, desc=desc, unit="batch", disable=not self.progress):
                torch.manual_seed(batch_seed(sampling.seed, b))
                input_ids, attention_mask = self._left_pad([encoded[i] for i, _ in batch])
                new_tokens = decode_batch(self.model, input_ids, attention_mask, **gen_kwargs)
                out += [(row, finish_generation(toks, stop_ids, self.tokenizer)) for row, toks in zip(batch, new_tokens)]
                if on_batch is not None:
                    on_batch(len(batch))
        return out

    def batch_plan(self, prompt_lengths: list[int], per_prompt: int, max_new_tokens: int) -> list[list[tuple]]:
        """Batches of ``(prompt index, sample index)`` rows: prompts longest first (stable: ties keep input
        order), each prompt's ``per_prompt`` rows in turn, a new batch when ``batch_size`` rows are in or
        one more row would take the batch over ``batch_tokens`` (rows x (its longest prompt +
        ``max_new_tokens``))."""
        order = sorted(range(len(prompt_lengths)), key=lambda i: -prompt_lengths[i])
        batches: list[list[tuple]] = []
        width = 0  # the longest prompt of the current batch: its first row's, prompts coming longest first
        for i in order:
            for j in range(per_prompt):
                cur = batches[-1] if batches else None
                if cur and len(cur) < self.batch_size and (len(cur) + 1) * (width + max_new_tokens) <= self.batch_tokens:
                    cur.append((i, j))
                else:
                    batches.append([(i, j)])
                    width = prompt_lengths[i]
        return batches

    can_score = True

    def score(self, questions, completions, *, prompt_template: str = "{question}", system: str | None = None,
              **kwargs):
        self._check_open()
        from .scoring import completion_nll

        kwargs.setdefault("num_threads", self.num_threads)
        return completion_nll(self.model, self.tokenizer, questions, completions,
                              prompt_template=prompt_template, system=system, **kwargs)

    def close(self) -> None:
        if self._closed:
            return
        self.model = None
        self._closed = True
        release_memory()
