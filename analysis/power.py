"""Power of the paired comparison over seeds, and the seeds it would need.

An effect estimated from S seeds is a mean of S per-seed contrasts, so its
test is a one-sample (paired) t-test and its standardized effect is
Cohen's d_z = mean / sd of the per-seed contrasts. statsmodels'
TTestPower gives the power of that test.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import integrate, special, stats
from statsmodels.stats.power import TTestPower

ALPHA = 0.05
TARGET_POWER = 0.8
# Seed counts past this are reported as not reachable (NaN).
MAX_SEEDS = 10_000


def paired_power(d_z: np.ndarray, seeds: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """Return the power of a two-sided paired t-test with `seeds` seeds at effect `d_z`.

    Arrays broadcast; the result is NaN where d_z is not finite or seeds < 2.
    """
    d_z, seeds = np.broadcast_arrays(np.abs(np.asarray(d_z, float)), np.asarray(seeds, float))
    valid = np.isfinite(d_z) & (seeds >= 2)
    power = np.full(d_z.shape, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        power[valid] = TTestPower().power(effect_size=d_z[valid], nobs=seeds[valid], alpha=alpha)
    # scipy's noncentral t (1.17) returns NaN at some noncentralities above
    # about 11, which TTestPower passes on; those points are integrated here.
    for index in zip(*np.nonzero(valid & ~np.isfinite(power))):
        power[index] = _power_by_integration(float(d_z[index]), int(seeds[index]), alpha)
    return power


def _power_by_integration(d_z: float, seeds: int, alpha: float) -> float:
    """Return the paired t-test's power by integrating over the chi-square of the variance.

    T = (Z + shift) / sqrt(V / freedom) with V chi-square; the test rejects
    when |Z + shift| exceeds critical * sqrt(V / freedom).
    """
    freedom = seeds - 1
    critical = stats.t.isf(alpha / 2.0, freedom)
    shift = d_z * np.sqrt(seeds)  # noncentrality
    # scipy.special calls: the frozen-distribution methods cost 0.1 ms each.
    log_normalizer = special.gammaln(freedom / 2.0) + freedom / 2.0 * np.log(2.0)

    def rejected(chi_square: float) -> float:
        threshold = critical * np.sqrt(chi_square / freedom)
        density = np.exp(special.xlogy(freedom / 2.0 - 1.0, chi_square) - chi_square / 2.0 - log_normalizer)
        return (special.ndtr(shift - threshold) + special.ndtr(-threshold - shift)) * density

    # Finite limits that hold all but 2e-15 of the chi-square's mass, so that
    # quad finds the narrow peak of a chi-square with many degrees of freedom.
    lower, upper = stats.chi2.ppf(1e-15, freedom), stats.chi2.isf(1e-15, freedom)
    integral = integrate.quad(rejected, lower, upper, points=[max(freedom - 2.0, lower)], limit=200)[0]
    return float(np.clip(integral, 0.0, 1.0))


def seeds_needed(d_z: np.ndarray, alpha: float = ALPHA, target: float = TARGET_POWER) -> np.ndarray:
    """Return the fewest seeds (at least 2) whose paired t-test reaches `target` power at `d_z`.

    Result: float array, NaN where d_z is zero or not finite, or where more
    than MAX_SEEDS seeds would be needed. Power grows with the seed count,
    so a bisection over whole seed counts finds the smallest count for all effects
    at once; statsmodels' solve_power does the same for one effect at a
    time, about 25 power evaluations each.
    """
    d_z = np.abs(np.asarray(d_z, float))
    searchable = np.isfinite(d_z) & (d_z > 0)
    searchable &= np.where(
        searchable, paired_power(np.where(searchable, d_z, 0.0), MAX_SEEDS, alpha) >= target, False
    )
    low = np.full(d_z.shape, 2.0)
    high = np.full(d_z.shape, float(MAX_SEEDS))
    while np.any(searchable & (low < high)):
        middle = np.floor((low + high) / 2.0)
        enough = paired_power(np.where(searchable, d_z, 0.0), middle, alpha) >= target
        high = np.where(searchable & enough, middle, high)
        low = np.where(searchable & ~enough, middle + 1.0, low)
    return np.where(searchable, low, np.nan)
