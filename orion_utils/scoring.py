"""Scoring: the mean per-token NLL of completions under a model, in bounded memory (``completion_nll``)."""
from __future__ import annotations

import math
import os
from collections.abc import Sequence

from . import device as device_rules
from .memory import release_memory, track_model
from .numerics import check_finite_scores

CPU_LOGIT_BYTES = 2**30  # on a CPU, the logits of one chunk of scored tokens take at most this
GPU_LOGIT_SHARE = 0.5  # on CUDA, at most this share of the memory free when a batch's logits are computed


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


def _body_and_head(model):
    """``(body, lm_head)`` of a causal LM whose logits are ``lm_head(body(...).last_hidden_state)`` with a
    plain ``Linear`` head (Llama, Qwen2/3, Mistral, SmolLM2 ...; ``lm_loss.causal_lm_parts``), else None
    (scored through the whole model)."""
    import torch

    from .lm_loss import causal_lm_parts

    parts = causal_lm_parts(model)
    return parts if parts is not None and isinstance(parts[1], torch.nn.Linear) else None


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

    A NaN or infinite score of a completion that has scored tokens (16-bit overflow) raises
    ``numerics.NonFiniteError``, which names the dtype and the fix; a completion without scored tokens
    scores NaN.

    ``model_path_or_model``: a checkpoint path (loaded on ``device`` by ``load_scoring_model``, for this
    call only; ``tokenizer`` may then be None), a loaded causal LM (used where it is; ``tokenizer``
    required; a ``TransformersBackend`` scores its own with ``score``). Scoring several times: load once,
    pass the model.
    """
    import torch

    from .chat import encode_for_training

    if len(questions) != len(completions):
        raise ValueError(f"{len(questions)} questions but {len(completions)} completions")
    model, tokenizer = _model_and_tokenizer(model_path_or_model, tokenizer, device)
    if not questions:
        return []
    dev = next(model.parameters()).device
    encoded = [
        encode_for_training(tokenizer, q, c, prompt_template, system=system) for q, c in zip(questions, completions)
    ]
    nll = [math.nan] * len(encoded)
    was_training = model.training
    model.eval()
    try:
        threads = device_rules.torch_threads(device_rules.cpu_threads_for(model, str(dev), num_threads))
        with torch.inference_mode(), threads:
            for batch in _length_batches(encoded, batch_size, max_batch_tokens):
                scores = _score_batch(model, [encoded[i] for i in batch], tokenizer.pad_token_id or 0, max_logit_bytes)
                for i, score in zip(batch, scores):
                    nll[i] = score
    finally:
        model.train(was_training)
    # a NaN/inf score of a completion with scored tokens (fp16 overflow) stops here, never reaches a selection
    check_finite_scores(nll, [any(t != -100 for t in e["labels"][1:]) for e in encoded],
                        next(model.parameters()).dtype, dev)
    return nll


def _model_and_tokenizer(model_path_or_model, tokenizer, device: str):
    """The model ``completion_nll`` scores with and its tokenizer: a checkpoint
    path's (loaded for this call), or a loaded model's (the tokenizer then required)."""
    if isinstance(model_path_or_model, (str, os.PathLike)):
        model, loaded_tokenizer = load_scoring_model(model_path_or_model, device)
        return model, tokenizer or loaded_tokenizer
    if tokenizer is None:
        raise ValueError("pass the tokenizer with a loaded model")
    return model_path_or_model, tokenizer


def _length_batches(encoded: list, batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Indices of ``encoded`` in batches, longest first: at most ``batch_size`` rows and
    ``max_batch_tokens`` padded tokens each (a longer sequence gets a batch of its own)."""
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]["input_ids"]))
    batches: list[list[int]] = []
    for i in order:
        cur = batches[-1] if batches else None
        width = len(encoded[cur[0]]["input_ids"]) if cur else 0  # longest first: the first row sets the width
        if cur and len(cur) < batch_size and (len(cur) + 1) * width <= max_batch_tokens:
            cur.append(i)
        else:
            batches.append([i])
    return batches


def _score_batch(model, rows: list, pad_id: int, max_logit_bytes: int | None) -> list[float]:
    """Mean NLL of each encoded row's labelled tokens (NaN: none), one right-padded forward pass."""
    import torch
    import torch.nn.functional as F

    dev = next(model.parameters()).device
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[b, :n] = torch.tensor(r["input_ids"])
        labels[b, :n] = torch.tensor(r["labels"])
        mask[b, :n] = 1
    inputs = {"input_ids": ids.to(dev), "attention_mask": mask.to(dev), "use_cache": False}
    split = _body_and_head(model)
    if split is None:  # the whole model: its (post-processed) logits, one row at a time
        states, head = model(**inputs).logits, None
    else:
        states, head = split[0](**inputs).last_hidden_state, split[1]
    out = []
    for b in range(len(rows)):
        target = labels[b, 1:].to(dev)
        keep = target != -100
        out.append(_mean_nll(states[b, :-1][keep], target[keep], head, max_logit_bytes, F) if keep.any() else math.nan)
    del states
    return out


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


def load_scoring_model(model_path, device: str = "auto", dtype: str = "auto"):
    """``(model, tokenizer)`` of a checkpoint as ``completion_nll`` loads a path: on ``device``
    (``"auto"``: CUDA if available, else CPU) in ``device.resolve_dtype(dtype, ...)`` (a stage passes
    ``generation.dtype``: the student is scored in the precision it generates in), in eval mode.
    A caller that scores several times (a stage) loads it once with this and passes both on."""
    from transformers import AutoTokenizer

    from .adapters import load_causal_lm

    dev = device_rules.resolve_device(device)
    release_memory(before=os.fspath(model_path))
    model = load_causal_lm(os.fspath(model_path), dtype=device_rules.resolve_dtype(dtype, dev))  # adapters merged in
    model = track_model(model.to(dev).eval(), f"scoring {os.fspath(model_path)}")
    return model, AutoTokenizer.from_pretrained(os.fspath(model_path))
