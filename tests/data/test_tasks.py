"""Tests of ballot_jax.data.tasks: labels, groups, errors, limits, preparation on demand."""

from __future__ import annotations

import types

import ml_collections
import numpy as np
import pytest

from ballot_jax.data import tasks
from ballot_jax.data.pipeline import ArraySplit, SourceSplit
from ballot_jax.data.tasks import DataNotFoundError, TaskData, group_ids, load_task, task_from_sources

# Every split of the fakes holds every group the tests use (the first 10 examples of a split cover
# race x gender, label x colour's labels, ...): tasks refuse groups without val or test examples.
SPLIT_SIZES = {"train": 23, "validation": 12, "test": 11}
UTK_AGES = (5, 25, 45, 65)  # one per age bin, plus up to 14 years


def _images(rng, n, h=24, w=20):
    return rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def fake_utk(seed: int = 0) -> dict[str, list[dict]]:
    """In-memory stand-in of the utk_face builder's data sources."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in SPLIT_SIZES.items():
        ims = _images(rng, n)
        out[split] = [{"image": ims[i], "age": np.int32(UTK_AGES[i % 4] + rng.integers(15)),
                       "gender": np.int64(i // 5 % 2), "race": np.int64(i % 5), "filename": f"{split}{i}.jpg"}
                      for i in range(n)]
    return out


def fake_celeb(seed: int = 0) -> dict[str, list[dict]]:
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in SPLIT_SIZES.items():
        ims = _images(rng, n, 30, 25)
        out[split] = [{"image": ims[i], "filename": f"{i:06d}.jpg",
                       "attributes": {**{a: np.bool_(rng.integers(2)) for a in tasks.CELEB_A_ATTRIBUTES},
                                      "Smiling": np.bool_(i % 2), "Male": np.bool_(i // 2 % 2)}}
                      for i in range(n)]
    return out


def fake_cifar10s(seed: int = 0) -> dict[str, list[dict]]:
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in SPLIT_SIZES.items():
        ims = _images(rng, n, 32, 32)
        out[split] = [{"image": ims[i], "label": np.int64(i % 10), "color": np.int64(i // 10 % 2)}
                      for i in range(n)]
    return out


def fake_cifar100(per_split: int = 100) -> dict[str, list[dict]]:
    """CIFAR-100's label structure: every fine class belongs to one superclass (here label // 5)."""
    image = np.zeros((4, 4, 3), np.uint8)
    return {split: [{"image": image, "label": np.int64(i % 100), "coarse_label": np.int64(i % 100 // 5)}
                    for i in range(per_split)] for split in ("train", "validation", "test")}


def _cfg(**kw) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(kw)


def _all(split, key: str) -> np.ndarray:
    """Values of ``key`` over the split in stored order (real rows only)."""
    out = []
    for b in split.batches(batch_size=8, epoch=0, seed=0, shuffle=False, augment=False, drop_remainder=False):
        w = np.asarray(b["weight"]) > 0
        out.append(np.asarray(b[key])[w])
    return np.concatenate(out)


def test_base_config_data_keys_are_the_task_defaults():
    """tasks.DEFAULTS is the one home of the data defaults; the experiment config must agree with it."""
    from ballot_jax import config

    base = config.base_config()
    assert {k: base[k] for k in tasks.DEFAULTS if k in base} == tasks.DEFAULTS
    assert load_task(None).info["image_size"] == tasks.DATASET_SPECS["quickstart"].default_image_size


def test_group_ids_constructed_example():
    labels = np.array([0, 1, 2, 1])
    attr = np.array([1, 0, 1, 1])
    assert group_ids(labels, None, None, False).tolist() == [0, 1, 2, 1]
    assert group_ids(labels, attr, 2, False).tolist() == [1, 0, 1, 1]
    assert group_ids(labels, attr, 2, True).tolist() == [1, 2, 5, 3]
    assert group_ids(labels, attr, 2, True).dtype == np.int32


@pytest.mark.parametrize("groups", ["classes", "gender", "age_bins", "classes*gender"])
def test_utk_labels_and_groups(groups):
    src = fake_utk()
    td = task_from_sources("utk_face", src, _cfg(label="race", groups=groups, image_size=16))
    assert isinstance(td, TaskData)
    assert td.num_classes == 5 and td.class_names == list(tasks.UTK_RACE_NAMES)
    assert td.image_shape == (16, 16, 3)
    for field, stored in (("train", "train"), ("val", "validation"), ("test", "test")):
        split = getattr(td, field)
        race = np.array([e["race"] for e in src[stored]])
        gender = np.array([e["gender"] for e in src[stored]])
        age_bin = np.minimum(np.array([e["age"] for e in src[stored]]) // 20, 3)
        np.testing.assert_array_equal(_all(split, "label"), race)
        expected = {"classes": race, "gender": gender, "age_bins": age_bin, "classes*gender": race * 2 + gender}[groups]
        np.testing.assert_array_equal(_all(split, "group"), expected)
        assert td.info["counts"][field] == SPLIT_SIZES[stored]
        assert sum(td.info["group_counts"][field]) == SPLIT_SIZES[stored]
        assert td.info["group_counts"][field] == np.bincount(expected, minlength=td.num_groups).tolist()
    want_groups = {"classes": 5, "gender": 2, "age_bins": 4, "classes*gender": 10}[groups]
    assert td.num_groups == want_groups == len(td.group_names)
    assert td.info["train_empty_groups"] == []
    if groups == "classes*gender":
        assert td.group_names[:3] == ["white/male", "white/female", "black/male"]


def test_utk_age_bins():
    examples = [{"age": a} for a in (0, 19, 20, 39, 40, 59, 60, 101)]
    assert [tasks._age_bin(e) for e in examples] == [0, 0, 1, 1, 2, 2, 3, 3]
    td = task_from_sources("utk_face", fake_utk(), _cfg(label="age_bins", groups="gender", image_size=8))
    assert td.class_names == ["0-19", "20-39", "40-59", "60+"] and td.group_names == ["male", "female"]


def test_celeb_a_attribute_label_and_group():
    src = fake_celeb()
    td = task_from_sources("celeb_a", src, _cfg(label="Smiling", groups="classes*Male", image_size=16))
    assert td.class_names == ["not_Smiling", "Smiling"]
    assert td.group_names == ["not_Smiling/not_Male", "not_Smiling/Male", "Smiling/not_Male", "Smiling/Male"]
    smiling = np.array([int(e["attributes"]["Smiling"]) for e in src["test"]])
    male = np.array([int(e["attributes"]["Male"]) for e in src["test"]])
    np.testing.assert_array_equal(_all(td.test, "label"), smiling)
    np.testing.assert_array_equal(_all(td.test, "group"), smiling * 2 + male)
    # Non-square 30x25 images are centre-cropped and resized.
    assert next(td.train.batches(batch_size=4, epoch=0, seed=0, shuffle=False, augment=False))["image"].shape == (
        4, 16, 16, 3)


def test_cifar10s_color_groups_and_feature_names():
    src = fake_cifar10s()
    td = task_from_sources("cifar10_s", src, _cfg(groups="color"))
    assert td.image_shape == (32, 32, 3) and td.num_classes == 10 and td.group_names == ["color", "gray"]
    np.testing.assert_array_equal(_all(td.val, "group"), [e["color"] for e in src["validation"]])
    names = [f"c{i}" for i in range(10)]
    td2 = task_from_sources("cifar10_s", src, _cfg(), feature_names={"label": names})
    assert td2.class_names == names and td2.group_names == names
    with pytest.raises(ValueError, match="expected 10"):
        task_from_sources("cifar10_s", src, _cfg(), feature_names={"label": names[:3]})


@pytest.mark.parametrize("kw, match", [
    (dict(dataset="mnist"), "valid datasets: quickstart, utk_face, celeb_a, cifar10_s, cifar100, tiny_imagenet"),
    (dict(dataset="utk_face", label="age"), "valid labels: race, gender, age_bins"),
    (dict(dataset="celeb_a", label="smiling"), "Smiling"),
    (dict(dataset="cifar10_s", groups="race"), "valid groups: classes, label, color, classes\\*label, classes\\*color"),
    (dict(dataset="quickstart", groups="classes*gender"), "classes\\*color"),
    (dict(dataset="tiny_imagenet", groups="color"), "valid groups: classes"),
])
def test_unknown_values_raise_listing_valid_ones(kw, match):
    with pytest.raises(ValueError, match=match):
        load_task(_cfg(**kw))  # validated before any data is touched


def test_limits_take_first_examples():
    src = fake_utk()
    td = task_from_sources("utk_face", src, _cfg(train_limit=7, test_limit=100, image_size=8))
    assert td.train.num_examples == 7 and td.test.num_examples == SPLIT_SIZES["test"]
    assert td.val.num_examples == SPLIT_SIZES["validation"]
    np.testing.assert_array_equal(_all(td.train, "label"), [e["race"] for e in src["train"][:7]])
    assert td.info["limits"] == {"train": 7, "val": None, "test": 100}


def test_groups_that_never_occur_are_refused_before_any_image_is_read():
    """CIFAR-100's classes*coarse_label: each fine class has one superclass, so 1,900 of 2,000 groups are empty."""
    src = fake_cifar100()
    for split in src.values():  # the refusal must come from the label scan, not from reading images
        for example in split:
            example["image"] = None
    with pytest.raises(ValueError) as err:
        task_from_sources("cifar100", src, _cfg(groups="classes*coarse_label"))
    msg = str(err.value)
    assert msg.startswith("cifar100: groups='classes*coarse_label' (label 'label') has groups without examples "
                          "(1900 of 2000 in val, 1900 of 2000 in test; 1900 in no split at all): "
                          "'class_0/class_1', 'class_0/class_2', ")
    assert "'class_0/class_10' and 1890 more." in msg and "\n" not in msg
    assert msg.endswith("choose a coarser groups= ('classes' or 'coarse_label')")
    # The same data grouped by superclass is fine.
    src = fake_cifar100()
    td = task_from_sources("cifar100", src, _cfg(groups="coarse_label", image_size=4))
    assert td.num_groups == 20 and td.info["group_counts"]["val"] == [5] * 20


def test_label_crossed_with_itself_is_refused():
    with pytest.raises(ValueError, match=r"groups='classes\*race' \(label 'race'\).*20 of 25 in val, 20 of 25 in "
                                         r"test; 20 in no split at all\): 'white/black', .* and 10 more"):
        task_from_sources("utk_face", fake_utk(), _cfg(label="race", groups="classes*race"))


def test_groups_missing_from_val_or_test_are_refused_naming_the_limit():
    with pytest.raises(ValueError, match=r"groups='classes\*gender' .*\(2 of 10 in val\): 'indian/female', "
                                         r"'others/female'\..*choose a coarser groups= \('classes' or 'gender'\), "
                                         r"or raise val_limit \(now 8\)$"):
        task_from_sources("utk_face", fake_utk(), _cfg(groups="classes*gender", val_limit=8))
    with pytest.raises(ValueError, match=r"\(3 of 5 in test\): 'asian', 'indian', 'others'\. .*choose other groups= "
                                         r"\(valid: race, gender, .*\), or raise test_limit \(now 2\)$"):
        task_from_sources("utk_face", fake_utk(), _cfg(test_limit=2))


def test_groups_missing_from_train_only_are_a_counted_warning(caplog):
    with caplog.at_level("WARNING", logger=tasks.__name__):
        td = task_from_sources("utk_face", fake_utk(), _cfg(train_limit=3, image_size=8))
    assert td.info["train_empty_groups"] == ["indian", "others"]
    assert td.info["group_counts"]["train"] == [1, 1, 1, 0, 0] and td.info["group_counts"]["test"][3:] == [2, 2]
    assert "groups='classes' leaves 2 of 5 groups without training examples ('indian', 'others')" in caplog.text


def test_quickstart_extreme_skew_by_colour_is_refused():
    """color_fraction=1.0 leaves no gray 0-4 and no colour 5-9 in train and val: val cannot measure them."""
    with pytest.raises(ValueError, match=r"quickstart: groups='classes\*color' \(label 'label'\) has groups without "
                                         r"examples \(10 of 20 in val\): '0/gray', '1/gray', .* '9/color'\. "):
        load_task(_cfg(dataset="quickstart", groups="classes*color", color_fraction=1.0))
    assert load_task(_cfg(dataset="quickstart", groups="color", color_fraction=1.0)).num_groups == 2


def test_in_memory_choices_give_same_batches():
    src = fake_cifar10s()
    kw = dict(batch_size=8, epoch=1, seed=3, shuffle=True, augment=True)
    streamed = task_from_sources("cifar10_s", src, _cfg(in_memory=False, image_size=16))
    host = task_from_sources("cifar10_s", src, _cfg(in_memory=True, image_size=16))
    device = task_from_sources("cifar10_s", src, _cfg(data_on_device=True, image_size=16))
    auto_small = task_from_sources("cifar10_s", src, _cfg(image_size=16))
    auto_big = task_from_sources("cifar10_s", src, _cfg(image_size=16, in_memory_max_mb=0.001))
    assert isinstance(streamed.train, SourceSplit) and isinstance(auto_big.train, SourceSplit)
    assert isinstance(host.train, ArraySplit) and not host.train.on_device
    assert isinstance(device.train, ArraySplit) and device.train.on_device
    assert isinstance(auto_small.train, ArraySplit)
    assert streamed.info["storage"]["train"] == "stream" and device.info["storage"]["test"] == "memory-device"
    ref = list(streamed.train.batches(**kw))
    for td in (host, device):
        got = list(td.train.batches(**kw))
        assert len(got) == len(ref)
        for a, b in zip(ref, got):
            for k in a:
                np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
    with pytest.raises(ValueError, match="data_on_device"):
        task_from_sources("cifar10_s", src, _cfg(data_on_device=True, in_memory=False))


@pytest.mark.parametrize("value, want", [
    (True, True), (False, False), ("auto", "auto"), (np.bool_(False), False),
    ("true", True), ("True", True), ("TRUE", True), ("1", True),
    ("false", False), ("False", False), (" FALSE ", False), ("0", False), ("Auto", "auto"),
])
def test_in_memory_choice_accepts_bools_and_their_strings(value, want):
    assert tasks.in_memory_choice(value) == want and type(tasks.in_memory_choice(value)) is type(want)


@pytest.mark.parametrize("value", ["yes", "", "memory", None, 2, 1.0])
def test_in_memory_choice_refuses_anything_else(value):
    with pytest.raises(ValueError, match=r"in_memory=.* is not a valid choice; valid: True, False, 'auto'"):
        tasks.in_memory_choice(value)
    with pytest.raises(ValueError, match="not a valid choice"):  # before any data is read
        load_task(_cfg(dataset="utk_face", in_memory=value, data_dir="/nonexistent"))


def test_in_memory_from_command_line_flags():
    """``--config.in_memory=False`` reaches the task as the string "False" and streams."""
    from absl import flags
    from ml_collections import config_flags

    def parsed(arg: str) -> ml_collections.ConfigDict:
        flag_values = flags.FlagValues()  # not the global FLAGS
        config = ml_collections.ConfigDict({**tasks.DEFAULTS, "image_size": 8})
        argv = ["prog", f"--config.in_memory={arg}"]
        config_flags.DEFINE_config_dict("config", config, flag_values=flag_values, sys_argv=argv)
        flag_values(argv)
        return flag_values.config

    src = fake_cifar10s()
    storage = {}
    for arg in ("False", "false", "0", "True", "1", "auto"):
        config = parsed(arg)
        assert config.in_memory == arg  # a string: the field's default "auto" is one
        storage[arg] = task_from_sources("cifar10_s", src, config).info["storage"]["train"]
    assert storage == {"False": "stream", "false": "stream", "0": "stream", "True": "memory-host",
                       "1": "memory-host", "auto": "memory-host"}
    with pytest.raises(ValueError, match=r"in_memory='no' is not a valid choice"):
        task_from_sources("cifar10_s", src, parsed("no"))


class _FakeBuilder:
    """Mimics the parts of a TFDS builder load_task uses."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = "place <manual_dir>/UTKFace.tar.gz (the Aligned&Cropped archive)"

    def __init__(self, state: dict, data_dir: str) -> None:
        self.state = state
        self.data_dir = f"{data_dir}/utk_face/1.0.0"
        self.data_dir_root = data_dir

    def is_prepared(self) -> bool:
        return self.state["prepared"]

    def as_data_source(self, split, decoders=None):
        return self.state["sources"][split]


def _fake_prepare(monkeypatch, *, prepared: bool, manual_present: bool):
    state = {"prepared": prepared, "sources": fake_utk(), "calls": []}

    def prepare(dataset, manual_dir, data_dir):
        state["calls"].append((dataset, manual_dir, data_dir))
        if not manual_present:
            raise FileNotFoundError(f"[{dataset}] manual input missing: expected 'UTKFace.tar.gz' in {manual_dir}")
        state["prepared"] = True
        return {"dataset": dataset}

    module = types.SimpleNamespace(
        DATASETS={"utk_face": None, "celeb_a_manual": None},
        builder_for=lambda dataset, data_dir: _FakeBuilder(state, data_dir or "/default/tfds"),
        prepare=prepare,
    )
    monkeypatch.setattr(tasks, "_prepare_module", lambda: module)
    return state


def test_missing_data_error_names_file_and_directory(monkeypatch, tmp_path):
    state = _fake_prepare(monkeypatch, prepared=False, manual_present=False)
    manual = str(tmp_path / "manual")
    cfg = _cfg(dataset="utk_face", data_dir=str(tmp_path / "tfds"), manual_dir=manual)
    with pytest.raises(DataNotFoundError) as err:
        load_task(cfg)
    msg = str(err.value)
    assert f"{manual}/UTKFace.tar.gz" in msg  # the exact file, where to put it
    assert str(tmp_path / "tfds") in msg  # where the prepared data was looked for
    assert state["calls"] == [("utk_face", manual, str(tmp_path / "tfds"))]
    # Default manual_dir is <data_dir>/downloads/manual; prepare=False never calls prepare.
    with pytest.raises(DataNotFoundError, match="downloads/manual/UTKFace.tar.gz"):
        load_task(_cfg(dataset="utk_face", data_dir=str(tmp_path / "tfds"), prepare=False))
    assert len(state["calls"]) == 1
    assert isinstance(DataNotFoundError("x"), FileNotFoundError)


def test_prepares_when_missing_and_manual_present(monkeypatch, tmp_path):
    state = _fake_prepare(monkeypatch, prepared=False, manual_present=True)
    td = load_task(_cfg(dataset="utk_face", data_dir=str(tmp_path), manual_dir=str(tmp_path / "m"),
                        groups="gender", image_size=8))
    assert state["prepared"] and len(state["calls"]) == 1
    assert td.info["prepared_now"] and td.info["counts"]["train"] == SPLIT_SIZES["train"]
    # Already prepared: no second preparation.
    load_task(_cfg(dataset="utk_face", data_dir=str(tmp_path), image_size=8))
    assert len(state["calls"]) == 1


def test_builder_name_is_an_alias():
    assert tasks._spec("celeb_a_manual").name == "celeb_a"
    assert tasks._spec("cifar100_manual").name == "cifar100"


# --------------------------------------------------------------------------- real builders (tiny fixtures)


def test_real_utk_face_builder_end_to_end(utk_manual_dir, tmp_path, monkeypatch):
    """Prepares the tiny UTKFace fixture on demand and reads it streamed and in memory."""
    from ballot_jax.data.builders.utk_face import parse_utkface_name

    base = dict(dataset="utk_face", data_dir=str(tmp_path / "tfds"), manual_dir=str(utk_manual_dir),
                label="gender", groups="classes*race", image_size=32)
    with monkeypatch.context() as m:
        # The fixture's val and test (2 and 4 images) cannot hold all 10 groups, which a real task must;
        # the refusal is checked below, the reading here.
        m.setattr(tasks, "_checked_ids", lambda *args: [])
        streamed = load_task(_cfg(in_memory=False, **base))
        assert streamed.info["prepared_now"]
        assert any("30_1_2_" in str(s) for s in streamed.info["skipped"])  # the corrupt fixture image
        memory = load_task(_cfg(data_on_device=True, **base))
        assert "prepared_now" not in memory.info  # second call: already prepared
    with pytest.raises(ValueError, match=r"groups='classes\*race' \(label 'gender'\) has groups without examples "
                                         r"\(8 of 10 in val, 7 of 10 in test\)"):
        load_task(_cfg(**base))
    assert isinstance(streamed.train, SourceSplit) and isinstance(memory.train, ArraySplit)
    assert streamed.class_names == ["male", "female"] and streamed.num_groups == 10
    total = sum(streamed.info["counts"].values())
    assert total == 27  # 30 files - 2 malformed names - 1 corrupt image

    from ballot_jax.data import prepare as prep

    builder = prep.builder_for("utk_face", str(tmp_path / "tfds"))
    for field, stored in (("train", "train"), ("val", "validation"), ("test", "test")):
        source = builder.as_data_source(stored)
        names = [source[i]["filename"] for i in range(len(source))]
        parsed = [parse_utkface_name(n.decode() if isinstance(n, bytes) else str(n)) for n in names]
        gender = np.array([p[1] for p in parsed])
        race = np.array([p[2] for p in parsed])
        np.testing.assert_array_equal(_all(getattr(streamed, field), "label"), gender)
        np.testing.assert_array_equal(_all(getattr(streamed, field), "group"), gender * 5 + race)
    kw = dict(batch_size=4, epoch=2, seed=1, shuffle=True, augment=True)
    for a, b in zip(streamed.train.batches(**kw), memory.train.batches(**kw), strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], np.asarray(b[k]))
    assert a["image"].shape == (4, 32, 32, 3)


def test_real_builder_missing_archive_message(tmp_path):
    empty = tmp_path / "manual"
    empty.mkdir()
    with pytest.raises(DataNotFoundError) as err:
        load_task(_cfg(dataset="cifar10_s", data_dir=str(tmp_path / "tfds"), manual_dir=str(empty)))
    msg = str(err.value)
    assert f"{empty}/cifar-10-python.tar.gz" in msg and str(tmp_path / "tfds") in msg
