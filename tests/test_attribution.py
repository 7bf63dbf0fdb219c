"""Attribution estimates checked against statsmodels, hand-computed games and known aliasing."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd
import polars as pl
import pytest
import statsmodels.formula.api as smf
from pydoe import fracfact, fracfact_aliasing
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from analysis import anova, attribution, bootstrap, power, shapley, simulate
from analysis.design import Design, alias_structure

FACTORS = {"mixup": ["off", "on"], "source_loss": ["off", "on"], "window": ["random", "peak", "energy"]}
PLANTED = simulate.PlantedMetric(
    baseline=0.40,
    main={"mixup": {"on": 0.03}, "window": {"peak": 0.01, "energy": -0.02}},
    interactions={"mixup:source_loss": {"on:on": 0.02}, "source_loss:window": {"on:energy": 0.015}},
    seed_sd=0.02,
    noise_sd=0.01,
)


def simulated(seeds: int = 4, seed: int = 0, **options) -> simulate.SimulatedStudy:
    return simulate.simulate_study(
        FACTORS, list(range(seeds)), {"m": PLANTED}, np.random.default_rng(seed), **options
    )


def rows_of(table: pl.DataFrame, kind: str) -> dict[tuple[str, str], dict]:
    return {
        (row["factor"], row["level"]): row
        for row in table.filter(pl.col("kind") == kind).iter_rows(named=True)
    }


def sum_coded_fit(runs: pl.DataFrame, factors: dict[str, list[str]]):
    """Fit the saturated factorial OLS with Sum contrasts in the listed level order, seeds as blocks."""
    frame = runs.select(*factors, "seed", "m").to_pandas()
    frame["seed"] = frame["seed"].astype(str)
    coded = {name: f"C({name}, Sum, levels={levels!r})" for name, levels in factors.items()}
    formula = "m ~ C(seed, Sum) + " + " * ".join(coded.values())
    return smf.ols(formula, data=frame).fit(), coded


def coefficient_tensor(
    fit, coded: dict[str, str], factors: dict[str, list[str]], term: tuple[str, ...]
) -> np.ndarray:
    """Expand a term's Sum-coded coefficients to every level combination (the omitted levels sum to zero)."""
    shape = [len(factors[name]) for name in term]
    tensor = np.zeros(shape)
    for index in itertools.product(*[range(count - 1) for count in shape]):
        label = ":".join(f"{coded[name]}[S.{factors[name][position]}]" for name, position in zip(term, index))
        tensor[index] = fit.params[label]
    for axis, count in enumerate(shape):
        head = [slice(None)] * len(shape)
        head[axis] = slice(0, count - 1)
        last = [slice(None)] * len(shape)
        last[axis] = count - 1
        tensor[tuple(last)] = -tensor[tuple(head)].sum(axis=axis)
    return tensor


def difference_of_differences(tensor: np.ndarray, levels: tuple[int, ...]) -> float:
    """Return the r-th order difference of `levels` against level 0 of every axis."""
    total = 0.0
    for corner in itertools.product([0, 1], repeat=len(levels)):
        index = tuple(level if pick else 0 for level, pick in zip(levels, corner))
        total += (-1) ** (len(levels) - sum(corner)) * tensor[index]
    return total


def test_effects_match_statsmodels_sum_contrasts():
    study = simulated(seeds=4)
    table = attribution.attribute(study.runs, FACTORS, ["m"], resamples=199, power_analysis=False)
    fit, coded = sum_coded_fit(study.runs, FACTORS)

    checked = 0
    for kind in ("main", "interaction"):
        for (factor, level), row in rows_of(table, kind).items():
            term = tuple(factor.split(":"))
            levels = tuple(FACTORS[name].index(value) for name, value in zip(term, level.split(":")))
            expected = difference_of_differences(coefficient_tensor(fit, coded, FACTORS, term), levels)
            assert row["effect"] == pytest.approx(expected, abs=1e-12), (factor, level)
            checked += 1
    assert checked == 4 + 7


def test_anova_shares_match_projection():
    study = simulated(seeds=5, seed=1)
    shares = anova.anova_shares(study.runs, FACTORS, ["m"])
    design = Design(FACTORS)
    values = attribution.cell_values(study.runs, design, "m").values  # [cells, seeds]
    cells, seeds = values.shape
    total = ((values - values.mean()) ** 2).sum()

    expected = {"seed": cells * ((values.mean(axis=0) - values.mean()) ** 2).sum()}
    means = values.mean(axis=1)
    for term in design.terms:
        columns = design.model_matrix[:, design.term_columns[term.name]]
        projection = columns @ np.linalg.lstsq(columns, means, rcond=None)[0]
        expected[term.name] = seeds * (projection**2).sum()
    expected["residual"] = total - sum(expected.values())

    found = {row["term"]: row for row in shares.iter_rows(named=True)}
    assert set(found) == set(expected)
    for term, sum_of_squares in expected.items():
        assert found[term]["sum_sq"] == pytest.approx(sum_of_squares, rel=1e-9, abs=1e-15), term
        assert found[term]["share"] == pytest.approx(sum_of_squares / total, rel=1e-9, abs=1e-15), term
    assert shares["share"].sum() == pytest.approx(1.0)


# A three-player game: v(empty) = 0, singletons 10, 20, 30, pairs 40, 50, 60,
# grand coalition 90, plus 6 on the grand coalition alone (a unanimity game,
# which Shapley splits 2 each and Banzhaf 1.5 each).
HAND_GAME = {
    (): 0,
    ("a",): 10,
    ("b",): 20,
    ("c",): 30,
    ("a", "b"): 40,
    ("a", "c"): 50,
    ("b", "c"): 60,
    ("a", "b", "c"): 96,
}
# By hand: Shapley of a = 10/3 + (20 + 20)/6 + (30 + 6)/3 = 22; b and c alike.
HAND_SHAPLEY = {"a": 22.0, "b": 32.0, "c": 42.0}
# By hand: Banzhaf of a = (10 + 20 + 20 + 36) / 4 = 21.5; b and c alike.
HAND_BANZHAF = {"a": 21.5, "b": 31.5, "c": 41.5}


def hand_game_values() -> np.ndarray:
    players = ["a", "b", "c"]
    values = np.zeros(8)
    for coalition, value in HAND_GAME.items():
        values[sum(1 << players.index(player) for player in coalition)] = value
    return values


def test_shapley_and_banzhaf_of_hand_computed_game():
    values = hand_game_values()

    assert shapley.game_values(values, "shapley") == pytest.approx([HAND_SHAPLEY[p] for p in "abc"])
    assert shapley.game_values(values, "banzhaf") == pytest.approx([HAND_BANZHAF[p] for p in "abc"])


def test_attribution_recovers_hand_game_from_cells():
    factors = {name: ["off", "on"] for name in "abc"}
    design = Design(factors)
    values = hand_game_values()
    game = simulate.PlantedMetric(0.0, seed_sd=1.0, noise_sd=0.0)
    study = simulate.simulate_study(factors, [0, 1, 2, 3], {"m": game}, np.random.default_rng(2))
    # Add the game's value of each cell's coalition to every seed of the cell.
    offsets = {design.cell_label(cell): values[mask] for mask, cell in enumerate(design.coalition_cells())}
    runs = study.runs.with_columns(
        pl.col("m") + pl.col("cell").replace_strict(offsets, return_dtype=pl.Float64)
    )

    table = attribution.attribute(runs, factors, ["m"], resamples=199)

    for player in "abc":
        assert rows_of(table, "shapley")[(player, "on")]["effect"] == pytest.approx(HAND_SHAPLEY[player])
        assert rows_of(table, "banzhaf")[(player, "on")]["effect"] == pytest.approx(HAND_BANZHAF[player])
    assert rows_of(table, "total")[("(all)", "full recipe")]["effect"] == pytest.approx(96.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shapley_values_sum_to_full_minus_baseline(seed):
    study = simulated(seeds=5, seed=seed)
    table = attribution.attribute(study.runs, FACTORS, ["m"], resamples=199, power_analysis=False)
    shapley_sum = table.filter(pl.col("kind") == "shapley")["effect"].sum()
    total = rows_of(table, "total")[("(all)", "full recipe")]["effect"]

    values = attribution.cell_values(study.runs, Design(FACTORS), "m").values.mean(axis=1)
    assert shapley_sum == pytest.approx(total, abs=1e-12)
    assert total == pytest.approx(values[-1] - values[0], abs=1e-12)


def test_banzhaf_equals_main_effect_of_two_level_factors():
    factors = {name: ["off", "on"] for name in ("mixup", "prototype", "distillation")}
    planted = simulate.PlantedMetric(
        0.5,
        main={"mixup": {"on": 0.02}},
        interactions={"mixup:prototype": {"on:on": 0.01}},
        seed_sd=0.01,
        noise_sd=0.005,
    )
    study = simulate.simulate_study(factors, [0, 1, 2, 3], {"m": planted}, np.random.default_rng(3))
    table = attribution.attribute(study.runs, factors, ["m"], resamples=199, power_analysis=False)

    for key, row in rows_of(table, "main").items():
        assert rows_of(table, "banzhaf")[key]["effect"] == pytest.approx(row["effect"], abs=1e-12)


def test_reference_is_first_listed_level():
    factors = {"window": ["random", "peak"], "mixup": ["on", "off"]}
    planted = simulate.PlantedMetric(0.5, main={"mixup": {"off": -0.05}}, seed_sd=0.0, noise_sd=0.0)
    study = simulate.simulate_study(factors, [0, 1], {"m": planted}, np.random.default_rng(0))
    table = attribution.attribute(study.runs, factors, ["m"], resamples=99, power_analysis=False)

    main = rows_of(table, "main")
    assert set(main) == {("window", "peak"), ("mixup", "off")}
    assert main[("mixup", "off")]["reference"] == "on"
    assert main[("mixup", "off")]["effect"] == pytest.approx(-0.05)


def test_holm_matches_statsmodels():
    p_values = np.random.default_rng(4).uniform(0, 0.2, size=17)
    expected = multipletests(p_values, method="holm")[1]
    assert attribution.holm(p_values) == pytest.approx(expected)


def test_holm_adjusts_within_metric_and_family():
    study = simulated(seeds=5)
    table = attribution.attribute(study.runs, FACTORS, ["m"], resamples=199, power_analysis=False)
    factorial = table.filter(pl.col("family") == "factorial")
    expected = multipletests(factorial["p_value"].to_numpy(), method="holm")[1]

    assert factorial["p_holm"].to_numpy() == pytest.approx(expected)
    assert factorial["resolved"].to_list() == list(expected < 0.05)


def test_seeds_needed_matches_solve_power():
    effects = np.array([0.3, 0.5, 1.0, 2.0])
    expected = [np.ceil(TTestPower().solve_power(effect_size=d, alpha=0.05, power=0.8)) for d in effects]
    assert power.seeds_needed(effects) == pytest.approx(expected)


@pytest.mark.parametrize(
    "d_z, expected", [(0.0, np.nan), (0.001, np.nan), (np.nan, np.nan), (50.0, 2.0), (-1.0, 10.0)]
)
def test_seeds_needed_edge_cases(d_z, expected):
    assert power.seeds_needed(np.array([d_z]))[0] == pytest.approx(expected, nan_ok=True)


def test_power_where_scipy_returns_nan():
    # scipy 1.17's noncentral t returns NaN at these points; power must grow with d_z anyway.
    values = power.paired_power(np.array([5.0, 8.0, 10.0]), 2)
    assert np.isfinite(values).all()
    assert values[0] < values[1] < values[2]
    assert values[1] == pytest.approx(power._power_by_integration(8.0, 2, 0.05))


def test_power_columns_follow_d_z():
    study = simulated(seeds=6)
    table = attribution.attribute(study.runs, FACTORS, ["m"], resamples=199)
    main = table.filter(pl.col("kind") == "main")

    for row in main.iter_rows(named=True):
        assert row["d_z"] == pytest.approx(row["effect"] / (row["standard_error"] * np.sqrt(6)))
        assert row["seeds_needed"] == power.seeds_needed(np.array([row["d_z"]]))[0]
        assert 0.0 <= row["power"] <= 1.0


def test_paired_interval_is_studentized_bootstrap():
    per_seed = np.random.default_rng(5).normal(1.0, 0.5, size=(1, 8))
    intervals = bootstrap.paired_intervals(per_seed, 999, np.random.default_rng(6))

    assert intervals.method == bootstrap.BOOTSTRAP_T
    assert intervals.estimate[0] == pytest.approx(per_seed.mean())
    assert intervals.standard_error[0] == pytest.approx(per_seed.std(ddof=1) / np.sqrt(8))
    assert intervals.low[0] < per_seed.mean() < intervals.high[0]
    assert intervals.valid_resamples > 990


@pytest.mark.parametrize(
    "seeds, method", [(3, bootstrap.T_INTERVAL), (5, bootstrap.T_INTERVAL), (6, bootstrap.BOOTSTRAP_T)]
)
def test_interval_method_follows_seed_count(seeds, method):
    study = simulated(seeds=seeds)
    table = attribution.attribute(study.runs, FACTORS, ["m"], resamples=199, power_analysis=False)
    assert set(table["interval"].to_list()) == {method}


def test_resamples_raised_for_holm_family():
    study = simulated(seeds=6)
    table = attribution.attribute(study.runs, FACTORS, ["m"], resamples=199, power_analysis=False)
    factorial_tests = 4 + 7

    # Replicates that draw a single seed are dropped, hence the slack.
    assert table["resamples"].min() >= 0.99 * 4 * factorial_tests / 0.05
    assert table.filter(pl.col("kind") == "main")["resolved"].any()


def test_one_seed_gives_no_interval():
    study = simulated(seeds=1)
    table = attribution.attribute(study.runs, FACTORS, ["m"], resamples=199)
    main = table.filter(pl.col("kind") == "main")

    assert main["effect"].null_count() == 0
    assert main["ci_low"].null_count() == main.height
    assert all("one seed" in note for note in main["note"].to_list())


def test_identical_seeds_give_zero_width_interval():
    planted = simulate.PlantedMetric(0.5, main={"mixup": {"on": 0.1}})
    study = simulate.simulate_study(FACTORS, [0, 1, 2, 3], {"m": planted}, np.random.default_rng(0))
    table = attribution.attribute(study.runs, FACTORS, ["m"], resamples=199)
    row = rows_of(table, "main")[("mixup", "on")]

    assert row["ci_low"] == row["ci_high"] == pytest.approx(0.1)
    assert row["p_value"] is None
    assert row["note"] == "every seed gave the same value"


def test_failed_trials_use_blocked_fit():
    study = simulated(seeds=6, failure_rate=0.15, seed=7)
    assert (study.runs["status"] == "FAILED").sum() > 0
    table = attribution.attribute(study.runs, FACTORS, ["m"], resamples=199, power_analysis=False)
    truth = {
        (row["kind"], row["factor"], row["level"]): row["truth"]
        for row in study.true_values().iter_rows(named=True)
    }

    assert set(table["basis"].to_list()) == {"direct"}
    for row in table.iter_rows(named=True):
        assert row["interval"] == bootstrap.BOOTSTRAP_T
        assert row["ci_low"] < row["effect"] < row["ci_high"]
        assert abs(row["effect"] - truth[(row["kind"], row["factor"], row["level"])]) < 0.05


def test_blocked_fit_matches_statsmodels():
    values = np.random.default_rng(8).normal(size=(6, 5)) + np.arange(6)[:, None]
    values[1, 2] = values[4, 0] = np.nan
    weights = np.array([[1.0, -1.0, 0, 0, 0, 0], [0, 0, 0, 0.5, 0.5, -1.0]])
    estimate, error = bootstrap.fit_blocked(values, np.arange(5)[None], weights)

    cell, seed = np.nonzero(np.isfinite(values))
    frame = pd.DataFrame({"cell": cell.astype(str), "seed": seed.astype(str), "value": values[cell, seed]})
    fit = smf.ols("value ~ 0 + C(cell) + C(seed, Sum)", data=frame).fit(
        cov_type="cluster", cov_kwds={"groups": seed}
    )
    contrast = np.hstack([weights, np.zeros((2, 4))])
    assert estimate[0] == pytest.approx(contrast @ fit.params.to_numpy())
    # statsmodels scales the cluster covariance by (n - 1) / (n - p) too; undo that factor.
    scale = (len(cell) - 1) / (len(cell) - contrast.shape[1])
    expected = np.sqrt(np.diag(contrast @ fit.cov_params().to_numpy() @ contrast.T) / scale)
    assert error[0] == pytest.approx(expected)


def test_resolution_three_fraction_names_aliases_and_declines():
    factors = {name: ["off", "on"] for name in ("a", "b", "c")}
    cells = simulate.fractional_cells(factors, "a b ab")
    planted = simulate.PlantedMetric(
        0.5, main={"a": {"on": 0.1}, "b": {"on": 0.05}}, seed_sd=0.01, noise_sd=0.01
    )
    study = simulate.simulate_study(
        factors, [0, 1, 2, 3, 4], {"m": planted}, np.random.default_rng(9), cells=cells
    )
    table = attribution.attribute(study.runs, factors, ["m"], resamples=199, power_analysis=False)

    main = rows_of(table, "main")
    assert {key: row["aliases"] for key, row in main.items()} == {
        ("a", "on"): "b:c",
        ("b", "on"): "a:c",
        ("c", "on"): "a:b",
    }
    assert all(row["basis"] == "model" for row in main.values())
    assert main[("a", "on")]["effect"] == pytest.approx(0.1, abs=0.02)
    for kind in ("interaction", "shapley", "leave_one_out", "add_one_in", "total"):
        rows = table.filter(pl.col("kind") == kind)
        assert rows["basis"].to_list() == ["declined"] * rows.height, kind
        assert rows["effect"].null_count() == rows.height
        assert all("Run those cells" in note for note in rows["note"].to_list())
    assert "a:b with c" in rows_of(table, "interaction")[("a:b", "on:on")]["note"]


def test_resolution_four_aliases_agree_with_pydoe():
    factors = {name: ["off", "on"] for name in "abcd"}
    generators = "a b c abc"
    design = Design(factors)
    observed = np.zeros(design.cell_count, dtype=bool)
    observed[[design.cell_index(cell) for cell in simulate.fractional_cells(factors, generators)]] = True
    structure = alias_structure(design, observed)

    # pydoe writes alias sets such as "ab = cd"; keep the two-way ones.
    pairs = []
    for entry in fracfact_aliasing(fracfact(generators))[0]:
        words = [word.strip() for word in entry.split("=")]
        if len(words) > 1 and all(len(word) == 2 for word in words):
            pairs.append({":".join(word) for word in words})
    assert len(pairs) == 3
    for excluded in ("b:c", "b:d", "c:d"):
        (partner,) = structure.aliases[excluded]
        assert {excluded, partner} in pairs
    assert [term for term in structure.included if len(term) == 1] == list("abcd")
    assert "a:b:c:d" in structure.excluded


def test_lost_cell_keeps_estimable_contrasts():
    factors = {name: ["off", "on"] for name in ("a", "b", "c")}
    planted = simulate.PlantedMetric(0.5, main={"a": {"on": 0.1}}, seed_sd=0.01, noise_sd=0.01)
    study = simulate.simulate_study(factors, [0, 1, 2, 3, 4], {"m": planted}, np.random.default_rng(10))
    runs = study.runs.with_columns(
        pl.when(pl.col("cell") == "a=on,b=on,c=on")
        .then(pl.lit("FAILED"))
        .otherwise(pl.col("status"))
        .alias("status")
    )
    table = attribution.attribute(runs, factors, ["m"], resamples=199, power_analysis=False)

    main = rows_of(table, "main")
    assert all(row["basis"] == "model" and row["aliases"] == "a:b:c" for row in main.values())
    assert rows_of(table, "interaction")[("a:b:c", "on:on:on")]["basis"] == "declined"
    assert rows_of(table, "add_one_in")[("a", "on")]["basis"] == "direct"
    assert rows_of(table, "leave_one_out")[("a", "on")]["basis"] == "declined"
    assert rows_of(table, "shapley")[("a", "on")]["basis"] == "declined"


def test_unknown_level_names_the_value():
    study = simulated(seeds=2)
    runs = study.runs.with_columns(pl.lit("cutmix").alias("mixup"))
    with pytest.raises(ValueError, match="outside the study's factors"):
        attribution.attribute(runs, FACTORS, ["m"], resamples=99)


def test_factor_with_one_level_is_rejected():
    with pytest.raises(ValueError, match="at least two levels"):
        Design({"mixup": ["on"]})


def test_anova_skips_constant_metric():
    study = simulated(seeds=3, seed=2)
    runs = study.runs.with_columns(pl.lit(32.0).alias("classes"))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shares = anova.anova_shares(runs, FACTORS, ["classes"])

    assert shares.is_empty()


def test_anova_skips_one_seed_study():
    study = simulated(seeds=1, seed=3)

    shares = anova.anova_shares(study.runs, FACTORS, ["m"])

    assert shares.is_empty()
