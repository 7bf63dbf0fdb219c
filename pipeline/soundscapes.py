"""Soundscapes with strong labels for the detection task, real or synthesized.

A soundscape is a long recording with annotated events (start, end, label).
It is cut into windows, and an event labels each window it overlaps by
enough. Real soundscapes come from annotation files (`pipeline.readers`).
When a dataset has none, as InsectSet32, `synthesize` builds a small set by
placing clips of held-out test recordings at known times on pink noise,
with a fixed seed, so every trial is scored on the same soundscapes.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib

import numpy as np
import polars as pl

from pipeline import audio, data, readers
from pipeline.config import ConfigError, EvalConfig

log = logging.getLogger(__name__)

# Root-mean-square amplitude of the background noise of synthetic soundscapes.
NOISE_RMS = 0.01
# Range of the length of a synthetic event, in seconds.
EVENT_SECONDS = (1.5, 4.0)
# Fade in and out of each synthetic event, so its edges do not click.
FADE_SECONDS = 0.02
# Distinguishes the random stream of the synthesis from other uses of the evaluation seed.
_SYNTHESIS_STREAM = 0x50D


@dataclasses.dataclass
class Soundscape:
    """One long recording of a detection set."""

    name: str
    audio: np.ndarray  # [samples], float32


@dataclasses.dataclass
class DetectionSet:
    """Soundscapes and their events, with the columns of `readers.EVENT_SCHEMA`."""

    soundscapes: list[Soundscape]
    # One row per event; `file` is the soundscape's name. A null label lists
    # a soundscape without events.
    events: pl.DataFrame
    sample_rate_hz: int


def window_starts(length: int, window: int, hop: int) -> np.ndarray:
    """Return the start samples of windows every `hop` samples.

    A last window is aligned with the end when the hop leaves a tail
    uncovered; a recording shorter than a window has one zero-padded window.
    """
    if length <= window:
        return np.zeros(1, np.int64)
    starts = np.arange(0, length - window + 1, hop, dtype=np.int64)
    if starts[-1] + window < length:
        starts = np.append(starts, length - window)
    return starts


def cut_windows(soundscape: Soundscape, window: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the windows of a soundscape [windows, samples] and their start samples."""
    starts = window_starts(len(soundscape.audio), window, hop)
    windows = np.zeros((len(starts), window), np.float32)
    for row, start in enumerate(starts):
        chunk = soundscape.audio[start : start + window]
        windows[row, : len(chunk)] = chunk
    return windows, starts


def window_labels(
    events: pl.DataFrame,
    owners: list[str],
    starts_seconds: np.ndarray,
    window_seconds: float,
    classes: list[str],
    min_overlap_seconds: float,
) -> np.ndarray:
    """Return multi-hot labels [windows, classes] of windows from their soundscapes' events.

    Window `i` belongs to the soundscape named `owners[i]` and starts at
    `starts_seconds[i]`. An event labels a window when they overlap by at
    least `min_overlap_seconds`, or by the whole event when it is shorter.
    Events of labels outside `classes` are ignored.
    """
    class_index = {name: position for position, name in enumerate(classes)}
    owners_array = np.asarray(owners)
    labels = np.zeros((len(owners), len(classes)), np.float32)
    for event in events.drop_nulls("label").iter_rows(named=True):
        if event["label"] not in class_index:
            continue
        rows = owners_array == event["file"]
        overlap = np.minimum(event["end"], starts_seconds + window_seconds) - np.maximum(
            event["start"], starts_seconds
        )
        needed = min(min_overlap_seconds, event["end"] - event["start"])
        labels[rows & (overlap >= needed - 1e-9), class_index[event["label"]]] = 1.0
    return labels


def pink_noise(samples: int, rng: np.random.Generator) -> np.ndarray:
    """Return noise with power falling as 1/frequency, scaled to `NOISE_RMS`."""
    bins = samples // 2 + 1
    spectrum = rng.standard_normal(bins) + 1j * rng.standard_normal(bins)
    spectrum[0] = 0.0
    spectrum[1:] /= np.sqrt(np.arange(1, bins))
    noise = np.fft.irfft(spectrum, n=samples)
    return (noise * NOISE_RMS / np.sqrt(np.mean(np.square(noise)))).astype(np.float32)


def _event_clip(
    store: audio.AudioStore, index: int, seconds: float, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """Cut `seconds` around one of the loudest peaks of a recording; return the clip and its start sample."""
    length = store.length(index)
    size = min(length, int(round(seconds * store.sample_rate_hz)))
    peaks = data.energy_peaks(store.recording(index), store.sample_rate_hz, count=3)
    centre = int(rng.choice(peaks))
    start = int(np.clip(centre - size // 2, 0, length - size))
    clip = store.segment(index, start, size)
    fade = min(size // 2, int(FADE_SECONDS * store.sample_rate_hz))
    if fade > 0:
        ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
        clip[:fade] *= ramp
        clip[-fade:] *= ramp[::-1]
    return clip, start


def _class_sequence(classes: list[int], count: int, rng: np.random.Generator) -> list[int]:
    """Return `count` classes as consecutive seeded permutations, so every class appears about equally."""
    sequence: list[int] = []
    while len(sequence) < count:
        sequence.extend(int(label) for label in rng.permutation(classes))
    return sequence[:count]


def synthesize(dataset: data.Dataset, classes: np.ndarray, settings: EvalConfig) -> DetectionSet:
    """Place clips of held-out test recordings of `classes` on pink noise.

    The soundscapes depend only on the dataset, the class indices and the
    `eval` settings (seed, count, length, events, signal-to-noise range).
    Raises ConfigError when no class has a test recording.
    """
    rng = np.random.default_rng([settings.seed, _SYNTHESIS_STREAM])
    sources = _test_recordings_by_class(dataset, classes)
    if not sources:
        raise ConfigError(
            "detection: none of the training classes has a recording in the evaluation split, so no "
            "soundscape can be synthesized. Remove 'detection' from eval.tasks or set "
            "eval.detection_annotations."
        )
    sample_rate_hz = dataset.store.sample_rate_hz
    length = int(round(settings.detection_soundscape_seconds * sample_rate_hz))
    total_events = settings.detection_soundscapes * settings.detection_events_per_soundscape
    sequence = iter(_class_sequence(sorted(sources), total_events, rng))

    soundscapes, events = [], []
    for number in range(settings.detection_soundscapes):
        name = f"soundscape_{number:02d}"
        mixture = pink_noise(length, rng)  # [samples]
        for _ in range(settings.detection_events_per_soundscape):
            label = next(sequence)
            index = int(rng.choice(sources[label]))
            event = _add_event(mixture, dataset.store, index, settings, rng)
            events.append({"file": name, "label": dataset.classes[label], **event})
        soundscapes.append(Soundscape(name, mixture))
    return DetectionSet(soundscapes, _synthetic_events(events), sample_rate_hz)


def _add_event(
    mixture: np.ndarray, store: audio.AudioStore, index: int, settings: EvalConfig, rng: np.random.Generator
) -> dict:
    """Add a clip of a recording to `mixture` at a random time and signal-to-noise ratio; describe it."""
    sample_rate_hz = store.sample_rate_hz
    clip, source_start = _event_clip(store, index, rng.uniform(*EVENT_SECONDS), rng)
    onset = int(rng.integers(0, len(mixture) - len(clip) + 1))
    snr_db = rng.uniform(settings.detection_min_snr_db, settings.detection_max_snr_db)
    clip_rms = max(float(np.sqrt(np.mean(np.square(clip)))), 1e-8)
    mixture[onset : onset + len(clip)] += clip * (NOISE_RMS * 10 ** (snr_db / 20) / clip_rms)
    return {
        "start": onset / sample_rate_hz,
        "end": (onset + len(clip)) / sample_rate_hz,
        "snr_db": snr_db,
        "source_path": store.paths[index],
        "source_start": source_start / sample_rate_hz,
    }


def _test_recordings_by_class(dataset: data.Dataset, classes: np.ndarray) -> dict[int, np.ndarray]:
    """Map each class index to the store indices of its evaluation recordings, if it has any."""
    sources = {}
    for label in classes:
        members = dataset.evaluation[dataset.labels[dataset.evaluation, int(label)] > 0]
        if len(members):
            sources[int(label)] = members
    return sources


def _synthetic_events(events: list[dict]) -> pl.DataFrame:
    frame = pl.DataFrame(events)
    return frame.select(
        "file",
        "start",
        "end",
        pl.lit(None, pl.Float64).alias("low_frequency"),
        pl.lit(None, pl.Float64).alias("high_frequency"),
        "label",
        "snr_db",
        "source_path",
        "source_start",
    )


def load(settings: EvalConfig, sample_rate_hz: int) -> DetectionSet:
    """Read the annotations of `eval.detection_annotations` and decode their soundscapes."""
    annotations = pathlib.Path(settings.detection_annotations).expanduser()
    if not annotations.exists():
        raise ConfigError(
            f"eval.detection_annotations: {annotations} does not exist; point it at a CSV, a BEANS JSONL, "
            "a Raven selection table or a folder of them."
        )
    events = readers.read_events(annotations, settings.detection_label_column)
    if settings.detection_audio_root:
        root = pathlib.Path(settings.detection_audio_root).expanduser()
    else:
        root = annotations if annotations.is_dir() else annotations.parent

    soundscapes = []
    for name in events["file"].unique(maintain_order=True).to_list():
        path = _find_audio(root, name)
        soundscapes.append(Soundscape(name, audio.decode(path, sample_rate_hz)))
    return DetectionSet(soundscapes, events, sample_rate_hz)


def _find_audio(root: pathlib.Path, name: str) -> pathlib.Path:
    """Find a soundscape's audio file under `root`, adding an audio suffix when the name has none."""
    candidate = root / name
    if candidate.is_file():
        return candidate
    for suffix in audio.AUDIO_SUFFIXES:
        with_suffix = root / f"{name}{suffix}"
        if with_suffix.is_file():
            return with_suffix
    raise ConfigError(
        f"soundscape audio {name!r} not found under {root}; set eval.detection_audio_root to the folder "
        "with the annotated recordings."
    )
