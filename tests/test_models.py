"""Backbone presets and the prototype and source-prediction heads.

Shapes and parameter counts come from abstract evaluation (`nnx.eval_shape`,
`jax.eval_shape`), so even EfficientNet-B3 costs no forward pass here.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pipeline import models
from pipeline.config import from_dict
from pipeline.presets import PRESETS, BackbonePreset

# Parameters (nnx.Param) of each backbone, without any head and without
# batch-norm statistics. A change here changes every study's results.
PARAMETER_COUNTS = {
    "tiny": 44_608,
    "small": 404_054,
    "efficientnet_b0": 4_006_972,
    "efficientnet_b3": 10_695_512,
    "perch2_full": 10_695_512,  # another name for efficientnet_b3
}
EMBEDDING_CHANNELS = {
    "tiny": 128,
    "small": 384,
    "efficientnet_b0": 1280,
    "efficientnet_b3": 1536,
    "perch2_full": 1536,
}
FIVE_SECONDS = jax.ShapeDtypeStruct((1, 500, 128), jnp.float32)  # [batch, frames, mel_bins]


def _abstract_classifier(backbone: str, **overrides) -> models.Classifier:
    config = from_dict({"model": {"backbone": backbone}, **overrides})
    return nnx.eval_shape(lambda: models.Classifier(config, num_classes=32, num_sources=100, rngs=nnx.Rngs(0)))


@functools.cache
def _abstract_backbone(preset: BackbonePreset) -> models.Backbone:
    """Build each preset's abstract backbone once: tracing B3's constructor takes seconds."""
    return nnx.eval_shape(lambda: models.Backbone(preset, rngs=nnx.Rngs(0)))


def _output_shapes(network: nnx.Module, features: jax.ShapeDtypeStruct, training: bool) -> dict:
    graphdef, state = nnx.split(network)

    def forward(state, features):
        return nnx.merge(graphdef, state)(features, training=training, dropout_key=jax.random.key(0))

    return jax.eval_shape(forward, state, features)


def test_every_preset_has_a_pinned_count():
    assert set(PARAMETER_COUNTS) == set(PRESETS)
    assert set(EMBEDDING_CHANNELS) == set(PRESETS)


@pytest.mark.parametrize("name", sorted(PARAMETER_COUNTS))
def test_preset_parameter_count(name):
    backbone = _abstract_backbone(PRESETS[name])

    assert models.count_parameters(backbone) == PARAMETER_COUNTS[name]


@pytest.mark.parametrize("name", sorted(EMBEDDING_CHANNELS))
def test_five_seconds_give_16_by_4_embedding(name):
    backbone = _abstract_backbone(PRESETS[name])
    graphdef, state = nnx.split(backbone)

    spatial = jax.eval_shape(lambda state, x: nnx.merge(graphdef, state)(x, training=False), state, FIVE_SECONDS)

    assert spatial.shape == (1, 16, 4, EMBEDDING_CHANNELS[name])  # [batch, time, frequency, channels]


def test_classifier_pools_spatial_embedding():
    outputs = _output_shapes(_abstract_classifier("tiny"), FIVE_SECONDS, training=False)

    assert outputs["spatial"].shape == (1, 16, 4, 128)
    assert outputs["embedding"].shape == (1, 128)
    assert outputs["logits"].shape == (1, 32)


def test_b3_stem_is_3x3_stride_2_valid():
    preset = PRESETS["efficientnet_b3"]
    stem = _abstract_backbone(preset).stem
    graphdef, state = nnx.split(stem)

    shape = jax.eval_shape(
        lambda state, x: nnx.merge(graphdef, state)(x, training=False),
        state,
        jax.ShapeDtypeStruct((1, 500, 128, 1), jnp.float32),
    ).shape

    assert (preset.stem_kernel, preset.stem_stride) == (3, 2)
    assert stem.conv.kernel.shape == (3, 3, 1, 40)
    assert shape == (1, 249, 63, 40)  # VALID: (500 - 3) // 2 + 1 by (128 - 3) // 2 + 1


def test_disabled_heads_have_no_parameters():
    plain = _abstract_classifier("tiny")
    full = _abstract_classifier(
        "tiny",
        prototype={"enabled": True, "prototypes_per_class": 3},
        source_loss={"enabled": True, "rank": 16},
    )

    assert plain.prototype is None
    assert plain.source is None
    assert full.prototype.prototypes.shape == (32, 3, 128)
    assert full.prototype.raw_weights.shape == (32, 3)
    assert full.source.down.kernel.shape == (128, 16)  # low rank
    assert full.source.up.kernel.shape == (16, 100)


def test_source_head_runs_only_in_training():
    network = _abstract_classifier("tiny", source_loss={"enabled": True, "rank": 16})
    features = jax.ShapeDtypeStruct((2, 100, 128), jnp.float32)

    training = _output_shapes(network, features, training=True)
    inference = _output_shapes(network, features, training=False)

    assert training["source_logits"].shape == (2, 100)
    assert "source_logits" not in inference


def _prototype_head(prototypes: np.ndarray, raw_weights: np.ndarray | None = None) -> models.PrototypeHead:
    """Build a head with the given prototypes [classes, per_class, channels]."""
    classes, per_class, channels = prototypes.shape
    head = nnx.eval_shape(lambda: models.PrototypeHead(channels, classes, per_class, rngs=nnx.Rngs(0)))
    head.prototypes = nnx.Param(jnp.asarray(prototypes))
    if raw_weights is None:
        raw_weights = np.zeros((classes, per_class), np.float32)
    head.raw_weights = nnx.Param(jnp.asarray(raw_weights, jnp.float32))
    return head


_orthogonality = nnx.jit(lambda head: head.orthogonality_loss())
_scores = nnx.jit(lambda head, spatial: head(spatial))


def _orthonormal(classes: int, per_class: int, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bases = [np.linalg.qr(rng.normal(size=(channels, per_class)))[0].T for _ in range(classes)]
    return np.stack(bases).astype(np.float32)  # [classes, per_class, channels]


def test_orthogonality_zero_for_orthonormal_prototypes():
    head = _prototype_head(_orthonormal(3, 4, 8))

    assert float(_orthogonality(head)) == pytest.approx(0.0, abs=1e-5)


def test_orthogonality_ignores_prototype_length():
    lengths = np.array([0.5, 2.0, 7.0, 1.0], np.float32)[None, :, None]
    head = _prototype_head(_orthonormal(3, 4, 8) * lengths)

    assert float(_orthogonality(head)) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("case", ["random", "duplicate"])
def test_orthogonality_positive_otherwise(case):
    prototypes = _orthonormal(3, 4, 8)
    if case == "random":
        prototypes = np.random.default_rng(1).normal(size=(3, 4, 8)).astype(np.float32)
    else:
        prototypes[:, 1] = prototypes[:, 0]

    assert float(_orthogonality(_prototype_head(prototypes))) > 0.01


def test_prototype_score_is_weighted_max_cosine():
    prototypes = np.eye(4, dtype=np.float32).reshape(2, 2, 4)  # class 0: e0, e1; class 1: e2, e3
    raw_weights = np.array([[-3.0, 0.0], [1.0, 2.0]], np.float32)  # negative raw weights stay allowed
    head = _prototype_head(prototypes, raw_weights)
    spatial = np.full((1, 3, 2, 4), 0.1, np.float32)  # [batch, time, frequency, channels]
    spatial[0, 2, 1] = [5.0, 0.0, 0.0, 0.0]  # one position exactly along e0

    scores = np.asarray(_scores(head, jnp.asarray(spatial)))

    weights = np.log1p(np.exp(raw_weights))  # softplus
    unit = spatial / np.linalg.norm(spatial, axis=-1, keepdims=True)
    best = np.einsum("btfc,kpc->btfkp", unit, prototypes).max(axis=(1, 2))  # [batch, classes, per_class]
    assert np.all(weights > 0)
    assert best[0, 0, 0] == pytest.approx(1.0)
    assert np.allclose(scores, (best * weights).sum(axis=-1), atol=1e-5)


def test_prototype_score_ignores_event_position():
    head = _prototype_head(np.eye(4, dtype=np.float32).reshape(2, 2, 4))
    spatial = jax.random.normal(jax.random.key(0), (1, 3, 2, 4))
    moved = jnp.roll(spatial, shift=(2, 1), axis=(1, 2))

    assert np.allclose(_scores(head, spatial), _scores(head, moved), atol=1e-6)


def test_prototype_head_stops_input_gradient():
    head = _prototype_head(_orthonormal(3, 4, 8))
    spatial = jax.random.normal(jax.random.key(1), (1, 3, 2, 8))
    graphdef, state = nnx.split(head)

    def total_score(state, spatial):
        return nnx.merge(graphdef, state)(spatial).sum()

    state_gradient, input_gradient = jax.jit(jax.grad(total_score, argnums=(0, 1)))(state, spatial)

    assert np.all(np.asarray(input_gradient) == 0.0)
    assert float(jnp.abs(state_gradient["prototypes"][...]).sum()) > 0.0
    assert float(jnp.abs(state_gradient["raw_weights"][...]).sum()) > 0.0
