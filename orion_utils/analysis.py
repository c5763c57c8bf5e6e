"""Stage 08, analysis: measure the paper's claims on a finished run, plot them, write the report.

This module computes numbers and verdicts; the words (metric definitions, claim statements, the
paragraph explaining each verdict, the report itself) are ``report``'s.

The ORION paper claims that ORION's CoTs are more coherent and
logically consistent, that training on them is more stable, that the trained student is less
verbose, and that ORION beats every baseline by more than 2 points. This module turns each claim
into numbers computed from the run directory alone:

``cot_perplexity``
    How "tailored" a method's training CoTs are to the student: the **base** student's perplexity of
    them, ``exp(mean over CoTs of the per-token mean NLL of the assistant turn)`` (the geometric
    mean of the per-CoT perplexities), scored exactly on the tokens SFT trains on
    (``generation.completion_nll``). At most ``max_cots`` CoTs per method, chosen by a stable hash
    of the question so that the methods are scored on (mostly) the same questions.
``cot_tokens_mean`` / ``response_tokens_mean``
    Mean length in student tokens of the training CoTs, and of the trained model's evaluation
    outputs (``EvalSample.n_tokens``, all benchmarks, sampled and greedy decodings).
``loss_delta_std``
    Stability of the training loss curve: the population standard deviation of the successive
    differences ``loss[t+1] - loss[t]`` of the logged training losses, ordered by step (within each
    training stage, for methods trained in several stages).
``accuracy_by_difficulty``
    Benchmarks are not training questions, so ``data/pass_rates.json`` does not cover them. The
    difficulty of a benchmark problem is the **base** student's pass rate on it: the share of its
    sampled evaluation solutions (``eval/base/<benchmark>.jsonl``, decoding ``sample``; greedy 0/1
    when there are no samples) that are correct. Problems are bucketed by that rate, by default
    ``hard`` [0, 0.25), ``medium`` [0.25, 0.75), ``easy`` [0.75, 1] (the last bucket is closed).
    A method's accuracy in a bucket is its per-problem pass@1 (mean over its samples; greedy
    when it has no samples) averaged over the bucket's problems. For ``base`` itself the buckets
    are defined by its own results, so its row is circular (0-ish in ``hard``, high in ``easy``
    by construction): it is shown for reference only.
``step_consistency`` (toy domain)
    The share of written computation steps ``a op b = c`` (``toy.domain.parse_steps``, kinds
    ``compute`` and ``check``; ``reflect`` lines quote wrong computations on purpose and are left
    out) whose arithmetic is right, checked with sympy on integers and operators built as sympy
    objects (never by evaluating text). Reported pooled over steps (``score``) and as the mean of
    per-text shares (``mean_per_text``), for (a) the method's training CoTs and (b) its
    evaluation responses. Real runs: the regular-expression parser is not reliable on free-form
    mathematics (``x^2 - 1 = 0`` reads as ``2 - 1 = 0``), so it is off there; instead, with
    ``analysis.judge`` on, the teacher judges the steps of up to ``judge_max_cots`` training CoTs
    per method (``make_judge``, ``judge_consistency``: the mean share of steps judged consistent;
    it costs teacher calls).

Seeds: a profile may list several seeds. ``orion run`` writes the first seed's run to the run
directory and each further seed's complete run to ``<run>/seeds/seed_<k>``; ``analyse_run`` finds
those (``seed_run_dirs``), or takes the other seeds' run directories explicitly
(``seeds_run_dirs=[...]``). Every table cell is then ``mean ± std`` over the seeds (sample
standard deviation, n−1; 0 for one seed) and the figures draw error bars or one line per seed.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from statistics import mean, median
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from .jsonl import read_jsonl, write_json
from .knobs import knob, validate
from .records import EvalSample
from .report import DEFINITIONS, cell_text, claim_entry, write_report
from .rundir import RunDir
from .stages import fingerprint

PathLike = Union[str, Path]
Scorer = Callable[[Sequence[str], Sequence[str]], Sequence[float]]
"""``scorer(questions, completions) -> per-completion mean token NLL`` under the base student."""

Bucket = tuple  # (label, lo, hi): lo <= p < hi; the bucket with the largest hi also takes p == hi

DEFAULT_BUCKETS: tuple = (("hard", 0.0, 0.25), ("medium", 0.25, 0.75), ("easy", 0.75, 1.0))
TOKEN_KEYS = ("cot_perplexity", "cot_tokens_mean", "response_tokens_mean", "loss_delta_std")
CONSISTENCY_KINDS = ("compute", "check")
STEP_CONSISTENCY = ("auto", "on", "off")  # analysis.step_consistency
CLAIM_MARGIN_POINTS = 2.0
ANALYSIS_VERSION = 2


# =============================================================================================
# Pure metrics
# =============================================================================================


def _losses(history: Sequence) -> list[float]:
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
        losses = _losses(seg)
        out += [b - a for a, b in zip(losses, losses[1:])]
    return out


def loss_delta_std(history: Sequence) -> Optional[float]:
    """Population standard deviation of the successive loss differences; None with < 2 losses."""
    deltas = loss_deltas(history)
    if not deltas:
        return None
    m = sum(deltas) / len(deltas)
    return math.sqrt(sum((d - m) ** 2 for d in deltas) / len(deltas))


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


def _bench_pid(s: EvalSample) -> str:
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


# --- intervals ----------------------------------------------------------------------------------
#
# Every benchmark cell carries a 95% interval: a percentile bootstrap over the benchmark's problems,
# and over the seeds when there are several (hierarchical: each resample draws the seeds with
# replacement, then the problems with replacement, the same problems for every drawn seed since
# every seed is evaluated on the same problems; the statistic is the mean over the drawn seeds of
# the mean over the drawn problems of a problem's score, its pass@1 or greedy 0/1). The headline
# claim compares ORION with each baseline through a *paired* bootstrap of ORION − baseline: the
# same drawn problems and seeds for both methods, so the noise of which problems a benchmark has
# cancels. Seed (``AnalysisConfig.bootstrap_seed``) and resamples (``bootstrap_resamples``) are
# named knobs: the same run gives the same intervals.

INTERVAL_METRICS = {"pass@1": "sample", "greedy": "greedy"}  # metric → the decoding it is computed from
HEADLINE_STATUSES = ("beats", "below the margin", "no difference", "worse", "too small to decide")


def problem_scores(samples: Iterable[EvalSample], decoding: str = "sample") -> dict:
    """{problem id: mean correctness of its ``decoding`` samples} (pass@1 per problem, or greedy 0/1)."""
    out: dict = {}
    for s in samples:
        if s.decoding == decoding:
            out.setdefault(s.problem_id, []).append(bool(s.correct))
    return {k: sum(v) / len(v) for k, v in out.items()}


def _score_matrix(per_seed: Sequence[dict], problems: Sequence[str]):
    import numpy as np

    return np.array([[float(seed[p]) for p in problems] for seed in per_seed], dtype=float)


def _resample_means(matrices: Sequence[Any], n_resamples: int, seed: int):
    """Hierarchical bootstrap draws (seeds, then problems) applied alike to every matrix [seeds × problems];
    returns one array of ``n_resamples`` means per matrix."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n_seeds, n_problems = matrices[0].shape
    out = [np.empty(n_resamples) for _ in matrices]
    chunk = max(1, 2_000_000 // max(1, n_seeds * n_problems))
    for start in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - start)
        seed_idx = rng.integers(0, n_seeds, size=(b, n_seeds))
        prob_idx = rng.integers(0, n_problems, size=(b, n_problems))
        for m, o in zip(matrices, out):
            o[start:start + b] = m[seed_idx[:, :, None], prob_idx[:, None, :]].mean(axis=(1, 2))
    return out


def _common_problems(per_seed_groups: Sequence[Sequence[dict]]) -> list:
    """Problems scored in every seed of every group, in a stable order."""
    sets = [set(d) for group in per_seed_groups for d in group]
    return sorted(set.intersection(*sets)) if sets else []


def bootstrap_interval(per_seed: Sequence[dict], n_resamples: int = 2000, seed: int = 0,
                       level: float = 0.95) -> Optional[dict]:
    """A cell's value and its interval: ``per_seed`` is one ``{problem: score}`` per seed (scores in [0, 1]).

    Returns ``{"mean", "lo", "hi", "level", "n_problems", "n_seeds", "n_resamples"}`` (fractions), or
    None without problems. ``mean`` is the mean over seeds of the mean over problems (as metrics.json)."""
    import numpy as np

    per_seed = [d for d in per_seed if d]
    problems = _common_problems([per_seed])
    if not problems:
        return None
    matrix = _score_matrix(per_seed, problems)
    (draws,) = _resample_means([matrix], n_resamples, seed)
    tail = 100 * (1 - level) / 2
    return {"mean": float(matrix.mean()), "lo": float(np.percentile(draws, tail)),
            "hi": float(np.percentile(draws, 100 - tail)), "level": level, "n_problems": len(problems),
            "n_seeds": len(per_seed), "n_resamples": n_resamples}


def paired_difference(a_per_seed: Sequence[dict], b_per_seed: Sequence[dict], n_resamples: int = 2000,
                      seed: int = 0, level: float = 0.95) -> Optional[dict]:
    """ORION − baseline in points with a paired bootstrap interval: the same drawn seeds and problems for
    both. ``a_per_seed``/``b_per_seed``: one ``{problem: score}`` per seed each, seeds in the same order
    (seed k of a is paired with seed k of b; with different seed counts the first ones common to both).
    Returns ``{"diff", "lo", "hi", "width", "level", "n_problems", "n_seeds"}`` in points, or None."""
    import numpy as np

    n = min(len(a_per_seed), len(b_per_seed))
    pairs = [(a, b) for a, b in zip(a_per_seed[:n], b_per_seed[:n]) if a and b]
    if not pairs:
        return None
    a_seeds, b_seeds = [a for a, _ in pairs], [b for _, b in pairs]
    problems = _common_problems([a_seeds, b_seeds])
    if not problems:
        return None
    diff = 100 * (_score_matrix(a_seeds, problems) - _score_matrix(b_seeds, problems))
    (draws,) = _resample_means([diff], n_resamples, seed)
    tail = 100 * (1 - level) / 2
    lo, hi = float(np.percentile(draws, tail)), float(np.percentile(draws, 100 - tail))
    return {"diff": float(diff.mean()), "lo": lo, "hi": hi, "width": hi - lo, "level": level,
            "n_problems": len(problems), "n_seeds": len(pairs)}


def headline_status(d: Optional[dict], margin: float, max_width: float) -> Optional[str]:
    """The rule the headline is judged by, for one paired interval of ORION − baseline (points):

    * ``beats``: the lower bound is above ``margin`` (ORION wins by more than the margin);
    * ``too small to decide``: otherwise, when the interval is wider than ``max_width`` points (the
      benchmark has too few problems, or the seeds disagree too much, to tell the cases below apart);
    * ``worse``: the upper bound is below 0; ``no difference``: the interval contains 0;
    * ``below the margin``: ORION is better (lower bound above 0) but not surely by more than ``margin``.
    """
    if d is None:
        return None
    if d["lo"] > margin:
        return "beats"
    if d["width"] > max_width:
        return "too small to decide"
    if d["hi"] < 0:
        return "worse"
    if d["lo"] <= 0 <= d["hi"]:
        return "no difference"
    return "below the margin"


def scores_by_seed(runs: Sequence[RunDir], methods: Optional[Sequence[str]] = None) -> dict:
    """{method: {benchmark: {metric: [{problem: score} per seed]}}} from every run's ``eval/`` files
    (metrics of ``INTERVAL_METRICS``; a seed without a method's file contributes nothing)."""
    out: dict = {}
    for r in runs:
        metrics = json.loads(r.metrics.read_text(encoding="utf-8")) if r.metrics.exists() else {}
        for m in methods or metrics:
            for bench, samples in load_eval_samples(r, m).items():
                for metric, decoding in INTERVAL_METRICS.items():
                    scores = problem_scores(samples, decoding)
                    if scores:
                        out.setdefault(m, {}).setdefault(bench, {}).setdefault(metric, []).append(scores)
    return out


def cell_intervals(scores: dict, n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """{method: {benchmark: {metric: bootstrap_interval}}} for every cell of ``scores_by_seed``."""
    return {m: {b: {k: bootstrap_interval(v, n_resamples, seed, level) for k, v in per.items()}
                for b, per in benches.items()} for m, benches in scores.items()}


def headline_intervals(scores: dict, n_resamples: int = 2000, seed: int = 0, level: float = 0.95,
                       metric: str = "pass@1") -> dict:
    """{benchmark: {baseline: paired_difference(orion, baseline)}} of ``metric``, every baseline."""
    orion = scores.get("orion") or {}
    out: dict = {}
    for bench, per in orion.items():
        for m, benches in scores.items():
            if m == "orion" or metric not in (benches.get(bench) or {}) or metric not in per:
                continue
            d = paired_difference(per[metric], benches[bench][metric], n_resamples, seed, level)
            if d is not None:
                out.setdefault(bench, {})[m] = d
    return out


# --- seeds --------------------------------------------------------------------------------------


def aggregate_values(values: Iterable[Optional[float]]) -> Optional[dict]:
    """{"mean", "std", "n"} over the non-missing values; std is the sample std (n−1), 0 for one value."""
    vals = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if not vals:
        return None
    m = sum(vals) / len(vals)
    std = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"mean": m, "std": std, "n": len(vals)}


def aggregate_metrics(metrics_list: Sequence[dict]) -> dict:
    """Seeds' ``metrics.json`` dicts → ``{method: {bench: {metric: {"mean", "std", "n"}}}}``.

    Every numeric metric present in any seed is aggregated over the seeds that have it (order of
    methods and benchmarks: first appearance).
    """
    out: dict = {}
    for metrics in metrics_list:
        for method, per in metrics.items():
            for bench, values in per.items():
                for name, value in values.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        out.setdefault(method, {}).setdefault(bench, {}).setdefault(name, []).append(value)
    return {m: {b: {k: aggregate_values(v) for k, v in per.items()} for b, per in benches.items()}
            for m, benches in out.items()}


def _aggregate_method_scalars(per_seed: Sequence[dict]) -> dict:
    """Per method: mean/std/n over seeds of the scalar analysis numbers (and consistency scores)."""
    methods: list = []
    for seed in per_seed:
        methods += [m for m in seed if m not in methods]
    out = {}
    for m in methods:
        rows = [seed.get(m) or {} for seed in per_seed]
        agg = {k: aggregate_values(r.get(k) for r in rows) for k in TOKEN_KEYS}
        for part in ("training", "evaluation"):
            agg[f"step_consistency_{part}"] = aggregate_values(
                ((r.get("step_consistency") or {}).get(part) or {}).get("score") for r in rows)
        abd: dict = {}
        for r in rows:
            for bench, buckets in (r.get("accuracy_by_difficulty") or {}).items():
                for label, cell in buckets.items():
                    abd.setdefault(bench, {}).setdefault(label, []).append(cell.get("accuracy"))
        agg["accuracy_by_difficulty"] = {b: {lab: aggregate_values(v) for lab, v in per.items()}
                                         for b, per in abd.items()}
        out[m] = agg
    return out


# =============================================================================================
# Reading a run
# =============================================================================================


def _rel(run: RunDir, path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(run.root.resolve()))
    except ValueError:
        return Path(path).name


def _read_rows(path: Path) -> list[dict]:
    return read_jsonl(path, None, tolerate_torn_tail=True)


def training_cots(run: RunDir, method: str) -> tuple[list[tuple[str, str]], list[str]]:
    """A method's training CoTs as (question, response) pairs, and the files they came from:
    the files its training stage trained on (``RunDir.training_files``). ``base`` has none."""
    files = run.training_files(method)
    pairs = []
    for path in files:
        for row in _read_rows(path):
            text = row.get("response", row.get("chosen"))
            if isinstance(text, str):
                pairs.append((str(row.get("question", "")), text))
    return pairs, [_rel(run, p) for p in files]


def loss_segments(run: RunDir, method: str) -> list[list[dict]]:
    """A method's training loss histories, one per training stage.

    ``RunDir.loss_history`` when present; otherwise the phase histories (EDIT's stages, Tailored
    Learning's rounds: ``RunDir.phase_loss_histories``).
    """
    top = run.loss_history(method)
    files = [top] if top.is_file() else run.phase_loss_histories(method)
    segments = []
    for f in files:
        try:
            hist = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(hist, list) and hist:
            segments.append(hist)
    return segments


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


def load_eval_samples(run: RunDir, method: str) -> dict:
    """{benchmark: [EvalSample, ...]} from ``eval/<method>/<benchmark>.jsonl`` (``RunDir.eval_files``)."""
    return {p.stem: read_jsonl(p, EvalSample) for p in run.eval_files(method)}


def _config(run: RunDir) -> dict:
    return run.config() or {}


def is_toy_run(run: RunDir) -> bool:
    """A toy-domain run: the run's ``config.json`` names the toy student or toy training data."""
    cfg = run.config()
    if cfg is not None:
        return (cfg.get("student") or {}).get("model") == "toy" or (cfg.get("data") or {}).get("train_source") == "toy"
    # No config.json: a run directory not made by the runner (old runs, hand-made runs in tests).
    # Only then guess from the data: training or benchmark problems whose source is ``toy``.
    for path in [run.train_problems, *run.benchmark_files()]:
        if path.is_file():
            rows = _read_rows(path)
            if rows:
                return all(r.get("source") == "toy" for r in rows[:20])
    return False


def _stable_order(pid: str) -> str:
    return hashlib.sha256(pid.encode()).hexdigest()


def student_scorer(run: RunDir, batch_size: int = 16, device: str = "auto") -> Scorer:
    """The default ``scorer``: mean token NLL under the run's base student (loaded once, on first use),
    with the run's prompt template and system prompt (``config.json``'s ``student`` section)."""
    cfg = (_config(run).get("student") or {})
    template = cfg.get("prompt_template") or "{question}"
    system = cfg.get("system_prompt") or None
    state: dict = {}

    def score(questions: Sequence[str], completions: Sequence[str]) -> list[float]:
        from .generation import completion_nll, load_scoring_model

        if "model" not in state:  # loaded as stage 03 loads it; scored in bounded memory (completion_nll)
            state["model"], state["tokenizer"] = load_scoring_model(run.student_model(), device)
        return completion_nll(state["model"], state["tokenizer"], list(questions), list(completions),
                              prompt_template=template, system=system, batch_size=batch_size)

    return score


def student_tokenizer(run: RunDir):
    """The base student's tokenizer, or None (whitespace words) when it cannot be loaded."""
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(run.student_model())
    except Exception as exc:  # offline without a cached hub tokenizer, a broken student folder ...
        print(f"[analysis] student tokenizer unavailable ({type(exc).__name__}: {exc}); counting words instead")
        return None


# --- the training sets: questions, examples, tokens, and what was left out -------------------------

# the profile section whose max_seq_len / overlong a method's training set is trained under
TRAINING_SECTION = {"sft": "training", "orion": "training", "edit": "training", "tailored": "tailored"}
LEFT_OUT_BY_TRAINING = "longer than max_seq_len: left out by training (overlong: drop)"
NOT_IN_METHOD = "questions other methods train on, absent here"


def _example_counter(run: RunDir, tokenizer: Any) -> Optional[Callable[[str, str], int]]:
    """(question, response) → prompt + assistant-turn tokens in the student's chat format, as training
    counts them; None without a tokenizer that has a chat template (lengths are then whitespace words)."""
    if tokenizer is None or not hasattr(tokenizer, "apply_chat_template"):
        return None
    from .chat import encode_for_training, run_prompt_format

    template, system = run_prompt_format(run)
    return lambda q, r: len(encode_for_training(tokenizer, q, r, template, system=system)["input_ids"])


def training_set_table(run: RunDir, methods: Sequence[str], tokenizer: Any = None) -> dict:
    """Per CoT-trained method: the questions, examples and tokens it trains on, and what was left out and
    why; plus the question set of stage 01 (``data/question_set.json``) and whether every method trains
    on the same question ids.

    A method's examples are those of ``RunDir.training_files`` as its stage trains them: ORION's rewrites
    kept to the question set as stage 04 keeps them (``collection.fit_to_question_set``: a rewrite longer
    than max_seq_len replaced by the teacher CoT), and, under ``overlong: drop`` of the method's training
    section (``TRAINING_SECTION``), an example longer than ``max_seq_len`` left out. Tokens: prompt +
    assistant turn in the student's tokens (whitespace words of the response without a tokenizer, and
    then no length check). Returns ``{"question_set", "same_question_ids", "counted_in", "methods":
    {method: {"questions", "examples", "tokens", "left_out": {reason: n}, "question_ids"}}}``."""
    from .collection import fit_to_question_set, read_question_set
    from .records import SFTExample

    qs_file = json.loads(run.question_set.read_text(encoding="utf-8")) if run.question_set.is_file() else None
    qs = read_question_set(run)
    config = _config(run)
    count = _example_counter(run, tokenizer)
    teacher = read_jsonl(run.teacher_sft_set, SFTExample) if run.teacher_sft_set.is_file() else []
    rows: dict = {}
    for m in methods:
        files = run.training_files(m)
        if m == "base" or not files:
            continue
        examples = [e for p in files for e in read_jsonl(p, SFTExample, tolerate_torn_tail=True)]
        left: dict = {}
        if m == "orion" and qs is not None:
            examples, kept = fit_to_question_set(examples, teacher, qs, count)
            if kept["replaced_by_teacher_cot"]:
                left["rewrites longer than max_seq_len (the teacher CoT trained instead)"] = kept["replaced_by_teacher_cot"]
        section = config.get(TRAINING_SECTION.get(m, "training")) or {}
        limit = section.get("max_seq_len") if section.get("overlong") == "drop" and count is not None else None
        trained, tokens = [], 0
        for e in examples:
            n = count(e.question, e.response) if count is not None else len(e.response.split())
            if limit and n > limit:
                left[LEFT_OUT_BY_TRAINING] = left.get(LEFT_OUT_BY_TRAINING, 0) + 1
                continue
            trained.append(e)
            tokens += n
        ids = sorted({e.problem_id for e in trained})
        rows[m] = {"questions": len(ids), "examples": len(trained), "tokens": tokens, "left_out": left,
                   "question_ids": ids}
    union = set().union(*(set(r["question_ids"]) for r in rows.values())) if rows else set()
    for r in rows.values():
        missing = len(union) - len(r["question_ids"])
        if missing:
            r["left_out"][NOT_IN_METHOD] = missing
    reasons: dict = {}
    for why in ((qs_file or {}).get("left_out") or {}).values():
        reasons[why] = reasons.get(why, 0) + 1
    return {"question_set": None if qs_file is None else {
                "same_questions": qs_file.get("same_questions"), "rule": qs_file.get("rule"),
                "n": len(qs_file.get("questions") or []), "left_out": reasons,
                "max_seq_len": qs_file.get("max_seq_len"), "overlong": qs_file.get("overlong")},
            "same_question_ids": len({tuple(r["question_ids"]) for r in rows.values()}) <= 1,
            "counted_in": "student tokens (prompt + assistant turn)" if count is not None else "response words",
            "methods": rows}


# =============================================================================================
# One run
# =============================================================================================


@dataclass
class AnalysisConfig:
    """Parameters of the analysis stage (named, so a notebook can show and change them)."""

    max_cots: Optional[int] = knob(
        512, "training CoTs scored per method for cot_perplexity (None: all)", ge=1)
    batch_size: int = knob(16, "completion_nll batch size", ge=1)
    buckets: list = knob(
        factory=lambda: [list(b) for b in DEFAULT_BUCKETS], help="difficulty buckets of the base student's pass rate, [low, high] pairs")
    step_consistency: str = knob(
        "auto", "check the steps of training CoTs: auto (toy runs only), on or off", choices=STEP_CONSISTENCY)
    consistency_kinds: list = knob(
        factory=lambda: list(CONSISTENCY_KINDS), help="which step-consistency measures are computed", each=CONSISTENCY_KINDS)
    margin_points: float = knob(CLAIM_MARGIN_POINTS, "the headline claim's margin, in points", ge=0.0)
    judge: bool = knob(
        False, "real runs: the teacher judges the step consistency of training CoTs (costs calls)")
    judge_max_cots: int = knob(64, "training CoTs judged per method", ge=1)
    # intervals (every benchmark cell, and the headline's paired ORION − baseline differences)
    bootstrap_resamples: int = knob(2000, "bootstrap resamples per interval", ge=1)
    bootstrap_seed: int = knob(0, "bootstrap seed: the same run gives the same intervals")
    interval_level: float = knob(0.95, "confidence level of every interval", gt=0.0, le=1.0)
    decide_max_width_points: float = knob(
        8.0, "headline: a paired interval wider than this is too small to decide", gt=0.0)
    # (4 × the 2-point margin) cannot tell "beats by the margin" from "no difference". AIME24's 30 problems give
    #   ~15-25 points, AMC23's 40 ~15-20; MATH500 ~5, GSM-Hard ~3 (one problem: 3.3, 2.5, 0.2, 0.08 points)

    def __post_init__(self) -> None:
        validate(self)


def judge_consistency(judge, cots: Sequence[tuple[str, str]]) -> dict:
    """Mean share of steps the teacher judges consistent over (question, CoT) pairs, and counts."""
    from .budget import since, snapshot, stage_line, summary

    before = snapshot(judge)
    scores = judge.judge_many(list(cots))
    valid = [x for x in scores if x is not None]
    counts = since(judge, before, ["judge"])  # the prompt budget (orion_utils.budget): left out = no score
    if counts:
        print(stage_line("analysis", counts))
    return {"score": sum(valid) / len(valid) if valid else None, "n": len(valid), "failed": len(scores) - len(valid),
            **({"prompt_budget": summary(counts)} if counts else {})}


def make_judge(cfg: AnalysisConfig, teacher_cfg, data_cfg, run: RunDir):
    """The profile's teacher as a step-consistency judge, when ``analysis.judge`` is on (else None)."""
    if not cfg.judge:
        return None
    from .collection import make_teacher

    teacher = make_teacher(teacher_cfg, data_cfg, cache_dir=str(run.teacher_cache))
    if not hasattr(teacher, "judge_many"):
        raise ValueError(f"analysis.judge needs a prompted teacher (api or local), not teacher.kind={teacher_cfg.kind!r}")
    return teacher


def analyse_methods(
    run: RunDir,
    cfg: AnalysisConfig,
    scorer: Optional[Scorer] = None,
    tokenizer: Any = "auto",
    methods: Optional[Sequence[str]] = None,
    judge=None,
) -> tuple[dict, dict, dict]:
    """Per-method analysis of one run: (methods dict, difficulty dict, raw data for the figures).

    ``scorer``: see ``Scorer``; None loads the base student (``student_scorer``); ``False`` skips
    cot_perplexity. ``tokenizer``: "auto" loads the student's, None counts whitespace words.
    ``judge``: a teacher with ``judge_many`` (see ``teachers.prompts``) for ``judge_consistency``.
    """
    metrics = json.loads(run.metrics.read_text(encoding="utf-8"))
    methods = list(methods or metrics)
    buckets = [tuple(b) for b in cfg.buckets]
    consistency = cfg.step_consistency == "on" or (cfg.step_consistency == "auto" and is_toy_run(run))
    kinds = tuple(cfg.consistency_kinds)
    if tokenizer == "auto":
        tokenizer = student_tokenizer(run)
    default_scorer = scorer is None
    if default_scorer:
        scorer = student_scorer(run, batch_size=cfg.batch_size)

    evals = {m: load_eval_samples(run, m) for m in methods}
    base = evals.get("base") or {}
    difficulty_maps = {b: difficulty_from_samples(s) for b, s in base.items()}
    difficulty = {
        "source": "eval/base (sampled pass rate per benchmark problem)" if base else None,
        "buckets": [list(b) for b in buckets],
        "counts": {b: {label: sum(bucket_of(p, buckets) == label for p in dmap.values()) for label, _, _ in buckets}
                   for b, dmap in difficulty_maps.items()},
    }
    pooled_difficulty = {f"{b}/{pid}": p for b, dmap in difficulty_maps.items() for pid, p in dmap.items()}
    if difficulty_maps:
        difficulty["counts"]["all"] = {label: sum(bucket_of(p, buckets) == label for p in pooled_difficulty.values())
                                       for label, _, _ in buckets}

    out, raw = {}, {"cot_lengths": {}, "response_lengths": {}, "loss": {}}
    for m in methods:
        row: dict = {}
        # training CoTs
        cots, files = training_cots(run, m)
        row["training_set"] = files or None
        row["n_training_cots"] = len(cots) if files else None
        if cots:
            lengths = token_lengths([c for _, c in cots], tokenizer)
            raw["cot_lengths"][m] = lengths
            stats = length_stats(lengths)
            row["cot_tokens_mean"] = stats["mean"]
            row["cot_tokens"] = stats
            chosen = cots
            if cfg.max_cots is not None and len(cots) > cfg.max_cots:
                order = sorted(range(len(cots)), key=lambda i: (_stable_order(cots[i][0]), i))
                chosen = [cots[i] for i in sorted(order[: cfg.max_cots])]
            nlls = None
            if scorer is not False:
                try:
                    nlls = list(scorer([q for q, _ in chosen], [c for _, c in chosen]))
                except Exception as exc:  # the default student cannot be loaded (offline hub id ...)
                    if not default_scorer:
                        raise
                    row["cot_perplexity_error"] = f"{type(exc).__name__}: {exc}"[:300]
                    print(f"[analysis] {m}: no cot_perplexity ({row['cot_perplexity_error']})")
            if nlls is not None:
                finite = [x for x in nlls if x is not None and math.isfinite(x)]
                row["cot_nll_mean"] = sum(finite) / len(finite) if finite else None
                row["cot_perplexity"] = cot_perplexity(finite)
                row["cot_perplexity_n"] = len(finite)
            else:
                row["cot_nll_mean"] = row["cot_perplexity"] = row["cot_perplexity_n"] = None
            if judge is not None:
                row["judge_consistency"] = judge_consistency(judge, chosen[: cfg.judge_max_cots])
        else:
            row.update(cot_tokens_mean=None, cot_tokens=None, cot_nll_mean=None, cot_perplexity=None,
                       cot_perplexity_n=None)
        # evaluation outputs
        per_bench = evals.get(m) or {}
        all_samples = [s for ss in per_bench.values() for s in ss]
        if all_samples:
            lengths = [s.n_tokens for s in all_samples]
            raw["response_lengths"][m] = lengths
            row["response_tokens"] = length_stats(lengths)
            row["response_tokens_mean"] = row["response_tokens"]["mean"]
            row["response_tokens_by_benchmark"] = {b: mean(s.n_tokens for s in ss) for b, ss in per_bench.items() if ss}
            correct = [s.n_tokens for s in all_samples if s.correct]
            row["response_tokens_mean_correct"] = mean(correct) if correct else None
        else:
            row.update(response_tokens=None, response_tokens_mean=None, response_tokens_by_benchmark=None,
                       response_tokens_mean_correct=None)
        # training loss
        segments = loss_segments(run, m) if m != "base" else []
        raw["loss"][m] = segments
        losses = [x for seg in segments for x in _losses(seg)]
        row["loss_delta_std"] = loss_delta_std(segments) if segments else None
        row["n_loss_points"] = len(losses) if segments else None
        row["loss_first"] = losses[0] if losses else None
        row["loss_last"] = losses[-1] if losses else None
        # accuracy by difficulty
        if difficulty_maps and per_bench:
            abd = {b: accuracy_by_difficulty(ss, difficulty_maps[b], buckets) for b, ss in per_bench.items()
                   if b in difficulty_maps}
            abd["all"] = accuracy_by_difficulty(all_samples, pooled_difficulty, buckets, key=_bench_pid)
            row["accuracy_by_difficulty"] = abd
        else:
            row["accuracy_by_difficulty"] = None
        # step-level consistency
        if consistency:
            row["step_consistency"] = {
                "training": consistency_summary((c for _, c in cots), kinds) if cots else None,
                "evaluation": consistency_summary((s.response for s in all_samples), kinds) if all_samples else None,
            }
        else:
            row["step_consistency"] = None
        out[m] = row
    return out, difficulty, raw


# =============================================================================================
# Claims
# =============================================================================================


def _verdict(outcomes: Sequence[int]) -> str:
    favour = sum(o > 0 for o in outcomes)
    against = sum(o < 0 for o in outcomes)
    if not outcomes:
        return "cannot be assessed"
    if favour and not against:
        return "supported"
    if not favour:
        return "not supported"
    return "mixed"


def spread(a: Optional[dict], b: Optional[dict]) -> float:
    """How far apart two seed-aggregated cells may be and still count as no difference: the sum of
    their sample stds over seeds (their mean ± std intervals overlap). 0 for single seeds."""
    return float((a or {}).get("std") or 0.0) + float((b or {}).get("std") or 0.0)


def _compare(orion: Optional[float], other: Optional[float], lower_is_better: bool, tol: float = 1e-12,
             within: float = 0.0) -> Optional[int]:
    """+1 ORION better, -1 worse, 0 no difference: ``|orion - other|`` within ``within`` (the seeds'
    spread, see ``spread``) or ``tol``."""
    if orion is None or other is None:
        return None
    if abs(orion - other) <= max(tol, within):
        return 0
    better = orion < other if lower_is_better else orion > other
    return 1 if better else -1


def claim_evidence(agg_metrics: dict, agg_methods: dict, margin: float = CLAIM_MARGIN_POINTS,
                   intervals: Optional[dict] = None, max_width: float = 8.0) -> list[dict]:
    """Each paper claim's verdict and the comparisons behind it, in numbers (no words).

    One dict per claim, in the report's order (``headline``, ``coherence``, ``stability``,
    ``verbosity``): ``id``, ``verdict``, ``numbers`` (the seed means stored in ``analysis.json``) and
    the seed-aggregated cells that ``report.claim_entry`` puts into words. ``headline`` adds
    ``margin``, ``baselines`` and ``rows`` (per benchmark: ORION's and the best baseline's pass@1
    cells, ``margin_points``, ``spread_points``); the others add ``comparisons`` (per compared metric:
    ``key``, ``lower_is_better``, ORION's cell and ``others``, each with its ``method``, ``cell``,
    ``outcome`` (+1/0/-1, ``_compare``) and ``spread``) and ``base``, base's cell where the report
    quotes it for reference.

    ``intervals`` (``headline_intervals``: per benchmark and baseline, the paired bootstrap interval of
    ORION − baseline in points): the headline is judged against them (``headline_status`` with
    ``margin`` and ``max_width``): a benchmark counts for the claim when ORION ``beats`` every baseline,
    against it when any baseline is ``worse``, ``no difference`` or ``below the margin``, and for
    neither when the rest is ``too small to decide``; each row adds ``vs`` (baseline → interval and
    status) and the claim ``rule: "paired bootstrap"``. Without intervals (no per-problem results),
    the point estimates and the seeds' spread decide, as ``rule: "point estimates"``.
    """
    has_orion = "orion" in agg_metrics or "orion" in agg_methods
    baselines = [m for m in agg_metrics if m != "orion"]
    trained = [m for m in agg_methods if m not in ("orion", "base")]

    # (1) headline: ORION beats every baseline by more than `margin` points, per benchmark
    numbers, outcomes, rows = {}, [], []
    if has_orion and baselines:
        for bench in sorted({b for per in agg_metrics.values() for b in per}):
            o = (agg_metrics.get("orion", {}).get(bench) or {}).get("pass@1")
            others = {m: (agg_metrics[m].get(bench) or {}).get("pass@1") for m in baselines}
            others = {m: c for m, c in others.items() if c}
            if not o or not others:
                continue
            best = max(others, key=lambda m: others[m]["mean"])
            diff = 100 * (o["mean"] - others[best]["mean"])
            within = 100 * spread(o, others[best])
            numbers[bench] = {"orion": 100 * o["mean"], "best_baseline": best, "best": 100 * others[best]["mean"],
                              "margin_points": diff, "spread_points": within}
            row = {"benchmark": bench, "orion": o, "best_baseline": best, "best": others[best],
                   "margin_points": diff, "spread_points": within}
            vs = (intervals or {}).get(bench) or {}
            if intervals is not None and vs:
                row["vs"] = {m: {**d, "status": headline_status(d, margin, max_width)} for m, d in vs.items()}
                numbers[bench]["vs"] = {m: {k: v[k] for k in ("diff", "lo", "hi", "status")}
                                        for m, v in row["vs"].items()}
                statuses = [v["status"] for v in row["vs"].values()]
                row["status"] = ("beats" if all(st == "beats" for st in statuses) else
                                 "too small to decide" if all(st in ("beats", "too small to decide") for st in statuses)
                                 else "does not beat")
                outcomes.append({"beats": 1, "too small to decide": None}.get(row["status"], -1))
            else:  # beating by the margin needs a difference beyond the seeds' spread too
                outcomes.append(1 if diff > max(margin, within) else -1)
            rows.append(row)
    decided = [o for o in outcomes if o is not None]
    verdict = _verdict(decided) if decided or not outcomes else "too small to decide"
    if verdict == "supported" and len(decided) < len(outcomes):
        verdict = "too small to decide"  # ORION beats where a benchmark can tell, the others cannot
    evidence = [{"id": "headline", "verdict": verdict, "numbers": numbers, "margin": margin,
                 "baselines": baselines, "rows": rows, "max_width": max_width,
                 "rule": "paired bootstrap" if intervals is not None else "point estimates"}]

    def scalar(method: str, key: str) -> Optional[dict]:
        return (agg_methods.get(method) or {}).get(key)

    def compare(key: str, lower: bool, against: Sequence[str]) -> tuple[list, dict, dict]:
        """(outcomes, numbers, comparison) of ORION's ``key`` against each method of ``against``."""
        o = scalar("orion", key)
        outs, nums = [], {}
        comparison = {"key": key, "lower_is_better": lower, "orion": o, "others": []}
        if not o:
            return outs, nums, comparison
        nums["orion"] = o["mean"]
        for m in against:
            c = scalar(m, key)
            r = _compare(o["mean"], c["mean"] if c else None, lower, within=spread(o, c))
            if r is None:
                continue
            outs.append(r)
            nums[m] = c["mean"]
            comparison["others"].append({"method": m, "cell": c, "outcome": r, "spread": spread(o, c)})
        return outs, nums, comparison

    # (2) coherence / consistency
    with_cots = [m for m in trained if scalar(m, "cot_perplexity")]
    o1, n1, c1 = compare("cot_perplexity", True, with_cots)
    o2, n2, c2 = compare("step_consistency_training", False, trained)
    o3, n3, c3 = compare("step_consistency_evaluation", False, trained)
    evidence.append({"id": "coherence", "verdict": _verdict(o1 + o2 + o3),
                     "numbers": {"cot_perplexity": n1, "step_consistency_training": n2,
                                 "step_consistency_evaluation": n3},
                     "comparisons": [c1, c2, c3], "base": scalar("base", "step_consistency_evaluation")})

    # (3) stability
    o, n, c = compare("loss_delta_std", True, trained)
    evidence.append({"id": "stability", "verdict": _verdict(o), "numbers": {"loss_delta_std": n},
                     "comparisons": [c], "base": None})

    # (4) verbosity
    o, n, c = compare("response_tokens_mean", True, trained)
    evidence.append({"id": "verbosity", "verdict": _verdict(o), "numbers": {"response_tokens_mean": n},
                     "comparisons": [c], "base": scalar("base", "response_tokens_mean")})
    return evidence


def assess_claims(agg_metrics: dict, agg_methods: dict, margin: float = CLAIM_MARGIN_POINTS, toy: bool = False,
                  n_seeds: int = 1, intervals: Optional[dict] = None, max_width: float = 8.0) -> list[dict]:
    """One entry per paper claim: {"id", "claim", "verdict", "text", "numbers"}.

    ``agg_metrics``: ``aggregate_metrics`` output; ``agg_methods``: per-method scalars aggregated over
    seeds (``{"mean","std","n"}`` cells). Comparisons use seed means. Verdicts: "supported" (every
    comparison favours ORION), "not supported" (none does), "mixed", or "cannot be assessed".
    The verdicts and numbers are ``claim_evidence``'s; the claim's statement and the paragraph that
    explains its verdict are the report's words (``report.claim_entry``).
    """
    return [claim_entry(e, n_seeds=n_seeds, toy=toy)
            for e in claim_evidence(agg_metrics, agg_methods, margin, intervals, max_width)]


# =============================================================================================
# Figures
# =============================================================================================


def write_figures(run: RunDir, agg_metrics: dict, agg_methods: dict, raws: Sequence[dict],
                  buckets: Sequence[Bucket] = DEFAULT_BUCKETS, difficulty_counts: Optional[dict] = None) -> dict:
    """All analysis figures in ``figures/``; returns {name: path relative to the run}."""
    import matplotlib.pyplot as plt

    from . import plots

    made = {}

    def keep(name: str, fig) -> None:
        plt.close(fig)
        made[name] = run.relative(run.figure(name))

    keep("accuracy_pass1", plots.accuracy_bars(_means(agg_metrics), "pass@1", run.figure("accuracy_pass1"),
                                               errors=_stds(agg_metrics)))
    if any("greedy" in per for benches in agg_metrics.values() for per in benches.values()):
        keep("accuracy_greedy", plots.accuracy_bars(_means(agg_metrics), "greedy",
                                                    run.figure("accuracy_greedy"),
                                                    errors=_stds(agg_metrics)))
    per_seed_loss = [{m: concat_segments(segs) for m, segs in r["loss"].items() if segs} for r in raws]
    if any(per_seed_loss):
        keep("loss_curves", plots.loss_curves(per_seed_loss[0], run.figure("loss_curves"),
                                              extra_seeds=per_seed_loss[1:]))
    cot = _pool([r["cot_lengths"] for r in raws])
    resp = _pool([r["response_lengths"] for r in raws])
    if cot or resp:
        keep("cot_lengths", plots.length_distributions(cot, resp, run.figure("cot_lengths"),
                                                       n_seeds=len(raws)))
    panels: dict = {}
    for m, a in agg_methods.items():
        for bench, cells in (a.get("accuracy_by_difficulty") or {}).items():
            panels.setdefault(bench, {})[m] = cells
    if panels:
        order = sorted(b for b in panels if b != "all") + (["all"] if "all" in panels else [])
        keep("accuracy_by_difficulty", plots.difficulty_bars({b: panels[b] for b in order}, [b[0] for b in buckets],
                                                             run.figure("accuracy_by_difficulty"),
                                                             counts=difficulty_counts))
    ppl = {m: a["cot_perplexity"] for m, a in agg_methods.items() if a.get("cot_perplexity")}
    if ppl:
        keep("perplexity", plots.metric_bars(ppl, "perplexity (lower = more tailored)",
                                             "Base student's perplexity of each method's training CoTs",
                                             run.figure("perplexity")))
    cons = {m: {"training CoTs": a.get("step_consistency_training"), "evaluation outputs": a.get("step_consistency_evaluation")}
            for m, a in agg_methods.items()
            if a.get("step_consistency_training") or a.get("step_consistency_evaluation")}
    if cons:
        keep("step_consistency", plots.grouped_metric_bars(cons, "steps with right arithmetic (%)",
                                                           "Step-level consistency",
                                                           run.figure("step_consistency"),
                                                           scale=100))
    if run.pass_rates.exists():
        rates = json.loads(run.pass_rates.read_text(encoding="utf-8"))
        if rates:
            keep("pass_rates", plots.pass_rate_histogram(rates, run.figure("pass_rates")))
    return made


def _means(agg: dict) -> dict:
    return {m: {b: {k: c["mean"] for k, c in per.items() if c} for b, per in benches.items()} for m, benches in agg.items()}


def _stds(agg: dict) -> dict:
    return {m: {b: {k: c["std"] for k, c in per.items() if c and c["n"] > 1} for b, per in benches.items()}
            for m, benches in agg.items()}


def _pool(dicts: Sequence[dict]) -> dict:
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            out.setdefault(k, []).extend(v)
    return out


# =============================================================================================
# The stage
# =============================================================================================


def reflection_summary(run: RunDir) -> Optional[dict]:
    """ORION's stage 03 as it ran: the reflector, whether the quoted wrong step was masked, the
    acceptance rate and the mechanism (base-student perplexity of the accepted rewrites vs the teacher
    CoTs they replace, ``reflection.mechanism_perplexity``). None when the stage did not run."""
    info = run.stage_info("reflection") or {}
    if info.get("status") != "done":
        return None
    section = _config(run).get("reflection") or {}
    return {"reflector": info.get("reflector"), "mask_wrong_step": section.get("mask_wrong_step"),
            "acceptance_rate": info.get("acceptance_rate"), "mechanism": info.get("mechanism")}


def seed_run_dirs(run: RunDir) -> list:
    """The other seeds' run directories that ``orion run`` writes under ``<run>/seeds/seed_<k>``."""
    return [p for p in run.seed_dirs() if RunDir(p).metrics.exists()]


def analyse_run(
    run: Union[RunDir, PathLike],
    seeds_run_dirs: Optional[Sequence[Union[RunDir, PathLike]]] = None,
    cfg: Optional[AnalysisConfig] = None,
    *,
    scorer: Optional[Scorer] = None,
    tokenizer: Any = "auto",
    judge=None,
    judge_from: Sequence = (),
    force: bool = False,
) -> dict:
    """Analyse a finished run: writes ``analysis.json``, the figures and ``report.md``; returns the analysis.

    ``seeds_run_dirs``: run directories of the other seeds of the same profile (complete runs with
    ``metrics.json``); None: those the runner made under ``<run>/seeds/`` (see ``seed_run_dirs``). The run's own numbers are in ``analysis["methods"]``; the results
    table, the claims and the figures use all seeds (mean ± std, error bars).
    ``scorer``: ``scorer(questions, completions) -> mean token NLLs`` under the base student, used
    for every seed (None: each run's own base student, loaded once; ``False``: no perplexity).
    ``tokenizer``: for token counts ("auto": the student's; None: whitespace words).
    ``judge``: a teacher with ``judge_many`` to score the step consistency of training CoTs (real
    runs; see ``make_judge``), or None; ``judge_from``: the (teacher, data) sections it was made from,
    for the stage's fingerprint.

    A stage in the manifest (``analysis``): skipped when ``metrics.json``, the eval outputs, the
    training sets and loss logs and the parameters are unchanged (``force=True`` redoes it).

    ``analysis.json``::

        {"run", "generated_at", "definitions", "config",
         "methods": {method: {"cot_perplexity", "cot_tokens_mean", "response_tokens_mean",
                              "loss_delta_std", "accuracy_by_difficulty": {bench|"all": {bucket: {...}}},
                              "step_consistency": {"training": {...}, "evaluation": {...}} | null, ...}},
         "difficulty": {"source", "buckets", "counts"},
         "metrics": {method: {bench: {metric: {"mean", "std", "n"}}}},
         "seeds": {"n", "runs", "methods": {method: {key: {"mean", "std", "n"}}}, "per_seed": [...]},
         "intervals": {"cells": {method: {bench: {metric: {"mean", "lo", "hi", "level", "n_problems",
                                                             "n_seeds", "n_resamples"}}}},
                       "headline": {bench: {baseline: {"diff", "lo", "hi", "width", ...}}}, "rule": {...}},
         "claims": [{"id", "claim", "verdict", "text", "numbers"}], "figures": {name: path}}
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    cfg = cfg or AnalysisConfig()
    if seeds_run_dirs is None:
        seeds_run_dirs = seed_run_dirs(run)
    others = [r if isinstance(r, RunDir) else RunDir(r) for r in seeds_run_dirs]
    run.require(run.metrics, stage_hint="07_evaluation")
    for o in others:
        o.require(o.metrics, stage_hint="07_evaluation (of that seed)")
    out_json, out_report = run.analysis_file, run.report

    def inputs_of(r: RunDir) -> list[Path]:
        paths = [r.metrics]
        metrics = json.loads(r.metrics.read_text(encoding="utf-8"))
        for m in metrics:
            if r.eval_method_dir(m).is_dir():
                paths.append(r.eval_method_dir(m))
            paths += r.training_files(m)
            paths += [p for p in [r.loss_history(m), *r.phase_loss_histories(m)] if p.is_file()]
        paths += [r.question_set] if r.question_set.is_file() else []
        if (scorer is None or tokenizer == "auto") and r.student_info.is_file():  # the base student scores, counts
            paths += r.student_inputs()
        return paths

    inputs = [p for r in [run, *others] for p in inputs_of(r)]
    params, _ = fingerprint(None, "analysis", cfg, *(judge_from if judge is not None else ()))
    params.update({"version": ANALYSIS_VERSION, "seeds": [o.root.name for o in others],
                   "judge": None if judge is None else getattr(judge, "name", type(judge).__name__),
              "scorer": "student" if scorer is None else ("none" if scorer is False else getattr(scorer, "__name__", "custom")),
              "tokenizer": tokenizer if isinstance(tokenizer, str) or tokenizer is None else type(tokenizer).__name__})
    result: dict = {}

    def work() -> dict:
        per_seed, raws, metrics_list = [], [], []
        difficulty = None
        for r in [run, *others]:
            methods, diff, raw = analyse_methods(r, cfg, scorer=scorer, tokenizer=tokenizer, judge=judge)
            per_seed.append(methods)
            raws.append(raw)
            metrics_list.append(json.loads(r.metrics.read_text(encoding="utf-8")))
            difficulty = difficulty or diff
        agg_metrics = aggregate_metrics(metrics_list)
        agg_methods = _aggregate_method_scalars(per_seed)
        toy = is_toy_run(run)
        scores = scores_by_seed([run, *others], list(metrics_list[0]))
        boot = (cfg.bootstrap_resamples, cfg.bootstrap_seed, cfg.interval_level)
        intervals = {"cells": cell_intervals(scores, *boot), "headline": headline_intervals(scores, *boot),
                     "rule": {"resamples": cfg.bootstrap_resamples, "seed": cfg.bootstrap_seed,
                              "level": cfg.interval_level, "margin_points": cfg.margin_points,
                              "decide_max_width_points": cfg.decide_max_width_points}}
        analysis = {
            "version": ANALYSIS_VERSION,
            "run": run.root.name,
            "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "definitions": DEFINITIONS,
            "config": asdict(cfg),
            "toy": toy,
            "methods": per_seed[0],
            "difficulty": difficulty,
            "metrics": agg_metrics,
            "seeds": {"n": len(per_seed), "runs": [r.root.name for r in [run, *others]], "methods": agg_methods,
                      "per_seed": [{"run": r.root.name, "methods": s} for r, s in zip([run, *others], per_seed)]},
            "intervals": intervals,
            "claims": assess_claims(agg_metrics, agg_methods, cfg.margin_points, toy=toy, n_seeds=len(per_seed),
                                    intervals=intervals["headline"], max_width=cfg.decide_max_width_points),
            "reflection": reflection_summary(run),
        }
        analysis["training_sets"] = training_set_table(
            run, list(metrics_list[0]), student_tokenizer(run) if tokenizer == "auto" else tokenizer)
        analysis["figures"] = write_figures(run, agg_metrics, agg_methods, raws, [tuple(b) for b in cfg.buckets],
                                            (difficulty or {}).get("counts"))
        write_json(out_json, analysis)
        write_report(run, analysis=analysis)
        result.update(analysis)
        return {"n_seeds": len(per_seed)}

    run.run_stage("analysis", params, inputs, [out_json, out_report], work, force=force, stage_hint="07_evaluation")
    if not result:
        result.update(json.loads(out_json.read_text(encoding="utf-8")))
    return result


def flatten_numbers(numbers: Any, prefix: str = "") -> dict:
    """A claim's nested ``numbers`` as flat ``{"a / b / c": value}`` rows (mean ± std cells kept whole)."""
    if isinstance(numbers, dict) and not ({"mean", "std"} & set(numbers)):
        out: dict = {}
        for key, value in numbers.items():
            out.update(flatten_numbers(value, f"{prefix} / {key}" if prefix else str(key)))
        return out
    if isinstance(numbers, dict):  # a {"mean", "std", "n"} cell
        return {prefix: cell_text(numbers, 1.0, 4) if numbers.get("mean") is not None else None}
    return {prefix: numbers}


def look_inside(run: RunDir, claim: str = "stability", show: bool = True) -> Optional[dict]:
    """One of the paper's claims as this run's ``analysis.json`` assessed it: the claim, its verdict, the
    sentence that explains it, and every number behind it (per method, flattened)."""
    from .display import key_values

    path = run.analysis_file
    claims = json.loads(path.read_text(encoding="utf-8")).get("claims", []) if path.exists() else []
    found = next((c for c in claims if c.get("id") == claim), claims[0] if claims else None)
    if found is None:
        print("no claims assessed in this run (analysis.json is missing or has none)")
        return None
    look = {**{k: found.get(k) for k in ("id", "claim", "verdict", "text")},
            "numbers": flatten_numbers(found.get("numbers") or {})}
    if show:
        key_values({k: look[k] for k in ("id", "claim", "verdict", "text")}, title="one claim")
        key_values(look["numbers"] or {"(none)": ""}, title="its numbers")
    return look
