"""A study on a two-node Ray cluster started on this machine places trials on both nodes."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time

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


def _start_node(arguments: list[str], temp_dir: str, environment: dict[str, str]) -> subprocess.Popen:
    """Start one Ray node in the foreground, in its own process group, so the test can stop just it."""
    command = [RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats", *arguments]
    if temp_dir:
        command.append(f"--temp-dir={temp_dir}")
    return subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _wait_for_nodes(address: str, count: int, timeout_seconds: float = 180) -> None:
    import ray

    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        try:
            ray.init(address=address, log_to_driver=False)
            alive = sum(1 for node in ray.nodes() if node["Alive"])
            ray.shutdown()
            if alive >= count:
                return
        except (ConnectionError, RuntimeError):
            pass
        time.sleep(2)
    raise TimeoutError(f"the Ray cluster at {address} did not reach {count} nodes in {timeout_seconds} s")


@pytest.fixture
def two_node_cluster(monkeypatch):
    # Nodes on one machine share no token file, so token authentication is off for this local cluster.
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    environment = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    port = _free_port()
    # A short private folder keeps socket paths short and leaves other Ray instances alone.
    temp_dir = tempfile.mkdtemp(prefix="ray")
    head = _start_node(["--head", f"--port={port}", "--include-dashboard=false"], temp_dir, environment)
    worker = None
    try:
        time.sleep(5)
        worker = _start_node([f"--address=127.0.0.1:{port}"], "", environment)
        _wait_for_nodes(f"127.0.0.1:{port}", 2)
        yield f"127.0.0.1:{port}"
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        for node in (worker, head):
            if node is not None and node.poll() is None:
                os.killpg(node.pid, signal.SIGTERM)
                try:
                    node.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(node.pid, signal.SIGKILL)


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
