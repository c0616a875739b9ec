"""Test helpers shared by several test modules: a tiny Flax model and random batches.

(Kept out of conftest.py: several conftest modules exist and `import conftest` is ambiguous.)
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


class TinyNet(nn.Module):
    """Conv -> BN -> relu -> pool -> dense: two prunable kernels ("stem", "head")."""

    num_classes: int = 3
    features: int = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.features, (3, 3), use_bias=False, name="stem")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x)
        x = nn.relu(x)
        x = nn.Conv(self.features, (3, 3), use_bias=False, name="conv")(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)




def random_batch(seed: int, n: int = 16, num_classes: int = 3, num_groups: int = 2, hw: int = 8):
    """A deterministic random batch {image, label, group, weight}."""
    rng = np.random.default_rng(seed)
    return {
        "image": jnp.asarray(rng.normal(size=(n, hw, hw, 3)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, num_classes, n), jnp.int32),
        "group": jnp.asarray(rng.integers(0, num_groups, n), jnp.int32),
        "weight": jnp.ones((n,), jnp.float32),
    }
