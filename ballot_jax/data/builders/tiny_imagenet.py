"""Tiny ImageNet (200 classes, 64x64) from the official zip: ``tiny_imagenet``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from ballot_jax.data.builders import _common
from ballot_jax.data.builders._common import FileSource, KeyExample, ManualDataLayoutError

ARCHIVE = "tiny-imagenet-200.zip"
ROOT = "tiny-imagenet-200"
NUM_CLASSES = 200
IMAGE_SIZE = (64, 64)
VALIDATION_FRACTION = 0.1
VALIDATION_SEED = 0

MANUAL_INSTRUCTIONS = f"""\
Download http://cs231n.stanford.edu/tiny-imagenet-200.zip and place it, unextracted, as
  <manual_dir>/{ARCHIVE}
(or the extracted folder as <manual_dir>/{ROOT}/). It must contain {ROOT}/wnids.txt,
{ROOT}/train/<wnid>/images/*.JPEG, {ROOT}/val/images/*.JPEG and {ROOT}/val/val_annotations.txt.
"""


class TinyImagenet(_common.ManualImageBuilder):
    """Tiny ImageNet-200 (64x64 RGB), labels = the 200 wnids in sorted order.

    The official test split has no labels, so: ``test`` = the official ``val``
    (10,000 images, labels from ``val_annotations.txt``); ``validation`` = a seeded
    10% of every class of the official train set (``stratified_holdout`` over the
    class's sorted file names, seed 0; 50 per class); ``train`` = the remaining
    90,000. Records are in (wnid, file name) order. Grayscale/CMYK JPEGs of the
    original set are converted to RGB and re-encoded (JPEG quality 95; listed under
    ``converted`` in the report); all other JPEG bytes are kept as they are.
    """

    name = "tiny_imagenet"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_INSTRUCTIONS
    HOMEPAGE = "https://www.kaggle.com/c/tiny-imagenet"
    CITATION = """@article{le2015tiny,
  title={Tiny ImageNet Visual Recognition Challenge}, author={Le, Ya and Yang, Xuan},
  journal={CS 231N}, year={2015}}"""
    SUPERVISED_KEYS = ("image", "label")
    COUNTED = ("label",)
    NUM_CLASSES = NUM_CLASSES

    def _features(self) -> tfds.features.FeaturesDict:
        return tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(*IMAGE_SIZE, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(num_classes=self.NUM_CLASSES),
            "filename": tfds.features.Text(),
        })

    def _make_generators(self, manual_dir: Path | None) -> dict[str, Iterator[KeyExample]]:
        path = _common.find_input(manual_dir, [ARCHIVE, ROOT], self.name, MANUAL_INSTRUCTIONS)
        src = FileSource(path, self.name)
        names = set(src.names())
        required = [f"{ROOT}/wnids.txt", f"{ROOT}/val/val_annotations.txt"]
        missing = [r for r in required if r not in names]
        if missing:
            raise ManualDataLayoutError(self.name, path, f"{', '.join(required)} and {ROOT}/train/, "
                                        f"{ROOT}/val/images/ (missing: {missing})", src.top_level())
        wnids = sorted({w.strip() for w in src.read(f"{ROOT}/wnids.txt").decode().split() if w.strip()})
        if len(wnids) != self.NUM_CLASSES:
            raise ManualDataLayoutError(self.name, path, f"{self.NUM_CLASSES} wnids in wnids.txt",
                                        f"{len(wnids)}")
        self.info.features["label"].names = wnids
        index = {w: i for i, w in enumerate(wnids)}

        train: list[tuple[str, int]] = []
        for n in sorted(names):
            parts = n.split("/")
            if (len(parts) == 5 and parts[1] == "train" and parts[3] == "images"
                    and parts[4].lower().endswith(".jpeg")):
                if parts[2] in index:
                    train.append((n, index[parts[2]]))
                else:
                    self.skip(n, f"train folder {parts[2]!r} is not in wnids.txt")
        train.sort(key=lambda t: (t[1], t[0]))
        if not train:
            raise ManualDataLayoutError(self.name, path, f"{ROOT}/train/<wnid>/images/*.JPEG",
                                        "no training images")

        test: list[tuple[str, int]] = []
        annotations = src.read(f"{ROOT}/val/val_annotations.txt").decode()
        for line in annotations.splitlines():
            fields = line.split("\t")
            if not line.strip():
                continue
            if len(fields) < 2:
                raise ManualDataLayoutError(self.name, path, "val_annotations.txt lines "
                                            "'<file>\\t<wnid>\\t...'", repr(line[:100]))
            file, wnid = fields[0].strip(), fields[1].strip()
            full = f"{ROOT}/val/images/{file}"
            if wnid not in index:
                self.skip(full, f"val annotation wnid {wnid!r} is not in wnids.txt", "test")
            elif full not in names:
                self.skip(full, "annotated in val_annotations.txt but the image is missing", "test")
            else:
                test.append((full, index[wnid]))
        test.sort(key=lambda t: (t[1], t[0]))

        val_mask = _common.stratified_holdout(np.array([y for _, y in train]), VALIDATION_FRACTION,
                                              VALIDATION_SEED)
        return {
            "train": self._examples("train", [t for t, v in zip(train, val_mask) if not v], src),
            "validation": self._examples("validation", [t for t, v in zip(train, val_mask) if v], src),
            "test": self._examples("test", test, src),
        }

    def _examples(self, split: str, items: list[tuple[str, int]], src: FileSource) -> Iterator[KeyExample]:
        for (full, label), data in self.verified_images(items, lambda t: src.read(t[0]), lambda t: t[0],
                                                        split, size=IMAGE_SIZE, fmt="jpeg"):
            yield full, {"image": data, "label": label, "filename": full.rsplit("/", 1)[-1]}
