"""Tailored Learning, round 1 (and 2) on the toy profile: which setting moves the student's exam accuracy.

Trains round 1 (teacher rationales for every training question; negatives from the round-0 exam)
from the run's base student under a list of settings, then the round-1 student sits the same exam
as Tailored Learning's round 2 (exam_samples answers per training question at exam_temperature).
Every setting trains on the same data and seed; only the named knobs change.

    python bench/tailored_round1.py RUN_DIR [--settings NAME,NAME,...] [--seed 0]

RUN_DIR is a toy run with notebook 00 done (`orion run --profile toy --only 00`). Prints one
table row per setting and writes RUN_DIR/bench/tailored_round1.json. Not part of `make bench`
(each setting trains and sits an exam: about a minute or two each on two CPU cores).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orion_utils.collection import make_teacher  # noqa: E402
from orion_utils.config import load_profile  # noqa: E402
from orion_utils.jsonl import read_jsonl, write_json, write_jsonl  # noqa: E402
from orion_utils.records import Problem, StudentAttempt  # noqa: E402
from orion_utils.rundir import RunDir  # noqa: E402
from orion_utils.tailored import (  # noqa: E402
    default_generator_factory,
    exam_stats,
    run_exam,
    tailored_rationales,
    train_tailored_round,
    triplet_examples,
    unique_wrong_rationales,
)

# Every setting starts from the paper's loss and data settings (on top of the profile's tailored section)
PAPER = {"lam": 0.5, "prefix_weight": 0.1, "margin": 1.0, "teacher_samples": 2, "triplet_layer": -1}
# name → what it changes
SETTINGS = {
    "paper (λ=0.5, prefix 0.1, 2 samples)": {},
    "λ=0": {"lam": 0.0},
    "λ=0.1": {"lam": 0.1},
    "λ=0, prefix 0": {"lam": 0.0, "prefix_weight": 0.0},
    "λ=0.5, layer -2 (pre-norm)": {"triplet_layer": -2},
    "λ=0, prefix 1": {"lam": 0.0, "prefix_weight": 1.0},
    "paper, no warmup": {"warmup_ratio": 0.0},
    # the teacher's canonical wording only (its 2nd sample's wording is new to the toy student)
    "λ=0, prefix 0, 1 sample (= sft, 1 epoch)": {"lam": 0.0, "prefix_weight": 0.0, "teacher_samples": 1},
    "prefix 0.1, 1 sample": {"teacher_samples": 1},
    "prefix 1, 1 sample": {"prefix_weight": 1.0, "teacher_samples": 1},
    "prefix 0.1, 1 sample, no warmup": {"teacher_samples": 1, "warmup_ratio": 0.0},
    "λ=0.5, prefix 0, 1 sample": {"prefix_weight": 0.0, "teacher_samples": 1},
    # the prompt tokens unweighted (prefix 0), 2 teacher samples: λ and the triplet's hidden state alone
    "λ=0.1, prefix 0": {"lam": 0.1, "prefix_weight": 0.0},
    "λ=0.5, prefix 0": {"prefix_weight": 0.0},
    "λ=0.5, prefix 0, layer -2 (pre-norm)": {"prefix_weight": 0.0, "triplet_layer": -2},
}
# with rounds ≥ 2 (--rounds 2) a setting also trains round 2 (tailored rationales for the round-1
# student's mistakes; λ's triplet has positives there, the round-1 rationales) and sits its exam


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--settings", default="", help="setting names separated by | (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", default="toy")
    ap.add_argument("--rounds", type=int, default=1, help="1: round 1 only; 2: also round 2")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    profile = load_profile(args.profile)
    run = RunDir(args.run_dir)
    base_cfg = dataclasses.replace(profile.tailored, seed=args.seed, **PAPER)
    problems = read_jsonl(run.data("train_problems.jsonl"), Problem)
    template = profile.student.prompt_template
    factory = default_generator_factory(profile.generation)
    out = Path(args.run_dir) / "bench" / "tailored_round1"
    out.mkdir(parents=True, exist_ok=True)

    def exam(model_dir: str, cfg) -> dict:
        generator = factory(model_dir)
        try:
            from orion_utils.grading import grade

            attempts = run_exam(generator, problems, cfg, grade, template)
        finally:
            if hasattr(generator, "close"):
                generator.close()
        return attempts

    base_file = out / f"base_exam_seed{args.seed}.jsonl"  # the round-0 exam, reused by later invocations
    if base_file.exists():
        base_attempts = read_jsonl(base_file, StudentAttempt)
    else:
        base_attempts = exam(run.student_model(), base_cfg)
        write_jsonl(base_file, base_attempts)
    base = exam_stats(base_attempts)
    wrong = unique_wrong_rationales(base_attempts)
    teacher = make_teacher(profile.teacher, profile.data)
    print(f"base student: exam accuracy {base['exam_accuracy']:.3f} ({base['n_exam_attempts']} answers)", flush=True)

    names = [n.strip() for n in args.settings.split("|") if n.strip()] or list(SETTINGS)
    rows = [{"setting": "base (round 0 exam)", **base}]
    for name in names:
        overrides = dict(SETTINGS[name])
        cfg = dataclasses.replace(base_cfg, **overrides, rounds=args.rounds)
        traces = [t for t in teacher.collect(problems, n=cfg.teacher_samples) if t.correct]
        pool: dict = {}
        for t in traces:
            pool.setdefault(t.problem_id, []).append(t.cot)
        examples = triplet_examples(problems, traces, pool, wrong, "teacher", seed=cfg.seed + 1)
        t0 = time.perf_counter()
        slug = "".join(c if c.isalnum() else "_" for c in name)
        result = train_tailored_round(run.student_model(), examples, out / slug, cfg, template, resume=False)
        attempts = exam(result.model_dir, cfg)
        stats = exam_stats(attempts)
        losses = [h["loss"] for h in result.loss_history]
        row = {"setting": name, **overrides, **stats, "n_train": len(examples), "final_loss": losses[-1]}
        if cfg.rounds >= 2:  # round 2: tailored rationales for the round-1 student's mistakes, then its exam
            wrong2 = unique_wrong_rationales(attempts)
            tailored = [t for t in tailored_rationales(problems, teacher, wrong2, cfg) if t.correct]
            for t in tailored:
                pool.setdefault(t.problem_id, []).append(t.cot)
            examples2 = triplet_examples(problems, tailored, pool, wrong2, "tailored", seed=cfg.seed + 2)
            result2 = train_tailored_round(result.model_dir, examples2, out / (slug + "_r2"), cfg, template,
                                           resume=False)
            stats2 = exam_stats(exam(result2.model_dir, cfg))
            row.update(round2_exam_accuracy=stats2["exam_accuracy"], round2_n_train=len(examples2),
                       round2_n_triplets=sum(1 for e in examples2 if e.meta["positive"] and e.meta["negative"]))
            print(f"{'':40s} round 2: exam accuracy {stats2['exam_accuracy']:.3f} (train {len(examples2)})", flush=True)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(f"{name:40s} exam accuracy {stats['exam_accuracy']:.3f}  (train {len(examples)}, "
              f"final loss {losses[-1]:.3f})", flush=True)
        write_json(out / f"results_seed{args.seed}.json", rows)
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
