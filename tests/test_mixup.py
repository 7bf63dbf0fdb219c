"""Generalized mixup: source counts, Dirichlet gains, RMS and mixed labels."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pipeline import mixup
from pipeline.config import MixupConfig

# Mix tests share one batch size and few source counts, because each new
# gain shape compiles a gamma sampler (about 10 s on a loaded 2-core machine).
BATCH = 64
mix = mixup.mix


def _one_hot_batch(batch_size: int, classes: int) -> jax.Array:
    return jax.nn.one_hot(jnp.arange(batch_size) % classes, classes)  # [batch, classes]


@pytest.mark.parametrize(
    "max_sources, alpha, beta",
    [(5, 1.0, 1.0), (4, 2.0, 0.5)],
)
def test_mean_count_matches_beta_binomial(max_sources, alpha, beta):
    config = MixupConfig(max_sources=max_sources, alpha=alpha, beta=beta)
    expected = 1 + (max_sources - 1) * alpha / (alpha + beta)

    counts = np.asarray(mixup.sample_source_counts(jax.random.key(0), config, 40_000))

    assert counts.min() >= 1
    assert counts.max() <= max_sources
    assert mixup.expected_source_count(config) == pytest.approx(expected)
    # The standard error of the mean is below 0.01 for these settings.
    assert counts.mean() == pytest.approx(expected, abs=0.04)


def test_beta_binomial_pmf_known_cases():
    uniform = np.exp(np.asarray(mixup.beta_binomial_log_pmf(4, 1.0, 1.0)))
    skewed = np.exp(np.asarray(mixup.beta_binomial_log_pmf(3, 2.0, 0.5)))

    # BetaBinomial(n, 1, 1) is uniform over 0 .. n.
    assert np.allclose(uniform, 0.2, atol=1e-5)
    assert skewed.sum() == pytest.approx(1.0, abs=1e-5)
    assert float(np.dot(np.arange(4), skewed)) == pytest.approx(3 * 2.0 / 2.5, abs=1e-4)


def test_counts_follow_the_pmf():
    config = MixupConfig(max_sources=4, alpha=0.5, beta=2.0)
    expected = np.exp(np.asarray(mixup.beta_binomial_log_pmf(3, 0.5, 2.0)))

    counts = np.asarray(mixup.sample_source_counts(jax.random.key(10), config, 40_000))
    frequencies = np.bincount(counts - 1, minlength=4) / counts.size

    assert np.allclose(frequencies, expected, atol=0.01)


def test_fixed_mode_always_mixes_max_sources():
    config = MixupConfig(max_sources=2, fixed_sources=True)

    counts = np.asarray(mixup.sample_source_counts(jax.random.key(0), config, 64))

    assert set(counts.tolist()) == {2}


@pytest.mark.parametrize("concentration", [0.2, 1.0, 5.0])
def test_gains_follow_symmetric_dirichlet(concentration):
    config = MixupConfig(max_sources=4, fixed_sources=True, dirichlet_concentration=concentration)
    counts = jnp.full((BATCH,), 4)
    keys = jax.random.split(jax.random.key(1), 160)

    gains = np.concatenate([np.asarray(mixup.sample_gains(key, config, counts)) for key in keys])  # [10240, 4]

    # Dirichlet(c, c, c, c): mean 1/4, variance (1/4)(3/4) / (4c + 1).
    assert np.allclose(gains.sum(axis=1), 1.0, atol=1e-5)
    assert np.allclose(gains.mean(axis=0), 1 / 4, atol=0.01)
    expected_variance = (1 / 4) * (3 / 4) / (4 * concentration + 1)
    assert np.allclose(gains.var(axis=0), expected_variance, rtol=0.1)


def test_gains_are_zero_past_the_count():
    config = MixupConfig(max_sources=4, dirichlet_concentration=0.01)
    counts = jnp.array([1, 2, 3, 4] * (BATCH // 4))

    gains = np.asarray(mixup.sample_gains(jax.random.key(2), config, counts))

    assert np.all(np.isfinite(gains))
    assert np.allclose(gains.sum(axis=1), 1.0, atol=1e-5)
    for count in range(1, 5):
        rows = gains[np.asarray(counts) == count]
        assert np.all(rows[:, count:] == 0.0)


@pytest.mark.parametrize(
    "config",
    [
        MixupConfig(max_sources=4, alpha=1.0, beta=1.0),
        MixupConfig(max_sources=2, fixed_sources=True),
        MixupConfig(max_sources=4, fixed_sources=True, dirichlet_concentration=0.1),
    ],
    ids=["generalized", "pairwise", "peaky_gains"],
)
def test_mix_keeps_expected_rms(config):
    rng = np.random.default_rng(0)
    audio = jnp.asarray(rng.normal(0.0, 1.0, (BATCH, 4096)), jnp.float32)  # unit RMS, independent
    targets = {"labels": _one_hot_batch(BATCH, 8)}

    mixed, _, counts = mix(jax.random.key(3), config, audio, targets)

    assert float(jnp.mean(counts)) > 1.0
    # Each mixed sample is N(0, 1) whatever the gains, so the mean square
    # over 262,144 samples is within 0.02 of 1.
    assert float(jnp.mean(jnp.square(mixed))) == pytest.approx(1.0, abs=0.02)


def test_mix_off_returns_the_batch():
    config = MixupConfig(max_sources=1)
    audio = jax.random.normal(jax.random.key(0), (BATCH, 100))
    labels = _one_hot_batch(BATCH, 4)

    mixed, targets, counts = mix(jax.random.key(4), config, audio, {"labels": labels})

    assert np.allclose(mixed, audio, atol=1e-6)
    assert np.array_equal(targets["labels"], labels)
    assert set(np.asarray(counts).tolist()) == {1}


def test_partners_are_distinct_and_first_is_self():
    members = np.asarray(mixup.choose_partners(jax.random.key(5), BATCH, 4))  # [batch, sources]

    assert np.array_equal(members[:, 0], np.arange(BATCH))
    for row in members:
        assert len(set(row.tolist())) == 4


def test_union_labels_cover_every_mixed_window():
    config = MixupConfig(max_sources=4, label_mode="union")
    batch_size = BATCH
    labels = _one_hot_batch(batch_size, batch_size)  # every example its own class
    secondary = jnp.zeros_like(labels).at[0, 1].set(1.0)

    _, targets, counts = mix(jax.random.key(6), config, jnp.ones((batch_size, 10)), {"labels": labels, "secondary": secondary})
    mixed = np.asarray(targets["labels"])

    assert set(np.unique(mixed).tolist()) <= {0.0, 1.0}
    assert np.array_equal(mixed.sum(axis=1), np.asarray(counts))
    assert np.all(mixed[np.arange(batch_size), np.arange(batch_size)] == 1.0)
    assert float(targets["secondary"][0, 1]) == 1.0


def test_union_equals_elementwise_max_of_members():
    config = MixupConfig(max_sources=4, fixed_sources=True, label_mode="union")
    key = jax.random.key(7)
    labels = (jax.random.uniform(jax.random.key(8), (BATCH, 6)) > 0.6).astype(jnp.float32)

    _, targets, _ = mix(key, config, jnp.ones((BATCH, 10)), {"labels": labels})

    # mix() splits its key into count, gain and partner keys, in that order.
    partner_key = jax.random.split(key, 3)[2]
    members = mixup.choose_partners(partner_key, BATCH, 4)
    assert np.array_equal(targets["labels"], labels[members].max(axis=1))


def test_weighted_labels_carry_the_gains():
    config = MixupConfig(max_sources=4, fixed_sources=True, label_mode="weighted")
    batch_size = BATCH
    labels = _one_hot_batch(batch_size, batch_size)

    _, targets, _ = mix(jax.random.key(9), config, jnp.ones((batch_size, 10)), {"labels": labels})
    mixed = np.asarray(targets["labels"])

    assert np.allclose(mixed.sum(axis=1), 1.0, atol=1e-5)
    assert np.count_nonzero(mixed > 0, axis=1).tolist() == [4] * batch_size
    assert np.all(mixed < 1.0)
