"""The simulator plants what it claims, and the attribution finds it at the nominal rate."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from pydoe import fracfact

from analysis import attribution, simulate
from analysis.design import Design
from analysis.estimands import build_estimands

FACTORS = {"mixup": ["off", "on"], "source_loss": ["off", "on"], "window": ["random", "peak", "energy"]}
PLANTED = simulate.PlantedMetric(
    baseline=0.40,
    main={"mixup": {"on": 0.03}, "window": {"peak": 0.01, "energy": -0.02}},
    interactions={"mixup:source_loss": {"on:on": 0.02}, "source_loss:window": {"on:energy": 0.015}},
    seed_sd=0.02,  # larger than the trial noise, so that pairing by seed matters
    noise_sd=0.01,
)
KEYS = ["metric", "kind", "factor", "level", "reference"]


def coverage_table(studies: int, failure_rate: float, seed: int, resamples: int = 499) -> pl.DataFrame:
    """Simulate `studies` studies of 6 seeds; return coverage and bias per estimand."""
    rng = np.random.default_rng(seed)
    design = Design(FACTORS)
    estimands = build_estimands(design)
    truth = None
    tables = []
    for _ in range(studies):
        study = simulate.simulate_study(
            FACTORS, list(range(6)), {"m": PLANTED}, rng, failure_rate=failure_rate
        )
        truth = study.true_values() if truth is None else truth
        finished = study.runs.filter(pl.col("status") == "FINISHED")
        table = attribution.attribute_metric(finished, design, estimands, "m", resamples=resamples, rng=rng)
        assert set(table["interval"].to_list()) == {"bootstrap-t"}
        tables.append(table.select(*KEYS, "effect", "ci_low", "ci_high"))
    joined = pl.concat(tables).join(truth, on=KEYS)
    error = pl.col("effect") - pl.col("truth")
    return joined.group_by(["kind", "factor", "level"], maintain_order=True).agg(
        ((pl.col("ci_low") <= pl.col("truth")) & (pl.col("truth") <= pl.col("ci_high")))
        .mean()
        .alias("coverage"),
        error.mean().alias("bias"),
        (error.std() / np.sqrt(studies)).alias("bias_error"),
        pl.len().alias("studies"),
    )


def check_coverage(summary: pl.DataFrame, studies: int) -> None:
    with pl.Config(tbl_rows=-1):
        print(summary)  # shown with pytest -s: the measured rates
    assert summary.height == 24
    assert summary["studies"].to_list() == [studies] * summary.height
    for row in summary.iter_rows(named=True):
        name = f"{row['kind']} {row['factor']} {row['level']}"
        assert row["coverage"] >= 0.90, f"{name}: coverage {row['coverage']:.3f}"
        assert abs(row["bias"]) < 4.0 * row["bias_error"], (
            f"{name}: bias {row['bias']:.5f} +- {row['bias_error']:.5f}"
        )


def test_intervals_cover_planted_values():
    studies = 400
    summary = coverage_table(studies, failure_rate=0.0, seed=11)
    check_coverage(summary, studies)
    assert summary["coverage"].mean() == pytest.approx(0.95, abs=0.02)


def test_intervals_cover_planted_values_with_failed_trials():
    studies = 400
    check_coverage(coverage_table(studies, failure_rate=0.1, seed=12, resamples=299), studies)


def test_planted_main_effects_without_interactions():
    planted = simulate.PlantedMetric(
        0.5, main={"mixup": {"on": 0.03}, "window": {"peak": 0.01, "energy": -0.02}}
    )
    design = Design(FACTORS)
    study = simulate.simulate_study(FACTORS, [0], {"m": planted}, np.random.default_rng(0))
    truth = study.true_values(("main", "interaction"))

    main = {
        (row["factor"], row["level"]): row["truth"]
        for row in truth.filter(pl.col("kind") == "main").iter_rows(named=True)
    }
    assert main == pytest.approx(
        {
            ("mixup", "on"): 0.03,
            ("source_loss", "on"): 0.0,
            ("window", "peak"): 0.01,
            ("window", "energy"): -0.02,
        }
    )
    assert truth.filter(pl.col("kind") == "interaction")["truth"].to_numpy() == pytest.approx(0.0)
    assert planted.cell_means(design)[design.baseline_cell] == pytest.approx(0.5)


def test_planted_interaction_is_difference_of_differences():
    study = simulate.simulate_study(FACTORS, [0], {"m": PLANTED}, np.random.default_rng(0))
    truth = study.true_values(("interaction",))
    found = {(row["factor"], row["level"]): row["truth"] for row in truth.iter_rows(named=True)}

    assert found[("mixup:source_loss", "on:on")] == pytest.approx(0.02)
    assert found[("source_loss:window", "on:energy")] == pytest.approx(0.015)
    assert found[("source_loss:window", "on:peak")] == pytest.approx(0.0)
    assert found[("mixup:source_loss:window", "on:on:energy")] == pytest.approx(0.0)


def test_seed_effect_is_shared_across_cells():
    planted = simulate.PlantedMetric(0.5, main={"mixup": {"on": 0.03}}, seed_sd=0.05, noise_sd=0.0)
    study = simulate.simulate_study(FACTORS, [0, 1, 2, 3], {"m": planted}, np.random.default_rng(1))
    design = Design(FACTORS)
    values = attribution.cell_values(study.runs, design, "m").values  # [cells, seeds]
    means = planted.cell_means(design)

    offsets = values - means[:, None]  # each seed's shift, identical in every cell
    assert np.ptp(offsets, axis=0) == pytest.approx(0.0, abs=1e-12)
    assert np.std(offsets[0]) > 0.01


def test_pairing_narrows_intervals():
    study = simulate.simulate_study(FACTORS, list(range(6)), {"m": PLANTED}, np.random.default_rng(2))
    table = attribution.attribute(study.runs, FACTORS, ["m"], resamples=499, power_analysis=False)
    paired = table.filter((pl.col("kind") == "main") & (pl.col("factor") == "mixup")).row(0, named=True)

    # An unpaired comparison of the two levels counts the seed effect as noise.
    on = study.runs.filter(pl.col("mixup") == "on").group_by("seed").agg(pl.col("m").mean())["m"].to_numpy()
    off = study.runs.filter(pl.col("mixup") == "off").group_by("seed").agg(pl.col("m").mean())["m"].to_numpy()
    unpaired_error = np.sqrt(on.var(ddof=1) / len(on) + off.var(ddof=1) / len(off))
    assert paired["standard_error"] < 0.5 * unpaired_error


def test_failures_keep_rows_without_values():
    study = simulate.simulate_study(
        FACTORS, [0, 1, 2], {"m": PLANTED}, np.random.default_rng(3), failure_rate=0.3
    )
    failed = study.runs.filter(pl.col("status") == "FAILED")

    assert study.runs.height == 12 * 3
    assert failed.height > 0
    assert failed["m"].null_count() == failed.height
    assert set(failed["failure"].to_list()) == {"simulated failure"}


def test_fractional_cells_follow_pydoe():
    factors = {name: ["off", "on"] for name in ("mixup", "prototype", "source_loss")}
    cells = simulate.fractional_cells(factors, "a b ab")
    coded = fracfact("a b ab")

    assert len(cells) == 4
    for cell, row in zip(cells, coded):
        assert [cell[name] == "on" for name in factors] == list(row > 0)


def test_fractional_cells_reject_wrong_generator_count():
    with pytest.raises(ValueError, match="name 2 columns for 3 factors"):
        simulate.fractional_cells({name: ["off", "on"] for name in "abc"}, "a b")


def test_planted_level_must_exist():
    planted = simulate.PlantedMetric(0.5, main={"mixup": {"cutmix": 0.1}})
    with pytest.raises(ValueError, match="mixup=cutmix"):
        simulate.simulate_study(FACTORS, [0], {"m": planted}, np.random.default_rng(0))
