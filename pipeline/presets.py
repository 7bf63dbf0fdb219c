"""Backbone presets, from a tiny CNN for tests up to EfficientNet-B3.

The presets are plain data so that study files can be validated without
importing jax. `pipeline.models.Backbone` builds a network from one.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Stage:
    """A run of MBConv blocks with the same output width."""

    expand_ratio: int
    kernel_size: int
    stride: int
    channels: int
    repeats: int


@dataclasses.dataclass(frozen=True)
class BackbonePreset:
    """An EfficientNet-style network: stem, MBConv stages, 1x1 head."""

    stem_channels: int
    stages: tuple[Stage, ...]
    embedding_channels: int
    squeeze_excite_ratio: float = 0.25
    # The stem is a VALID convolution. EfficientNet and Perch 2.0 use a 3x3
    # kernel with stride 2; a larger stride makes a preset cheaper on CPU.
    stem_kernel: int = 3
    stem_stride: int = 2


# EfficientNet-B0 stages, from "EfficientNet: Rethinking Model Scaling for
# Convolutional Neural Networks" (Tan and Le, 2019), table 1.
_B0_STAGES = (
    Stage(1, 3, 1, 16, 1),
    Stage(6, 3, 2, 24, 2),
    Stage(6, 5, 2, 40, 2),
    Stage(6, 3, 2, 80, 3),
    Stage(6, 5, 1, 112, 3),
    Stage(6, 5, 2, 192, 4),
    Stage(6, 3, 1, 320, 1),
)


def _round_channels(channels: float, divisor: int = 8) -> int:
    """Round a scaled width to a multiple of 8 without losing over 10%."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * channels:
        rounded += divisor
    return rounded


def efficientnet(width: float, depth: float) -> BackbonePreset:
    """Scale the B0 stages by the EfficientNet width and depth multipliers."""
    stages = tuple(
        Stage(
            stage.expand_ratio,
            stage.kernel_size,
            stage.stride,
            _round_channels(stage.channels * width),
            int(math.ceil(stage.repeats * depth)),
        )
        for stage in _B0_STAGES
    )
    return BackbonePreset(
        stem_channels=_round_channels(32 * width),
        stages=stages,
        embedding_channels=_round_channels(1280 * width),
    )


PRESETS: dict[str, BackbonePreset] = {
    # Four stride-2 stages after the stem: a 5 s window becomes a 16 x 4 map,
    # as in the larger presets. 44k parameters; trains on one CPU core.
    "tiny": BackbonePreset(
        stem_channels=8,
        stages=(
            Stage(1, 3, 2, 16, 1),
            Stage(2, 3, 2, 24, 1),
            Stage(2, 3, 2, 48, 1),
            Stage(4, 3, 2, 64, 1),
        ),
        embedding_channels=128,
    ),
    "small": BackbonePreset(
        stem_channels=24,
        stages=(
            Stage(1, 3, 1, 16, 1),
            Stage(4, 3, 2, 24, 2),
            Stage(4, 5, 2, 40, 2),
            Stage(4, 3, 2, 80, 2),
            Stage(4, 5, 2, 112, 2),
        ),
        embedding_channels=384,
    ),
    "efficientnet_b0": efficientnet(width=1.0, depth=1.0),
    # Perch 2.0's backbone: 1536 embedding channels.
    "efficientnet_b3": efficientnet(width=1.2, depth=1.4),
}
# The published Perch 2.0 model size, under the name studies use for it.
PRESETS["perch2_full"] = PRESETS["efficientnet_b3"]


# Training examples per second on one CPU core (one trial, XLA on one
# thread), for the cost estimate of `ablate plan`, from a 2-core x86-64
# machine with jax 0.10. Tiny: 44, measured inside the default study. Small:
# 3.4, measured alone. EfficientNet-B0 and B3: half of what `ablate bench`
# measured on both cores (4.2 and 1.5 at batch 4).
# NOTE: these are estimates for other machines; rerun `ablate bench` for yours.
CPU_EXAMPLES_PER_SECOND = {
    "tiny": 44.0,
    "small": 3.4,
    "efficientnet_b0": 2.1,
    "efficientnet_b3": 0.75,
    "perch2_full": 0.75,
}
