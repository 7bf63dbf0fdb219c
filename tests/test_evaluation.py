"""Evaluation tasks end to end on InsectSet32 with a cheap stand-in model, and their config checks."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import soundfile
from conftest import small_config
from fake_models import CountingPredict, spectral_predict

from pipeline import config as config_lib
from pipeline import data, evaluation, probes

FAST_TRANSFER = {"eval.transfer_shots": [1, 4, 0], "eval.transfer_draws": 2}
FAST_DETECTION = {
    "eval.detection_soundscapes": 1,
    "eval.detection_soundscape_seconds": 10.0,
    "eval.detection_events_per_soundscape": 2,
}


@pytest.fixture(scope="module")
def dataset(insect_root, audio_cache):
    return data.prepare_dataset(small_config(), insect_root, audio_cache)


@pytest.fixture(scope="module")
def cicada_dataset(insect_root, audio_cache):
    """A run that trains on Cicadidae only, so Orthoptera are held out."""
    return data.prepare_dataset(small_config(**{"subset.sources": ["Cicadidae"]}), insect_root, audio_cache)


# Config checks.


def test_task_names_match_registry():
    assert tuple(evaluation.TASKS) == config_lib.EVAL_TASKS


def test_default_tasks_are_all_three():
    assert config_lib.EvalConfig().tasks == ("test", "transfer", "detection")


def test_unknown_task_fails_validation_with_choices():
    with pytest.raises(
        config_lib.ConfigError, match=r"unknown task 'tset'; valid tasks: test, transfer, detection"
    ):
        config_lib.from_dict({"eval.tasks": ["test", "tset"]})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"eval.tasks": ["test", "test"]}, "names a task twice"),
        ({"eval.transfer_shots": [4, -1]}, "eval.transfer_shots"),
        ({"eval.transfer_shots": []}, "eval.transfer_shots"),
        ({"eval.transfer_draws": 0}, "eval.transfer_draws: must be at least 1"),
        ({"eval.prototype_distance": "manhattan"}, "eval.prototype_distance: invalid value"),
        ({"eval.detection_soundscape_seconds": 2.0}, "shorter than one window"),
        ({"eval.detection_min_snr_db": 30.0}, "exceeds eval.detection_max_snr_db"),
        ({"eval.detection_hop_seconds": 0.0}, "must be positive"),
    ],
)
def test_invalid_eval_settings_fail_validation(overrides, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.from_dict(overrides)


# Windows and the shared embedder.


def test_window_starts_match_data_windows(dataset):
    config = small_config(**{"eval.max_windows_per_recording": 6})
    indices = dataset.evaluation[:8]
    expected, owners = data.evaluation_windows(dataset, config, indices)

    embedder = evaluation.WindowEmbedder(lambda audio: {"audio": audio}, batch_size=4)
    outputs, embedded_owners, _ = embedder.recordings(dataset, indices, 6, config.audio.window_samples)

    np.testing.assert_array_equal(embedded_owners, owners)
    np.testing.assert_array_equal(outputs["audio"], expected)


def test_embedder_embeds_each_window_once(dataset):
    counting = CountingPredict(spectral_predict(dataset.num_classes))
    embedder = evaluation.WindowEmbedder(counting, batch_size=16)
    window = small_config().audio.window_samples
    indices = dataset.evaluation[:10]

    first, _, _ = embedder.recordings(dataset, indices, 3, window)
    embedded = counting.windows
    again, _, _ = embedder.recordings(dataset, indices, 1, window)

    assert embedded >= 10
    assert counting.windows == embedded
    assert len(again["embedding"]) == 10


# The in-domain task.


def test_in_domain_scores_and_artifacts(dataset, tmp_path):
    config = small_config(**{"eval.max_windows_per_recording": 2})

    scores = evaluation.evaluate_in_domain(
        dataset, config, spectral_predict(dataset.num_classes), "test", tmp_path
    )

    assert scores["eval/test/recordings"] == 72
    assert scores["eval/test/classes"] == 32
    for name in ("cmap", "auroc", "top1", "window_cmap", "window_auroc", "window_top1"):
        assert 0.0 <= scores[f"eval/test/{name}"] <= 1.0
    # One class has no test recording: it is counted out, not scored as zero.
    assert scores["eval/test/cmap_classes"] == 31

    table = pl.read_parquet(tmp_path / "test_per_class.parquet")
    assert set(table["level"]) == {"window", "recording"}
    assert table.height == 64

    windows = pl.read_parquet(tmp_path / "test_embeddings.parquet")
    assert windows.height == scores["eval/test/windows"]
    assert {"window", "store_index", "path", "label", "split", "start_seconds", "embedding", "logits"} <= set(
        windows.columns
    )
    assert set(windows["split"]) == {"test"}
    metadata = pl.read_parquet_metadata(tmp_path / "test_embeddings.parquet")
    assert json.loads(metadata["classes"]) == dataset.classes


def test_in_domain_restricts_to_training_classes(cicada_dataset):
    config = small_config(**{"subset.sources": ["Cicadidae"]})

    scores = evaluation.evaluate_in_domain(
        cicada_dataset, config, spectral_predict(cicada_dataset.num_classes)
    )

    assert scores["eval/test/classes"] == 23
    assert scores["eval/test/recordings"] == 47


def test_recording_pooling_max_differs_from_mean(dataset):
    predict = spectral_predict(dataset.num_classes)

    mean = evaluation.evaluate_in_domain(
        dataset, small_config(**{"eval.max_windows_per_recording": 3}), predict
    )
    maximum = evaluation.evaluate_in_domain(
        dataset,
        small_config(**{"eval.max_windows_per_recording": 3, "eval.recording_pooling": "max"}),
        predict,
    )

    assert mean["eval/test/window_cmap"] == maximum["eval/test/window_cmap"]
    assert mean["eval/test/cmap"] != maximum["eval/test/cmap"]


# Few-shot probes.


def test_draw_shots_takes_k_per_class():
    classes = np.array([0, 0, 0, 0, 1, 1, 2])
    rng = np.random.default_rng(0)

    chosen = probes.draw_shots(classes, 2, rng)

    assert np.bincount(classes[chosen]).tolist() == [2, 2, 1]
    assert probes.draw_shots(classes, 0, rng).tolist() == list(range(7))


def test_prototype_scores_hand_case():
    train = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    classes = np.array([0, 0, 1])
    test = np.array([[2.0, 1.0]])

    cosine = probes.prototype_scores(train, classes, test, 2, "cosine")
    euclidean = probes.prototype_scores(train, classes, test, 2, "euclidean")

    # Class means: (2, 0) and (0, 2).
    np.testing.assert_allclose(cosine, [[2 / np.sqrt(5), 1 / np.sqrt(5)]])
    np.testing.assert_allclose(euclidean, [[-1.0, -np.sqrt(5)]])


def test_linear_probe_separates_separable_classes():
    rng = np.random.default_rng(0)
    centres = np.array([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    train_classes = np.repeat(np.arange(3), 4)
    test_classes = np.repeat(np.arange(3), 3)
    train = centres[train_classes] + rng.standard_normal((12, 3))
    test = centres[test_classes] + rng.standard_normal((9, 3))

    scores = probes.linear_probe_scores(train, train_classes, test, 3, regularization=1.0)

    assert scores.shape == (9, 3)
    assert (scores.argmax(axis=1) == test_classes).all()


def test_transfer_probes_all_classes_when_trained_on_all(dataset, tmp_path):
    config = small_config(**FAST_TRANSFER)

    scores = evaluation.evaluate_transfer(dataset, config, spectral_predict(dataset.num_classes), tmp_path)

    assert scores["eval/transfer/classes"] == 32
    assert scores["eval/transfer/held_out_classes"] == 0
    assert scores["eval/transfer/train_recordings"] == 205
    assert scores["eval/transfer/test_recordings"] == 72
    assert scores["eval/transfer/k1_shots"] == 1
    for probe in ("linear", "prototype"):
        for shots in ("k1", "k4", "kall"):
            for name in ("auroc", "cmap", "top1"):
                assert 0.0 <= scores[f"eval/transfer/{probe}_{shots}_{name}"] <= 1.0
                assert scores[f"eval/transfer/{probe}_{shots}_{name}_std"] >= 0.0
        assert scores[f"eval/transfer/{probe}_kall_auroc_std"] == 0.0
    # Band energies carry species information, so a probe on all of them beats chance.
    assert scores["eval/transfer/linear_kall_auroc"] > 0.6

    table = pl.read_parquet(tmp_path / "transfer_per_class.parquet")
    assert table.height == 2 * 3 * 32
    assert set(table["probe"]) == {"linear", "prototype"}
    embeddings = pl.read_parquet(tmp_path / "transfer_embeddings.parquet")
    assert embeddings.height == 205 + 72


def test_transfer_probes_held_out_taxon(cicada_dataset):
    config = small_config(**{"subset.sources": ["Cicadidae"], **FAST_TRANSFER})

    scores = evaluation.evaluate_transfer(
        cicada_dataset, config, spectral_predict(cicada_dataset.num_classes)
    )

    assert scores["eval/transfer/classes"] == 9
    assert scores["eval/transfer/held_out_classes"] == 1
    assert scores["eval/transfer/train_recordings"] == 94
    assert scores["eval/transfer/test_recordings"] == 25


def test_transfer_draws_are_reproducible(cicada_dataset):
    config = small_config(**{"subset.sources": ["Cicadidae"], **FAST_TRANSFER})
    predict = spectral_predict(cicada_dataset.num_classes)

    first = evaluation.evaluate_transfer(cicada_dataset, config, predict)
    second = evaluation.evaluate_transfer(cicada_dataset, config, predict)

    assert first == second


# All tasks through the registry.


def test_run_tasks_runs_every_task(dataset, tmp_path):
    config = small_config(**FAST_TRANSFER, **FAST_DETECTION, **{"eval.tasks": list(config_lib.EVAL_TASKS)})
    counting = CountingPredict(spectral_predict(dataset.num_classes))

    scores = evaluation.run_tasks(dataset, config, counting, tmp_path)

    for task in config_lib.EVAL_TASKS:
        assert f"time/eval_{task}_seconds" in scores
        assert (tmp_path / f"{task}_per_class.parquet").exists()
    assert all(name.startswith(("eval/", "time/")) for name in scores)
    # The transfer task reuses the first window of each test recording, so
    # only its 205 training windows are new. Batches are padded to 16.
    batches = [72, 205, scores["eval/detection/windows"]]
    assert counting.windows == sum(-(-count // 16) * 16 for count in batches)


def test_run_tasks_on_two_class_dataset(tmp_path):
    rows = [("a.wav", "x", "train"), ("b.wav", "x", "train"), ("c.wav", "y", "train"), ("d.wav", "x", "test")]
    for name, _, _ in rows:
        samples = np.random.default_rng(len(name)).normal(0, 0.1, 32_000).astype(np.float32)
        soundfile.write(tmp_path / name, samples, 32_000)
    pl.DataFrame(rows, schema=["file_name", "species", "data_set"], orient="row").write_csv(
        tmp_path / "m.csv"
    )
    config = small_config(
        **{
            "data.root": str(tmp_path),
            "data.manifests": ["m.csv"],
            "audio.window_seconds": 1.0,
            "eval.tasks": list(config_lib.EVAL_TASKS),
        },
        **FAST_DETECTION,
    )
    dataset = data.prepare_dataset(config, tmp_path, tmp_path / "cache")

    scores = evaluation.run_tasks(
        dataset, config, spectral_predict(dataset.num_classes), tmp_path / "artifacts"
    )

    assert scores["eval/test/recordings"] == 1
    assert scores["eval/transfer/classes"] == 2
    assert scores["eval/transfer/test_recordings"] == 1
    # One test recording leaves class y without a positive and class x
    # without a negative, so no class has a ROC AUC.
    assert np.isnan(scores["eval/transfer/linear_kall_auroc"])
    assert scores["eval/transfer/linear_kall_top1"] in (0.0, 1.0)
    assert scores["eval/detection/classes"] == 1
    assert scores["eval/detection/events"] == 2
