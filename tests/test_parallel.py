"""Data parallelism with jax.sharding on 8 simulated CPU devices (XLA_FLAGS set by conftest).

The same seed must give the same run on a 1-device mesh and on an 8-device mesh: identical
votes and masks, metrics and weights equal within float tolerance (the only difference is the
order in which XLA sums the batch across devices). Also: batch sizes that do not divide over
the devices, compile counts, checkpoints of replicated state, the bf16 compute option.
"""

from __future__ import annotations

import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ballot_jax import config as config_lib
from ballot_jax import experiment, loop, masks, methods, parallel, train
from ballot_jax.data import ArraySplit, TaskData
from ballot_jax.methods import common
from helpers import TinyNet, random_batch

needs8 = pytest.mark.skipif(jax.device_count() != 8, reason="needs 8 (simulated) devices, see tests/conftest.py")

CONFIG = {"sparsity": 0.5, "retrain_epochs": 2, "dense_epochs": 2, "batch_size": 16, "eval_batch_size": 32,
          "augment": True, "ballot.vote_epochs": 2, "ballot.diag_batches": 0, "lth.rate": 0.3, "lth.round_epochs": 1}


def array_task(seed: int = 0, n: int = 96, hw: int = 8, num_classes: int = 3, num_groups: int = 2) -> TaskData:
    """Learnable uint8 images in memory (ArraySplit, host path): the label shifts the mean."""
    rng = np.random.default_rng(seed)

    def split(m, name):
        labels = rng.integers(0, num_classes, m).astype(np.int32)
        groups = (np.arange(m) % num_groups).astype(np.int32)
        noise = rng.normal(size=(m, hw, hw, 3)) * (20 + 30 * groups[:, None, None, None])
        images = np.clip(60 + 60 * labels[:, None, None, None] + noise, 0, 255).astype(np.uint8)
        return ArraySplit(images, labels, groups, name=name)

    return TaskData(split(n, "train"), split(n // 2, "val"), split(n // 2 + 4, "test"), num_classes, num_groups,
                    [str(c) for c in range(num_classes)], [f"g{g}" for g in range(num_groups)], (hw, hw, 3), {})


def make_ctx(task, devices, **overrides) -> loop.Context:
    cfg = config_lib.make(CONFIG, **overrides)
    opt = train.OptimizerConfig()
    sharding = parallel.batch_sharding(parallel.make_mesh(devices))
    parallel.check_batch_sizes(cfg, len(devices))
    return loop.Context(apply_fn=TinyNet().apply, task=task, config=cfg, opt=opt, tx=train.make_optimizer(opt), seed=0,
                        batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size,
                        is_prunable=masks.prunable_filter(), sharding=sharding)


def run_all(devices, method_names):
    """Dense run, then each method from it, on a mesh over ``devices``; host copies of the results."""
    task = array_task()
    ctx = make_ctx(task, devices)
    variables = TinyNet().init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    t0 = time.perf_counter()
    dense, dense_meta = loop.run_stages(ctx, [common.dense_stage(ctx)], loop.initial_state(ctx, variables), None)
    out = {"dense": {"log": dense_meta["log"], "test": loop.evaluate(ctx, dense.train, "test")}}
    for name in method_names:
        m = methods.get(name)
        state, meta = loop.run_stages(ctx, m.stages(ctx), m.initial_state(ctx, jax.tree.map(jnp.copy, dense)), None)
        names = masks.layer_names(state.train.mask)
        out[name] = {
            "log": meta["log"],
            "test": loop.evaluate(ctx, state.train, "test"),
            "mask": masks.to_numpy(state.train.mask),
            "votes": {k: np.asarray(v) for k, v in zip(names, masks.prunable_leaves(state.votes, state.train.mask))}
            if state.votes else {},
            "params": {k: np.asarray(v) for k, v in zip(names, masks.prunable_leaves(state.train.params, state.train.mask))},
            "replicated": {x.sharding.is_fully_replicated for x in jax.tree.leaves(state)},
            "mesh_sizes": {getattr(x.sharding, "mesh", None) and x.sharding.mesh.size for x in jax.tree.leaves(state)},
        }
    out["seconds"] = time.perf_counter() - t0
    out["compiles"] = {"train": train.compilation_count(ctx.train_step), "eval": train.compilation_count(ctx.eval_step),
                       "gradient_pass": sum(train.compilation_count(f) for k, f in ctx._cache.items()
                                            if str(k).startswith("ballot_gradient_pass")) or None}
    return out


def _losses(log):
    return np.array([e["train_loss"] for e in log if "train_loss" in e])


def _assert_close_metrics(a, b):
    assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-6)
    for key in ("cwv", "mcd"):
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    np.testing.assert_allclose(a["per_group_accuracy"], b["per_group_accuracy"], atol=1e-6)


@pytest.fixture(scope="module")
def one_and_eight():
    names = ["ballot"] + (["lth"] if "lth" in methods.names() else [])
    one = run_all(jax.devices()[:1], names)
    eight = run_all(jax.devices(), names)
    return names, one, eight


@needs8
def test_one_vs_eight_devices_same_run(one_and_eight):
    names, one, eight = one_and_eight
    np.testing.assert_allclose(_losses(one["dense"]["log"]), _losses(eight["dense"]["log"]), rtol=1e-4)
    _assert_close_metrics(one["dense"]["test"], eight["dense"]["test"])
    for name in names:
        a, b = one[name], eight[name]
        for layer in a["mask"]:
            np.testing.assert_array_equal(a["mask"][layer], b["mask"][layer], err_msg=f"{name} mask {layer}")
        assert set(a["votes"]) == set(b["votes"])
        for layer in a["votes"]:
            np.testing.assert_array_equal(a["votes"][layer], b["votes"][layer], err_msg=f"{name} votes {layer}")
        np.testing.assert_allclose(_losses(a["log"]), _losses(b["log"]), rtol=1e-4, err_msg=name)
        _assert_close_metrics(a["test"], b["test"])
        for layer in a["params"]:
            np.testing.assert_allclose(a["params"][layer], b["params"][layer], rtol=1e-3, atol=1e-5,
                                       err_msg=f"{name} params {layer}")
        # State stays replicated on the mesh it started on.
        assert a["replicated"] == {True} and a["mesh_sizes"] == {1}
        assert b["replicated"] == {True} and b["mesh_sizes"] == {8}
    assert one["ballot"]["votes"], "Ballot must have cast votes"


@needs8
def test_steps_compile_once(one_and_eight):
    _, one, eight = one_and_eight
    for run in (one, eight):
        assert run["compiles"] == {"train": 1, "eval": 1, "gradient_pass": 1}


def test_per_device_batch():
    assert parallel.per_device_batch(32, 8) == 4
    assert parallel.per_device_batch(30, 1) == 30
    with pytest.raises(ValueError, match="batch_size 30 does not divide over 8 devices: use a multiple of 8"):
        parallel.per_device_batch(30, 8)
    cfg = ml_collections.ConfigDict(dict(batch_size=32, eval_batch_size=100))
    with pytest.raises(ValueError, match="eval_batch_size 100 does not divide over 8 devices: use a multiple of 8"):
        parallel.check_batch_sizes(cfg, 8)


@needs8
def test_context_rejects_non_dividing_batch():
    cfg = config_lib.base_config()
    cfg.batch_size = 30
    with pytest.raises(ValueError, match="batch_size 30 does not divide over 8 devices"):
        experiment.make_context(cfg, array_task(), TinyNet())
    cfg.data_parallel = False  # single-device jit: any batch size
    assert experiment.make_context(cfg, array_task(), TinyNet()).sharding is None
    cfg.data_parallel = True
    cfg.batch_size = 16
    ctx = experiment.make_context(cfg, array_task(), TinyNet())
    assert ctx.sharding.mesh.size == 8 and ctx.sharding.spec == jax.sharding.PartitionSpec("data")


@needs8
def test_batches_are_split_over_devices():
    ctx = make_ctx(array_task(), jax.devices())
    batch = next(iter(ctx.task.train.batches(batch_size=16, epoch=0, seed=0, shuffle=True, augment=True,
                                              sharding=ctx.sharding)))
    for v in batch.values():
        assert len(v.addressable_shards) == 8
        assert {s.data.shape[0] for s in v.addressable_shards} == {2}
    # process_rows on one host is every row, in order (make_array_from_process_local_data layout).
    np.testing.assert_array_equal(parallel.process_rows(ctx.sharding, 16), np.arange(16))
    local = {k: np.asarray(v) for k, v in batch.items()}
    rebuilt = parallel.global_batch(local, ctx.sharding)
    for k in local:
        np.testing.assert_array_equal(np.asarray(rebuilt[k]), local[k])
        assert rebuilt[k].sharding == ctx.sharding


@needs8
def test_checkpoint_restores_replicated_state(tmp_path):
    ctx = make_ctx(array_task(), jax.devices(), dense_epochs=1)
    variables = TinyNet().init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    stages = [common.dense_stage(ctx)]
    first, meta = loop.run_stages(ctx, stages, loop.initial_state(ctx, variables), str(tmp_path))
    again, meta2 = loop.run_stages(ctx, stages, loop.initial_state(ctx, variables), str(tmp_path))
    assert meta2["log"] == meta["log"]
    for x, y in zip(jax.tree.leaves(first), jax.tree.leaves(again)):
        assert y.sharding == parallel.replicated(ctx.sharding.mesh)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_replicate_keeps_non_arrays_and_placed_arrays():
    mesh = parallel.make_mesh()
    tree = {"a": jnp.ones(3), "b": None, "c": 3}
    out = parallel.replicate(tree, mesh)
    assert out["b"] is None and out["c"] == 3 and out["a"].sharding == parallel.replicated(mesh)
    assert parallel.replicate(out, parallel.batch_sharding(mesh))["a"] is out["a"]  # no copy
    assert parallel.replicate(tree, None) is tree


# ---------------------------------------------------------------------------------------------
# bf16 compute
# ---------------------------------------------------------------------------------------------


class DTypeNet(nn.Module):
    """TinyNet with a compute dtype (params float32)."""

    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jnp.asarray(x, self.dtype)
        x = nn.Conv(4, (3, 3), use_bias=False, dtype=self.dtype, name="stem")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype, name="bn")(x)
        x = nn.relu(x)
        x = nn.Conv(4, (3, 3), use_bias=False, dtype=self.dtype, name="conv")(x)
        return nn.Dense(3, dtype=self.dtype, name="head")(jnp.mean(x, axis=(1, 2)))


def _one_step(model, variables, batch, sharding=None):
    opt = train.OptimizerConfig()
    tx = train.make_optimizer(opt)
    mask = masks.init_mask(variables["params"], masks.prunable_filter())
    ts = parallel.replicate(train.create_train_state(variables["params"], variables["batch_stats"], tx, mask), sharding)
    if sharding is not None:
        batch = jax.device_put(batch, sharding)
    ts, metrics = train.make_train_step(model.apply, tx)(ts, batch, 0.1)
    return ts, jax.device_get(metrics)


def test_bf16_step_runs_and_is_close_to_f32():
    mesh = parallel.make_mesh() if jax.device_count() > 1 else None
    sharding = parallel.batch_sharding(mesh) if mesh is not None else None
    batch = {k: np.asarray(v) for k, v in random_batch(1, n=16).items()}
    variables = DTypeNet().init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    ts32, m32 = _one_step(DTypeNet(jnp.float32), variables, batch, sharding)
    ts16, m16 = _one_step(DTypeNet(jnp.bfloat16), variables, batch, sharding)
    for leaf in jax.tree.leaves((ts16.params, ts16.batch_stats)):
        assert leaf.dtype == jnp.float32  # params and statistics stay float32
    assert m16["loss_sum"].dtype == np.float32 and np.isfinite(m16["loss_sum"])
    logits = DTypeNet(jnp.bfloat16).apply(variables, jnp.asarray(batch["image"]))
    assert logits.dtype == jnp.bfloat16
    logits32, _ = train.forward(DTypeNet(jnp.bfloat16).apply, variables["params"], variables["batch_stats"],
                                masks.init_mask(variables["params"], masks.prunable_filter()), batch["image"], False)
    assert logits32.dtype == jnp.float32  # the step casts logits before the loss
    # Close to float32 but not bit-identical: bf16 has an 8-bit mantissa.
    assert m16["loss_sum"] != m32["loss_sum"]
    assert m16["loss_sum"] == pytest.approx(m32["loss_sum"], rel=2e-2)
    diffs = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(ts16.params), jax.tree.leaves(ts32.params))]
    scale = max(float(jnp.max(jnp.abs(p))) for p in jax.tree.leaves(ts32.params))
    assert max(diffs) > 0.0
    assert max(diffs) < 2e-2 * scale


def test_bf16_config_builds_bf16_model():
    pytest.importorskip("ballot_jax.models")
    cfg = config_lib.base_config()
    cfg.dtype = "bfloat16"
    cfg.model = "cnn_small"
    cfg.conv_impl = "xla"  # "auto" benchmarks the lowerings first: slow on a busy CPU
    task = array_task()
    model = experiment.build_model(cfg, task)
    assert model.dtype == jnp.bfloat16
    # Shapes and dtypes only (eval_shape: no compilation); the step itself is tested above.
    variables = jax.eval_shape(lambda: experiment.init_variables(model, task.image_shape, 0))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))  # params stay float32
    mask = masks.init_mask(variables["params"], masks.prunable_filter())
    images = jax.ShapeDtypeStruct((16, *task.image_shape), jnp.float32)
    logits, _ = jax.eval_shape(lambda v, x: train.forward(model.apply, v["params"], v["batch_stats"], mask, x, False),
                               variables, images)
    assert logits.dtype == jnp.float32 and logits.shape == (16, task.num_classes)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _two_processes(workdir, out) -> list[str]:
    """Runs tests/multihost_job.py as processes 0 and 1 (4 CPU devices each); their outputs."""
    import subprocess
    import sys

    port = str(_free_port())
    job = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multihost_job.py")
    procs = [subprocess.Popen([sys.executable, job, str(pid), "2", port, str(workdir), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for pid in (0, 1)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    return logs


@pytest.mark.slow
@needs8
def test_two_processes_give_the_single_process_result(one_and_eight, tmp_path):
    """jax.distributed over localhost, 2 processes × 4 devices: the votes and mask of the
    single-process 8-device run; a rerun restores from both processes' checkpoints bit for bit."""
    _, _, eight = one_and_eight
    out = tmp_path / "two.npz"
    logs = _two_processes(tmp_path / "work", out)
    assert all("DONE" in log for log in logs)
    got = np.load(out)
    for layer, expected in eight["ballot"]["mask"].items():
        np.testing.assert_array_equal(got["mask/" + layer], expected, err_msg=f"mask {layer}")
    for layer, expected in eight["ballot"]["votes"].items():
        np.testing.assert_array_equal(got["votes/" + layer], expected, err_msg=f"votes {layer}")
    assert float(got["accuracy"]) == pytest.approx(eight["ballot"]["test"]["accuracy"], abs=1e-6)
    again = tmp_path / "again.npz"
    _two_processes(tmp_path / "work", again)  # every stage restored from the checkpoints
    restored = np.load(again)
    for key in got.files:
        np.testing.assert_array_equal(restored[key], got[key], err_msg=key)
