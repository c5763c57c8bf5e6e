"""Intervals and seed aggregates of the analysis: numbers over problems and seeds, no run directory.

Every benchmark cell carries a 95% interval: a percentile bootstrap over the benchmark's problems,
and over the seeds when there are several (hierarchical: each resample draws the seeds with
replacement, then the problems with replacement, the same problems for every drawn seed since
every seed is evaluated on the same problems; the statistic is the mean over the drawn seeds of
the mean over the drawn problems of a problem's score, its pass@1 or greedy 0/1). The headline
claim compares ORION with each baseline through a *paired* bootstrap of ORION − baseline: the
same drawn problems and seeds for both methods, so the noise of which problems a benchmark has
cancels. Seed (``AnalysisConfig.bootstrap_seed``) and resamples (``bootstrap_resamples``) are
named knobs: the same run gives the same intervals.

Seeds: every table cell is ``mean ± std`` over the seeds (sample standard deviation, n−1; 0 for one
seed): ``aggregate_values``, ``aggregate_metrics``.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Optional, Sequence

from .records import EvalSample

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
