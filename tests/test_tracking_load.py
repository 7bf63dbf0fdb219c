"""Sixteen trials logging at full rate at once lose no metric, on SQLite and on a server."""

from __future__ import annotations

import multiprocessing
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from pipeline import tracking

TRIALS = 16
STEPS = 20
METRICS = 5


def _log_trial(uri: str, experiment_id: str, parent_run_id: str, index: int) -> str:
    payload = {
        "cell": {"load": str(index)},
        "cell_id": f"load={index}",
        "trial_id": f"load={index},seed=0",
        "seed": 0,
        "config": {"seed": 0},
        "config_hash": f"hash{index:02d}",
    }
    run = tracking.TrialRun(uri, experiment_id, parent_run_id, payload)
    for step in range(1, STEPS + 1):
        run.log_metrics({f"train/metric_{number}": float(step * number) for number in range(METRICS)}, step)
    run.finish()
    return run.run_id


def _hammer(uri: str, tmp_path: pathlib.Path) -> None:
    study_file = tmp_path / "load.toml"
    study_file.write_text("[study]\nname = 'load'\n")
    experiment_id, parent_run_id = tracking.start_study(uri, "load", {"load": ["0"]}, [0], study_file, None)
    context = multiprocessing.get_context("spawn")
    with context.Pool(TRIALS) as pool:
        run_ids = pool.starmap(_log_trial, [(uri, experiment_id, parent_run_id, index) for index in range(TRIALS)])

    client = MlflowClient(uri)
    assert len(set(run_ids)) == TRIALS
    for run_id in run_ids:
        assert client.get_run(run_id).info.status == "FINISHED"
        for number in range(METRICS):
            history = client.get_metric_history(run_id, f"train/metric_{number}")
            assert sorted(metric.step for metric in history) == list(range(1, STEPS + 1))


def test_sqlite_store_under_concurrent_trials(tmp_path):
    _hammer(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path)


@pytest.fixture
def tracking_server(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mlflow = pathlib.Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen(
        [
            str(mlflow), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination", (tmp_path / "artifacts").as_uri(),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(uri + "/health", timeout=2).read()
            break
        except OSError:
            assert server.poll() is None, "the MLflow server exited at start"
            assert time.monotonic() < deadline, "the MLflow server did not answer within 120 s"
            time.sleep(0.5)
    yield uri
    server.terminate()
    server.wait(timeout=30)


def test_tracking_server_under_concurrent_trials(tracking_server, tmp_path):
    _hammer(tracking_server, tmp_path)
