"""Reading the official CIFAR "python version" archives (no TensorFlow, no code execution)."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ballot_jax.data.builders import _common
from ballot_jax.data.builders._common import FileSource, ManualDataLayoutError


def read_members(path: Path, dataset: str, root: str, members: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Loads ``root/<member>`` pickles from a CIFAR tar.gz; layout errors name what is missing."""
    src = FileSource(path, dataset)
    names = set(src.names())
    missing = [m for m in members if f"{root}/{m}" not in names]
    if missing:
        under_root = sorted(n.split("/", 1)[1] for n in names if n.startswith(root + "/"))
        found = (f"{root}/ holding {under_root[:8]}" if under_root else src.top_level())
        raise ManualDataLayoutError(dataset, path, f"{root}/ with files {list(members)} "
                                    f"(missing: {missing})", found)
    out = {}
    for m in members:
        try:
            out[m] = _common.load_cifar_pickle(src.read(f"{root}/{m}"))
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
            raise ManualDataLayoutError(dataset, path, f"{root}/{m} to be a CIFAR python pickle",
                                        f"{type(err).__name__}: {err}") from err
    src.close()
    return out


def images_and_labels(batch: dict[str, Any], label_keys: Sequence[str], dataset: str,
                      where: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``data`` (N, 3072) channel-major -> (N, 32, 32, 3) uint8, plus the label arrays."""
    missing = [k for k in ("data", *label_keys) if k not in batch]
    if missing:
        raise ManualDataLayoutError(dataset, where, f"pickle keys {['data', *label_keys]}",
                                    f"keys {sorted(batch)}")
    data = np.asarray(batch["data"])
    if data.ndim != 2 or data.shape[1] != 3072:
        raise ManualDataLayoutError(dataset, where, "data of shape (N, 3072)", f"shape {data.shape}")
    images = data.astype(np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = {k: np.asarray(batch[k], dtype=np.int64) for k in label_keys}
    for k, v in labels.items():
        if v.shape != (len(images),):
            raise ManualDataLayoutError(dataset, where, f"{len(images)} '{k}'", f"shape {v.shape}")
    return images, labels


def label_names(meta: dict[str, Any], key: str) -> list[str]:
    """Decoded label names from a ``meta`` / ``batches.meta`` pickle."""
    return [_common.as_str(n) for n in meta.get(key, [])]
