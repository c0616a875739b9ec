"""Ballot: conflict-detection-based subnetwork selection, then refined training.

Stages after the shared dense run (REFERENCE §3):

1. ``ticket`` — the vote trajectory. The magnitude ticket of θ_T fixes the per-layer quotas k_l.
   ``vote_trajectory="ticket"`` (the paper): the ticket rewound to θ0 (or θ_k) and trained with
   the mask enforced; ``"dense"`` (what the prototype effectively did): the dense network θ_T
   trained on, unmasked. After every epoch the validation per-group accuracies give
   w_g = 1/max(acc_g, floor), the accuracy and fairness gradients (a, f) are summed over the vote
   data, the ``criterion`` (:data:`ballot_jax.conflicts.CRITERIA`) scores every weight and each
   layer votes for its top k_l scores. At the end the Ballot mask keeps, per layer, the k_l
   weights with most votes (ties: summed score, then position).
2. ``retrain`` — the Ballot mask, from θ0 / θ_k (``retrain_from="rewind_point"``) or from θ_T with
   the learning-rate schedule restarted (``"trained"``: learning-rate rewinding), trained
   ``retrain_epochs`` epochs with the mask enforced (the same budget every method gets).

Config keys ``config.ballot.*`` (defaults and meanings in :func:`ballot_jax.config.base_config`):
``criterion``, ``vote_trajectory``, ``retrain_from``,
``band`` (``magnitude_veto``'s band, a fraction of k_l), ``vote_epochs`` (default ``retrain_epochs``),
``vote_source`` (``"pass"``: a gradient pass over the vote data at the post-epoch weights, the
prototype's semantics; ``"train_steps"``: (a, f) summed over the epoch's own train steps, no extra
pass), ``vote_data`` (``"val"`` or ``"train"``, for ``pass``), ``eta``, ``score`` (``abs``/``signed``, for
``gradient``), ``quotas`` (``magnitude``/``uniform``/``erk``), ``acc_floor``, ``diag_batches`` (batches used for the per-group cosine diagnostic; 0 turns it off),
``diag_max_groups`` (skip that diagnostic above this many groups: it costs G backward passes),
``vote_interval_steps`` (``train_steps`` only: a vote round every N steps instead of once per
epoch; steps left over at the end of an epoch form one more round).

Variants for comparisons in one run: ``methods="ballot,ballot:taylor,ballot:magnitude_veto:dense"``.
Each token after ``ballot:`` is a value of ``criterion``, ``vote_trajectory`` or ``retrain_from``
(:data:`VARIANT_OPTIONS`); a variant shares the dense run of its seed with every other method.
"""

from __future__ import annotations

import functools
import types
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ballot_jax import conflicts, loop, masks, train
from ballot_jax.methods import Method, common, register

VOTE_SOURCES = ("pass", "train_steps")
VOTE_DATA = ("val", "train")
QUOTAS = ("magnitude", "uniform", "erk")
TRAJECTORIES = ("ticket", "dense")
RETRAIN_FROM = ("rewind_point", "trained")
# The keys of config.ballot (defaults and meanings: ballot_jax.config.base_config).
OPTIONS = ("criterion", "vote_trajectory", "retrain_from", "band", "vote_epochs", "vote_source", "vote_data", "eta",
           "score", "quotas", "acc_floor", "diag_batches", "diag_max_groups", "vote_interval_steps")
# Options a method-name variant (ballot:taylor:dense) may set, each with its valid values.
VARIANT_OPTIONS = {"criterion": tuple(conflicts.CRITERIA), "vote_trajectory": TRAJECTORIES,
                   "retrain_from": RETRAIN_FROM}


def settings(ctx: loop.Context) -> dict[str, Any]:
    """The resolved options of ``ctx.config.ballot``, validated (only ``ctx.config`` is read)."""
    b = ctx.config.ballot
    s = {key: b[key] for key in OPTIONS}
    s["vote_epochs"] = int(common.unless_none(b.vote_epochs, common.retrain_epochs(ctx)))
    conflicts.get_criterion(s["criterion"])
    for key, valid in (("vote_source", VOTE_SOURCES), ("vote_data", VOTE_DATA), ("quotas", QUOTAS),
                       ("score", conflicts.SCORES), ("vote_trajectory", TRAJECTORIES), ("retrain_from", RETRAIN_FROM)):
        if s[key] not in valid:
            raise ValueError(f"unknown ballot.{key} {s[key]!r}; valid: {list(valid)}")
    if s["vote_interval_steps"] and s["vote_source"] != "train_steps":
        raise ValueError("ballot.vote_interval_steps needs ballot.vote_source='train_steps' (a gradient pass every few steps "
                         "would cost more than the training itself); set ballot.vote_interval_steps=0 for per-epoch votes")
    if "per_group" in conflicts.get_criterion(s["criterion"]).needs and s["vote_source"] != "pass":
        raise ValueError(f"ballot.criterion={s['criterion']!r} needs the per-group gradient sums of a gradient pass: "
                         "set ballot.vote_source='pass'")
    if s["vote_epochs"] < 1:
        raise ValueError("ballot.vote_epochs must be at least 1: the Ballot mask needs at least one vote round")
    if not 0.0 <= s["band"] <= 1.0:
        raise ValueError(f"ballot.band={s['band']} must be in [0, 1] (a fraction of each layer's kept count)")
    return s


def parse_variant(tokens: list[str]) -> dict[str, str]:
    """Config overrides of a method-name variant: ``["taylor", "dense"]`` →
    ``{"ballot.criterion": "taylor", "ballot.vote_trajectory": "dense"}``."""
    out: dict[str, str] = {}
    for t in tokens:
        keys = [k for k, valid in VARIANT_OPTIONS.items() if t in valid]
        if not keys:
            valid = ", ".join(f"{k}: {'/'.join(v)}" for k, v in VARIANT_OPTIONS.items())
            raise ValueError(f"unknown Ballot variant {t!r}; each part after 'ballot:' is one of ({valid})")
        if keys[0] in out:
            raise ValueError(f"Ballot variant sets {keys[0]} twice ({out[keys[0]]!r} and {t!r})")
        out[keys[0]] = t
    return {f"ballot.{k}": v for k, v in out.items()}


def ticket_mask(ctx: loop.Context, params: Any, structure: masks.Mask, quotas: str) -> masks.Mask:
    """The magnitude ticket of ``params`` at the target density, global or uniform/ERK per-layer quotas."""
    density = common.target_density(ctx)
    if quotas == "magnitude":
        return masks.global_magnitude_mask(params, structure, density)
    k = masks.distribution_quotas(structure, density, quotas)[1]
    return masks.topk_per_layer(masks.magnitude_scores(params, structure), k)


def vote_quotas(ctx: loop.Context, ticket: masks.Mask, head_only: bool) -> Any:
    """k_l per layer: the ticket's; for a head-only criterion the head's share at the target
    density and every other layer whole (the prototype's real, much lower, overall sparsity)."""
    if not head_only:
        return masks.quotas_of(ticket)
    density = common.target_density(ctx)
    names = iter(masks.layer_names(ticket))
    return masks.map_prunable(
        lambda m: int(round(density * np.size(m))) if masks.HEAD_NAME in next(names).split("/") else int(np.size(m)),
        ticket)


def _val_weights(ctx: loop.Context, state: loop.RunState, floor: float) -> tuple[jax.Array, dict[str, Any]]:
    metrics = loop.evaluate(ctx, state.train, "val")
    return conflicts.group_weights(metrics["per_group_accuracy"], floor), metrics


def _gradient_pass(ctx: loop.Context, state: loop.RunState, weights_g: jax.Array, vote_data: str,
                   criterion: conflicts.Criterion) -> dict[str, Any]:
    squares = "squares" in criterion.needs
    groups = ctx.task.num_groups if "per_group" in criterion.needs else 0
    grad_pass = ctx.cached(f"ballot_gradient_pass/{squares}/{groups}",
                           lambda: conflicts.make_gradient_pass(ctx.apply_fn, squares=squares, num_groups=groups))
    ts = state.train
    acc = conflicts.gradient_sums_like(ts.params, ts.mask, squares=squares, num_groups=groups)
    split = getattr(ctx.task, vote_data)
    for batch in split.batches(batch_size=ctx.eval_batch_size, epoch=0, seed=0, shuffle=False, augment=False,
                               drop_remainder=False, sharding=ctx.sharding):
        acc = grad_pass(ts.params, ts.batch_stats, ts.mask, batch, weights_g, acc)
    return acc


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
        total = g if total is None else train.add_trees(total, g)
    return None if total is None else conflicts.group_cosine_matrix(total, ts.mask)


def initial_state(ctx: loop.Context, dense: loop.RunState) -> loop.RunState:
    """The dense run's final state plus zero votes and score sums, unit group weights, the trained
    weights θ_T (magnitude reference, learning-rate rewinding) and a round counter."""
    ts = dense.train
    votes = masks.full_like_mask(ts.mask, ts.mask, 0, np.int32)
    extras = {
        "score_sum": conflicts.zeros_like_mask(ts.mask, ts.params),
        "weights_g": jnp.ones((ctx.task.num_groups,), jnp.float32),
        "trained_params": train.copy_tree(ts.params),
        "trained_batch_stats": train.copy_tree(ts.batch_stats),
        "rounds": jnp.zeros((), jnp.int32),
    }
    return dense.replace(votes=votes, extras=extras)


def _score_fn(ctx: loop.Context, s: dict[str, Any]) -> Any:
    """The criterion's score as a function of :class:`conflicts.RoundInputs` (jitted unless on host)."""
    crit = conflicts.get_criterion(s["criterion"])
    fn = functools.partial(crit.score, eta=s["eta"], score=s["score"], band=s["band"])
    if crit.on_host:
        return fn
    return ctx.cached(f"ballot_score/{crit.name}/{s['eta']}/{s['score']}/{s['band']}", lambda: jax.jit(fn))


def build_stages(ctx: loop.Context) -> list[loop.Stage]:
    """The ``ticket`` (trajectory + votes → Ballot mask) and ``retrain`` stages."""
    s = settings(ctx)
    crit = conflicts.get_criterion(s["criterion"])
    vote_epochs = s["vote_epochs"]
    score_fn = _score_fn(ctx, s)

    def structure(state: loop.RunState) -> masks.Mask:
        """The all-kept mask (the prunable structure; the vote counts have it)."""
        return masks.full_like_mask(state.votes, state.votes, True, np.bool_)

    ticket_memo: dict = {}

    def the_ticket(c: loop.Context, state: loop.RunState) -> masks.Mask:
        """The magnitude ticket of θ_T: computed once per stage (θ_T does not change in it)."""
        trained = state.extras["trained_params"]
        return loop.memo_by_identity(ticket_memo, "ticket", trained,
                                     lambda: ticket_mask(c, trained, structure(state), s["quotas"]))

    def vote(c: loop.Context, state: loop.RunState, sums: dict[str, Any], quotas: Any) -> loop.RunState:
        prunable = structure(state)
        weights = state.train.params if s["vote_trajectory"] == "dense" else state.extras["trained_params"]
        inputs = conflicts.RoundInputs(
            weights=masks.map_prunable(lambda m, w: w, prunable, weights),
            reference=masks.map_prunable(lambda m, w: w, prunable, state.extras["trained_params"]),
            a=sums["a"], f=sums["f"], mask=prunable, quotas=quotas,
            a_sq=sums.get("a_sq"), f_sq=sums.get("f_sq"), per_group=sums.get("per_group"))
        sc = score_fn(inputs)
        votes, score_sum = conflicts.cast_votes(state.votes, state.extras["score_sum"], sc, quotas)
        return state.replace(votes=votes, extras=dict(state.extras, score_sum=score_sum,
                                                      rounds=state.extras["rounds"] + 1))

    def begin(c: loop.Context, state: loop.RunState):
        ticket = the_ticket(c, state)
        if s["vote_trajectory"] == "ticket":
            state = common.rewind_to(c, state, ticket)
        else:  # the dense network θ_T trained on (mask all ones), optimizer and schedule restarted
            state = common.continue_with(c, state, state.train.mask)
        info = common.with_mask_info(ticket, trajectory=s["vote_trajectory"], criterion=s["criterion"])
        if s["vote_source"] == "train_steps":
            w, metrics = _val_weights(c, state, s["acc_floor"])
            state = state.replace(extras=dict(state.extras, weights_g=w))
            info["val_per_group_accuracy"] = metrics["per_group_accuracy"]
        return state, info

    def epoch(c: loop.Context, state: loop.RunState, e: int):
        quotas = vote_quotas(c, the_ticket(c, state), crit.head_only)
        rounds_before = int(state.extras["rounds"])
        if s["vote_source"] == "train_steps":
            squares = "squares" in crit.needs
            step = c.cached(f"ballot_voting_step/{squares}",
                            lambda: conflicts.make_voting_train_step(c.apply_fn, c.tx, squares=squares))
            holder = {"state": state}

            def vote_round(ts, sums):
                holder["state"] = vote(c, holder["state"].replace(train=ts), sums, quotas)

            ts, info, sums = loop.train_epoch(c, state.train, stage="ticket", stage_tag=common.TICKET_TAG, epoch=e,
                                              epochs=vote_epochs, step_fn=step, step_args=(state.extras["weights_g"],),
                                              every=s["vote_interval_steps"], on_every=vote_round)
            state = holder["state"].replace(train=ts)
            weights_used = state.extras["weights_g"]
            next_w, metrics = _val_weights(c, state, s["acc_floor"])
        else:
            ts, info, _ = loop.train_epoch(c, state.train, stage="ticket", stage_tag=common.TICKET_TAG, epoch=e,
                                           epochs=vote_epochs)
            state = state.replace(train=ts)
            weights_used, metrics = _val_weights(c, state, s["acc_floor"])
            next_w = weights_used
            sums = _gradient_pass(c, state, weights_used, s["vote_data"], crit)
        if sums is not None:  # the epoch's (last) round
            state = vote(c, state, sums, quotas)
        state = state.replace(extras=dict(state.extras, weights_g=next_w))
        info.update(
            val_accuracy=metrics["accuracy"],
            val_cwv=metrics["cwv"],
            val_mcd=metrics["mcd"],
            val_per_group_accuracy=metrics["per_group_accuracy"],
            group_weights=np.asarray(weights_used).tolist(),
            vote_rounds=int(state.extras["rounds"]) - rounds_before,
        )
        if sums is not None:
            info["conflicts"] = conflicts.conflict_diagnostics(sums["a"], sums["f"], structure(state))
        if s["diag_batches"] > 0 and c.task.num_groups <= s["diag_max_groups"]:
            info["group_gradient_cosine"] = _group_cosines(c, state, s["diag_batches"])
        return state, info

    def end(c: loop.Context, state: loop.RunState):
        ticket = the_ticket(c, state)
        quotas = vote_quotas(c, ticket, crit.head_only)
        chosen = conflicts.mask_from_votes(state.votes, state.extras["score_sum"], quotas)
        overlap = masks.overlap(chosen, ticket)
        params = state.train.params
        state = state.replace(train=state.train.replace(mask=chosen, params=masks.apply_mask(params, chosen)))
        return state, common.with_mask_info(chosen, ticket_share_kept=overlap["share_of_b"],
                                            jaccard_with_magnitude_ticket=overlap["jaccard"],
                                            vote_rounds=int(state.extras["rounds"]))

    def begin_retrain(c: loop.Context, state: loop.RunState):
        mask = state.train.mask
        if s["retrain_from"] == "trained":  # learning-rate rewinding: θ_T under the mask, schedule restarted
            ts = loop.fresh_train_state(c, state.extras["trained_params"], state.extras["trained_batch_stats"], mask)
            return state.replace(train=ts), common.with_mask_info(mask, retrain_from="trained")
        return common.rewind_to(c, state, mask), common.with_mask_info(mask, retrain_from="rewind_point")

    return [
        loop.Stage("ticket", epochs=vote_epochs, begin=begin, epoch=epoch, end=end),
        common.train_stage("retrain", common.retrain_epochs(ctx), common.RETRAIN_TAG, begin=begin_retrain),
    ]


METHOD = register(
    Method(
        name="ballot",
        description="Ballot: votes from accuracy/fairness conflicts (pluggable criterion) on a vote trajectory, "
                    "rewind, retrain",
        from_dense=True,
        initial_state=initial_state,
        stages=build_stages,
        parse_variant=parse_variant,
        check=lambda config: settings(types.SimpleNamespace(config=config)) and None,
    )
)
