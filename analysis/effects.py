"""Main effects of each component with confidence intervals over seeds."""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy import stats


def paired_main_effects(runs: pl.DataFrame, factors: dict[str, list[str]], metrics: list[str]) -> pl.DataFrame:
    """Return each factor level's main effect against the reference level.

    For every seed, the effect is the mean of the metric over the cells at
    the level minus the mean over the cells at the reference level, each
    averaged over the other factors. Seeds are shared across cells, so the
    contrast is paired; its 95% interval is a t interval over the per-seed
    effects.
    """
    rows = []
    for metric in metrics:
        if metric not in runs.columns:
            continue
        scored = runs.filter(pl.col(metric).is_not_null() & pl.col(metric).is_not_nan())
        for factor, levels in factors.items():
            reference = levels[0]
            by_seed = scored.group_by(["seed", factor]).agg(pl.col(metric).mean().alias("mean"))
            wide = by_seed.pivot(on=factor, index="seed", values="mean")
            for level in levels[1:]:
                if reference not in wide.columns or level not in wide.columns:
                    continue
                paired = wide.select(pl.col(level) - pl.col(reference)).drop_nulls().to_series().to_numpy()
                rows.append(_effect_row(metric, factor, level, reference, paired))
    return pl.DataFrame(rows, schema=_SCHEMA)


_SCHEMA = {
    "metric": pl.String,
    "factor": pl.String,
    "level": pl.String,
    "reference": pl.String,
    "effect": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "seeds": pl.Int64,
}


def _effect_row(metric: str, factor: str, level: str, reference: str, paired: np.ndarray) -> dict:
    count = len(paired)
    effect = float(paired.mean()) if count else float("nan")
    if count >= 2:
        half_width = stats.t.ppf(0.975, count - 1) * paired.std(ddof=1) / np.sqrt(count)
    else:
        half_width = float("nan")
    return {
        "metric": metric,
        "factor": factor,
        "level": level,
        "reference": reference,
        "effect": effect,
        "ci_low": effect - half_width,
        "ci_high": effect + half_width,
        "seeds": count,
    }
