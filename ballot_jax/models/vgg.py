"""CIFAR-style VGG-16 with batch norm in Flax linen, NHWC.

Thirteen 3x3 convolutions (each followed by BN + ReLU) in five stages
separated by 2x2 max-pools, global average pooling, then a single Dense
classifier ``"head"``.  As in the standard CIFAR VGG16-BN (and torchvision's
``vgg16_bn``) the convolutions keep their bias, which gives exactly
14,728,266 parameters for 10 classes.  The pools use ``"SAME"`` (ceil-mode)
padding, identical to ``"VALID"`` for even sizes, so that any input of at
least 8x8 works.  There is no separate stem: ``stem`` is accepted for API
uniformity and ignored.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ballot_jax.models.conv import max_pool_impl
from ballot_jax.models.conv import conv_and_norm, scale_channels

# Channel counts; "M" marks a 2x2/2 max-pool.
VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M",
    128, 128, "M",
    256, 256, 256, "M",
    512, 512, 512, "M",
    512, 512, 512, "M",
)  # fmt: skip


class VGG(nn.Module):
    """VGG with BN, global average pooling and one Dense classifier.

    Attributes:
      num_classes: size of the ``"head"`` Dense layer.
      cfg: layer configuration (ints = conv channels, ``"M"`` = max-pool).
      width: channel multiplier.
      dtype: compute dtype; parameters stay float32.
      conv_impl: convolution/max-pool lowering, see :class:`~.conv.Conv`.
    """

    num_classes: int
    cfg: Sequence[int | str] = VGG16_CFG
    width: float = 1.0
    dtype: Any = jnp.float32
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Map images ``f32[B, H, W, C]`` to logits ``f32[B, num_classes]``."""
        conv, norm = conv_and_norm(self.dtype, self.conv_impl, train, use_bias=True)
        x = jnp.asarray(x, self.dtype)
        n_conv = 0
        for item in self.cfg:
            if item == "M":
                x = max_pool_impl(x, 2, 2, padding="SAME", impl=self.conv_impl)
                continue
            name = "stem" if n_conv == 0 else f"conv{n_conv}"
            x = conv(scale_channels(int(item), self.width), (3, 3), 1, padding=1, name=name)(x)
            x = nn.relu(norm(name=f"bn{n_conv}")(x))
            n_conv += 1
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return jnp.asarray(x, jnp.float32)
