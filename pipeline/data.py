"""The dataset of a run and its grain input pipeline.

`prepare_dataset` reads the manifests, decodes (or opens the cached) audio,
fixes the class list and applies the training subset. `train_batches` cuts
5-second windows from training recordings, one batch per step; a batch is a
pure function of the seed and the step, so a resumed run reads the same data.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pathlib
import re
from collections.abc import Iterator

import grain
import numpy as np
import polars as pl

from pipeline import audio
from pipeline.config import Config, ConfigError, SubsetConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Dataset:
    """Decoded recordings with their labels, split into training and evaluation."""

    store: audio.AudioStore
    # One row per decoded recording, aligned with the store's indices.
    recordings: pl.DataFrame
    classes: list[str]
    # Store indices of the training recordings after the subset is applied.
    train: np.ndarray
    # Store indices of the evaluation recordings (never subset).
    evaluation: np.ndarray
    # Multi-hot primary labels and secondary labels, [recordings, classes].
    labels: np.ndarray
    secondary: np.ndarray
    report: audio.ManifestReport
    failed: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_sources(self) -> int:
        """Number of training recordings, the classes of the source-prediction loss."""
        return len(self.train)


def resolve_root(config: Config, base_dir: pathlib.Path) -> pathlib.Path:
    root = pathlib.Path(config.data.root).expanduser()
    return root if root.is_absolute() else (base_dir / root).resolve()


def _split_labels(text: str) -> list[str]:
    """Split a secondary-label cell: on semicolons when it has any, else on commas and spaces."""
    separator = r";" if ";" in text else r"[,\s]+"
    return [part.strip() for part in re.split(separator, text.strip()) if part.strip()]


def prepare_dataset(config: Config, base_dir: pathlib.Path, cache_dir: pathlib.Path) -> Dataset:
    """Read, decode and split the data a run trains and evaluates on.

    `base_dir` resolves a relative `data.root`; `cache_dir` stores decoded
    audio unless `data.cache_dir` names another folder.
    """
    root = resolve_root(config, base_dir)
    report = audio.read_manifest(config.data, root)
    if config.data.cache_dir:
        cache_dir = pathlib.Path(config.data.cache_dir).expanduser()
    paths = report.recordings["path"].to_list()
    store, failed = audio.build_store(paths, config.audio.sample_rate_hz, cache_dir)
    if failed:
        log.warning("%d recordings could not be decoded and are skipped: %s", len(failed), ", ".join(failed))

    position = {path: i for i, path in enumerate(store.paths)}
    recordings = report.recordings.filter(pl.col("path").is_in(list(position)))
    recordings = recordings.with_columns(
        pl.col("path").replace_strict(position, return_dtype=pl.Int64).alias("store_index")
    ).sort("store_index")

    classes = sorted(set(recordings["label"].to_list()))
    class_index = {name: i for i, name in enumerate(classes)}
    labels = np.zeros((len(store), len(classes)), np.float32)
    secondary = np.zeros((len(store), len(classes)), np.float32)
    for row in recordings.iter_rows(named=True):
        labels[row["store_index"], class_index[row["label"]]] = 1.0
        for name in _split_labels(row["secondary"]):
            if name in class_index and name != row["label"]:
                secondary[row["store_index"], class_index[name]] = 1.0

    splits = recordings["split"].to_numpy()
    store_index = recordings["store_index"].to_numpy()
    train_rows = recordings.filter(pl.col("split") == config.data.train_split)
    train_rows = apply_subset(train_rows, config.subset, config.seed)
    evaluation = store_index[splits == config.data.eval_split]
    single = train_rows.group_by("label").len().filter(pl.col("len") == 1)["label"].to_list()
    if single:
        log.warning(
            "%d classes have a single training recording, so every window of them comes from it: %s",
            len(single),
            ", ".join(sorted(single)),
        )
    for name, indices, split in (
        ("training", train_rows, config.data.train_split),
        ("evaluation", evaluation, config.data.eval_split),
    ):
        if len(indices) == 0:
            raise ConfigError(
                f"the {name} split {split!r} has no recordings; the manifest's splits are "
                f"{', '.join(sorted(set(splits)))}. Set data.train_split and data.eval_split."
            )
    return Dataset(
        store=store,
        recordings=recordings,
        classes=classes,
        train=train_rows["store_index"].to_numpy(),
        evaluation=evaluation,
        labels=labels,
        secondary=secondary,
        report=report,
        failed=failed,
    )


def apply_subset(rows: pl.DataFrame, subset: SubsetConfig, seed: int) -> pl.DataFrame:
    """Keep the training rows a data-subset config selects.

    Filters apply in this order: sources, manifest column, class list,
    fraction of each class's recordings, minimum recordings per class. A
    source, value or class that no training row has raises ConfigError, since
    it is most likely a typo that would silently change the experiment.
    """
    if subset.sources:
        _check_known("subset.sources", subset.sources, rows["source"])
        rows = rows.filter(pl.col("source").is_in(list(subset.sources)))
    if subset.column:
        if subset.column not in rows.columns:
            raise ConfigError(
                f"subset.column: the manifest has no column {subset.column!r}; "
                f"its columns are {', '.join(rows.columns)}."
            )
        column = rows[subset.column].cast(pl.String)
        _check_known("subset.values", subset.values, column)
        rows = rows.filter(pl.col(subset.column).cast(pl.String).is_in(list(subset.values)))
    if subset.classes:
        _check_known("subset.classes", subset.classes, rows["label"])
        rows = rows.filter(pl.col("label").is_in(list(subset.classes)))
    if subset.fraction < 1.0:
        rows = _sample_fraction(rows, subset.fraction, seed)

    counts = rows.group_by("label").len()
    too_few = counts.filter(pl.col("len") < subset.min_recordings_per_class)["label"].to_list()
    if too_few:
        log.info(
            "Dropping %d classes with fewer than %d training recordings: %s",
            len(too_few),
            subset.min_recordings_per_class,
            ", ".join(sorted(too_few)),
        )
        rows = rows.filter(~pl.col("label").is_in(too_few))
    if rows.height == 0:
        raise ConfigError(
            "the training subset is empty; loosen subset.sources, subset.values, subset.classes, "
            "subset.fraction or subset.min_recordings_per_class."
        )
    return rows.sort("store_index")


def _check_known(path: str, requested: tuple[str, ...], available: pl.Series) -> None:
    known = set(available.drop_nulls().to_list())
    unknown = [value for value in requested if value not in known]
    if unknown:
        raise ConfigError(
            f"{path}: no remaining training recording has {', '.join(map(repr, unknown))}; "
            f"known values: {', '.join(sorted(known))}."
        )


def _sample_fraction(rows: pl.DataFrame, fraction: float, seed: int) -> pl.DataFrame:
    """Keep `fraction` of each class's recordings, at least one, drawn with `seed`.

    Drawing per class keeps every class's share about the same.
    """
    rng = np.random.default_rng([seed, 0x5EB])
    keep = []
    for _, group in rows.sort("store_index").group_by("label", maintain_order=True):
        count = max(1, int(round(fraction * group.height)))
        keep.extend(rng.choice(group["store_index"].to_numpy(), size=count, replace=False).tolist())
    return rows.filter(pl.col("store_index").is_in(keep))


def energy_peaks(samples: np.ndarray, sample_rate_hz: int, count: int) -> np.ndarray:
    """Return the sample positions of up to `count` energy peaks, loudest first.

    The rule: energy is the mean square over 100 ms frames, smoothed by a
    moving average over 5 frames (0.5 s). Peaks are picked greedily from the
    loudest smoothed frame down, each at least 2.5 s (half of a 5 s window)
    from the ones already picked, and a peak's position is its frame's
    centre. A recording shorter than one frame has one peak, at its middle.
    """
    frame = max(1, sample_rate_hz // 10)
    frames = len(samples) // frame
    if frames == 0:
        return np.array([len(samples) // 2])
    energy = np.square(samples[: frames * frame].reshape(frames, frame)).mean(axis=1)  # [frames]
    padded = np.pad(energy, 2, mode="edge")
    energy = np.convolve(padded, np.ones(5) / 5, mode="valid")  # [frames]

    separation = 25  # frames of 100 ms
    peaks: list[int] = []
    for candidate in np.argsort(-energy, kind="stable"):
        if all(abs(int(candidate) - peak) >= separation for peak in peaks):
            peaks.append(int(candidate))
            if len(peaks) == count:
                break
    return np.asarray(peaks) * frame + frame // 2


class WindowCutter:
    """Cut one training window from a recording, at random or around a peak."""

    def __init__(self, dataset: Dataset, config: Config):
        self._dataset = dataset
        self._window = config.audio.window_samples
        self._selection = config.window.selection
        self._peaks_per_recording = config.window.peaks_per_recording
        self._source_of = {int(index): position for position, index in enumerate(dataset.train)}

    @functools.lru_cache(maxsize=None)
    def peaks(self, index: int) -> np.ndarray:
        store = self._dataset.store
        return energy_peaks(store.recording(index), store.sample_rate_hz, self._peaks_per_recording)

    def offset(self, index: int, rng: np.random.Generator) -> int:
        length = self._dataset.store.length(index)
        if length <= self._window:
            # Pad a short recording at a random position inside the window.
            return -int(rng.integers(0, self._window - length + 1))
        if self._selection == "peak":
            centre = int(rng.choice(self.peaks(index)))
            return int(np.clip(centre - self._window // 2, 0, length - self._window))
        return int(rng.integers(0, length - self._window + 1))

    def __call__(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        index = int(index)
        window = self._dataset.store.segment(index, self.offset(index, rng), self._window)
        return {
            "audio": window,  # [samples]
            "labels": self._dataset.labels[index],  # [classes]
            "secondary": self._dataset.secondary[index],  # [classes]
            "source": np.int32(self._source_of[index]),
        }


def train_batches(dataset: Dataset, config: Config, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Yield training batches from step `start_step` on, forever.

    Epochs are shuffled with the run's seed and windows are cut with a
    per-example generator that grain derives from the same seed, so batch
    `n` is the same whatever step the iterator starts at.
    """
    recordings = grain.MapDataset.source(dataset.train.tolist()).seed(config.seed)
    examples = recordings.shuffle().repeat(None).random_map(WindowCutter(dataset, config))
    batches = examples.batch(config.train.batch_size, drop_remainder=True)
    batches = batches.slice(slice(start_step, None))
    options = grain.ReadOptions(num_threads=config.train.data_threads, prefetch_buffer_size=4)
    return iter(batches.to_iter_dataset(options))


def evaluation_windows(dataset: Dataset, config: Config, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cut up to `eval.max_windows_per_recording` evenly spaced windows per recording.

    Returns the windows [windows, samples] and the store index of each.
    """
    window = config.audio.window_samples
    windows, owners = [], []
    for index in indices:
        index = int(index)
        length = dataset.store.length(index)
        count = max(1, min(config.eval.max_windows_per_recording, -(-length // window)))
        last_start = max(0, length - window)
        starts = np.linspace(0, last_start, count).round().astype(int) if count > 1 else [0]
        for start in starts:
            windows.append(dataset.store.segment(index, int(start), window))
            owners.append(index)
    return np.stack(windows), np.asarray(owners)
