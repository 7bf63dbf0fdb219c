"""Classification losses, secondary-label handling and the distillation term."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pipeline import losses
from pipeline.config import LabelConfig

LOGITS = jnp.array([[2.0, -1.0, 0.5, 0.0, 1.0], [0.3, 0.2, -0.4, 1.5, -2.0]])  # [batch, classes]


def test_softmax_targets_are_one_over_k():
    labels = jnp.array([[1.0, 0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0, 0.0]])
    reference = optax.softmax_cross_entropy(LOGITS, labels / labels.sum(axis=1, keepdims=True))

    loss = losses.softmax_cross_entropy(LOGITS, labels)
    gradient = jax.grad(lambda logits: losses.softmax_cross_entropy(logits, labels).sum())(LOGITS)

    assert np.allclose(loss, reference, atol=1e-6)
    # d loss / d logits = softmax - 1/k on the k positives.
    assert np.allclose(gradient[0], jax.nn.softmax(LOGITS[0]) - labels[0] / 3, atol=1e-6)


def test_softmax_of_equal_logits_is_log_classes():
    labels = jnp.array([[1.0, 1.0, 0.0, 0.0]])

    loss = losses.softmax_cross_entropy(jnp.zeros((1, 4)), labels)

    assert float(loss[0]) == pytest.approx(np.log(4.0), abs=1e-6)


def test_sigmoid_is_mean_binary_cross_entropy():
    labels = jnp.array([[1.0, 0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0]])
    reference = optax.sigmoid_binary_cross_entropy(LOGITS, labels).mean(axis=1)

    loss = losses.sigmoid_cross_entropy(LOGITS, labels)

    assert np.allclose(loss, reference, atol=1e-6)


@pytest.mark.parametrize(
    "mode, target, mask",
    [("positive", 1.0, 1.0), ("ignore", 0.0, 0.0), ("smooth", 0.3, 1.0)],
)
def test_secondary_label_modes(mode, target, mask):
    labels = jnp.array([[1.0, 0.0, 0.0]])
    secondary = jnp.array([[1.0, 1.0, 0.0]])  # class 0 is also primary

    targets, weights = losses.label_targets(labels, secondary, LabelConfig(secondary=mode, secondary_target=0.3))

    assert float(targets[0, 0]) == 1.0  # primary wins
    assert float(weights[0, 0]) == 1.0
    assert float(targets[0, 1]) == pytest.approx(target)
    assert float(weights[0, 1]) == mask
    assert float(targets[0, 2]) == 0.0
    assert float(weights[0, 2]) == 1.0


def test_ignored_secondary_leaves_the_softmax():
    labels = jnp.array([[1.0, 0.0, 0.0, 0.0, 0.0]])
    secondary = jnp.array([[0.0, 1.0, 0.0, 0.0, 0.0]])
    logits = LOGITS[:1]
    config = LabelConfig(loss="softmax", secondary="ignore")
    without_class = optax.softmax_cross_entropy(jnp.delete(logits, 1, axis=1), jnp.delete(labels, 1, axis=1))

    loss = losses.classification_loss(logits, labels, secondary, config)
    gradient = jax.grad(lambda x: losses.classification_loss(x, labels, secondary, config))(logits)

    assert float(loss) == pytest.approx(float(without_class[0]), abs=1e-6)
    assert float(gradient[0, 1]) == 0.0


def test_ignored_secondary_leaves_the_sigmoid_mean():
    labels = jnp.array([[1.0, 0.0, 0.0, 0.0, 0.0]])
    secondary = jnp.array([[0.0, 1.0, 0.0, 0.0, 0.0]])
    config = LabelConfig(loss="sigmoid", secondary="ignore")
    kept = jnp.delete(LOGITS[:1], 1, axis=1)
    reference = optax.sigmoid_binary_cross_entropy(kept, jnp.delete(labels, 1, axis=1)).mean()

    loss = losses.classification_loss(LOGITS[:1], labels, secondary, config)

    assert float(loss) == pytest.approx(float(reference), abs=1e-6)


def test_mask_stays_binary_after_weighted_mixup():
    labels = jnp.array([[0.6, 0.0, 0.0]])  # gain-weighted primary label
    secondary = jnp.array([[0.0, 0.4, 0.0]])  # gain-weighted secondary label

    _, mask = losses.label_targets(labels, secondary, LabelConfig(secondary="ignore"))

    assert np.array_equal(mask, [[1.0, 0.0, 1.0]])


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_distillation_never_reaches_the_teacher(loss):
    student = LOGITS
    teacher = LOGITS[::-1] * 0.5

    student_gradient, teacher_gradient = jax.grad(
        lambda s, t: losses.distillation_loss(s, t, temperature=2.0, loss=loss), argnums=(0, 1)
    )(student, teacher)

    assert np.all(teacher_gradient == 0.0)
    assert float(jnp.abs(student_gradient).sum()) > 0.0


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_distillation_is_minimal_at_the_teacher(loss):
    teacher = LOGITS

    gradient = jax.grad(lambda s: losses.distillation_loss(s, teacher, temperature=1.5, loss=loss))(teacher)

    assert np.allclose(gradient, 0.0, atol=1e-6)
