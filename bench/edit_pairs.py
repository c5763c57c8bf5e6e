"""EDIT's dual pairs, measured: how much of each CoT the key-token alignment marks.

EDIT learns the tokens where a correct and a wrong CoT differ (``edit.key_token_ops``, a token-level
Levenshtein alignment after the common prefix, in the student's tokenizer). That is only "key steps"
when the two CoTs are near-copies. This prints, per kind of pair, the share of the chosen (correct)
CoT's tokens marked key and the lengths, in the student's tokenizer (SmolLM2's by default):

- exposure, long: a real long CoT (R1-Distill-Qwen-32B on LIMO) vs a real SmolLM2-135M wrong
  attempt (from a run's ``data/student_attempts.jsonl``; GSM8K questions, so not the same question:
  what it measures is the alignment of a long text with a short one), and vs the CoT's own final
  solution (the best case for exposure: an "attempt" that is the teacher's own summary).
- exposure, short: the run's real pairs (GSM8K worked solutions vs SmolLM2's wrong attempts).
- teacher, toy: the toy teacher's real ``corrupt``/``rectify`` (``edit_pairs.pairs_from_teacher``).
- teacher, long, simulated: a long CoT with one number changed from the middle of its reasoning on
  and its final answer changed, i.e. what a reply that follows the corrupt prompt exactly gives. A
  real teacher's reply to the corrupt prompt could not be measured here (no teacher API or 32B model
  on this machine); how closely R1 copies 10k tokens is the open question.

- teacher, real model (``--local-teacher PATH``): a local model (``teachers.local.LocalTeacher``,
  transformers) asked with the corrupt prompt to corrupt the run's teacher CoTs, end to end (prompt,
  reply assembly, grading); how many replies used the tags, how many are wrong, their key share.

    python bench/edit_pairs.py [--run outputs/smol] [--tokenizer PATH] [--limit 291] [--toy 200]
                               [--local-teacher PATH --local-n 8]
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from orion_utils.edit import key_token_ops
from orion_utils.edit_pairs import pairs_from_exposure, pairs_from_teacher
from orion_utils.records import format_cot
from orion_utils.teachers.datasets import split_reasoning_solution


def _share(tok, chosen: str, rejected: str) -> tuple[float, int, int]:
    c = tok(chosen, add_special_tokens=False)["input_ids"]
    r = tok(rejected, add_special_tokens=False)["input_ids"]
    ops = key_token_ops(c, r)
    return ops.n_key_chosen / max(1, len(c)), len(c), len(r)


def _row(name: str, stats: list) -> str:
    if not stats:
        return f"| {name} | 0 | | | | |"
    share = sorted(s for s, _, _ in stats)
    def q(p):
        return share[min(len(share) - 1, int(p * len(share)))]
    return (f"| {name} | {len(stats)} | {100 * statistics.median(share):.1f} | {100 * q(.1):.1f}–{100 * q(.9):.1f} "
            f"| {statistics.median(c for _, c, _ in stats):.0f} | {statistics.median(r for _, _, r in stats):.0f} |")


def _corrupt_one_number(cot: str) -> str:
    """The CoT with, from the middle of its reasoning on, one number (the first there) changed wherever
    it occurs, and its last boxed answer changed: an ideal one-mistake corruption carried through."""
    close = cot.find("</think>")
    middle = (close if close > 0 else len(cot)) // 2
    found = re.search(r"\b\d+\b", cot[middle:])
    if found is None:
        return cot
    old = found.group()
    new = str(int(old) + 1)
    tail = re.sub(rf"\b{old}\b", new, cot[middle:])
    tail = re.sub(r"\\boxed\{([^{}]*)\}", lambda m: "\\boxed{" + m.group(1) + "1}", tail)
    return cot[:middle] + tail


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--traces", default="../shared/data/traces/r1_distill_qwen32b_limo.jsonl")
    ap.add_argument("--run", default="", help="a run directory whose student_attempts/teacher traces to use")
    ap.add_argument("--tokenizer", default="", help="default: the smollm2-135m-instruct student")
    ap.add_argument("--limit", type=int, default=291)
    ap.add_argument("--toy", type=int, default=200, help="toy problems for the toy teacher's pairs")
    ap.add_argument("--local-teacher", default="", help="a local model (transformers) asked to corrupt the run's CoTs")
    ap.add_argument("--local-n", type=int, default=8)
    ap.add_argument("--local-tokens", type=int, default=384)
    args = ap.parse_args()
    from transformers import AutoTokenizer

    from orion_utils.jsonl import read_jsonl
    from orion_utils.records import Problem, StudentAttempt, TeacherTrace
    from orion_utils.students import resolve_student

    tok = AutoTokenizer.from_pretrained(args.tokenizer or resolve_student("smollm2-135m-instruct", progress=False))
    rows = [json.loads(line) for line in Path(args.traces).read_text().splitlines() if line.strip()][: args.limit]
    cots, solutions = [], []
    for r in rows:
        thinking, solution, _ = split_reasoning_solution(r["solution"])
        cots.append(format_cot(thinking, solution))
        solutions.append(solution)
    table = {}
    run = Path(args.run) if args.run else None
    if run is not None:
        attempts = [a for a in read_jsonl(run / "data" / "student_attempts.jsonl", StudentAttempt) if not a.correct]
        table["exposure, long: R1 CoT vs a wrong attempt of the run's student"] = [
            _share(tok, c, attempts[i % len(attempts)].response) for i, c in enumerate(cots)] if attempts else []
    table["exposure, long: R1 CoT vs its own final solution"] = [_share(tok, c, s) for c, s in zip(cots, solutions)]
    if run is not None:
        problems = read_jsonl(run / "data" / "train_problems.jsonl", Problem)
        traces = read_jsonl(run / "data" / "teacher_traces.jsonl", TeacherTrace)
        attempts = read_jsonl(run / "data" / "student_attempts.jsonl", StudentAttempt)
        pairs = pairs_from_exposure(problems, traces, attempts)
        table["exposure, short: the run's pairs (its teacher CoT vs its student's wrong attempt)"] = [
            _share(tok, p.chosen, p.rejected) for p in pairs]
    from orion_utils.teachers.toy import ToyTeacher
    from orion_utils.toy.domain import generate_problems

    teacher = ToyTeacher(error_rate=0.3, seed=0)
    toy_problems = generate_problems(args.toy)
    toy_pairs = pairs_from_teacher(toy_problems, teacher.collect(toy_problems, 1), teacher)
    for kind in ("corrupted", "rectified"):
        table[f"teacher, toy: the toy teacher's {kind} pairs"] = [
            _share(tok, p.chosen, p.rejected) for p in toy_pairs if p.meta["kind"] == kind]
    if args.local_teacher and run is not None:  # a real model's reply to the corrupt prompt, end to end
        from orion_utils.teachers.local import LocalTeacher

        local = LocalTeacher(args.local_teacher, backend="transformers", max_tokens=args.local_tokens, seed=0)
        problem_of = {p.id: p for p in read_jsonl(run / "data" / "train_problems.jsonl", Problem)}
        good = [t for t in read_jsonl(run / "data" / "teacher_traces.jsonl", TeacherTrace) if t.correct]
        good = good[: args.local_n]
        replies = local.corrupt_many([(problem_of[t.problem_id], t) for t in good])
        kept = [(t, r) for t, r in zip(good, replies) if r is not None]
        tagged = sum(r.meta.get("reply_format") == "tagged" for _, r in kept)
        wrong = sum(not r.correct for _, r in kept)
        name = f"teacher, real model: {Path(args.local_teacher).name} corrupting the run's CoTs"
        table[name] = [_share(tok, t.cot, r.cot) for t, r in kept if not r.correct]
        print(f"{name}: {len(kept)} replies, {tagged} tagged, {wrong} wrong (kept as pairs)")
    table["teacher, long, simulated: R1 CoT vs itself with one number changed on"] = [
        _share(tok, c, _corrupt_one_number(c)) for c in cots]
    print(f"Key tokens of EDIT's dual pairs, in the tokenizer of {tok.name_or_path.split('/')[-1]}")
    print("| pairs | n | key share of the chosen CoT, median (%) | p10–p90 (%) | chosen tokens (median) | rejected tokens (median) |")
    print("|---|---|---|---|---|---|")
    for name, stats in table.items():
        print(_row(name, stats))


if __name__ == "__main__":
    main()
