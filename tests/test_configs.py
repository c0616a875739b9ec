"""Every config and variant resolves, and a train step of its model works on data of its layout.

For each ``configs/<name>.py`` and each of its variants (alone, and each task variant combined
with ``cpu``): the config validates, its methods parse, its dataset/label/groups resolve to a
number of classes and groups, the default work directory is as documented, and one masked train
step of its model (at a tiny width, on a fake batch of its image shape and label range) is
traced with ``jax.eval_shape`` — shape and dtype errors surface, nothing is compiled.

Tracing costs 1-3 s of CPU per model layout, so the default suite traces each architecture
(model, stem, convolution lowering) once, at the layout of the first config using it; the
``slow`` test traces every distinct (architecture, image size, classes) layout. A real run of the
quickstart config (compiled, executed) is in ``tests/test_run.py``.
"""

from __future__ import annotations

import glob
import importlib.util
import math
import os
import types

import jax
import jax.numpy as jnp
import pytest

from ballot_jax import config as config_lib
from ballot_jax import cli, experiment, masks, methods, train
from ballot_jax.data import tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))
EXPECTED = {"quickstart", "utkface", "celeba", "cifar10s", "cifar100", "tinyimagenet"}
TINY_WIDTH = 1 / 32
_TRACED: dict[tuple, dict] = {}


def _module(path: str):
    spec = importlib.util.spec_from_file_location(f"config_{os.path.basename(path)[:-3]}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cases() -> list[tuple[str, str]]:
    out = []
    for path in CONFIG_FILES:
        name = os.path.basename(path)[:-3]
        variants = list(_module(path).VARIANTS)
        out.append((name, ""))
        out += [(name, v) for v in variants]
        if "cpu" in variants:
            out += [(name, f"cpu,{v}") for v in variants if v != "cpu" and v not in config_lib.MODEL_VARIANTS]
    return out


def _layout(config) -> tuple[int, int, int]:
    """(image size, number of classes, number of groups) of the config's task, without data."""
    spec = tasks.DATASET_SPECS[config.dataset]
    label = config.label or spec.default_label
    assert label in spec.labels, (config.dataset, label)
    classes = spec.attributes[label].num
    groups = config.groups
    if groups == "classes":
        n_groups = classes
    elif groups.startswith("classes*"):
        n_groups = classes * spec.attributes[groups.split("*", 1)[1]].num
    else:
        n_groups = spec.attributes[groups].num
    return int(config.image_size or spec.default_image_size), classes, n_groups


def _trace_step(config, image_size: int, num_classes: int, num_groups: int, *, every_layout: bool = False) -> dict:
    """``jax.eval_shape`` of one masked train step at tiny width, shared per architecture.

    With ``every_layout`` the cache key also has the image size and number of classes.
    """
    key = (config.model, config.stem if config.model.startswith("resnet") else "", config.conv_impl, config.dtype,
           config.optimizer, config.keep_stem, config.keep_head)
    if every_layout:
        key += (image_size, num_classes)
    if key not in _TRACED:
        tiny = config_lib.base_config()
        tiny.update({k: config[k] for k in ("model", "stem", "conv_impl", "dtype", "optimizer", "learning_rate",
                                             "momentum", "weight_decay", "schedule", "keep_stem", "keep_head")})
        tiny.width = TINY_WIDTH
        task = types.SimpleNamespace(num_classes=num_classes, num_groups=num_groups,
                                     image_shape=(image_size, image_size, 3))
        model = experiment.build_model(tiny, task)
        ctx = experiment.make_context(tiny, task, model)
        batch = {"image": jax.ShapeDtypeStruct((2, image_size, image_size, 3), jnp.float32),
                 "label": jax.ShapeDtypeStruct((2,), jnp.int32), "group": jax.ShapeDtypeStruct((2,), jnp.int32),
                 "weight": jax.ShapeDtypeStruct((2,), jnp.float32)}

        def step(batch):
            variables = experiment.init_variables(model, task.image_shape, 0)
            mask = masks.init_mask(variables["params"], ctx.is_prunable)
            ts = train.create_train_state(variables["params"], variables["batch_stats"], ctx.tx, mask)
            ts, metrics = ctx.train_step(ts, batch, jnp.float32(0.1))
            return ts.params["head"]["kernel"], metrics, ts.step

        head, metrics, steps = jax.eval_shape(step, batch)
        _TRACED[key] = {"head": head, "metrics": metrics, "step": steps, "num_classes": num_classes}
    return _TRACED[key]


def test_every_dataset_has_a_config() -> None:
    assert {os.path.basename(p)[:-3] for p in CONFIG_FILES} >= EXPECTED


@pytest.mark.parametrize("name,variant", _cases())
def test_config_builds_and_trains_one_step(name: str, variant: str) -> None:
    config = _module(os.path.join(REPO, "configs", f"{name}.py")).get_config(variant or None)
    config_lib.validate(config)
    assert config.name == name and config.variant == variant
    assert methods.parse(config.methods) == methods.names()
    assert config.seeds >= 3
    assert cli.default_workdir(config) == os.path.join("runs", name + ("_" + variant.replace(",", "_")
                                                                                if variant else ""))
    image_size, num_classes, num_groups = _layout(config)
    tasks._resolve(tasks.DATASET_SPECS[config.dataset], config.label, config.groups)  # raises on a bad choice
    if "cpu" in variant.split(","):
        assert config.image_size == 32 and config.width <= 0.25 and config.conv_impl == "auto"
    out = _trace_step(config, image_size, num_classes, num_groups)
    assert out["head"].shape[-1] == out["num_classes"] and out["head"].dtype == jnp.float32
    assert out["metrics"]["loss_sum"].shape == ()
    assert out["step"].shape == ()


@pytest.mark.slow
def test_every_layout_trains_one_step() -> None:
    """One traced train step for every distinct (architecture, image size, classes) of any config."""
    for name, variant in _cases():
        config = _module(os.path.join(REPO, "configs", f"{name}.py")).get_config(variant or None)
        image_size, num_classes, num_groups = _layout(config)
        out = _trace_step(config, image_size, num_classes, num_groups, every_layout=True)
        assert out["head"].shape[-1] == num_classes, (name, variant)


@pytest.mark.parametrize("name", sorted(EXPECTED - {"quickstart"}))
def test_unknown_variant_lists_valid_ones(name: str) -> None:
    mod = _module(os.path.join(REPO, "configs", f"{name}.py"))
    with pytest.raises(ValueError, match="valid variants: .*cpu"):
        mod.get_config("cpu,nonsense")


def test_conflicting_variants_are_an_error_but_cpu_yields() -> None:
    mod = _module(os.path.join(REPO, "configs", "utkface.py"))
    with pytest.raises(ValueError, match="both set config.model"):
        mod.get_config("resnet50,vgg16")
    assert mod.get_config("resnet50,cpu").model == "resnet50"  # a model variant overrides cpu's model
    assert mod.get_config("cpu").model == "resnet18"
    c = mod.get_config("cpu,gender_by_race")
    assert (c.label, c.groups, c.variant) == ("gender", "race", "cpu,gender_by_race")


def test_key_table_covers_every_key() -> None:
    rows = config_lib.key_docs()
    assert sorted(r[1] for r in rows) == sorted(config_lib.flat_keys(config_lib.base_config()))
    undocumented = [r[1] for r in rows if not r[3]]
    assert not undocumented, f"config keys without a comment in base_config(): {undocumented}"


def test_readme_config_table_is_current() -> None:
    start, end = config_lib.README_TABLE_MARKERS
    text = open(os.path.join(REPO, "README.md")).read()
    table = text.split(start, 1)[1].split(end, 1)[0].strip()
    assert table == config_lib.key_table().strip(), (
        "README.md's config table is out of date; regenerate it from the repository root with\n"
        "  python -c \"import ballot_jax.config as c; c.write_readme_table('README.md')\"")


def test_bench_rule_and_variant():
    from ballot_jax.config import bench_epochs

    quickstart = _module(os.path.join(REPO, "configs", "quickstart.py"))
    utkface = _module(os.path.join(REPO, "configs", "utkface.py"))
    e = bench_epochs(18_961)
    assert e == {"retrain_epochs": 16, "dense_epochs": 24, "ballot.vote_epochs": 2, "lth.round_epochs": 2}
    assert bench_epochs(10)["retrain_epochs"] == 40 and bench_epochs(10_000_000)["retrain_epochs"] == 2  # clipped
    c = utkface.get_config("bench")
    assert (c.dense_epochs, c.retrain_epochs, c.augment, c.schedule, c.width) == (24, 16, True, "cosine", 0.25)
    g = utkface.get_config("bench,gender_by_race")
    assert g.label == "gender" and g.groups == "race" and g.dense_epochs == 24
    q = quickstart.get_config("bench")
    assert q.model == "cnn_small" and q.dense_epochs == 60


def test_plateau_from_a_dense_log():
    from ballot_jax.methods import common

    def log(accs, recall=0.2):
        return [{"stage": "dense", "phase": "epoch", "epoch": i, "val_accuracy": a, "val_min_class_recall": recall}
                for i, a in enumerate(accs)]

    p = common.plateau(log([0.5, 0.7, 0.80, 0.805, 0.81]))
    assert p["reached"] and math.isclose(p["spread"], 0.01, abs_tol=1e-12)
    assert not common.plateau(log([0.5, 0.7, 0.78, 0.805, 0.81]))["reached"]  # still climbing
    assert not common.plateau(log([0.80, 0.80, 0.80], recall=0.0))["reached"]  # a class never predicted
    assert not common.plateau(log([0.8, 0.8]))["reached"]  # fewer epochs than the window
