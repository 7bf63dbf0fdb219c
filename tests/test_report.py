"""`analyze` and `ablate analyze` on simulated studies recorded in MLflow."""

from __future__ import annotations

import functools
import pathlib
import shutil

import numpy as np
import polars as pl
import pytest
from mlflow.tracking import MlflowClient

from analysis import attribution, load, plots, report, simulate
from pipeline import cli

METRIC_COLUMNS = ["metric", "factor", "level", "reference", "effect", "ci_low", "ci_high", "seeds"]
DATA_FACTORS = {"data": ["xeno_canto", "multi_taxa"], "window": ["random", "peak"]}
ARCHITECTURE_FACTORS = {"prototype": ["off", "on"], "mixup": ["off", "pairwise", "generalized"]}


def planted_metrics(main: dict, interactions: dict | None = None) -> dict[str, simulate.PlantedMetric]:
    """Test and transfer metrics sharing the planted effects, plus a count that analysis must skip."""
    interactions = interactions or {}
    return {
        "eval/test/cmap": simulate.PlantedMetric(0.40, main, interactions, seed_sd=0.01, noise_sd=0.004),
        "eval/test/auroc": simulate.PlantedMetric(0.85, main, seed_sd=0.005, noise_sd=0.003),
        "eval/transfer/auroc": simulate.PlantedMetric(0.70, {}, seed_sd=0.01, noise_sd=0.01),
        "eval/test/classes": simulate.PlantedMetric(32.0),
    }


@functools.lru_cache(maxsize=None)
def recorded_studies(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Record a data study and an architecture study under `root`; once per session.

    Creating an MLflow SQLite store runs its migrations, which takes
    seconds, so one empty store is created and copied into each study.
    """
    data = simulate.simulate_study(
        DATA_FACTORS,
        list(range(6)),
        planted_metrics({"data": {"multi_taxa": 0.03}}),
        np.random.default_rng(20),
        name="data",
    )
    architecture = simulate.simulate_study(
        ARCHITECTURE_FACTORS,
        [0, 1, 2, 3],
        planted_metrics(
            {"prototype": {"on": 0.02}, "mixup": {"pairwise": 0.01, "generalized": 0.02}},
            {"prototype:mixup": {"on:generalized": 0.015}},
        ),
        np.random.default_rng(21),
        name="architecture",
    )
    # One failed trial, as a diverged run leaves it.
    failed_trial = "prototype=on,mixup=pairwise,seed=2"
    architecture.runs = architecture.runs.with_columns(
        pl.when(pl.col("trial") == failed_trial)
        .then(pl.lit("FAILED"))
        .otherwise(pl.col("status"))
        .alias("status"),
        pl.when(pl.col("trial") == failed_trial)
        .then(pl.lit("loss became NaN at step 5"))
        .otherwise(pl.col("failure"))
        .alias("failure"),
    )
    return {study.name: record(study, root) for study in (data, architecture)}


@functools.lru_cache(maxsize=None)
def empty_store(root: pathlib.Path) -> pathlib.Path:
    """Create one empty MLflow SQLite store under `root` to copy into each study."""
    root.mkdir(parents=True, exist_ok=True)
    template = root / "empty-mlflow.db"
    MlflowClient(f"sqlite:///{template}").search_experiments()
    return template


def record(study: simulate.SimulatedStudy, root: pathlib.Path) -> pathlib.Path:
    """Record `study` under `root`/runs in a copy of the empty store; returns the study folder."""
    folder = root / "runs" / study.name
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(empty_store(root), folder / "mlflow.db")
    return simulate.record_study(study, root / "runs", steps=6)


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> dict[str, pathlib.Path]:
    return recorded_studies(tmp_path_factory.getbasetemp() / "recorded")


@pytest.fixture(scope="module")
def analysis(studies, monkeypatch_module) -> report.AnalysisOutput:
    return report.analyze(studies["architecture"], resamples=299)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield patch


def test_load_lists_failed_trials(studies, monkeypatch_module):
    study = load.load_study(studies["architecture"])

    assert study.runs.height == 6 * 4
    assert study.failed_trials() == ["prototype=on,mixup=pairwise,seed=2 (FAILED: loss became NaN at step 5)"]
    assert study.missing_cells() == ["prototype=on,mixup=pairwise,seed=2"]
    assert study.metric_names() == ["eval/test/auroc", "eval/test/cmap", "eval/transfer/auroc"]
    assert study.tasks() == ["test", "transfer"]


def test_load_histories_has_every_trial(studies, monkeypatch_module):
    study = load.load_study(studies["data"])
    histories = load.load_histories(study)

    assert set(histories["metric"].to_list()) == {"train/loss", "train/learning_rate"}
    per_trial = histories.filter(pl.col("metric") == "train/loss").group_by("trial").len()
    assert per_trial.height == 4 * 6
    assert per_trial["len"].to_list() == [6] * per_trial.height
    assert set(histories["data"].to_list()) == {"xeno_canto", "multi_taxa"}


def test_analyze_keeps_effects_interface(analysis):
    assert analysis.effects.columns[: len(METRIC_COLUMNS)] == METRIC_COLUMNS
    assert set(analysis.effects["metric"].to_list()) == {
        "eval/test/auroc",
        "eval/test/cmap",
        "eval/transfer/auroc",
    }
    assert analysis.effects.height == 3 * 3
    assert analysis.failed == ["prototype=on,mixup=pairwise,seed=2"]
    assert analysis.missing == ["prototype=on,mixup=pairwise,seed=2"]


def test_analyze_finds_planted_effects(analysis):
    cmap = analysis.effects.filter(pl.col("metric") == "eval/test/cmap")
    found = {(row["factor"], row["level"]): row for row in cmap.iter_rows(named=True)}

    assert found[("prototype", "on")]["resolved"]
    # Planted 0.02, plus half the 0.015 interaction with prototype (averaged over its two levels).
    assert found[("mixup", "generalized")]["effect"] == pytest.approx(0.0275, abs=0.005)
    # Four seeds: t intervals, from the blocked fit because one trial failed.
    assert (analysis.effects["interval"] == "t").all()


def test_analyze_writes_figures_as_png_and_svg(analysis):
    figures = analysis.folder / "figures"
    stems = [
        figures / "waterfall_eval_test_cmap",
        figures / "waterfall_eval_test_auroc",
        figures / "interactions_eval_test_cmap",
        figures / "task_effects",
        figures / "learning_curves",
        analysis.folder / "effects",  # the forest plot, at the path of the earlier effects chart
    ]
    for stem in stems:
        png, svg = stem.with_suffix(".png"), stem.with_suffix(".svg")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", stem
        assert "<svg" in svg.read_text()[:1000], stem
        assert png in analysis.files
        assert svg in analysis.files


def test_report_answers_each_component(analysis):
    text = analysis.report.read_text()

    assert analysis.report == analysis.folder / "report.md"
    assert "prototype=on,mixup=pairwise,seed=2 (FAILED: loss became NaN at step 5)" in text
    for metric in ("eval/test/cmap", "eval/test/auroc", "eval/transfer/auroc"):
        assert f"## {metric}" in text
    sections = text.split("How to read this report", 1)[1]
    for component in ("prototype: on vs off", "mixup: pairwise vs off", "mixup: generalized vs off"):
        assert sections.count(f"| {component}") == 3, component
    assert "resolved from seed noise with 4 seeds" in text
    assert "seeds would resolve an effect of this size" in text
    assert "prototype:mixup (on:generalized)" in text
    assert "Share of variance" in text
    assert "](effects.png)" in text
    assert "](figures/learning_curves.png)" in text
    assert "eval/test/classes" not in text


def test_latex_table_is_booktabs_and_escaped(analysis):
    latex = (analysis.folder / "effects.tex").read_text()

    assert "\\toprule" in latex
    assert "\\bottomrule" in latex
    assert "mixup: generalized vs off" in latex
    assert "eval/test/cmap" in latex
    assert "\\caption{Effects of each component in study architecture" in latex


def test_tables_are_written(analysis):
    for name in ("runs.csv", "effects.csv", "attribution.csv", "anova.csv", "components.csv"):
        assert (analysis.folder / name) in analysis.files
    attribution = pl.read_csv(analysis.folder / "attribution.csv")
    assert set(attribution["kind"].to_list()) == {
        "main",
        "interaction",
        "shapley",
        "banzhaf",
        "leave_one_out",
        "add_one_in",
        "total",
    }


def test_format_table_marks_resolved_effects(analysis):
    text = report.format_table(analysis.effects, ["eval/test/cmap"])
    lines = text.splitlines()

    assert lines[0].split()[:3] == ["metric", "component", "effect"]
    assert len(lines) == 1 + 3
    prototype = next(line for line in lines if "prototype: on vs off" in line)
    assert "*" in prototype


def test_cli_analyze_prints_table(studies, monkeypatch_module, capsys):
    status = cli.main(["analyze", str(studies["data"])])
    output = capsys.readouterr().out

    assert status == 0
    assert "data: multi_taxa vs xeno_canto" in output
    effects = pl.read_csv(studies["data"] / "analysis" / "effects.csv")
    assert set(effects["interval"].to_list()) == {"bootstrap-t"}
    assert "Wrote " in output
    assert "report.md" in output
    latex = (studies["data"] / "analysis" / "effects.tex").read_text()
    assert "data: multi\\_taxa vs xeno\\_canto" in latex


def test_cli_analyze_two_seed_study(tmp_path_factory, monkeypatch_module, capsys):
    # The shape of the end-to-end study: one factor, two seeds, the three test metrics.
    metrics = {
        name: simulate.PlantedMetric(0.5, {"source_loss": {"on": 0.01}}, seed_sd=0.01, noise_sd=0.01)
        for name in ("eval/test/cmap", "eval/test/auroc", "eval/test/top1")
    }
    tiny = simulate.simulate_study(
        {"source_loss": ["off", "on"]}, [0, 1], metrics, np.random.default_rng(22), name="tiny"
    )
    folder = record(tiny, tmp_path_factory.getbasetemp() / "recorded")

    status = cli.main(["analyze", str(folder)])
    output = capsys.readouterr().out

    assert status == 0
    assert "source_loss: on vs off" in output
    assert (folder / "analysis" / "effects.csv").exists()
    assert (folder / "analysis" / "effects.png").stat().st_size > 1000
    effects = pl.read_csv(folder / "analysis" / "effects.csv")
    assert set(effects["interval"].to_list()) == {"t"}


def test_figures_without_intervals(tmp_path):
    factors = {"mixup": ["off", "on"], "prototype": ["off", "on"]}
    planted = {"eval/test/cmap": simulate.PlantedMetric(0.4, {"mixup": {"on": 0.02}}, noise_sd=0.01)}
    study = simulate.simulate_study(factors, [0], planted, np.random.default_rng(23))
    table = attribution.attribute(study.runs, factors, ["eval/test/cmap"], resamples=99)
    assert table["ci_low"].null_count() == table.height

    paths = plots.waterfall(table, "eval/test/cmap", 0.4, tmp_path / "waterfall")
    paths += plots.forest(table, ["eval/test/cmap"], tmp_path / "forest")
    paths += plots.interaction_heatmap(table, "eval/test/cmap", tmp_path / "interactions")
    paths += plots.task_bars(table, ["eval/test/cmap"], tmp_path / "task_effects")
    assert len(paths) == 8
    assert all(path.stat().st_size > 1000 for path in paths)


def test_report_starts_with_summary_table(analysis):
    report_text = (analysis.folder / "report.md").read_text()

    summary = report_text.split("## Summary", 1)[1].split("How to read this report", 1)[0]
    assert "| component | eval/test/cmap | eval/test/auroc |" in summary
    assert "| prototype: on vs off |" in summary
