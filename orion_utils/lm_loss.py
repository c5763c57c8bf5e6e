"""The per-token NLL of a batch's labelled tokens in bounded memory, for the losses the methods compute
themselves (EDIT's stage 2, Tailored Learning) and for scoring.

A causal LM's logits are ``head(backbone(ids).last_hidden_state)``. Taken whole, the logits of one
16k-token sequence over a 152k vocabulary are 10 GB in float32, before the float32 log-softmax and its
gradient. Here the backbone runs to its last hidden states, the labelled positions (label != -100) are
picked out, and the LM head and the cross-entropy run on those rows only, in tiles, never holding the
logits of more than one tile:

* on CUDA (and XPU), with TRL's ``ChunkedLogProbFunction`` (``trl.kernels``, TRL >= 1.15: the kernel
  behind the fused LM head TRL's own ``SFTTrainer`` trains with): token x vocabulary tiles folded into an
  online log-sum-exp by a Triton kernel, the backward recomputing each tile, gradients accumulated in
  float32;
* elsewhere (CPU; a TRL without it; an LM head that is not a plain ``Linear``, e.g. one LoRA wraps),
  ``chunked_nll``: the head and a float32 cross-entropy over ``CHUNK_TOKENS`` rows at a time, each chunk
  under ``torch.utils.checkpoint`` so that the backward, too, holds one chunk's logits at a time.

Liger's fused linear cross-entropy would do the same on CUDA, but it reduces to a scalar while EDIT weighs
each token by a guard on its own NLL; TRL deprecated its ``use_liger_kernel`` route in favour of this
fused head. A model whose logits are post-processed (soft-capping, scaling: Gemma 2, Cohere, Granite) is
run whole (``causal_lm_parts`` gives None): correct, not bounded.
"""
from __future__ import annotations

import contextlib
import inspect
from typing import Optional

CHUNK_TOKENS = 1024  # rows of logits per chunk in chunked_nll (1,024 x 152k x float32: 0.6 GB)
VOCAB_TILE = 32768  # vocabulary columns per tile in TRL's kernel (TRL's own setting for its fused head)
LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier",
                        "lm_head_multiplier")
_TRL_KERNEL_ARGS = ["ctx", "hidden", "weight", "bias", "targets", "temperature", "chunk_size",
                    "final_logit_softcapping", "logit_scale", "outputs"]


def token_nll(logits, labels):
    """Per-token NLL (float32) of ``labels[:, 1:]`` under ``logits[:, :-1]``; 0 where the label is -100
    (the methods' losses weight it: EDIT's key tokens, Tailored Learning's weighted MLE). The reference
    formula, on logits already made: the trainers compute the same values in bounded memory
    (``OrionSFTTrainer.labelled_nll``, ``lm_loss``) without ever making the logits of a whole sequence."""
    import torch.nn.functional as F

    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    nll = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=-100,
        reduction="none",
    )
    return nll.view(shift_labels.shape)


def causal_lm_parts(model):
    """``(backbone, head)`` of a causal LM whose logits are ``head(backbone(...).last_hidden_state)``
    (Llama, Qwen2/3, Mistral, SmolLM2 ...), looked through a PEFT wrapper (the backbone then carries the
    adapters); None when the logits are post-processed or the model has no such split."""
    import torch

    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model  # PEFT
    config = getattr(base, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if any(getattr(text_config, k, None) for k in LOGIT_POSTPROCESSING):
        return None
    backbone = getattr(base, "base_model", None)  # transformers: the module named base_model_prefix
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if backbone is None or backbone is base or not isinstance(head, torch.nn.Module):
        return None
    return backbone, head


def _trl_kernel(device, head):
    """TRL's ``ChunkedLogProbFunction`` where it runs (CUDA/XPU) on a plain ``Linear`` head, else None."""
    import torch

    if device.type not in ("cuda", "xpu") or type(head) is not torch.nn.Linear:
        return None
    try:
        from trl.kernels import ChunkedLogProbFunction
    except Exception:  # noqa: BLE001 - an older TRL, or no Triton: the torch path
        return None
    if list(inspect.signature(ChunkedLogProbFunction.forward).parameters) != _TRL_KERNEL_ARGS:
        return None  # a TRL whose kernel takes other arguments than the ones written against here
    return ChunkedLogProbFunction


def chunked_nll(hidden, head, targets, chunk_tokens: int = CHUNK_TOKENS):
    """Cross-entropy (float32, one value per row) of ``targets`` [N] given hidden states [N, H] through
    ``head``, ``chunk_tokens`` rows at a time; with gradients on, each chunk under activation
    checkpointing, so neither pass holds more than one chunk's logits."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    def piece(h, y):
        return F.cross_entropy(head(h).float(), y, reduction="none")

    grad = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    out = [checkpoint(piece, hidden[s:s + chunk_tokens], targets[s:s + chunk_tokens], use_reentrant=False)
           if grad else piece(hidden[s:s + chunk_tokens], targets[s:s + chunk_tokens])
           for s in range(0, targets.shape[0], chunk_tokens)]
    return torch.cat(out) if out else hidden.sum(dim=-1).float() * 0.0  # no rows: empty, still attached


def labelled_token_nll(hidden, head, labels, chunk_tokens: int = CHUNK_TOKENS, kernel: str = "auto"):
    """Per-token NLL (float32) of ``labels[:, 1:]`` given the hidden states ``hidden[:, :-1]`` through
    ``head``; 0 where the label is -100, and only the labelled positions ever reach the head.
    ``kernel``: ``auto`` (TRL's where it runs, else ``torch``), ``trl`` or ``torch`` (``chunked_nll``).
    The same values as ``token_nll(head(hidden), labels)``, to float32 rounding."""
    mask = labels[:, 1:] != -100
    rows, targets = hidden[:, :-1][mask], labels[:, 1:][mask]
    if kernel not in ("auto", "trl", "torch"):
        raise ValueError(f"kernel must be auto, trl or torch, got {kernel!r}")
    fused = _trl_kernel(rows.device, head) if kernel == "auto" else None
    if kernel == "trl":
        from trl.kernels import ChunkedLogProbFunction

        fused = ChunkedLogProbFunction
    if fused is not None:
        log_probs = fused.apply(rows, head.weight, head.bias, targets, 1.0, VOCAB_TILE, None, 1.0, ("log_probs",))[0]
        nll = -log_probs
    else:
        nll = chunked_nll(rows, head, targets, chunk_tokens)
    # masked_scatter keeps a batch without labels attached to the graph (a differentiable zero)
    return nll.new_zeros(mask.shape).masked_scatter(mask, nll)


def forward_token_nll(model, input_ids, attention_mask, labels, *, hidden_layer: Optional[int] = None,
                      autocast=None, chunk_tokens: int = CHUNK_TOKENS, kernel: str = "auto"):
    """One forward pass of ``model`` over the batch: ``(nll, hidden)`` with ``nll`` the per-token NLL of
    ``labels[:, 1:]`` (``labelled_token_nll``: [B, T-1], float32, 0 where -100) and ``hidden`` the hidden
    state ``hidden_layer`` ([B, T, H]; -1: the last, post-norm, which the head reads; None: not asked for).
    The last hidden state is the backbone's output, already there; another layer asks the backbone for
    ``output_hidden_states``. ``autocast``: the context the model's own forward would run under (a
    Trainer's ``accelerator.autocast()``), since the backbone is called past that forward.

    A model without the backbone/head split (``causal_lm_parts``) runs whole: its logits, then
    ``token_nll`` on them."""
    parts = causal_lm_parts(model)
    want_states = hidden_layer is not None and hidden_layer != -1
    with autocast if autocast is not None else contextlib.nullcontext():
        if parts is None:
            out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                        output_hidden_states=hidden_layer is not None)
            return token_nll(out.logits, labels), (out.hidden_states[hidden_layer] if hidden_layer is not None else None)
        backbone, head = parts
        out = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                       output_hidden_states=want_states)
        last = out.last_hidden_state
        nll = labelled_token_nll(last, head, labels.to(last.device), chunk_tokens, kernel)
    hidden = None if hidden_layer is None else (last if hidden_layer == -1 else out.hidden_states[hidden_layer])
    return nll, hidden
