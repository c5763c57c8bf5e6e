"""``transformers_backend.decode_batch`` against ``model.generate``: a finished row leaves the batch, and
nothing else changes (the same tokens, greedy and sampled with the same seed)."""
from __future__ import annotations

import pytest

from orion_utils.transformers_backend import decode_batch


def _batch(tokenizer, n_rows=6):
    import torch

    prompts = [("What is " + "1 + " * (i % 3) + f"{i}?") for i in range(n_rows)]
    rows = [tokenizer(p)["input_ids"] for p in prompts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        ids[b, width - len(r):] = torch.tensor(r)
        mask[b, width - len(r):] = 1
    return ids, mask


def _generate_rows(model, ids, mask, eos, pad, max_new_tokens, **sampling):
    """What ``model.generate`` writes, each row cut after its first end token."""
    import torch

    kw = dict(do_sample=True, top_k=0, **sampling) if sampling else dict(do_sample=False)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, eos_token_id=eos,
                             pad_token_id=pad, num_beams=1, repetition_penalty=1.0, **kw)
    rows = []
    for row in out[:, ids.shape[1]:].tolist():
        cut = next((k + 1 for k, t in enumerate(row) if t in eos), len(row))
        rows.append(row[:cut])
    return rows


@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.8, "top_p": 0.9}, {"temperature": 1.0, "top_p": 1.0}],
                         ids=["greedy", "temperature-top-p", "plain-sampling"])
def test_decode_batch_writes_what_generate_writes(tiny_model_dir, tiny_tokenizer, sampling):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    ids, mask = _batch(tiny_tokenizer)
    # a random model rarely says its end token: a tenth of the vocabulary ends a row, so rows end at
    # different steps and the batch shrinks several times
    eos = list(range(0, len(tiny_tokenizer), 10))
    pad = tiny_tokenizer.pad_token_id
    for seed in range(3):
        torch.manual_seed(seed)
        expected = _generate_rows(model, ids, mask, eos, pad, 24, **sampling)
        torch.manual_seed(seed)
        with torch.inference_mode():
            got = decode_batch(model, ids, mask, max_new_tokens=24, eos_token_ids=eos, pad_token_id=pad, **sampling)
        assert got == expected
        lengths = sorted(len(r) for r in got)
        if not sampling:
            continue
        assert lengths[0] < lengths[-1]  # rows left the batch at different steps


def test_decode_batch_runs_only_the_rows_still_going(tiny_model_dir, tiny_tokenizer):
    """The forward passes see the batch shrink as rows end: the work saved is real."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    ids, mask = _batch(tiny_tokenizer)
    widths = []
    model.register_forward_pre_hook(lambda m, args, kwargs: widths.append(kwargs["input_ids"].shape[0]),
                                    with_kwargs=True)
    eos = list(range(0, len(tiny_tokenizer), 10))
    torch.manual_seed(0)
    with torch.inference_mode():
        rows = decode_batch(model, ids, mask, max_new_tokens=24, eos_token_ids=eos,
                            pad_token_id=tiny_tokenizer.pad_token_id, temperature=1.0)
    # one forward per step; a step runs exactly the rows that had not ended before it
    assert len(widths) == max(len(r) for r in rows)
    assert widths == [sum(len(r) > step for r in rows) for step in range(len(widths))]
    assert widths[-1] < widths[0]
