"""Figures of a study's attribution."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402


def effects_bar_chart(effects: pl.DataFrame, metrics: list[str], path: pathlib.Path) -> None:
    """Draw one panel per metric: each component's effect with its 95% interval."""
    metrics = [metric for metric in metrics if metric in set(effects["metric"].to_list())]
    columns = max(1, len(metrics))
    figure, axes = plt.subplots(1, columns, figsize=(4.2 * columns, 3.2), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        rows = effects.filter(pl.col("metric") == metric)
        labels = [f"{factor}\n{level} vs {reference}" for factor, level, reference in rows.select("factor", "level", "reference").iter_rows()]
        effect = rows["effect"].to_numpy()
        lower = effect - rows["ci_low"].to_numpy()
        upper = rows["ci_high"].to_numpy() - effect
        colors = ["tab:blue" if value >= 0 else "tab:red" for value in effect]
        axis.bar(range(len(effect)), effect, yerr=[lower, upper], color=colors, capsize=4)
        axis.axhline(0.0, color="black", linewidth=0.8)
        axis.set_xticks(range(len(effect)), labels, fontsize=8)
        axis.set_title(metric, fontsize=10)
        axis.set_ylabel("effect (95% CI over seeds)")
    figure.tight_layout()
    figure.savefig(path, dpi=150)
    plt.close(figure)
