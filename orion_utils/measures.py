"""The analysis's pure measures: numbers from texts, loss histories and graded samples, no run directory.

``analysis`` applies them to a finished run (the definitions the report quotes are ``report.DEFINITIONS``):

``cot_perplexity``
    ``exp(mean over CoTs of the per-token mean NLL)``: the geometric mean of the per-CoT perplexities.
``length_stats`` / ``token_lengths``
    Lengths in student tokens (whitespace words without a tokenizer) and their summary.
``loss_delta_std``
    Stability of a training loss curve: the population standard deviation of the successive
    differences ``loss[t+1] - loss[t]`` of the logged losses, ordered by step (within each training
    stage, for methods trained in several stages).
``accuracy_by_difficulty``
    A problem's difficulty is the base student's pass rate on it. Problems are bucketed by that rate,
    by default ``hard`` [0, 0.25), ``medium`` [0.25, 0.75), ``easy`` [0.75, 1] (the last bucket is
    closed). A method's accuracy in a bucket is its per-problem pass@1 (mean over its samples; greedy
    when it has no samples) averaged over the bucket's problems.
``step_consistency`` (toy domain)
    The share of written computation steps ``a op b = c`` (``toy.domain.parse_steps``, kinds
    ``compute`` and ``check``; ``reflect`` lines quote wrong computations on purpose and are left
    out) whose arithmetic is right, checked with sympy on integers and operators built as sympy
    objects (never by evaluating text). Pooled over steps (``score``) and as the mean of per-text
    shares (``mean_per_text``).
"""
from __future__ import annotations

import math
from statistics import median
from typing import Any, Callable, Iterable, Optional, Sequence

from .records import EvalSample

Bucket = tuple  # (label, lo, hi): lo <= p < hi; the bucket with the largest hi also takes p == hi

DEFAULT_BUCKETS: tuple = (("hard", 0.0, 0.25), ("medium", 0.25, 0.75), ("easy", 0.75, 1.0))
CONSISTENCY_KINDS = ("compute", "check")


# --- losses, lengths, perplexity ----------------------------------------------------------------


def loss_values(history: Sequence) -> list[float]:
    """Loss values of one history (dicts with "loss", ordered by "step" when present; or numbers)."""
    if not history:
        return []
    if all(isinstance(h, dict) for h in history):
        rows = [h for h in history if isinstance(h.get("loss"), (int, float)) and math.isfinite(h["loss"])]
        if all("step" in h and h["step"] is not None for h in rows):
            rows = sorted(rows, key=lambda h: h["step"])
        return [float(h["loss"]) for h in rows]
    return [float(x) for x in history if isinstance(x, (int, float)) and math.isfinite(x)]


def _is_segmented(history: Sequence) -> bool:
    return bool(history) and all(isinstance(h, (list, tuple)) for h in history)


def loss_deltas(history: Sequence) -> list[float]:
    """Successive differences ``loss[t+1] - loss[t]``.

    ``history``: a loss history (``[{"step", "loss", ...}, ...]`` as in ``loss_history.json``, or
    plain numbers), or a list of such histories (training stages): differences are taken within
    each stage and pooled, never across a stage boundary.
    """
    segments = history if _is_segmented(history) else [history]
    out: list[float] = []
    for seg in segments:
        losses = loss_values(seg)
        out += [b - a for a, b in zip(losses, losses[1:])]
    return out


def loss_delta_std(history: Sequence) -> Optional[float]:
    """Population standard deviation of the successive loss differences; None with < 2 losses."""
    deltas = loss_deltas(history)
    if not deltas:
        return None
    m = sum(deltas) / len(deltas)
    return math.sqrt(sum((d - m) ** 2 for d in deltas) / len(deltas))


def concat_segments(segments: Sequence[Sequence[dict]]) -> list[dict]:
    """One history from stage histories, steps offset so that stages follow each other."""
    out, offset = [], 0
    for seg in segments:
        rows = [h for h in seg if isinstance(h, dict) and "loss" in h]
        steps = [h.get("step") or i + 1 for i, h in enumerate(rows)]
        for h, s in zip(rows, steps):
            out.append({**h, "step": s + offset, "stage_step": s})
        offset += max(steps, default=0)
    return out



def length_stats(lengths: Sequence[float]) -> Optional[dict]:
    """n, mean, population std, median, 90th percentile (nearest rank), min, max; None if empty."""
    values = sorted(float(x) for x in lengths)
    if not values:
        return None
    m = sum(values) / len(values)
    p90 = values[max(0, math.ceil(0.9 * len(values)) - 1)]
    return {
        "n": len(values),
        "mean": m,
        "std": math.sqrt(sum((v - m) ** 2 for v in values) / len(values)),
        "median": median(values),
        "p90": p90,
        "min": values[0],
        "max": values[-1],
    }


def token_lengths(texts: Iterable[str], tokenizer: Any = None) -> list[int]:
    """Length of each text in tokens.

    ``tokenizer``: a Hugging Face tokenizer (``encode(text, add_special_tokens=False)``), any
    callable ``text -> list of tokens``, or None for whitespace-separated words.
    """
    if tokenizer is None:
        return [len(t.split()) for t in texts]
    if hasattr(tokenizer, "encode"):
        return [len(tokenizer.encode(t, add_special_tokens=False)) for t in texts]
    return [len(tokenizer(t)) for t in texts]


def cot_perplexity(nlls: Iterable[float]) -> Optional[float]:
    """exp(mean of the finite per-CoT mean NLLs): the geometric mean of per-CoT perplexities."""
    finite = [float(x) for x in nlls if x is not None and math.isfinite(x)]
    return math.exp(sum(finite) / len(finite)) if finite else None


# --- step-level consistency (toy domain) ---------------------------------------------------------



def arithmetic_ok(a: int, op: str, b: int, result: int) -> bool:
    """Is ``a op b = result`` right? Exact, with sympy objects built from the parsed integers.

    Division is exact (``7 / 2`` is 7/2, so ``7 / 2 = 3`` is wrong); division by zero is wrong.
    """
    import sympy

    A, B, R = sympy.Integer(int(a)), sympy.Integer(int(b)), sympy.Integer(int(result))
    if op == "+":
        value = sympy.Add(A, B)
    elif op in ("-", "−"):
        value = sympy.Add(A, sympy.Mul(sympy.Integer(-1), B))
    elif op in ("*", "x", "×"):
        value = sympy.Mul(A, B)
    elif op in ("/", "÷"):
        if B == 0:
            return False
        value = sympy.Mul(A, sympy.Pow(B, sympy.Integer(-1)))
    else:
        raise ValueError(f"unknown operation {op!r}")
    return bool(sympy.Eq(value, R))


def step_check(text: str, kinds: Sequence[str] = CONSISTENCY_KINDS) -> tuple[int, int]:
    """(right, total) over the computation steps of ``kinds`` written in ``text``."""
    from .toy.domain import parse_steps

    steps = [s for s in parse_steps(text or "") if s.kind in kinds]
    right = sum(arithmetic_ok(s.a, s.op, s.b, s.result) for s in steps)
    return right, len(steps)


def step_consistency(cot: str, kinds: Sequence[str] = CONSISTENCY_KINDS) -> Optional[float]:
    """Share of the written computation steps of ``cot`` whose arithmetic is right; None without steps."""
    right, total = step_check(cot, kinds)
    return right / total if total else None


def consistency_summary(texts: Iterable[str], kinds: Sequence[str] = CONSISTENCY_KINDS) -> Optional[dict]:
    """Step consistency over many texts: ``score`` (right steps / all steps, pooled),
    ``mean_per_text`` (mean of per-text shares over texts with steps), step and text counts."""
    right_total = total_total = n_texts = 0
    shares = []
    for text in texts:
        n_texts += 1
        right, total = step_check(text, kinds)
        right_total += right
        total_total += total
        if total:
            shares.append(right / total)
    if n_texts == 0:
        return None
    return {
        "score": right_total / total_total if total_total else None,
        "mean_per_text": sum(shares) / len(shares) if shares else None,
        "n_steps": total_total,
        "n_right": right_total,
        "n_texts": n_texts,
        "n_texts_with_steps": len(shares),
    }


# --- difficulty ---------------------------------------------------------------------------------


def _by_problem(samples: Iterable[EvalSample], key: Callable[[EvalSample], str]) -> dict:
    """{problem key: [correct, ...]} from sampled decodings, or from greedy ones when none is sampled."""
    samples = list(samples)
    chosen = [s for s in samples if s.decoding == "sample"] or [s for s in samples if s.decoding == "greedy"]
    out: dict = {}
    for s in chosen:
        out.setdefault(key(s), []).append(bool(s.correct))
    return out


def _pid(s: EvalSample) -> str:
    return s.problem_id


def bench_problem_key(s: EvalSample) -> str:
    """A problem's key across benchmarks: ``<benchmark>/<problem id>``."""
    return f"{s.benchmark}/{s.problem_id}"


def per_problem_accuracy(samples: Iterable[EvalSample], key: Callable[[EvalSample], str] = _pid) -> dict:
    """{problem: pass@1} — the mean correctness of its sampled solutions (greedy if none sampled)."""
    return {k: sum(v) / len(v) for k, v in _by_problem(samples, key).items()}


def difficulty_from_samples(base_samples: Iterable[EvalSample], key: Callable[[EvalSample], str] = _pid) -> dict:
    """The base student's pass rate per benchmark problem (its sampled eval results): the difficulty map."""
    return per_problem_accuracy(base_samples, key)


def bucket_of(p: float, buckets: Sequence[Bucket] = DEFAULT_BUCKETS) -> Optional[str]:
    """Label of the bucket ``lo <= p < hi``; the bucket with the largest ``hi`` also takes ``p == hi``."""
    top = max(hi for _, _, hi in buckets)
    for label, lo, hi in buckets:
        if lo <= p < hi or (p == hi == top):
            return label
    return None


def accuracy_by_difficulty(
    samples: Iterable[EvalSample],
    difficulty: dict,
    buckets: Sequence[Bucket] = DEFAULT_BUCKETS,
    key: Callable[[EvalSample], str] = _pid,
) -> dict:
    """{bucket label: {"accuracy", "n_problems", "range"}} for one method's evaluation samples.

    ``difficulty``: {problem key: pass rate in [0, 1]} — for benchmarks the base student's
    per-problem pass@1 (``difficulty_from_samples``); ``data/pass_rates.json`` has the same shape
    for training questions. A problem's accuracy is its pass@1 (mean over sampled solutions, greedy
    if none); a bucket's accuracy is the mean over its problems (None when it has none). Problems
    missing from ``difficulty`` are left out.
    """
    acc = per_problem_accuracy(samples, key)
    grouped: dict = {label: [] for label, _, _ in buckets}
    for pid, a in acc.items():
        if pid not in difficulty:
            continue
        label = bucket_of(float(difficulty[pid]), buckets)
        if label is not None:
            grouped[label].append(a)
    return {
        label: {
            "accuracy": sum(grouped[label]) / len(grouped[label]) if grouped[label] else None,
            "n_problems": len(grouped[label]),
            "range": [lo, hi],
        }
        for label, lo, hi in buckets
    }
