"""A tiny study through real Ray Tune, a real MLflow store and the analysis."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from pipeline import bench, cli, tracking
from tests.conftest import INSECTSET32

STUDY = f"""
[study]
name = "tiny"
seeds = [0, 1]
cpus_per_trial = 1

[config.data]
root = "{INSECTSET32}"

[config.audio]
window_seconds = 2.0

[config.train]
steps = 2
batch_size = 4
log_every = 1
warmup_steps = 1

[config.eval]
max_windows_per_recording = 1

[factors]
source_loss = ["off", "on"]
"""


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    study_file = folder / "tiny.toml"
    study_file.write_text(STUDY)
    runs = folder / "runs"

    code = cli.main(["run", str(study_file), "--runs", str(runs)])

    return code, study_file, runs


def test_study_creates_parent_and_child_runs(finished_study):
    code, _, runs = finished_study
    assert code == 0

    client = MlflowClient(tracking.default_uri(runs / "tiny"))
    experiment = client.get_experiment_by_name("tiny")
    parents = client.search_runs([experiment.experiment_id], f"tags.`{tracking.ROLE}` = 'study'")
    children = tracking.child_runs(tracking.default_uri(runs / "tiny"), experiment.experiment_id, parents[0].info.run_id)

    assert len(parents) == 1
    assert len(children) == 4
    assert {run.info.status for run in children} == {"FINISHED"}
    for run in children:
        assert {"eval/test/cmap", "eval/test/auroc", "eval/test/top1"} <= set(run.data.metrics)
        assert run.data.params["factor.source_loss"] in ("off", "on")
        assert run.data.tags["seed"] in ("0", "1")
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert [metric.step for metric in history] == [2]


def test_rerun_skips_finished_trials(finished_study, capsys):
    _, study_file, runs = finished_study

    code = cli.main(["run", str(study_file), "--runs", str(runs)])

    assert code == 0
    assert "4 already finished, 0 to run" in capsys.readouterr().out


def test_analyze_writes_effects_table_and_chart(finished_study, capsys):
    _, _, runs = finished_study

    code = cli.main(["analyze", str(runs / "tiny")])

    assert code == 0
    analysis = runs / "tiny" / "analysis"
    assert (analysis / "effects.csv").exists()
    assert (analysis / "effects.png").stat().st_size > 1000
    assert "source_loss: on vs off" in capsys.readouterr().out


def test_status_reports_finished_study(finished_study, capsys):
    _, _, runs = finished_study

    code = cli.main(["status", str(runs / "tiny")])

    assert code == 0
    assert "4/4 trials done, 0 running, 0 failed, 0 waiting" in capsys.readouterr().out


def test_bench_splits_study_overhead(finished_study):
    _, _, runs = finished_study

    measured = bench.study_overhead(runs / "tiny")

    assert measured["trials"] == 4
    assert measured["cells"] == 2
    assert measured["slots"] >= 1
    assert measured["wall_seconds"] > 0
    assert measured["sum_train_seconds"] > 0
    assert measured["sum_eval_seconds"] > 0
    assert abs(measured["inside_trials_share"] + measured["between_trials_share"] - measured["overhead_share"]) < 1e-9
    assert 0.0 < measured["overhead_share"] < 1.0


def test_later_seeds_hit_compilation_cache(finished_study):
    _, _, runs = finished_study
    client = MlflowClient(tracking.default_uri(runs / "tiny"))
    experiment = client.get_experiment_by_name("tiny")
    runs_by_seed = {"0": [], "1": []}
    for run in client.search_runs([experiment.experiment_id], f"tags.`{tracking.ROLE}` = 'trial'"):
        runs_by_seed[run.data.tags["seed"]].append(run.data.metrics)

    # Trials start seed by seed, so seed 0 of each cell compiles first and
    # seed 1 finds the training step in the shared cache.
    assert all(metrics["compile/programs"] > 0 for metrics in runs_by_seed["0"] + runs_by_seed["1"])
    assert sum(metrics["compile/cache_hits"] for metrics in runs_by_seed["1"]) > 0
