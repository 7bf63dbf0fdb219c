"""Read a study's trials from MLflow into one polars frame."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import polars as pl
from mlflow.tracking import MlflowClient

from pipeline import tracking

# Metrics that count things rather than score a model.
_COUNT_SUFFIXES = ("_classes", "/recordings", "/windows")


@dataclasses.dataclass
class StudyRuns:
    """Every trial of a study, one row each, with the study's factors."""

    name: str
    tracking_uri: str
    parent_run_id: str
    # factor name -> levels; the first level is the reference.
    factors: dict[str, list[str]]
    seeds: list[int]
    # Columns: run_id, trial, cell, status, failure, seed, one column per
    # factor and one per final metric value.
    runs: pl.DataFrame

    @property
    def finished(self) -> pl.DataFrame:
        return self.runs.filter(pl.col("status") == "FINISHED")

    def metric_names(self) -> list[str]:
        """Return the evaluation metrics, in-domain first."""
        names = [
            column
            for column in self.runs.columns
            if column.startswith("eval/") and not column.endswith(_COUNT_SUFFIXES)
        ]
        return sorted(names, key=lambda name: (not name.startswith("eval/test/"), "window_" in name, name))

    def missing_cells(self) -> list[str]:
        """Return trials that the design asks for but that did not finish."""
        import itertools

        expected = {
            ",".join(f"{name}={level}" for name, level in zip(self.factors, levels)) + f",seed={seed}"
            for levels in itertools.product(*self.factors.values())
            for seed in self.seeds
        }
        finished = set(self.finished["trial"].to_list()) if self.runs.height else set()
        return sorted(expected - finished)


def load_study(study_dir: str | pathlib.Path, tracking_uri: str | None = None) -> StudyRuns:
    """Load a study from its folder `runs/<name>`; its MLflow store is found there.

    `tracking_uri` overrides the store (for a tracking server). Raises
    FileNotFoundError when the study has no parent run.
    """
    study_dir = pathlib.Path(study_dir)
    name = study_dir.name
    uri = tracking_uri or tracking.default_uri(study_dir)
    if uri.startswith("sqlite:///") and not pathlib.Path(uri.removeprefix("sqlite:///")).exists():
        raise FileNotFoundError(f"no MLflow store at {uri}; run `ablate run` for the study first, or pass --tracking-uri.")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise FileNotFoundError(f"no MLflow experiment named {name!r} in {uri}; is {study_dir} a study folder?")
    parents = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{tracking.ROLE}` = 'study'", max_results=1
    )
    if not parents:
        raise FileNotFoundError(f"experiment {name!r} in {uri} has no study run.")
    parent = parents[0]
    factors = json.loads(parent.data.tags.get(tracking.FACTORS, "{}"))
    seeds = json.loads(parent.data.params.get("seeds", "[]"))

    rows = []
    for run in tracking.child_runs(uri, experiment.experiment_id, parent.info.run_id):
        tags = run.data.tags
        row = {
            "run_id": run.info.run_id,
            "trial": tags.get(tracking.TRIAL, ""),
            "cell": tags.get(tracking.CELL, ""),
            "status": run.info.status,
            "failure": tags.get(tracking.FAILURE, ""),
            "seed": int(tags.get("seed", -1)),
        }
        row.update({factor: tags.get(f"factor.{factor}", "") for factor in factors})
        row.update(run.data.metrics)
        rows.append(row)
    frame = pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame(
        schema={"run_id": pl.String, "trial": pl.String, "cell": pl.String, "status": pl.String, "failure": pl.String, "seed": pl.Int64}
    )
    return StudyRuns(name, uri, parent.info.run_id, factors, seeds, frame)
