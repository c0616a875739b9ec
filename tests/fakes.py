"""Small in-memory stand-ins for ballot_jax.data used by the loop and method tests."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass
class FakeSplit:
    """A Split over host arrays: permutation from (seed, epoch); padded final eval batch."""

    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray

    @property
    def num_examples(self) -> int:
        return len(self.labels)

    def num_batches(self, batch_size: int, drop_remainder: bool) -> int:
        n = self.num_examples
        return n // batch_size if drop_remainder else -(-n // batch_size)

    def batches(self, *, batch_size, epoch, seed, shuffle, augment, start_batch=0, drop_remainder=True, sharding=None):
        n = self.num_examples
        order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
        for b in range(start_batch, self.num_batches(batch_size, drop_remainder)):
            idx = order[b * batch_size:(b + 1) * batch_size]
            w = np.ones(batch_size, np.float32)
            if len(idx) < batch_size:
                w[len(idx):] = 0
                idx = np.concatenate([idx, np.zeros(batch_size - len(idx), idx.dtype)])
            yield {"image": jnp.asarray(self.images[idx]), "label": jnp.asarray(self.labels[idx]),
                   "group": jnp.asarray(self.groups[idx]), "weight": jnp.asarray(w)}


@dataclasses.dataclass
class FakeTask:
    train: FakeSplit
    val: FakeSplit
    test: FakeSplit
    num_classes: int
    num_groups: int
    class_names: list
    group_names: list
    image_shape: tuple
    info: dict


def fake_task(seed: int = 0, n: int = 96, hw: int = 8, num_classes: int = 3, num_groups: int = 2) -> FakeTask:
    """Learnable synthetic data: the label shifts the image mean; the group adds noise."""
    rng = np.random.default_rng(seed)

    def split(m):
        labels = rng.integers(0, num_classes, m).astype(np.int32)
        groups = (np.arange(m) % num_groups).astype(np.int32)
        images = rng.normal(size=(m, hw, hw, 3)).astype(np.float32) * (1 + groups[:, None, None, None])
        images += labels[:, None, None, None].astype(np.float32)
        return FakeSplit(images, labels, groups)

    return FakeTask(split(n), split(n // 2), split(n // 2), num_classes, num_groups,
                    [str(c) for c in range(num_classes)], [f"g{g}" for g in range(num_groups)], (hw, hw, 3), {})
