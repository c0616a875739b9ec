"""Fault tests of the stage machine: unreadable checkpoints, a full disk, NaN losses, mask checks."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ballot_jax import config as config_lib
from ballot_jax import loop, masks, methods, train
from ballot_jax.methods import common
from helpers import TinyNet
from fakes import fake_task


def _ctx(task=None, **cfg):
    task = task or fake_task()
    config = config_lib.make(dict(sparsity=0.5, retrain_epochs=1, dense_epochs=2, batch_size=16, augment=False,
                                  **{"ballot.vote_epochs": 1}), **cfg)
    opt = train.OptimizerConfig()
    model = TinyNet()
    ctx = loop.Context(apply_fn=model.apply, task=task, config=config, opt=opt, tx=train.make_optimizer(opt), seed=0,
                       batch_size=16, eval_batch_size=32, is_prunable=masks.prunable_filter())
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    return ctx, variables


def _dense(ctx, variables, directory):
    return loop.run_stages(ctx, [common.dense_stage(ctx)], loop.initial_state(ctx, variables), directory)


def _params(state):
    return [np.asarray(x) for x in jax.tree.leaves(state.train.params)]


def test_unreadable_latest_checkpoint_falls_back_to_previous(tmp_path, caplog):
    ctx, variables = _ctx()
    ref, ref_meta = _dense(ctx, variables, str(tmp_path / "ref"))
    # a run killed after its second epoch whose newest checkpoint is then corrupted
    d = tmp_path / "run"
    _dense(ctx, variables, str(d))
    steps = sorted(int(p) for p in os.listdir(d) if p.isdigit())
    newest = d / str(steps[-1])
    for root, _, files in os.walk(newest):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"garbage")
    with caplog.at_level("WARNING"):
        again, meta = _dense(ctx, variables, str(d))
    assert any("unreadable" in r.message for r in caplog.records)
    for a, b in zip(_params(ref), _params(again)):
        np.testing.assert_array_equal(a, b)


def test_full_disk_during_checkpoint_is_reported_and_resumable(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    ctx, variables = _ctx()
    ref, _ = _dense(ctx, variables, str(tmp_path / "ref"))
    real_save = ocp.CheckpointManager.save
    calls = {"n": 0}

    def failing_save(self, step, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # after begin and the first epoch
            raise OSError(28, "No space left on device")
        return real_save(self, step, *a, **k)

    monkeypatch.setattr(ocp.CheckpointManager, "save", failing_save)
    with pytest.raises(loop.CheckpointError, match="No space left on device.*previous checkpoint.*rerun"):
        _dense(ctx, variables, str(tmp_path / "run"))
    monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
    resumed, meta = _dense(ctx, variables, str(tmp_path / "run"))
    for a, b in zip(_params(ref), _params(resumed)):
        np.testing.assert_array_equal(a, b)


def test_nan_loss_stops_with_stage_and_step_named(tmp_path):
    task = fake_task()
    task.train.images[40] = np.nan  # an example in a batch of the first epoch
    ctx, variables = _ctx(task)
    with pytest.raises(loop.NonFiniteLossError, match=r"stage 'dense', epoch 0, first at step \d+"):
        _dense(ctx, variables, str(tmp_path / "run"))
    # the last good checkpoint (after begin) is kept and readable
    steps = sorted(int(p) for p in os.listdir(tmp_path / "run") if p.isdigit())
    assert steps == [0]


def test_every_stage_records_a_mask_check(tmp_path):
    ctx, variables = _ctx()
    dense, _ = _dense(ctx, variables, None)
    m = methods.get("ballot")
    _, meta = loop.run_stages(ctx, m.stages(ctx), m.initial_state(ctx, dense), None)
    ends = [e for e in meta["log"] if e["phase"] == "end"]
    assert [e["stage"] for e in ends] == ["ticket", "retrain"]
    assert all(e["mask_check"]["nonzero_masked_weights"] == 0 for e in ends)
    assert all("seconds" not in k for e in meta["log"] for k in e)


def test_mask_violation_is_caught():
    ctx, variables = _ctx()
    state = loop.initial_state(ctx, variables)
    mask = masks.global_magnitude_mask(state.train.params, state.train.mask, 0.5)
    bad = state.replace(train=state.train.replace(mask=mask))  # params not masked
    with pytest.raises(loop.MaskIntegrityError, match="not exactly zero"):
        loop.check_mask_integrity(bad, "test")


def test_stage_list_mismatch_is_refused(tmp_path):
    ctx, variables = _ctx()
    _dense(ctx, variables, str(tmp_path / "run"))
    with pytest.raises(loop.CheckpointError, match="another work directory"):
        loop.run_stages(ctx, [common.train_stage("other", 1)], loop.initial_state(ctx, variables), str(tmp_path / "run"))


def test_unknown_config_key_and_bad_values_are_named():
    from ballot_jax import config

    c = config.base_config()
    with pytest.raises(AttributeError, match='"sparsty" does not exist'):
        c.sparsty = 0.9
    for key, value, match in [("sparsity", 1.0, r"outside \[0, 1\)"), ("sparsity", -0.1, r"outside \[0, 1\)"),
                              ("retrain_epochs", 0, "positive"), ("dtype", "float16", "valid: float32, bfloat16")]:
        bad = config.base_config()
        bad[key] = value
        with pytest.raises(ValueError, match=match):
            config.validate(bad)


def test_unknown_method_and_model_names_list_the_valid_ones():
    from ballot_jax import models

    with pytest.raises(ValueError, match="ballot, fairscratch, lth, magnitude, random, safecompress"):
        methods.get("ballots")
    with pytest.raises(ValueError, match="resnet18"):
        models.create("resnet19", num_classes=2)


def test_a_fresh_state_and_a_rewound_one_share_one_compiled_state_builder():
    """θ0 fresh from ``init`` is uncommitted; every later state is placed. ``initial_state`` places
    θ0 first, so building the first state and rewinding to a ticket compile the builder once (it
    compiled twice, once per placement, before)."""
    ctx, variables = _ctx()
    variables = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), variables)  # as init returns them
    assert not any(x.committed for x in jax.tree.leaves(variables))
    builders = (train._create_train_state, train._fresh_optimizer_state)  # traced / host-built states
    before = [f._cache_size() for f in builders]
    state = loop.initial_state(ctx, variables)
    after_fresh = [f._cache_size() for f in builders]
    mask = masks.global_magnitude_mask(state.train.params, state.train.mask, 0.5)
    common.rewind_to(ctx, state, mask)
    assert sum(after_fresh) - sum(before) <= 1
    assert [f._cache_size() for f in builders] == after_fresh
    assert all(x.committed for x in jax.tree.leaves((state.train, state.rewind_params, mask)))
