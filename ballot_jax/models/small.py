"""A tiny conv net with batch norm (3,922 parameters at 10 classes) for tests."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ballot_jax.models.conv import conv_and_norm, scale_channels


class SmallCNN(nn.Module):
    """Three 3x3 conv + BN + ReLU layers (8, 16, 16 channels; the last two
    with stride 2), global average pooling and a Dense ``"head"``.

    Attributes:
      num_classes: size of the ``"head"`` Dense layer.
      width: channel multiplier.
      dtype: compute dtype; parameters stay float32.
      conv_impl: convolution lowering, see :class:`~.conv.Conv`.
    """

    num_classes: int
    width: float = 1.0
    dtype: Any = jnp.float32
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Map images ``f32[B, H, W, C]`` to logits ``f32[B, num_classes]``."""
        conv, norm = conv_and_norm(self.dtype, self.conv_impl, train, use_bias=False)
        x = jnp.asarray(x, self.dtype)
        for i, (ch, stride) in enumerate(((8, 1), (16, 2), (16, 2))):
            name = "stem" if i == 0 else f"conv{i}"
            x = conv(scale_channels(ch, self.width), (3, 3), stride, padding=1, name=name)(x)
            x = nn.relu(norm(name=f"bn{i}")(x))
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return jnp.asarray(x, jnp.float32)
