"""Attribution of each metric to the components of a recipe.

`attribute` takes a frame of trials (one row per trial: factor levels,
seed, metric values) and returns one row per metric and estimand: main
effects, interactions, Shapley and Banzhaf values, leave-one-out and
add-one-in contrasts, and full recipe minus baseline. Each row carries a
95% interval by bootstrap over seeds, a p-value with its Holm adjustment,
the paired standardized effect size d_z and a power calculation.

Cell means come straight from the trials when the design observes every
cell. When cells have no finished trial (a fractional design, or a cell
whose every seed failed), an estimand is:
- `direct` if it only needs observed cells;
- `model` if it needs unobserved cells but its value involves only terms
  the observed cells can estimate. The unobserved cells are then
  predicted by the hierarchical model of `design.alias_structure`, and
  the `aliases` column names the excluded terms that would bias it;
- `declined` otherwise, with the reason in `note`.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import polars as pl

from analysis import bootstrap, power
from analysis.design import TOLERANCE, AliasStructure, Design, alias_structure
from analysis.estimands import FAMILIES, Estimands, build_estimands

log = logging.getLogger(__name__)

ALPHA = power.ALPHA

# The first eight columns are the main-effects table that `ablate analyze`
# prints; keep their names and order.
SCHEMA = {
    "metric": pl.String,
    "factor": pl.String,
    "level": pl.String,
    "reference": pl.String,
    "effect": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "seeds": pl.Int64,
    "kind": pl.String,
    "family": pl.String,
    "standard_error": pl.Float64,
    "p_value": pl.Float64,
    "p_holm": pl.Float64,
    "resolved": pl.Boolean,
    "d_z": pl.Float64,
    "power": pl.Float64,
    "seeds_needed": pl.Int64,
    "interval": pl.String,
    "resamples": pl.Int64,
    "basis": pl.String,
    "aliases": pl.String,
    "note": pl.String,
}


@dataclasses.dataclass
class CellValues:
    """One metric's finished trials arranged by cell and seed."""

    values: np.ndarray  # [cells, seeds]; NaN where the trial is missing or failed
    seeds: list[int]


def cell_values(runs: pl.DataFrame, design: Design, metric: str) -> CellValues:
    """Arrange a metric by cell and seed; seeds with no value at all are left out.

    A trial recorded twice (same cell and seed) counts once, at its mean.
    """
    if metric not in runs.columns:
        raise ValueError(
            f"metric {metric!r} is not a column of the runs; columns: {', '.join(runs.columns)}."
        )
    missing_factors = [name for name in design.names if name not in runs.columns]
    if missing_factors:
        raise ValueError(
            f"runs have no column for factors {missing_factors}; pass the frame from load_study."
        )
    scored = runs.filter(pl.col(metric).is_not_null() & pl.col(metric).is_finite())
    seeds = sorted(set(scored["seed"].to_list()))
    position = {seed: index for index, seed in enumerate(seeds)}
    totals = np.zeros((design.cell_count, len(seeds)))
    counts = np.zeros_like(totals)
    for row in scored.select([*design.names, "seed", metric]).iter_rows(named=True):
        cell, column = _cell_of(design, row), position[row["seed"]]
        totals[cell, column] += row[metric]
        counts[cell, column] += 1
    if (counts > 1).any():
        log.warning(
            "%s: %d trials appear more than once; using the mean of their values.",
            metric,
            int((counts > 1).sum()),
        )
    with np.errstate(invalid="ignore"):
        values = np.where(counts > 0, totals / counts, np.nan)
    return CellValues(values, seeds)


def _cell_of(design: Design, row: dict) -> int:
    try:
        return design.cell_index(row)
    except ValueError as error:
        levels = {name: row[name] for name in design.names}
        raise ValueError(
            f"trial with levels {levels} has a level outside the study's factors {design.factors}."
        ) from error


@dataclasses.dataclass
class Plan:
    """The route from the observed cells to each estimand."""

    structure: AliasStructure
    mapping: np.ndarray  # [cells, observed cells]: all cell means from the observed ones
    basis: list[str]  # "direct", "model" or "declined", per estimand
    aliases: list[str]
    notes: list[str]


def plan_estimation(design: Design, estimands: Estimands, observed: np.ndarray) -> Plan:
    """Decide, per estimand, whether the observed cells support it and under what assumption."""
    structure = alias_structure(design, observed)
    matrix = design.model_matrix
    included = structure.columns
    excluded = np.setdiff1d(np.arange(matrix.shape[1]), included)
    observed_rows, unobserved_rows = matrix[observed][:, included], matrix[~observed][:, included]
    projection = np.linalg.pinv(observed_rows)  # [included columns, observed cells]
    mapping = np.zeros((design.cell_count, int(observed.sum())))
    mapping[observed] = np.eye(int(observed.sum()))
    mapping[~observed] = unobserved_rows @ projection
    # Bias of each unobserved cell's prediction per unit of each excluded column.
    prediction_bias = (
        unobserved_rows @ projection @ matrix[observed][:, excluded] - matrix[~observed][:, excluded]
    )

    basis, aliases, notes = [], [], []
    for row, weights in enumerate(estimands.weights):
        if row in estimands.declined:
            outcome = ("declined", "", estimands.declined[row])
        else:
            outcome = _classify(design, structure, weights, observed, excluded, prediction_bias)
        basis.append(outcome[0])
        aliases.append(outcome[1])
        notes.append(outcome[2])
    return Plan(structure, mapping, basis, aliases, notes)


def _classify(
    design: Design,
    structure: AliasStructure,
    weights: np.ndarray,
    observed: np.ndarray,
    excluded: np.ndarray,
    prediction_bias: np.ndarray,
) -> tuple[str, str, str]:
    """Return (basis, aliases, note) for the estimand with these cell weights."""
    needed = np.abs(weights) > TOLERANCE
    if not (needed & ~observed).any():
        return "direct", "", ""
    involved = _terms_with_weight(design, weights @ design.model_matrix, excluded)
    if involved:
        return "declined", "", _declined_reason(design, structure, involved, needed & ~observed)
    bias = weights[~observed] @ prediction_bias  # [excluded columns]
    full_bias = np.zeros(design.model_matrix.shape[1])
    full_bias[excluded] = bias
    return "model", ", ".join(_terms_with_weight(design, full_bias, excluded)), ""


def _terms_with_weight(design: Design, coefficients: np.ndarray, columns: np.ndarray) -> list[str]:
    """Return the terms among `columns` on which `coefficients` is not zero."""
    scale = max(1.0, float(np.abs(coefficients).max(initial=0.0)))
    return [
        name
        for name, term_columns in design.term_columns.items()
        if np.isin(term_columns, columns).all()
        and np.abs(coefficients[term_columns]).max() > TOLERANCE * scale
    ]


def _declined_reason(
    design: Design, structure: AliasStructure, involved: list[str], cells: np.ndarray
) -> str:
    missing = [design.cell_label(cell) for cell in np.flatnonzero(cells)]
    confounded = []
    for name in involved:
        aliases = ", ".join(_term_label(alias) for alias in structure.aliases.get(name, []))
        confounded.append(f"{name} with {aliases or 'nothing estimable'}")
    return (
        f"depends on terms that the observed cells confound with others ({'; '.join(confounded)}); "
        f"it needs {len(missing)} cells with no finished trial, such as {missing[0]}. "
        "Run those cells to estimate it."
    )


def _term_label(term: str) -> str:
    return "the grand mean" if term == "(Intercept)" else term


def attribute_metric(
    runs: pl.DataFrame,
    design: Design,
    estimands: Estimands,
    metric: str,
    resamples: int = bootstrap.DEFAULT_RESAMPLES,
    rng: np.random.Generator | None = None,
    confidence: float = 0.95,
    min_bootstrap_seeds: int = bootstrap.MIN_BOOTSTRAP_SEEDS,
) -> pl.DataFrame:
    """Estimate every estimand of one metric, before Holm adjustment and power."""
    rng = rng if rng is not None else np.random.default_rng(0)
    cells = cell_values(runs, design, metric)
    observed = np.isfinite(cells.values).any(axis=1)
    if not observed.any():
        return _declined_table(metric, estimands, f"no finished trial has a value of {metric}")
    plan = plan_estimation(design, estimands, observed)
    estimable = np.array([basis != "declined" for basis in plan.basis])
    if not estimable.any():
        return _table(metric, estimands, plan, estimable, None)
    weights = estimands.weights[estimable] @ plan.mapping  # [estimable, observed cells]

    observed_values = cells.values[observed]  # [observed cells, seeds]
    if np.isfinite(observed_values).all():
        per_seed = weights @ observed_values  # [estimable, seeds]
        intervals = bootstrap.paired_intervals(per_seed, resamples, rng, confidence, min_bootstrap_seeds)
    else:
        intervals = bootstrap.blocked_intervals(
            observed_values, weights, resamples, rng, confidence, min_bootstrap_seeds
        )
    return _table(metric, estimands, plan, estimable, intervals)


def resamples_for_holm(estimands: Estimands, alpha: float = ALPHA) -> int:
    """Return the resamples at which the bootstrap's smallest p-value survives Holm in the largest family.

    A bootstrap p-value is at least 2 / (resamples + 1), and Holm multiplies
    the smallest p-value of a family of m by m. With 4 m / alpha resamples,
    an effect beyond every replicate gets an adjusted p of about alpha / 2.
    """
    families = [item.family for item in estimands.items]
    largest = max((families.count(family) for family in set(families)), default=1)
    return math.ceil(4 * largest / alpha)


def _table(
    metric: str,
    estimands: Estimands,
    plan: Plan,
    estimable: np.ndarray,
    intervals: bootstrap.Intervals | None,
) -> pl.DataFrame:
    """Return one row per estimand; `intervals` contains the estimable rows, in order."""
    rows = []
    position = np.cumsum(estimable) - 1
    for row, item in enumerate(estimands.items):
        record = _empty_row(metric, item)
        record.update(basis=plan.basis[row], aliases=plan.aliases[row], note=plan.notes[row])
        if estimable[row]:
            record.update(_interval_fields(intervals, position[row]))
        rows.append(record)
    # Missing numbers are null, never NaN, so that filters and CSVs treat them alike.
    return pl.DataFrame(rows, schema=SCHEMA).with_columns(pl.col(pl.Float64).fill_nan(None))


def _interval_fields(intervals: bootstrap.Intervals, index: int) -> dict:
    effect = float(intervals.estimate[index])
    error = float(intervals.standard_error[index])
    fields = {
        "effect": effect,
        "ci_low": float(intervals.low[index]),
        "ci_high": float(intervals.high[index]),
        "seeds": intervals.seeds,
        "standard_error": error,
        "p_value": float(intervals.p_value[index]),
        "interval": intervals.method,
        "resamples": intervals.valid_resamples if intervals.method == bootstrap.BOOTSTRAP_T else None,
    }
    if intervals.seeds < 2:
        fields["note"] = "one seed: no interval; run more seeds"
    elif error == 0.0:
        fields.update(ci_low=effect, ci_high=effect, p_value=math.nan, note="every seed gave the same value")
    elif math.isfinite(error):
        fields["d_z"] = effect / (error * math.sqrt(intervals.seeds))
    return fields


def _empty_row(metric: str, item) -> dict:
    row = {name: None for name in SCHEMA}
    row.update(
        metric=metric,
        kind=item.kind,
        family=item.family,
        factor=item.factor,
        level=item.level,
        reference=item.reference,
    )
    return row


def _declined_table(metric: str, estimands: Estimands, reason: str) -> pl.DataFrame:
    rows = []
    for item in estimands.items:
        row = _empty_row(metric, item)
        row.update(basis="declined", aliases="", note=reason)
        rows.append(row)
    return pl.DataFrame(rows, schema=SCHEMA)


def attribute(
    runs: pl.DataFrame,
    factors: dict[str, list[str]],
    metrics: list[str],
    *,
    kinds: tuple[str, ...] = tuple(FAMILIES),
    resamples: int = bootstrap.DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
    power_analysis: bool = True,
    min_bootstrap_seeds: int = bootstrap.MIN_BOOTSTRAP_SEEDS,
) -> pl.DataFrame:
    """Attribute each metric to the study's components; one row per metric and estimand.

    `runs` has one row per trial with a column per factor, `seed` and a
    column per metric; rows whose `status` is not FINISHED are ignored.
    The bootstrap draws from a generator seeded with `seed`, so the table
    is reproducible. `resamples` is raised where the largest Holm family
    needs more; with fewer than `min_bootstrap_seeds` seeds the intervals
    are t intervals.
    """
    if "status" in runs.columns:
        runs = runs.filter(pl.col("status") == "FINISHED")
    design = Design(factors)
    estimands = build_estimands(design, kinds)
    resamples = max(resamples, resamples_for_holm(estimands))
    rng = np.random.default_rng(seed)
    tables = [
        attribute_metric(runs, design, estimands, metric, resamples, rng, confidence, min_bootstrap_seeds)
        for metric in metrics
        if metric in runs.columns
    ]
    table = pl.concat(tables) if tables else pl.DataFrame(schema=SCHEMA)
    table = holm_adjust(table)
    return add_power(table) if power_analysis else table


def holm_adjust(table: pl.DataFrame, alpha: float = ALPHA) -> pl.DataFrame:
    """Add Holm-adjusted p-values within each metric and family, and `resolved`."""
    adjusted = np.full(table.height, np.nan)
    p_values = table["p_value"].fill_null(np.nan).to_numpy()
    keys = table.select("metric", "family").rows()
    for key in dict.fromkeys(keys):
        rows = np.array(
            [index for index, other in enumerate(keys) if other == key and np.isfinite(p_values[index])]
        )
        if len(rows):
            adjusted[rows] = holm(p_values[rows])
    resolved = [bool(value < alpha) if np.isfinite(value) else None for value in adjusted]
    return table.with_columns(
        pl.Series("p_holm", adjusted).fill_nan(None), pl.Series("resolved", resolved, dtype=pl.Boolean)
    )


def holm(p_values: np.ndarray) -> np.ndarray:
    """Return Holm step-down adjusted p-values, in the input order.

    Written here because statsmodels 0.15's multipletests(method="holm")
    calls gc.collect() on every call, which took 0.7 s per family in a
    process with MLflow and shapiq loaded (shared 2-core machine). Tests
    check that the two agree.
    """
    order = np.argsort(p_values)
    scaled = p_values[order] * (len(p_values) - np.arange(len(p_values)))
    adjusted = np.empty_like(p_values)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return adjusted


def add_power(
    table: pl.DataFrame, alpha: float = power.ALPHA, target: float = power.TARGET_POWER
) -> pl.DataFrame:
    """Add the power of the study's seeds and the seeds a paired t-test would need.

    Both treat the observed d_z as the true standardized effect, so they
    are estimates: with few seeds d_z itself is uncertain. The test is
    two-sided at `alpha`, without the Holm adjustment.
    """
    d_z = table["d_z"].fill_null(np.nan).to_numpy()
    seeds = table["seeds"].fill_null(0).to_numpy()
    needed = power.seeds_needed(d_z, alpha, target)
    return table.with_columns(
        pl.Series("power", power.paired_power(d_z, seeds, alpha)).fill_nan(None),
        pl.Series(
            "seeds_needed", [int(value) if np.isfinite(value) else None for value in needed], dtype=pl.Int64
        ),
    )
