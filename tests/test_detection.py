"""Detection in soundscapes: windows, strong labels, synthetic soundscapes and the task end to end."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import soundfile
from conftest import small_config
from fake_models import spectral_predict

from pipeline import config as config_lib
from pipeline import data, evaluation, soundscapes
from pipeline.readers import EVENT_SCHEMA

FAST_DETECTION = {
    "eval.tasks": ["detection"],
    "eval.detection_soundscapes": 2,
    "eval.detection_soundscape_seconds": 20.0,
    "eval.detection_events_per_soundscape": 6,
}


@pytest.fixture(scope="module")
def dataset(insect_root, audio_cache):
    return data.prepare_dataset(small_config(), insect_root, audio_cache)


@pytest.mark.parametrize(
    ("length", "window", "hop", "expected"),
    [
        (100, 40, 40, [0, 40, 60]),
        (120, 40, 40, [0, 40, 80]),
        (120, 40, 20, [0, 20, 40, 60, 80]),
        (30, 40, 40, [0]),
        (40, 40, 40, [0]),
    ],
)
def test_window_starts_cases(length, window, hop, expected):
    assert soundscapes.window_starts(length, window, hop).tolist() == expected


def test_cut_windows_pads_short_soundscape():
    soundscape = soundscapes.Soundscape("short", np.ones(30, np.float32))

    windows, starts = soundscapes.cut_windows(soundscape, window=40, hop=40)

    assert windows.shape == (1, 40)
    assert windows[0, :30].sum() == 30
    assert windows[0, 30:].sum() == 0
    assert starts.tolist() == [0]


def _events(rows: list[tuple]) -> pl.DataFrame:
    records = [
        {
            "file": file,
            "start": start,
            "end": end,
            "low_frequency": None,
            "high_frequency": None,
            "label": label,
        }
        for file, start, end, label in rows
    ]
    return pl.DataFrame(records, schema=EVENT_SCHEMA)


def test_window_labels_overlap_rules():
    events = _events(
        [
            ("a", 4.8, 6.0, "owl"),  # 0.2 s in window 0, 1.0 s in window 1
            ("a", 9.9, 10.0, "wren"),  # 0.1 s event, wholly inside window 1
            ("a", 12.0, 13.0, "bat"),  # a label outside the classes
            ("b", 0.0, 5.0, "owl"),  # another soundscape
            ("b", None, None, None),  # a soundscape without events
        ]
    )
    owners = ["a", "a", "a", "b"]
    starts = np.array([0.0, 5.0, 10.0, 0.0])

    labels = soundscapes.window_labels(events, owners, starts, 5.0, ["owl", "wren"], min_overlap_seconds=0.5)

    np.testing.assert_array_equal(labels, [[0, 0], [1, 1], [0, 0], [1, 0]])


def test_synthesis_is_deterministic_and_in_bounds(dataset):
    settings = small_config(**FAST_DETECTION).eval
    classes = evaluation.task_classes(dataset)

    first = soundscapes.synthesize(dataset, classes, settings)
    second = soundscapes.synthesize(dataset, classes, settings)

    assert len(first.soundscapes) == 2
    for soundscape, repeated in zip(first.soundscapes, second.soundscapes, strict=True):
        np.testing.assert_array_equal(soundscape.audio, repeated.audio)
        assert len(soundscape.audio) == 20 * dataset.store.sample_rate_hz
    assert first.events.equals(second.events)
    assert first.events.height == 12
    assert first.events["start"].min() >= 0.0
    assert first.events["end"].max() <= 20.0
    assert set(first.events["label"]) <= {dataset.classes[index] for index in classes}
    # Events cycle through the classes, so 12 events name 12 different ones.
    assert first.events["label"].n_unique() == 12


def test_synthesis_changes_with_eval_seed(dataset):
    classes = evaluation.task_classes(dataset)

    first = soundscapes.synthesize(dataset, classes, small_config(**FAST_DETECTION).eval)
    other = soundscapes.synthesize(dataset, classes, small_config(**FAST_DETECTION, **{"eval.seed": 1}).eval)

    assert not np.array_equal(first.soundscapes[0].audio, other.soundscapes[0].audio)


def test_synthetic_events_use_test_recordings_only(dataset):
    detection_set = soundscapes.synthesize(
        dataset, evaluation.task_classes(dataset), small_config(**FAST_DETECTION).eval
    )
    test_paths = set(dataset.recordings.filter(pl.col("split") == "test")["path"])

    assert set(detection_set.events["source_path"]) <= test_paths


def test_detection_task_end_to_end(dataset, tmp_path):
    config = small_config(**FAST_DETECTION)

    scores = evaluation.evaluate_detection(dataset, config, spectral_predict(dataset.num_classes), tmp_path)

    assert scores["eval/detection/soundscapes"] == 2
    assert scores["eval/detection/windows"] == 8
    assert scores["eval/detection/events"] == 12
    assert scores["eval/detection/classes"] == 12
    for name in ("cmap", "auroc", "top1"):
        assert 0.0 <= scores[f"eval/detection/{name}"] <= 1.0
    table = pl.read_parquet(tmp_path / "detection_per_class.parquet")
    assert table.height == 12
    assert table["positives"].sum() >= 12
    assert pl.read_parquet(tmp_path / "detection_events.parquet").height == 12


def test_detection_task_reads_annotated_soundscapes(dataset, tmp_path):
    rng = np.random.default_rng(0)
    for name in ("site1", "site2"):
        soundfile.write(
            tmp_path / f"{name}.wav", 0.01 * rng.standard_normal(12 * 32_000).astype(np.float32), 32_000
        )
    first, second = dataset.classes[0], dataset.classes[1]
    rows = [
        "file,start,end,label",
        f"site1.wav,1,3,{first}",
        f"site1.wav,6,8,{second}",
        f"site2.wav,0.5,1,{first}",
        "site2.wav,2,4,Unknownbird",
    ]
    (tmp_path / "events.csv").write_text("\n".join(rows) + "\n")
    config = small_config(**{"eval.detection_annotations": str(tmp_path / "events.csv")})

    scores = evaluation.evaluate_detection(
        dataset, config, spectral_predict(dataset.num_classes), tmp_path / "artifacts"
    )

    assert scores["eval/detection/soundscapes"] == 2
    # 12 s at a 5 s hop: windows at 0, 5 and 7 s in each soundscape.
    assert scores["eval/detection/windows"] == 6
    assert scores["eval/detection/classes"] == 2
    assert scores["eval/detection/events"] == 3


def test_missing_soundscape_audio_names_file(dataset, tmp_path):
    (tmp_path / "events.csv").write_text(f"file,start,end,label\nnowhere.wav,1,3,{dataset.classes[0]}\n")
    config = small_config(**{"eval.detection_annotations": str(tmp_path / "events.csv")})

    with pytest.raises(config_lib.ConfigError, match=r"soundscape audio 'nowhere.wav' not found"):
        evaluation.evaluate_detection(dataset, config, spectral_predict(dataset.num_classes))
