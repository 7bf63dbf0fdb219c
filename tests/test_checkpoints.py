"""A trial killed mid-run resumes from its checkpoint and ends where an uninterrupted one does."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from pipeline import checkpoints, data, train
from tests.conftest import small_config


class Interrupted(RuntimeError):
    pass


def _run(config, dataset, folder=None, stop_at=None):
    model, state = train.create(config, dataset.num_classes, dataset.num_sources)
    checkpointer = checkpoints.Checkpointer(folder, every_steps=1, keep=2) if folder else None

    def report(metrics, step):
        if stop_at is not None and step == stop_at:
            raise Interrupted(f"stopped at step {step}")

    try:
        state, metrics = train.train(config, dataset, report, model, state, checkpointer)
    finally:
        if checkpointer:
            checkpointer.close()
    return state, metrics


def test_resume_matches_uninterrupted_run(insect_root, audio_cache, tmp_path):
    config = small_config(**{"train.steps": 4, "audio.window_seconds": 1.0, "mixup.max_sources": 2})
    dataset = data.prepare_dataset(config, insect_root, audio_cache)

    reference, _ = _run(config, dataset)
    with pytest.raises(Interrupted):
        _run(config, dataset, tmp_path / "checkpoints", stop_at=3)
    resumed, metrics = _run(config, dataset, tmp_path / "checkpoints")

    assert metrics["train/resumed_from_step"] == 2
    assert int(resumed.step) == 4
    for one, two in zip(jax.tree.leaves(reference.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_allclose(np.asarray(one), np.asarray(two), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(jax.random.key_data(reference.key), jax.random.key_data(resumed.key))


def test_keeps_only_the_last_checkpoints(tmp_path):
    config = small_config()
    _, state = train.create(config, 4, 4)
    checkpointer = checkpoints.Checkpointer(tmp_path / "c", every_steps=1, keep=2)

    for step in range(1, 5):
        checkpointer.maybe_save(step, state)
    checkpointer.close()

    assert sorted(int(path.name) for path in (tmp_path / "c").iterdir() if path.name.isdigit()) == [3, 4]


def test_disk_budget_stops_saving(tmp_path):
    config = small_config()
    _, state = train.create(config, 4, 4)
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "filler.bin").write_bytes(b"x" * 10_000)
    checkpointer = checkpoints.Checkpointer(
        tmp_path / "study" / "c", every_steps=1, keep=2, budget_folder=tmp_path / "study", budget_bytes=5_000
    )

    saved = checkpointer.maybe_save(1, state)
    checkpointer.close()

    assert not saved
