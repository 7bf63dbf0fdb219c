"""Bad input fails early with the value and the fix, or is skipped and counted."""

from __future__ import annotations

import logging
import socket

import numpy as np
import polars as pl
import pytest
import soundfile

from pipeline import cli, data, runner
from pipeline.config import ConfigError
from tests.conftest import small_config


def _dataset_folder(tmp_path, rows):
    """Write one-second clips and a manifest with (file, label, split) rows."""
    for name, _, _ in rows:
        if name.startswith("corrupt"):
            (tmp_path / name).write_bytes(b"this is not a flac file")
        elif name.startswith("empty"):
            soundfile.write(tmp_path / name, np.zeros(0), 32_000)
        else:
            soundfile.write(tmp_path / name, np.random.default_rng(0).normal(0, 0.1, 32_000), 32_000)
    pl.DataFrame(rows, schema=["file_name", "species", "data_set"], orient="row").write_csv(tmp_path / "m.csv")
    return small_config(**{"data.root": str(tmp_path), "data.manifests": ["m.csv"], "audio.window_seconds": 1.0})


def test_corrupt_and_empty_audio_are_skipped_and_counted(tmp_path, caplog):
    config = _dataset_folder(
        tmp_path,
        [
            ("a.wav", "x", "train"),
            ("b.wav", "y", "train"),
            ("corrupt.flac", "x", "train"),
            ("empty.wav", "y", "train"),
            ("c.wav", "x", "test"),
        ],
    )

    with caplog.at_level(logging.WARNING):
        dataset = data.prepare_dataset(config, tmp_path, tmp_path / "cache")

    assert len(dataset.failed) == 2
    assert len(dataset.train) == 2
    assert "2 recordings could not be decoded" in caplog.text


def test_class_with_single_recording_trains_with_warning(tmp_path, caplog):
    config = _dataset_folder(
        tmp_path, [("a.wav", "x", "train"), ("b.wav", "x", "train"), ("c.wav", "y", "train"), ("d.wav", "x", "test")]
    )

    with caplog.at_level(logging.WARNING):
        dataset = data.prepare_dataset(config, tmp_path, tmp_path / "cache")
    batch = next(data.train_batches(dataset, config))

    assert "1 classes have a single training recording" in caplog.text
    assert caplog.text.rstrip().endswith(": y")
    assert batch["audio"].shape == (4, 32_000)


def test_split_without_recordings_names_the_splits(tmp_path):
    config = _dataset_folder(tmp_path, [("a.wav", "x", "train"), ("b.wav", "y", "train")])

    with pytest.raises(ConfigError, match="evaluation split 'test' has no recordings"):
        data.prepare_dataset(config, tmp_path, tmp_path / "cache")


def test_unwritable_output_folder_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")

    with pytest.raises(ConfigError, match="Pass --runs with a writable folder"):
        runner.check_output_folder(blocker / "demo")


def test_unreachable_tracking_uri_fails_fast(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # The port is closed again once the socket is, so nothing listens there.

    with pytest.raises(ConfigError, match=f"127.0.0.1:{port} is unreachable"):
        runner.check_tracking_uri(f"http://127.0.0.1:{port}", timeout_seconds=2)


def test_cli_run_with_unknown_factor_exits_2(tmp_path, capsys):
    study = tmp_path / "s.toml"
    study.write_text('[study]\nname = "s"\n[factors]\nprototypes = ["off", "on"]\n')

    assert cli.main(["run", str(study), "--runs", str(tmp_path / "runs")]) == 2
    assert "unknown component 'prototypes'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
