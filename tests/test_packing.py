"""Seed packing gives the same result as separate runs of the same seeds."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import data, packing, train
from tests.conftest import small_config


def test_packed_seeds_match_separate_runs(insect_root, audio_cache):
    overrides = {
        "train.steps": 4,
        "audio.window_seconds": 1.0,
        "mixup.max_sources": 2,
        "source_loss.enabled": True,
        "source_loss.rank": 8,
    }
    configs = [small_config(seed=seed, **overrides) for seed in (0, 1)]
    dataset = data.prepare_dataset(configs[0], insect_root, audio_cache)
    packed_losses = [[], []]
    probe = np.random.default_rng(0).normal(0, 0.1, (4, configs[0].audio.window_samples)).astype(np.float32)

    model, packed_states, _ = packing.train_packed(
        configs, dataset, [lambda metrics, step, log=log: log.append(metrics["train/loss"]) for log in packed_losses]
    )
    for index, config in enumerate(configs):
        separate_losses = []
        separate_model, state = train.create(config, dataset.num_classes, dataset.num_sources)
        state, _ = train.train(config, dataset, lambda metrics, step: separate_losses.append(metrics["train/loss"]), separate_model, state)
        packed_state = packed_states[index]

        # Adam turns near-zero gradients into full-size steps, so single
        # parameters can drift apart by rounding; the losses and the model's
        # outputs are what must agree.
        np.testing.assert_allclose(packed_losses[index], separate_losses, rtol=1e-3)
        packed_logits = train.predict(model, packed_state.params, packed_state.model_state, probe)["logits"]
        separate_logits = train.predict(separate_model, state.params, state.model_state, probe)["logits"]
        np.testing.assert_allclose(np.asarray(packed_logits), np.asarray(separate_logits), rtol=1e-2, atol=1e-2)
    assert packed_losses[0] != packed_losses[1]


def test_packing_rejects_configs_that_differ_beyond_seed():
    with pytest.raises(ValueError, match="differ only in their seed"):
        packing.check_packable([small_config(seed=0), small_config(seed=1, **{"train.learning_rate": 0.1})])
    with pytest.raises(ValueError, match="distinct seeds"):
        packing.check_packable([small_config(seed=0), small_config(seed=0)])
