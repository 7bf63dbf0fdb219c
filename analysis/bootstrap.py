"""Confidence intervals and p-values by bootstrap over seeds.

Seeds are the replicates of a study and every cell is trained with the
same seeds, so a seed's trials share its initialization and data order.
Resampling whole seeds keeps that pairing: each bootstrap replicate draws
seeds with replacement and keeps all their cells together.

The interval is the studentized (bootstrap-t) interval: the replicates give
the distribution of (estimate* - estimate) / se*, and its quantiles scale
the observed standard error. p-values come from the same distribution, so
an interval excludes zero when p < 0.05, up to the resolution of the
resamples. scipy.stats.bootstrap
offers percentile, basic and BCa intervals but not bootstrap-t, so the
resampling is written here; with per-seed contrasts it is one matrix
product.

Why bootstrap-t, and why not below MIN_BOOTSTRAP_SEEDS seeds: in a
simulation of normal per-seed contrasts (1000 studies per seed count,
1999 resamples; run once while writing this module, not one of the
tests), percentile intervals covered 0.85 at 5 seeds and 0.88 at
8, against 0.93 to 0.95 for bootstrap-t. With few seeds there are few
distinct resamples (35 with 4 seeds, 126 with 5), and the bootstrap-t
intervals, while covering 0.94, were 77% (4 seeds) and 33% (5 seeds) wider
than t intervals, and erratic. Below MIN_BOOTSTRAP_SEEDS seeds the t
interval (and t-test p-value) is used instead, and the `interval` column
of the table records which one each row has.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from scipy import stats

MIN_BOOTSTRAP_SEEDS = 6
DEFAULT_RESAMPLES = 1999
BOOTSTRAP_T = "bootstrap-t"
T_INTERVAL = "t"


@dataclasses.dataclass
class Intervals:
    """Estimates with their intervals and two-sided p-values; arrays are [estimands]."""

    estimate: np.ndarray
    standard_error: np.ndarray
    low: np.ndarray
    high: np.ndarray
    p_value: np.ndarray
    method: str
    seeds: int
    # Usable bootstrap replicates; 0 for the t interval.
    valid_resamples: int = 0


def seed_draws(seeds: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Return [resamples, seeds] counts: how often each seed is drawn per replicate."""
    return rng.multinomial(seeds, np.full(seeds, 1.0 / seeds), size=resamples)


def paired_intervals(
    per_seed: np.ndarray,
    resamples: int,
    rng: np.random.Generator,
    confidence: float = 0.95,
    min_seeds: int = MIN_BOOTSTRAP_SEEDS,
) -> Intervals:
    """Bootstrap-t intervals for the mean over seeds of each row of `per_seed`.

    `per_seed`: [estimands, seeds], each estimand's contrast computed from one
    seed's cells alone. The estimate is the mean over seeds and the standard
    error the paired one, sd / sqrt(seeds).
    """
    estimands, seeds = per_seed.shape
    estimate = per_seed.mean(axis=1)
    if seeds < 2:
        missing = np.full(estimands, np.nan)
        return Intervals(estimate, missing, missing, missing, missing, T_INTERVAL, seeds)
    standard_error = per_seed.std(axis=1, ddof=1) / np.sqrt(seeds)
    if seeds < max(min_seeds, 2):
        return t_intervals(estimate, standard_error, seeds - 1, seeds, confidence)

    counts = seed_draws(seeds, resamples, rng)  # [resamples, seeds]
    # A replicate that draws a single seed has no spread to studentize by.
    usable = (counts > 0).sum(axis=1) >= 2
    counts = counts[usable]
    means, errors = [], []
    for part in np.array_split(counts, _chunks(len(counts), estimands * seeds)):
        mean = per_seed @ part.T / seeds  # [estimands, chunk]
        centered = per_seed[:, :, None] - mean[:, None, :]  # [estimands, seeds, chunk]
        variance = np.einsum("esr,rs->er", centered**2, part) / (seeds - 1)
        means.append(mean)
        errors.append(np.sqrt(variance / seeds))
    return studentized(estimate, standard_error, np.hstack(means), np.hstack(errors), seeds, confidence)


# Elements per intermediate array of a chunk of replicates (16 MB of float64).
CHUNK_ELEMENTS = 2_000_000


def _chunks(replicates: int, elements_per_replicate: int) -> int:
    """Return how many chunks keep each chunk's arrays under CHUNK_ELEMENTS."""
    per_chunk = max(1, CHUNK_ELEMENTS // max(1, elements_per_replicate))
    return max(1, -(-replicates // per_chunk))


def studentized(
    estimate: np.ndarray,
    standard_error: np.ndarray,
    replicates: np.ndarray,
    replicate_error: np.ndarray,
    seeds: int,
    confidence: float,
) -> Intervals:
    """Turn bootstrap replicates ([estimands, resamples]) into bootstrap-t intervals."""
    scale = np.maximum(np.abs(estimate), standard_error)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        pivots = (replicates - estimate[:, None]) / replicate_error
    # Ties among seeds can leave a replicate with (almost) no spread.
    pivots[~(replicate_error > 1e-12 * scale)] = np.nan

    tail = (1.0 - confidence) / 2.0
    with warnings.catch_warnings():
        # An estimand whose seeds all agree has no usable pivot; its bounds stay NaN.
        warnings.simplefilter("ignore", RuntimeWarning)
        lower_pivot, upper_pivot = np.nanquantile(pivots, [tail, 1.0 - tail], axis=1)
    low = estimate - upper_pivot * standard_error
    high = estimate - lower_pivot * standard_error

    valid = np.isfinite(pivots).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        observed = estimate / standard_error
    above = (pivots >= observed[:, None]).sum(axis=1)
    below = (pivots <= observed[:, None]).sum(axis=1)
    p_value = np.minimum(1.0, 2.0 * (1.0 + np.minimum(above, below)) / (valid + 1.0))
    p_value = np.where(np.isfinite(observed), p_value, np.nan)
    return Intervals(
        estimate,
        standard_error,
        low,
        high,
        p_value,
        BOOTSTRAP_T,
        seeds,
        int(valid.min()) if valid.size else 0,
    )


def t_intervals(
    estimate: np.ndarray, standard_error: np.ndarray, degrees_of_freedom: float, seeds: int, confidence: float
) -> Intervals:
    """Student t intervals and p-values, for designs with too few seeds to bootstrap."""
    if degrees_of_freedom < 1:
        missing = np.full(estimate.shape, np.nan)
        return Intervals(estimate, standard_error, missing, missing, missing, T_INTERVAL, seeds)
    quantile = stats.t.ppf(0.5 + confidence / 2.0, degrees_of_freedom)
    with np.errstate(divide="ignore", invalid="ignore"):
        statistic = estimate / standard_error
    p_value = 2.0 * stats.t.sf(np.abs(statistic), degrees_of_freedom)
    low = estimate - quantile * standard_error
    high = estimate + quantile * standard_error
    return Intervals(estimate, standard_error, low, high, p_value, T_INTERVAL, seeds)


def blocked_intervals(
    values: np.ndarray,
    weights: np.ndarray,
    resamples: int,
    rng: np.random.Generator,
    confidence: float = 0.95,
    min_seeds: int = MIN_BOOTSTRAP_SEEDS,
) -> Intervals:
    """Intervals for `weights @ cell means` when some trials are missing.

    `values`: [cells, seeds] with NaN for missing trials; `weights`:
    [estimands, cells]. Cell means come from the additive model
    value = cell + seed (seeds as blocks), which keeps the pairing when a
    seed lacks some cells. Standard errors are clustered by seed, which for
    a complete table equals the paired standard error of the per-seed
    contrasts. Each bootstrap replicate refits the model on the drawn
    seeds, and a seed drawn twice counts as two blocks. Replicates that
    lose every trial of a cell are skipped.
    """
    cells, seeds = values.shape
    estimate, standard_error = fit_blocked(values, np.arange(seeds)[None], weights)
    if not np.isfinite(estimate).all():
        raise ValueError("the cell-by-seed table is not connected: some cells share no seed with the others.")
    estimate, standard_error = estimate[0], standard_error[0]
    if seeds < max(min_seeds, 2):
        return t_intervals(estimate, standard_error, seeds - 1, seeds, confidence)

    counts = seed_draws(seeds, resamples, rng)  # [resamples, seeds]
    drawn = np.stack([np.repeat(np.arange(seeds), row) for row in counts])  # [resamples, seeds]
    # The batched fit builds [chunk, estimands, cells] arrays.
    size = max(len(weights), seeds) * cells
    chunks = [fit_blocked(values, part, weights) for part in np.array_split(drawn, _chunks(len(drawn), size))]
    replicates = np.concatenate([chunk[0] for chunk in chunks])
    replicate_errors = np.concatenate([chunk[1] for chunk in chunks])
    usable = np.isfinite(replicates).all(axis=1)
    if not usable.any():
        return t_intervals(estimate, standard_error, seeds - 1, seeds, confidence)
    return studentized(
        estimate, standard_error, replicates[usable].T, replicate_errors[usable].T, seeds, confidence
    )


def fit_blocked(values: np.ndarray, drawn: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fit value = cell + block by least squares for a batch of seed draws; estimate `weights @ cell means`.

    `values`: [cells, seeds]; `drawn`: [draws, blocks], the seed that fills
    each block of each draw; `weights`: [estimands, cells]. Returns the
    estimates and their standard errors clustered by block, each [draws,
    estimands]; a draw in which some cell has no trial, or whose cells and
    blocks are not connected, gets NaN. Block effects sum to zero, so a
    cell's mean is its mean over blocks.
    """
    table = values[:, drawn].transpose(1, 0, 2)  # [draws, cells, blocks]
    present = np.isfinite(table).astype(float)
    response = np.where(present > 0, table, 0.0)
    fit = _profiled_fit(present, response)
    estimates = fit.means @ weights.T  # [draws, estimands]
    errors = _clustered_errors(weights, present, response, fit)
    estimates[~fit.estimable] = np.nan
    return estimates, errors


@dataclasses.dataclass
class _BlockedFit:
    """Least-squares fit of value = cell + block for each draw of a batch."""

    means: np.ndarray  # [draws, cells]
    effects: np.ndarray  # [draws, blocks], summing to zero
    inverse_count: np.ndarray  # [draws, cells]: 1 / trials of the cell, 0 for none
    pseudo_inverse: np.ndarray  # [draws, blocks, blocks] of the information matrix
    estimable: np.ndarray  # [draws] bool


def _profiled_fit(present: np.ndarray, response: np.ndarray) -> _BlockedFit:
    """Solve for the block effects with the cell means profiled out.

    That leaves a [blocks, blocks] system per draw, the information matrix
    of an incomplete block design, instead of one over cells + blocks
    parameters. Its null space is the constant vector, and the pseudo-inverse
    picks the solution whose effects sum to zero.
    """
    per_cell = present.sum(axis=2)  # [draws, cells]
    per_block = present.sum(axis=1)  # [draws, blocks]
    inverse_count = np.where(per_cell > 0, 1.0 / np.maximum(per_cell, 1.0), 0.0)
    totals = response.sum(axis=2)  # [draws, cells]

    information = np.einsum("db,be->dbe", per_block, np.eye(per_block.shape[1]))
    information -= np.einsum("dcb,dc,dce->dbe", present, inverse_count, present)  # [draws, blocks, blocks]
    adjusted = response.sum(axis=1) - np.einsum("dcb,dc->db", present, totals * inverse_count)
    pseudo_inverse = np.linalg.pinv(information, hermitian=True)
    effects = np.einsum("dbe,de->db", pseudo_inverse, adjusted)
    means = (totals - np.einsum("dcb,db->dc", present, effects)) * inverse_count

    # Connected: every eigenvalue but the zero one is clearly positive.
    estimable = (per_cell > 0).all(axis=1)
    eigenvalues = np.linalg.eigvalsh(information)  # ascending
    if eigenvalues.shape[1] > 1:
        estimable &= eigenvalues[:, 1] > 1e-9 * np.maximum(eigenvalues[:, -1], 1.0)
    return _BlockedFit(means, effects, inverse_count, pseudo_inverse, estimable)


def _clustered_errors(
    weights: np.ndarray, present: np.ndarray, response: np.ndarray, fit: _BlockedFit
) -> np.ndarray:
    """Return the cluster-robust (sandwich) standard errors by block: [draws, estimands].

    Trial (c, b) enters an estimate with weight w_c / n_c - (v_b - mean of v
    over the blocks of cell c), where v = pseudo_inverse @ (sum over cells of
    w_c / n_c for each block). A block's score is the sum over its trials of
    weight times residual. Matrix products stand in for einsum here because
    these are the largest arrays of the fit.
    """
    scaled = present * fit.inverse_count[:, :, None]  # [draws, cells, blocks]
    solved = (weights @ scaled) @ fit.pseudo_inverse  # v: [draws, estimands, blocks]
    solved_mean = solved @ scaled.transpose(
        0, 2, 1
    )  # mean of v over each cell's blocks: [draws, estimands, cells]
    residuals = (response - fit.means[:, :, None] - fit.effects[:, None, :]) * present

    scores = weights @ (residuals * fit.inverse_count[:, :, None])
    scores += solved_mean @ residuals
    scores -= solved * residuals.sum(axis=1)[:, None, :]  # [draws, estimands, blocks]
    blocks = present.shape[2]
    return np.sqrt((scores**2).sum(axis=2) * blocks / max(blocks - 1, 1))
