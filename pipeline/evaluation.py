"""Evaluation tasks of a trained model.

The in-domain task scores held-out recordings of the training classes, per
5-second window and per recording (pooling window logits by mean or max).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import numpy as np

from pipeline import data, metrics
from pipeline.config import Config

# predict(audio [batch, samples]) -> {"logits": ..., "embedding": ...}
Predict = Callable[[np.ndarray], dict]


def embed_windows(predict: Predict, windows: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """Run `predict` over windows in fixed-size batches; the last batch is padded.

    A fixed batch shape means one compiled program for every batch.
    """
    outputs: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        valid = len(chunk)
        if valid < batch_size:
            chunk = np.concatenate([chunk, np.zeros((batch_size - valid,) + chunk.shape[1:], chunk.dtype)])
        for name, value in predict(chunk).items():
            outputs.setdefault(name, []).append(np.asarray(value)[:valid])
    return {name: np.concatenate(parts) for name, parts in outputs.items()}


def pool_by_recording(values: np.ndarray, owners: np.ndarray, pooling: str) -> tuple[np.ndarray, np.ndarray]:
    """Pool window rows into one row per recording; returns (recordings, pooled)."""
    recordings, inverse = np.unique(owners, return_inverse=True)
    pooled = np.zeros((len(recordings), values.shape[1]), values.dtype)
    for position in range(len(recordings)):
        rows = values[inverse == position]
        pooled[position] = rows.max(axis=0) if pooling == "max" else rows.mean(axis=0)
    return recordings, pooled


def evaluate_in_domain(dataset: data.Dataset, config: Config, predict: Predict, task: str = "test") -> dict[str, float]:
    """Score held-out recordings; returns `eval/<task>/<metric>` values."""
    windows, owners = data.evaluation_windows(dataset, config, dataset.evaluation)
    outputs = embed_windows(predict, windows, config.eval.batch_size)
    logits = outputs["logits"]  # [windows, classes]

    scores = {}
    window_scores = metrics.classification_scores(logits, dataset.labels[owners])
    for name, value in window_scores.items():
        scores[f"eval/{task}/window_{name}"] = value
    recordings, pooled = pool_by_recording(logits, owners, config.eval.recording_pooling)
    for name, value in metrics.classification_scores(pooled, dataset.labels[recordings]).items():
        scores[f"eval/{task}/{name}"] = value
    scores[f"eval/{task}/recordings"] = float(len(recordings))
    scores[f"eval/{task}/windows"] = float(len(windows))
    return scores


def run_tasks(dataset: data.Dataset, config: Config, predict: Predict, artifacts: pathlib.Path) -> dict[str, float]:
    """Run every task in `config.eval.tasks`; returns `eval/<task>/<metric>` values.

    Tasks may write files (tables, embeddings) under `artifacts`, which the
    runner attaches to the trial's MLflow run.
    """
    artifacts.mkdir(parents=True, exist_ok=True)
    scores: dict[str, float] = {}
    for task in config.eval.tasks:
        scores.update(TASKS[task](dataset, config, predict, artifacts))
    return scores


def _in_domain_task(dataset: data.Dataset, config: Config, predict: Predict, artifacts: pathlib.Path) -> dict[str, float]:
    return evaluate_in_domain(dataset, config, predict)


# Task name -> function(dataset, config, predict, artifacts folder) -> metrics.
TASKS: dict[str, Callable[..., dict[str, float]]] = {
    "test": _in_domain_task,
}
