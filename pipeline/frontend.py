"""Log-mel spectrogram frontend in JAX.

Defaults follow the Perch 2.0 reference frontend: a 640-sample Hann window,
hop 320, FFT size 1024, magnitude spectrum, 128 mel bins from 60 Hz to
16 kHz and `0.1 * log(max(x, floor))`. A 5-second window at 32 kHz gives
500 frames by 128 bins.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from pipeline.config import FrontendConfig


def _hertz_to_mel(frequency_hz: np.ndarray) -> np.ndarray:
    # HTK mel scale.
    return 2595.0 * np.log10(1.0 + frequency_hz / 700.0)


def mel_matrix(config: FrontendConfig, sample_rate_hz: int) -> np.ndarray:
    """Return triangular mel filters as a [fft_size // 2 + 1, mel_bins] matrix."""
    bins = config.fft_size // 2 + 1
    bin_mels = _hertz_to_mel(np.linspace(0.0, sample_rate_hz / 2, bins))
    edges = np.linspace(
        _hertz_to_mel(np.asarray(config.min_frequency_hz)),
        _hertz_to_mel(np.asarray(config.max_frequency_hz)),
        config.mel_bins + 2,
    )
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_mels[:, None] - lower) / (centre - lower)  # [bins, mel_bins]
    falling = (upper - bin_mels[:, None]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


class LogMel:
    """Turn audio [batch, samples] into log-mel features [batch, frames, mel_bins]."""

    def __init__(self, config: FrontendConfig, sample_rate_hz: int):
        self.config = config
        self.window = np.hanning(config.frame_length + 1)[:-1].astype(np.float32)  # periodic Hann
        self.mel = mel_matrix(config, sample_rate_hz)

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.config.hop_length

    def __call__(self, audio: jnp.ndarray) -> jnp.ndarray:
        config = self.config
        frames = self.num_frames(audio.shape[-1])

        # Centre each frame on its hop: pad half of the overlap on each side.
        overlap = config.frame_length - config.hop_length
        padded = jnp.pad(audio, ((0, 0), (overlap // 2, overlap - overlap // 2)))
        starts = np.arange(frames) * config.hop_length
        gather = starts[:, None] + np.arange(config.frame_length)[None, :]  # [frames, frame_length]
        framed = padded[:, gather] * self.window  # [batch, frames, frame_length]

        magnitude = jnp.abs(jnp.fft.rfft(framed, n=config.fft_size, axis=-1))  # [batch, frames, bins]
        mel = magnitude @ self.mel  # [batch, frames, mel_bins]
        return config.log_scale * jnp.log(jnp.maximum(mel, config.log_floor))
