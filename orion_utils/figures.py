"""The analysis's figures: which ones a run gets, from the numbers ``analysis`` computed (``plots`` draws them)."""
from __future__ import annotations

import json
from typing import Optional, Sequence

from .measures import DEFAULT_BUCKETS, Bucket, concat_segments
from .rundir import RunDir


def write_figures(run: RunDir, agg_metrics: dict, agg_methods: dict, raws: Sequence[dict],
                  buckets: Sequence[Bucket] = DEFAULT_BUCKETS, difficulty_counts: Optional[dict] = None) -> dict:
    """All analysis figures in ``figures/``; returns {name: path relative to the run}."""
    import matplotlib.pyplot as plt

    from . import plots

    made = {}

    def keep(name: str, fig) -> None:
        plt.close(fig)
        made[name] = run.relative(run.figure(name))

    means = _means(agg_metrics)
    for key, name in (("pass@1", "accuracy_pass1"), ("greedy", "accuracy_greedy")):
        if plots.measured(means, key):  # a metric the run did not measure gets no figure (never bars at 0)
            keep(name, plots.accuracy_bars(means, key, run.figure(name), errors=_stds(agg_metrics)))
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
