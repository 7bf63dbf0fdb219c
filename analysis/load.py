"""Read a study's trials from MLflow into one polars frame."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import polars as pl
from mlflow.tracking import MlflowClient

from pipeline import tracking

# Metrics that count things (classes, recordings, windows, events) rather
# than score a model, named by the last part of `eval/<task>/<name>`.
_COUNT_WORDS = ("classes", "recordings", "windows", "soundscapes", "events")


def is_count_metric(name: str) -> bool:
    """Return whether `eval/<task>/<name>` counts items instead of scoring a model."""
    last = name.rsplit("/", 1)[-1]
    return any(last == word or last.endswith("_" + word) for word in _COUNT_WORDS)


# Columns every trial row has, before its factor and metric columns.
RUN_COLUMNS = {
    "run_id": pl.String,
    "trial": pl.String,
    "cell": pl.String,
    "status": pl.String,
    "failure": pl.String,
    "seed": pl.Int64,
}


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
    # Cells the design asked for (factor -> level); None means the full factorial.
    design_cells: list[dict[str, str]] | None = None

    @property
    def finished(self) -> pl.DataFrame:
        return self.runs.filter(pl.col("status") == "FINISHED")

    def metric_names(self) -> list[str]:
        """Return the evaluation metrics, in-domain first.

        Counts and the spreads of few-shot scores over probe draws (`*_std`)
        describe the evaluation, not the model, so they are left out. They
        stay in runs.csv.
        """
        names = [
            column
            for column in self.runs.columns
            if column.startswith("eval/") and not is_count_metric(column) and not column.endswith("_std")
        ]
        return sorted(names, key=lambda name: (not name.startswith("eval/test/"), "window_" in name, name))

    def tasks(self) -> list[str]:
        """Return the evaluation tasks (`test`, `transfer`, ...) in the order of metric_names."""
        return list(dict.fromkeys(name.split("/")[1] for name in self.metric_names()))

    def failed_trials(self) -> list[str]:
        """Return each trial that did not finish, with its status and failure reason."""
        if not self.runs.height:
            return []
        unfinished = self.runs.filter(pl.col("status") != "FINISHED").sort("trial")
        return [
            f"{trial} ({status}{': ' + failure.splitlines()[0] if failure else ''})"
            for trial, status, failure in unfinished.select("trial", "status", "failure").iter_rows()
        ]

    def missing_cells(self) -> list[str]:
        """Return the trials of the design that have no finished run."""
        import itertools

        if self.design_cells is not None:
            cells = [tuple(cell[name] for name in self.factors) for cell in self.design_cells]
        else:
            cells = list(itertools.product(*self.factors.values()))
        expected = {
            ",".join(f"{name}={level}" for name, level in zip(self.factors, levels)) + f",seed={seed}"
            for levels in cells
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
        raise FileNotFoundError(
            f"no MLflow store at {uri}; run `ablate run` for the study first, or pass --tracking-uri."
        )
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise FileNotFoundError(
            f"no MLflow experiment named {name!r} in {uri}; is {study_dir} a study folder?"
        )
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
    frame = (
        pl.DataFrame(rows, infer_schema_length=None)
        if rows
        else pl.DataFrame(schema=RUN_COLUMNS)
    )
    cells = parent.data.tags.get(tracking.CELLS)
    design_cells = json.loads(cells) if cells else None
    return StudyRuns(name, uri, parent.info.run_id, factors, seeds, frame, design_cells)


def load_histories(study: StudyRuns, prefixes: tuple[str, ...] = ("train/",)) -> pl.DataFrame:
    """Return the logged history of every metric under `prefixes`, for every trial.

    Columns: run_id, trial, cell, seed, status, one per factor, then
    metric, step, value; one row per logged point. MLflow keeps the full
    history of a metric logged with steps, and `load_study` only the last
    value, so this queries the tracking store once per run and metric.
    """
    client = MlflowClient(study.tracking_uri)
    keys = [column for column in study.runs.columns if column.startswith(prefixes)]
    identity = ["run_id", "trial", "cell", "seed", "status", *study.factors]
    schema = {name: study.runs.schema.get(name, pl.String) for name in identity}
    schema.update({"metric": pl.String, "step": pl.Int64, "value": pl.Float64})
    if not study.runs.height:
        return pl.DataFrame(schema=schema)
    rows = []
    for trial in study.runs.select([*identity, *keys]).iter_rows(named=True):
        for key in keys:
            if trial[key] is None:
                continue
            for point in client.get_metric_history(trial["run_id"], key):
                rows.append(
                    {
                        **{name: trial[name] for name in identity},
                        "metric": key,
                        "step": point.step,
                        "value": point.value,
                    }
                )
    return pl.DataFrame(rows, schema=schema).sort(["metric", "cell", "seed", "step"])
