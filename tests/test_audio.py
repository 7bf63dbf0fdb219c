"""Manifest matching, decoding of every supported format, and the decoded-audio cache."""

from __future__ import annotations

import pathlib

import numpy as np
import polars as pl
import pytest
import soundfile

from pipeline import audio
from pipeline.config import ConfigError, DataConfig


def _tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    time = np.arange(int(seconds * rate)) / rate
    signal = 0.5 * np.sin(2 * np.pi * 440.0 * time)
    return np.stack([signal] * channels, axis=1) if channels > 1 else signal


def test_insectset32_reports_missing_and_unlisted(insect_root):
    report = audio.read_manifest(DataConfig(), insect_root)

    assert len(report.missing_files) == 3
    assert all("Nemobius" in name for name in report.missing_files)
    assert len(report.unlisted_files) == 4
    assert report.recordings.height == 328
    assert set(report.recordings["source"].unique()) == {"Cicadidae", "Orthoptera"}
    assert "3 manifest rows have no audio file" in report.summary()
    assert "4 audio files have no manifest row" in report.summary()


def test_flat_folder_and_class_folders(tmp_path):
    rate = 16_000
    (tmp_path / "cricket").mkdir()
    soundfile.write(tmp_path / "cricket" / "a.wav", _tone(1.0, rate), rate)
    soundfile.write(tmp_path / "b.wav", _tone(1.0, rate), rate)
    pl.DataFrame({"file": ["a.wav", "b.wav"], "species": ["cricket", "cicada"], "fold": ["train", "test"]}).write_csv(
        tmp_path / "meta.csv"
    )
    config = DataConfig(manifests=("meta.csv",), file_column="file", label_column="species", split_column="fold")

    report = audio.read_manifest(config, tmp_path)

    assert report.recordings.height == 2
    assert report.missing_files == []
    assert report.unlisted_files == []


def test_parquet_manifest(tmp_path):
    soundfile.write(tmp_path / "a.flac", _tone(0.5, 8000), 8000)
    pl.DataFrame({"file_name": ["a.flac"], "species": ["x"], "data_set": ["train"]}).write_parquet(tmp_path / "m.parquet")

    report = audio.read_manifest(DataConfig(manifests=("m.parquet",)), tmp_path)

    assert report.recordings["label"].to_list() == ["x"]


def test_manifest_missing_column_names_it(tmp_path):
    pl.DataFrame({"path": ["a.wav"], "species": ["x"], "data_set": ["train"]}).write_csv(tmp_path / "m.csv")

    with pytest.raises(ConfigError, match="no column 'file_name'"):
        audio.read_manifest(DataConfig(manifests=("m.csv",)), tmp_path)


def test_empty_manifest_is_rejected(tmp_path):
    (tmp_path / "m.csv").write_text("file_name,species,data_set\n")

    with pytest.raises(ConfigError, match="no rows"):
        audio.read_manifest(DataConfig(manifests=("m.csv",)), tmp_path)


@pytest.mark.parametrize(
    "suffix, subtype",
    [
        (".wav", "PCM_16"),
        (".wav", "PCM_24"),
        (".wav", "FLOAT"),
        (".flac", "PCM_16"),
        (".ogg", "VORBIS"),
        (".mp3", "MPEG_LAYER_III"),
    ],
)
def test_decode_formats_to_mono_at_model_rate(tmp_path, suffix, subtype):
    path = tmp_path / f"clip{suffix}"
    soundfile.write(path, _tone(1.0, 44_100, channels=2), 44_100, subtype=subtype)

    decoded = audio.decode(path, 32_000)

    assert decoded.dtype == np.float32
    assert decoded.ndim == 1
    # Lossy codecs add or trim a few milliseconds of padding.
    assert abs(decoded.size - 32_000) < 0.05 * 32_000
    rms = np.sqrt(np.mean(np.square(decoded[2000:-2000])))
    assert rms == pytest.approx(0.5 / np.sqrt(2), rel=0.1)


def test_decode_corrupt_file_names_it(tmp_path):
    path = tmp_path / "broken.flac"
    path.write_bytes(b"not audio at all")

    with pytest.raises(ValueError, match="broken.flac"):
        audio.decode(path, 32_000)


def test_decode_empty_file_names_it(tmp_path):
    path = tmp_path / "empty.wav"
    soundfile.write(path, np.zeros(0), 16_000)

    with pytest.raises(ValueError, match="no audio samples"):
        audio.decode(path, 32_000)


def test_store_skips_bad_files_and_reopens_cache(tmp_path):
    good = tmp_path / "good.wav"
    soundfile.write(good, _tone(0.5, 32_000), 32_000)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF garbage")
    cache = tmp_path / "cache"

    store, failed = audio.build_store([str(good), str(bad)], 32_000, cache)
    again, _ = audio.build_store([str(good), str(bad)], 32_000, cache)

    assert failed == [str(bad)]
    assert len(store) == 1
    assert len(list(cache.iterdir())) == 2  # the cache folder and its lock file
    np.testing.assert_allclose(again.recording(0), audio.decode(good, 32_000), atol=1e-4)


def test_segment_pads_past_the_end(tmp_path):
    path = tmp_path / "short.wav"
    soundfile.write(path, np.ones(100) * 0.25, 32_000)
    store, _ = audio.build_store([str(path)], 32_000, tmp_path / "cache")

    window = store.segment(0, -10, 200)

    assert window.shape == (200,)
    assert np.all(window[:10] == 0)
    np.testing.assert_allclose(window[10:110], 0.25, atol=1e-4)
    assert np.all(window[110:] == 0)
