"""`report.md`: run metadata, the results table of every method, and the figures."""
from __future__ import annotations

import json
from pathlib import Path

from .evaluation import results_table
from .rundir import RunDir
from .sft import load_loss_history


def _metadata(run: RunDir) -> list[str]:
    config = json.loads(run.path("config.json").read_text()) if run.path("config.json").exists() else {}
    stages = run.manifest().get("stages", {})
    student = json.loads(run.data("student.json").read_text()) if run.data("student.json").exists() else {}
    versions = next((s.get("package_versions") for s in stages.values() if s.get("package_versions")), {})
    backends = sorted({f"{name}: {s['backend']}" for name, s in stages.items() if s.get("backend")})
    lines = [
        f"- profile: `{config.get('profile', '?')}`, seeds: {config.get('seeds', '?')}",
        f"- student: `{student.get('model', '?')}` ({student.get('kind', '?')})",
        f"- teacher: `{config.get('teacher', {}).get('kind', '?')}`",
        f"- training backends: {', '.join(backends) or 'n/a'}",
        f"- stage wall times (s): " + ", ".join(f"{k} {v.get('wall_seconds', 0):.0f}" for k, v in stages.items()
                                                  if v.get("status") == "done"),
        f"- packages: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
    ]
    if config.get("student", {}).get("model") == "toy":
        lines.append("- toy profile: synthetic arithmetic problems, a programmatic teacher, and a rule-based "
                     "reflector in place of the student's own reflection (a tiny student cannot follow the prompt).")
    return lines


def write_report(run: RunDir) -> Path:
    """Write figures and ``report.md`` from ``metrics.json`` and the training logs."""
    from .plots import accuracy_bars, loss_curves

    run.require(run.path("metrics.json"), stage_hint="07_evaluation")
    metrics = json.loads(run.path("metrics.json").read_text())
    figures = run.figures()
    accuracy_bars(metrics, "pass@1", figures / "accuracy_pass1.png")
    accuracy_bars(metrics, "greedy", figures / "accuracy_greedy.png")
    trained = [m for m in metrics if m != "base" and run.model(m).exists()]
    loss_curves({m: load_loss_history(run, m) for m in trained}, figures / "loss_curves.png")
    text = "\n".join([
        "# Run report", "", *_metadata(run), "",
        "## pass@1 (%)", "", results_table(metrics, "pass@1"), "",
        "## greedy accuracy (%)", "", results_table(metrics, "greedy"), "",
        "![pass@1](figures/accuracy_pass1.png)", "", "![greedy](figures/accuracy_greedy.png)", "",
        "## Training loss", "", "![loss](figures/loss_curves.png)", "",
    ])
    path = run.path("report.md")
    path.write_text(text, encoding="utf-8")
    return path
