"""A study whose driver is killed with SIGKILL resumes without rerunning or duplicating trials."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from pipeline import tracking
from tests.conftest import INSECTSET32

STUDY = f"""
[study]
name = "killed"
seeds = [0, 1, 2]
max_concurrent_trials = 1
checkpoint_every = 1

[config.data]
root = "{INSECTSET32}"

[config.audio]
window_seconds = 1.0

[config.train]
steps = 3
batch_size = 4
log_every = 1
warmup_steps = 1

[config.eval]
max_windows_per_recording = 1
"""


def _child_statuses(uri: str) -> list[str]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("killed")
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], f"tags.`{tracking.ROLE}` = 'trial'")
    return [run.info.status for run in runs]


def _ray_workers_alive() -> bool:
    listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return "ray::ImplicitFunc" in listing


def test_killed_driver_resumes_only_missing_trials(tmp_path):
    study_file = tmp_path / "killed.toml"
    study_file.write_text(STUDY)
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "pipeline.cli", "run", str(study_file), "--runs", str(runs)]
    uri = tracking.default_uri(runs / "killed")

    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while _child_statuses(uri).count("FINISHED") < 1:
        assert driver.poll() is None, "the study ended before it could be killed"
        assert time.monotonic() < deadline, "no trial finished within 10 minutes"
        time.sleep(1)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    finished_before = _child_statuses(uri).count("FINISHED")
    assert finished_before < 3, "every trial finished before the kill; the test needs a slower study"

    deadline = time.monotonic() + 60
    while _ray_workers_alive() and time.monotonic() < deadline:
        time.sleep(1)

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=900)

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{finished_before} already finished, {3 - finished_before} to run" in resumed.stdout
    statuses = _child_statuses(uri)
    assert statuses == ["FINISHED"] * 3, statuses
