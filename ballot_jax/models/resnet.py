"""ResNet-18/50 (torchvision v1.5 layout) in Flax linen, NHWC.

Module names follow the convention that the mask code relies on: the first
convolution is ``"stem"``, the classifier is ``"head"``, and every weight
matrix/tensor is a leaf called ``"kernel"``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ballot_jax.models.conv import conv_and_norm, max_pool_impl, scale_channels

STEMS = ("cifar", "imagenet")

def check_stem(stem: str) -> str:
    """Return ``stem`` if valid, else raise ``ValueError`` listing the options."""
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; valid stems: {sorted(STEMS)}")
    return stem


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; projection shortcut when the shape changes."""

    features: int
    strides: int
    conv: Callable[..., nn.Module]
    norm: Callable[..., nn.Module]

    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Apply the block to NHWC ``x``."""
        out_ch = self.features * self.expansion
        y = self.conv(self.features, (3, 3), self.strides, padding=1, name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.features, (3, 3), 1, padding=1, name="conv2")(y)
        y = self.norm(name="bn2")(y)
        if self.strides != 1 or x.shape[-1] != out_ch:
            x = self.conv(out_ch, (1, 1), self.strides, padding=0, name="downsample_conv")(x)
            x = self.norm(name="downsample_bn")(x)
        return nn.relu(y + x)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 convs with BN, expansion 4 (ResNet v1.5)."""

    features: int
    strides: int
    conv: Callable[..., nn.Module]
    norm: Callable[..., nn.Module]

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Apply the block to NHWC ``x``."""
        out_ch = self.features * self.expansion
        y = self.conv(self.features, (1, 1), 1, padding=0, name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.features, (3, 3), self.strides, padding=1, name="conv2")(y)
        y = nn.relu(self.norm(name="bn2")(y))
        y = self.conv(out_ch, (1, 1), 1, padding=0, name="conv3")(y)
        y = self.norm(name="bn3")(y)
        if self.strides != 1 or x.shape[-1] != out_ch:
            x = self.conv(out_ch, (1, 1), self.strides, padding=0, name="downsample_conv")(x)
            x = self.norm(name="downsample_bn")(x)
        return nn.relu(y + x)


class ResNet(nn.Module):
    """ResNet for NHWC images, returning float32 logits.

    Attributes:
      block: :class:`BasicBlock` or :class:`Bottleneck`.
      stage_sizes: number of blocks per stage, e.g. ``(2, 2, 2, 2)``.
      num_classes: size of the ``"head"`` Dense layer.
      width: channel multiplier (1.0 = standard).
      stem: ``"cifar"`` (3x3/1 conv, no pool) or ``"imagenet"``
        (7x7/2 conv + 3x3/2 max-pool).
      dtype: compute dtype; parameters stay float32.
      conv_impl: convolution/max-pool lowering, see :class:`~.conv.Conv`.
    """

    block: Any
    stage_sizes: Sequence[int]
    num_classes: int
    width: float = 1.0
    stem: str = "cifar"
    dtype: Any = jnp.float32
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Map images ``f32[B, H, W, C]`` to logits ``f32[B, num_classes]``."""
        check_stem(self.stem)
        conv, norm = conv_and_norm(self.dtype, self.conv_impl, train, use_bias=False)
        base = scale_channels(64, self.width)
        x = jnp.asarray(x, self.dtype)
        if self.stem == "imagenet":
            x = conv(base, (7, 7), 2, padding=3, name="stem")(x)
            x = nn.relu(norm(name="stem_bn")(x))
            x = max_pool_impl(x, 3, 2, padding=1, impl=self.conv_impl)
        else:
            x = conv(base, (3, 3), 1, padding=1, name="stem")(x)
            x = nn.relu(norm(name="stem_bn")(x))
        for i, n_blocks in enumerate(self.stage_sizes):
            feats = scale_channels(64 * 2**i, self.width)
            for j in range(n_blocks):
                strides = 2 if i > 0 and j == 0 else 1
                x = self.block(
                    features=feats,
                    strides=strides,
                    conv=conv,
                    norm=norm,
                    name=f"layer{i + 1}_{j}",
                )(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return jnp.asarray(x, jnp.float32)


def ResNet18(**kwargs: Any) -> ResNet:  # noqa: N802 (class-like factory)
    """ResNet-18: :class:`BasicBlock`, stages ``(2, 2, 2, 2)``; ``kwargs`` go to
    :class:`ResNet` (``num_classes``, ``width``, ``stem``, ``dtype``, ``conv_impl``)."""
    return ResNet(block=BasicBlock, stage_sizes=(2, 2, 2, 2), **kwargs)


def ResNet50(**kwargs: Any) -> ResNet:  # noqa: N802 (class-like factory)
    """ResNet-50 v1.5: :class:`Bottleneck`, stages ``(3, 4, 6, 3)``; ``kwargs``
    go to :class:`ResNet`."""
    return ResNet(block=Bottleneck, stage_sizes=(3, 4, 6, 3), **kwargs)
