"""Ballot's options that the end-to-end runs do not exercise, each checked for what it promises.

``vote_source="train_steps"`` (votes from the epoch's own train steps), ``vote_interval_steps``
(extra rounds), ``rewind_step`` > 0 (late rewinding to θ_k), ``score="signed"`` and the
uniform / ERK per-layer quotas.
"""

from __future__ import annotations

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ballot_jax import config as config_lib
from ballot_jax import conflicts, loop, masks, methods, train
from ballot_jax.methods import ballot, common
from fakes import fake_task
from helpers import TinyNet

BASE = {"sparsity": 0.5, "retrain_epochs": 1, "dense_epochs": 2, "batch_size": 16, "augment": False,
        "ballot.vote_epochs": 2, "ballot.diag_batches": 0, "ballot.criterion": "gradient",
        "ballot.vote_trajectory": "ticket", "ballot.retrain_from": "rewind_point"}


def make_ctx(env, opt: train.OptimizerConfig | None = None, **overrides) -> loop.Context:
    opt = opt or train.OptimizerConfig()
    return loop.Context(apply_fn=env.model.apply, task=env.task, config=config_lib.make(BASE, **overrides), opt=opt,
                        tx=train.make_optimizer(opt), seed=0, batch_size=16, eval_batch_size=32,
                        is_prunable=masks.prunable_filter())


def dense_run(env, ctx):
    return loop.run_stages(ctx, [common.dense_stage(ctx)], loop.initial_state(ctx, env.variables), None)


@pytest.fixture(scope="module")
def env():
    model = TinyNet()
    out = types.SimpleNamespace(task=fake_task(seed=0), model=model,
                                variables=model.init(jax.random.PRNGKey(0), jnp.zeros((2, 8, 8, 3))))
    ctx = make_ctx(out)
    out.dense, _ = dense_run(out, ctx)
    out.steps_per_epoch = ctx.steps_per_epoch
    return out


def ticket_stage(env, **overrides):
    """Runs Ballot's ``ticket`` stage (trajectory + votes) from the shared dense run."""
    ctx = make_ctx(env, **overrides)
    state = ballot.initial_state(ctx, jax.tree.map(jnp.copy, env.dense))
    final, meta = loop.run_stages(ctx, ballot.build_stages(ctx)[:1], state, None)
    epochs = [e for e in meta["log"] if e["stage"] == "ticket" and e["phase"] == "epoch"]
    end = [e for e in meta["log"] if e["stage"] == "ticket" and e["phase"] == "end"][-1]
    return ctx, final, epochs, end


def max_votes(state) -> int:
    return max(int(v.max()) for v in masks.prunable_leaves(state.votes, state.train.mask))


def test_train_steps_votes_come_from_the_train_steps(env):
    """One round per epoch from the summed train-step gradients, not from a pass over the vote data."""
    ctx, final, epochs, end = ticket_stage(env, **{"ballot.vote_source": "train_steps"})
    assert [e["vote_rounds"] for e in epochs] == [1, 1] and end["vote_rounds"] == 2
    assert max_votes(final) == 2
    every = masks.map_prunable(lambda m: jnp.ones(jnp.shape(m), bool), final.train.mask)
    assert masks.quotas_of(final.train.mask) == masks.quotas_of(  # the magnitude ticket's k_l
        ballot.ticket_mask(ctx, final.extras["trained_params"], every, "magnitude"))
    # Another vote source (a pass over the validation split at the post-epoch weights) votes otherwise.
    _, by_pass, _, _ = ticket_stage(env)
    assert not all(np.array_equal(np.asarray(a), np.asarray(b))
                   for a, b in zip(jax.tree.leaves(final.extras["score_sum"]), jax.tree.leaves(by_pass.extras["score_sum"])))


def test_vote_interval_steps_adds_rounds(env):
    n = 2
    rounds_per_epoch = math.ceil(env.steps_per_epoch / n)
    assert rounds_per_epoch > 1  # otherwise the option would not be visible here
    _, final, epochs, end = ticket_stage(env, **{"ballot.vote_source": "train_steps", "ballot.vote_interval_steps": n})
    assert [e["vote_rounds"] for e in epochs] == [rounds_per_epoch] * 2
    assert end["vote_rounds"] == int(final.extras["rounds"]) == 2 * rounds_per_epoch
    assert 2 < max_votes(final) <= 2 * rounds_per_epoch  # more rounds than epochs really voted


def test_vote_interval_steps_needs_train_steps(env):
    with pytest.raises(ValueError, match="vote_interval_steps needs ballot.vote_source='train_steps'"):
        ballot.settings(make_ctx(env, **{"ballot.vote_interval_steps": 2}))


def test_late_rewinding_saves_theta_k_and_retrains_from_it(env):
    """With a constant learning rate, θ_k at k = one epoch is exactly a one-epoch dense run's result."""
    constant = train.OptimizerConfig(schedule="constant")
    k = env.steps_per_epoch
    ctx = make_ctx(env, opt=constant, rewind_step=k)
    dense, meta = dense_run(env, ctx)
    assert [e.get("rewind_point_saved_at_step") for e in meta["log"] if e["phase"] == "epoch"] == [k, None]
    one_epoch, _ = dense_run(env, make_ctx(env, opt=constant, dense_epochs=1))
    for a, b, c in zip(jax.tree.leaves(dense.rewind_params), jax.tree.leaves(one_epoch.train.params),
                       jax.tree.leaves(dense.train.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert not np.array_equal(np.asarray(a), np.asarray(c))  # θ_k is not θ_T
    # Ballot's retrain stage (retrain_from="rewind_point") starts from θ_k under the Ballot mask.
    state, _ = loop.run_stages(ctx, ballot.build_stages(ctx)[:1], ballot.initial_state(ctx, dense), None)
    started, info = ballot.build_stages(ctx)[1].begin(ctx, state)
    assert info["retrain_from"] == "rewind_point"
    expected = masks.apply_mask(dense.rewind_params, state.train.mask)
    for a, b in zip(jax.tree.leaves(started.train.params), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_signed_score_is_the_signed_sum():
    """score="signed" keeps â + η f̂ (a weight whose gradients cancel scores low, one pointing the
    negative way lowest); "abs" its magnitude."""
    rng = np.random.default_rng(0)
    a, f = (jnp.asarray(rng.normal(size=(4, 3)), jnp.float32) for _ in range(2))
    tree_a, tree_f, mask = {"k": {"kernel": a}}, {"k": {"kernel": f}}, {"k": {"kernel": jnp.ones((4, 3), bool)}}
    signed = conflicts.scores(tree_a, tree_f, mask, eta=0.5, score="signed")["k"]["kernel"]
    expected = conflicts.normalize_kernel(a) + 0.5 * conflicts.normalize_kernel(f)
    np.testing.assert_allclose(signed, expected, rtol=1e-6)
    assert float(signed.min()) < 0
    np.testing.assert_allclose(conflicts.scores(tree_a, tree_f, mask, eta=0.5)["k"]["kernel"], jnp.abs(expected),
                               rtol=1e-6)


def test_signed_score_runs_through_ballot(env):
    _, final, _, end = ticket_stage(env, **{"ballot.score": "signed"})
    assert end["vote_rounds"] == 2 and max_votes(final) <= 2
    assert masks.sparsity(final.train.mask) == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("quotas", ["uniform", "erk"])
def test_uniform_and_erk_quotas_set_each_layers_kept_count(env, quotas):
    ctx, final, _, _ = ticket_stage(env, **{"ballot.quotas": quotas})
    every = masks.map_prunable(lambda m: jnp.ones(jnp.shape(m), bool), final.train.mask)
    expected = masks.distribution_quotas(every, common.target_density(ctx), quotas)[1]
    assert masks.quotas_of(final.train.mask) == expected
    # and they differ from the global magnitude ticket's per-layer counts
    assert expected != masks.quotas_of(ballot.ticket_mask(ctx, final.extras["trained_params"], every, "magnitude"))
