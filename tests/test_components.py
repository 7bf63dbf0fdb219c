"""Every training component as a toggle.

A toggle can be set from a study file, a bad combination fails when the
study loads, a component that is off adds nothing to the loss or its
gradients, and each head sends gradients only where the method requires.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from pipeline import components, config as config_lib, study, train
from tests.conftest import small_config

# A valid value other than the default for every field of the component
# configs, each set from one study file.
FIELD_VALUES = {
    "model.backbone": "small",
    "model.dropout_rate": 0.1,
    "model.batch_norm_momentum": 0.99,
    "mixup.max_sources": 3,
    "mixup.alpha": 0.5,
    "mixup.beta": 2.0,
    "mixup.fixed_sources": True,
    "mixup.dirichlet_concentration": 0.3,
    "mixup.label_mode": "weighted",
    "source_loss.enabled": True,
    "source_loss.weight": 0.2,
    "source_loss.rank": 64,
    "prototype.enabled": True,
    "prototype.prototypes_per_class": 2,
    "prototype.orthogonality_weight": 0.1,
    "prototype.weight": 0.5,
    "distillation.enabled": True,
    "distillation.weight": 0.7,
    "distillation.temperature": 2.0,
    "distillation.start_step": 10,
    "labels.loss": "sigmoid",
    "labels.secondary": "smooth",
    "labels.secondary_target": 0.2,
    "window.selection": "peak",
    "window.peaks_per_recording": 3,
    "subset.sources": ["Orthoptera"],
    "subset.column": "class_ID",
    "subset.values": ["4", "5"],
    "subset.classes": ["Grylluscampestris"],
    "subset.fraction": 0.5,
    "subset.min_recordings_per_class": 2,
}
COMPONENT_CONFIGS = {
    "model": config_lib.ModelConfig,
    "mixup": config_lib.MixupConfig,
    "source_loss": config_lib.SourceLossConfig,
    "prototype": config_lib.PrototypeConfig,
    "distillation": config_lib.DistillationConfig,
    "labels": config_lib.LabelConfig,
    "window": config_lib.WindowConfig,
    "subset": config_lib.SubsetConfig,
}


def _write_study(folder, config_lines: list[str], factors: dict[str, list] | None = None) -> str:
    lines = ['[study]', 'name = "toggles"', "seeds = [0]", "", "[config]"] + config_lines
    if factors:
        lines += ["", "[factors]"] + [f"{name} = {json.dumps(levels)}" for name, levels in factors.items()]
    path = folder / "study.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_field_table_covers_every_component_field():
    fields = {
        f"{section}.{field.name}" for section, cls in COMPONENT_CONFIGS.items() for field in dataclasses.fields(cls)
    }

    assert fields == set(FIELD_VALUES)


def test_every_field_set_from_a_study_file(tmp_path):
    lines = [f"{path} = {json.dumps(value)}" for path, value in FIELD_VALUES.items()]

    (trial,) = study.load_study(_write_study(tmp_path, lines)).trials

    for path, value in FIELD_VALUES.items():
        expected = tuple(value) if isinstance(value, list) else value
        assert config_lib.get_path(trial.config, path) == expected, path


@pytest.mark.parametrize("name", sorted(components.COMPONENTS))
def test_every_component_level_from_a_study_file(tmp_path, name):
    levels = components.COMPONENTS[name]
    # The distillation levels need the prototype head, their teacher.
    base = ["prototype.enabled = true"] if name == "distillation" else []

    loaded = study.load_study(_write_study(tmp_path, base, {name: list(levels)}))

    assert len(loaded.trials) == len(levels)
    for trial in loaded.trials:
        for path, value in levels[trial.cell[name]].items():
            assert config_lib.get_path(trial.config, path) == value, (trial.cell_id, path)


@pytest.mark.parametrize(
    "lines, fields",
    [
        (["distillation.enabled = true"], ["distillation.enabled", "prototype.enabled"]),
        (
            ["prototype.enabled = true", "distillation.enabled = true", "distillation.start_step = 500", "train.steps = 100"],
            ["distillation.start_step", "train.steps"],
        ),
        (["mixup.max_sources = 8", "train.batch_size = 4"], ["mixup.max_sources", "train.batch_size"]),
        (['subset.column = "taxon"'], ["subset.column", "subset.values"]),
        (['subset.values = ["Orthoptera"]'], ["subset.column", "subset.values"]),
        (['window.selection = "loudest"'], ["window.selection"]),
        (['labels.secondary = "drop"'], ["labels.secondary"]),
        (['mixup.label_mode = "mean"'], ["mixup.label_mode"]),
        (["mixup.alpha = 0.0"], ["mixup.alpha"]),
        (["mixup.dirichlet_concentration = -1.0"], ["mixup.dirichlet_concentration"]),
        (["prototype.prototypes_per_class = 0"], ["prototype.prototypes_per_class"]),
        (["source_loss.rank = 0"], ["source_loss.rank"]),
        (["source_loss.weight = -1.0"], ["source_loss.weight"]),
        (["prototype.enabled = true", "distillation.enabled = true", "distillation.temperature = 0.0"], ["distillation.temperature"]),
        (["labels.secondary_target = 1.5"], ["labels.secondary_target"]),
        (["window.peaks_per_recording = 0"], ["window.peaks_per_recording"]),
        (["subset.fraction = 0.0"], ["subset.fraction"]),
        (["subset.min_recordings_per_class = 0"], ["subset.min_recordings_per_class"]),
        (['model.backbone = "efficientnet_b7"'], ["model.backbone"]),
    ],
)
def test_bad_setting_fails_at_load_naming_fields(tmp_path, lines, fields):
    with pytest.raises(config_lib.ConfigError) as error:
        study.load_study(_write_study(tmp_path, lines))

    for field in fields:
        assert field in str(error.value)


def test_bad_cell_names_cell_and_fields(tmp_path):
    path = _write_study(tmp_path, [], {"distillation": ["off", "on"]})

    with pytest.raises(config_lib.ConfigError) as error:
        study.load_study(path)

    assert "distillation=on" in str(error.value)
    assert "distillation.enabled" in str(error.value)
    assert "prototype.enabled" in str(error.value)


# The loss tests use 0.5 s of audio and 4 examples, so that the tiny network
# compiles in seconds.
NUM_CLASSES, NUM_SOURCES = 4, 6
OFF = {
    "mixup.max_sources": 1,
    "prototype.enabled": False,
    "distillation.enabled": False,
    "source_loss.enabled": False,
    "labels.loss": "softmax",
}
ON = {
    "prototype.enabled": True,
    "prototype.prototypes_per_class": 2,
    "distillation.enabled": True,
    "distillation.start_step": 2,
    "source_loss.enabled": True,
    "source_loss.rank": 8,
}


def _batch() -> dict[str, jax.Array]:
    labels = np.eye(NUM_CLASSES, dtype=np.float32)
    labels[0, 2] = 1.0  # two positives, 1/2 each
    rng = np.random.default_rng(0)
    return {
        "audio": jnp.asarray(rng.normal(0.0, 0.1, (4, 16_000)), jnp.float32),  # [batch, samples]
        "labels": jnp.asarray(labels),
        "secondary": jnp.zeros_like(labels),
        "source": jnp.arange(4, dtype=jnp.int32),
    }


def _plain_loss(model, params, model_state, batch):
    """The plain baseline written out: linear head, softmax against 1/k, nothing else."""
    network = nnx.merge(model.graphdef, params, model_state, copy=True)
    logits = network(model.frontend(batch["audio"]), training=True)["logits"]
    targets = batch["labels"] / batch["labels"].sum(axis=1, keepdims=True)
    return optax.softmax_cross_entropy(logits, targets).mean()


@pytest.fixture(scope="module")
def created():
    """Return {"off": (model, state), "on": (model, state)}, built once for the module."""
    return {
        "off": train.create(small_config(**OFF), NUM_CLASSES, NUM_SOURCES),
        "on": train.create(small_config(**ON), NUM_CLASSES, NUM_SOURCES),
    }


def test_off_equals_plain_baseline(created):
    model, state = created["off"]
    batch, key = _batch(), jax.random.key(0)

    @jax.jit
    def both(params, model_state):
        gradient_fn = jax.value_and_grad(train.compute_loss, argnums=1, has_aux=True)
        (loss, (_, terms)), gradients = gradient_fn(model, params, model_state, batch, key, jnp.int32(0))
        plain_loss, plain_gradients = jax.value_and_grad(_plain_loss, argnums=1)(model, params, model_state, batch)
        return loss, terms, gradients, plain_loss, plain_gradients

    loss, terms, gradients, plain_loss, plain_gradients = both(state.params, state.model_state)

    assert set(terms) == {"classifier", "loss"}
    assert float(loss) == pytest.approx(float(plain_loss), rel=1e-6)
    for ours, plain in zip(jax.tree.leaves(gradients), jax.tree.leaves(plain_gradients), strict=True):
        assert np.allclose(ours, plain, rtol=1e-5, atol=1e-7)


def test_heads_leave_shared_initialisation_alone(created):
    off, on = created["off"][1], created["on"][1]

    for part in ("backbone", "linear"):
        for a, b in zip(jax.tree.leaves(off.params[part]), jax.tree.leaves(on.params[part]), strict=True):
            assert np.array_equal(a, b)
    assert "prototype" not in off.params
    assert "source" not in off.params
    assert "prototype" in on.params
    assert "source" in on.params


@pytest.fixture(scope="module")
def term_gradients(created):
    """Return each loss term and its gradient, before and after distillation starts."""
    model, state = created["on"]
    batch, key = _batch(), jax.random.key(0)
    names = ("prototype", "orthogonality", "distillation", "source", "classifier")

    # The gradient of one term is that of the terms' dot product with a
    # one-hot selector, so a single compiled program serves every term.
    def selected_term(params, step, selector):
        _, (_, terms) = train.compute_loss(model, params, state.model_state, batch, key, step)
        return jnp.dot(selector, jnp.stack([terms[name] for name in names])), terms

    gradient_fn = jax.jit(jax.grad(selected_term, has_aux=True))
    results = {}
    for step in (1, 2):
        results[step] = {}
        for i, name in enumerate(names):
            gradients, terms = gradient_fn(state.params, jnp.int32(step), jax.nn.one_hot(i, len(names)))
            results[step][name] = (float(terms[name]), gradients)
        results[step]["total"] = (float(terms["loss"]), None)
    return results


def _largest(gradients, part: str) -> float:
    return max(float(np.abs(np.asarray(leaf)).max()) for leaf in jax.tree.leaves(gradients[part]))


def test_prototype_head_sends_no_gradient_to_backbone(term_gradients):
    for name in ("prototype", "orthogonality"):
        _, gradients = term_gradients[2][name]

        assert _largest(gradients, "backbone") == 0.0
        assert _largest(gradients, "linear") == 0.0
    assert _largest(term_gradients[2]["prototype"][1], "prototype") > 0.0


def test_distillation_sends_no_gradient_to_teacher(term_gradients):
    value, gradients = term_gradients[2]["distillation"]

    assert value > 0.0
    assert _largest(gradients, "prototype") == 0.0
    assert _largest(gradients, "linear") > 0.0


def test_distillation_zero_before_start(term_gradients):
    value, gradients = term_gradients[1]["distillation"]

    assert value == 0.0
    for part in gradients:
        assert _largest(gradients, part) == 0.0


def test_source_loss_trains_backbone_and_its_head(term_gradients):
    _, gradients = term_gradients[2]["source"]

    assert _largest(gradients, "source") > 0.0
    assert _largest(gradients, "backbone") > 0.0
    assert _largest(gradients, "linear") == 0.0


def test_total_is_weighted_sum_of_terms(term_gradients):
    terms = {name: value for name, (value, _) in term_gradients[2].items()}
    weights = small_config(**ON)

    expected = (
        terms["classifier"]
        + weights.prototype.weight * terms["prototype"]
        + weights.prototype.orthogonality_weight * terms["orthogonality"]
        + weights.distillation.weight * terms["distillation"]
        + weights.source_loss.weight * terms["source"]
    )
    assert terms["total"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", ["off", "on"])
def test_train_step_keeps_state_signature(created, name):
    model, state = created[name]

    new_state, _ = jax.eval_shape(lambda state, batch: train.train_step(model, state, batch), state, _batch())

    # A changed shape, dtype or weak type would make the next step compile again.
    def signature(tree):
        return [(leaf.shape, leaf.dtype, leaf.weak_type) for leaf in jax.tree.leaves(tree)]

    before = signature(jax.eval_shape(lambda state: state, state))
    assert signature(new_state) == before
    assert not any(weak for _, _, weak in before)
