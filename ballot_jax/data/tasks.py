"""Tasks: which dataset, which attribute is the label, which examples form a group.

``load_task(config)`` turns a config into a :class:`TaskData` with three
:class:`~ballot_jax.data.pipeline.Split` objects (train / val / test).

Config keys (``ml_collections.ConfigDict`` or a plain dict; other keys are
ignored, so the training config can be passed whole): :data:`DEFAULTS` lists
every one with its default and meaning, and is the only home of those defaults
(:func:`ballot_jax.config.base_config`, a layer above, takes its data keys from
it; a test checks that they agree). A key the config lacks takes its
:data:`DEFAULTS` value; ``label`` and ``image_size`` of ``None`` are the
dataset's own (``default_label`` / ``default_image_size`` in :data:`DATASET_SPECS`).

Every group must have examples in val and test, where the fairness metrics are
measured (:func:`ballot_jax.fairness.metrics_from_counts` refuses an empty
group); a definition that leaves one empty is refused when the task is built,
naming the empty groups. A group without training examples is allowed (the
model never sees it; its val/test accuracy is still measured) and logged as a
warning, counted in ``info["train_empty_groups"]``.

The train / val / test splits are the builders' ``train`` / ``validation`` /
``test`` splits. Batches: see :mod:`ballot_jax.data.pipeline` (images
``float32`` in ``[0, 1]``, plus ``label``, ``group``, ``weight``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from ballot_jax.data import pipeline, quickstart
from ballot_jax.data.pipeline import ArraySplit, SourceSplit, Split

logger = logging.getLogger(__name__)

__all__ = [
    "TaskData",
    "DataNotFoundError",
    "DATASET_SPECS",
    "DEFAULTS",
    "load_task",
    "load_quickstart",
    "task_from_sources",
    "group_ids",
    "empty_groups",
    "in_memory_choice",
]

CIFAR10_CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
COLOR_NAMES = ("color", "gray")
UTK_RACE_NAMES = ("white", "black", "asian", "indian", "others")
UTK_GENDER_NAMES = ("male", "female")
UTK_AGE_BINS = ((0, 19), (20, 39), (40, 59), (60, None))
UTK_AGE_BIN_NAMES = ("0-19", "20-39", "40-59", "60+")
CELEB_A_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)

DEFAULTS: dict[str, Any] = {
    # quickstart | utk_face | celeb_a | cifar10_s | cifar100 | tiny_imagenet
    "dataset": "quickstart",
    # attribute used as the class label (None: the dataset's default); utk_face: race | gender | age_bins;
    # celeb_a: any of the 40 attributes; cifar100: label | coarse_label; the others: label
    "label": None,
    # "classes" (group = label, the paper's default), an attribute (race, gender, age_bins, color,
    # Male, coarse_label...) or "classes*ATTR" (group = label * n_ATTR + ATTR)
    "groups": "classes",
    # output side length (None: the dataset's default); non-square images are centre-cropped, then
    # resized bilinearly
    "image_size": None,
    # TFDS data dir (None: TFDS's default, $TFDS_DATA_DIR or ~/tensorflow_datasets)
    "data_dir": None,
    # where the downloaded archives are (None: <data_dir>/downloads/manual)
    "manual_dir": None,
    # prepare a missing dataset from manual_dir
    "prepare": True,
    # hold the splits as ArraySplits (True), stream them with grain (False) or decide by size ("auto":
    # in memory if all three splits at image_size as uint8 fit in in_memory_max_mb); the strings
    # true / false / auto / 1 / 0 (any case) work too, as a command line gives them
    "in_memory": "auto",
    # size limit of in_memory="auto"
    "in_memory_max_mb": 2048,
    # place in-memory splits on the device (implies in memory): jitted gather + augmentation
    "data_on_device": False,
    # grain worker processes of streamed splits (0: read in the training process, right for 2 cores;
    # above 0 the program must have parsed its absl flags, see ballot_jax.data.pipeline.SourceSplit)
    "worker_count": 0,
    # grain reader threads of streamed splits
    "read_threads": 2,
    # keep only the first N examples (in stored order) of that split, for benchmarks and smoke runs;
    # None keeps all
    "train_limit": None,
    "val_limit": None,
    "test_limit": None,
    # quickstart only: seed of its split and rendering, colour share of digits 0-4, validation and test
    # shares (the TFDS builders come with fixed splits)
    "data_seed": quickstart.DEFAULT_SEED,
    "color_fraction": quickstart.DEFAULT_COLOR_FRACTION,
    "val_fraction": quickstart.DEFAULT_VAL_FRACTION,
    "test_fraction": quickstart.DEFAULT_TEST_FRACTION,
}

_SPLITS = (("train", "train"), ("val", "validation"), ("test", "test"))  # (TaskData field, stored split)


class DataNotFoundError(FileNotFoundError):
    """A dataset is neither prepared in data_dir nor available as a manual download."""


# ---------------------------------------------------------------------------
# Dataset specifications.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Attribute:
    """A categorical per-example attribute usable as label and/or group.

    ``extract`` maps a stored example (dict) to an int in ``[0, num)``;
    ``feature`` names a TFDS ClassLabel feature whose names replace the
    default ``names`` when the builder provides them.
    """

    name: str
    num: int
    names: tuple[str, ...]
    extract: Callable[[Mapping[str, Any]], int]
    description: str
    feature: str | None = None


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How a user-facing dataset name maps to stored data and attributes."""

    name: str
    builder: str | None  # None: embedded (quickstart)
    labels: tuple[str, ...]
    attributes: Mapping[str, Attribute]
    default_label: str
    default_image_size: int


def _feature(key: str) -> Callable[[Mapping[str, Any]], int]:
    def extract(example: Mapping[str, Any]) -> int:
        return int(example[key])

    extract.__name__ = f"feature_{key}"
    return extract


def _age_bin(example: Mapping[str, Any]) -> int:
    """UTKFace age -> bin: 0-19 -> 0, 20-39 -> 1, 40-59 -> 2, 60+ -> 3."""
    return min(max(int(example["age"]), 0) // 20, 3)


def _celeb_attr(attr: str) -> Callable[[Mapping[str, Any]], int]:
    def extract(example: Mapping[str, Any]) -> int:
        return int(np.asarray(example["attributes"][attr]).item() > 0)  # 0/1 (also tolerates -1/1)

    extract.__name__ = f"celeb_a_{attr}"
    return extract


def _class_attr(n: int, names: Sequence[str] | None, description: str, key: str = "label") -> Attribute:
    names = tuple(names) if names is not None else tuple(f"class_{i}" for i in range(n))
    return Attribute(key, n, names, _feature(key), description, feature=key)


def _make_specs() -> dict[str, DatasetSpec]:
    color = Attribute("color", 2, COLOR_NAMES, _feature("color"), "0 = colour image, 1 = gray image")
    utk = {
        "race": Attribute("race", 5, UTK_RACE_NAMES, _feature("race"), "UTKFace race: " + ", ".join(UTK_RACE_NAMES),
                          feature="race"),
        "gender": Attribute("gender", 2, UTK_GENDER_NAMES, _feature("gender"), "UTKFace gender: 0 male, 1 female",
                            feature="gender"),
        "age_bins": Attribute("age_bins", 4, UTK_AGE_BIN_NAMES, _age_bin,
                              "UTKFace age in years binned as 0-19, 20-39, 40-59, 60+"),
    }
    celeb = {a: Attribute(a, 2, (f"not_{a}", a), _celeb_attr(a), f"CelebA attribute {a} (0 absent, 1 present)")
             for a in CELEB_A_ATTRIBUTES}
    return {
        "quickstart": DatasetSpec(
            "quickstart", None, ("label",),
            {"label": _class_attr(10, quickstart.QUICKSTART_CLASS_NAMES, "digit 0-9"), "color": color}, "label",
            quickstart.DEFAULT_IMAGE_SIZE),
        "utk_face": DatasetSpec("utk_face", "utk_face", ("race", "gender", "age_bins"), utk, "race", 64),
        "celeb_a": DatasetSpec("celeb_a", "celeb_a_manual", CELEB_A_ATTRIBUTES, celeb, "Smiling", 64),
        "cifar10_s": DatasetSpec(
            "cifar10_s", "cifar10_s", ("label",),
            {"label": _class_attr(10, CIFAR10_CLASS_NAMES, "CIFAR-10 class"), "color": color}, "label", 32),
        "cifar100": DatasetSpec(
            "cifar100", "cifar100_manual", ("label", "coarse_label"),
            {"label": _class_attr(100, None, "CIFAR-100 fine class"),
             "coarse_label": _class_attr(20, None, "CIFAR-100 superclass", key="coarse_label")}, "label", 32),
        "tiny_imagenet": DatasetSpec(
            "tiny_imagenet", "tiny_imagenet", ("label",),
            {"label": _class_attr(200, None, "Tiny ImageNet class (WordNet id)")}, "label", 64),
    }


DATASET_SPECS: dict[str, DatasetSpec] = _make_specs()


def _spec(dataset: str) -> DatasetSpec:
    """The spec of a dataset name (builder names such as ``celeb_a_manual`` are accepted too)."""
    for spec in DATASET_SPECS.values():
        if dataset == spec.builder:
            return spec
    if dataset not in DATASET_SPECS:
        raise ValueError(f"unknown dataset {dataset!r}; valid datasets: {', '.join(DATASET_SPECS)}")
    return DATASET_SPECS[dataset]


def _group_choices(spec: DatasetSpec) -> list[str]:
    return ["classes"] + list(spec.attributes) + [f"classes*{a}" for a in spec.attributes]


@dataclasses.dataclass(frozen=True)
class _Resolved:
    """A parsed (label, groups) choice."""

    label: str
    group_attr: str | None  # None: groups are the classes
    intersect: bool  # group = label * n_attr + attr


def _resolve(spec: DatasetSpec, label: str | None, groups: str | None) -> _Resolved:
    """Validates label / groups for ``spec``; raises ValueError listing valid values."""
    label = spec.default_label if label is None else str(label)
    if label not in spec.labels:
        raise ValueError(f"unknown label {label!r} for dataset {spec.name!r}; valid labels: {', '.join(spec.labels)}")
    groups = "classes" if groups is None else str(groups)
    if groups == "classes":
        return _Resolved(label, None, False)
    if groups.startswith("classes*") and groups[len("classes*"):] in spec.attributes:
        return _Resolved(label, groups[len("classes*"):], True)
    if groups in spec.attributes:
        return _Resolved(label, groups, False)
    raise ValueError(f"unknown groups {groups!r} for dataset {spec.name!r}; valid groups: "
                     f"{', '.join(_group_choices(spec))}")


def group_ids(labels: np.ndarray, attr: np.ndarray | None, num_attr: int | None, intersect: bool) -> np.ndarray:
    """Group ids: the labels (``attr is None``), the attribute, or ``label * num_attr + attr``."""
    labels = np.asarray(labels, np.int32)
    if attr is None:
        return labels.copy()
    attr = np.asarray(attr, np.int32)
    if intersect:
        if num_attr is None:
            raise ValueError("num_attr is required for an intersection")
        return labels * np.int32(num_attr) + attr
    return attr.copy()


def _group_names(class_names: Sequence[str], attr_names: Sequence[str] | None, intersect: bool) -> list[str]:
    if attr_names is None:
        return list(class_names)
    if intersect:
        return [f"{c}/{a}" for c in class_names for a in attr_names]
    return list(attr_names)


def _names(resolved: _Resolved, attr_names: Mapping[str, tuple[str, ...]]) -> tuple[list[str], list[str]]:
    """``(class_names, group_names)`` of a resolved label / groups choice."""
    class_names = list(attr_names[resolved.label])
    group_attr_names = attr_names[resolved.group_attr] if resolved.group_attr else None
    return class_names, _group_names(class_names, group_attr_names, resolved.intersect)


def _groups_key(resolved: _Resolved) -> str:
    """The ``groups`` config value of a resolved choice (``classes``, ``ATTR`` or ``classes*ATTR``)."""
    if resolved.group_attr is None:
        return "classes"
    return f"classes*{resolved.group_attr}" if resolved.intersect else resolved.group_attr


# ---------------------------------------------------------------------------
# Task container.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class TaskData:
    """Everything the training loop needs to know about the data of a task.

    ``info`` holds: ``dataset``, ``builder``, ``label`` / ``label_definition``,
    ``groups`` / ``group_definition``, ``image_size``, ``storage`` (per split:
    "memory-host", "memory-device" or "stream"), ``counts`` (examples per split),
    ``class_counts`` / ``group_counts`` (per split, lists indexed by id),
    ``train_empty_groups`` (names of the groups without training examples),
    ``limits`` and ``skipped`` (inputs the preparation left out, when known).
    """

    train: Split
    val: Split
    test: Split
    num_classes: int
    num_groups: int
    class_names: list[str]
    group_names: list[str]
    image_shape: tuple[int, int, int]
    info: dict[str, Any]

    def splits(self) -> dict[str, Split]:
        """``{"train": ..., "val": ..., "test": ...}``."""
        return {"train": self.train, "val": self.val, "test": self.test}


def _get(config: Any, key: str) -> Any:
    """``config[key]`` with the documented default (ConfigDict or Mapping)."""
    if config is None:
        return DEFAULTS[key]
    try:
        value = config.get(key, DEFAULTS[key])
    except AttributeError:
        value = getattr(config, key, DEFAULTS[key])
    return value


def _limit(config: Any, field: str) -> int | None:
    value = _get(config, f"{field}_limit")
    if value is None:
        return None
    value = int(value)
    if value < 0:
        raise ValueError(f"{field}_limit must be >= 0, got {value}")
    return value


def _counts(ids: np.ndarray, n: int) -> list[int]:
    return np.bincount(np.asarray(ids, np.int64), minlength=n)[:n].astype(int).tolist()


def _check_range(name: str, values: np.ndarray, n: int, split: str) -> None:
    if len(values) and (values.min() < 0 or values.max() >= n):
        raise ValueError(f"{split}: {name} values outside [0, {n}): min {values.min()}, max {values.max()}")


NAMED_GROUPS = 10  # empty groups named in a message (all are counted)


def _listed(ids: Sequence[int], names: Sequence[str]) -> str:
    """The first :data:`NAMED_GROUPS` names of ``ids``, then how many more."""
    shown = ", ".join(repr(names[i]) for i in ids[:NAMED_GROUPS])
    return shown + (f" and {len(ids) - NAMED_GROUPS} more" if len(ids) > NAMED_GROUPS else "")


def empty_groups(groups: np.ndarray, num_groups: int) -> list[int]:
    """The group ids in ``[0, num_groups)`` that no entry of ``groups`` has."""
    return np.flatnonzero(np.bincount(np.asarray(groups, np.int64), minlength=num_groups)[:num_groups] == 0).tolist()


def _checked_ids(spec: DatasetSpec, resolved: _Resolved, ids: Mapping[str, tuple[np.ndarray, np.ndarray]],
                 attr_names: Mapping[str, tuple[str, ...]], cutting_limits: Mapping[str, int]) -> list[str]:
    """Checks per-split ``(labels, groups)``; returns the names of the groups without training examples.

    Every group needs examples in val and test, where the fairness metrics are
    measured (an empty group has no accuracy, and
    :func:`ballot_jax.fairness.metrics_from_counts` refuses it): otherwise a
    ``ValueError`` names the empty groups and how to fix the definition
    (``cutting_limits``: the ``<split>_limit`` values that left examples out). A
    group without training examples is allowed (the model never sees it; its
    val/test accuracy is still a true number) and logged as a warning.
    """
    class_names, group_names = _names(resolved, attr_names)
    for field, (labels, groups) in ids.items():
        _check_range("label", labels, len(class_names), field)
        _check_range("group", groups, len(group_names), field)
    empty = {field: empty_groups(groups, len(group_names)) for field, (_, groups) in ids.items()}
    key = _groups_key(resolved)
    unmeasured = sorted(set(empty["val"]) | set(empty["test"]))
    if unmeasured:
        where = ", ".join(f"{len(empty[f])} of {len(group_names)} in {f}" for f in ("val", "test") if empty[f])
        never = len(set(empty["train"]) & set(empty["val"]) & set(empty["test"]))
        if resolved.intersect:
            fix = f"choose a coarser groups= ('classes' or {resolved.group_attr!r})"
        else:
            fix = f"choose other groups= (valid: {', '.join(g for g in _group_choices(spec) if g != key)})"
        limited = [f"{f}_limit (now {cutting_limits[f]})" for f in ("val", "test") if empty[f] and f in cutting_limits]
        raise ValueError(
            f"{spec.name}: groups={key!r} (label {resolved.label!r}) has groups without examples ({where}"
            + (f"; {never} in no split at all" if never else "") + f"): {_listed(unmeasured, group_names)}. "
            "An empty group has no accuracy, so CWV, MCD and every group metric would be undefined; "
            + fix + (f", or raise {' and '.join(limited)}" if limited else ""))
    if empty["train"]:
        logger.warning("%s: groups=%r leaves %d of %d groups without training examples (%s); the model never "
                       "sees them, their val/test accuracy is still measured", spec.name, key, len(empty["train"]),
                       len(group_names), _listed(empty["train"], group_names))
    return [group_names[i] for i in empty["train"]]


def _assemble(
    spec: DatasetSpec,
    resolved: _Resolved,
    splits: Mapping[str, Any],
    attr_names: Mapping[str, tuple[str, ...]],
    image_size: int,
    extra_info: Mapping[str, Any],
) -> TaskData:
    """Builds TaskData from per-split Split objects (holding labels/groups already checked by :func:`_checked_ids`)."""
    label_attr = spec.attributes[resolved.label]
    class_names, group_names = _names(resolved, attr_names)
    num_classes, num_groups = len(class_names), len(group_names)
    if resolved.group_attr is None:
        group_def = f"groups = classes ({label_attr.description})"
    else:
        attr = spec.attributes[resolved.group_attr]
        group_def = (f"group = label * {len(attr_names[resolved.group_attr])} + {attr.name} ({attr.description})"
                     if resolved.intersect else f"group = {attr.name} ({attr.description})")
    info: dict[str, Any] = {
        "dataset": spec.name,
        "builder": spec.builder,
        "label": resolved.label,
        "label_definition": label_attr.description,
        "groups": _groups_key(resolved),
        "group_definition": group_def,
        "image_size": image_size,
        "storage": {},
        "counts": {},
        "class_counts": {},
        "group_counts": {},
    }
    for field, split in splits.items():
        info["counts"][field] = split.num_examples
        info["class_counts"][field] = _counts(split.labels, num_classes)
        info["group_counts"][field] = _counts(split.groups, num_groups)
        if isinstance(split, ArraySplit):
            info["storage"][field] = "memory-device" if split.on_device else "memory-host"
        else:
            info["storage"][field] = "stream"
    info.update(extra_info)
    return TaskData(
        train=splits["train"], val=splits["val"], test=splits["test"],
        num_classes=num_classes, num_groups=num_groups,
        class_names=class_names, group_names=group_names,
        image_shape=(image_size, image_size, 3), info=info,
    )


def _labels_groups(resolved: _Resolved, values: Mapping[str, np.ndarray],
                   attr_names: Mapping[str, tuple[str, ...]]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(values[resolved.label], np.int32)
    if resolved.group_attr is None:
        return labels, group_ids(labels, None, None, False)
    n_attr = len(attr_names[resolved.group_attr])
    return labels, group_ids(labels, values[resolved.group_attr], n_attr, resolved.intersect)


# ---------------------------------------------------------------------------
# Quickstart (embedded data).
# ---------------------------------------------------------------------------


def _load_quickstart(config: Any, spec: DatasetSpec, resolved: _Resolved) -> TaskData:
    image_size = int(_get(config, "image_size") or spec.default_image_size)
    arrays = quickstart.quickstart_arrays(
        image_size=image_size, seed=int(_get(config, "data_seed")),
        color_fraction=float(_get(config, "color_fraction")),
        val_fraction=float(_get(config, "val_fraction")), test_fraction=float(_get(config, "test_fraction")),
    )
    on_device = bool(_get(config, "data_on_device"))
    attr_names = {k: a.names for k, a in spec.attributes.items()}
    limits = {field: _limit(config, field) for field, _ in _SPLITS}
    kept = {field: {k: v[: limits[field]] for k, v in arrays[stored].items()} for field, stored in _SPLITS}
    ids = {field: _labels_groups(resolved, data, attr_names) for field, data in kept.items()}
    cutting = {f: limits[f] for f, stored in _SPLITS if len(kept[f]["label"]) < len(arrays[stored]["label"])}
    train_empty = _checked_ids(spec, resolved, ids, attr_names, cutting)
    splits = {field: ArraySplit(kept[field]["image"], *ids[field], on_device=on_device, name=field) for field in kept}
    extra = {"limits": limits, "skipped": [], "train_empty_groups": train_empty,
             "note": "quickstart: a smoke demo built from sklearn digits, not a benchmark (see ballot_jax.data.quickstart)"}
    return _assemble(spec, resolved, splits, attr_names, image_size, extra)


# ---------------------------------------------------------------------------
# Generic path over random-access sources (TFDS data sources or fakes).
# ---------------------------------------------------------------------------


def _scan(source: Sequence[Mapping[str, Any]], indices: np.ndarray,
          attrs: Sequence[Attribute], chunk: int = 1024) -> dict[str, np.ndarray]:
    """Reads the given attributes of ``source[indices]`` (in chunks when supported)."""
    out = {a.name: np.empty(len(indices), np.int32) for a in attrs}
    getitems = getattr(source, "__getitems__", None)
    for start in range(0, len(indices), chunk):
        idx = [int(i) for i in indices[start : start + chunk]]
        examples = getitems(idx) if getitems is not None else [source[i] for i in idx]
        for j, ex in enumerate(examples):
            for a in attrs:
                out[a.name][start + j] = a.extract(ex)
    return out


_IN_MEMORY_WORDS: dict[str, bool | Literal["auto"]] = {"true": True, "1": True, "false": False, "0": False, "auto": "auto"}


def in_memory_choice(value: Any) -> bool | Literal["auto"]:
    """``in_memory`` as ``True``, ``False`` or ``"auto"``; also from the strings a command line gives.

    ``--config.in_memory=False`` arrives as the string ``"False"`` (the default
    ``"auto"`` makes the field a string), so the strings true / false / auto /
    1 / 0 are accepted in any case; anything else is a ``ValueError``.
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _IN_MEMORY_WORDS:
        return _IN_MEMORY_WORDS[value.strip().lower()]
    raise ValueError(f"in_memory={value!r} is not a valid choice; valid: True, False, 'auto' "
                     "(or the strings true, false, auto, 1, 0 in any case)")


def _use_memory(config: Any, sizes: Sequence[int], image_size: int) -> bool:
    """Whether the splits are held in memory (``in_memory``, ``data_on_device``, ``in_memory_max_mb``)."""
    in_memory = in_memory_choice(_get(config, "in_memory"))
    if bool(_get(config, "data_on_device")):
        if in_memory is False:
            raise ValueError("data_on_device=True needs the data in memory; in_memory=False contradicts it")
        return True
    if in_memory == "auto":
        total = sum(pipeline.estimated_bytes(n, image_size) for n in sizes)
        return total <= float(_get(config, "in_memory_max_mb")) * 2**20
    return bool(in_memory)


def _progress_logger(what: str) -> Callable[[int, int], None]:
    """Logs loading progress at every further 10%."""
    state = {"next": 0.1}

    def progress(done: int, total: int) -> None:
        if total and done / total >= state["next"]:
            logger.info("%s: %d/%d examples loaded", what, done, total)
            state["next"] = (int(done * 10 / total) + 1) / 10

    return progress


def task_from_sources(
    dataset: str,
    sources: Mapping[str, Sequence[Mapping[str, Any]]],
    config: Any = None,
    *,
    label_sources: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    feature_names: Mapping[str, Sequence[str]] | None = None,
    extra_info: Mapping[str, Any] | None = None,
) -> TaskData:
    """Builds the task of ``dataset`` from random-access sources of stored examples.

    Args:
      dataset: a key of :data:`DATASET_SPECS` (not ``quickstart``).
      sources: ``{"train"|"validation"|"test": Sequence of example dicts}`` with
        the builder's feature names (``image`` is a uint8 ``[H, W, 3]`` array).
      config: task config (see the module docstring); ``dataset`` in it is ignored.
      label_sources: the same examples read without image decoding (used to scan
        labels and attributes cheaply); defaults to ``sources``.
      feature_names: class names of ClassLabel features (e.g. the builder's
        ``info.features["label"].names``) overriding the built-in names.
      extra_info: merged into ``TaskData.info``.

    Raises:
      ValueError: as :func:`load_task`, checked before any image is read.
    """
    spec = _spec(dataset)
    if spec.builder is None:
        raise ValueError(f"{dataset!r} is embedded; use load_task")
    resolved = _resolve(spec, _get(config, "label"), _get(config, "groups"))
    in_memory_choice(_get(config, "in_memory"))  # a bad value is an error before the scan
    image_size = int(_get(config, "image_size") or spec.default_image_size)
    attr_names: dict[str, tuple[str, ...]] = {}
    for key, attr in spec.attributes.items():
        names = attr.names
        if feature_names and attr.feature and attr.feature in feature_names:
            names = tuple(str(n) for n in feature_names[attr.feature])
            if len(names) != attr.num:
                raise ValueError(f"{dataset}: feature {attr.feature!r} has {len(names)} classes, expected {attr.num}")
        attr_names[key] = names
    needed = [spec.attributes[resolved.label]]
    if resolved.group_attr and resolved.group_attr != resolved.label:
        needed.append(spec.attributes[resolved.group_attr])

    label_sources = label_sources or sources
    scanned: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
    limits: dict[str, int | None] = {}
    for field, stored in _SPLITS:
        if stored not in sources:
            raise ValueError(f"{dataset}: missing split {stored!r}; have {sorted(sources)}")
        n = len(sources[stored])
        limit = _limit(config, field)
        limits[field] = limit
        indices = np.arange(n if limit is None else min(limit, n), dtype=np.int64)
        scanned[field] = (indices, _scan(label_sources[stored], indices, needed))

    ids = {field: _labels_groups(resolved, values, attr_names) for field, (_, values) in scanned.items()}
    cutting = {f: limits[f] for f, stored in _SPLITS if len(scanned[f][0]) < len(sources[stored])}
    train_empty = _checked_ids(spec, resolved, ids, attr_names, cutting)  # before any image is read
    in_memory = _use_memory(config, [len(v[0]) for v in scanned.values()], image_size)
    on_device = bool(_get(config, "data_on_device"))
    splits: dict[str, Split] = {}
    for field, stored in _SPLITS:
        indices, _ = scanned[field]
        labels, groups = ids[field]
        split = SourceSplit(sources[stored], labels, groups, image_size=image_size, indices=indices,
                            worker_count=int(_get(config, "worker_count")),
                            read_threads=int(_get(config, "read_threads")), name=field)
        if in_memory:
            logger.info("%s/%s: loading %d examples into memory at %dx%d", dataset, field, len(indices),
                        image_size, image_size)
            split = split.materialize(on_device=on_device, progress=_progress_logger(f"{dataset}/{field}"))
        splits[field] = split
    info = {"limits": limits, "skipped": [], "train_empty_groups": train_empty}
    info.update(extra_info or {})
    return _assemble(spec, resolved, splits, attr_names, image_size, info)


# ---------------------------------------------------------------------------
# TFDS builders (prepared by ballot_jax.data.prepare).
# ---------------------------------------------------------------------------


def _prepare_module() -> Any:
    """``ballot_jax.data.prepare``, imported on first use (it imports TFDS builders)."""
    from ballot_jax.data import prepare  # pylint: disable=import-outside-toplevel

    return prepare


def _prepare_key(prepare: Any, spec: DatasetSpec) -> str:
    """The name ``prepare.prepare`` / ``builder_for`` know the dataset by."""
    known = getattr(prepare, "DATASETS", None)
    if known is not None and spec.builder not in known and spec.name in known:
        return spec.name
    return str(spec.builder)


def _default_data_dir() -> str:
    """TFDS's default data dir: $TFDS_DATA_DIR or ``~/tensorflow_datasets``."""
    return os.path.expanduser(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def _missing_message(spec: DatasetSpec, builder: Any, manual_dir: str, cause: str | None, can_prepare: bool) -> str:
    instructions = str(getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", "") or "").strip()
    instructions = instructions.replace("<manual_dir>", manual_dir)
    lines = [
        f"Dataset {spec.name!r} (TFDS builder {spec.builder!r}) is not prepared in {builder.data_dir!r}.",
    ]
    if can_prepare:
        lines.append(f"It can be prepared from the manual download, but that is missing from manual_dir={manual_dir!r}.")
    else:
        lines.append("Preparation is disabled (config.prepare=False).")
    if instructions:
        lines.append("What to place in manual_dir:\n" + instructions)
    if cause:
        lines.append(f"(preparation reported: {cause})")
    lines.append("Then rerun, or prepare explicitly with ballot_jax.data.prepare.prepare"
                 f"({spec.builder!r}, {manual_dir!r}, <data_dir>).")
    return "\n".join(lines)


def _read_skipped(builder: Any) -> list[Any]:
    path = os.path.join(str(builder.data_dir), "prepare_report.json")
    try:
        with open(path, encoding="utf-8") as f:
            return list(json.load(f).get("skipped", []))
    except (OSError, ValueError):
        return []


def _ensure_prepared(spec: DatasetSpec, config: Any) -> tuple[Any, dict[str, Any]]:
    """The prepared builder of ``spec``, preparing it from manual_dir if needed."""
    prepare = _prepare_module()
    key = _prepare_key(prepare, spec)
    data_dir = _get(config, "data_dir")
    data_dir = _default_data_dir() if data_dir is None else os.path.expanduser(str(data_dir))
    builder = prepare.builder_for(key, data_dir)
    extra: dict[str, Any] = {"data_dir": str(builder.data_dir)}
    if builder.is_prepared():
        return builder, extra
    manual_dir = _get(config, "manual_dir")
    manual_dir = (os.path.join(data_dir, "downloads", "manual") if manual_dir is None
                  else os.path.expanduser(str(manual_dir)))
    if not bool(_get(config, "prepare")):
        raise DataNotFoundError(_missing_message(spec, builder, manual_dir, None, can_prepare=False))
    logger.warning("%s is not prepared in %s; preparing it from %s (one-off)", spec.name, builder.data_dir,
                   manual_dir)
    try:
        report = prepare.prepare(key, manual_dir, data_dir)
    except FileNotFoundError as err:
        raise DataNotFoundError(_missing_message(spec, builder, manual_dir, str(err).splitlines()[0],
                                                 can_prepare=True)) from err
    summary = report.format() if callable(getattr(report, "format", None)) else report
    logger.info("prepared %s:\n%s", spec.name, summary)
    extra["prepared_now"] = True
    builder = prepare.builder_for(key, data_dir)
    return builder, extra


def _label_source(builder: Any, split: str) -> Sequence[Mapping[str, Any]]:
    """A data source of ``split`` that skips image decoding (falls back to the plain one)."""
    try:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

        return builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
    except Exception:  # pylint: disable=broad-except  # decoding options vary across TFDS versions
        return builder.as_data_source(split)


def _builder_feature_names(builder: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    try:
        features = builder.info.features
        for key in features.keys():
            names = getattr(features[key], "names", None)
            if names:
                out[key] = list(names)
    except Exception:  # pylint: disable=broad-except
        pass
    return out


def load_task(config: Any) -> TaskData:
    """Loads the task described by ``config`` (keys and defaults: :data:`DEFAULTS`).

    Raises:
      ValueError: unknown dataset / label / groups / in_memory (the message lists
        the valid ones), or groups without val or test examples (named).
      DataNotFoundError: the dataset is not prepared and its manual download is
        not in ``manual_dir`` (the message names the file and the directory).
    """
    spec = _spec(str(_get(config, "dataset")))
    resolved = _resolve(spec, _get(config, "label"), _get(config, "groups"))
    in_memory_choice(_get(config, "in_memory"))  # a bad value is an error before any data is read
    if spec.builder is None:
        return _load_quickstart(config, spec, resolved)
    builder, extra = _ensure_prepared(spec, config)
    stored = [s for _, s in _SPLITS]
    sources = {s: builder.as_data_source(s) for s in stored}
    label_sources = {s: _label_source(builder, s) for s in stored}
    extra["skipped"] = _read_skipped(builder)
    return task_from_sources(spec.name, sources, config, label_sources=label_sources,
                             feature_names=_builder_feature_names(builder), extra_info=extra)


def load_quickstart(*, seed: int | None = None, **config: Any) -> TaskData:
    """The quickstart task (:mod:`ballot_jax.data.quickstart`): :func:`load_task` with ``dataset="quickstart"``.

    Keyword arguments are config keys of :data:`DEFAULTS` (e.g. ``groups="color"``
    or ``"classes*color"`` to expose the colour skew, ``data_on_device=True``,
    ``train_limit=100``); ``seed`` is ``data_seed``. An unknown key is a ValueError.
    """
    valid = [k for k in DEFAULTS if k != "dataset"]
    unknown = sorted(set(config) - set(valid))
    if unknown:
        raise ValueError(f"load_quickstart: unknown config key(s) {', '.join(unknown)}; valid: seed, {', '.join(valid)}")
    if seed is not None:
        config["data_seed"] = seed
    return load_task({**config, "dataset": "quickstart"})
