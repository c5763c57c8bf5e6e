"""Figures for the notebooks and the report (matplotlib, saved as PNG, returned for display)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence, Union

import matplotlib

if not matplotlib.get_backend().lower().startswith(("module://matplotlib_inline", "module://ipykernel")):
    matplotlib.use("Agg")  # headless runs (papermill, CI) have no display
import matplotlib.pyplot as plt  # noqa: E402

from .methods import METHODS  # noqa: E402

PathLike = Union[str, Path]


def _save(fig, path: Optional[PathLike]):
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def pass_rate_histogram(rates: dict, path: Optional[PathLike] = None):
    """How often the student solves each training question."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(list(rates.values()), bins=[i / 10 for i in range(11)], color="#4C72B0", edgecolor="white")
    ax.set_xlabel("student pass rate on the question")
    ax.set_ylabel("training questions")
    ax.set_title("Error exposure: per-question pass rate")
    return _save(fig, path)


def loss_curves(histories: dict, path: Optional[PathLike] = None, extra_seeds: Sequence[dict] = ()):
    """Training loss per step, one line per method; ``extra_seeds``: more {method: history} dicts
    (other seeds), drawn as thinner lines of the same colour so the spread shows."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    methods = list(histories) + [m for seed in extra_seeds for m in seed if m not in histories]
    for i, method in enumerate(methods):
        colour = _colour(method, i)
        for j, seed in enumerate([histories, *extra_seeds]):
            points = [(h["step"], h["loss"]) for h in seed.get(method, []) if "loss" in h and "step" in h]
            if points:
                ax.plot(*zip(*points), color=colour, lw=1.6 if j == 0 else 0.9, alpha=1.0 if j == 0 else 0.5,
                        label=method if j == 0 or method not in histories else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss" + (f" ({1 + len(extra_seeds)} seeds; thin lines: other seeds)" if extra_seeds else ""))
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


NOT_MEASURED = "not measured"


def _label_bars(ax, bars, heights, fmt: str, fontsize: int = 7) -> None:
    """Each bar's value above it; a cell the run did not measure (NaN height, no bar drawn) is labelled
    "not measured" at the axis instead, so that it never reads as 0."""
    ax.bar_label(bars, labels=["" if math.isnan(h) else fmt % h for h in heights], fontsize=fontsize)
    for bar, h in zip(bars, heights):
        if math.isnan(h):
            ax.text(bar.get_x() + bar.get_width() / 2, 0.02, NOT_MEASURED, rotation=90, ha="center", va="bottom",
                    fontsize=fontsize, color="0.4", transform=ax.get_xaxis_transform())


def measured(metrics: dict, key: str) -> bool:
    """Whether any method and benchmark of ``metrics`` ({method: {benchmark: {key: value}}}) has ``key``."""
    return any((cells or {}).get(key) is not None for per in metrics.values() for cells in per.values())


def accuracy_bars(metrics: dict, key: str = "pass@1", path: Optional[PathLike] = None, errors: Optional[dict] = None):
    """Grouped bars: one group per benchmark, one bar per method. A cell without ``key`` (not measured: e.g.
    pass@1 of a greedy-only run) has no bar and is labelled "not measured"; with none measured at all there is
    nothing to draw (ValueError).

    ``errors``: optional {method: {benchmark: {key: std}}} (fractions, like ``metrics``) drawn as
    error bars (the spread over seeds)."""
    if not measured(metrics, key):
        raise ValueError(f"{key} was not measured in this run: no figure to draw")
    methods = list(metrics)
    benchmarks = sorted({b for per in metrics.values() for b in per})
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(5.5, 2.4 + 1.8 * len(benchmarks)), 4.0))
    any_err = False
    for i, method in enumerate(methods):
        cells = [(metrics[method].get(b) or {}).get(key) for b in benchmarks]
        values = [float("nan") if v is None else 100 * v for v in cells]
        errs = [100 * ((errors or {}).get(method, {}).get(b, {}) or {}).get(key, 0.0) for b in benchmarks]
        any_err = any_err or any(errs)
        xs = [j + i * width - 0.4 + width / 2 for j in range(len(benchmarks))]
        bars = ax.bar(xs, values, width, label=method, color=_colour(method, i),
                      yerr=errs if any(errs) else None, capsize=3 if any(errs) else 0)
        _label_bars(ax, bars, values, "%.0f")
    ax.set_xticks(range(len(benchmarks)), benchmarks)
    ax.set_xlabel("benchmark")
    ax.set_ylabel(f"{key} (%)")
    ax.set_ylim(0, 110)
    ax.set_title(f"{key} by method and benchmark" + ("\n(error bars: std over seeds)" if any_err else ""))
    ax.legend(fontsize=8, ncols=min(len(methods), 5), loc="upper center", bbox_to_anchor=(0.5, -0.16),
              frameon=False)
    return _save(fig, path)


# --- analysis figures ---------------------------------------------------------------------------

_METHOD_COLOURS = {name: m.colour for name, m in METHODS.items()}
_FALLBACK = ("#DD8452", "#937860", "#DA8BC3", "#CCB974", "#64B5CD")


def _colour(method: str, i: int = 0) -> str:
    return _METHOD_COLOURS.get(method, _FALLBACK[i % len(_FALLBACK)])


def _cell(cell) -> tuple:
    """(mean, std) of a {"mean","std","n"} cell or a plain number; (nan, 0) when missing."""
    if isinstance(cell, dict):
        return (cell.get("mean") if cell.get("mean") is not None else float("nan")), (cell.get("std") or 0.0)
    return (float("nan") if cell is None else float(cell)), 0.0


def length_distributions(cot_lengths: dict, response_lengths: dict, path: Optional[PathLike] = None,
                         n_seeds: int = 1):
    """Box plots of lengths in tokens: the training CoTs per method (left), the evaluation outputs
    per method (right). Boxes: quartiles; whiskers: 1.5 IQR; diamond: mean."""
    panels = [(cot_lengths, "Training CoTs"), (response_lengths, "Evaluation outputs")]
    panels = [(d, t) for d, t in panels if d]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.9), squeeze=False)
    for ax, (data, title) in zip(axes[0], panels):
        methods = list(data)
        box = ax.boxplot([data[m] for m in methods], patch_artist=True, showmeans=True, showfliers=False,
                         meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black"})
        ax.set_xticks(range(1, len(methods) + 1), methods)
        for i, (patch, m) in enumerate(zip(box["boxes"], methods)):
            patch.set_facecolor(_colour(m, i))
            patch.set_alpha(0.75)
            patch.set_label(f"{m} (n={len(data[m])})")
        ax.set_xlabel("method")
        ax.set_ylabel("length (tokens)")
        ax.set_title(title + (f", {n_seeds} seeds pooled" if n_seeds > 1 else ""))
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def difficulty_bars(panels: dict, buckets: Sequence[str], path: Optional[PathLike] = None,
                    counts: Optional[dict] = None):
    """Accuracy by difficulty bucket, one panel per benchmark ("all": pooled).

    ``panels``: {benchmark: {method: {bucket: {"mean","std","n"} or a number (fraction)}}};
    ``counts``: {benchmark: {bucket: n problems}} for the tick labels."""
    names = list(panels)
    fig, axes = plt.subplots(1, len(names), figsize=(1.2 + 3.6 * len(names), 3.9), squeeze=False, sharey=True)
    for ax, bench in zip(axes[0], names):
        methods = list(panels[bench])
        width = 0.8 / max(len(methods), 1)
        for i, m in enumerate(methods):
            cells = [_cell((panels[bench][m] or {}).get(b)) for b in buckets]
            xs = [j + i * width - 0.4 + width / 2 for j in range(len(buckets))]
            errs = [100 * s for _, s in cells]
            ax.bar(xs, [100 * v for v, _ in cells], width, label=m, color=_colour(m, i),
                   yerr=errs if any(errs) else None, capsize=2 if any(errs) else 0)
        n = (counts or {}).get(bench, {})
        ax.set_xticks(range(len(buckets)), [f"{b}\n(n={n[b]})" if b in n else b for b in buckets])
        ax.set_xlabel("difficulty (base student's pass rate)")
        ax.set_title(bench)
        ax.set_ylim(0, 105)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("pass@1 (%)")
    axes[0][-1].legend(fontsize=7, loc="upper left")
    fig.suptitle("Accuracy by difficulty", fontsize=11)
    return _save(fig, path)


def metric_bars(values: dict, ylabel: str, title: str, path: Optional[PathLike] = None, scale: float = 1.0):
    """One bar per method; ``values``: {method: {"mean","std","n"} or number}; error bars = std."""
    methods = list(values)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.8 + 1.1 * len(methods)), 3.6))
    cells = [_cell(values[m]) for m in methods]
    errs = [scale * s for _, s in cells]
    heights = [scale * v for v, _ in cells]
    bars = ax.bar(range(len(methods)), heights, 0.6,
                  color=[_colour(m, i) for i, m in enumerate(methods)], label=methods,
                  yerr=errs if any(errs) else None, capsize=3 if any(errs) else 0)
    _label_bars(ax, bars, heights, "%.2f", fontsize=8)
    ax.set_xticks(range(len(methods)), methods)
    ax.set_xlabel("method")
    ax.set_ylabel(ylabel)
    ax.set_title(title + ("\n(error bars: std over seeds)" if any(errs) else ""), fontsize=10)
    ax.legend(fontsize=7)
    ax.margins(y=0.15)
    return _save(fig, path)


def grouped_metric_bars(values: dict, ylabel: str, title: str, path: Optional[PathLike] = None, scale: float = 1.0):
    """Groups = methods, bars = series; ``values``: {method: {series: cell or None}}."""
    methods = list(values)
    series = []
    for per in values.values():
        series += [s for s in per if s not in series]
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(5.5, 2.2 + 1.4 * len(methods)), 3.8))
    hatches = ("", "//", "..", "xx")
    for i, s in enumerate(series):
        cells = [_cell(values[m].get(s)) for m in methods]
        xs = [j + i * width - 0.4 + width / 2 for j in range(len(methods))]
        errs = [scale * e for _, e in cells]
        heights = [scale * v for v, _ in cells]
        bars = ax.bar(xs, heights, width, label=s, color="#9AB0D0" if i == 0 else "#E3A07A",
                      hatch=hatches[i % len(hatches)], edgecolor="black", linewidth=0.5,
                      yerr=errs if any(errs) else None, capsize=3 if any(errs) else 0)
        _label_bars(ax, bars, heights, "%.0f")
    ax.set_xticks(range(len(methods)), methods)
    ax.set_xlabel("method")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 110 if scale == 100 else None)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)
