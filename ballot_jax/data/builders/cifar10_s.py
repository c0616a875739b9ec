"""CIFAR-10S (colour/grayscale skewed CIFAR-10, Wang et al. 2020): ``cifar10_s``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from ballot_jax.data.builders import _cifar, _common
from ballot_jax.data.builders._common import KeyExample, ManualDataLayoutError

ARCHIVE = "cifar-10-python.tar.gz"
ROOT = "cifar-10-batches-py"
TRAIN_MEMBERS = tuple(f"data_batch_{i}" for i in range(1, 6))
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck")
COLOR_NAMES = ("color", "gray")
GRAY_FRACTION = tuple([0.05] * 5 + [0.95] * 5)  # per class
GRAY_SEED = 0
VALIDATION_FRACTION = 0.1
VALIDATION_SEED = 0

MANUAL_INSTRUCTIONS = f"""\
Download the CIFAR-10 "python version" archive
(https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz) and place it, unextracted, as
  <manual_dir>/{ARCHIVE}
It must contain {ROOT}/data_batch_1..5, {ROOT}/test_batch and {ROOT}/batches.meta.
"""


def gray_mask(labels: np.ndarray, fractions: tuple[float, ...] = GRAY_FRACTION,
              seed: int = GRAY_SEED) -> np.ndarray:
    """Which training images become grayscale in CIFAR-10S.

    One ``rng = np.random.default_rng(seed)``; for class ``c = 0..9`` in order, with
    ``idx`` its indices (ascending) in the concatenated training batches, the first
    ``round_half_up(fractions[c] * len(idx))`` entries of ``idx[rng.permutation(len(idx))]``
    are gray. Default: 5% gray for classes 0-4, 95% gray for classes 5-9.
    """
    labels = np.asarray(labels)
    mask = np.zeros(len(labels), dtype=bool)
    rng = np.random.default_rng(seed)
    for c, frac in enumerate(fractions):
        idx = np.flatnonzero(labels == c)
        k = _common.round_half_up(frac * len(idx))
        mask[idx[rng.permutation(len(idx))[:k]]] = True
    return mask


def validation_mask(labels: np.ndarray, gray: np.ndarray, fraction: float = VALIDATION_FRACTION,
                    seed: int = VALIDATION_SEED) -> np.ndarray:
    """The validation carve-out: a seeded ``fraction`` of every (label, colour) group.

    See :func:`ballot_jax.data.builders._common.stratified_holdout` (groups
    ``2 * label + gray``), so validation keeps the training skew exactly.
    """
    return _common.stratified_holdout(2 * np.asarray(labels) + np.asarray(gray, dtype=int), fraction, seed)


class Cifar10S(_common.ManualImageBuilder):
    """CIFAR-10S: CIFAR-10 with a colour/grayscale skew (Wang et al., CVPR 2020).

    * Training images (the 50,000 of data_batch_1..5) are made grayscale per
      ``gray_mask``: classes 0-4 are 95% colour / 5% gray, classes 5-9 5% colour /
      95% gray (seed 0). Grayscale = BT.601 luminance replicated to 3 channels.
    * ``validation`` is carved out here: 10% of every (label, colour) group of the
      50,000 (``validation_mask``, seed 0) -> 5,000 images; ``train`` = the other
      45,000. Both are in original CIFAR order.
    * ``test`` holds every one of the 10,000 test images twice: records 0..9999 in
      colour, then records 10000..19999 the same images in gray (same order).

    Images are stored as PNG; ``color`` is 0 = color, 1 = gray.
    """

    name = "cifar10_s"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_INSTRUCTIONS
    HOMEPAGE = "https://github.com/princetonvisualai/DomainBiasMitigation"
    CITATION = """@inproceedings{wang2020fair,
  title={Towards Fairness in Visual Recognition: Effective Strategies for Bias Mitigation},
  author={Wang, Zeyu and Qinami, Klint and Karakozis, Ioannis Christos and Genova, Kyle
          and Nair, Prem and Hata, Kenji and Russakovsky, Olga},
  booktitle={CVPR}, year={2020}}"""
    SUPERVISED_KEYS = ("image", "label")
    COUNTED = ("label", "color")
    JOINT_COUNTED = (("label", "color"),)

    def _features(self) -> tfds.features.FeaturesDict:
        return tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(32, 32, 3), encoding_format="png"),
            "label": tfds.features.ClassLabel(names=list(LABEL_NAMES)),
            "color": tfds.features.ClassLabel(names=list(COLOR_NAMES)),
        })

    def _make_generators(self, manual_dir: Path | None) -> dict[str, Iterator[KeyExample]]:
        path = _common.find_input(manual_dir, [ARCHIVE], self.name, MANUAL_INSTRUCTIONS)
        batches = _cifar.read_members(path, self.name, ROOT, (*TRAIN_MEMBERS, "test_batch", "batches.meta"))
        names = _cifar.label_names(batches["batches.meta"], "label_names")
        if tuple(names) != LABEL_NAMES:
            raise ManualDataLayoutError(self.name, path, f"batches.meta label_names {list(LABEL_NAMES)}",
                                        repr(names))
        parts = [_cifar.images_and_labels(batches[m], ["labels"], self.name, f"{path}:{ROOT}/{m}")
                 for m in TRAIN_MEMBERS]
        train_x = np.concatenate([p[0] for p in parts])
        train_y = np.concatenate([p[1]["labels"] for p in parts])
        test_x, test_l = _cifar.images_and_labels(batches["test_batch"], ["labels"], self.name,
                                                  f"{path}:{ROOT}/test_batch")
        for y in (train_y, test_l["labels"]):
            if y.size and (y.min() < 0 or y.max() > 9):
                raise ManualDataLayoutError(self.name, path, "labels in 0..9", f"range {y.min()}..{y.max()}")
        gray = gray_mask(train_y)
        val = validation_mask(train_y, gray)
        return {
            "train": self._train_like("train", train_x, train_y, gray, ~val),
            "validation": self._train_like("validation", train_x, train_y, gray, val),
            "test": self._test(test_x, test_l["labels"]),
        }

    def _train_like(self, split: str, x: np.ndarray, y: np.ndarray, gray: np.ndarray,
                    select: np.ndarray) -> Iterator[KeyExample]:
        for i in np.flatnonzero(select):
            img = _common.to_grayscale_rgb(x[i]) if gray[i] else x[i]
            yield f"{split}_{i:05d}", {"image": _common.encode_image(img, "png"),
                                        "label": int(y[i]), "color": int(gray[i])}

    def _test(self, x: np.ndarray, y: np.ndarray) -> Iterator[KeyExample]:
        for color in (0, 1):
            for i in range(len(x)):
                img = _common.to_grayscale_rgb(x[i]) if color else x[i]
                yield f"test_{i:05d}_{COLOR_NAMES[color]}", {
                    "image": _common.encode_image(img, "png"), "label": int(y[i]), "color": color}
