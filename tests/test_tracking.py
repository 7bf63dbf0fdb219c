"""The MLflow child run of a trial: final metrics land at the last step, once."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from pipeline import tracking


def test_final_metrics_are_logged_once_at_last_step(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study_file = tmp_path / "s.toml"
    study_file.write_text("[study]\nname = 's'\n")
    experiment_id, parent = tracking.start_study(uri, "s", {"f": ["a", "b"]}, [0], study_file, None)
    payload = {"cell": {"f": "a"}, "cell_id": "f=a", "trial_id": "f=a,seed=0", "seed": 0, "config": {"seed": 0}, "config_hash": "h"}
    run = tracking.TrialRun(uri, experiment_id, parent, payload)

    run.log_metrics({"train/loss": 2.0}, 1)
    run.log_metrics({"train/loss": 1.0}, 2)
    run.log_metrics({"train/loss": 1.0, "eval/test/top1": 0.5}, None)
    run.finish()

    client = MlflowClient(uri)
    assert [metric.step for metric in client.get_metric_history(run.run_id, "train/loss")] == [1, 2]
    assert [metric.step for metric in client.get_metric_history(run.run_id, "eval/test/top1")] == [2]
    assert client.get_run(run.run_id).data.tags["factor.f"] == "a"
