"""A study on a two-node Ray cluster started on this machine places trials on both nodes."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from pipeline import cli, tracking
from tests.conftest import INSECTSET32

RAY = str(pathlib.Path(sys.executable).with_name("ray"))

STUDY = f"""
[study]
name = "cluster"
seeds = [0, 1]
cpus_per_trial = 1

[config.data]
root = "{INSECTSET32}"

[config.audio]
window_seconds = 1.0

[config.train]
steps = 2
batch_size = 4
log_every = 1
warmup_steps = 1

[config.eval]
max_windows_per_recording = 1
tasks = ["test"]
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def two_node_cluster(monkeypatch):
    # Nodes on one machine share no token file, so token authentication is off for this local cluster.
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    port = _free_port()
    environment = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    subprocess.run([RAY, "start", "--head", f"--port={port}", "--include-dashboard=false", *common], env=environment, check=True, capture_output=True)
    try:
        subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", *common], env=environment, check=True, capture_output=True)
        yield f"127.0.0.1:{port}"
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        subprocess.run([RAY, "stop", "--force"], env=environment, capture_output=True)


def test_trials_run_on_both_nodes(two_node_cluster, tmp_path):
    study_file = tmp_path / "cluster.toml"
    study_file.write_text(STUDY)
    runs = tmp_path / "shared-storage"

    code = cli.main(["run", str(study_file), "--runs", str(runs), "--address", two_node_cluster])

    assert code == 0
    uri = tracking.default_uri(runs / "cluster")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("cluster")
    trials = client.search_runs([experiment.experiment_id], f"tags.`{tracking.ROLE}` = 'trial'")
    assert [run.info.status for run in trials] == ["FINISHED", "FINISHED"]
    assert len({run.data.tags["ablate.node"] for run in trials}) == 2
