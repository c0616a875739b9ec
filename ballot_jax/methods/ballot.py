"""Ballot: conflict-detection-based subnetwork selection, then refined training.

Stages after the shared dense run (REFERENCE §3):

1. ``ticket`` — the magnitude ticket of θ_T (per-layer quotas k_l), rewound to θ0 (or θ_k) and
   trained for ``vote_epochs`` epochs with the mask enforced. After every epoch the validation
   per-group accuracies give w_g = 1/max(acc_g, floor); the accuracy and fairness gradients
   (a, f) give scores s = |â + η f̂|; each layer votes for its top k_l scores. At the end the
   Ballot mask keeps, per layer, the k_l weights with most votes (ties: summed score, position).
2. ``retrain`` — rewind to θ0 (or θ_k) with the Ballot mask and train ``epochs`` epochs, mask
   enforced (the same budget every method gets).

Config keys (all optional): ``vote_epochs`` (default ``epochs``), ``vote_source``
(``"pass"``: a gradient pass over the vote data at the post-epoch weights, the prototype's
semantics; ``"train_steps"``: (a, f) summed over the epoch's own train steps, no extra pass),
``vote_data`` (``"val"`` or ``"train"``, for ``pass``), ``eta`` (1.0), ``score`` (``abs``/
``signed``), ``quotas`` (``magnitude``/``uniform``/``erk``), ``acc_floor`` (0.05),
``diag_batches`` (batches used for the per-group cosine diagnostic; 0 turns it off),
``diag_max_groups`` (skip that diagnostic above this many groups: it costs G backward passes),
``vote_interval_steps`` (``train_steps`` only: a vote round every N steps instead of once per
epoch; steps left over at the end of an epoch form one more round).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ballot_jax import conflicts, loop, masks
from ballot_jax.methods import Method, common, register

VOTE_SOURCES = ("pass", "train_steps")
VOTE_DATA = ("val", "train")
QUOTAS = ("magnitude", "uniform", "erk")



def settings(ctx: loop.Context) -> dict[str, Any]:
    """The resolved Ballot options, validated."""
    s = {
        "vote_epochs": int(common.option(ctx, "vote_epochs", ctx.config.epochs)),
        "vote_source": str(common.option(ctx, "vote_source", "pass")),
        "vote_data": str(common.option(ctx, "vote_data", "val")),
        "eta": float(common.option(ctx, "eta", 1.0)),
        "score": str(common.option(ctx, "score", "abs")),
        "quotas": str(common.option(ctx, "quotas", "magnitude")),
        "acc_floor": float(common.option(ctx, "acc_floor", 0.05)),
        "diag_batches": int(common.option(ctx, "diag_batches", 2)),
        "diag_max_groups": int(common.option(ctx, "diag_max_groups", 32)),
        "vote_interval_steps": int(common.option(ctx, "vote_interval_steps", 0)),
    }
    for key, valid in (("vote_source", VOTE_SOURCES), ("vote_data", VOTE_DATA), ("quotas", QUOTAS), ("score", conflicts.SCORES)):
        if s[key] not in valid:
            raise ValueError(f"unknown {key} {s[key]!r}; valid: {list(valid)}")
    if s["vote_interval_steps"] and s["vote_source"] != "train_steps":
        raise ValueError("vote_interval_steps needs vote_source='train_steps' (a gradient pass every few steps "
                         "would cost more than the training itself); set vote_interval_steps=0 for per-epoch votes")
    if s["vote_epochs"] < 1:
        raise ValueError("vote_epochs must be at least 1: the Ballot mask needs at least one vote round")
    return s


def ticket_mask(ctx: loop.Context, state: loop.RunState, quotas: str) -> masks.Mask:
    """The magnitude ticket at the target density, with global or uniform/ERK per-layer quotas."""
    density = common.target_density(ctx)
    if quotas == "magnitude":
        return common.magnitude_ticket(ctx, state, density)
    dens = masks.layer_densities(state.train.mask, density, quotas)
    k = masks.quotas_from_densities(state.train.mask, dens, total_density=density)
    return masks.topk_per_layer(masks.magnitude_scores(state.train.params, state.train.mask), k)


def _val_weights(ctx: loop.Context, state: loop.RunState, floor: float) -> tuple[jax.Array, dict[str, Any]]:
    metrics = loop.evaluate(ctx, state.train, "val")
    return conflicts.group_weights(metrics["per_group_accuracy"], floor), metrics


def _gradient_pass(ctx: loop.Context, state: loop.RunState, weights_g: jax.Array, vote_data: str):
    grad_pass = ctx.cached("ballot_gradient_pass", lambda: conflicts.make_gradient_pass(ctx.apply_fn))
    ts = state.train
    acc = {"a": conflicts.zeros_like_mask(ts.mask, ts.params), "f": conflicts.zeros_like_mask(ts.mask, ts.params)}
    split = getattr(ctx.task, vote_data)
    for batch in split.batches(batch_size=ctx.eval_batch_size, epoch=0, seed=0, shuffle=False, augment=False,
                               drop_remainder=False, sharding=ctx.sharding):
        acc = grad_pass(ts.params, ts.batch_stats, ts.mask, batch, weights_g, acc)
    return acc["a"], acc["f"]


def _group_cosines(ctx: loop.Context, state: loop.RunState, n_batches: int) -> list[list[float]] | None:
    G = ctx.task.num_groups
    fn = ctx.cached(
        "ballot_per_group",
        lambda: jax.jit(functools.partial(conflicts.per_group_gradient_sums, ctx.apply_fn), static_argnames="num_groups"),
    )
    ts = state.train
    total = None
    batches = ctx.task.val.batches(batch_size=ctx.eval_batch_size, epoch=0, seed=0, shuffle=False, augment=False,
                                   drop_remainder=False, sharding=ctx.sharding)
    for i, batch in enumerate(batches):
        if i >= n_batches:
            break
        g = fn(ts.params, ts.batch_stats, ts.mask, batch, num_groups=G)
        total = g if total is None else jax.tree.map(jnp.add, total, g)
    return None if total is None else conflicts.group_cosine_matrix(total, ts.mask)


def initial_state(ctx: loop.Context, dense: loop.RunState) -> loop.RunState:
    """The dense run's final state plus zero votes, zero score sums and unit group weights."""
    ts = dense.train
    votes = masks.map_prunable(lambda m: jnp.zeros(jnp.shape(m), jnp.int32), ts.mask)
    extras = {
        "score_sum": conflicts.zeros_like_mask(ts.mask, ts.params),
        "weights_g": jnp.ones((ctx.task.num_groups,), jnp.float32),
    }
    return dense.replace(votes=votes, extras=extras)


def build_stages(ctx: loop.Context) -> list[loop.Stage]:
    """The ``ticket`` (trajectory + votes → Ballot mask) and ``retrain`` stages."""
    s = settings(ctx)
    vote_epochs = s["vote_epochs"]

    def begin(c: loop.Context, state: loop.RunState):
        mask = ticket_mask(c, state, s["quotas"])
        state = common.rewind_to(c, state, mask)
        info = common.with_mask_info(mask)
        if s["vote_source"] == "train_steps":
            w, metrics = _val_weights(c, state, s["acc_floor"])
            state = state.replace(extras=dict(state.extras, weights_g=w))
            info["val_per_group_accuracy"] = metrics["per_group_accuracy"]
        return state, info

    def epoch(c: loop.Context, state: loop.RunState, e: int):
        quotas = masks.quotas_of(state.train.mask)
        if s["vote_source"] == "train_steps":
            step = c.cached("ballot_voting_step", lambda: conflicts.make_voting_train_step(c.apply_fn, c.tx))
            ballots = {"votes": state.votes, "score_sum": state.extras["score_sum"], "rounds": 0}

            def vote_round(ts, sums):
                sc = conflicts.scores(sums["a"], sums["f"], ts.mask, s["eta"], s["score"])
                ballots["votes"], ballots["score_sum"] = conflicts.cast_votes(ballots["votes"], ballots["score_sum"], sc, quotas)
                ballots["rounds"] += 1

            ts, info, sums = loop.train_epoch(c, state.train, stage="ticket", stage_tag=common.TICKET_TAG, epoch=e,
                                              epochs=vote_epochs, step_fn=step, step_args=(state.extras["weights_g"],),
                                              every=s["vote_interval_steps"], on_every=vote_round)
            state = state.replace(train=ts, votes=ballots["votes"],
                                  extras=dict(state.extras, score_sum=ballots["score_sum"]))
            info["vote_rounds_within_epoch"] = ballots["rounds"]
            a, f = (sums["a"], sums["f"]) if sums is not None else (None, None)
            weights_used = state.extras["weights_g"]
            next_w, metrics = _val_weights(c, state, s["acc_floor"])
        else:
            ts, info, _ = loop.train_epoch(c, state.train, stage="ticket", stage_tag=common.TICKET_TAG, epoch=e,
                                           epochs=vote_epochs)
            state = state.replace(train=ts)
            weights_used, metrics = _val_weights(c, state, s["acc_floor"])
            next_w = weights_used
            a, f = _gradient_pass(c, state, weights_used, s["vote_data"])
        if a is not None:  # the epoch's (last) round
            sc = conflicts.scores(a, f, state.train.mask, s["eta"], s["score"])
            votes, score_sum = conflicts.cast_votes(state.votes, state.extras["score_sum"], sc, quotas)
            state = state.replace(votes=votes, extras=dict(state.extras, score_sum=score_sum))
        state = state.replace(extras=dict(state.extras, weights_g=next_w))
        info.update(
            val_accuracy=metrics["accuracy"],
            val_cwv=metrics["cwv"],
            val_mcd=metrics["mcd"],
            val_per_group_accuracy=metrics["per_group_accuracy"],
            group_weights=np.asarray(weights_used).tolist(),
        )
        if a is not None:
            info["conflicts"] = conflicts.conflict_diagnostics(a, f, state.train.mask)
        if s["diag_batches"] > 0 and c.task.num_groups <= s["diag_max_groups"]:
            info["group_gradient_cosine"] = _group_cosines(c, state, s["diag_batches"])
        return state, info

    def end(c: loop.Context, state: loop.RunState):
        ticket = state.train.mask
        chosen = conflicts.mask_from_votes(state.votes, state.extras["score_sum"], masks.quotas_of(ticket))
        kept_t = masks.prunable_leaves(ticket, ticket)
        kept_b = masks.prunable_leaves(chosen, ticket)
        inter = sum(int(jnp.sum(x & y)) for x, y in zip(kept_t, kept_b))
        union = sum(int(jnp.sum(x | y)) for x, y in zip(kept_t, kept_b))
        state = state.replace(train=state.train.replace(mask=chosen, params=masks.apply_mask(state.train.params, chosen)))
        return state, common.with_mask_info(chosen, overlap_with_magnitude_ticket=inter / max(union, 1),
                                            vote_rounds=vote_epochs)

    def begin_retrain(c: loop.Context, state: loop.RunState):
        return common.rewind_to(c, state, state.train.mask), common.with_mask_info(state.train.mask)

    return [
        loop.Stage("ticket", epochs=vote_epochs, begin=begin, epoch=epoch, end=end),
        common.train_stage("retrain", common.retrain_epochs(ctx), common.RETRAIN_TAG, begin=begin_retrain),
    ]


METHOD = register(
    Method(
        name="ballot",
        description="Ballot: votes from accuracy/fairness gradient conflicts on the magnitude-ticket trajectory, rewind, retrain",
        from_dense=True,
        initial_state=initial_state,
        stages=build_stages,
    )
)
