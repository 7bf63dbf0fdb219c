"""Analysis of variance: each factorial term's share of a metric's variation.

The model is the factorial OLS with sum-to-zero contrasts and seeds as
blocks, fitted by statsmodels. Fractional or incomplete designs keep only
the terms that `design.alias_structure` finds estimable.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import polars as pl
import statsmodels.formula.api as smf
from statsmodels.stats.anova import anova_lm
from statsmodels.tools.sm_exceptions import ValueWarning

from analysis.design import Design, alias_structure

SEED_TERM = "seed"
RESIDUAL_TERM = "residual"
SCHEMA = {
    "metric": pl.String,
    "term": pl.String,
    "df": pl.Float64,
    "sum_sq": pl.Float64,
    "share": pl.Float64,
    "f_value": pl.Float64,
    "p_value": pl.Float64,
}


def anova_shares(runs: pl.DataFrame, factors: dict[str, list[str]], metrics: list[str]) -> pl.DataFrame:
    """Return, per metric, each term's sum of squares and share of the total.

    Sums of squares are type II. In a complete design with every seed
    they partition the total, so the shares add to 1; with missing trials
    they need not.
    """
    if "status" in runs.columns:
        runs = runs.filter(pl.col("status") == "FINISHED")
    design = Design(factors)
    tables = [_metric_anova(runs, design, metric) for metric in metrics if metric in runs.columns]
    return pl.concat(tables) if tables else pl.DataFrame(schema=SCHEMA)


def _metric_anova(runs: pl.DataFrame, design: Design, metric: str) -> pl.DataFrame:
    scored = runs.filter(pl.col(metric).is_not_null() & pl.col(metric).is_finite())
    if scored.height < 2:
        return pl.DataFrame(schema=SCHEMA)
    # Formula-safe column names: factors may be dotted config paths.
    columns = {name: f"factor_{index}" for index, name in enumerate(design.names)}
    frame = pd.DataFrame({columns[name]: scored[name].to_list() for name in design.names})
    frame["seed_block"] = scored["seed"].cast(pl.String).to_list()
    frame["value"] = scored[metric].to_numpy()

    observed = np.zeros(design.cell_count, dtype=bool)
    observed[[design.cell_index(row) for row in scored.select(design.names).iter_rows(named=True)]] = True
    structure = alias_structure(design, observed)
    terms = {
        ":".join(f"C({columns[name]}, Sum)" for name in term.split(":")): term
        for term in structure.included
        if term != "(Intercept)"
    }
    right_side = list(terms)
    if frame["seed_block"].nunique() > 1:
        right_side.insert(0, "C(seed_block, Sum)")
        terms["C(seed_block, Sum)"] = SEED_TERM
    formula = "value ~ " + (" + ".join(right_side) if right_side else "1")

    if frame["value"].nunique() <= 1:
        # A constant metric, such as a count of classes, has no variance to split.
        return pl.DataFrame(schema=SCHEMA)
    total = float(((frame["value"] - frame["value"].mean()) ** 2).sum())
    with warnings.catch_warnings():
        # Wald tests of rank 0 add a ValueWarning per term.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", ValueWarning)
        fit = smf.ols(formula, data=frame).fit()
        if fit.df_resid < 1:
            # One seed per cell leaves no residual to test against, so no
            # term has an F-test and the split is left out.
            return pl.DataFrame(schema=SCHEMA)
        table = anova_lm(fit, typ=2)
    rows = []
    for label, record in table.iterrows():
        rows.append(
            {
                "metric": metric,
                "term": terms.get(label, RESIDUAL_TERM if label == "Residual" else label),
                "df": float(record["df"]),
                "sum_sq": float(record["sum_sq"]),
                "share": float(record["sum_sq"]) / total if total > 0 else np.nan,
                "f_value": float(record.get("F", np.nan)),
                "p_value": float(record.get("PR(>F)", np.nan)),
            }
        )
    return pl.DataFrame(rows, schema=SCHEMA)
