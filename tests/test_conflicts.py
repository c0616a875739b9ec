"""Tests of ballot_jax.conflicts: gradients from one vjp, conflict scores, votes and masks."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ballot_jax import conflicts, masks, train
from helpers import random_batch


def test_gradients_equal_per_group_combinations(tiny_model):
    model, variables = tiny_model
    params, stats = variables["params"], variables["batch_stats"]
    mask = masks.global_magnitude_mask(params, masks.init_mask(params), 0.5)
    batch = random_batch(0, n=12, num_groups=3)
    w_g = jnp.array([1.0, 2.5, 4.0])
    a, f = conflicts.accuracy_fairness_gradients(model.apply, params, stats, mask, batch, w_g)
    per_group = conflicts.per_group_gradient_sums(model.apply, params, stats, mask, batch, 3)
    chex.assert_trees_all_close(a, jax.tree.map(lambda g: g.sum(0), per_group), rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(f, jax.tree.map(lambda g: jnp.tensordot(w_g, g, 1), per_group), rtol=1e-5, atol=1e-6)

    # and a equals the gradient of the summed loss w.r.t. the effective weights
    def summed(eff):
        logits = model.apply({"params": eff, "batch_stats": stats}, batch["image"], train=False)
        return jnp.sum(train.example_losses(logits, batch["label"]))

    chex.assert_trees_all_close(a, jax.grad(summed)(masks.apply_mask(params, mask)), rtol=1e-5, atol=1e-6)
    # pruned weights still get a gradient: the vote can bring them back
    pruned = [np.asarray(g)[~np.asarray(m)] for g, m in zip(masks.prunable_leaves(a, mask), masks.prunable_leaves(mask, mask))]
    assert any(np.abs(p).sum() > 0 for p in pruned)


def test_cost_does_not_grow_with_number_of_groups(tiny_model):
    model, variables = tiny_model
    params, stats = variables["params"], variables["batch_stats"]
    mask = masks.init_mask(params)
    flops = {}
    for G in (2, 10, 100, 200):
        batch = random_batch(0, n=16, num_groups=G)
        fn = jax.jit(functools.partial(conflicts.accuracy_fairness_gradients, model.apply))
        compiled = fn.lower(params, stats, mask, batch, jnp.ones(G)).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops[G] = cost["flops"]
    assert max(flops.values()) <= 1.01 * min(flops.values()), flops


def test_conflicting_weight_loses_votes_and_agreeing_weight_is_kept():
    # One dense kernel [in=3, out=2]. Row 0: a and f agree; row 1: they conflict; row 2: small.
    a = {"head": {"kernel": jnp.array([[1.0, 0.0], [1.0, 0.0], [0.1, 0.1]])}}
    f = {"head": {"kernel": jnp.array([[1.0, 0.0], [-1.0, 0.0], [0.1, 0.1]])}}
    mask = masks.init_mask(a)
    quotas = {"head": {"kernel": 3}}
    votes = masks.map_prunable(lambda m: jnp.zeros(m.shape, jnp.int32), mask)
    score_sum = conflicts.zeros_like_mask(mask, a)
    for _ in range(3):
        s = conflicts.scores(a, f, mask)
        votes, score_sum = conflicts.cast_votes(votes, score_sum, s, quotas)
    final = np.asarray(conflicts.mask_from_votes(votes, score_sum, quotas)["head"]["kernel"])
    assert final[0, 0], "the weight where accuracy and fairness agree is kept"
    assert not final[1, 0], "the weight where they conflict is pruned"
    assert final.sum() == 3
    np.testing.assert_array_equal(np.asarray(votes["head"]["kernel"])[:, 0], [3, 0, 3])


def test_conflict_through_real_gradients():
    # A linear model; feature 1 helps group 0 and hurts group 1 (the poorly served group), so
    # its accuracy and fairness gradients point in opposite directions.
    W = {"head": {"kernel": jnp.zeros((2, 2))}}

    def apply_fn(variables, x, train=False):
        return x @ variables["params"]["head"]["kernel"]

    x = jnp.array([[1.0, 1.0], [1.0, -0.5]])
    batch = {"image": x, "label": jnp.array([0, 0]), "group": jnp.array([0, 1]), "weight": jnp.ones(2)}
    mask = masks.init_mask(W)
    w_g = conflicts.group_weights(jnp.array([0.9, 0.1]))  # group 1 at 10%: w = 10
    a, f = conflicts.accuracy_fairness_gradients(apply_fn, W, {}, mask, batch, w_g)
    ga, gf = np.asarray(a["head"]["kernel"]), np.asarray(f["head"]["kernel"])
    assert np.sign(ga[1, 0]) == -np.sign(gf[1, 0])  # conflict on feature 1
    assert np.sign(ga[0, 0]) == np.sign(gf[0, 0])  # agreement on feature 0
    diag = conflicts.conflict_diagnostics(a, f, mask)["head/kernel"]
    assert 0 < diag["sign_disagreement"] < 1
    s = np.asarray(conflicts.scores(a, f, mask)["head"]["kernel"])
    assert s[0].sum() > s[1].sum()


def test_group_weights_use_float_accuracy_with_floor():
    w = conflicts.group_weights(jnp.array([0.5, 0.25, 0.0]), floor=0.05)
    np.testing.assert_allclose(np.asarray(w), [2.0, 4.0, 20.0])


def test_group_weights_on_the_host_are_the_compiled_ones_bit_for_bit():
    acc = np.random.default_rng(1).uniform(0, 1, 64).astype(np.float32)
    acc[:4] = [0.0, 0.05, 1.0, 0.049999]
    for floor in (0.05, 0.1, 1e-3):
        host = np.asarray(conflicts.group_weights(acc.tolist(), floor))
        traced = np.asarray(jax.jit(conflicts.group_weights, static_argnums=1)(acc, floor))
        assert host.dtype == np.float32
        np.testing.assert_array_equal(host.view(np.uint32), traced.view(np.uint32))


def test_mask_from_int_votes_on_the_host_is_the_compiled_one():
    """Concrete int32 votes are read on the host as they are; traced ones are cast to float32 for the
    sort. Few distinct vote counts, so the summed-score tiebreak and then position decide often."""
    rng = np.random.default_rng(2)
    shapes = {"a": (5, 8), "b": (3, 3, 4, 6)}
    votes = {k: {"kernel": jnp.asarray(rng.integers(0, 4, s).astype(np.int32))} for k, s in shapes.items()}
    score_sum = {k: {"kernel": jnp.asarray(rng.integers(0, 3, s).astype(np.float32))} for k, s in shapes.items()}
    quotas = {"a": {"kernel": 13}, "b": {"kernel": 50}}
    host = conflicts.mask_from_votes(votes, score_sum, quotas)
    traced = jax.jit(conflicts.mask_from_votes)(votes, score_sum, quotas)
    assert masks.masks_equal(host, traced)
    assert [int(np.sum(host[k]["kernel"])) for k in shapes] == [13, 50]


def test_vote_tally_on_the_host_is_the_compiled_one_bit_for_bit():
    """A round's counts and score sums are added on the host for concrete trees: the same int32
    counts and float32 sums as the jitted tally (float32 adds of values whose sum rounds), placed like
    the running totals."""
    rng = np.random.default_rng(3)
    shapes = {"a": (5, 8), "b": (3, 3, 4, 6)}
    votes = jax.device_put({k: {"kernel": jnp.asarray(rng.integers(0, 4, s).astype(np.int32))} for k, s in shapes.items()},
                           jax.devices()[0])
    score_sum = {k: {"kernel": jnp.asarray(rng.standard_normal(s).astype(np.float32) * 1e3)} for k, s in shapes.items()}
    s = {k: {"kernel": jnp.asarray(rng.standard_normal(s).astype(np.float32) / 7)} for k, s in shapes.items()}
    quotas = {"a": {"kernel": 13}, "b": {"kernel": 50}}
    host = conflicts.cast_votes(votes, score_sum, s, quotas)
    traced = jax.jit(conflicts.cast_votes)(votes, score_sum, s, quotas)
    for h, t in zip(jax.tree.leaves(host), jax.tree.leaves(traced)):
        assert h.dtype == t.dtype and np.asarray(h).tobytes() == np.asarray(t).tobytes()
    assert all(v.committed for v in jax.tree.leaves(host[0]))
    assert int(sum(np.sum(np.asarray(v)) for v in jax.tree.leaves(host[0]))) == \
        int(sum(np.sum(np.asarray(v)) for v in jax.tree.leaves(votes))) + 13 + 50


def test_unknown_score_lists_valid():
    a = {"k": {"kernel": jnp.ones((2, 2))}}
    with pytest.raises(ValueError, match="abs"):
        conflicts.scores(a, a, masks.init_mask(a), score="bogus")


def test_voting_train_step_updates_like_plain_step(tiny_model):
    model, variables = tiny_model
    opt = train.OptimizerConfig()
    tx = train.make_optimizer(opt)
    mask = masks.global_magnitude_mask(variables["params"], masks.init_mask(variables["params"]), 0.5)
    s1 = train.create_train_state(variables["params"], variables["batch_stats"], tx, mask)
    s2 = train.create_train_state(variables["params"], variables["batch_stats"], tx, mask)
    plain = train.make_train_step(model.apply, tx)
    voting = conflicts.make_voting_train_step(model.apply, tx)
    batch = random_batch(3)
    s1, m1 = plain(s1, batch, 0.1)
    s2, m2, sums = voting(s2, batch, 0.1, jnp.array([1.0, 3.0]))
    chex.assert_trees_all_close(s1.params, s2.params, rtol=1e-5, atol=1e-6)
    assert sums["a"]["stem"]["kernel"].shape == variables["params"]["stem"]["kernel"].shape
    assert sums["a"]["bn"]["scale"] is None
