"""Training throughput: length-aware batching vs naive padded random batches on length-skewed CoTs.

Long CoTs vary wildly in length (here: log-normal, clipped to 20..1000 tokens), so a random batch
is padded to its longest member and most of the compute goes to padding. This bench trains one
epoch of the same data from the same initial weights with each batching mode of
``orion_utils.training`` (the very trainer ``train_sft`` uses), with learning rate 0 so that the
weights stay fixed, and reports

* tokens/s (real, non-padding tokens per second of ``trainer.train()``) per mode,
* the ratio of the length-aware mode ``train_sft`` picks here (``batching="auto"``) to naive padded,
* the mean per-token loss of the epoch per mode: the same data at the same weights must give the
  same loss whatever the batching (checked to a relative 1e-4).

Run: ``python bench/bench_training.py`` (about a minute on two CPU cores).
Options: ``--n 96 --batch-size 16 --reps 2 --threads 1``.
"""
from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from orion_utils.config import TrainingConfig
from orion_utils.records import SFTExample
from orion_utils.training import (
    build_sft_rows,
    build_trainer,
    quiet,
    resolve_batching,
)

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_student(out: Path, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0) -> Path:
    """A random tiny Llama with a byte-level BPE tokenizer and a ChatML template, saved in HF format."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = ["<think> 12 + 7 = 19 ; check : 19 - 7 = 12 . so the answer is 19 </think> \\boxed{19}"] * 4
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|pad|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|im_end|>")
    hf_tok.chat_template = CHATML
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(hf_tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=2048,
        pad_token_id=hf_tok.pad_token_id, eos_token_id=hf_tok.eos_token_id, bos_token_id=None, tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    hf_tok.save_pretrained(out)
    return out


def skewed_examples(tokenizer, n: int, seed: int = 0, lo: int = 20, hi: int = 1000) -> list[SFTExample]:
    """CoTs whose token lengths are log-normal (median ~110, long tail), clipped to [lo, hi]."""
    rng = random.Random(seed)
    alphabet = "0123456789+-=*() "
    examples = []
    for i in range(n):
        target = int(min(hi, max(lo, rng.lognormvariate(math.log(110), 0.9))))
        text = "".join(rng.choice(alphabet) for _ in range(target))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: max(1, target - 4)]
        response = "<think>" + tokenizer.decode(ids) + "</think>"
        examples.append(SFTExample(problem_id=f"q{i}", question=f"Q{i}: what is {i} + {i}?", response=response, source="bench"))
    return examples


def run_mode(model_dir: Path, tokenizer, rows, cfg: TrainingConfig, batching: str, work: Path) -> dict:
    from transformers import AutoModelForCausalLM

    with quiet():
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
        trainer = build_trainer(model, tokenizer, rows, cfg, work / batching, batching, "cpu", "float32")
        batches = list(trainer.get_train_dataloader())
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
    real = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else int(b["input_ids"].numel()) for b in batches)
    slots = sum(int(b["input_ids"].numel()) for b in batches)
    return {
        "seconds": seconds,
        "real_tokens": real,
        "padded_slots": slots,
        "tokens_per_s": real / seconds,
        "mean_loss": trainer.nll_sum / trainer.n_supervised,
        "supervised": trainer.n_supervised,
        "steps": trainer.state.global_step,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=96, help="number of CoTs")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--reps", type=int, default=2, help="repetitions per mode (best time is kept)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--modes", default="padded,length_grouped,padding_free")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from transformers import AutoTokenizer

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    auto_mode, why = resolve_batching("auto", "sdpa")
    if "padded" not in modes:
        modes.insert(0, "padded")
    if auto_mode not in modes:
        modes.append(auto_mode)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with quiet():
            model_dir = make_student(tmp / "student")
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
        examples = skewed_examples(tokenizer, args.n)
        cfg = TrainingConfig(
            learning_rate=0.0, num_epochs=1, batch_size=args.batch_size, max_seq_len=1100, warmup_ratio=0.0,
            logging_steps=1000, save_steps=10**6, seed=0,
        )
        rows, _ = build_sft_rows(tokenizer, examples, max_seq_len=cfg.max_seq_len)
        lengths = sorted(len(r["input_ids"]) for r in rows)
        print(
            f"data: {len(rows)} CoTs, tokens per example min {lengths[0]} / median {lengths[len(lengths) // 2]} / "
            f"max {lengths[-1]}, total {sum(lengths)}; batch size {args.batch_size}; student: tiny Llama, sdpa, "
            f"float32, {args.threads} CPU thread(s); lr=0, one epoch per run, best of {args.reps}"
        )
        results: dict = {}
        for rep in range(args.reps):
            for mode in modes:  # interleaved, so load changes on a shared machine hit all modes alike
                r = run_mode(model_dir, tokenizer, rows, cfg, mode, tmp / f"ck{rep}")
                if mode not in results or r["seconds"] < results[mode]["seconds"]:
                    results[mode] = r

    base = results["padded"]
    print(f"{'batching':<16}{'seconds':>9}{'tokens/s':>11}{'padding':>9}{'steps':>7}{'mean loss':>12}{'vs padded':>11}")
    for mode in modes:
        r = results[mode]
        pad = 1 - r["real_tokens"] / r["padded_slots"]
        print(
            f"{mode:<16}{r['seconds']:>9.2f}{r['tokens_per_s']:>11.0f}{pad:>8.0%}{r['steps']:>7}"
            f"{r['mean_loss']:>12.6f}{r['tokens_per_s'] / base['tokens_per_s']:>10.2f}x"
        )
    ref = base["mean_loss"]
    worst = max(abs(r["mean_loss"] - ref) / ref for r in results.values())
    same_tokens = len({r["supervised"] for r in results.values()}) == 1
    loss_ok = worst < 1e-4 and same_tokens
    ratio = results[auto_mode]["tokens_per_s"] / base["tokens_per_s"]
    print(
        f"same loss on the same data: {'yes' if loss_ok else 'NO'} (max relative difference {worst:.1e}, "
        f"supervised tokens per epoch {'equal' if same_tokens else 'DIFFER'}: {base['supervised']})"
    )
    print(
        f"RESULT: length-aware batching chosen by train_sft here (batching=auto -> {auto_mode}, {why}) "
        f"{ratio:.2f}x tokens/s of naive padded random batches (target >= 1.5x): {'PASS' if ratio >= 1.5 else 'FAIL'}"
    )
    return 0 if (loss_ok and ratio >= 1.5) else 1


if __name__ == "__main__":
    sys.exit(main())
