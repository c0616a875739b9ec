"""Manual-download TFDS builders (array_record, TensorFlow-free) for ballot_jax.

Registered TFDS names, classes and manual inputs (files in ``manual_dir``):

* ``utk_face`` (:class:`UtkFace`): ``UTKFace.tar.gz`` or the folder ``UTKFace/``.
* ``celeb_a_manual`` (:class:`CelebAManual`): ``img_align_celeba/`` or
  ``img_align_celeba.zip``, plus ``list_attr_celeba.txt`` and ``list_eval_partition.txt``.
* ``cifar10_s`` (:class:`Cifar10S`): ``cifar-10-python.tar.gz``.
* ``cifar100_manual`` (:class:`Cifar100Manual`): ``cifar-100-python.tar.gz``.
* ``tiny_imagenet`` (:class:`TinyImagenet`): ``tiny-imagenet-200.zip`` (or its folder).

Every builder has the splits ``train``, ``validation`` and ``test`` (see each
class docstring for how they are drawn). Prepare with
``builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=...))``
(or :func:`ballot_jax.data.prepare.prepare`) and read with
``builder.as_data_source(split)``: ``image`` comes back as uint8 ``[H, W, 3]``,
ClassLabel / integer features as ints, Text features (``filename``) as bytes.
Records keep generation order (no TFDS shuffling). Each prepared directory
also holds ``prepare_report.json`` (counts, skips) and ``skipped.json``.
"""

from ballot_jax.data.builders._common import (
    REPORT_FILENAME,
    SKIPPED_FILENAME,
    SPLITS,
    BadImageError,
    ManualDataError,
    ManualDataLayoutError,
    ManualDataMissingError,
    ManualImageBuilder,
    Skip,
    read_report,
)
from ballot_jax.data.builders.celeb_a import ATTRIBUTE_NAMES, CelebAManual
from ballot_jax.data.builders.cifar10_s import Cifar10S, gray_mask
from ballot_jax.data.builders.cifar100 import Cifar100Manual
from ballot_jax.data.builders.tiny_imagenet import TinyImagenet
from ballot_jax.data.builders.utk_face import (
    GENDER_NAMES,
    RACE_NAMES,
    UtkFace,
    UtkFaceNames,
    list_utkface_names,
    parse_utkface_name,
    utkface_split,
    valid_utkface_names,
)

__all__ = [
    "ATTRIBUTE_NAMES", "BadImageError", "CelebAManual", "Cifar100Manual", "Cifar10S",
    "GENDER_NAMES", "ManualDataError", "ManualDataLayoutError", "ManualDataMissingError",
    "ManualImageBuilder", "RACE_NAMES", "REPORT_FILENAME", "SKIPPED_FILENAME", "SPLITS", "Skip",
    "TinyImagenet", "UtkFace", "UtkFaceNames", "gray_mask", "list_utkface_names",
    "parse_utkface_name", "read_report", "utkface_split", "valid_utkface_names",
]
