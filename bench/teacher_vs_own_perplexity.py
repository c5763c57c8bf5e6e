"""How foreign is a real reasoning teacher's CoT to a small student, next to the student's own writing?

SmolLM2-135M-Instruct (the smol profile's student) scores R1-Distill-Qwen-32B's LIMO CoTs (the first
3,000 characters of the first 12 verified traces) and its own sampled answers to the same questions
(temperature 0.7, top_p 0.95, 200 new tokens), both as SFT scores them (``generation.completion_nll``).
The toy profile's wording gap (docs/lab_record.md, "How the toy's knobs were chosen") is set against this number.

    python bench/teacher_vs_own_perplexity.py [--traces PATH] [--n 12]

Not part of `make bench` (a few minutes on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orion_utils.generation import completion_nll  # noqa: E402
from orion_utils.students import resolve_student  # noqa: E402
from orion_utils.teachers.datasets import load_trace_dataset  # noqa: E402

TRACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "traces" / "r1_distill_qwen32b_limo.jsonl"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--traces", default=str(TRACES))
    ap.add_argument("--n", type=int, default=12)
    args = ap.parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    path = resolve_student("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    problems, traces = load_trace_dataset("limo", data_dir=args.traces, limit=args.n)
    questions = {p.id: p.question for p in problems}
    pairs = [(questions[t.problem_id], t.cot[:3000]) for t in traces if t.correct][: args.n]
    teacher = completion_nll(model, tok, [q for q, _ in pairs], [c for _, c in pairs], batch_size=2)
    own = []
    for q, _ in pairs:
        ids = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, return_tensors="pt")
        ids = ids if torch.is_tensor(ids) else ids["input_ids"]
        torch.manual_seed(0)
        out = model.generate(ids, do_sample=True, temperature=0.7, top_p=0.95, max_new_tokens=200)
        own.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    mine = completion_nll(model, tok, [q for q, _ in pairs], own, batch_size=2)
    for name, nll in (("teacher CoTs", teacher), ("own samples", mine)):
        mean = sum(nll) / len(nll)
        print(f"{name}: {mean:.3f} nats per token, perplexity {math.exp(mean):.2f} (n={len(nll)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
