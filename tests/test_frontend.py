"""The log-mel frontend's shape and frequency placement."""

from __future__ import annotations

import numpy as np

from pipeline.config import FrontendConfig
from pipeline.frontend import LogMel, mel_matrix


def test_five_seconds_gives_500_by_128():
    frontend = LogMel(FrontendConfig(), 32_000)

    features = frontend(np.zeros((2, 160_000), np.float32))

    assert features.shape == (2, 500, 128)


def test_silence_sits_at_the_log_floor():
    config = FrontendConfig()
    features = np.asarray(LogMel(config, 32_000)(np.zeros((1, 32_000), np.float32)))

    np.testing.assert_allclose(features, config.log_scale * np.log(config.log_floor), rtol=1e-6)


def test_tone_peaks_in_the_matching_mel_bin():
    rate = 32_000
    time = np.arange(rate) / rate
    low = np.sin(2 * np.pi * 500.0 * time)[None].astype(np.float32)
    high = np.sin(2 * np.pi * 8000.0 * time)[None].astype(np.float32)
    frontend = LogMel(FrontendConfig(), rate)

    low_bin = int(np.asarray(frontend(low))[0].mean(axis=0).argmax())
    high_bin = int(np.asarray(frontend(high))[0].mean(axis=0).argmax())

    assert low_bin < high_bin
    assert 0 < low_bin < 40
    assert 90 < high_bin < 128


def test_mel_filters_cover_the_band():
    filters = mel_matrix(FrontendConfig(), 32_000)

    assert filters.shape == (513, 128)
    assert np.all(filters.sum(axis=0) > 0)
