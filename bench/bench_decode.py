"""Benchmark: ``model.generate`` against ``transformers_backend.decode_batch`` (a finished row leaves the
batch) on SmolLM2-135M-Instruct, in one run, with the same left-padded batch; and whether the two write the
same tokens.

A batch of toy questions (the demo's benchmark, generated here from the smol_demo profile's toy domain) is
decoded greedily and then sampled (the demo's exposure settings: temperature 0.8, top-p 0.9), each both ways
with the same seed, one torch thread. Printed per decoding: the wall time of each, the ratio
decode_batch / generate, the tokens written, and whether every row is the same token for token.

    python bench/bench_decode.py [--questions 24] [--max-new-tokens 256] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orion_utils.config import load_profile  # noqa: E402
from orion_utils.sampling import encode_prompts  # noqa: E402
from orion_utils.students import resolve_student  # noqa: E402
from orion_utils.transformers_backend import TransformersBackend, decode_batch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from orion_utils.toy.domain import generate_problems

    torch.set_num_threads(args.threads)
    profile = load_profile("smol_demo")
    problems = generate_problems(args.questions, profile.toy_domain, seed=0, split="test")
    backend = TransformersBackend(resolve_student("smollm2-135m-instruct"), batch_size=args.questions,
                                  progress=False, num_threads=args.threads)
    template = profile.student.prompt_template
    encoded = encode_prompts(backend.tokenizer, [p.question for p in problems], template)
    ids, mask = backend._left_pad(encoded)
    eos, pad = backend.eos_token_ids, backend.pad_token_id
    for name, sampling in (("greedy", {}), ("sampled", {"temperature": 0.8, "top_p": 0.9})):
        kw = dict(do_sample=True, top_k=0, **sampling) if sampling else dict(do_sample=False)
        torch.manual_seed(0)
        started = time.perf_counter()
        with torch.inference_mode():
            out = backend.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.max_new_tokens,
                                         eos_token_id=eos, pad_token_id=pad, num_beams=1, repetition_penalty=1.0,
                                         **kw)
        t_generate = time.perf_counter() - started
        reference = []
        for row in out[:, ids.shape[1]:].tolist():
            reference.append(row[:next((k + 1 for k, t in enumerate(row) if t in eos), len(row))])
        torch.manual_seed(0)
        started = time.perf_counter()
        with torch.inference_mode():
            rows = decode_batch(backend.model, ids, mask, max_new_tokens=args.max_new_tokens, eos_token_ids=eos,
                                pad_token_id=pad, **sampling)
        t_decode = time.perf_counter() - started
        same = sum(a == b for a, b in zip(rows, reference))
        print(f"{name}: generate {t_generate:.1f} s, decode_batch {t_decode:.1f} s, ratio {t_decode / t_generate:.2f}; "
              f"{sum(map(len, rows))} tokens written in {len(rows)} rows (longest {max(map(len, rows))}); "
              f"{same} of {len(rows)} rows the same token for token")


if __name__ == "__main__":
    main()
