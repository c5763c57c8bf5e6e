"""The methods' per-token NLL in bounded memory (issue 26, item 1): ``lm_loss`` gives the values and the
gradients of the reference formula (``training.token_nll`` on the whole logits) while the LM head only
ever sees the labelled positions, a chunk at a time; EDIT's and Tailored Learning's trainers compute their
losses with it; ``length_probe`` builds each method's step at a given length."""
from __future__ import annotations

import json

import pytest
import torch

from orion_utils import length_probe, lm_loss
from orion_utils.edit import edit_loss
from orion_utils.tailored_training import tailored_loss
from orion_utils.training import token_nll


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)


def _batch(vocab: int):
    """Three right-padded rows: a prompt then labels, labels with a hole, and a row without any label."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (3, 23), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 18:] = 0
    labels = ids.clone()
    labels[0, :5] = -100
    labels[1, :3] = -100
    labels[1, 9:12] = -100
    labels[1, 18:] = -100
    labels[2, :] = -100
    weights = torch.rand(3, 22, generator=g)  # any per-token weights: the gradients then test every position
    return ids, mask, labels, weights


def _grads(model) -> dict:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _reference(model, ids, mask, labels, weights):
    model.zero_grad()
    nll = token_nll(model(input_ids=ids, attention_mask=mask).logits, labels)
    (weights * nll).sum().backward()
    return nll.detach(), _grads(model)


def _bounded(model, ids, mask, labels, weights, **kwargs):
    model.zero_grad()
    nll, _ = lm_loss.forward_token_nll(model, ids, mask, labels, **kwargs)
    (weights * nll).sum().backward()
    return nll.detach(), _grads(model)


def _assert_same(ref, got):
    (nll_ref, g_ref), (nll_got, g_got) = ref, got
    assert nll_got.shape == nll_ref.shape and nll_got.dtype == torch.float32
    torch.testing.assert_close(nll_got, nll_ref, rtol=1e-5, atol=1e-5)
    assert g_got.keys() == g_ref.keys() and g_ref
    for name in g_ref:
        torch.testing.assert_close(g_got[name], g_ref[name], rtol=1e-4, atol=1e-6, msg=name)


def _trl_kernel_on_cpu():
    try:
        from trl.kernels.chunked_logprob import _forward_tile  # noqa: F401 - TRL >= 1.16 folds tiles in torch
    except ImportError:
        pytest.skip("the installed TRL's ChunkedLogProbFunction needs Triton (CUDA); its CPU fold came in TRL 1.16")


@pytest.mark.parametrize("kernel", ["torch", "trl"])
def test_values_and_gradients_equal_the_whole_logits_formula(tiny_model_dir, kernel):
    if kernel == "trl":
        _trl_kernel_on_cpu()
    model = _model(tiny_model_dir)
    ids, mask, labels, weights = _batch(model.config.vocab_size)
    ref = _reference(model, ids, mask, labels, weights)
    got = _bounded(model, ids, mask, labels, weights, kernel=kernel, chunk_tokens=4)
    _assert_same(ref, got)
    assert (got[0][labels[:, 1:] == -100] == 0).all() and (got[0][labels[:, 1:] != -100] > 0).all()


def test_the_head_sees_only_labelled_positions_a_chunk_at_a_time(tiny_model_dir):
    model = _model(tiny_model_dir)
    ids, mask, labels, weights = _batch(model.config.vocab_size)
    rows_seen = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, i, o: rows_seen.append(i[0].shape[0]))
    try:
        _bounded(model, ids, mask, labels, weights, kernel="torch", chunk_tokens=4)
    finally:
        handle.remove()
    n_labelled = int((labels[:, 1:] != -100).sum())
    # forward: each chunk once; backward: each chunk recomputed once (activation checkpointing)
    assert sum(rows_seen) == 2 * n_labelled and max(rows_seen) <= 4


@pytest.mark.parametrize("targets", ["all-linear", "all-linear+lm_head"])
def test_through_a_peft_model_with_the_adapters_trained(tiny_model_dir, targets):
    from peft import LoraConfig, get_peft_model

    model = _model(tiny_model_dir)
    modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    modules += ["lm_head"] if "lm_head" in targets else []
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=modules, init_lora_weights=False))
    assert lm_loss.causal_lm_parts(peft)[0] is model.model  # the backbone, adapters inside
    ids, mask, labels, weights = _batch(model.config.vocab_size)
    ref = _reference(peft, ids, mask, labels, weights)
    got = _bounded(peft, ids, mask, labels, weights, chunk_tokens=5)
    _assert_same(ref, got)
    assert any("lora" in n for n in got[1]) and all("lora" in n for n in got[1])


@pytest.mark.parametrize("layer", [-1, -2])
def test_the_hidden_state_asked_for_is_the_models(tiny_model_dir, layer):
    model = _model(tiny_model_dir).eval()
    ids, mask, labels, _ = _batch(model.config.vocab_size)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[layer]
        _, got = lm_loss.forward_token_nll(model, ids, mask, labels, hidden_layer=layer)
        _, none = lm_loss.forward_token_nll(model, ids, mask, labels)
    torch.testing.assert_close(got, want)
    assert none is None


def test_post_processed_logits_run_the_whole_model(tiny_model_dir):
    model = _model(tiny_model_dir)
    model.config.final_logit_softcapping = 30.0  # read by the check only: Llama does not soft-cap
    assert lm_loss.causal_lm_parts(model) is None
    ids, mask, labels, weights = _batch(model.config.vocab_size)
    _assert_same(_reference(model, ids, mask, labels, weights), _bounded(model, ids, mask, labels, weights))


def test_a_batch_without_labels_gives_a_differentiable_zero(tiny_model_dir):
    model = _model(tiny_model_dir)
    ids, mask, labels, _ = _batch(model.config.vocab_size)
    nll, _ = lm_loss.forward_token_nll(model, ids, mask, torch.full_like(labels, -100))
    assert nll.shape == (3, 22) and float(nll.abs().sum()) == 0.0
    nll.sum().backward()  # attached to the graph


# ---- the methods' trainers: their losses from the bounded NLL equal the whole-logits formula ------------

def _trainer_vs_reference(tiny_model_dir, tiny_tokenizer, tmp_path, method, reference):
    model = _model(tiny_model_dir)
    trainer, batch = length_probe.probe_trainer(model, tiny_tokenizer, method, 40, tmp_path)
    batch = dict(batch)
    model.zero_grad()
    got = trainer.compute_loss(model, batch)
    got.backward()
    got_grads = _grads(model)
    model.zero_grad()
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    ref = reference(out, batch)
    ref.backward()
    _assert_same((ref.detach(), _grads(model)), (got.detach(), got_grads))
    return batch


def test_edit_trainer_loss_and_gradients_equal_edit_loss_on_the_logits(tiny_model_dir, tiny_tokenizer, tmp_path):
    def reference(out, batch):
        n = batch["labels"].shape[0] // 2
        w = batch["key_weights"]
        return edit_loss(out.logits, batch["labels"], w[:n], w[n:], nll_guard=5.0)[0]

    batch = _trainer_vs_reference(tiny_model_dir, tiny_tokenizer, tmp_path, "edit", reference)
    assert batch["input_ids"].shape == (2, 40) and (batch["key_weights"][0] > 0).any()


def test_tailored_trainer_loss_and_gradients_equal_tailored_loss_on_the_logits(tiny_model_dir, tiny_tokenizer,
                                                                                tmp_path):
    def reference(out, batch):
        return tailored_loss(out.logits, out.hidden_states[-1], batch, lam=0.5, margin=1.0)[0]

    batch = _trainer_vs_reference(tiny_model_dir, tiny_tokenizer, tmp_path, "tailored", reference)
    assert batch["input_ids"].shape == (3, 40) and batch["triplet_index"].tolist() == [0]


# ---- length_probe ------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", length_probe.METHODS)
def test_probe_rows_collate_to_the_methods_rows_at_the_length(tiny_tokenizer, method):
    from orion_utils.edit import EditCollator
    from orion_utils.tailored_training import TailoredCollator

    special = tuple(tiny_tokenizer.all_special_ids)
    rows = length_probe.probe_rows(method, 300, len(tiny_tokenizer), avoid=special)
    assert len(rows) == 1 and len(rows[0]["input_ids"]) == 300
    assert not set(rows[0]["input_ids"]) & set(special)
    assert rows[0]["labels"][: length_probe.PROMPT_TOKENS] == [-100] * length_probe.PROMPT_TOKENS
    assert rows[0]["labels"][length_probe.PROMPT_TOKENS:] == rows[0]["input_ids"][length_probe.PROMPT_TOKENS:]
    if method == "edit":
        batch = EditCollator(0, alpha=1.0, beta=0.025)(rows)
        n_key = int((batch["key_weights"][0] > 0).sum())
        assert n_key == int(length_probe.EDITED_SHARE * (300 - length_probe.PROMPT_TOKENS))
        assert json.loads(rows[0]["key_ops"])["ops"][0][0] == "replace"
    elif method == "tailored":
        batch = TailoredCollator(0, prefix_weight=0.1)(rows)
        assert batch["triplet_index"].tolist() == [0]
    else:
        batch = {"input_ids": torch.tensor([rows[0]["input_ids"]])}
    assert tuple(batch["input_ids"].shape) == (length_probe.ROWS_PER_STEP[method], 300)


@pytest.mark.parametrize("method", length_probe.METHODS)
def test_train_probe_runs_one_optimizer_step_through_the_training_run(tiny_model_dir, tmp_path, method):
    result = length_probe.train_probe(method, tiny_model_dir, tmp_path / method, 96)
    assert result.n_examples == 1 and (tmp_path / method / "model" / "config.json").is_file()
    prompt = length_probe.prompt_tokens_for(96)
    # the supervised tokens: SFT's row, EDIT's chosen side, Tailored's anchor (its prompt too with prefix_weight)
    from orion_utils.config import TailoredConfig

    with_prompt = method == "tailored" and TailoredConfig().prefix_weight > 0
    assert result.n_tokens == (95 if with_prompt else 96 - prompt)
    assert [h["step"] for h in result.loss_history if "loss" in h] == [1]
