"""The statistics behind stage 03's acceptance defaults (``reflection.ReflectionConfig``).

Part 1, real long CoTs (R1-Distill-Qwen-32B on LIMO's problems): each check's statistic
(``acceptance.teacher_coverage``, ``acceptance.copy_similarity``) for rewrites of known kind made
from the teacher's own CoT: an exact copy, the copy with one reflection paragraph inserted, the first
half (or quarter) of the CoT, and another question's CoT.
Part 2 (``--run DIR``, any number): the statistics of every candidate of a run's stage 03
(``data/refinements.jsonl``), by whether its answer verified.

    python bench/acceptance_checks.py [--traces ../shared/data/traces/r1_distill_qwen32b_limo.jsonl]
                                      [--run outputs/smol] [--limit 291]
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from orion_utils.acceptance import copy_similarity, teacher_coverage
from orion_utils.records import format_cot
from orion_utils.teachers.datasets import split_reasoning_solution

REFLECTION = ("Wait, earlier I wrote 3 * 17 = 41 here, which is wrong: 3 * 17 = 51, not 41, so the correct "
              "value is 51. Let me redo this step with 51 and check it again before going on.")


def quantiles(xs) -> str:
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return "n=0"
    def q(p):
        return xs[min(len(xs) - 1, int(p * len(xs)))]
    return f"n={len(xs)} min {xs[0]:.3f} p10 {q(.1):.3f} median {statistics.median(xs):.3f} p90 {q(.9):.3f} max {xs[-1]:.3f}"


def traces_part(path: str, limit: int) -> None:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()][:limit]
    cots, questions = [], []
    for r in rows:
        thinking, solution, _ = split_reasoning_solution(r["solution"])
        cots.append(format_cot(thinking, solution))
        questions.append(r["question"])
    kinds = {
        "copy": lambda i, c: c,
        "copy + reflection paragraph": lambda i, c: c[: len(c) // 2] + "\n" + REFLECTION + "\n" + c[len(c) // 2:],
        "first half": lambda i, c: c[: len(c) // 2],
        "first quarter": lambda i, c: c[: len(c) // 4],
        "another question's CoT": lambda i, c: cots[(i + 1) % len(cots)],
    }
    print(f"## {len(cots)} real long CoTs ({path}); median {statistics.median(map(len, cots)):.0f} chars")
    for name, make in kinds.items():
        made = [make(i, c) for i, c in enumerate(cots)]
        cov = [teacher_coverage(m, c, q) for m, c, q in zip(made, cots, questions)]
        sim = [copy_similarity(m, c) for m, c in zip(made, cots)]
        print(f"{name:28s} coverage   {quantiles(cov)}")
        print(f"{'':28s} similarity {quantiles(sim)}")


def run_part(run: str) -> None:
    from orion_utils.acceptance import REASONS

    path = Path(run) / "data" / "refinements.jsonl"
    cands = [c for line in path.read_text().splitlines() if line.strip()
             for c in json.loads(line)["meta"].get("candidates", [])]
    print(f"## {run}: {len(cands)} candidates, {sum(c['verified'] for c in cands)} verified")
    for label, keep in (("all", lambda c: True), ("verified", lambda c: c["verified"])):
        sub = [c for c in cands if keep(c)]
        dist = [c.get("reflect_distance") for c in sub]
        print(f"{label:9s} reflect distance {quantiles(dist)}; no marker quoted/no cue: "
              f"{sum(d is None for d in dist)}; marker kinds "
              f"{ {k: sum(c.get('marker') == k for c in sub) for k in ('line', 'equation', 'number', '')} }")
        print(f"{label:9s} coverage         {quantiles([c.get('coverage') for c in sub])}")
        print(f"{label:9s} similarity       {quantiles([c.get('similarity') for c in sub])}")
    print("first failed check:", {r: sum(c.get("rejected") == r for c in cands) for r in REASONS},
          "accepted:", sum(c.get("rejected") is None for c in cands))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--traces", default="../shared/data/traces/r1_distill_qwen32b_limo.jsonl")
    ap.add_argument("--limit", type=int, default=291)
    ap.add_argument("--run", action="append", default=[])
    args = ap.parse_args()
    if args.traces:
        traces_part(args.traces, args.limit)
    for run in args.run:
        run_part(run)


if __name__ == "__main__":
    main()
