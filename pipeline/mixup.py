"""Generalized multi-source mixup, as described for Perch 2.0.

Each example of a batch becomes a mix of N windows of the same batch: itself
and N - 1 others. N = 1 + BetaBinomial(max_sources - 1, alpha, beta), or
exactly `max_sources` in the fixed mode (classic pairwise mixup is the fixed
mode with two sources). Gains w come from a symmetric Dirichlet, and the mix
is sum(w_i x_i) / sqrt(sum(w_i^2)), which keeps the expected RMS of
independent sources of equal RMS.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pipeline.config import MixupConfig


def sample_source_counts(key: jax.Array, config: MixupConfig, batch_size: int) -> jax.Array:
    """Draw N for each example: 1 + BetaBinomial(max_sources - 1, alpha, beta)."""
    if config.fixed_sources:
        return jnp.full((batch_size,), config.max_sources, jnp.int32)
    probability_key, trial_key = jax.random.split(key)
    probability = jax.random.beta(probability_key, config.alpha, config.beta, (batch_size, 1))
    # A binomial draw as a sum of Bernoulli trials, exact for small counts.
    trials = jax.random.uniform(trial_key, (batch_size, config.max_sources - 1)) < probability
    return 1 + trials.sum(axis=1).astype(jnp.int32)


def mix(
    key: jax.Array, config: MixupConfig, audio: jax.Array, targets: dict[str, jax.Array]
) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
    """Mix each example with others of the batch.

    `audio` is [batch, samples]; `targets` maps names to [batch, classes]
    arrays (labels, secondary labels, sources), mixed with `config.label_mode`.
    Returns the mixed audio, the mixed targets and the source counts [batch].
    """
    batch_size = audio.shape[0]
    sources = config.max_sources
    count_key, gain_key, partner_key = jax.random.split(key, 3)
    counts = sample_source_counts(count_key, config, batch_size)  # [batch]

    # Source 0 is the example itself; the others are drawn from the rest of
    # the batch without repetition.
    scores = jax.random.uniform(partner_key, (batch_size, batch_size))
    scores = scores.at[jnp.arange(batch_size), jnp.arange(batch_size)].set(-1.0)
    partners = jnp.argsort(-scores, axis=1)[:, : sources - 1]  # [batch, sources - 1]
    members = jnp.concatenate([jnp.arange(batch_size)[:, None], partners], axis=1)  # [batch, sources]

    concentration = jnp.full((sources,), config.dirichlet_concentration)
    gains = jax.random.dirichlet(gain_key, concentration, (batch_size,))  # [batch, sources]
    active = jnp.arange(sources)[None, :] < counts[:, None]
    gains = jnp.where(active, gains, 0.0)
    gains = gains / gains.sum(axis=1, keepdims=True)

    stacked = audio[members]  # [batch, sources, samples]
    norm = jnp.sqrt(jnp.sum(jnp.square(gains), axis=1, keepdims=True))  # [batch, 1]
    mixed_audio = jnp.einsum("bs,bsn->bn", gains, stacked) / norm

    mixed_targets = {}
    for name, target in targets.items():
        member_targets = target[members]  # [batch, sources, classes]
        if config.label_mode == "union":
            mixed_targets[name] = jnp.max(jnp.where(active[..., None], member_targets, 0.0), axis=1)
        else:
            mixed_targets[name] = jnp.einsum("bs,bsc->bc", gains, member_targets)
    return mixed_audio, mixed_targets, counts
