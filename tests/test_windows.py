"""Training-window selection: energy peaks on synthesized clips, and random offsets."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import soundfile

from pipeline import data
from pipeline.config import from_dict

RATE = 32_000
EVENT_START_SECONDS, EVENT_END_SECONDS = 13.0, 14.0


def _clip(seconds: float, events: list[tuple[float, float, float]], seed: int = 0) -> np.ndarray:
    """Return quiet noise with 2 kHz tone bursts (start s, end s, amplitude)."""
    rng = np.random.default_rng(seed)
    samples = rng.normal(0.0, 0.01, int(seconds * RATE)).astype(np.float32)
    for start, end, amplitude in events:
        time = np.arange(int(start * RATE), int(end * RATE))
        samples[time] += amplitude * np.sin(2 * np.pi * 2000.0 * time / RATE).astype(np.float32)
    return samples


@pytest.fixture(scope="module")
def event_dataset(tmp_path_factory):
    """A dataset of one 20 s training clip with one loud 1 s event, and one test clip."""
    root = tmp_path_factory.mktemp("windows")
    event = (EVENT_START_SECONDS, EVENT_END_SECONDS, 0.5)
    soundfile.write(root / "event.wav", _clip(20.0, [event]), RATE)
    soundfile.write(root / "held_out.wav", _clip(6.0, [], seed=1), RATE)
    pl.DataFrame(
        {"file_name": ["event.wav", "held_out.wav"], "species": ["cricket", "cricket"], "data_set": ["train", "test"]}
    ).write_csv(root / "clips.csv")

    def load(**overrides):
        config = from_dict({"data": {"root": str(root), "manifests": ["clips.csv"]}, **overrides})
        return config, data.prepare_dataset(config, root, root / "cache")

    return load


def _covers_event(offset: int) -> bool:
    window_seconds = 5.0
    start = offset / RATE
    return start <= EVENT_START_SECONDS and start + window_seconds >= EVENT_END_SECONDS


def test_peak_is_the_loud_event():
    samples = _clip(20.0, [(EVENT_START_SECONDS, EVENT_END_SECONDS, 0.5)])

    peaks = data.energy_peaks(samples, RATE, count=3) / RATE

    assert EVENT_START_SECONDS <= peaks[0] <= EVENT_END_SECONDS
    assert np.all(np.abs(peaks[1:] - peaks[0]) >= 2.5)


def test_peaks_come_loudest_first():
    samples = _clip(20.0, [(3.0, 3.5, 0.2), (15.0, 15.5, 0.6)])

    peaks = data.energy_peaks(samples, RATE, count=2) / RATE

    assert 14.8 <= peaks[0] <= 15.7
    assert 2.8 <= peaks[1] <= 3.7


@pytest.mark.parametrize("seconds", [0.05, 0.3, 1.0])
def test_peaks_of_short_clips_lie_inside(seconds):
    samples = _clip(seconds, [])

    peaks = data.energy_peaks(samples, RATE, count=5)

    assert len(peaks) >= 1
    assert np.all((peaks >= 0) & (peaks < len(samples)))


def test_peak_windows_contain_the_event(event_dataset):
    config, dataset = event_dataset(window={"selection": "peak", "peaks_per_recording": 1})
    cutter = data.WindowCutter(dataset, config)
    index = int(dataset.train[0])

    offsets = [cutter.offset(index, np.random.default_rng(seed)) for seed in range(20)]

    assert all(_covers_event(offset) for offset in offsets)


def test_random_windows_spread_over_the_clip(event_dataset):
    config, dataset = event_dataset(window={"selection": "random"})
    cutter = data.WindowCutter(dataset, config)
    index = int(dataset.train[0])

    offsets = [cutter.offset(index, np.random.default_rng(seed)) for seed in range(50)]

    assert min(offsets) >= 0
    assert max(offsets) <= (20 - 5) * RATE
    assert len(set(offsets)) > 40
    assert not all(_covers_event(offset) for offset in offsets)


def test_peak_batches_carry_the_event(event_dataset):
    config, dataset = event_dataset(
        window={"selection": "peak", "peaks_per_recording": 1}, train={"batch_size": 2}
    )

    batch = next(data.train_batches(dataset, config))

    assert batch["audio"].shape == (2, 5 * RATE)
    assert np.all(np.abs(batch["audio"]).max(axis=1) > 0.4)
