"""Simulated study results with planted effects, for testing the attribution.

A simulated metric is a sum, in reference coding. It starts from the
baseline value and adds a shift for each factor at a non-reference level.
Each planted interaction adds an extra shift when all its factors are at
the given levels. A seed effect, shared by every cell of that seed, and
independent trial noise come last.
The shared seed effect is what makes pairing by seed matter: it cancels in
within-seed contrasts and inflates unpaired ones.

`record_study` writes a simulated study to MLflow the way `ablate run`
does, with training curves, so that loading, reports and notebooks can be
tested without training anything.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time

import numpy as np
import polars as pl
from pydoe import fracfact

from analysis import load
from analysis.design import Design
from analysis.estimands import build_estimands


@dataclasses.dataclass(frozen=True)
class PlantedMetric:
    """The truth of one simulated metric.

    `main`: factor -> level -> shift against the factor's reference level.
    `interactions`: term such as "mixup:source_loss" -> levels such as
    "on:on" -> extra shift when every factor of the term is at its level.
    """

    baseline: float
    main: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    interactions: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    seed_sd: float = 0.0  # standard deviation of the seed effect shared across cells
    noise_sd: float = 0.0  # standard deviation of each trial's own noise

    def cell_means(self, design: Design) -> np.ndarray:
        """Return the true mean of every cell of `design`: [cells]."""
        means = np.full(design.cell_count, float(self.baseline))
        for factor, shifts in self.main.items():
            for level, shift in shifts.items():
                means += shift * _at_levels(design, [factor], [level])
        for term, shifts in self.interactions.items():
            factors = term.split(":")
            for levels, shift in shifts.items():
                means += shift * _at_levels(design, factors, levels.split(":"))
        return means


def _at_levels(design: Design, factors: list[str], levels: list[str]) -> np.ndarray:
    """Return 1.0 for the cells where every factor is at its level, else 0.0."""
    if len(factors) != len(levels):
        raise ValueError(
            f"term {':'.join(factors)} has {len(factors)} factors but levels {':'.join(levels)}."
        )
    selected = np.ones(design.cell_count, dtype=bool)
    for factor, level in zip(factors, levels):
        if factor not in design.factors or level not in design.factors[factor]:
            raise ValueError(f"planted level {factor}={level} is not in the design {design.factors}.")
        selected &= design.cells[:, design.names.index(factor)] == design.factors[factor].index(level)
    return selected.astype(float)


@dataclasses.dataclass
class SimulatedStudy:
    """Trials of a simulated study, and the truth they were drawn from."""

    name: str
    factors: dict[str, list[str]]
    seeds: list[int]
    runs: pl.DataFrame  # the columns of load.StudyRuns.runs
    cell_means: dict[str, np.ndarray]  # metric -> [cells] true means
    planted: dict[str, PlantedMetric]

    def true_values(self, kinds: tuple[str, ...] | None = None) -> pl.DataFrame:
        """Return the true value of every estimand: metric, kind, factor, level, reference, truth."""
        design = Design(self.factors)
        estimands = build_estimands(design, kinds) if kinds else build_estimands(design)
        rows = []
        for metric, means in self.cell_means.items():
            truth = estimands.weights @ means
            for item, value in zip(estimands.items, truth):
                rows.append(
                    {
                        "metric": metric,
                        "kind": item.kind,
                        "factor": item.factor,
                        "level": item.level,
                        "reference": item.reference,
                        "truth": float(value),
                    }
                )
        return pl.DataFrame(rows)


def simulate_study(
    factors: dict[str, list[str]],
    seeds: list[int],
    metrics: dict[str, PlantedMetric],
    rng: np.random.Generator,
    *,
    cells: list[dict[str, str]] | None = None,
    failure_rate: float = 0.0,
    name: str = "simulated",
) -> SimulatedStudy:
    """Draw every trial of a study: all cells of the full factorial, or only `cells`.

    Each trial fails with probability `failure_rate`; a failed trial keeps
    its row with status FAILED and no metric values, as MLflow shows it.
    """
    design = Design(factors)
    indices = range(design.cell_count) if cells is None else [design.cell_index(cell) for cell in cells]
    means = {metric: planted.cell_means(design) for metric, planted in metrics.items()}
    seed_effects = {
        metric: rng.normal(0.0, planted.seed_sd, len(seeds)) for metric, planted in metrics.items()
    }

    rows = []
    for cell in indices:
        label = design.cell_label(cell)
        for position, seed in enumerate(seeds):
            failed = rng.random() < failure_rate
            row = {
                "run_id": f"simulated-{cell}-{seed}",
                "trial": f"{label},seed={seed}",
                "cell": label,
                "status": "FAILED" if failed else "FINISHED",
                "failure": "simulated failure" if failed else "",
                "seed": seed,
            }
            row.update(
                dict(
                    zip(
                        design.names,
                        (
                            design.factors[name][index]
                            for name, index in zip(design.names, design.cells[cell])
                        ),
                    )
                )
            )
            for metric, planted in metrics.items():
                noise = rng.normal(0.0, planted.noise_sd)
                row[metric] = (
                    None if failed else float(means[metric][cell] + seed_effects[metric][position] + noise)
                )
            rows.append(row)
    schema = dict(load.RUN_COLUMNS)
    schema.update({name: pl.String for name in design.names})
    schema.update({metric: pl.Float64 for metric in metrics})
    return SimulatedStudy(
        name, design.factors, list(seeds), pl.DataFrame(rows, schema=schema), means, dict(metrics)
    )


def fractional_cells(factors: dict[str, list[str]], generators: str) -> list[dict[str, str]]:
    """Return the cells of a two-level fractional factorial from pydoe generators.

    `generators` names one column per factor, in order, as pydoe's fracfact
    takes them ("a b ab" puts the third factor at the product of the first
    two). Coded -1 is a factor's first level and +1 its last.
    """
    columns = generators.split()
    if len(columns) != len(factors):
        raise ValueError(f"generators {generators!r} name {len(columns)} columns for {len(factors)} factors.")
    coded = fracfact(generators)  # [runs, factors] of -1 and +1
    return [
        {name: levels[0] if value < 0 else levels[-1] for (name, levels), value in zip(factors.items(), row)}
        for row in coded
    ]


def learning_curve(final_loss: float, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Return a noisy loss curve that decays from 3.0 to `final_loss`: [steps]."""
    progress = np.arange(steps) / max(1, steps - 1)
    curve = final_loss + (3.0 - final_loss) * np.exp(-5.0 * progress)
    return curve * np.exp(rng.normal(0.0, 0.02, steps))


def record_study(
    study: SimulatedStudy,
    runs_root: str | pathlib.Path,
    *,
    steps: int = 10,
    seed: int = 0,
    tracking_uri: str | None = None,
) -> pathlib.Path:
    """Write a simulated study to MLflow as `ablate run` would; returns the study folder.

    Each trial gets a child run with the study's tags, a `train/loss` and
    `train/learning_rate` history of `steps` points, and its final metrics.
    Failed trials end with status FAILED and a failure tag.
    """
    from mlflow.entities import Metric

    from pipeline import tracking

    study_dir = pathlib.Path(runs_root) / study.name
    study_dir.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or tracking.default_uri(study_dir)
    study_file = study_dir / "study.json"
    study_file.write_text(
        json.dumps({"name": study.name, "factors": study.factors, "seeds": study.seeds}, indent=2)
    )
    experiment_id, parent_run_id = tracking.start_study(
        uri, study.name, study.factors, study.seeds, study_file, study_dir / "artifacts"
    )
    rng = np.random.default_rng(seed)
    metric_names = list(study.cell_means)
    for row in study.runs.iter_rows(named=True):
        cell = {name: row[name] for name in study.factors}
        payload = {
            "config_hash": row["run_id"],
            "cell_id": row["cell"],
            "trial_id": row["trial"],
            "seed": row["seed"],
            "cell": cell,
            "config": {"seed": row["seed"], "simulated": True},
        }
        trial = tracking.TrialRun(uri, experiment_id, parent_run_id, payload)
        final = row[metric_names[0]] if row[metric_names[0]] is not None else 0.0
        loss = learning_curve(1.0 - final, steps, rng)
        now = int(time.time() * 1000)
        history = [Metric("train/loss", float(value), now + step, step) for step, value in enumerate(loss)]
        history += [
            Metric("train/learning_rate", 1e-3 * (1 - step / steps), now + step, step)
            for step in range(steps)
        ]
        if row["status"] == "FINISHED":
            history += [
                Metric(metric, float(row[metric]), now + steps, steps)
                for metric in metric_names
                if row[metric] is not None
            ]
        trial.client.log_batch(trial.run_id, metrics=history)
        if row["status"] == "FINISHED":
            trial.finish()
        else:
            trial.fail(row["failure"] or "simulated failure", step=steps // 2)
    tracking.end_study(uri, parent_run_id, failed=int((study.runs["status"] != "FINISHED").sum()))
    return study_dir
