"""The statistics behind stage 03's acceptance defaults (``reflection.ReflectionConfig``).

Part 1, real long CoTs (R1-Distill-Qwen-32B on LIMO's problems): rewrites of known kind, built by
``tests/helpers/long_rewrites.py`` from each CoT and a wrong attempt made by changing one value it derives
(the teacher's CoT with a reflection inserted at the wrong step in six wordings and four positions, the
prompt echoed back, the wrong step quoted and declared fine, copies, truncations, a reflection then a cut,
another question's CoT), go through ``reflection.refine`` at the default knobs: the share of each kind
accepted, the first failed check of the rest, and each check's statistic per kind.
Part 2 (``--run DIR``, any number): the statistics of every candidate of a run's stage 03
(``data/refinements.jsonl``), by whether its answer verified.

    python bench/acceptance_checks.py [--traces ../shared/data/traces/r1_distill_qwen32b_limo.jsonl]
                                      [--run outputs/smol] [--limit 291]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from orion_utils.acceptance import REASONS, copy_similarity
from orion_utils.records import Problem, StudentAttempt
from orion_utils.reflection import ReflectionConfig, refine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.long_rewrites import EXPECTED, Fixed, candidates, load_cases  # noqa: E402


def quantiles(xs) -> str:
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return "n=0"
    def q(p):
        return xs[min(len(xs) - 1, int(p * len(xs)))]
    return f"n={len(xs)} min {xs[0]:.3f} p10 {q(.1):.3f} median {statistics.median(xs):.3f} p90 {q(.9):.3f} max {xs[-1]:.3f}"


def judge_kind(cases, items, cfg: ReflectionConfig) -> list[dict]:
    """Every candidate of one kind through ``refine`` (as stage 03 judges it): its stored verdict."""
    problems, texts, wrong = {}, {}, {}
    for case, text in items:
        pid = f"limo-{case.index}"
        problems[pid] = Problem(pid, case.question, case.gold)
        texts.setdefault(pid, []).append(text)
        wrong[pid] = [StudentAttempt(pid, 0, case.wrong_attempt, None, False, "made")]
    teacher = {f"limo-{c.index}": c.cot for c in cases}
    m = max(len(t) for t in texts.values())
    cfg = ReflectionConfig(**{**cfg.__dict__, "m": m, "selection": "first"})
    refs = refine(list(problems.values()), teacher, wrong, Fixed(texts), cfg)
    return [c for r in refs for c in r.meta["candidates"]]


def traces_part(path: str, limit: int) -> None:
    cases = load_cases(limit, Path(path))
    cfg = ReflectionConfig()
    print(f"## {len(cases)} real long CoTs ({path}); median {statistics.median(len(c.cot) for c in cases):.0f} "
          f"chars; knobs reflect_window={cfg.reflect_window} min_coverage={cfg.min_coverage} "
          f"min_added_chars={cfg.min_added_chars} reject_echoes={cfg.reject_echoes}")
    print("| kind | candidates | accepted | expected | first failed check of the rest |")
    print("|---|---|---|---|---|")
    stats = {}
    start = time.process_time()
    n = 0
    for kind, items in candidates(cases).items():
        verdicts = judge_kind(cases, items, cfg)
        n += len(verdicts)
        share = sum(v["rejected"] is None for v in verdicts) / len(verdicts)
        rest = {r: sum(v["rejected"] == r for v in verdicts) for r in REASONS}
        lo, hi = EXPECTED[kind]
        print(f"| {kind} | {len(verdicts)} | {100 * share:.1f}% | {100 * lo:.0f}-{100 * hi:.0f}% | "
              f"{', '.join(f'{r} {k}' for r, k in rest.items() if k) or '-'} |")
        stats[kind] = (verdicts, items)
    print(f"\n{n} candidates judged in {time.process_time() - start:.1f} s of CPU "
          f"({1000 * (time.process_time() - start) / n:.1f} ms each, grading included)\n")
    for kind, (verdicts, items) in stats.items():
        sim = [copy_similarity(v["text"], case.cot) for v, (case, _) in zip(verdicts, items)]
        print(f"{kind}:")
        print(f"  reflect distance    {quantiles([v['reflect_distance'] for v in verdicts])}")
        print(f"  correction distance {quantiles([v['correction_distance'] for v in verdicts])}")
        print(f"  coverage            {quantiles([v['coverage'] for v in verdicts])}")
        print(f"  added chars         {quantiles([v['added_chars'] for v in verdicts])}")
        print(f"  similarity          {quantiles(sim)}")
        echoes = sorted({v['echo'].split(':')[0] for v in verdicts if v['echo']})
        if echoes:
            print(f"  echo found by       {echoes}")


def run_part(run: str) -> None:
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
        print(f"{label:9s} correction dist. {quantiles([c.get('correction_distance') for c in sub])}")
        print(f"{label:9s} coverage         {quantiles([c.get('coverage') for c in sub])}")
        print(f"{label:9s} added chars      {quantiles([c.get('added_chars') for c in sub])}")
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
