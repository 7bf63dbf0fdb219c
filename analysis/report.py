"""`ablate analyze`: tables, figures and a report from a study's runs."""

from __future__ import annotations

import dataclasses
import pathlib

import polars as pl

from analysis import effects, load, plots


@dataclasses.dataclass
class AnalysisOutput:
    """Paths written by `analyze` and the main effects table."""

    folder: pathlib.Path
    effects: pl.DataFrame
    files: list[pathlib.Path]
    missing: list[str]
    failed: list[str]


def analyze(study_dir: str | pathlib.Path, tracking_uri: str | None = None) -> AnalysisOutput:
    """Load a study from MLflow and write its effects table and chart."""
    study_dir = pathlib.Path(study_dir)
    study = load.load_study(study_dir, tracking_uri)
    folder = study_dir / "analysis"
    folder.mkdir(parents=True, exist_ok=True)

    finished = study.finished
    metrics = study.metric_names()
    table = effects.paired_main_effects(finished, study.factors, metrics)
    files = []
    runs_path = folder / "runs.csv"
    study.runs.select([c for c in study.runs.columns if study.runs[c].dtype != pl.Object]).write_csv(runs_path)
    files.append(runs_path)
    table_path = folder / "effects.csv"
    table.write_csv(table_path)
    files.append(table_path)
    chart_path = folder / "effects.png"
    headline = [metric for metric in ("eval/test/cmap", "eval/test/auroc", "eval/test/top1") if metric in metrics]
    plots.effects_bar_chart(table, headline or metrics[:3], chart_path)
    files.append(chart_path)

    failed = study.runs.filter(pl.col("status") != "FINISHED")["trial"].to_list() if study.runs.height else []
    return AnalysisOutput(folder, table, files, study.missing_cells(), failed)


def format_table(table: pl.DataFrame, metrics: list[str] | None = None) -> str:
    """Return the effects table as aligned text for the terminal."""
    if metrics:
        table = table.filter(pl.col("metric").is_in(metrics))
    lines = [f"{'metric':<24} {'component':<28} {'effect':>8} {'95% CI':>20} {'seeds':>5}"]
    for row in table.iter_rows(named=True):
        component = f"{row['factor']}: {row['level']} vs {row['reference']}"
        interval = f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"
        lines.append(f"{row['metric']:<24} {component:<28} {row['effect']:>+8.3f} {interval:>20} {row['seeds']:>5}")
    return "\n".join(lines)
