"""EDIT's dual pairs (Dai et al., ACL 2025): a correct and a wrong CoT of one question, from the teacher
(its wrong CoTs rectified, its correct ones corrupted: ``pairs_from_teacher``) or from error exposure
(the teacher's correct CoT against the student's wrong attempt: ``pairs_from_exposure``), and stage 1's
SFT data made from them (``stage1_examples``). The key tokens and stage 2 are in ``edit``; how much of
each pair they mark, and which pairs that drops, is summarised here (``key_share_summary``)."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from typing import Any, Optional, Sequence

from .config import FEEDBACK_TEACHER_KINDS, PAIR_SOURCES
from .records import DualPair, Problem, SFTExample, StudentAttempt, TeacherTrace, text_key

SOURCE_LABELS = {"exposure": "error_exposure", "teacher": "teacher_prompts"}  # DualPair.source


def resolve_pair_source(source: str, teacher_kind: str) -> str:
    """``auto``: EDIT's own construction, ``teacher`` (rectify/corrupt), where the profile's teacher can
    be asked (``FEEDBACK_TEACHER_KINDS``), else ``exposure``; any other value is kept."""
    if source not in PAIR_SOURCES:
        raise ValueError(f"edit.pair_source must be one of {PAIR_SOURCES}, got {source!r}")
    if source != "auto":
        return source
    return "teacher" if teacher_kind in FEEDBACK_TEACHER_KINDS else "exposure"


def _by_problem(items) -> dict[str, list]:
    grouped = defaultdict(list)
    for item in items:
        grouped[item.problem_id].append(item)
    return grouped


def _ask_many(teacher, what: str, items: list) -> list:
    """``teacher.<what>_many(items)`` in one batched call (the API teacher sends the requests
    concurrently); a teacher without the batched form is asked item by item. A request that failed
    after every retry stops the stage with one clear error: the others are cached, so a re-run
    only asks for the failed ones."""
    if not items:
        return []
    many = getattr(teacher, f"{what}_many", None)
    if many is None:
        return [getattr(teacher, what)(p, t) for p, t in items]
    out = list(many(items))
    failed = [items[i][0].id for i, t in enumerate(out) if t is None]
    if failed:
        from .teachers.prompts import TeacherRequestFailed

        raise TeacherRequestFailed(
            f"{len(failed)} of {len(items)} {what} requests failed after every retry (first: problem "
            f"{failed[0]!r}); they are recorded, and the next run retries only them"
        )
    return out


def pairs_from_teacher(
    problems: Sequence[Problem], traces: Sequence[TeacherTrace], teacher, max_pairs_per_problem: int = 0,
    counts: Optional[dict] = None,
) -> list[DualPair]:
    """EDIT's own data: rectify the teacher's wrong CoTs and corrupt its correct ones.

    A correct trace CoT+ is sent through ``teacher.corrupt`` (contrastive prompt) → pair
    (CoT+, CoT+−), kept only if the corruption is really wrong. A wrong trace CoT− goes through
    ``teacher.rectify`` (answer-hint prompt) → pair (CoT−+, CoT−), kept only if the rectified CoT
    verifies. ``meta["kind"]`` says which ("corrupted" / "rectified"); the rectified CoTs are
    D−+ for stage 1. A reply that is no rewrite is rejected before grading (``reply_rejection``: cut
    off, untagged, empty): graded, a cut-off or untagged corruption would pass as "wrong" and make a
    pair whose every token is key.

    The teacher is asked in batches (``corrupt_many`` / ``rectify_many``: one call each per pass, so
    the API teacher's concurrency applies): each pass asks, for every question still short of
    ``max_pairs_per_problem`` pairs, as many of its next traces as it still needs, a question's wrong
    and correct traces taken in turn, wrong first (``_in_turn``), so a limit of 2 gives a question with
    both one rectified and one corrupted pair. ``counts`` (a dict, filled in): what was asked and why
    replies made no pair (``teacher_reply_counts``'s keys).
    """
    from .budget import since, snapshot, stage_line

    problem_of = {p.id: p for p in problems}
    before = snapshot(teacher)  # the prompt budget's counts (orion_utils.budget): this call's are shown
    groups = {pid: _in_turn(g) for pid, g in _by_problem(traces).items() if pid in problem_of}
    order = {pid: k for k, pid in enumerate(groups)}
    kept = {pid: 0 for pid in groups}
    position = {pid: 0 for pid in groups}
    found: list[tuple[tuple[int, int], DualPair]] = []
    tally: Counter = Counter()
    while todo := _next_traces(groups, position, kept, max_pairs_per_problem):
        for (pid, j), other in _ask_teacher(teacher, problem_of, groups, todo):
            trace = groups[pid][j]
            tally["asked_" + ("corrupt" if trace.correct else "rectify")] += 1
            pair, why = _dual_pair(problem_of[pid], trace, other)
            if pair is None:
                tally[why] += 1
                continue
            kept[pid] += 1
            found.append(((order[pid], j), pair))
    budget = since(teacher, before)
    if budget:
        print(stage_line("edit", budget))
    if counts is not None:
        counts.update(teacher_reply_counts(tally))
    return [pair for _, pair in sorted(found, key=lambda x: x[0])]


REPLY_REJECTIONS = ("cut_off", "untagged", "empty")  # a teacher reply that is no rewrite (reply_rejection)
NOT_A_PAIR = ("prompt_left_out", "corruption_still_correct", "rectification_still_wrong")


def teacher_reply_counts(tally) -> dict:
    """The counts of ``pairs_from_teacher`` as stored in the pairs' summary: requests asked by kind,
    replies rejected by reason (``REPLY_REJECTIONS``), the others that made no pair (``NOT_A_PAIR``)."""
    return {"asked": {k: int(tally.get("asked_" + k, 0)) for k in ("rectify", "corrupt")},
            "rejected": {k: int(tally.get(k, 0)) for k in REPLY_REJECTIONS},
            "not_a_pair": {k: int(tally.get(k, 0)) for k in NOT_A_PAIR}}


def reply_rejection(reply: TeacherTrace, source: TeacherTrace) -> Optional[str]:
    """Why a rectify/corrupt reply is no rewrite of ``source``, or None: ``cut_off`` (the teacher's output
    hit its token limit, finish reason "length"), ``untagged`` (the reply lacks the
    ``<rewritten_reasoning>`` tags the prompt asks for: ``teachers.prompts.rewritten_cot``), ``empty``
    (no text, or no reasoning where ``source`` has one). A teacher that writes its rewrites itself (the
    toy teacher) records no finish reason or reply format and is judged on emptiness alone."""
    meta = reply.meta or {}
    if meta.get("finish_reason") == "length":
        return "cut_off"
    if meta.get("reply_format") == "untagged":
        return "untagged"
    if not (reply.thinking.strip() or reply.solution.strip()) or (source.thinking.strip()
                                                                 and not reply.thinking.strip()):
        return "empty"
    return None


def _in_turn(group: list[TeacherTrace]) -> list[TeacherTrace]:
    """A question's traces with its wrong and correct ones taken in turn, wrong first, each in order."""
    wrong, right = [t for t in group if not t.correct], [t for t in group if t.correct]
    out = []
    for k in range(max(len(wrong), len(right))):
        out += wrong[k : k + 1] + right[k : k + 1]
    return out


def _next_traces(groups: dict, position: dict, kept: dict, max_pairs_per_problem: int) -> list[tuple[str, int]]:
    """The traces of one pass, as (question, index in its group): for every question still short of
    ``max_pairs_per_problem`` pairs, as many of its next traces as it still needs (all without a limit)."""
    todo = []
    for pid, group in groups.items():
        need = (max_pairs_per_problem - kept[pid]) if max_pairs_per_problem else len(group)
        take = group[position[pid] : position[pid] + max(0, need)]
        todo += [(pid, position[pid] + j) for j in range(len(take))]
        position[pid] += len(take)
    return todo


def _ask_teacher(teacher, problem_of: dict, groups: dict, todo: list) -> list[tuple[tuple[str, int], Any]]:
    """The teacher's reply to each trace of ``todo``: its correct traces corrupted, its wrong ones
    rectified, each kind in one batched call."""
    to_corrupt = [(pid, j) for pid, j in todo if groups[pid][j].correct]
    to_rectify = [(pid, j) for pid, j in todo if not groups[pid][j].correct]
    corrupted = _ask_many(teacher, "corrupt", [(problem_of[pid], groups[pid][j]) for pid, j in to_corrupt])
    rectified = _ask_many(teacher, "rectify", [(problem_of[pid], groups[pid][j]) for pid, j in to_rectify])
    return [*zip(to_corrupt, corrupted), *zip(to_rectify, rectified)]


def _dual_pair(problem: Problem, trace: TeacherTrace, other) -> tuple[Optional[DualPair], str]:
    """The pair of a teacher trace and the teacher's rewrite of it, or (None, why not): a rewrite whose
    prompt did not fit the teacher's budget, a reply that is no rewrite (``reply_rejection``), a
    corruption that is still correct, a rectification that is still wrong."""
    from .budget import is_left_out

    if is_left_out(other):
        return None, "prompt_left_out"
    rejected_reply = reply_rejection(other, trace)
    if rejected_reply:
        return None, rejected_reply
    if trace.correct:
        if other.correct:
            return None, "corruption_still_correct"
        chosen, rejected, kind = trace, other, "corrupted"
    else:
        if not other.correct:
            return None, "rectification_still_wrong"
        chosen, rejected, kind = other, trace, "rectified"
    return DualPair(
        problem_id=problem.id,
        question=problem.question,
        chosen=chosen.cot,
        rejected=rejected.cot,
        source=SOURCE_LABELS["teacher"],
        meta={
            "kind": kind,
            "trace_sample": trace.sample_index,
            "teacher": other.teacher,
            "chosen_answer": chosen.answer,
            "rejected_answer": rejected.answer,
            **({"served_model": other.meta["served_model"]} if (other.meta or {}).get("served_model") else {}),
        },
    ), ""


def pairs_from_exposure(
    problems: Sequence[Problem],
    teacher_traces: Sequence[TeacherTrace],
    attempts: Sequence[StudentAttempt],
    max_pairs_per_problem: int = 0,
) -> list[DualPair]:
    """Natural pairs from error exposure: the teacher's correct CoT vs the student's wrong attempt.

    Each distinct wrong attempt of a question is paired with one of the question's correct
    teacher CoTs (round-robin over them); questions without both are skipped.
    """
    problem_of = {p.id: p for p in problems}
    correct = _by_problem(t for t in teacher_traces if t.correct)
    pairs: list[DualPair] = []
    for pid, wrong in _by_problem(a for a in attempts if not a.correct).items():
        problem, good = problem_of.get(pid), correct.get(pid, [])
        if problem is None or not good:
            continue
        seen: set[str] = set()
        for attempt in wrong:
            key = text_key(attempt.response)
            if key in seen:
                continue
            if max_pairs_per_problem and len(seen) >= max_pairs_per_problem:
                break
            trace = good[len(seen) % len(good)]
            seen.add(key)
            pairs.append(
                DualPair(
                    problem_id=pid,
                    question=problem.question,
                    chosen=trace.cot,
                    rejected=attempt.response,
                    source=SOURCE_LABELS["exposure"],
                    meta={
                        "kind": "exposure",
                        "trace_sample": trace.sample_index,
                        "attempt_sample": attempt.sample_index,
                        "chosen_answer": trace.answer,
                        "rejected_answer": attempt.answer,
                    },
                )
            )
    return pairs


def build_dual_pairs(
    source: str,
    problems: Sequence[Problem],
    traces: Sequence[TeacherTrace],
    *,
    teacher=None,
    attempts: Optional[Sequence[StudentAttempt]] = None,
    max_pairs_per_problem: int = 0,
    counts: Optional[dict] = None,
) -> list[DualPair]:
    """Dual pairs from ``source``: ``"teacher"`` (needs ``teacher``) or ``"exposure"``
    (needs ``attempts``); ``"auto"``: ``"teacher"`` when ``teacher`` can rectify and corrupt.
    ``counts``: filled in with the teacher's replies, asked and rejected (``pairs_from_teacher``)."""
    if source == "auto":
        can = teacher is not None and all(hasattr(teacher, m) or hasattr(teacher, m + "_many")
                                           for m in ("rectify", "corrupt"))
        source = "teacher" if can else "exposure"
    if source == "teacher":
        if teacher is None or not all(
            hasattr(teacher, m) or hasattr(teacher, m + "_many") for m in ("rectify", "corrupt")
        ):
            raise ValueError(
                "pair_source='teacher' needs a teacher with rectify() and corrupt() (a FeedbackTeacher)"
            )
        return pairs_from_teacher(problems, traces, teacher, max_pairs_per_problem, counts)
    if source == "exposure":
        if attempts is None:
            raise ValueError("pair_source='exposure' needs the student's graded attempts (error exposure)")
        return pairs_from_exposure(problems, traces, attempts, max_pairs_per_problem)
    raise ValueError(f"pair_source must be one of {PAIR_SOURCES}, got {source!r}")


def stage1_examples(
    problems: Sequence[Problem], traces: Sequence[TeacherTrace], pairs: Sequence[DualPair] = (),
    positives: Optional[Sequence[SFTExample]] = None,
) -> list[SFTExample]:
    """Stage-1 SFT data: D+ (correct teacher CoTs) ∪ D−+ (rectified CoTs from the pairs), deduplicated.

    ``positives``: D+ as the ``sft`` baseline's set (one verified CoT per question, stage 01's
    ``training_set_sft.jsonl``), as the paper's stage 1 extends what its Std-CoT baseline trains on; with
    several teacher samples per question every correct trace would give EDIT several times the ``sft``
    baseline's data. None: every correct trace. Pairs dropped for their key-token share
    (``meta["dropped"]``) give no D−+. With ``pair_source="exposure"`` there is no D−+, and stage 1 is
    plain SFT on the teacher's correct CoTs (the ``sft`` baseline).
    """
    question_of = {p.id: p.question for p in problems}
    examples, seen = [], set()

    def add(pid: str, response: str, source: str, meta: dict) -> None:
        key = (pid, text_key(response))
        if pid in question_of and key not in seen:
            seen.add(key)
            examples.append(
                SFTExample(
                    problem_id=pid, question=question_of[pid], response=response, source=source, meta=meta
                )
            )

    if positives is None:
        for t in traces:
            if t.correct:
                add(t.problem_id, t.cot, "teacher", {"sample_index": t.sample_index})
    else:
        for e in positives:
            add(e.problem_id, e.response, "teacher", dict(e.meta or {}))
    for pair in pairs:
        if pair.meta.get("kind") == "rectified" and not pair.meta.get("dropped"):
            add(pair.problem_id, pair.chosen, "rectified", {"trace_sample": pair.meta.get("trace_sample")})
    return examples


# --------------------------------------------------------------------------------------------
# The key-token share: how much of a pair the alignment marks (``edit.measure_key_shares`` stores it)


PAIR_KINDS = ("rectified", "corrupted", "exposure")


def quantile(values: Sequence[float], q: float) -> Optional[float]:
    """The q-quantile of ``values``, linear between order statistics (numpy's default); None if empty."""
    xs = sorted(values)
    if not xs:
        return None
    at = q * (len(xs) - 1)
    lo = int(at)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (at - lo)


def mark_key_share_drops(pairs: Sequence[DualPair], max_key_share: float) -> list[DualPair]:
    """The pairs, those whose correct CoT has more than ``max_key_share`` of its tokens marked key
    (``meta["key_share"]``) marked ``meta["dropped"]``: stage 1 and stage 2 leave them out."""
    from dataclasses import replace

    out = []
    for p in pairs:
        share = p.meta.get("key_share")
        meta = {k: v for k, v in p.meta.items() if k != "dropped"}
        if share is not None and share > max_key_share:
            meta["dropped"] = f"key share {share:.3f} > edit.max_key_share {max_key_share}"
        out.append(replace(p, meta=meta))
    return out


def key_share_summary(pairs: Sequence[DualPair], max_key_share: float, replies: Optional[dict] = None) -> dict:
    """What the EDIT stage's pairs are (``EditDir.pair_summary``): pairs of each kind (built, and kept
    after the key-share rule), the distribution of the key-token share of the correct CoT (the share of its
    tokens, in the student's tokenizer, that the alignment marks key and stage 2 weights with α: median,
    p90, max) and of the wrong CoT, the pairs dropped above ``max_key_share``, and ``replies``: the
    teacher's replies asked and rejected (``teacher_reply_counts``; None for exposure pairs)."""
    kinds = Counter(p.meta.get("kind", "") for p in pairs)
    kept = [p for p in pairs if not p.meta.get("dropped")]

    def dist(key: str) -> dict:
        xs = [float(p.meta[key]) for p in pairs if p.meta.get(key) is not None]
        return {"n": len(xs), "median": statistics.median(xs) if xs else None, "p90": quantile(xs, 0.9),
                "max": max(xs) if xs else None}

    return {
        "n_pairs": len(pairs),
        "kinds": {k: int(kinds.get(k, 0)) for k in PAIR_KINDS},
        "kinds_kept": {k: sum(p.meta.get("kind") == k for p in kept) for k in PAIR_KINDS},
        "n_kept": len(kept),
        "key_share": dist("key_share"),
        "key_share_rejected": dist("key_share_rejected"),
        "max_key_share": max_key_share,
        "dropped_above_max_key_share": len(pairs) - len(kept),
        "teacher_replies": replies,
    }


def summary_text(summary: dict) -> str:
    """The pairs' summary (``key_share_summary``) in words: kinds, the teacher's replies rejected, the
    key-token share, the pairs dropped (the EDIT stage's line and the report's)."""
    def pct(x) -> str:
        return "–" if x is None else f"{100 * x:.1f}%"

    kinds = ", ".join(f"{summary['kinds'][k]} {k}" for k in PAIR_KINDS)
    share, other_side = summary["key_share"], summary.get("key_share_rejected") or {}
    text = f"{summary['n_pairs']} dual pairs: {kinds}"
    replies = summary.get("teacher_replies")
    if replies:
        asked = replies["asked"]
        rej = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in replies["rejected"].items())
        other = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in replies["not_a_pair"].items() if n)
        text += (f"; teacher replies: {asked['rectify']} rectify and {asked['corrupt']} corrupt requests, rejected "
                 f"{rej}" + (f"; no pair: {other}" if other else ""))
    text += (f"; key-token share of the correct CoT: median {pct(share['median'])}, p90 {pct(share['p90'])} "
             f"(of the wrong CoT: median {pct(other_side.get('median'))}, p90 {pct(other_side.get('p90'))}); "
             f"{summary['dropped_above_max_key_share']} above edit.max_key_share = {summary['max_key_share']} "
             f"dropped, {summary['n_kept']} trained on")
    return text


def summary_line(summary: dict) -> str:
    """The EDIT stage's line on its pairs (``summary_text``)."""
    return "[edit] " + summary_text(summary)
