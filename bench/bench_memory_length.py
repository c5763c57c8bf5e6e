"""Peak memory of one training step against sequence length: SFT, EDIT's stage 2 and Tailored Learning.

On CPU with the real SmolLM2-135M-Instruct (49,152-token vocabulary; the packaged student, converted once,
``students.resolve_student``), float32, LoRA and gradient checkpointing on (as the GPU profiles train),
batch size 1: one SFT sequence, one EDIT pair (two rows: chosen and rejected) and one Tailored Learning
anchor with its positive and negative (three rows), every row ``length`` tokens of random ids
(``length_probe.probe_rows``), through each method's own trainer (``length_probe.probe_trainer`` and ``probe_step``: the
method's collator, ``compute_loss`` and backward; no optimizer update).

Measurement: each (method, length) runs in a fresh subprocess. After the model and the trainer are built
and the batch collated, the process frees what it can (``gc``, ``malloc_trim``), reads its resident set
(``VmRSS``) and resets the kernel's high-water mark (``/proc/self/clear_refs`` ← 5); after the step it reads
the high-water mark (``VmHWM``). The step's peak is ``VmHWM - VmRSS before``: every byte the step touched
(activations, logits, gradients), whoever allocated it (torch, the BLAS, Python). Linux only.

The target (issue 26): EDIT's and Tailored Learning's peaks grow no faster than SFT's with length, within
a small constant factor: the ratio columns should stay flat as the length doubles.

Run: ``nice python bench/bench_memory_length.py`` (about half an hour on one free thread); options
``--lengths 512 1024 2048 4096 --methods sft edit tailored --threads 1``, and ``--layers N`` to keep only the
first N of the 30 decoder layers (less compute; the vocabulary and LM head, whose logits are what grows
differently between the methods, stay as they are).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MiB = 2**20


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (this bench needs Linux)")


def one(method: str, length: int, threads: int, layers: int = 0) -> dict:
    """One (method, length) in this process: build, collate, then measure the step."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from orion_utils import length_probe
    from orion_utils.config import TrainingConfig
    from orion_utils.students import resolve_student

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model_dir = resolve_student("smollm2-135m-instruct", progress=False)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if layers:  # the first `layers` decoder layers only: less compute, the same vocabulary and LM head
        model.model.layers = model.model.layers[:layers]
        model.config.num_hidden_layers = layers
    cfg = TrainingConfig(use_lora=True, gradient_checkpointing=True, max_seq_len=length)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                      bias="none", task_type="CAUSAL_LM")
    with tempfile.TemporaryDirectory() as tmp:
        trainer, batch = length_probe.probe_trainer(model, tokenizer, method, length, tmp, cfg=cfg, peft_config=lora)
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        rss_before = _status_kib("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
        t0 = time.perf_counter()
        loss = length_probe.probe_step(trainer, batch)
        seconds = time.perf_counter() - t0
        hwm = _status_kib("VmHWM") * 1024
    return {"method": method, "length": length, "rows": int(batch["input_ids"].shape[0]),
            "width": int(batch["input_ids"].shape[1]), "loss": loss, "seconds": round(seconds, 2),
            "step_peak_bytes": hwm - rss_before, "rss_before_bytes": rss_before}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--methods", nargs="+", default=["sft", "edit", "tailored"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layers", type=int, default=0,
                    help="keep the first N of SmolLM2's 30 decoder layers (0: all); the vocabulary and LM head stay")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--one", nargs=2, metavar=("METHOD", "LENGTH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args.one[0], int(args.one[1]), args.threads, args.layers)), flush=True)
        return

    results = []
    for length in args.lengths:
        for method in args.methods:
            proc = subprocess.run([sys.executable, __file__, "--one", method, str(length), "--threads", str(args.threads),
                                   "--layers", str(args.layers)],
                                  capture_output=True, text=True, cwd=ROOT)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                print(f"{method} at {length}: failed (exit {proc.returncode})\n{proc.stderr[-3000:]}", flush=True)
                results.append({"method": method, "length": length, "failed": proc.returncode})
                continue
            r = json.loads(lines[-1][len("RESULT "):])
            results.append(r)
            print(f"  {method:9s} {length:5d} tokens x {r['rows']} rows: step peak {r['step_peak_bytes'] / MiB:8.1f} MiB "
                  f"({r['seconds']:.1f} s, loss {r['loss']:.3f})", flush=True)

    peak = {(r["method"], r["length"]): r.get("step_peak_bytes") for r in results}
    depth = f"first {args.layers} of 30 decoder layers" if args.layers else "all 30 decoder layers"
    print("\nPeak memory of one training step (MiB above the process's resident set before the step), "
          f"SmolLM2-135M ({depth}, 49,152-token vocabulary), CPU, float32, LoRA, gradient checkpointing")
    head = f"{'tokens':>7} " + " ".join(f"{m:>10}" for m in args.methods)
    head += " " + " ".join(f"{m + '/sft':>13}" for m in args.methods if m != "sft")
    print(head)
    for length in args.lengths:
        cells = [f"{peak[(m, length)] / MiB:10.1f}" if peak.get((m, length)) else f"{'failed':>10}" for m in args.methods]
        sft = peak.get(("sft", length))
        ratios = [f"{peak[(m, length)] / sft:13.2f}" if sft and peak.get((m, length)) else f"{'-':>13}"
                  for m in args.methods if m != "sft"]
        print(f"{length:7d} " + " ".join(cells) + " " + " ".join(ratios))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
