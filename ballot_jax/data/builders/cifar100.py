"""CIFAR-100 from the official python archive: ``cifar100_manual``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from ballot_jax.data.builders import _cifar, _common
from ballot_jax.data.builders._common import KeyExample, ManualDataLayoutError

ARCHIVE = "cifar-100-python.tar.gz"
ROOT = "cifar-100-python"
VALIDATION_FRACTION = 0.1
VALIDATION_SEED = 0

MANUAL_INSTRUCTIONS = f"""\
Download the CIFAR-100 "python version" archive
(https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz) and place it, unextracted, as
  <manual_dir>/{ARCHIVE}
It must contain {ROOT}/train, {ROOT}/test and {ROOT}/meta.
"""


class Cifar100Manual(_common.ManualImageBuilder):
    """CIFAR-100 with fine (100) and coarse (20) labels, no TensorFlow needed.

    ``validation`` is carved out here: a seeded 10% of every fine class of the
    50,000 training images (``stratified_holdout``, seed 0) -> 5,000 images;
    ``train`` = the other 45,000; ``test`` = the official 10,000. All in original
    order. Label names come from the archive's ``meta`` (fine/coarse_label_names).
    Images are stored as PNG.
    """

    name = "cifar100_manual"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_INSTRUCTIONS
    HOMEPAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
    CITATION = """@techreport{krizhevsky2009learning,
  title={Learning Multiple Layers of Features from Tiny Images},
  author={Krizhevsky, Alex}, institution={University of Toronto}, year={2009}}"""
    SUPERVISED_KEYS = ("image", "label")
    COUNTED = ("coarse_label", "label")

    def _features(self) -> tfds.features.FeaturesDict:
        return tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(32, 32, 3), encoding_format="png"),
            "label": tfds.features.ClassLabel(num_classes=100),
            "coarse_label": tfds.features.ClassLabel(num_classes=20),
        })

    def _make_generators(self, manual_dir: Path | None) -> dict[str, Iterator[KeyExample]]:
        path = _common.find_input(manual_dir, [ARCHIVE], self.name, MANUAL_INSTRUCTIONS)
        members = _cifar.read_members(path, self.name, ROOT, ("train", "test", "meta"))
        for key, n in (("fine_label_names", 100), ("coarse_label_names", 20)):
            names = _cifar.label_names(members["meta"], key)
            if len(names) != n:
                raise ManualDataLayoutError(self.name, path, f"meta {key} with {n} names",
                                            f"{len(names)} names")
            feature = self.info.features["label" if key.startswith("fine") else "coarse_label"]
            feature.names = names
        keys = ["fine_labels", "coarse_labels"]
        train_x, train_l = _cifar.images_and_labels(members["train"], keys, self.name, f"{path}:{ROOT}/train")
        test_x, test_l = _cifar.images_and_labels(members["test"], keys, self.name, f"{path}:{ROOT}/test")
        for labels in (train_l, test_l):
            for k, hi in (("fine_labels", 99), ("coarse_labels", 19)):
                y = labels[k]
                if y.size and (y.min() < 0 or y.max() > hi):
                    raise ManualDataLayoutError(self.name, path, f"{k} in 0..{hi}",
                                                f"range {y.min()}..{y.max()}")
        val = _common.stratified_holdout(train_l["fine_labels"], VALIDATION_FRACTION, VALIDATION_SEED)
        return {
            "train": self._examples("train", train_x, train_l, ~val),
            "validation": self._examples("validation", train_x, train_l, val),
            "test": self._examples("test", test_x, test_l, np.ones(len(test_x), dtype=bool)),
        }

    def _examples(self, split: str, x: np.ndarray, labels: dict[str, np.ndarray],
                  select: np.ndarray) -> Iterator[KeyExample]:
        for i in np.flatnonzero(select):
            yield f"{split}_{i:05d}", {"image": _common.encode_image(x[i], "png"),
                                        "label": int(labels["fine_labels"][i]),
                                        "coarse_label": int(labels["coarse_labels"][i])}
