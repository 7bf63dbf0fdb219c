"""`ablate analyze`: tables, figures and a report from a study's runs."""

from __future__ import annotations

import dataclasses
import pathlib

import polars as pl

from analysis import anova, attribution, bootstrap, document, load, plots, summary

HEADLINE_METRICS = ["eval/test/cmap", "eval/test/auroc", "eval/test/top1"]
# One or two summary metrics per evaluation task, for the terminal table and
# the per-task chart; the CSV files and report.md keep every metric.
TASK_METRICS = [
    *HEADLINE_METRICS,
    "eval/transfer/linear_kall_auroc",
    "eval/transfer/prototype_kall_auroc",
    "eval/detection/cmap",
]


@dataclasses.dataclass
class AnalysisOutput:
    """Paths written by `analyze`, the main effects table and the full attribution.

    `effects` holds the main-effect rows of `attribution` (same columns);
    `failed` lists trials recorded as not finished, `missing` the trials of
    the design without a finished run.
    """

    folder: pathlib.Path
    effects: pl.DataFrame
    files: list[pathlib.Path]
    missing: list[str]
    failed: list[str]
    attribution: pl.DataFrame = dataclasses.field(default_factory=pl.DataFrame)
    summary: pl.DataFrame = dataclasses.field(default_factory=pl.DataFrame)
    anova: pl.DataFrame = dataclasses.field(default_factory=pl.DataFrame)
    report: pathlib.Path | None = None


def analyze(
    study_dir: str | pathlib.Path,
    tracking_uri: str | None = None,
    *,
    resamples: int = bootstrap.DEFAULT_RESAMPLES,
    seed: int = 0,
) -> AnalysisOutput:
    """Load a study from MLflow and write its attribution under `<study_dir>/analysis/`.

    Writes runs.csv, effects.csv (main effects), attribution.csv (every
    estimate), anova.csv, components.csv, report.md, effects.tex and the
    figures as PNG and SVG.
    """
    study_dir = pathlib.Path(study_dir)
    study = load.load_study(study_dir, tracking_uri)
    folder = study_dir / "analysis"
    folder.mkdir(parents=True, exist_ok=True)

    metrics = study.metric_names()
    finished = study.finished
    table = attribution.attribute(finished, study.factors, metrics, resamples=resamples, seed=seed)
    shares = anova.anova_shares(finished, study.factors, metrics)
    components = summary.component_summary(table)
    effects = table.filter(pl.col("kind") == "main")

    files = _write_tables(folder, study, table, effects, shares, components)
    figures = _draw_figures(folder, study, finished, table, metrics)
    files += [path for paths in figures.values() for path in paths]

    facts = document.StudyFacts(
        name=study.name,
        tracking_uri=study.tracking_uri,
        factors=study.factors,
        seeds=study.seeds,
        trials=_design_trials(study),
        finished=finished.height,
        failed=study.failed_trials(),
        missing=study.missing_cells(),
        resamples=table["resamples"].max(),
    )
    report_path = folder / "report.md"
    report_path.write_text(document.markdown_report(facts, components, table, shares, figures, folder, TASK_METRICS))
    latex_path = folder / "effects.tex"
    latex_path.write_text(document.latex_table(components, study.name))
    files += [report_path, latex_path]

    failed = study.runs.filter(pl.col("status") != "FINISHED")["trial"].to_list() if study.runs.height else []
    return AnalysisOutput(
        folder, effects, files, study.missing_cells(), failed, table, components, shares, report_path
    )


def _design_trials(study: load.StudyRuns) -> int:
    cells = 1
    for levels in study.factors.values():
        cells *= len(levels)
    return cells * len(study.seeds)


def _write_tables(folder, study, table, effects, shares, components) -> list[pathlib.Path]:
    outputs = {
        "runs.csv": study.runs.select(
            [column for column in study.runs.columns if study.runs[column].dtype != pl.Object]
        ),
        "effects.csv": effects,
        "attribution.csv": table,
        "anova.csv": shares,
        "components.csv": components,
    }
    paths = []
    for name, frame in outputs.items():
        frame.write_csv(folder / name)
        paths.append(folder / name)
    return paths


def _draw_figures(folder, study, finished, table, metrics) -> dict[str, list[pathlib.Path]]:
    """Draw every figure; keys are the captions the report uses."""
    figures_dir = folder / "figures"
    headline = [metric for metric in HEADLINE_METRICS if metric in metrics] or metrics[:3]
    figures = {}
    for metric in headline:
        slug = metric.replace("/", "_")
        baseline = baseline_value(finished, study.factors, metric)
        if baseline is not None:
            figures[f"Waterfall of {metric}"] = plots.waterfall(
                table, metric, baseline, figures_dir / f"waterfall_{slug}"
            )
        figures[f"Interactions on {metric}"] = plots.interaction_heatmap(
            table, metric, figures_dir / f"interactions_{slug}"
        )
    # The forest plot keeps the path of the earlier effects chart, analysis/effects.png.
    figures["Effects with 95% intervals"] = plots.forest(table, headline, folder / "effects")
    figures["Main effects per evaluation task"] = plots.task_bars(
        table, [metric for metric in TASK_METRICS if metric in metrics] or metrics[:3], figures_dir / "task_effects"
    )
    histories = load.load_histories(study)
    figures["Learning curves per cell"] = plots.learning_curves(histories, figures_dir / "learning_curves")
    return {caption: paths for caption, paths in figures.items() if paths}


def baseline_value(finished: pl.DataFrame, factors: dict[str, list[str]], metric: str) -> float | None:
    """Return the metric's mean over seeds in the baseline cell, or None without one."""
    if metric not in finished.columns:
        return None
    condition = pl.lit(True)
    for name, levels in factors.items():
        condition &= pl.col(name) == levels[0]
    values = finished.filter(condition)[metric].drop_nulls().drop_nans()
    return float(values.mean()) if values.len() else None


def format_table(table: pl.DataFrame, metrics: list[str] | None = None) -> str:
    """Return the effects table as aligned text for the terminal.

    A `*` after the Holm p-value marks an effect resolved from seed noise;
    a declined estimate shows its reason instead of numbers.
    """
    if metrics:
        table = table.filter(pl.col("metric").is_in(metrics))
    decimals = document.decimals_for(table) if table.height else 3
    rows = list(table.iter_rows(named=True))
    components = [f"{row['factor']}: {row['level']} vs {row['reference']}" for row in rows]
    metric_width = max([24, *(len(row["metric"]) for row in rows)])
    component_width = max([30, *(len(component) for component in components)])

    def labels(metric: str, component: str) -> str:
        return f"{metric:<{metric_width}} {component:<{component_width}}"

    lines = [f"{labels('metric', 'component')} {'effect':>9} {'95% CI':>20} {'Holm p':>8} {'seeds':>5}"]
    for row, component in zip(rows, components):
        if row["effect"] is None:
            lines.append(f"{labels(row['metric'], component)} declined: {row.get('note') or 'no estimate'}")
            continue
        effect = document.number(row["effect"], decimals)
        interval = (
            f"[{document.number(row['ci_low'], decimals)}, {document.number(row['ci_high'], decimals)}]"
        )
        p_holm = document.p_value(row.get("p_holm")) + ("*" if row.get("resolved") else " ")
        lines.append(f"{labels(row['metric'], component)} {effect:>9} {interval:>20} {p_holm:>8} {row['seeds']:>5}")
    return "\n".join(lines)
