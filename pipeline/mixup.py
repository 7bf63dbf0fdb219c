"""Generalized multi-source mixup, as described for Perch 2.0.

Each example of a batch becomes a mix of N windows of the same batch: itself
and N - 1 others. N = 1 + BetaBinomial(max_sources - 1, alpha, beta), or
exactly `max_sources` in the fixed mode. Gains w come from a symmetric
Dirichlet, and the mix is sum(w_i x_i) / sqrt(sum(w_i^2)), which keeps the
expected RMS of independent zero-mean sources of equal RMS.

Mixup off (`max_sources = 1`) and pairwise mixup (`max_sources = 2` with
`fixed_sources = true`) run through the same code. NOTE: the pairwise case
keeps the RMS normalisation, so it is not the convex combination of
"mixup: Beyond Empirical Risk Minimization" (Zhang et al., 2018).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import betaln, gammaln

from pipeline.config import MixupConfig


def expected_source_count(config: MixupConfig) -> float:
    """Return E[N], the mean number of windows in a mix."""
    if config.fixed_sources:
        return float(config.max_sources)
    return 1.0 + (config.max_sources - 1) * config.alpha / (config.alpha + config.beta)


def beta_binomial_log_pmf(trials: int, alpha: float, beta: float) -> jax.Array:
    """Return log P(K = k) for k = 0 .. trials under BetaBinomial(trials, alpha, beta)."""
    k = jnp.arange(trials + 1, dtype=jnp.float32)  # [trials + 1]
    log_choose = gammaln(trials + 1.0) - gammaln(k + 1.0) - gammaln(trials - k + 1.0)
    return log_choose + betaln(k + alpha, trials - k + beta) - betaln(alpha, beta)


def sample_source_counts(key: jax.Array, config: MixupConfig, batch_size: int) -> jax.Array:
    """Draw N for each example: 1 + BetaBinomial(max_sources - 1, alpha, beta).

    The draw is categorical over the closed-form probabilities of the
    max_sources possible values, which is exact and avoids a Beta sampler.
    """
    if config.fixed_sources:
        return jnp.full((batch_size,), config.max_sources, jnp.int32)
    log_pmf = beta_binomial_log_pmf(config.max_sources - 1, config.alpha, config.beta)
    extra = jax.random.categorical(key, log_pmf, shape=(batch_size,))
    return 1 + extra.astype(jnp.int32)  # [batch]


def sample_gains(key: jax.Array, config: MixupConfig, counts: jax.Array) -> jax.Array:
    """Draw Dirichlet gains over the first `counts[b]` sources of each example.

    Returns [batch, max_sources] gains that sum to one, with zeros past each
    example's count. Gains are normalised gamma draws, computed in log space
    so that a small concentration cannot leave every active gain at zero.
    """
    shape = (counts.shape[0], config.max_sources)
    if config.max_sources == 1:
        # A Dirichlet over one source is the constant 1.
        return jnp.ones(shape)
    log_gammas = jax.random.loggamma(key, config.dirichlet_concentration, shape)  # [batch, max_sources]
    active = jnp.arange(config.max_sources)[None, :] < counts[:, None]
    return jax.nn.softmax(jnp.where(active, log_gammas, -jnp.inf), axis=1)


def choose_partners(key: jax.Array, batch_size: int, sources: int) -> jax.Array:
    """Return [batch, sources] batch indices: each example, then distinct others."""
    scores = jax.random.uniform(key, (batch_size, batch_size))
    scores = scores.at[jnp.arange(batch_size), jnp.arange(batch_size)].set(-1.0)
    partners = jnp.argsort(-scores, axis=1)[:, : sources - 1]  # [batch, sources - 1]
    return jnp.concatenate([jnp.arange(batch_size)[:, None], partners], axis=1)


def mix(
    key: jax.Array, config: MixupConfig, audio: jax.Array, targets: dict[str, jax.Array]
) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
    """Mix each example with others of the batch.

    `audio` is [batch, samples]; `targets` maps names to [batch, classes]
    arrays (labels, secondary labels, sources), mixed with `config.label_mode`.
    Returns the mixed audio, the mixed targets and the source counts [batch].
    """
    batch_size = audio.shape[0]
    count_key, gain_key, partner_key = jax.random.split(key, 3)
    counts = sample_source_counts(count_key, config, batch_size)  # [batch]
    gains = sample_gains(gain_key, config, counts)  # [batch, sources]
    members = choose_partners(partner_key, batch_size, config.max_sources)  # [batch, sources]

    stacked = audio[members]  # [batch, sources, samples]
    norm = jnp.sqrt(jnp.sum(jnp.square(gains), axis=1, keepdims=True))  # [batch, 1]
    mixed_audio = jnp.einsum("bs,bsn->bn", gains, stacked) / norm

    active = jnp.arange(config.max_sources)[None, :] < counts[:, None]  # [batch, sources]
    mixed_targets = {}
    for name, target in targets.items():
        member_targets = target[members]  # [batch, sources, classes]
        if config.label_mode == "union":
            mixed_targets[name] = jnp.max(jnp.where(active[..., None], member_targets, 0.0), axis=1)
        else:
            mixed_targets[name] = jnp.einsum("bs,bsc->bc", gains, member_targets)
    return mixed_audio, mixed_targets, counts
