"""Training throughput on CUDA: padding-free batches (what ``train_sft`` picks on a GPU with a varlen
attention kernel) vs naive padded random batches, on length-skewed long CoTs.

One epoch of the same data from the same initial weights per mode, through the very trainer
``train_sft`` uses (``training.build_trainer``), bf16 autocast, learning rate 0 so the weights stay
fixed, Liger kernels as ``train_sft`` would set them. Reports real (non-padding) tokens/s per mode,
the padding-free / padded ratio, and the mean per-token loss of each mode (the same data at the
same weights must give the same loss, to bf16 precision).

The attention kernel is the one ``train_sft`` picks (``training.resolve_attn("auto", "cuda")``):
FlashAttention 3/2 when installed; with sdpa, padding-free is correct but builds a dense mask over
the whole flattened batch, and the script says so.

Needs a CUDA GPU: on a machine without one it prints that nothing was measured and exits 0.
Run: ``python bench/bench_padding_free_cuda.py`` (about a minute on one GPU).
Options: ``--n 256 --batch-size 16 --hidden 1024 --layers 8 --max-len 4096``.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

from orion_utils.config import TrainingConfig
from orion_utils.records import SFTExample
from orion_utils.training import (
    build_sft_rows,
    build_trainer,
    quiet,
    resolve_attn,
    resolve_batching,
    resolve_liger,
)


def make_student(out: Path, hidden: int, layers: int, max_len: int, seed: int = 0) -> Path:
    """A random Llama (heads of 64) with the tiny byte-level tokenizer of bench_training, saved in HF format."""
    from bench_training import make_student as make_tiny
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    make_tiny(out)  # tokenizer + chat template
    tok = AutoTokenizer.from_pretrained(out)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=int(2.75 * hidden), num_hidden_layers=layers,
        num_attention_heads=hidden // 64, num_key_value_heads=max(1, hidden // 256), max_position_embeddings=max_len + 64,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None, tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def skewed_examples(tokenizer, n: int, max_len: int, seed: int = 0) -> list[SFTExample]:
    """Long CoTs, token lengths log-normal (median ~max_len/8, long tail), clipped to [64, max_len - 32]."""
    rng = random.Random(seed)
    alphabet = "0123456789+-=*() "
    examples = []
    for i in range(n):
        target = int(min(max_len - 32, max(64, rng.lognormvariate(math.log(max_len / 8), 0.9))))
        text = "".join(rng.choice(alphabet) for _ in range(target))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: target - 4]
        examples.append(SFTExample(f"q{i}", f"Q{i}: what is {i} + {i}?", "<think>" + tokenizer.decode(ids) + "</think>", "bench"))
    return examples


def run_mode(model_dir: Path, tokenizer, rows, cfg, batching: str, attn: str, liger: bool, work: Path) -> dict:
    from transformers import AutoModelForCausalLM

    with quiet():
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32, attn_implementation=attn, device_map={"": torch.cuda.current_device()}
        )
        trainer = build_trainer(model, tokenizer, rows, cfg, work / batching, batching, "cuda", "bfloat16", liger=liger)
        batches = list(trainer.get_train_dataloader())
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.train()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    real = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else int(b["input_ids"].numel()) for b in batches)
    slots = sum(int(b["input_ids"].numel()) for b in batches)
    out = {"seconds": seconds, "real": real, "slots": slots, "tokens_per_s": real / seconds,
           "mean_loss": trainer.nll_sum / trainer.n_supervised, "supervised": trainer.n_supervised}
    del trainer, model
    torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256, help="number of CoTs")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=2, help="repetitions per mode (best time is kept)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("RESULT: not measured: this benchmark needs a CUDA GPU and none is visible to torch here")
        return 0

    from transformers import AutoTokenizer

    attn = resolve_attn("auto", "cuda")
    picked, why = resolve_batching("auto", attn)
    liger, liger_why = resolve_liger("cuda", "trl")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with quiet():
            model_dir = make_student(tmp / "student", args.hidden, args.layers, args.max_len)
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
        cfg = TrainingConfig(learning_rate=0.0, num_epochs=1, batch_size=args.batch_size, max_seq_len=args.max_len,
                             warmup_ratio=0.0, logging_steps=10**6, save_steps=-1, seed=0)
        rows, _ = build_sft_rows(tokenizer, skewed_examples(tokenizer, args.n, args.max_len), max_seq_len=args.max_len)
        lengths = sorted(len(r["input_ids"]) for r in rows)
        print(f"GPU {torch.cuda.get_device_name(0)}; data: {len(rows)} CoTs, tokens min {lengths[0]} / median "
              f"{lengths[len(lengths) // 2]} / max {lengths[-1]}, total {sum(lengths)}; batch {args.batch_size}; random "
              f"Llama hidden {args.hidden} x {args.layers} layers, bf16 autocast; attn={attn}; liger={liger} ({liger_why}); "
              f"train_sft's auto batching here: {picked} ({why}); lr=0, best of {args.reps}")
        if attn not in ("flash_attention_2", "flash_attention_3"):
            print("note: no FlashAttention installed: padding-free runs with sdpa and a dense mask over the flattened batch")
        results: dict = {}
        for rep in range(args.reps):
            for mode in ("padded", "padding_free"):
                r = run_mode(model_dir, tokenizer, rows, cfg, mode, attn, liger, tmp / f"ck{rep}")
                if mode not in results or r["seconds"] < results[mode]["seconds"]:
                    results[mode] = r
    print(f"{'batching':<14}{'seconds':>9}{'tokens/s':>12}{'padding':>9}{'mean loss':>12}")
    for mode, r in results.items():
        print(f"{mode:<14}{r['seconds']:>9.2f}{r['tokens_per_s']:>12.0f}{1 - r['real'] / r['slots']:>8.0%}"
              f"{r['mean_loss']:>12.5f}")
    a, b = results["padded"], results["padding_free"]
    print(f"same loss on the same data: relative difference {abs(a['mean_loss'] - b['mean_loss']) / a['mean_loss']:.1e} "
          f"(bf16), supervised tokens {a['supervised']} vs {b['supervised']}")
    ratio = results["padding_free"]["tokens_per_s"] / results["padded"]["tokens_per_s"]
    print(f"RESULT: padding-free {ratio:.2f}x the tokens/s of padded random batches (attn={attn})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
