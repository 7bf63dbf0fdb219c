"""Evaluation tasks of a trained model: in-domain, few-shot transfer and detection.

- "test" scores held-out recordings of the training classes by cmAP, macro
  ROC AUC and top-1, per 5-second window and per recording (window logits
  pooled by mean or max). Logits are restricted to the training classes, as
  BirdSet restricts them to the species of each test set.
- "transfer" fits linear and prototypical probes on frozen embeddings of k
  recordings per class over seeded draws (`pipeline.probes`). It probes the
  classes that the training subset left out, or every class when the run
  trained on all of them.
- "detection" scores windows of soundscapes with strong labels by cmAP
  (`pipeline.soundscapes`), synthesized from held-out test clips unless
  `eval.detection_annotations` names real ones.

Every task returns `eval/<task>/<metric>` values and writes a per-class
Parquet table under the artifacts folder, which the runner attaches to the
trial's MLflow run.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time
from collections.abc import Callable

import numpy as np
import polars as pl

from pipeline import data, metrics, probes, soundscapes
from pipeline.config import EVAL_TASKS, Config

log = logging.getLogger(__name__)

# predict(audio [batch, samples]) -> {"logits": ..., "embedding": ..., optionally "prototype_logits"}
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


def recording_window_starts(length: int, window: int, count: int) -> np.ndarray:
    """Return the starts of up to `count` evenly spaced windows of a recording.

    The same windows as `pipeline.data.evaluation_windows` cuts, so tasks
    that ask for fewer windows of a recording share its first and last.
    """
    count = max(1, min(count, -(-length // window)))
    if count == 1:
        return np.zeros(1, np.int64)
    return np.linspace(0, max(0, length - window), count).round().astype(np.int64)


class WindowEmbedder:
    """Runs `predict` over windows of stored recordings, each window at most once.

    `run_tasks` shares one embedder among the tasks of an evaluation, so a
    window that two tasks score is embedded once. Its cache is keyed by store
    index, so one embedder serves one dataset. Calling it runs `predict`.
    """

    def __init__(self, predict: Predict, batch_size: int):
        self.predict = predict
        self.batch_size = batch_size
        # (store index, start sample, window samples) -> {output name: row}
        self._rows: dict[tuple[int, int, int], dict[str, np.ndarray]] = {}

    def __call__(self, audio: np.ndarray) -> dict:
        return self.predict(audio)

    def recordings(
        self, dataset: data.Dataset, indices: np.ndarray, windows_per_recording: int, window: int
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Embed up to `windows_per_recording` windows of each recording.

        Returns the outputs {name: [windows, ...]}, the store index of each
        window and its start sample.
        """
        keys = []
        for index in indices:
            starts = recording_window_starts(dataset.store.length(int(index)), window, windows_per_recording)
            keys.extend((int(index), int(start), window) for start in starts)
        missing = [key for key in dict.fromkeys(keys) if key not in self._rows]
        if missing:
            windows = np.stack([dataset.store.segment(index, start, window) for index, start, _ in missing])
            outputs = embed_windows(self.predict, windows, self.batch_size)
            for row, key in enumerate(missing):
                self._rows[key] = {name: values[row] for name, values in outputs.items()}
        names = self._rows[keys[0]].keys() if keys else ()
        stacked = {name: np.stack([self._rows[key][name] for key in keys]) for name in names}
        owners = np.asarray([index for index, _, _ in keys], np.int64)
        starts = np.asarray([start for _, start, _ in keys], np.int64)
        return stacked, owners, starts


def as_embedder(predict: Predict, config: Config) -> WindowEmbedder:
    """Return `predict` if it is a WindowEmbedder, else a new one around it."""
    return predict if isinstance(predict, WindowEmbedder) else WindowEmbedder(predict, config.eval.batch_size)


def task_classes(dataset: data.Dataset) -> np.ndarray:
    """Return the indices of the classes with a recording in the training subset."""
    return np.flatnonzero(dataset.labels[dataset.train].sum(axis=0) > 0)


def primary_class(dataset: data.Dataset, indices: np.ndarray) -> np.ndarray:
    """Return the class index of each recording's primary label."""
    return dataset.labels[indices].argmax(axis=1)


def write_table(table: pl.DataFrame, artifacts: pathlib.Path | None, name: str) -> None:
    """Write a table as `<artifacts>/<name>.parquet` when there is an artifacts folder."""
    if artifacts is not None:
        artifacts.mkdir(parents=True, exist_ok=True)
        table.write_parquet(artifacts / f"{name}.parquet")


def _prefixed(task: str, values: dict[str, float], prefix: str = "") -> dict[str, float]:
    return {f"eval/{task}/{prefix}{name}": value for name, value in values.items()}


# The in-domain task.


def evaluate_in_domain(
    dataset: data.Dataset,
    config: Config,
    predict: Predict,
    task: str = "test",
    artifacts: pathlib.Path | None = None,
) -> dict[str, float]:
    """Score held-out recordings of the training classes; returns `eval/<task>/<metric>` values.

    With an artifacts folder it writes `<task>_per_class.parquet` and the
    embeddings and logits of every window as `<task>_embeddings.parquet`.
    """
    classes = task_classes(dataset)
    evaluation = dataset.evaluation[dataset.labels[dataset.evaluation][:, classes].sum(axis=1) > 0]
    counts = {f"eval/{task}/classes": float(len(classes)), f"eval/{task}/recordings": float(len(evaluation))}
    if len(evaluation) == 0:
        log.warning("In-domain task skipped: no evaluation recording belongs to a training class.")
        return counts

    outputs, owners, starts = as_embedder(predict, config).recordings(
        dataset, evaluation, config.eval.max_windows_per_recording, config.audio.window_samples
    )
    logits = outputs["logits"][:, classes]  # [windows, task classes]
    labels = dataset.labels[owners][:, classes]  # [windows, task classes]
    recordings, pooled = pool_by_recording(logits, owners, config.eval.recording_pooling)
    recording_labels = dataset.labels[recordings][:, classes]  # [recordings, task classes]

    class_names = [dataset.classes[index] for index in classes]
    window_scores, window_table = metrics.classification_report(logits, labels, class_names)
    recording_scores, recording_table = metrics.classification_report(pooled, recording_labels, class_names)
    scores = {**_prefixed(task, window_scores, "window_"), **_prefixed(task, recording_scores), **counts}
    scores[f"eval/{task}/windows"] = float(len(owners))

    table = pl.concat(
        [
            window_table.with_columns(level=pl.lit("window")),
            recording_table.with_columns(level=pl.lit("recording")),
        ]
    )
    write_table(table.select("level", pl.exclude("level")), artifacts, f"{task}_per_class")
    if artifacts is not None:
        export_windows(artifacts / f"{task}_embeddings.parquet", dataset, config, outputs, owners, starts)
    return scores


def export_windows(
    path: pathlib.Path,
    dataset: data.Dataset,
    config: Config,
    outputs: dict[str, np.ndarray],
    owners: np.ndarray,
    starts: np.ndarray,
) -> None:
    """Write one row per window: its recording, label, start, embedding and logits.

    The logits cover every class of the model; their order is the JSON list
    under the file's key-value metadata key "classes"
    (`polars.read_parquet_metadata`).
    """
    rows = dataset.recordings.select("store_index", "path", "label", "split")
    owners_frame = pl.DataFrame({"window": np.arange(len(owners)), "store_index": owners})
    table = owners_frame.join(rows, on="store_index", how="left").sort("window")
    table = table.with_columns(pl.Series("start_seconds", starts / config.audio.sample_rate_hz))
    for name, values in outputs.items():
        table = table.with_columns(pl.Series(name, np.asarray(values, np.float32)))
    table.write_parquet(path, metadata={"classes": json.dumps(dataset.classes)})


def _in_domain_task(
    dataset: data.Dataset, config: Config, predict: Predict, artifacts: pathlib.Path
) -> dict[str, float]:
    return evaluate_in_domain(dataset, config, predict, "test", artifacts)


# The few-shot transfer task.


def probe_classes(dataset: data.Dataset) -> tuple[np.ndarray, bool]:
    """Return the classes to probe and whether they are held out of training.

    When the training subset leaves classes out, those are probed (for
    example train on Cicadidae, probe Orthoptera); otherwise every class is.
    """
    trained = set(task_classes(dataset).tolist())
    held_out = np.asarray([index for index in range(dataset.num_classes) if index not in trained], np.int64)
    if len(held_out):
        return held_out, True
    return np.arange(dataset.num_classes), False


def _probe_recordings(
    dataset: data.Dataset, config: Config, classes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return store indices of the train-split and evaluation recordings of `classes`.

    The train split is taken before the training subset, because the
    subset removes the held-out classes that the probes need.
    """
    train_rows = dataset.recordings.filter(pl.col("split") == config.data.train_split)
    train_split = np.sort(train_rows["store_index"].to_numpy())
    train = train_split[np.isin(primary_class(dataset, train_split), classes)]
    test = dataset.evaluation[np.isin(primary_class(dataset, dataset.evaluation), classes)]
    return train, test


def _recording_embeddings(
    embedder: WindowEmbedder, dataset: data.Dataset, config: Config, indices: np.ndarray
) -> np.ndarray:
    """Return the mean embedding of each recording's windows, [recordings, channels], ordered as `indices`."""
    outputs, owners, _ = embedder.recordings(
        dataset, indices, config.eval.transfer_windows_per_recording, config.audio.window_samples
    )
    recordings, pooled = pool_by_recording(outputs["embedding"], owners, "mean")
    return pooled[np.searchsorted(recordings, indices)]


def evaluate_transfer(
    dataset: data.Dataset, config: Config, predict: Predict, artifacts: pathlib.Path | None = None
) -> dict[str, float]:
    """Fit few-shot probes on frozen embeddings; returns `eval/transfer/<metric>` values.

    Probes train on train-split recordings and are scored on evaluation
    recordings of the probed classes. A class without a train-split
    recording cannot be probed and is left out. Writes
    `transfer_per_class.parquet` and `transfer_embeddings.parquet`.
    """
    classes, held_out = probe_classes(dataset)
    classes = _classes_with_train_recordings(dataset, config, classes)
    train, test = _probe_recordings(dataset, config, classes)
    scores = {
        "eval/transfer/classes": float(len(classes)),
        "eval/transfer/held_out_classes": float(held_out),
        "eval/transfer/train_recordings": float(len(train)),
        "eval/transfer/test_recordings": float(len(test)),
    }
    if len(classes) < 2 or len(test) == 0:
        log.warning(
            "Transfer task skipped: it needs two classes with train-split recordings and one evaluation "
            "recording, and found %d classes and %d evaluation recordings.",
            len(classes),
            len(test),
        )
        return scores

    embedder = as_embedder(predict, config)
    position = {int(index): row for row, index in enumerate(classes)}
    probe_data = probes.ProbeData(
        train_embeddings=_recording_embeddings(embedder, dataset, config, train),
        train_classes=np.asarray([position[int(label)] for label in primary_class(dataset, train)]),
        test_embeddings=_recording_embeddings(embedder, dataset, config, test),
        test_classes=np.asarray([position[int(label)] for label in primary_class(dataset, test)]),
        class_names=[dataset.classes[index] for index in classes],
    )
    probe_scores, table = probes.evaluate_probes(probe_data, config.eval)
    scores.update(_prefixed("transfer", probe_scores))
    write_table(table, artifacts, "transfer_per_class")
    if artifacts is not None:
        _export_recordings(artifacts / "transfer_embeddings.parquet", dataset, probe_data, train, test)
    return scores


def _classes_with_train_recordings(dataset: data.Dataset, config: Config, classes: np.ndarray) -> np.ndarray:
    """Return the classes that have a train-split recording, logging the others."""
    train, _ = _probe_recordings(dataset, config, classes)
    probed = np.unique(primary_class(dataset, train))
    left_out = sorted(set(classes.tolist()) - set(probed.tolist()))
    if left_out:
        log.warning(
            "Transfer probes leave out %d classes without train-split recordings: %s",
            len(left_out),
            ", ".join(dataset.classes[index] for index in left_out),
        )
    return probed


def _export_recordings(
    path: pathlib.Path,
    dataset: data.Dataset,
    probe_data: probes.ProbeData,
    train: np.ndarray,
    test: np.ndarray,
) -> None:
    """Write the pooled embedding of each probe recording with its path, label and split."""
    indices = np.concatenate([train, test])
    rows = dataset.recordings.select("store_index", "path", "label", "split")
    table = pl.DataFrame({"order": np.arange(len(indices)), "store_index": indices})
    table = table.join(rows, on="store_index", how="left").sort("order").drop("order")
    embeddings = np.concatenate([probe_data.train_embeddings, probe_data.test_embeddings]).astype(np.float32)
    table.with_columns(pl.Series("embedding", embeddings)).write_parquet(path)


# The detection task.


def evaluate_detection(
    dataset: data.Dataset, config: Config, predict: Predict, artifacts: pathlib.Path | None = None
) -> dict[str, float]:
    """Score windows of soundscapes against their strong labels; returns `eval/detection/<metric>` values.

    Logits are restricted to the training classes that the events name.
    Writes `detection_per_class.parquet` and the events as
    `detection_events.parquet`.
    """
    settings = config.eval
    if settings.detection_annotations:
        detection_set = soundscapes.load(settings, config.audio.sample_rate_hz)
    else:
        detection_set = soundscapes.synthesize(dataset, task_classes(dataset), settings)
    classes = _detection_classes(dataset, detection_set.events)
    class_names = [dataset.classes[index] for index in classes]

    logits, owners, starts = _soundscape_logits(detection_set, config, predict)
    logits = logits[:, classes]  # [windows, detection classes]
    labels = soundscapes.window_labels(
        detection_set.events,
        owners,
        starts,
        config.audio.window_seconds,
        class_names,
        settings.detection_min_overlap_seconds,
    )  # [windows, detection classes]

    summary, table = metrics.classification_report(logits, labels, class_names)
    scores = _prefixed("detection", summary)
    scores["eval/detection/classes"] = float(len(classes))
    scores["eval/detection/soundscapes"] = float(len(detection_set.soundscapes))
    scores["eval/detection/windows"] = float(len(owners))
    scores["eval/detection/events"] = float(detection_set.events["label"].is_in(class_names).sum())
    write_table(table, artifacts, "detection_per_class")
    write_table(detection_set.events, artifacts, "detection_events")
    return scores


def _detection_classes(dataset: data.Dataset, events: pl.DataFrame) -> np.ndarray:
    """Return the training classes that the events name, logging event labels outside them."""
    named = set(events["label"].drop_nulls().to_list())
    trained = task_classes(dataset)
    unknown = sorted(named - {dataset.classes[index] for index in trained})
    if unknown:
        log.warning(
            "Detection events of %d labels outside the training classes are ignored: %s",
            len(unknown),
            ", ".join(unknown),
        )
    return np.asarray([index for index in trained if dataset.classes[index] in named], np.int64)


def _soundscape_logits(
    detection_set: soundscapes.DetectionSet, config: Config, predict: Predict
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Return the logits [windows, classes], the soundscape name and the start in seconds of each window."""
    window = config.audio.window_samples
    hop = max(1, int(round(config.eval.detection_hop_seconds * detection_set.sample_rate_hz)))
    logits, owners, starts = [], [], []
    for soundscape in detection_set.soundscapes:
        windows, window_starts = soundscapes.cut_windows(soundscape, window, hop)
        logits.append(embed_windows(predict, windows, config.eval.batch_size)["logits"])
        owners.extend([soundscape.name] * len(windows))
        starts.append(window_starts / detection_set.sample_rate_hz)
    return np.concatenate(logits), owners, np.concatenate(starts)


# The registry.


def run_tasks(
    dataset: data.Dataset, config: Config, predict: Predict, artifacts: pathlib.Path
) -> dict[str, float]:
    """Run every task in `config.eval.tasks`; returns `eval/<task>/<metric>` values.

    The tasks share one WindowEmbedder, so a window is embedded once. Each
    task's seconds are returned as `time/eval_<task>_seconds`.
    """
    artifacts.mkdir(parents=True, exist_ok=True)
    embedder = as_embedder(predict, config)
    scores: dict[str, float] = {}
    for task in config.eval.tasks:
        began = time.perf_counter()
        scores.update(TASKS[task](dataset, config, embedder, artifacts))
        scores[f"time/eval_{task}_seconds"] = time.perf_counter() - began
    return scores


# Task name -> function(dataset, config, predict, artifacts folder) -> metrics.
TASKS: dict[str, Callable[..., dict[str, float]]] = {
    "test": _in_domain_task,
    "transfer": evaluate_transfer,
    "detection": evaluate_detection,
}
assert tuple(TASKS) == EVAL_TASKS, (
    "pipeline.config.EVAL_TASKS must list the tasks of pipeline.evaluation.TASKS"
)
