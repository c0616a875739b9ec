"""Tests of the baselines (magnitude, lth, random, safecompress, fairscratch) on a tiny model.

Every method runs end to end on the same fake task with the same seed and the same dense run;
each run is checkpointed and rerun on the same directory to check that it resumes without
recomputing anything.
"""

from __future__ import annotations

import dataclasses
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ballot_jax import config as config_lib
from ballot_jax import loop, masks, methods, train
from ballot_jax.methods import common, fairscratch, lth, magnitude, safecompress
from helpers import TinyNet
from fakes import fake_task

BASE = dict(sparsity=0.5, retrain_epochs=2, dense_epochs=2, batch_size=16, augment=False)
BASELINES = ("magnitude", "lth", "random", "safecompress", "fairscratch")


@pytest.fixture(scope="module")
def env():
    task = fake_task(seed=0)
    model = TinyNet()
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 8, 8, 3)))
    opt = train.OptimizerConfig()
    base = loop.Context(apply_fn=model.apply, task=task, config=config_lib.make(BASE), opt=opt,
                        tx=train.make_optimizer(opt), seed=0, batch_size=16, eval_batch_size=32,
                        is_prunable=masks.prunable_filter())
    dense, _ = loop.run_stages(base, [common.dense_stage(base)], loop.initial_state(base, variables), None)
    return types.SimpleNamespace(task=task, variables=variables, base=base, dense=dense)


def _copy(tree):
    return jax.tree.map(jnp.copy, tree)


def make_ctx(env, **overrides) -> loop.Context:
    """A context for a config variant sharing the compiled steps and the helper cache."""
    b = env.base
    return loop.Context(apply_fn=b.apply_fn, task=b.task, config=config_lib.make(BASE, **overrides),
                        opt=b.opt, tx=b.tx, seed=b.seed, batch_size=b.batch_size, eval_batch_size=b.eval_batch_size,
                        is_prunable=b.is_prunable, train_step=b.train_step, eval_step=b.eval_step, _cache=b._cache)


def start_state(env, ctx, name) -> loop.RunState:
    m = methods.get(name)
    s0 = _copy(env.dense) if m.from_dense else loop.initial_state(ctx, env.variables)
    return m.initial_state(ctx, s0)


def run_method(env, tmp_path, name, **overrides):
    """Runs ``name`` to the end, then reruns it on the same directory (must resume, not recompute)."""
    ctx = make_ctx(env, **overrides)
    m = methods.get(name)
    directory = str(tmp_path / name)
    final, meta = loop.run_stages(ctx, m.stages(ctx), start_state(env, ctx, name), directory)
    assert meta["done"]

    def forbidden(*args):
        raise AssertionError("a finished run must not recompute anything")

    guarded = [dataclasses.replace(st, begin=forbidden, epoch=forbidden, end=forbidden) for st in m.stages(ctx)]
    again, meta2 = loop.run_stages(ctx, guarded, start_state(env, ctx, name), directory)
    assert meta2["log"] == meta["log"] and meta2["done"]
    assert masks.masks_equal(again.train.mask, final.train.mask)
    for a, b in zip(jax.tree.leaves(again.train.params), jax.tree.leaves(final.train.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    return ctx, final, meta


def target_kept(ctx, mask) -> int:
    return int(round(common.target_density(ctx) * masks.count(mask)["total"]))


def layer_counts(mask) -> dict:
    return {k: v[0] for k, v in masks.count(mask)["layers"].items()}


def log_entries(meta, stage=None, phase=None):
    return [e for e in meta["log"] if (stage is None or e["stage"] == stage) and (phase is None or e["phase"] == phase)]


def assert_sparse_result(ctx, final):
    assert masks.count(final.train.mask)["kept"] == target_kept(ctx, final.train.mask)
    assert masks.zero_violations(final.train.params, final.train.mask) == 0


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


def test_registry_lists_all_methods():
    names = methods.names()
    for n in ("ballot",) + BASELINES:
        assert n in names
    with pytest.raises(ValueError) as err:
        methods.get("no_such_method")
    for n in ("ballot",) + BASELINES:
        assert n in str(err.value)
    assert methods.get("lth").from_dense and not methods.get("safecompress").from_dense
    assert not methods.get("fairscratch").from_dense
    for n in BASELINES:
        assert methods.get(n).description and "\n" not in methods.get(n).description


# ---------------------------------------------------------------------------------------------
# Magnitude pruning
# ---------------------------------------------------------------------------------------------


def test_magnitude_oneshot(env, tmp_path):
    ctx, final, meta = run_method(env, tmp_path, "magnitude")
    assert meta["stages"] == ["finetune"]
    assert_sparse_result(ctx, final)
    ticket = common.magnitude_ticket(ctx, env.dense)
    assert masks.masks_equal(final.train.mask, ticket)  # the mask never changes while fine-tuning
    # No rewind: fine-tuning starts from the trained values of the surviving weights.
    stage = magnitude._stages(ctx)[0]
    begun, _ = stage.begin(ctx, start_state(env, ctx, "magnitude"))
    for p, q, m in zip(masks.prunable_leaves(begun.train.params, ticket), masks.prunable_leaves(env.dense.train.params, ticket),
                       masks.prunable_leaves(ticket, ticket)):
        np.testing.assert_array_equal(np.asarray(p), np.where(np.asarray(m), np.asarray(q), 0))
    assert int(begun.train.step) == 0


def test_cubic_schedule():
    assert magnitude.cubic_sparsity(0, 0.9, 1) == 0.9
    vals = [magnitude.cubic_sparsity(e, 0.9, 4) for e in range(6)]
    assert vals[3:] == [0.9, 0.9, 0.9]
    assert all(a < b for a, b in zip(vals[:4], vals[1:4]))
    assert vals[0] == pytest.approx(0.9 * (1 - 0.75 ** 3))


def test_magnitude_gradual(env, tmp_path):
    ctx, final, meta = run_method(env, tmp_path, "magnitude", magnitude={"schedule": "gradual"}, retrain_epochs=3)
    assert meta["stages"] == ["gradual_finetune"]
    epochs = log_entries(meta, "gradual_finetune", "epoch")
    assert [e["scheduled_sparsity"] for e in epochs] == [magnitude.cubic_sparsity(e, 0.5, 3) for e in range(3)]
    reached = [e["sparsity"] for e in epochs]
    assert reached == sorted(reached) and reached[0] > 0
    assert_sparse_result(ctx, final)
    with pytest.raises(ValueError, match="magnitude.schedule"):
        magnitude.settings(make_ctx(env, magnitude={"schedule": "cubic"}))
    with pytest.raises(ValueError, match="magnitude.gradual_epochs"):
        magnitude.settings(make_ctx(env, magnitude={"schedule": "gradual", "gradual_epochs": 5}))


# ---------------------------------------------------------------------------------------------
# LTH
# ---------------------------------------------------------------------------------------------


def test_lth_level_densities():
    assert lth.level_densities(0.64) == pytest.approx([0.8, 0.64])
    assert lth.level_densities(0.5) == pytest.approx([0.8, 0.64, 0.512, 0.5])
    assert lth.level_densities(0.8 ** 5) == pytest.approx([0.8 ** r for r in range(1, 6)])
    assert lth.level_densities(0.9) == [0.9]
    assert lth.level_densities(0.5, schedule="oneshot") == [0.5]
    assert lth.level_densities(0.5, max_rounds=2) == pytest.approx([0.5 ** 0.5, 0.5])
    assert lth.level_densities(0.64, max_rounds=2) == pytest.approx([0.8, 0.64])
    d = lth.level_densities(0.05, rate=0.5)
    assert len(d) == math.ceil(math.log(0.05) / math.log(0.5)) and d[-1] == 0.05


def test_lth_iterative(env, tmp_path):
    # Density 0.64 = 0.8^2: exactly two rounds.
    ctx, final, meta = run_method(env, tmp_path, "lth", sparsity=0.36)
    assert meta["stages"] == ["level_1", "level_2"]
    total = masks.count(final.train.mask)["total"]
    begins = log_entries(meta, phase="begin")
    assert [e["level"] for e in begins] == [1, 2]
    assert [e["sparsity"] for e in begins] == pytest.approx([1 - round(0.8 * total) / total, 1 - round(0.64 * total) / total])
    assert masks.count(final.train.mask)["kept"] == round(0.8 ** 2 * total)
    assert_sparse_result(ctx, final)
    assert int(final.extras["level"]) == 2
    # Each round prunes the previous mask further and rewinds to θ0.
    stages = lth._stages(ctx)
    s1, _ = stages[0].begin(ctx, start_state(env, ctx, "lth"))
    s2, _ = stages[1].begin(ctx, s1)
    for m1, m2 in zip(masks.prunable_leaves(s1.train.mask, s1.train.mask), masks.prunable_leaves(s2.train.mask, s2.train.mask)):
        assert not np.any(np.asarray(m2) & ~np.asarray(m1))
    for p, r, m in zip(masks.prunable_leaves(s2.train.params, s2.train.mask), masks.prunable_leaves(env.dense.rewind_params, s2.train.mask),
                       masks.prunable_leaves(s2.train.mask, s2.train.mask)):
        np.testing.assert_array_equal(np.asarray(p), np.where(np.asarray(m), np.asarray(r), 0))


def test_lth_oneshot(env, tmp_path):
    ctx, final, meta = run_method(env, tmp_path, "lth", lth={"schedule": "oneshot"})
    assert meta["stages"] == ["level_1"]
    assert log_entries(meta, "level_1", "begin")[0]["level_density"] == 0.5
    assert_sparse_result(ctx, final)
    with pytest.raises(ValueError, match="lth.rate"):
        lth.settings(make_ctx(env, lth={"rate": 1.5}))


# ---------------------------------------------------------------------------------------------
# Random
# ---------------------------------------------------------------------------------------------


def test_random_matches_ticket_layer_counts(env, tmp_path):
    ctx, final, meta = run_method(env, tmp_path, "random")
    ticket = common.magnitude_ticket(ctx, env.dense)
    assert layer_counts(final.train.mask) == layer_counts(ticket)
    assert not masks.masks_equal(final.train.mask, ticket)
    assert_sparse_result(ctx, final)
    # Rewound to θ0, and the draw depends on the seed only.
    stage = methods.get("random").stages(ctx)[0]
    b1, _ = stage.begin(ctx, start_state(env, ctx, "random"))
    b2, _ = stage.begin(ctx, start_state(env, ctx, "random"))
    assert masks.masks_equal(b1.train.mask, b2.train.mask) and masks.masks_equal(b1.train.mask, final.train.mask)
    for p, r, m in zip(masks.prunable_leaves(b1.train.params, ticket), masks.prunable_leaves(env.dense.rewind_params, ticket),
                       masks.prunable_leaves(b1.train.mask, ticket)):
        np.testing.assert_array_equal(np.asarray(p), np.where(np.asarray(m), np.asarray(r), 0))


# ---------------------------------------------------------------------------------------------
# SafeCompress
# ---------------------------------------------------------------------------------------------


def _cand(acc, cwv, mcd=0.0):
    return {"accuracy": acc, "cwv": cwv, "mcd": mcd}


def test_select_candidate_prefers_fairest_within_budget():
    cands = [_cand(0.80, 0.030, 0.3), _cand(0.79, 0.010, 0.5), _cand(0.78, 0.020, 0.1)]
    assert safecompress.select_candidate(cands, "cwv", 0.02) == 1
    assert safecompress.select_candidate(cands, "mcd", 0.02) == 2
    # The fairest candidate is too inaccurate: the budget excludes it.
    cands = [_cand(0.80, 0.030), _cand(0.70, 0.000), _cand(0.79, 0.020)]
    assert safecompress.select_candidate(cands, "cwv", 0.02) == 2
    assert safecompress.select_candidate(cands, "cwv", 0.0) == 0
    assert safecompress.select_candidate(cands, "cwv", 0.2) == 1
    # Ties: higher accuracy, then lower index; NaN never wins.
    assert safecompress.select_candidate([_cand(0.7, 0.01), _cand(0.72, 0.01)], "cwv", 0.05) == 1
    assert safecompress.select_candidate([_cand(0.7, 0.01), _cand(0.7, 0.01)], "cwv", 0.05) == 0
    assert safecompress.select_candidate([_cand(0.7, float("nan")), _cand(0.7, 0.5)], "cwv", 0.05) == 1
    with pytest.raises(ValueError):
        safecompress.select_candidate([], "cwv", 0.0)


def test_drop_fraction_schedule():
    assert safecompress.drop_fraction(0, 100, 0.3, 0.75) == pytest.approx(0.3)
    assert safecompress.drop_fraction(75, 100, 0.3, 0.75) == 0.0
    assert safecompress.drop_fraction(37.5, 100, 0.3, 0.75) == pytest.approx(0.15)
    assert safecompress.update_steps(24, 6, 0.75) == [6, 12]
    assert safecompress.update_steps(24, 3, 0.75) == [3, 6, 9, 12, 15]


def _host_normal(mask, seed):
    rng = np.random.default_rng(seed)
    return masks.map_prunable(lambda m: jnp.asarray(rng.normal(size=np.shape(m)), jnp.float32), mask)


def _sparse_ts(env, ctx):
    return start_state(env, ctx, "safecompress").train


def test_propose_keeps_quotas_and_grows_by_gradient(env):
    ctx = make_ctx(env)
    ts = _sparse_ts(env, ctx)
    quotas = masks.quotas_of(ts.mask)
    q = masks.map_prunable(lambda m, k: jnp.asarray(k, jnp.int32), ts.mask, quotas)
    grads = _host_normal(ts.mask, 3)
    for i in range(3):
        for growth in ("gradient", "random"):
            gs = masks.uniform_scores(ts.mask, (9, i)) if growth == "random" else grads
            noise = masks.uniform_scores(ts.mask, (0, i))
            new, surv = safecompress.propose_jit(ts.params, ts.mask, gs, q, jnp.float32(0.3), noise, jnp.int32(i))
            assert list(layer_counts(new).values()) == masks.prunable_leaves(quotas, ts.mask)
            for m, s, n, k in zip(*(masks.prunable_leaves(t, ts.mask) for t in (ts.mask, surv, new, quotas))):
                m, s, n = np.asarray(m), np.asarray(s), np.asarray(n)
                assert not np.any(s & ~m) and not np.any(s & ~n)
                assert s.sum() == k - math.floor(0.3 * k)
    # Candidate 0 is plain RigL: drops the smallest magnitudes, grows the largest |gradient|.
    new, surv = safecompress.propose_jit(ts.params, ts.mask, grads, q, jnp.float32(0.3),
                                         masks.uniform_scores(ts.mask, (0,)), jnp.int32(0))
    for p, m, s, n, g in zip(*(masks.prunable_leaves(t, ts.mask) for t in (ts.params, ts.mask, surv, new, grads))):
        p, m, s, n, g = map(np.asarray, (p, m, s, n, g))
        dropped = m & ~s
        if dropped.any():
            assert np.abs(p[dropped]).max() <= np.abs(p[s]).min()
        grown = n & ~s
        if grown.any() and (~n & ~s).any():
            assert np.abs(g[grown]).min() >= np.abs(g[~n & ~s]).max()


def test_mask_update_keeps_fairest_candidate(env, monkeypatch):
    ctx = make_ctx(env)
    s = safecompress.settings(ctx)
    ts = _sparse_ts(env, ctx)
    q = masks.map_prunable(lambda m, k: jnp.asarray(k, jnp.int32), ts.mask, masks.quotas_of(ts.mask))
    grads = _host_normal(ts.mask, 5)
    for tested, expected in (([_cand(0.80, 0.05), _cand(0.79, 0.01), _cand(0.50, 0.00)], 1),
                             ([_cand(0.80, 0.01), _cand(0.60, 0.00), _cand(0.79, 0.02)], 0)):
        results = iter(tested)
        monkeypatch.setattr(safecompress.loop, "evaluate", lambda c, t, split: next(results))
        new_ts, record = safecompress._mask_update(ctx, ts, grads, q, 6, 0.3, s)
        assert record["chosen"] == expected and record["candidates"] == tested
        noise = masks.uniform_scores(ts.mask, (ctx.seed, safecompress.SC_TAG, 6, expected, 0))
        want, surv = safecompress.propose_jit(ts.params, ts.mask, grads, q, jnp.float32(0.3), noise, jnp.int32(expected))
        assert masks.masks_equal(new_ts.mask, want)
        assert masks.zero_violations(new_ts.params, surv) == 0  # grown (and regrown) weights start at 0


def test_safecompress_run(env, tmp_path):
    over = dict(safecompress={"interval": 3})
    ctx, final, meta = run_method(env, tmp_path, "safecompress", **over)
    s = safecompress.settings(ctx)
    assert s["epochs"] == 4 and meta["stages"] == ["sparse_training"]  # dense_epochs + retrain_epochs
    assert_sparse_result(ctx, final)
    dense_mask = masks.init_mask(env.variables["params"], ctx.is_prunable)
    density = common.target_density(ctx)
    quotas = masks.quotas_from_densities(dense_mask, masks.layer_densities(dense_mask, density, "erk"), total_density=density)
    assert layer_counts(final.train.mask) == {n: k for n, k in zip(masks.layer_names(dense_mask),
                                                                    masks.prunable_leaves(quotas, dense_mask))}
    records = [r for e in log_entries(meta, "sparse_training", "epoch") for r in e.get("mask_updates", [])]
    assert [r["step"] for r in records] == safecompress.update_steps(24, 3, 0.75)
    assert int(final.extras["updates"]) == len(records)
    for r in records:
        assert len(r["candidates"]) == 3
        assert r["chosen"] == safecompress.select_candidate(r["candidates"], "cwv", s["acc_budget"])
    initial = start_state(env, ctx, "safecompress").train.mask
    assert not masks.masks_equal(initial, final.train.mask)  # the mask moved

    # A run killed in the middle resumes to the same result as the uninterrupted one.
    m = methods.get("safecompress")
    stages = m.stages(ctx)
    calls = {"n": 0}

    def dying(c, state, e):
        if e == 2 and calls["n"] == 0:
            calls["n"] += 1
            raise KeyboardInterrupt
        return stages[0].epoch(c, state, e)

    directory = str(tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):
        loop.run_stages(ctx, [dataclasses.replace(stages[0], epoch=dying)], start_state(env, ctx, "safecompress"), directory)
    resumed, meta_r = loop.run_stages(ctx, stages, start_state(env, ctx, "safecompress"), directory)
    assert masks.masks_equal(resumed.train.mask, final.train.mask)
    for a, b in zip(jax.tree.leaves(resumed.train.params), jax.tree.leaves(final.train.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert int(resumed.extras["updates"]) == len(records)


# ---------------------------------------------------------------------------------------------
# FairScratch
# ---------------------------------------------------------------------------------------------


def test_fairness_surrogates():
    surrogate = jax.jit(fairscratch.fairness_surrogate, static_argnames=("num_groups", "kind"))
    f32 = lambda *x: np.array(x, np.float32)  # noqa: E731 - host inputs: nothing eager to compile
    w = f32(1, 1, 1, 1)
    groups = np.array([0, 0, 1, 1], np.int32)
    labels = np.array([0, 1, 0, 1], np.int32)
    logits = np.zeros((4, 2), np.float32)
    # Group mean losses 2 and 2: no variance. Then 1 and 3: variance 1.
    assert float(surrogate(f32(1, 3, 2, 2), logits, labels, groups, w, num_groups=3, kind="loss_variance")) == pytest.approx(0.0)
    losses = f32(1, 1, 3, 3)
    assert float(surrogate(losses, logits, labels, groups, w, num_groups=3, kind="loss_variance")) == pytest.approx(1.0)
    # A padded example (weight 0) does not count.
    assert float(surrogate(f32(1, 1, 3, 100), logits, labels, groups, f32(1, 1, 1, 0), num_groups=2,
                           kind="loss_variance")) == pytest.approx(1.0)
    # Demographic parity: mean positive probability 0.5 vs 0.9 (binary): variance 0.04.
    p = np.array([0.4, 0.6, 0.9, 0.9])
    logits = np.stack([np.zeros(4), np.log(p / (1 - p))], -1).astype(np.float32)
    assert float(surrogate(losses, logits, labels, groups, w, num_groups=2, kind="dp")) == pytest.approx(0.04, abs=1e-6)
    # Equal opportunity: positive rate among label-1 examples 0.6 vs 0.9: variance 0.0225.
    assert float(surrogate(losses, logits, labels, groups, w, num_groups=2, kind="eo")) == pytest.approx(0.0225, abs=1e-6)
    # One group only: nothing to equalise.
    for kind in ("loss_variance", "dp", "eo"):
        assert float(surrogate(losses, logits, labels, np.zeros(4, np.int32), w, num_groups=2, kind=kind)) == 0.0


def test_frozen_weight_inits(env):
    ctx = make_ctx(env)
    params = env.variables["params"]
    mask = masks.init_mask(params, ctx.is_prunable)
    dens = masks.uniform_densities(mask, 0.25)
    sc = fairscratch.frozen_weights(ctx, params, mask, "signed_constant", dens)
    ssc = fairscratch.frozen_weights(ctx, params, mask, "scaled_signed_constant", dens)
    for p, w, w2 in zip(*(masks.prunable_leaves(t, mask) for t in (params, sc, ssc))):
        std = math.sqrt(2.0 / np.prod(p.shape[:-1]))
        np.testing.assert_allclose(np.abs(np.asarray(w)), std, rtol=1e-6)
        np.testing.assert_array_equal(np.sign(np.asarray(w)), np.where(np.asarray(p) >= 0, 1.0, -1.0))
        np.testing.assert_allclose(np.asarray(w2), np.asarray(w) * 2.0, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(sc["bn"]["scale"]), np.asarray(params["bn"]["scale"]))
    same = fairscratch.frozen_weights(ctx, params, mask, "model", dens)
    kn = fairscratch.frozen_weights(ctx, params, mask, "kaiming_normal", dens)
    kn2 = fairscratch.frozen_weights(ctx, params, mask, "kaiming_normal", dens)
    for p, a, b, c in zip(*(masks.prunable_leaves(t, mask) for t in (params, same, kn, kn2))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(p))
        np.testing.assert_array_equal(np.asarray(b), np.asarray(c))  # seeded: the same draw every time
        assert not np.array_equal(np.asarray(b), np.asarray(p))
    with pytest.raises(ValueError, match="fairscratch.init"):
        fairscratch.settings(make_ctx(env, fairscratch={"init": "orthogonal"}))


def test_fairscratch_run(env, tmp_path):
    ctx, final, meta = run_method(env, tmp_path, "fairscratch")
    s = fairscratch.settings(ctx)
    assert s["epochs"] == 4 and s["surrogate"] == "dp"  # fake groups are not the classes
    assert s["init"] == "kaiming_normal"
    assert meta["stages"] == ["scores"]
    assert_sparse_result(ctx, final)
    theta0 = env.variables["params"]
    start = start_state(env, ctx, "fairscratch")
    frozen = start.rewind_params
    mask = final.train.mask
    # Uniform per-layer quotas at the target density.
    for name, (kept, total) in masks.count(mask)["layers"].items():
        assert abs(kept - 0.5 * total) <= 1, name
    # Weights never trained: bit-identical to their initial (frozen) values where kept, exactly 0
    # elsewhere; the rest stays at θ0.
    for p, w, m in zip(*(masks.prunable_leaves(t, mask) for t in (final.train.params, frozen, mask))):
        np.testing.assert_array_equal(np.asarray(p), np.where(np.asarray(m), np.asarray(w), 0))
    np.testing.assert_array_equal(np.asarray(final.rewind_params["conv"]["kernel"]), np.asarray(frozen["conv"]["kernel"]))
    for path in (("bn", "scale"), ("bn", "bias"), ("head", "bias")):
        np.testing.assert_array_equal(np.asarray(final.train.params[path[0]][path[1]]), np.asarray(theta0[path[0]][path[1]]))
    # The mask is the top-k of the learned scores, and the scores did learn.
    quotas = masks.quotas_of(mask)
    assert masks.masks_equal(mask, fairscratch.score_mask(final.extras["scores"], quotas))
    assert not masks.masks_equal(start.train.mask, mask)
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(final.train.batch_stats), jax.tree.leaves(start.train.batch_stats)))
    epochs = log_entries(meta, "scores", "epoch")
    assert all(np.isfinite(e["train_surrogate"]) for e in epochs)
