"""MLflow adapter: one parent run per study, one child run per trial.

The driver creates the experiment and the parent run before any trial
starts. Each trial opens (or, after a crash, reopens) the child run that
carries its config hash, so rerunning a study never duplicates a run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import time
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from pipeline.config import flatten

log = logging.getLogger(__name__)

ROLE = "ablate.role"
STUDY = "ablate.study"
CONFIG_HASH = "ablate.config_hash"
CELL = "ablate.cell"
TRIAL = "ablate.trial"
FACTORS = "ablate.factors"
DESIGN = "ablate.design"
CELLS = "ablate.cells"
FAILURE = "ablate.failure"
FAILURE_STEP = "ablate.failure_step"
PARENT = "mlflow.parentRunId"
_BATCH = 100  # MLflow accepts at most 100 params per log_batch call.


def default_uri(study_dir: pathlib.Path) -> str:
    """Return MLFLOW_TRACKING_URI if set, else a SQLite store in the study folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{study_dir.resolve() / 'mlflow.db'}"


def _experiment_id(client: MlflowClient, name: str, artifact_root: pathlib.Path | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    location = artifact_root.resolve().as_uri() if artifact_root else None
    return client.create_experiment(name, artifact_location=location)


def start_study(
    uri: str,
    name: str,
    factors: dict[str, list[str]],
    seeds: list[int],
    study_file: pathlib.Path,
    artifact_root: pathlib.Path | None,
    *,
    design: str = "full_factorial",
    cells: list[dict[str, str]] | None = None,
) -> tuple[str, str]:
    """Create or reopen the study's experiment and parent run; returns their ids.

    The parent run records the design, its cells and the seeds, so the
    analysis can list the trials the design requires.
    """
    client = MlflowClient(uri)
    experiment_id = _experiment_id(client, name, artifact_root)
    existing = client.search_runs(
        [experiment_id], filter_string=f"tags.`{ROLE}` = 'study'", max_results=1, order_by=["attributes.start_time DESC"]
    )
    if existing:
        run_id = existing[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        tags = {ROLE: "study", STUDY: name, FACTORS: json.dumps(factors), "mlflow.runName": name}
        run_id = client.create_run(experiment_id, tags=tags, run_name=name).info.run_id
        client.log_param(run_id, "seeds", json.dumps(seeds))
        client.log_param(run_id, "factors", json.dumps(factors))
        client.log_artifact(run_id, str(study_file))
    client.set_tag(run_id, DESIGN, design)
    if cells is not None:
        text = json.dumps(cells)
        client.log_text(run_id, text, "design_cells.json")
        # MLflow tags hold at most 5000 characters; larger designs keep only the artifact.
        if len(text) <= 5000:
            client.set_tag(run_id, CELLS, text)
    return experiment_id, run_id


def end_study(uri: str, run_id: str, failed: int, wall_seconds: float | None = None, slots: int | None = None) -> None:
    """Mark the parent run finished, with this session's wall time and trial slots."""
    client = MlflowClient(uri)
    client.set_tag(run_id, "ablate.failed_trials", str(failed))
    if wall_seconds is not None:
        client.log_metric(run_id, "study/wall_seconds", wall_seconds)
    if slots is not None:
        client.log_metric(run_id, "study/slots", float(slots))
    client.set_terminated(run_id, status="FINISHED")


def child_runs(uri: str, experiment_id: str, parent_run_id: str) -> list[mlflow.entities.Run]:
    client = MlflowClient(uri)
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=f"tags.`{PARENT}` = '{parent_run_id}'", max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def finished_hashes(uri: str, experiment_id: str, parent_run_id: str) -> set[str]:
    """Return the config hashes of trials whose child run finished."""
    return {
        run.data.tags[CONFIG_HASH]
        for run in child_runs(uri, experiment_id, parent_run_id)
        if run.info.status == "FINISHED" and CONFIG_HASH in run.data.tags
    }


class TrialRun:
    """The child run of one trial; logs metrics and closes with a status."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, payload: dict[str, Any]):
        self.client = MlflowClient(uri)
        self.run_id = self._open(experiment_id, parent_run_id, payload)
        self.last_step = 0
        self._logged_at_last_step: dict[str, float] = {}

    def _open(self, experiment_id: str, parent_run_id: str, payload: dict[str, Any]) -> str:
        config_hash = payload["config_hash"]
        existing = self.client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{PARENT}` = '{parent_run_id}' and tags.`{CONFIG_HASH}` = '{config_hash}'",
            max_results=10,
        )
        for run in existing:
            if run.info.status != "FINISHED":
                # A run left by a killed or failed attempt: continue it.
                self.client.update_run(run.info.run_id, status="RUNNING")
                self.client.set_tag(run.info.run_id, "ablate.attempts", str(int(run.data.tags.get("ablate.attempts", "1")) + 1))
                return run.info.run_id
        tags = {
            PARENT: parent_run_id,
            ROLE: "trial",
            CONFIG_HASH: config_hash,
            CELL: payload["cell_id"],
            TRIAL: payload["trial_id"],
            "seed": str(payload["seed"]),
            "ablate.attempts": "1",
        }
        tags.update({f"factor.{name}": level for name, level in payload["cell"].items()})
        run = self.client.create_run(experiment_id, tags=tags, run_name=payload["trial_id"])
        params = {f"factor.{name}": level for name, level in payload["cell"].items()}
        params["seed"] = payload["seed"]
        params.update({f"config.{key}": value for key, value in flatten(payload["config"]).items()})
        items = [Param(key, str(value)[:6000]) for key, value in params.items()]
        for start in range(0, len(items), _BATCH):
            self.client.log_batch(run.info.run_id, params=items[start : start + _BATCH])
        return run.info.run_id

    def log_metrics(self, metrics: dict[str, float], step: int | None) -> None:
        """Log scalar metrics; final metrics (step None) go at the last step seen.

        A final metric already logged at that step with the same value is not
        logged twice, so learning curves keep one point per step.
        """
        if step is None:
            step = self.last_step
            metrics = {key: value for key, value in metrics.items() if self._logged_at_last_step.get(key) != value}
        elif step > self.last_step:
            self.last_step = step
            self._logged_at_last_step = {}
        self._logged_at_last_step.update(metrics)
        now = int(time.time() * 1000)
        rows = [
            Metric(key, float(value), now, step)
            for key, value in metrics.items()
            if isinstance(value, (int, float)) and math.isfinite(value)
        ]
        for start in range(0, len(rows), 1000):
            self.client.log_batch(self.run_id, metrics=rows[start : start + 1000])

    def log_artifacts(self, workdir: pathlib.Path) -> None:
        """Attach the trial's config, final metrics and `artifacts/` folder to its run."""
        for name in ("config.json", "metrics.json"):
            if (workdir / name).exists():
                self.client.log_artifact(self.run_id, str(workdir / name))
        if (workdir / "artifacts").is_dir() and any((workdir / "artifacts").iterdir()):
            self.client.log_artifacts(self.run_id, str(workdir / "artifacts"), artifact_path="artifacts")

    def finish(self) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED")

    def fail(self, reason: str, step: int | None = None) -> None:
        tags = [RunTag(FAILURE, reason[:5000])]
        if step is not None:
            tags.append(RunTag(FAILURE_STEP, str(step)))
        self.client.log_batch(self.run_id, tags=tags)
        self.client.set_terminated(self.run_id, status="FAILED")
