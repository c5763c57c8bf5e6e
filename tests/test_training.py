"""SFT training (orion_utils.training): loss mask, batching, backends, outputs, resume, errors.

Uses the session's random tiny Llama (``tiny_model_dir`` from conftest) on CPU with one thread.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from orion_utils import device, training
from orion_utils.chat import build_messages, encode_for_training, prompt_text
from orion_utils.config import TrainingConfig
from orion_utils.records import SFTExample
from orion_utils.training import (
    LengthGroupedSampler,
    TrainResult,
    build_sft_rows,
    length_grouped_batches,
    resolve_batching,
    select_training_backend,
    train_sft,
)

TEMPLATE = "Q: {question}"
SYSTEM = "You are a careful solver."


def _examples(n: int, long: bool = False) -> list[SFTExample]:
    out = []
    for i in range(n):
        a, b = 3 + i, 4 + 2 * i
        body = f"{a}+{b}={a + b}" + (f" check {a + b}-{b}={a}" * (1 + i % 3) if long else "")
        out.append(SFTExample(problem_id=f"p{i}", question=f"{a}+{b}?", response=f"<think>{body}</think> \\boxed{{{a + b}}}",
                              source="teacher"))
    return out


def _cfg(**kw) -> TrainingConfig:
    base = {"num_epochs": 1, "batch_size": 4, "learning_rate": 1e-2, "warmup_ratio": 0.0, "logging_steps": 1,
            "save_steps": 10**6, "cpu_threads": 1, "seed": 0}
    base.update(kw)
    return TrainingConfig(**base)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(autouse=True)
def _one_thread():
    with device.torch_threads(1):
        yield


# ---------------------------------------------------------------------------------------------
# data: one truth for token ids, loss on exactly the assistant turn


def test_rows_equal_encode_for_training_and_mask_is_the_assistant_turn(tok):
    examples = _examples(3)
    rows, stats = build_sft_rows(tok, examples, prompt_template=TEMPLATE, system=SYSTEM, max_seq_len=512)
    assert stats == {"dropped": 0, "truncated": 0, "overlong_dropped": 0}
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    for ex, row in zip(examples, rows):
        enc = encode_for_training(tok, ex.question, ex.response, template=TEMPLATE, system=SYSTEM)
        assert row["input_ids"] == enc["input_ids"] and row["labels"] == enc["labels"]
        prompt = prompt_text(tok, ex.question, TEMPLATE, SYSTEM)
        full = tok.apply_chat_template(build_messages(ex.question, TEMPLATE, SYSTEM)
                                       + [{"role": "assistant", "content": ex.response}], tokenize=False)
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        turn_ids = tok(full[len(prompt):], add_special_tokens=False)["input_ids"]
        n_prompt = len(prompt_ids)
        assert row["input_ids"][:n_prompt] == prompt_ids  # generation sees exactly this prefix
        assert row["labels"][:n_prompt] == [-100] * n_prompt
        assert row["labels"][n_prompt:] == turn_ids  # the whole assistant turn and nothing else
        assert eos in row["labels"][n_prompt:]  # ... including its end-of-turn token: the model learns to stop
        assert tok.decode(row["labels"][n_prompt:]).startswith(ex.response + "<|im_end|>")


def test_truncation_and_dropping(tok):
    examples = _examples(2, long=True)
    rows, stats = build_sft_rows(tok, examples, prompt_template=TEMPLATE, max_seq_len=30)
    enc = encode_for_training(tok, examples[0].question, examples[0].response, template=TEMPLATE, max_seq_len=30)
    assert stats["truncated"] == 2 and rows[0]["input_ids"] == enc["input_ids"] and len(rows[0]["input_ids"]) == 30
    rows, stats = build_sft_rows(tok, examples, prompt_template=TEMPLATE, max_seq_len=5)  # prompt alone is longer
    assert rows == [] and stats["dropped"] == 2
    mixed = examples + _examples(1)
    rows, stats = build_sft_rows(tok, mixed, prompt_template=TEMPLATE, max_seq_len=60, overlong="drop")
    assert stats == {"dropped": 0, "truncated": 0, "overlong_dropped": 2} and len(rows) == 1
    assert rows[0]["input_ids"] == encode_for_training(tok, mixed[2].question, mixed[2].response, template=TEMPLATE)["input_ids"]
    with pytest.raises(ValueError, match="overlong must be one of"):
        build_sft_rows(tok, examples, prompt_template=TEMPLATE, max_seq_len=60, overlong="skip")


def test_overlong_drop_in_training_and_4bit_falls_back_on_cpu(tiny_model_dir, tmp_path, capsys):
    examples = _examples(3, long=True) + _examples(2)
    cfg = _cfg(max_seq_len=60, max_steps=1, overlong="drop", use_lora=True, lora_r=4, lora_alpha=8, load_in_4bit=True)
    with pytest.warns(training.TrainingWarning, match="3 of 5 examples are longer than max_seq_len=60 and were left out"):
        result = train_sft(tiny_model_dir, examples, tmp_path / "drop", cfg, prompt_template=TEMPLATE)
    out = capsys.readouterr().out
    assert "load_in_4bit needs a CUDA GPU" in out and "lora=True" in out and "overlong_dropped=3" in out
    assert result.n_examples == 2
    with pytest.raises(ValueError, match="3 longer ones were left out"):
        train_sft(tiny_model_dir, _examples(3, long=True), tmp_path / "none", cfg, prompt_template=TEMPLATE)


def test_cut_examples_are_reported(tiny_model_dir, tmp_path, capsys):
    examples = _examples(3, long=True)
    with pytest.warns(training.TrainingWarning, match="3 of 3 examples are longer than max_seq_len=60"):
        result = train_sft(tiny_model_dir, examples, tmp_path / "cut", _cfg(max_seq_len=60, max_steps=1),
                           prompt_template=TEMPLATE)
    assert capsys.readouterr().out.strip().endswith("truncated=3")
    assert result.n_examples == 3 and json.loads((tmp_path / "cut" / "train_result.json").read_text())["truncated"] == 3


def _segments(batch) -> list[tuple[list, list]]:
    """(input_ids, labels) of each real sequence in a collated batch (padded or padding-free)."""
    out = []
    if "attention_mask" in batch:
        for ids, lab, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
            n = int(mask.sum())
            assert mask[:n].all() and not mask[n:].any() and (lab[n:] == -100).all()
            out.append((ids[:n].tolist(), lab[:n].tolist()))
    else:
        ids, lab, pos = batch["input_ids"][0], batch["labels"][0], batch["position_ids"][0]
        starts = (pos == 0).nonzero().flatten().tolist() + [len(pos)]
        for s, e in itertools.pairwise(starts):
            assert pos[s:e].tolist() == list(range(e - s))
            out.append((ids[s:e].tolist(), lab[s:e].tolist()))
    return out


def _trainer(model_dir, tok, rows, cfg, batching, tmp_path):
    from transformers import AutoModelForCausalLM

    with training.quiet():
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
        return training.build_trainer(model, tok, rows, cfg, tmp_path / batching, batching, "cpu", "float32")


@pytest.mark.parametrize("batching", ["padded", "length_grouped", "padding_free"])
def test_trainer_batches_carry_exactly_the_encoded_rows(tiny_model_dir, tok, tmp_path, batching):
    examples = _examples(10, long=True)
    rows, _ = build_sft_rows(tok, examples, prompt_template=TEMPLATE, system=SYSTEM, max_seq_len=512)
    trainer = _trainer(tiny_model_dir, tok, rows, _cfg(batch_size=4), batching, tmp_path)
    seen = [seg for batch in trainer.get_train_dataloader() for seg in _segments(batch)]
    assert sorted(map(str, seen)) == sorted(str((r["input_ids"], r["labels"])) for r in rows)


def test_batching_modes_give_the_same_loss_at_fixed_weights(tiny_model_dir, tok, tmp_path):
    from transformers import AutoModelForCausalLM

    examples = _examples(11, long=True)
    rows, _ = build_sft_rows(tok, examples, prompt_template=TEMPLATE, max_seq_len=512)
    # reference: every example alone, unpadded
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    ref_nll, ref_n = 0.0, 0
    with torch.no_grad():
        for r in rows:
            n = sum(1 for t in r["labels"][1:] if t != -100)
            out = model(input_ids=torch.tensor([r["input_ids"]]), labels=torch.tensor([r["labels"]]))
            ref_nll += float(out.loss) * n
            ref_n += n
    for batching in ("padded", "length_grouped", "padding_free"):
        nll, n = training.trainer.epoch_nll(_trainer(tiny_model_dir, tok, rows, _cfg(batch_size=4), batching, tmp_path))
        assert n == ref_n
        assert nll == pytest.approx(ref_nll, rel=1e-5), batching


def test_length_grouped_batches():
    lengths = [((i * 37) % 101) + 1 for i in range(70)]
    batches = length_grouped_batches(lengths, 8, seed=1, window=64)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(70))
    assert all(len(b) == 8 for b in batches[:-1]) and len(batches[-1]) == 70 % 8  # partial batch last
    # within a window the batches are contiguous in sorted length: spreads are small
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    assert spread < 0.25 * sum(max(lengths) - min(lengths) for _ in batches)
    # reshuffled per epoch, deterministic per (seed, epoch)
    sampler = LengthGroupedSampler(lengths, 8, seed=1)
    e0 = list(sampler)
    sampler.set_epoch(1)
    e1 = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == e0 and e1 != e0 and len(sampler) == 70


# ---------------------------------------------------------------------------------------------
# backend and batching selection


def test_backend_selection(monkeypatch):
    if training.selection.unsloth_installed() is False:
        assert select_training_backend() == ("trl", "unsloth: not installed")
    monkeypatch.setattr(training.selection, "unsloth_installed", lambda: False)
    assert select_training_backend("auto") == ("trl", "unsloth: not installed")
    assert select_training_backend("trl") == ("trl", "requested")
    with pytest.raises(RuntimeError, match="unsloth is not installed"):
        select_training_backend("unsloth")
    monkeypatch.setattr(training.selection, "unsloth_installed", lambda: True)
    monkeypatch.setattr(device, "cuda_available", lambda: False)
    assert select_training_backend("auto") == ("trl", "unsloth: no CUDA GPU")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        select_training_backend("unsloth")
    monkeypatch.setattr(device, "cuda_available", lambda: True)
    assert select_training_backend("auto")[0] == "unsloth"
    assert select_training_backend("unsloth") == ("unsloth", "requested")
    with pytest.raises(ValueError, match="unknown training backend"):
        select_training_backend("deepspeed")


def test_batching_selection():
    assert resolve_batching("auto", "sdpa")[0] == "length_grouped"
    assert resolve_batching("auto", "eager")[0] == "length_grouped"
    assert resolve_batching("auto", "flash_attention_2")[0] == "padding_free"
    assert resolve_batching("auto", "sdpa", backend="unsloth")[0] == "padding_free"
    assert resolve_batching("padded", "flash_attention_2") == ("padded", "requested")
    with pytest.raises(ValueError, match="unknown batching"):
        resolve_batching("packed", "sdpa")


def test_auto_dispatches_to_unsloth_when_available(monkeypatch, tiny_model_dir, tmp_path, capsys):
    """With unsloth 'installed' and CUDA 'present', train_sft takes the Unsloth path (faked here: no GPU).
    The [training] line is read back from the trainer Unsloth built: it turned padding_free off, as
    Unsloth's ``_disable_sample_packing`` does (e.g. for a custom collator), so the line says padded."""
    import sys
    import types
    from types import SimpleNamespace

    monkeypatch.setattr(training.selection, "unsloth_installed", lambda: True)
    monkeypatch.setattr(device, "cuda_available", lambda: True)
    monkeypatch.setattr(device, "device_and_dtype", lambda *args: ("cuda", "bfloat16"))
    monkeypatch.setitem(sys.modules, "unsloth", types.ModuleType("unsloth"))
    called = {}

    def fake_unsloth(base_model, tokenizer, rows, cfg, *rest, announce=None, split=None):
        called["rows"] = len(rows)
        args = SimpleNamespace(padding_free=False, bf16=True, fp16=False, use_liger_kernel=False)
        announce(SimpleNamespace(args=args, batching="padding_free", model=None))
        raise KeyboardInterrupt("stop here")

    monkeypatch.setattr(training.backends, "train_unsloth", fake_unsloth)
    with pytest.raises(KeyboardInterrupt):
        train_sft(tiny_model_dir, _examples(3), tmp_path / "out", _cfg())
    assert called == {"rows": 3}
    line = capsys.readouterr().out.strip()
    assert line.startswith("[training] backend=unsloth (installed, CUDA available) device=cuda dtype=bfloat16")
    assert "batching=padded (attn=unsloth)" in line  # asked: padding_free; Unsloth turned it off


def test_the_training_line_reads_the_built_trainer(tiny_model_dir, tok, tmp_path):
    """what_ran reads a real TRL trainer's arguments: padding-free while they say so, padded once a backend
    turned it off (Unsloth sets ``args.padding_free = False``); the dtype is the autocast one, else the
    weights'."""
    rows, _ = build_sft_rows(tok, _examples(4))
    trainer = _trainer(tiny_model_dir, tok, rows, _cfg(), "padding_free", tmp_path)
    assert training.what_ran(trainer, "padding_free", "float32") == {
        "batching": "padding_free", "dtype": "float32", "liger": False}
    trainer.args.padding_free = False
    assert training.what_ran(trainer, "padding_free", "float32")["batching"] == "padded"
    grouped = _trainer(tiny_model_dir, tok, rows, _cfg(), "length_grouped", tmp_path)
    assert training.what_ran(grouped, "length_grouped", "float32")["batching"] == "length_grouped"


def test_training_arguments_on_a_t4_are_fp16_with_loss_scaling(monkeypatch, tmp_path):
    """No GPU here: a T4 is faked (capability 7.5, and is_bf16_supported answering True as it does there).
    The arguments of a CUDA run ask for fp16 (the Trainer's GradScaler), never bf16; on an A100, bf16.
    SFTConfig sets up its CUDA device when built, which cannot happen here: what it is given is recorded."""
    import trl

    class Recorded(trl.SFTConfig):
        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)

    monkeypatch.setattr(trl, "SFTConfig", Recorded)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    dev, dtype = device.device_and_dtype()
    assert (dev, dtype) == ("cuda", "float16")
    args = training.trainer.sft_args(_cfg(), tmp_path, "padded", dev, dtype, 8)
    assert args.fp16 is True and args.bf16 is False
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    dev, dtype = device.device_and_dtype()
    args = training.trainer.sft_args(_cfg(), tmp_path, "padded", dev, dtype, 8)
    assert dtype == "bfloat16" and args.bf16 is True and args.fp16 is False


def test_unsloth_gets_float16_on_a_t4(monkeypatch, tiny_model_dir, tmp_path):
    """No GPU and no Unsloth here: a T4 is faked (capability 7.5, is_bf16_supported True) and a stand-in
    ``unsloth`` records the dtype train_sft hands FastLanguageModel.from_pretrained."""
    import sys
    import types

    seen = {}

    class FastLanguageModel:
        @staticmethod
        def from_pretrained(**kwargs):
            seen.update(kwargs)
            raise KeyboardInterrupt("stop here")

    fake = types.ModuleType("unsloth")
    fake.FastLanguageModel = FastLanguageModel
    monkeypatch.setitem(sys.modules, "unsloth", fake)
    monkeypatch.setattr(training.selection, "unsloth_installed", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    with pytest.raises(KeyboardInterrupt):
        train_sft(tiny_model_dir, _examples(3), tmp_path / "out", _cfg(backend="unsloth", use_lora=True))
    assert seen["dtype"] is torch.float16


_FAKE_UNSLOTH = """
import json, os, sys
with open(os.environ["FAKE_UNSLOTH_RECORD"], "w") as f:
    json.dump(sorted(m for m in ("transformers", "trl", "peft") if m in sys.modules), f)
"""

_STAGE_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from orion_utils import device, stages
from orion_utils.config import load_profile
from orion_utils.rundir import RunDir
device.cuda_available = lambda: True  # no GPU here: the stage must believe it will train with Unsloth
try:
    stages.sft(RunDir(sys.argv[2]), load_profile("toy"))
except Exception as exc:  # the empty run directory stops the stage after its entry point
    print("stopped:", type(exc).__name__)
print("transformers imported:", "transformers" in sys.modules)
"""


def test_unsloth_is_imported_before_transformers_in_a_stage(tmp_path):
    """A stand-in ``unsloth`` package (Unsloth needs a GPU) records which of transformers/TRL/PEFT were
    already imported when it was; a fresh process runs stage 04's entry point, as a notebook does."""
    import os
    import subprocess
    import sys

    (tmp_path / "fake" / "unsloth").mkdir(parents=True)
    (tmp_path / "fake" / "unsloth" / "__init__.py").write_text(_FAKE_UNSLOTH)
    record = tmp_path / "record.json"
    env = {**os.environ, "FAKE_UNSLOTH_RECORD": str(record)}
    out = subprocess.run([sys.executable, "-c", _STAGE_SCRIPT, str(tmp_path / "fake"), str(tmp_path / "run")],
                         capture_output=True, text=True, env=env, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    assert record.is_file(), out.stdout + out.stderr  # unsloth was imported by the stage entry point
    assert json.loads(record.read_text()) == []  # ... before transformers, TRL and PEFT


THINK_STRIPPING_TEMPLATE = (  # the Qwen3 / R1-distill rule for assistant turns: keep what follows </think>
    "{%- for message in messages -%}"
    "{%- set content = message['content'] -%}"
    "{%- if message['role'] == 'assistant' and '</think>' in content -%}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') -%}{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def test_a_template_that_strips_think_is_refused(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    stripping = AutoTokenizer.from_pretrained(tiny_model_dir)
    stripping.chat_template = THINK_STRIPPING_TEMPLATE
    ex = _examples(1)[0]
    rendered = stripping.apply_chat_template(build_messages(ex.question) + [{"role": "assistant", "content": ex.response}],
                                             tokenize=False)
    assert "<think>" not in rendered and "\\boxed{7}" in rendered  # what training would have seen
    with pytest.raises(ValueError, match=r"strips <think>\.\.\.</think> from assistant turns"):
        encode_for_training(stripping, ex.question, ex.response)
    with pytest.raises(ValueError, match="strips <think>"):
        build_sft_rows(stripping, _examples(3))
    stripping.save_pretrained(tmp_path / "tok")
    with pytest.raises(ValueError, match=str(tmp_path / "tok")):  # the error names the template's tokenizer
        encode_for_training(AutoTokenizer.from_pretrained(tmp_path / "tok"), ex.question, ex.response)
    # the toy template keeps it; a response without reasoning passes either way
    ok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert encode_for_training(ok, ex.question, ex.response)["input_ids"]
    assert encode_for_training(stripping, ex.question, "\\boxed{7}")["input_ids"]


# ---------------------------------------------------------------------------------------------
# end to end


def test_full_finetune_memorises_saves_and_generates(tiny_model_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    examples = _examples(4)
    out = tmp_path / "sft"
    cfg = _cfg(num_epochs=120, batch_size=4, learning_rate=1e-2, logging_steps=10)
    result = train_sft(tiny_model_dir, examples, out, cfg, prompt_template=TEMPLATE)

    backend, reason = select_training_backend("auto")
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [(f"[training] backend={backend} ({reason}) device=cpu dtype=float32 lora=False examples=4 "
                      "batching=length_grouped (attn=sdpa)")]
    assert result.backend == "trl" and result.n_examples == 4 and result.batching == "length_grouped"
    assert Path(result.model_dir) == out / "model"
    losses = [h["loss"] for h in result.loss_history]
    assert losses[0] > 3 * losses[-1] and losses[-1] < 0.5
    assert set(result.loss_history[0]) >= {"step", "epoch", "loss", "learning_rate"}
    assert json.loads((out / "loss_history.json").read_text()) == result.loss_history
    saved = TrainResult.load(out)
    assert saved.n_tokens == result.n_tokens > 0 and saved.loss_history == result.loss_history
    rows, _ = build_sft_rows(AutoTokenizer.from_pretrained(tiny_model_dir), examples, prompt_template=TEMPLATE)
    assert result.n_tokens == 120 * sum(sum(t != -100 for t in r["labels"][1:]) for r in rows)
    assert not (out / "checkpoints").exists() and not list(out.glob(".model.tmp-*"))

    tok = AutoTokenizer.from_pretrained(out / "model")
    model = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    hits = 0
    for ex in examples:
        ids = tok(prompt_text(tok, ex.question, TEMPLATE), add_special_tokens=False, return_tensors="pt")["input_ids"]
        gen = model.generate(ids, max_new_tokens=40, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
        new = gen[0, ids.shape[1]:].tolist()
        hits += new[-1] == tok.eos_token_id and tok.decode(new[:-1]) == ex.response  # says it, then stops
    assert hits >= 1


def test_lora_trains_and_merges(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    cfg = _cfg(use_lora=True, lora_r=4, lora_alpha=8, max_steps=4, learning_rate=5e-2, batching="padding_free",
               merge_lora=True)
    with pytest.warns(training.TrainingWarning, match="dense mask"):  # correct on sdpa, just not faster
        result = train_sft(tiny_model_dir, _examples(8), out, cfg, prompt_template=TEMPLATE)
    assert result.batching == "padding_free"
    files = {p.name for p in (out / "model").iterdir()}
    assert "config.json" in files and not any(f.startswith("adapter_") for f in files)
    keys = load_file(str(out / "model" / "model.safetensors")).keys()
    assert not any("lora" in k or "base_layer" in k for k in keys)
    merged = AutoModelForCausalLM.from_pretrained(out / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert set(merged.state_dict()) == set(base.state_dict())
    w, w0 = merged.model.layers[0].self_attn.q_proj.weight, base.model.layers[0].self_attn.q_proj.weight
    assert not torch.allclose(w, w0)  # the adapter was merged in
    assert torch.equal(merged.model.embed_tokens.weight, base.model.embed_tokens.weight)  # frozen outside LoRA
    assert len(result.loss_history) == 4


def test_lora_saves_its_adapter_which_loads_and_trains_on(tiny_model_dir, tmp_path):
    """``merge_lora`` off (the default): the method's model is PEFT's adapter + the tokenizer; generation and
    scoring load base + adapter merged in memory (the logits PEFT gives), and training from it continues the
    adapter on the same base (EDIT's stage 2, a Tailored round), never an adapter on top of an adapter."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from orion_utils.adapters import adapter_base, is_adapter, load_causal_lm
    from orion_utils.generation import SamplingConfig, TransformersBackend

    cfg = _cfg(use_lora=True, lora_r=4, lora_alpha=8, max_steps=3, learning_rate=5e-2)
    first = train_sft(tiny_model_dir, _examples(8), tmp_path / "one", cfg, prompt_template=TEMPLATE)
    model_dir = Path(first.model_dir)
    files = {p.name for p in model_dir.iterdir()}
    assert is_adapter(model_dir) and "config.json" not in files and "model.safetensors" not in files
    assert adapter_base(model_dir) == str(tiny_model_dir)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(model_dir)).eval()
    merged = load_causal_lm(model_dir).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, peft(ids).logits, atol=1e-5)
        assert not torch.allclose(merged(ids).logits, base(ids).logits)  # the adapter is applied
    with TransformersBackend(str(model_dir), progress=False, device="cpu") as gen:
        out = gen.generate(["What is 2+2?"], SamplingConfig(max_new_tokens=5))
    assert out[0][0].n_tokens >= 1

    second = train_sft(model_dir, _examples(8), tmp_path / "two", cfg, prompt_template=TEMPLATE)
    again = Path(second.model_dir)
    assert is_adapter(again) and adapter_base(again) == str(tiny_model_dir)  # the same base, not the adapter
    w1, w2 = load_file(str(model_dir / "adapter_model.safetensors")), load_file(str(again / "adapter_model.safetensors"))
    assert set(w1) == set(w2) and any(not torch.equal(w1[k], w2[k]) for k in w1)  # trained further


def test_resume_after_crash_and_atomic_model(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "resume"
    cfg = _cfg(max_steps=6, save_steps=2, keep_checkpoints=True, batch_size=2)
    examples = _examples(6)
    cls = training.sft_trainer_class()
    original_step = cls.training_step

    def crashing_step(self, *args, **kwargs):
        if self.state.global_step == 4:
            raise RuntimeError("simulated crash")
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(cls, "training_step", crashing_step)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_sft(tiny_model_dir, examples, out, cfg, prompt_template=TEMPLATE)
    assert not (out / "model").exists() and not list(out.glob(".model.tmp-*"))
    assert (out / "checkpoints" / "checkpoint-4").is_dir()
    monkeypatch.setattr(cls, "training_step", original_step)
    capsys.readouterr()

    result = train_sft(tiny_model_dir, examples, out, cfg, prompt_template=TEMPLATE)
    assert capsys.readouterr().out.strip().endswith("resume=checkpoint-4")
    assert result.resumed_from == "checkpoint-4"
    assert [h["step"] for h in result.loss_history] == [1, 2, 3, 4, 5, 6]  # the curve survives the crash
    assert result.n_tokens > 0

    # a different config does not resume from these checkpoints
    other = train_sft(tiny_model_dir, examples, out, _cfg(max_steps=2, keep_checkpoints=True, batch_size=2),
                      prompt_template=TEMPLATE, resume=True)
    assert other.resumed_from is None and [h["step"] for h in other.loss_history] == [1, 2]

    # a crash while training leaves the previous model in place, whole
    before = {p.name: p.read_bytes() for p in (out / "model").iterdir()}

    def boom(trainer, resume_from):
        raise RuntimeError("crash mid-training")

    monkeypatch.setattr(training.backends, "run_trainer", boom)
    with pytest.raises(RuntimeError, match="crash mid-training"):
        train_sft(tiny_model_dir, examples, out, cfg, prompt_template=TEMPLATE, resume=False)
    assert {p.name: p.read_bytes() for p in (out / "model").iterdir()} == before
    assert not list(out.glob(".model.tmp-*"))
    AutoModelForCausalLM.from_pretrained(out / "model")


# ---------------------------------------------------------------------------------------------
# errors


def test_clear_errors(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="no training examples"):
        train_sft(tiny_model_dir, [], tmp_path / "a", _cfg())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_sft(tmp_path / "no_such_model", _examples(2), tmp_path / "b", _cfg())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_sft(str(tmp_path / "no" / "such" / "model"), _examples(2), tmp_path / "b", _cfg())
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        train_sft(tmp_path / "empty_dir", _examples(2), tmp_path / "c", _cfg())
    if not (training.selection.unsloth_installed() and device.cuda_available()):
        with pytest.raises(RuntimeError, match="backend='unsloth' was requested"):
            train_sft(tiny_model_dir, _examples(2), tmp_path / "d", _cfg(backend="unsloth"))
    with pytest.raises(ValueError, match="load_in_4bit: QLoRA trains adapters; set use_lora: true"):
        train_sft(tiny_model_dir, _examples(2), tmp_path / "e", _cfg(load_in_4bit=True))  # the config refuses it
    with pytest.raises(ValueError, match="none of the 2 examples"):
        train_sft(tiny_model_dir, _examples(2), tmp_path / "f", _cfg(max_seq_len=4))


def test_warmup_is_whole_steps_and_a_label_rebuilding_collator_is_refused(tok):
    from types import SimpleNamespace

    assert training.optimizer_steps(_cfg(num_epochs=2, batch_size=4, grad_accum=2), 10) == 2
    assert training.optimizer_steps(_cfg(num_epochs=1.5, batch_size=4, grad_accum=1), 40) == 15
    assert training.optimizer_steps(_cfg(max_steps=7), 10) == 7
    args = training.trainer.sft_args(_cfg(num_epochs=3, batch_size=2, warmup_ratio=0.1), Path("unused"), "padded",
                                     "cpu", "float32", 40)
    assert args.warmup_steps == 6  # ceil(0.1 * 60): the same in every transformers version

    rows, _ = build_sft_rows(tok, _examples(1), prompt_template=TEMPLATE)

    def rebuilds_labels(features):  # what older TRL collators did: supervise every token
        ids = torch.tensor([f["input_ids"] for f in features])
        return {"input_ids": ids, "labels": ids.clone()}

    with pytest.raises(RuntimeError, match="does not keep the pre-tokenised labels"):
        training.trainer.check_collated_labels(SimpleNamespace(data_collator=rebuilds_labels), rows[0])


# ---------------------------------------------------------------------------------------------
# one training stack: EDIT's and Tailored Learning's trainers are the SFT trainer plus their own terms.
# With those terms switched off they must give plain SFT's loss and gradients on the same batch.


def _loss_and_grads(trainer, batch, num_items):
    model = trainer.model
    model.train()
    model.zero_grad()
    batch = trainer._prepare_inputs(batch)
    loss = trainer.compute_loss(model, batch, num_items_in_batch=num_items)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


def _method_trainer(model_dir, tok, rows, cfg, method, tmp_path):
    from transformers import AutoModelForCausalLM

    with training.quiet():
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
        return training.build_trainer(model, tok, rows, cfg, tmp_path / method.name.replace(" ", "_"), "padded",
                                      "cpu", "float32", method=method)


def _sft_reference(model_dir, tok, examples, tmp_path):
    rows, _ = build_sft_rows(tok, examples, prompt_template=TEMPLATE, max_seq_len=512)
    trainer = _trainer(model_dir, tok, rows, _cfg(batch_size=len(rows)), "padded", tmp_path)
    batch = trainer.data_collator([dict(r) for r in rows])
    n = int((batch["labels"][:, 1:] != -100).sum())  # what the Trainer passes as num_items_in_batch
    return _loss_and_grads(trainer, batch, n)


def _assert_same(got, ref):
    (loss, grads), (ref_loss, ref_grads) = got, ref
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert grads.keys() == ref_grads.keys() and grads
    for name, g in grads.items():
        assert torch.allclose(g, ref_grads[name], rtol=1e-4, atol=1e-7), name


def test_edit_trainer_with_beta_zero_and_unit_weights_equals_sft(tiny_model_dir, tok, tmp_path):
    """EDIT normalises each pair by its chosen response's length and averages over pairs, so it equals
    SFT's token mean on a batch whose chosen responses have one length (here two of them)."""
    from orion_utils.edit import EditConfig, edit_method, pair_rows
    from orion_utils.records import DualPair

    examples = [SFTExample("a", "3+4?", "<think>3+4=7</think> \\boxed{7}", "teacher"),
                SFTExample("b", "5+2?", "<think>5+2=7</think> \\boxed{7}", "teacher")]
    ref = _sft_reference(tiny_model_dir, tok, examples, tmp_path)
    cfg = EditConfig(alpha=1.0, beta=0.0, nll_guard=None, batch_size=2, max_seq_len=512, cpu_threads=1)
    pairs = [DualPair(e.problem_id, e.question, e.response, "<think>wrong 8</think> \\boxed{8}", "exposure")
             for e in examples]
    rows, _, _ = pair_rows(tok, pairs, cfg, prompt_template=TEMPLATE)
    for row in rows:  # unit weights: every token of the chosen response is "key" (weight α = 1)
        n_resp = len(row["input_ids"]) - row["prompt_len"]
        n_rej = len(row["rejected_input_ids"]) - row["rejected_prompt_len"]
        row["key_ops"] = json.dumps({"prefix_len": 0, "len_chosen": n_resp, "len_rejected": n_rej,
                                     "ops": [["replace", 0, n_resp, 0, n_rej]]})
    trainer = _method_trainer(tiny_model_dir, tok, rows, cfg, edit_method(cfg), tmp_path)
    assert isinstance(trainer, training.sft_trainer_class())
    _assert_same(_loss_and_grads(trainer, trainer.data_collator(rows), None), ref)


def test_tailored_trainer_with_lambda_zero_and_unit_weights_equals_sft(tiny_model_dir, tok, tmp_path):
    """Unit weights: rationale tokens 1 and no prefix term (prefix_weight 0), so the anchors carry
    exactly SFT's labels; responses of different lengths (Tailored Learning's MLE is a token mean)."""
    from orion_utils.tailored import TailoredConfig
    from orion_utils.tailored_training import tailored_method, tailored_rows

    examples = [SFTExample(f"q{i}", e.question, e.response, "teacher",
                           meta={"positive": e.response + " again", "negative": "<think>no</think> \\boxed{0}"})
                for i, e in enumerate(_examples(3, long=True))]
    ref = _sft_reference(tiny_model_dir, tok, examples, tmp_path)
    cfg = TailoredConfig(lam=0.0, prefix_weight=0.0, batch_size=3, max_seq_len=512, cpu_threads=1)
    rows, _ = tailored_rows(tok, examples, cfg, prompt_template=TEMPLATE)
    trainer = _method_trainer(tiny_model_dir, tok, rows, cfg, tailored_method(cfg), tmp_path)
    assert isinstance(trainer, training.sft_trainer_class())
    _assert_same(_loss_and_grads(trainer, trainer.data_collator(rows), None), ref)
    # and the terms do something when switched on: λ > 0 adds the triplet rows and changes the gradients
    cfg_on = TailoredConfig(lam=0.5, prefix_weight=0.0, batch_size=3, max_seq_len=512, cpu_threads=1)
    trainer_on = _method_trainer(tiny_model_dir, tok, rows, cfg_on, tailored_method(cfg_on), tmp_path / "on")
    batch_on = trainer_on.data_collator(rows)
    assert batch_on["input_ids"].shape[0] == 9
    _, grads_on = _loss_and_grads(trainer_on, batch_on, None)
    assert any(not torch.allclose(g, ref[1][k], rtol=1e-4, atol=1e-7) for k, g in grads_on.items())


def test_method_sections_extend_the_sft_section():
    from orion_utils.config import load_profile
    from orion_utils.edit import EditConfig
    from orion_utils.tailored import TailoredConfig

    paper = load_profile("paper")
    for section in (paper.edit, paper.tailored):
        assert isinstance(section, TrainingConfig)
        for key in ("use_lora", "lora_r", "max_seq_len", "overlong", "learning_rate", "grad_accum"):
            assert getattr(section, key) == getattr(paper.training, key), key
    prof = load_profile("toy", {"training": {"lora_r": 8, "learning_rate": 1e-3}, "edit": {"learning_rate": 2e-3}})
    assert prof.edit.lora_r == 8 and prof.tailored.lora_r == 8 and prof.tailored.learning_rate == 1e-3
    assert prof.edit.learning_rate == 2e-3 and prof.training.learning_rate == 1e-3  # a method's own value wins
    assert {f for f in EditConfig.__dataclass_fields__} - set(TrainingConfig.__dataclass_fields__) == {
        "pair_source", "max_pairs_per_problem", "alpha", "beta", "nll_guard", "max_key_share"}
    assert {f for f in TailoredConfig.__dataclass_fields__} - set(TrainingConfig.__dataclass_fields__) == {
        "rounds", "exam_samples", "exam_temperature", "exam_top_p", "exam_max_new_tokens", "teacher_samples",
        "tailor_samples", "max_wrong_shown", "prefix_weight", "lam", "margin", "triplet_layer", "exam_chunk_questions"}
