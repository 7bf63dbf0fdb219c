"""Figures of a study's attribution, each saved as PNG and SVG for a paper.

Every function takes tables from `analysis.attribution` (or histories from
`analysis.load`), draws one figure and returns the files it wrote. Text
stays text in the SVG (`svg.fonttype = none`) so a journal's fonts apply.
"""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

# Okabe and Ito's palette, distinguishable with the common color-vision deficiencies.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
PAPER_STYLE = {
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "svg.fonttype": "none",
    "savefig.bbox": "tight",
}
KIND_LABELS = {
    "main": "main effect",
    "shapley": "Shapley value",
    "leave_one_out": "leave one out",
    "add_one_in": "add one in",
}
COLUMN_WIDTH_INCHES = 3.4  # one column of a two-column paper


def save(figure: matplotlib.figure.Figure, stem: pathlib.Path) -> list[pathlib.Path]:
    """Write `figure` to `stem`.svg for the paper and `stem`.png (200 dpi) for previews, then close it."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    figure.savefig(paths[0], dpi=200)
    figure.savefig(paths[1])
    plt.close(figure)
    return paths


def _rows(table: pl.DataFrame, metric: str, kind: str) -> pl.DataFrame:
    return table.filter(
        (pl.col("metric") == metric) & (pl.col("kind") == kind) & pl.col("effect").is_not_null()
    )


def waterfall(
    attribution: pl.DataFrame, metric: str, baseline_value: float, stem: pathlib.Path
) -> list[pathlib.Path]:
    """Draw the path from the baseline to the full recipe, one step per Shapley value.

    Steps are sorted from the largest gain to the largest loss; whiskers are
    the steps' 95% intervals. Returns [] when the Shapley values were
    declined for this metric.
    """
    steps = _rows(attribution, metric, "shapley").sort("effect", descending=True)
    if steps.is_empty():
        return []
    values = steps["effect"].to_numpy()
    starts = baseline_value + np.concatenate([[0.0], np.cumsum(values)[:-1]])
    full_value = baseline_value + values.sum()
    step_labels = [f"{factor}: {level}" for factor, level in steps.select("factor", "level").rows()]
    labels = ["baseline", *step_labels, "full recipe"]

    with plt.rc_context(PAPER_STYLE):
        figure, axis = plt.subplots(figsize=(max(COLUMN_WIDTH_INCHES, 0.55 * len(labels)), 2.6))
        positions = np.arange(len(labels))
        axis.bar(positions[0], baseline_value, color="0.6", width=0.6)
        colors = [PALETTE[0] if value >= 0 else PALETTE[3] for value in values]
        # A bootstrap-t interval need not contain its estimate; whiskers then stop at the bar.
        errors = np.clip(
            [values - steps["ci_low"].to_numpy(), steps["ci_high"].to_numpy() - values], 0.0, None
        )
        axis.bar(positions[1:-1], values, bottom=starts, color=colors, width=0.6)
        axis.errorbar(
            positions[1:-1],
            starts + values,
            yerr=errors,
            fmt="none",
            ecolor="black",
            capsize=2,
            linewidth=0.8,
        )
        axis.bar(positions[-1], full_value, color="0.3", width=0.6)
        # Connectors from each bar's top to the next bar's base.
        for position, level in zip(positions[1:], [*starts, full_value]):
            axis.plot([position - 0.7, position - 0.3], [level, level], color="0.5", linewidth=0.6)
        levels = np.concatenate([[baseline_value, full_value], starts, starts + values])
        margin = 0.15 * (levels.max() - levels.min() or abs(baseline_value) or 1.0)
        axis.set_ylim(levels.min() - margin, levels.max() + margin)
        axis.set_xticks(positions, labels, rotation=30, ha="right")
        axis.set_ylabel(metric)
        axis.set_title(f"{metric}: baseline to full recipe (Shapley values)")
        return save(figure, stem)


def forest(attribution: pl.DataFrame, metrics: list[str], stem: pathlib.Path) -> list[pathlib.Path]:
    """Draw each component's main effect, Shapley value, leave-one-out and add-one-in with 95% intervals.

    One panel per metric. Filled markers are resolved after the Holm
    adjustment; open markers are not distinguishable from seed noise.
    """
    metrics = [metric for metric in metrics if not _rows(attribution, metric, "main").is_empty()]
    if not metrics:
        return []
    components = _components(attribution.filter(pl.col("metric").is_in(metrics)))
    with plt.rc_context(PAPER_STYLE):
        figure, axes = plt.subplots(
            1,
            len(metrics),
            figsize=(2.6 * len(metrics) + 1.2, 0.5 + 0.42 * len(components)),
            squeeze=False,
            sharey=True,
        )
        for axis, metric in zip(axes[0], metrics):
            _forest_panel(axis, attribution, metric, components)
        axes[0][0].set_yticks(
            np.arange(len(components)), [f"{factor}: {level}" for factor, level in components]
        )
        axes[0][0].invert_yaxis()
        handles, labels = axes[0][0].get_legend_handles_labels()
        figure.legend(
            handles,
            labels,
            loc="lower center",
            ncol=len(KIND_LABELS),
            frameon=False,
            bbox_to_anchor=(0.5, -0.02),
        )
        figure.tight_layout(rect=(0, 0.06, 1, 1))
        return save(figure, stem)


def _components(table: pl.DataFrame) -> list[tuple[str, str]]:
    """Return (factor, level) of every main effect, in table order."""
    return list(dict.fromkeys(table.filter(pl.col("kind") == "main").select("factor", "level").rows()))


def _forest_panel(axis, attribution: pl.DataFrame, metric: str, components: list[tuple[str, str]]) -> None:
    offsets = np.linspace(-0.27, 0.27, len(KIND_LABELS))
    markers = ["o", "s", "v", "^"]
    for (kind, label), offset, marker, color in zip(KIND_LABELS.items(), offsets, markers, PALETTE):
        rows = _rows(attribution, metric, kind)
        lookup = {(row["factor"], row["level"]): row for row in rows.iter_rows(named=True)}
        for position, component in enumerate(components):
            row = lookup.get(component)
            if row is None:
                continue
            y = position + offset
            if row["ci_low"] is not None and row["ci_high"] is not None:
                axis.plot([row["ci_low"], row["ci_high"]], [y, y], color=color, linewidth=1.0)
            fill = color if row["resolved"] else "white"
            axis.plot(row["effect"], y, marker=marker, color=color, markersize=4, markerfacecolor=fill)
        # An empty line carries the legend entry of this kind.
        axis.plot([], [], marker=marker, color=color, linestyle="-", markersize=4, label=label)
    axis.axvline(0.0, color="0.4", linewidth=0.6)
    axis.set_title(metric)
    axis.set_xlabel("effect (95% CI)")


def interaction_heatmap(attribution: pl.DataFrame, metric: str, stem: pathlib.Path) -> list[pathlib.Path]:
    """Draw the two-way interactions of the full-recipe levels, with main effects on the diagonal.

    A cell marked * is resolved after the Holm adjustment; n/a marks an
    effect that the design could not estimate.
    """
    if _rows(attribution, metric, "main").is_empty():
        return []
    factors, values, marks = _interaction_matrix(attribution, metric)
    limit = np.nanmax(np.abs(values)) if np.isfinite(values).any() else 1.0
    with plt.rc_context(PAPER_STYLE):
        size = max(COLUMN_WIDTH_INCHES, 0.7 * len(factors) + 1.5)
        figure, axis = plt.subplots(figsize=(size, size * 0.85))
        image = axis.imshow(np.ma.masked_invalid(values), cmap="RdBu", vmin=-limit, vmax=limit)
        for row in range(len(factors)):
            for column in range(len(factors)):
                value = values[row, column]
                text = f"{value:+.3f}{marks[row, column]}" if np.isfinite(value) else "n/a"
                axis.text(column, row, text, ha="center", va="center", fontsize=6)
        axis.set_xticks(range(len(factors)), factors, rotation=30, ha="right")
        axis.set_yticks(range(len(factors)), factors)
        figure.colorbar(image, ax=axis, label="interaction (diagonal: main effect)")
        axis.set_title(f"{metric}: two-way interactions")
        return save(figure, stem)


def _interaction_matrix(attribution: pl.DataFrame, metric: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Return the factors, the [factors, factors] effects at the last levels, and '*' marks where resolved."""
    factors = list(dict.fromkeys(attribution.filter(pl.col("kind") == "main")["factor"].to_list()))
    levels = {
        factor: attribution.filter((pl.col("kind") == "main") & (pl.col("factor") == factor))["level"][-1]
        for factor in factors
    }
    values = np.full((len(factors), len(factors)), np.nan)
    marks = np.full(values.shape, "", dtype=object)
    for row in _rows(attribution, metric, "main").iter_rows(named=True):
        if row["level"] == levels[row["factor"]]:
            index = factors.index(row["factor"])
            values[index, index] = row["effect"]
            marks[index, index] = "*" if row["resolved"] else ""
    for row in _rows(attribution, metric, "interaction").iter_rows(named=True):
        names, term_levels = row["factor"].split(":"), row["level"].split(":")
        if len(names) != 2 or any(levels[name] != level for name, level in zip(names, term_levels)):
            continue
        first, second = factors.index(names[0]), factors.index(names[1])
        for cell in ((first, second), (second, first)):
            values[cell] = row["effect"]
            marks[cell] = "*" if row["resolved"] else ""
    return factors, values, marks


def learning_curves(
    histories: pl.DataFrame, stem: pathlib.Path, metrics: list[str] | None = None
) -> list[pathlib.Path]:
    """Draw each cell's mean curve over seeds, with the seeds' range as a band; one panel per metric."""
    if histories.is_empty():
        return []
    metrics = metrics or sorted(set(histories["metric"].to_list()))
    cells = sorted(set(histories["cell"].to_list()))
    colors = plt.get_cmap("tab20" if len(cells) > len(PALETTE) else "tab10")
    with plt.rc_context(PAPER_STYLE):
        figure, axes = plt.subplots(1, len(metrics), figsize=(3.0 * len(metrics) + 1.5, 2.6), squeeze=False)
        for axis, metric in zip(axes[0], metrics):
            summary = (
                histories.filter(pl.col("metric") == metric)
                .group_by("cell", "step")
                .agg(
                    pl.col("value").mean().alias("mean"),
                    pl.col("value").min().alias("low"),
                    pl.col("value").max().alias("high"),
                )
                .sort("cell", "step")
            )
            for index, cell in enumerate(cells):
                curve = summary.filter(pl.col("cell") == cell)
                color = colors(index % colors.N)
                axis.plot(curve["step"], curve["mean"], color=color, linewidth=1.0, label=cell)
                axis.fill_between(
                    curve["step"], curve["low"], curve["high"], color=color, alpha=0.15, linewidth=0
                )
            axis.set_title(metric)
            axis.set_xlabel("step")
        axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
        figure.tight_layout()
        return save(figure, stem)


def task_bars(attribution: pl.DataFrame, metrics: list[str], stem: pathlib.Path) -> list[pathlib.Path]:
    """Draw, per evaluation task, grouped bars of each component's main effect on each metric.

    Metrics are grouped by task (`eval/<task>/<name>`); each bar is a
    factor's last level against its reference, with its 95% interval.
    """
    tasks: dict[str, list[str]] = {}
    for metric in metrics:
        if not _rows(attribution, metric, "main").is_empty():
            tasks.setdefault(metric.split("/")[1] if metric.count("/") >= 2 else metric, []).append(metric)
    if not tasks:
        return []
    with plt.rc_context(PAPER_STYLE):
        figure, axes = plt.subplots(
            1, len(tasks), figsize=(3.2 * len(tasks) + 0.5, 2.8), squeeze=False, layout="constrained"
        )
        for axis, (task, task_metrics) in zip(axes[0], tasks.items()):
            _task_panel(axis, attribution, task, task_metrics)
        return save(figure, stem)


def _task_panel(axis, attribution: pl.DataFrame, task: str, metrics: list[str]) -> None:
    main = attribution.filter((pl.col("kind") == "main") & pl.col("metric").is_in(metrics))
    factors = list(dict.fromkeys(main["factor"].to_list()))
    last_levels = {
        factor: main.filter(pl.col("factor") == factor)["level"].to_list()[-1] for factor in factors
    }
    width = 0.8 / len(metrics)
    for index, metric in enumerate(metrics):
        rows = {
            (row["factor"], row["level"]): row
            for row in _rows(attribution, metric, "main").iter_rows(named=True)
        }
        positions, effects, lows, highs = [], [], [], []
        for position, factor in enumerate(factors):
            row = rows.get((factor, last_levels[factor]))
            if row is not None:
                positions.append(position - 0.4 + width * (index + 0.5))
                effects.append(row["effect"])
                # No whisker where the interval is missing (one seed).
                lows.append(row["effect"] - row["ci_low"] if row["ci_low"] is not None else 0.0)
                highs.append(row["ci_high"] - row["effect"] if row["ci_high"] is not None else 0.0)
        axis.bar(
            positions,
            effects,
            width=width,
            yerr=[lows, highs],
            capsize=2,
            label=metric.rsplit("/", 1)[-1],
            color=PALETTE[index % len(PALETTE)],
            error_kw={"linewidth": 0.8},
        )
    axis.axhline(0.0, color="0.4", linewidth=0.6)
    axis.set_xticks(
        range(len(factors)),
        [f"{factor}: {last_levels[factor]}" for factor in factors],
        rotation=30,
        ha="right",
    )
    axis.set_title(f"task: {task}")
    axis.set_ylabel("main effect (95% CI)")
    axis.legend(frameon=False)
