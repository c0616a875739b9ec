"""Tests of the embedded quickstart data (sklearn digits, colour/gray skew)."""

from __future__ import annotations

import ast
import inspect

import jax
import ml_collections
import numpy as np
import pytest

from ballot_jax.data import ArraySplit, load_quickstart, load_task, quickstart_arrays
from ballot_jax.data.quickstart import load_digits_arrays


def test_sizes_and_shapes():
    load_digits_arrays.cache_clear()  # read the bundled CSV afresh, as a first call does
    arrays = quickstart_arrays()
    sizes = {k: len(v["label"]) for k, v in arrays.items()}
    assert sizes == {"train": 1078, "validation": 180, "test": 1078}
    for v in arrays.values():
        assert v["image"].shape == (len(v["label"]), 16, 16, 3) and v["image"].dtype == np.uint8
        assert set(np.unique(v["label"]).tolist()) == set(range(10))
        assert set(np.unique(v["color"]).tolist()) == {0, 1}
    # Splits are disjoint and cover all 1,797 digits.
    ids = [set(arrays[s]["digit_index"].tolist()) for s in ("train", "validation", "test")]
    assert sum(len(i) for i in ids) == 1797 and len(set.union(*ids)) == 1797
    assert quickstart_arrays(image_size=32)["train"]["image"].shape[1:] == (32, 32, 3)


def test_skew_and_rendering():
    arrays = quickstart_arrays()
    for split in ("train", "validation"):
        a = arrays[split]
        colour_share = np.array([1 - a["color"][a["label"] == d].mean() for d in range(10)])
        assert np.all(colour_share[:5] >= 0.9) and np.all(colour_share[:5] <= 0.96), colour_share
        assert np.all(colour_share[5:] <= 0.1) and np.all(colour_share[5:] >= 0.04), colour_share
    for a in arrays.values():
        img = a["image"].astype(int)
        gray = a["color"] == 1
        assert np.all(img[gray][..., 0] == img[gray][..., 1]) and np.all(img[gray][..., 1] == img[gray][..., 2])
        spread = (img[~gray].max(-1) - img[~gray].min(-1)).max(axis=(1, 2))
        assert np.all(spread > 40)  # every colour image is visibly coloured
    test = arrays["test"]
    half = len(test["label"]) // 2
    np.testing.assert_array_equal(test["digit_index"][:half], test["digit_index"][half:])
    assert test["color"][:half].tolist() == [0] * half and test["color"][half:].tolist() == [1] * half
    # The gray test version has the colour version's intensity pattern.
    assert np.array_equal(test["image"][:half].max(-1) > 0, test["image"][half:].max(-1) > 0)


def test_seeded():
    a, b, c = quickstart_arrays(seed=0), quickstart_arrays(seed=0), quickstart_arrays(seed=1)
    assert all(np.array_equal(a["train"][k], b["train"][k]) for k in a["train"])
    assert not np.array_equal(a["train"]["digit_index"], c["train"]["digit_index"])
    d = quickstart_arrays(color_fraction=0.9)["train"]
    assert 0.88 <= 1 - d["color"][d["label"] == 0].mean() <= 0.92


def test_load_task_quickstart():
    td = load_task(ml_collections.ConfigDict({"dataset": "quickstart", "groups": "color"}))
    assert isinstance(td.train, ArraySplit) and not td.train.on_device
    assert td.num_classes == 10 and td.num_groups == 2 and td.group_names == ["color", "gray"]
    assert td.image_shape == (16, 16, 3) and td.info["counts"] == {"train": 1078, "val": 180, "test": 1078}
    assert td.info["group_counts"]["test"] == [539, 539]
    batch = next(td.train.batches(batch_size=32, epoch=0, seed=0, shuffle=True, augment=True))
    assert batch["image"].shape == (32, 16, 16, 3) and 0.0 <= batch["image"].min() <= batch["image"].max() <= 1.0
    inter = load_quickstart(groups="classes*color", data_on_device=True, train_limit=100)
    assert inter.num_groups == 20 and inter.train.num_examples == 100 and inter.train.on_device
    assert inter.info["train_empty_groups"] == ["1/gray", "6/color", "8/color"]  # a warning: val/test have them
    b = next(inter.test.batches(batch_size=32, epoch=0, seed=0, shuffle=False, augment=False))
    assert isinstance(b["image"], jax.Array)
    np.testing.assert_array_equal(np.asarray(b["group"]), np.asarray(b["label"]) * 2 + 0)  # colour versions first
    assert load_quickstart().group_names == [str(d) for d in range(10)]


def test_load_quickstart_refuses_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown config key\(s\) grups; valid: seed, label, groups"):
        load_quickstart(grups="color")
    with pytest.raises(ValueError, match="unknown config key\\(s\\) dataset"):
        load_quickstart(dataset="utk_face")


def test_quickstart_data_does_not_import_tasks():
    """The arrays module sits below tasks: no import of tasks (or of the package) from it."""
    from ballot_jax.data import quickstart

    imported = set()
    for node in ast.walk(ast.parse(inspect.getsource(quickstart))):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
            imported.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    assert not {m for m in imported if m.startswith("ballot_jax")}, imported
