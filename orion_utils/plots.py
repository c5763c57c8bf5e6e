"""Figures for the notebooks and the report (matplotlib, saved as PNG, returned for display)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import matplotlib

if not matplotlib.get_backend().lower().startswith(("module://matplotlib_inline", "module://ipykernel")):
    matplotlib.use("Agg")  # headless runs (papermill, CI) have no display
import matplotlib.pyplot as plt  # noqa: E402

PathLike = Union[str, Path]


def _save(fig, path: Optional[PathLike]):
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def pass_rate_histogram(rates: dict, path: Optional[PathLike] = None):
    """How often the student solves each training question."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(list(rates.values()), bins=[i / 10 for i in range(11)], color="#4C72B0", edgecolor="white")
    ax.set_xlabel("student pass rate on the question")
    ax.set_ylabel("training questions")
    ax.set_title("Error exposure: per-question pass rate")
    return _save(fig, path)


def loss_curves(histories: dict, path: Optional[PathLike] = None):
    """Training loss per step, one line per method."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for method, history in histories.items():
        points = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
        if points:
            ax.plot(*zip(*points), label=method)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return _save(fig, path)


def accuracy_bars(metrics: dict, key: str = "pass@1", path: Optional[PathLike] = None):
    """Grouped bars: one group per benchmark, one bar per method."""
    methods = list(metrics)
    benchmarks = sorted({b for per in metrics.values() for b in per})
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(benchmarks), 3.8))
    for i, method in enumerate(methods):
        values = [100 * metrics[method].get(b, {}).get(key, 0.0) for b in benchmarks]
        xs = [j + i * width - 0.4 + width / 2 for j in range(len(benchmarks))]
        bars = ax.bar(xs, values, width, label=method)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(benchmarks)), benchmarks)
    ax.set_ylabel(f"{key} (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"{key} by method and benchmark")
    ax.legend(fontsize=8, ncols=min(len(methods), 5), loc="upper right")
    return _save(fig, path)
