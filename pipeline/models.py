"""The classifier: an EfficientNet-style backbone and its heads, in flax nnx.

A disabled head is never built, so it has no parameters and no cost.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from pipeline.config import Config
from pipeline.presets import PRESETS, BackbonePreset, Stage


class DepthwiseConv(nnx.Module):
    """Depthwise convolution with SAME padding, written as a sum of shifted products.

    XLA's grouped convolution is about ten times slower than this on CPU,
    mostly in the backward pass (measured on 2 cores with jax 0.10).
    """

    def __init__(self, channels: int, kernel_size: int, stride: int, *, rngs: nnx.Rngs):
        init = jax.nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=(0, 1), out_axis=2)
        self.kernel = nnx.Param(init(rngs.params(), (kernel_size, kernel_size, channels)))
        self.stride = stride

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...]
        size, stride = kernel.shape[0], self.stride
        height, width = x.shape[1], x.shape[2]
        out_height, out_width = -(-height // stride), -(-width // stride)
        pad_height = max((out_height - 1) * stride + size - height, 0)
        pad_width = max((out_width - 1) * stride + size - width, 0)
        padded = jnp.pad(
            x, ((0, 0), (pad_height // 2, pad_height - pad_height // 2), (pad_width // 2, pad_width - pad_width // 2), (0, 0))
        )
        out = jnp.zeros((x.shape[0], out_height, out_width, x.shape[3]), x.dtype)
        for row in range(size):
            for column in range(size):
                window = padded[
                    :,
                    row : row + (out_height - 1) * stride + 1 : stride,
                    column : column + (out_width - 1) * stride + 1 : stride,
                    :,
                ]
                out = out + window * kernel[row, column]
        return out  # [batch, out_height, out_width, channels]


class ConvNormAct(nnx.Module):
    """Convolution, batch norm and an optional swish activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: str = "SAME",
        depthwise: bool = False,
        activate: bool = True,
        momentum: float = 0.9,
        rngs: nnx.Rngs,
    ):
        if depthwise:
            self.conv = DepthwiseConv(in_channels, kernel_size, stride, rngs=rngs)
        else:
            self.conv = nnx.Conv(
                in_channels,
                out_channels,
                (kernel_size, kernel_size),
                strides=(stride, stride),
                padding=padding,
                use_bias=False,
                rngs=rngs,
            )
        self.norm = nnx.BatchNorm(out_channels, momentum=momentum, epsilon=1e-3, rngs=rngs)
        self.activate = activate

    def __call__(self, x: jax.Array, training: bool) -> jax.Array:
        x = self.norm(self.conv(x), use_running_average=not training)
        return nnx.swish(x) if self.activate else x


class SqueezeExcite(nnx.Module):
    """Channel gating from globally pooled features."""

    def __init__(self, channels: int, squeezed: int, *, rngs: nnx.Rngs):
        self.reduce = nnx.Linear(channels, squeezed, rngs=rngs)
        self.expand = nnx.Linear(squeezed, channels, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        pooled = x.mean(axis=(1, 2))  # [batch, channels]
        gate = nnx.sigmoid(self.expand(nnx.swish(self.reduce(pooled))))
        return x * gate[:, None, None, :]


class MBConv(nnx.Module):
    """Inverted residual block: expand, depthwise, squeeze-excite, project."""

    def __init__(
        self, in_channels: int, stage: Stage, stride: int, se_ratio: float, *, momentum: float = 0.9, rngs: nnx.Rngs
    ):
        hidden = in_channels * stage.expand_ratio
        self.expand = (
            ConvNormAct(in_channels, hidden, 1, momentum=momentum, rngs=rngs) if stage.expand_ratio != 1 else None
        )
        self.depthwise = ConvNormAct(
            hidden, hidden, stage.kernel_size, stride=stride, depthwise=True, momentum=momentum, rngs=rngs
        )
        self.excite = SqueezeExcite(hidden, max(1, int(in_channels * se_ratio)), rngs=rngs)
        self.project = ConvNormAct(hidden, stage.channels, 1, activate=False, momentum=momentum, rngs=rngs)
        self.residual = stride == 1 and in_channels == stage.channels

    def __call__(self, x: jax.Array, training: bool) -> jax.Array:
        y = self.expand(x, training) if self.expand is not None else x
        y = self.excite(self.depthwise(y, training))
        y = self.project(y, training)
        return x + y if self.residual else y


class Backbone(nnx.Module):
    """EfficientNet-style network from log-mel features to a spatial embedding."""

    def __init__(self, preset: BackbonePreset, *, momentum: float = 0.9, rngs: nnx.Rngs):
        # With the default 3x3 stride-2 VALID stem, as in Perch 2.0, 500 x 128
        # features become 249 x 63.
        self.stem = ConvNormAct(
            1,
            preset.stem_channels,
            preset.stem_kernel,
            stride=preset.stem_stride,
            padding="VALID",
            momentum=momentum,
            rngs=rngs,
        )
        blocks = []
        channels = preset.stem_channels
        for stage in preset.stages:
            for repeat in range(stage.repeats):
                stride = stage.stride if repeat == 0 else 1
                blocks.append(MBConv(channels, stage, stride, preset.squeeze_excite_ratio, momentum=momentum, rngs=rngs))
                channels = stage.channels
        self.blocks = nnx.List(blocks)
        self.head = ConvNormAct(channels, preset.embedding_channels, 1, momentum=momentum, rngs=rngs)
        self.embedding_channels = preset.embedding_channels

    def __call__(self, features: jax.Array, training: bool) -> jax.Array:
        x = self.stem(features[..., None], training)  # [batch, frames', mels', channels]
        for block in self.blocks:
            x = block(x, training)
        return self.head(x, training)  # [batch, time, frequency, embedding]


class SourceHead(nnx.Module):
    """Low-rank classifier over training recordings, for the source-prediction loss."""

    def __init__(self, channels: int, rank: int, num_sources: int, *, rngs: nnx.Rngs):
        self.down = nnx.Linear(channels, rank, use_bias=False, rngs=rngs)
        self.up = nnx.Linear(rank, num_sources, rngs=rngs)

    def __call__(self, embedding: jax.Array) -> jax.Array:
        return self.up(self.down(embedding))  # [batch, sources]


class PrototypeHead(nnx.Module):
    """Prototype-learning classifier, after AudioProtoPNet (arXiv 2404.10420).

    Each class has P prototypes. A class score is a non-negative weighted sum
    of its prototypes' best cosine similarity over time and frequency. The
    input is the spatial embedding with its gradient stopped, so this head
    never changes the backbone.
    """

    def __init__(self, channels: int, num_classes: int, per_class: int, *, rngs: nnx.Rngs):
        init = jax.nn.initializers.normal(1.0)
        self.prototypes = nnx.Param(init(rngs.params(), (num_classes, per_class, channels)))
        # softplus(0.5413) = 1, so every prototype starts with weight 1. An
        # explicit dtype keeps the array from being weakly typed, which would
        # make the second training step compile again.
        self.raw_weights = nnx.Param(jnp.full((num_classes, per_class), 0.5413, dtype=jnp.float32))

    def unit_prototypes(self) -> jax.Array:
        prototypes = self.prototypes[...]
        return prototypes / (jnp.linalg.norm(prototypes, axis=-1, keepdims=True) + 1e-6)

    def __call__(self, spatial: jax.Array) -> jax.Array:
        spatial = jax.lax.stop_gradient(spatial)
        unit = spatial / (jnp.linalg.norm(spatial, axis=-1, keepdims=True) + 1e-6)
        similarity = jnp.einsum("btfc,kpc->btfkp", unit, self.unit_prototypes())
        best = similarity.max(axis=(1, 2))  # [batch, classes, prototypes]
        weights = jax.nn.softplus(self.raw_weights[...])  # non-negative
        return (best * weights).sum(axis=-1)  # [batch, classes]

    def orthogonality_loss(self) -> jax.Array:
        """Return the mean squared off-identity Gram entry of each class's prototypes."""
        unit = self.unit_prototypes()
        gram = jnp.einsum("kpc,kqc->kpq", unit, unit)
        identity = jnp.eye(unit.shape[1])
        return jnp.mean(jnp.sum(jnp.square(gram - identity), axis=(1, 2)))


class Classifier(nnx.Module):
    """Backbone plus the heads that a config switches on."""

    def __init__(self, config: Config, num_classes: int, num_sources: int, *, rngs: nnx.Rngs):
        preset = PRESETS[config.model.backbone]
        self.backbone = Backbone(preset, momentum=config.model.batch_norm_momentum, rngs=rngs)
        channels = preset.embedding_channels
        self.dropout = nnx.Dropout(config.model.dropout_rate) if config.model.dropout_rate > 0 else None
        self.linear = nnx.Linear(channels, num_classes, rngs=rngs)
        self.source = (
            SourceHead(channels, config.source_loss.rank, num_sources, rngs=rngs)
            if config.source_loss.enabled
            else None
        )
        self.prototype = (
            PrototypeHead(channels, num_classes, config.prototype.prototypes_per_class, rngs=rngs)
            if config.prototype.enabled
            else None
        )

    def __call__(self, features: jax.Array, *, training: bool = False, dropout_key: jax.Array | None = None) -> dict[str, jax.Array]:
        spatial = self.backbone(features, training)  # [batch, time, frequency, channels]
        embedding = spatial.mean(axis=(1, 2))  # [batch, channels]
        head_input = embedding
        if self.dropout is not None and training:
            head_input = self.dropout(embedding, deterministic=False, rngs=dropout_key)
        outputs = {"spatial": spatial, "embedding": embedding, "logits": self.linear(head_input)}
        if self.source is not None and training:
            outputs["source_logits"] = self.source(head_input)
        if self.prototype is not None:
            outputs["prototype_logits"] = self.prototype(spatial)
        return outputs


def count_parameters(module: nnx.Module) -> int:
    state = nnx.state(module, nnx.Param)
    return sum(leaf.size for leaf in jax.tree.leaves(state))
