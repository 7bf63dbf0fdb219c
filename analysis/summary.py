"""One row per component and metric: what a reviewer asks about each component.

`component_summary` joins, for every non-reference level of every factor,
its main effect, Shapley value, leave-one-out and add-one-in contrasts,
its strongest interaction and the seeds an effect of its size would need.
The report, the LaTeX table and the notebooks all print from it.
"""

from __future__ import annotations

import polars as pl

SCHEMA = {
    "metric": pl.String,
    "factor": pl.String,
    "level": pl.String,
    "reference": pl.String,
    "effect": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "p_holm": pl.Float64,
    "resolved": pl.Boolean,
    "d_z": pl.Float64,
    "seeds": pl.Int64,
    "seeds_needed": pl.Int64,
    "aliases": pl.String,
    "shapley": pl.Float64,
    "shapley_low": pl.Float64,
    "shapley_high": pl.Float64,
    "leave_one_out": pl.Float64,
    "leave_one_out_low": pl.Float64,
    "leave_one_out_high": pl.Float64,
    "add_one_in": pl.Float64,
    "add_one_in_low": pl.Float64,
    "add_one_in_high": pl.Float64,
    "interaction": pl.String,
    "interaction_levels": pl.String,
    "interaction_effect": pl.Float64,
    "interaction_low": pl.Float64,
    "interaction_high": pl.Float64,
    "interaction_resolved": pl.Boolean,
}


def component_summary(attribution: pl.DataFrame) -> pl.DataFrame:
    """Summarize each (metric, factor, level) of the main effects; see the module docstring.

    The Shapley, leave-one-out and add-one-in columns are filled on the
    row of a factor's last level, the level those contrasts switch on.
    """
    rows = []
    main = attribution.filter(pl.col("kind") == "main")
    for row in main.iter_rows(named=True):
        record = {name: row.get(name) for name in SCHEMA}
        for kind in ("shapley", "leave_one_out", "add_one_in"):
            match = attribution.filter(
                (pl.col("metric") == row["metric"])
                & (pl.col("kind") == kind)
                & (pl.col("factor") == row["factor"])
                & (pl.col("level") == row["level"])
            )
            if match.height:
                found = match.row(0, named=True)
                record[kind] = found["effect"]
                record[f"{kind}_low"] = found["ci_low"]
                record[f"{kind}_high"] = found["ci_high"]
        record.update(_strongest_interaction(attribution, row["metric"], row["factor"], row["level"]))
        rows.append(record)
    return pl.DataFrame(rows, schema=SCHEMA)


def _strongest_interaction(attribution: pl.DataFrame, metric: str, factor: str, level: str) -> dict:
    """Return the two-way interaction of `factor` at `level` with the largest absolute effect.

    Two-way only: a difference of differences of differences adds and
    subtracts twice as many cells, so higher orders are not on the same scale.
    """
    candidates = attribution.filter(
        (pl.col("metric") == metric) & (pl.col("kind") == "interaction") & pl.col("effect").is_not_null()
    )
    best = None
    for row in candidates.iter_rows(named=True):
        names, levels = row["factor"].split(":"), row["level"].split(":")
        if len(names) != 2 or factor not in names or levels[names.index(factor)] != level:
            continue
        if best is None or abs(row["effect"]) > abs(best["effect"]):
            best = row
    if best is None:
        return {}
    return {
        "interaction": best["factor"],
        "interaction_levels": best["level"],
        "interaction_effect": best["effect"],
        "interaction_low": best["ci_low"],
        "interaction_high": best["ci_high"],
        "interaction_resolved": best["resolved"],
    }
