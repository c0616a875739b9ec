"""UTKFace (aligned & cropped faces) as a manual TFDS builder: ``utk_face``."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from ballot_jax.data.builders import _common
from ballot_jax.data.builders._common import FileSource, KeyExample, ManualDataLayoutError

ARCHIVE = "UTKFace.tar.gz"
FOLDER = "UTKFace"
GENDER_NAMES = ("male", "female")
RACE_NAMES = ("white", "black", "asian", "indian", "others")
IMAGE_SIZE = (200, 200)
SPLIT_SEED = 0
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)

_NAME_RE = re.compile(r"^(\d+)_(\d+)_(\d+)_(\d+)\.jpg\.chip\.jpg$")

MANUAL_INSTRUCTIONS = f"""\
Download the "Aligned&Cropped Faces" archive of UTKFace
(https://susanqq.github.io/UTKFace/) and place EITHER
  <manual_dir>/{ARCHIVE}      (the archive as downloaded; it contains the folder
                               {FOLDER}/ with files <age>_<gender>_<race>_<datetime>.jpg.chip.jpg)
OR the extracted folder
  <manual_dir>/{FOLDER}/      (holding those .jpg.chip.jpg files directly).
Do not use the "in-the-wild" archives (part1/ part2/ part3/) or crop_part1.
"""


def parse_utkface_name(name: str) -> tuple[int, int, int] | None:
    """Parses ``[dir/]age_gender_race_datetime.jpg.chip.jpg`` -> (age, gender, race).

    Returns None for malformed names (wrong pattern, gender not in {0, 1}, race
    not in 0..4, or age > 150). gender: 0 = male, 1 = female; race: 0 white,
    1 black, 2 asian, 3 indian, 4 others.
    """
    return _parse(name)[0]


def _parse(name: str) -> tuple[tuple[int, int, int] | None, str]:
    base = name.rsplit("/", 1)[-1]
    m = _NAME_RE.match(base)
    if not m:
        return None, "file name does not match <age>_<gender>_<race>_<datetime>.jpg.chip.jpg"
    age, gender, race = (int(g) for g in m.groups()[:3])
    if gender not in (0, 1):
        return None, f"gender {gender} not in {{0, 1}}"
    if not 0 <= race < len(RACE_NAMES):
        return None, f"race {race} not in 0..4"
    if age > 150:
        return None, f"implausible age {age}"
    return (age, gender, race), ""


@dataclasses.dataclass(frozen=True)
class UtkFaceNames:
    """The file names of a UTKFace input, parsed. All lists are sorted basenames."""

    valid: list[str]
    malformed: list[tuple[str, str]]  # (basename, reason)
    source: str


def list_utkface_names(path: os.PathLike | str) -> UtkFaceNames:
    """Lists and parses the names of a UTKFace input without decoding any image.

    Args:
      path: ``UTKFace.tar.gz``, the extracted ``UTKFace/`` folder, or a manual dir
        holding one of them.

    Returns:
      valid names in sorted order (the order the seeded split is drawn from) and
      the malformed names with reasons.
    """
    src = _open_source(Path(path))
    files = _image_files(src, cheap=True)
    valid, malformed = [], []
    for base in sorted(files):
        parsed, reason = _parse(base)
        if parsed is None:
            malformed.append((base, reason))
        else:
            valid.append(base)
    return UtkFaceNames(valid=valid, malformed=malformed, source=str(src.path))


def valid_utkface_names(path: os.PathLike | str) -> list[str]:
    """The valid (parseable) UTKFace file basenames, sorted."""
    return list_utkface_names(path).valid


def utkface_split(names: Sequence[str], seed: int = SPLIT_SEED,
                  fractions: Sequence[float] = SPLIT_FRACTIONS) -> dict[str, list[str]]:
    """The documented seeded split of UTKFace names into train/validation/test.

    The names are sorted, ``perm = np.random.default_rng(seed).permutation(n)``;
    train = first ``floor(0.8 n)`` of ``perm``, validation = next ``floor(0.1 n)``,
    test = the rest. Each split's names are returned sorted.
    """
    ordered = sorted(set(names))
    parts = _common.random_partition(len(ordered), fractions, seed)
    return {split: [ordered[i] for i in idx] for split, idx in zip(_common.SPLITS, parts)}


def _open_source(path: Path) -> FileSource:
    if path.is_dir() and path.name != FOLDER:
        path = _common.find_input(path, [FOLDER, ARCHIVE], "utk_face", MANUAL_INSTRUCTIONS)
    if not path.exists():
        raise _common.ManualDataMissingError("utk_face", [path.name], path.parent, MANUAL_INSTRUCTIONS)
    return FileSource(path, "utk_face")


def _image_files(src: FileSource, cheap: bool = False) -> dict[str, str]:
    """basename -> full name for every file under UTKFace/ (layout-checked)."""
    names = src.list_tar_names() if (cheap and src.kind == "tar") else src.names()
    files: dict[str, str] = {}
    for n in names:
        parts = n.split("/")
        if parts[0] == FOLDER and len(parts) >= 2:
            files.setdefault(parts[-1], n)
    if not files:
        raise ManualDataLayoutError(
            "utk_face", src.path,
            f"a folder {FOLDER}/ holding <age>_<gender>_<race>_<datetime>.jpg.chip.jpg files "
            "(the Aligned&Cropped archive)", src.top_level(names))
    return files


class UtkFace(_common.ManualImageBuilder):
    """UTKFace aligned & cropped faces (200x200) with age, gender and race labels.

    Splits (seeded, documented): the valid file names are sorted and split
    80/10/10 into train/validation/test with ``utkface_split`` (numpy
    ``default_rng(0)`` permutation). Names that do not parse (the real archive has
    5) and images PIL cannot decode are skipped and reported in ``skipped.json``;
    a split assignment is made from names only, so an undecodable image just
    leaves its split one example short. Records are stored in sorted file-name
    order within each split. Real archive: 23,702 valid images -> 18,961 / 2,370
    / 2,371. The stored JPEG bytes are the original files.
    """

    name = "utk_face"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_INSTRUCTIONS
    HOMEPAGE = "https://susanqq.github.io/UTKFace/"
    CITATION = """@inproceedings{zhifei2017cvpr,
  title={Age Progression/Regression by Conditional Adversarial Autoencoder},
  author={Zhang, Zhifei and Song, Yang and Qi, Hairong},
  booktitle={CVPR}, year={2017}}"""
    SUPERVISED_KEYS = ("image", "gender")
    COUNTED = ("gender", "race")
    JOINT_COUNTED = (("gender", "race"),)

    def _features(self) -> tfds.features.FeaturesDict:
        return tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(*IMAGE_SIZE, 3), encoding_format="jpeg"),
            "age": np.int32,
            "gender": tfds.features.ClassLabel(names=list(GENDER_NAMES)),
            "race": tfds.features.ClassLabel(names=list(RACE_NAMES)),
            "filename": tfds.features.Text(),
        })

    def _make_generators(self, manual_dir: Path | None) -> dict[str, Iterator[KeyExample]]:
        path = _common.find_input(manual_dir, [FOLDER, ARCHIVE], self.name, MANUAL_INSTRUCTIONS)
        src = FileSource(path, self.name)
        files = _image_files(src)
        labels: dict[str, tuple[int, int, int]] = {}
        for base in sorted(files):
            parsed, reason = _parse(base)
            if parsed is None:
                self.skip(base, f"malformed name: {reason}")
            else:
                labels[base] = parsed
        splits = utkface_split(list(labels))
        return {split: self._examples(split, names, files, labels, src)
                for split, names in splits.items()}

    def _examples(self, split: str, names: list[str], files: dict[str, str],
                  labels: dict[str, tuple[int, int, int]], src: FileSource) -> Iterator[KeyExample]:
        for base, img in self.verified_images(names, lambda b: src.read(files[b]), str, split,
                                              size=IMAGE_SIZE, fmt="jpeg"):
            age, gender, race = labels[base]
            yield base, {"image": img, "age": age, "gender": gender, "race": race, "filename": base}
