"""What a reader sees is what the run measured: a metric a run did not measure (pass@1 with
``evaluation.n_samples: 0``, greedy with ``evaluation.greedy: false``) gets no figure, no bar at 0 and no
table of dashes; and the report's opening paragraph introduces the run's own student and reflector."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_analysis import CORRECT, fake_scorer, make_fake_run

from orion_utils import analysis as A
from orion_utils import plots
from orion_utils.config import load_profile
from orion_utils.evaluation import NOT_MEASURED, results_markdown
from orion_utils.jsonl import read_jsonl, write_json, write_jsonl
from orion_utils.records import EvalSample
from orion_utils.introduction import TOY_CAVEAT, run_introduction
from orion_utils.report import write_report

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _one_decoding_run(root, decoding: str):
    """The fake run of test_analysis with only ``decoding`` ("greedy" or "sample") evaluated: its eval files and
    metrics.json as evaluation writes them (no pass@1 without samples, no greedy without a greedy decode)."""
    run = make_fake_run(root)
    config = json.loads(run.config_file.read_text())
    config["evaluation"] = {"n_samples": 0 if decoding == "greedy" else 4, "greedy": decoding == "greedy"}
    write_json(run.config_file, config)
    metrics = {}
    for method in CORRECT:
        path = run.eval_dir() / method / "toy_test.jsonl"
        kept = [s for s in read_jsonl(path, EvalSample) if s.decoding == decoding]
        write_jsonl(path, kept)
        if decoding == "greedy":
            cell = {"greedy": sum(s.correct for s in kept) / len(kept), "n_problems": len(kept)}
        else:
            per: dict = {}
            for s in kept:
                per.setdefault(s.problem_id, []).append(s.correct)
            cell = {"pass@1": sum(sum(v) / len(v) for v in per.values()) / len(per), "n_problems": len(per)}
        metrics[method] = {"toy_test": cell}
    write_json(run.path("metrics.json"), metrics)
    return run, metrics


@pytest.fixture
def drawn(monkeypatch):
    """Every accuracy figure drawn, as (key, figure): the real plots.accuracy_bars, its figures kept to read."""
    figures = []
    real = plots.accuracy_bars

    def keep(metrics, key="pass@1", *args, **kwargs):
        fig = real(metrics, key, *args, **kwargs)
        figures.append((key, fig))
        return fig

    monkeypatch.setattr(plots, "accuracy_bars", keep)
    return figures


def _bars(fig) -> dict:
    """{method: [bar heights]} of an accuracy figure, read from its bar containers."""
    ax = fig.axes[0]
    return {c.get_label(): [p.get_height() for p in c.patches] for c in ax.containers}


MEASURED = {"greedy": ("greedy", "pass@1", "accuracy_greedy", "accuracy_pass1"),
            "sample": ("pass@1", "greedy", "accuracy_pass1", "accuracy_greedy")}


@pytest.mark.parametrize("decoding", ["greedy", "sample"])
def test_report_without_analysis_draws_and_tables_only_what_was_measured(tmp_path, drawn, decoding):
    key, missing, figure, no_figure = MEASURED[decoding]
    run, metrics = _one_decoding_run(tmp_path / "run", decoding)
    text = write_report(run).read_text()
    assert [k for k, _ in drawn] == [key]
    heights = _bars(drawn[0][1])
    assert heights == {m: [pytest.approx(100 * metrics[m]["toy_test"][key])] for m in CORRECT}
    assert run.figure(figure).is_file() and not run.figure(no_figure).exists()
    assert f"]({run.relative(run.figure(figure))})" in text and no_figure not in text
    assert NOT_MEASURED[missing] in text and NOT_MEASURED[key] not in text
    assert f"| orion | {100 * metrics['orion']['toy_test'][key]:.1f} |" in text
    assert text.count("| method | toy_test |") == 1  # one table: the measured metric's


@pytest.mark.parametrize("decoding", ["greedy", "sample"])
def test_analysed_report_and_figures_only_what_was_measured(tmp_path, drawn, decoding):
    key, missing, figure, no_figure = MEASURED[decoding]
    run, metrics = _one_decoding_run(tmp_path / "run", decoding)
    result = A.analyse_run(run, scorer=fake_scorer, tokenizer=None)
    assert figure in result["figures"] and no_figure not in result["figures"]
    assert [k for k, _ in drawn] == [key]
    assert _bars(drawn[0][1]) == {m: [pytest.approx(100 * metrics[m]["toy_test"][key])] for m in CORRECT}
    text = run.report.read_text()
    assert NOT_MEASURED[missing] in text and no_figure not in text
    assert not run.figure(no_figure).exists()


def test_accuracy_bars_mark_a_cell_not_measured_and_draw_a_measured_zero():
    metrics = {"base": {"a": {"greedy": 0.0}, "b": {"greedy": 0.5}}, "sft": {"a": {"greedy": 0.25}}}
    fig = plots.accuracy_bars(metrics, "greedy")
    heights = _bars(fig)
    assert heights["base"] == [0.0, 50.0]  # a measured 0 is a bar at 0, labelled 0
    assert heights["sft"][0] == 25.0 and math.isnan(heights["sft"][1])  # sft on b: no bar
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts.count(plots.NOT_MEASURED) == 1 and "0" in texts and "50" in texts
    with pytest.raises(ValueError, match="not measured"):
        plots.accuracy_bars(metrics, "pass@1")


def test_metric_bars_say_not_measured_for_a_missing_cell():
    fig = plots.grouped_metric_bars({"sft": {"training CoTs": 0.5, "evaluation outputs": None}}, "%", "t", scale=100)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert plots.NOT_MEASURED in texts and "nan" not in texts and "50" in texts


def test_results_markdown_for_the_evaluation_notebook():
    greedy_only = results_markdown({"base": {"a": {"greedy": 0.5}}})
    assert NOT_MEASURED["pass@1"] in greedy_only and "| base | 50.0 |" in greedy_only
    sampled_only = results_markdown({"base": {"a": {"pass@1": 0.25}}})
    assert NOT_MEASURED["greedy"] in sampled_only and "| base | 25.0 |" in sampled_only


# --- the report's introduction ------------------------------------------------------------------

SHIPPED = {"toy": "scratch toy", "toy3": "scratch toy", "smoke": "scratch toy",
           "smol_toy": "pretrained toy", "smol_toy3": "pretrained toy", "smol_demo": "pretrained toy",
           "smol_full": "pretrained toy",
           "smol": "real", "colab": "real", "colab_full": "real", "colab_rehearsal": "real", "paper": "real"}


def test_every_shipped_profile_is_introduced_as_what_it_runs():
    assert set(SHIPPED) == {p.stem for p in CONFIGS.glob("*.yaml")}, "a new profile: say which introduction it gets"
    for name, which in SHIPPED.items():
        cfg = load_profile(name)
        got, text = run_introduction(cfg.to_dict())
        assert got == which, name
        model = cfg.student.model
        if which == "scratch toy":
            assert text == TOY_CAVEAT
            continue
        assert f"`{model}`" in text and "tiny student" not in text and "rule-assisted" not in text, name
        assert f"Reflector `{cfg.reflection.reflector}`" in text, name  # every non-toy profile names its own
        if cfg.reflection.compare:
            assert f"`{cfg.reflection.compare}` reflector on the same errors" in text, name
        if which == "real":
            assert all(b in text for b in cfg.data.benchmarks) and f"`{cfg.data.train_source}`" in text, name
            assert "synthetic" not in text, name
        else:
            assert "pretrained" in text and "synthetic arithmetic" in text, name


def test_introduction_follows_the_reflector_auto_resolves_to():
    cfg = load_profile("smol_toy", {"reflection": {"reflector": "auto", "compare": ""}}).to_dict()
    assert "Reflector `llm`" in run_introduction(cfg)[1]  # auto: llm for every student but the toy one
    cfg = load_profile("smol_toy", {"reflection": {"reflector": "rule", "compare": ""}}).to_dict()
    assert "Reflector `rule`: rules write the whole rewrite" in run_introduction(cfg)[1]


def test_report_of_a_pretrained_student_on_the_toy_domain_opens_with_it(tmp_path):
    run = make_fake_run(tmp_path / "run")
    write_json(run.config_file, {**load_profile("smol_toy").to_dict(), "profile": "smol_toy"})
    text = write_report(run).read_text()
    first = text.split("\n## Run")[0]
    assert "smollm2-135m-instruct" in first and "pretrained" in first and TOY_CAVEAT not in text
