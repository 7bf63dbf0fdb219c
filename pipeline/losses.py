"""Loss terms of the training objective, each a pure function of arrays."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from pipeline.config import LabelConfig

_MASKED_LOGIT = -1e9


def label_targets(labels: jax.Array, secondary: jax.Array, config: LabelConfig) -> tuple[jax.Array, jax.Array]:
    """Return per-class targets and a loss mask from primary and secondary labels.

    Secondary labels are positives, smoothed positives (`secondary_target`
    times the label), or masked out of the loss, as `config.secondary` selects.
    A class that is also a primary label keeps its primary target. Labels may
    be fractional after gain-weighted mixup, but the mask is always 0 or 1.
    Shapes are [batch, classes].
    """
    secondary_only = jnp.where(labels > 0, 0.0, secondary)
    if config.secondary == "positive":
        return jnp.maximum(labels, secondary_only), jnp.ones_like(labels)
    if config.secondary == "smooth":
        return jnp.maximum(labels, config.secondary_target * secondary_only), jnp.ones_like(labels)
    return labels, jnp.where(secondary_only > 0, 0.0, 1.0)


def softmax_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Cross-entropy against targets normalised to sum to one; [batch] losses.

    With k positives of equal weight, each gets 1/k. Masked classes are left
    out of the softmax.
    """
    if mask is not None:
        logits = jnp.where(mask > 0, logits, _MASKED_LOGIT)
    total = targets.sum(axis=-1, keepdims=True)
    distribution = targets / jnp.maximum(total, 1e-9)
    return -jnp.sum(distribution * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def sigmoid_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Binary cross-entropy per class, averaged over unmasked classes; [batch] losses."""
    losses = optax.sigmoid_binary_cross_entropy(logits, targets)
    if mask is None:
        return losses.mean(axis=-1)
    return (losses * mask).sum(axis=-1) / jnp.maximum(mask.sum(axis=-1), 1.0)


def classification_loss(logits: jax.Array, labels: jax.Array, secondary: jax.Array, config: LabelConfig) -> jax.Array:
    """Return the mean classification loss of a batch under the label config."""
    targets, mask = label_targets(labels, secondary, config)
    if config.loss == "softmax":
        return softmax_cross_entropy(logits, targets, mask).mean()
    return sigmoid_cross_entropy(logits, targets, mask).mean()


def distillation_loss(student: jax.Array, teacher: jax.Array, temperature: float, loss: str) -> jax.Array:
    """Return the loss of the student logits against the teacher's soft targets.

    The teacher is a stop-gradient target, so this term trains the student
    only. Softmax heads compare tempered distributions; sigmoid heads compare
    per-class probabilities. NOTE: the loss is not rescaled by the squared
    temperature, so a temperature above 1 also shrinks its gradients.
    """
    teacher = jax.lax.stop_gradient(teacher) / temperature
    student = student / temperature
    if loss == "softmax":
        return softmax_cross_entropy(student, jax.nn.softmax(teacher, axis=-1)).mean()
    return optax.sigmoid_binary_cross_entropy(student, jax.nn.sigmoid(teacher)).mean()
