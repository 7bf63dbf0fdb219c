"""The training step with components on and off, determinism and divergence."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import data, train
from tests.conftest import small_config


def _batch(config, rng_seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(rng_seed)
    size = config.train.batch_size
    labels = np.eye(4, dtype=np.float32)[rng.integers(0, 4, size)]
    return {
        "audio": rng.normal(0, 0.1, (size, config.audio.window_samples)).astype(np.float32),
        "labels": labels,
        "secondary": np.zeros_like(labels),
        "source": rng.integers(0, 6, size).astype(np.int32),
    }


@pytest.mark.parametrize(
    "overrides, present, absent",
    [
        ({}, ["train/classifier"], ["train/source", "train/mixup_sources"]),
        ({"mixup.max_sources": 2, "mixup.fixed_sources": True}, ["train/mixup_sources"], ["train/source"]),
        ({"source_loss.enabled": True, "source_loss.rank": 8}, ["train/source"], ["train/mixup_sources"]),
    ],
)
def test_loss_terms_follow_the_toggles(overrides, present, absent):
    config = small_config(**{"audio.window_seconds": 1.0, **overrides})
    model, state = train.create(config, num_classes=4, num_sources=6)

    state, metrics = train.train_step(model, state, _batch(config))

    for name in present:
        assert name in metrics
    for name in absent:
        assert name not in metrics
    assert np.isfinite(float(metrics["train/loss"]))
    assert int(state.step) == 1
    if "mixup.max_sources" in overrides:
        assert float(metrics["train/mixup_sources"]) == 2.0


def test_source_head_exists_only_when_enabled():
    off_model, off_state = train.create(small_config(), 4, 6)
    on_model, on_state = train.create(small_config(**{"source_loss.enabled": True, "source_loss.rank": 8}), 4, 6)

    assert "source" not in off_state.params
    assert on_state.params["source"]["down"]["kernel"].shape[-1] == 8


def test_same_seed_gives_same_batches(insect_root, audio_cache):
    config = small_config()
    dataset = data.prepare_dataset(config, insect_root, audio_cache)

    first = [next(data.train_batches(dataset, config, start_step=step)) for step in range(3)]
    stream = data.train_batches(dataset, config)
    again = [next(stream) for _ in range(3)]
    other = next(data.train_batches(dataset, small_config(seed=1)))

    for one, two in zip(first, again):
        np.testing.assert_array_equal(one["audio"], two["audio"])
        np.testing.assert_array_equal(one["labels"], two["labels"])
    assert not np.array_equal(first[0]["audio"], other["audio"])


def test_non_finite_loss_stops_with_step(insect_root, audio_cache, tmp_path):
    config = small_config(**{"train.learning_rate": 1e30, "train.gradient_clip_norm": 1e30, "train.steps": 6})

    with pytest.raises(train.NonFiniteLossError) as caught:
        train.train_and_evaluate(config, tmp_path, base_dir=insect_root, cache_dir=audio_cache)

    assert 1 <= caught.value.step <= 6
    assert "non-finite loss at step" in str(caught.value)


def test_train_and_evaluate_reports_test_metrics(insect_root, audio_cache, tmp_path):
    reported = []

    final = train.train_and_evaluate(
        small_config(), tmp_path, lambda metrics, step: reported.append(step), base_dir=insect_root, cache_dir=audio_cache
    )

    for name in ("eval/test/cmap", "eval/test/auroc", "eval/test/top1"):
        assert 0.0 <= final[name] <= 1.0
    assert final["eval/test/recordings"] == 72
    assert reported[-1] is None
    assert (tmp_path / "config.json").exists()
    assert (tmp_path / "metrics.json").exists()
