"""SafeCompress (Zhu et al., ASE 2022) adapted to fairness: test-driven dynamic sparse training.

SafeCompress trains a sparse network from scratch with a dynamic mask (drop/grow, as RigL), and
at every mask update proposes several candidate sparse models and keeps the one that passes a
"safety test" best — in the original a membership-inference attack run against each
candidate, with a performance test alongside. Here the safety test is the fairness evaluation
on the validation split (REFERENCE §4): each candidate is evaluated on ``val`` (accuracy, CWV,
MCD) and the chosen one has the lowest ``safecompress.fairness_metric`` among the candidates whose
accuracy is within ``safecompress.acc_budget`` of the most accurate candidate (the performance test
becomes a tolerance instead of a second objective). Ties go to the more accurate candidate,
then to the lower index (the plain RigL update). See :func:`select_candidate`.

One stage from θ0 (no dense run), ``sparse_training``:

* Initial mask at the target density d: per-layer densities from ``safecompress.distribution``
  (``"erk"``, default, the usual dynamic-sparse-training allocation, or ``"uniform"``), turned
  into exact integer quotas k_l with Σ_l k_l = round(d · N); the kept positions are random
  (``safecompress.init="random"``, default) or the k_l largest |θ0| of each layer (``"magnitude"``). The
  quotas never change: every update keeps exactly k_l weights in each layer.
* Budget: ``safecompress.epochs`` epochs, default ``dense_epochs + retrain_epochs`` — the same number of training
  steps as the methods that train dense first and then retrain their mask (MP, random, one-shot
  LTH); the learning-rate schedule spans the whole run.
* Mask updates after training step t for t = ΔT, 2ΔT, … while t < ``safecompress.end_fraction`` · T
  (ΔT = ``safecompress.interval`` steps, default one epoch; T = total steps). The drop fraction decays as
  f(t) = f0/2 · (1 + cos(π t / (end_fraction · T))), f0 = ``safecompress.drop_fraction``. In layer l,
  n_l = floor(f(t) · k_l) active weights are dropped and n_l inactive ones grown, chosen by the
  magnitude of the last step's dense gradient (``safecompress.growth="gradient"``, RigL), of an
  exponential moving average of dense gradients (``"momentum"``, factor ``safecompress.momentum``), or
  at random (``"random"``, SET). Just-dropped weights may be regrown. Grown weights start at
  0.0, and their optimizer buffers (and those of every dropped weight) are reset to zero.
* Candidates (``safecompress.candidates`` = C, default 3): candidate 0 drops the n_l smallest-magnitude
  active weights (plain RigL); candidate i ≥ 1 drops n_l weights drawn at random among the
  min(2 n_l, k_l) smallest-magnitude active weights of each layer (host NumPy draws seeded by
  the run's seed, t and i, so a resumed run draws the same). Every candidate then grows by the
  same criterion. Grown weights are zero, so the test right after the update measures the
  effect of the drop choice; growth only differs between candidates through which weights were
  dropped (and the draw, for random growth). C = 1 is plain RigL with no test. Candidates are
  not trained before the test (a short probe training per candidate would cost C× more).

The dense gradient (w.r.t. the effective weights θ ⊙ m, so pruned weights get one too) comes
from the same backward pass as the masked update: the parameters are already zero where
pruned, so the forward pass needs no mask and the optimizer masks the gradient as usual.
``extras``: ``grad_ema`` (the gradient moving average, mask-shaped) and ``updates`` (int32
count of mask updates done), so a resumed run continues exactly.

Config keys and defaults: ``safecompress.epochs`` (dense_epochs + retrain_epochs), ``safecompress.distribution`` ("erk"),
``safecompress.init`` ("random"), ``safecompress.interval`` (steps per epoch), ``safecompress.drop_fraction`` (0.3),
``safecompress.end_fraction`` (0.75), ``safecompress.growth`` ("gradient"), ``safecompress.momentum`` (0.9),
``safecompress.candidates`` (3), ``safecompress.fairness_metric`` ("cwv" or "mcd", default "cwv"),
``safecompress.acc_budget`` (0.02, absolute accuracy).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from optax import tree_utils as otu

from ballot_jax import loop, masks, train
from ballot_jax.methods import Method, common, register

SC_TAG = 20  # data order and rng tag
DISTRIBUTIONS = ("erk", "uniform")
INITS = ("random", "magnitude")
GROWTHS = ("gradient", "momentum", "random")
METRICS = ("cwv", "mcd")




def settings(ctx: loop.Context) -> dict[str, Any]:
    """The resolved SafeCompress options, validated."""
    c = ctx.config.safecompress
    s = {
        "epochs": int(common.unless_none(c.epochs, common.total_epochs(ctx))),
        "distribution": str(c.distribution),
        "init": str(c.init),
        "interval": int(c.interval or 0) or None,
        "drop_fraction": float(c.drop_fraction),
        "end_fraction": float(c.end_fraction),
        "growth": str(c.growth),
        "momentum": float(c.momentum),
        "candidates": int(c.candidates),
        "metric": str(c.fairness_metric),
        "acc_budget": float(c.acc_budget),
    }
    for key, valid in (("distribution", DISTRIBUTIONS), ("init", INITS), ("growth", GROWTHS), ("metric", METRICS)):
        if s[key] not in valid:
            raise ValueError(f"unknown safecompress.{key if key != 'metric' else 'fairness_metric'} {s[key]!r}; valid: {list(valid)}")
    if s["epochs"] < 1:
        raise ValueError("safecompress.epochs must be at least 1")
    if s["candidates"] < 1:
        raise ValueError("safecompress.candidates must be at least 1")
    if not 0.0 <= s["drop_fraction"] <= 1.0:
        raise ValueError("safecompress.drop_fraction must be in [0, 1]")
    if not 0.0 <= s["end_fraction"] <= 1.0:
        raise ValueError("safecompress.end_fraction must be in [0, 1]")
    if s["acc_budget"] < 0:
        raise ValueError("safecompress.acc_budget must be >= 0")
    return s


# ---------------------------------------------------------------------------------------------
# Pure pieces: schedule, candidate selection, drop/grow
# ---------------------------------------------------------------------------------------------


def drop_fraction(step: int, total_steps: int, initial: float, end_fraction: float) -> float:
    """Cosine-decayed drop fraction at ``step``; 0 once updates have stopped."""
    end = end_fraction * total_steps
    if step >= end or end <= 0:
        return 0.0
    return 0.5 * initial * (1.0 + math.cos(math.pi * step / end))


def update_steps(total_steps: int, interval: int, end_fraction: float) -> list[int]:
    """The steps t (counted after the step) at which the mask is updated."""
    end = end_fraction * total_steps
    return [t for t in range(interval, total_steps + 1, interval) if t < end]


def select_candidate(candidates: Sequence[Mapping[str, Any]], metric: str = "cwv", acc_budget: float = 0.02) -> int:
    """Index of the candidate passing the fairness test best.

    Each candidate is a metrics mapping with ``accuracy`` and ``metric``. Eligible: accuracy
    ≥ (best accuracy − ``acc_budget``). Among those the lowest ``metric`` wins (NaN counts as
    +inf); ties go to the higher accuracy, then to the lower index.
    """
    if not candidates:
        raise ValueError("no candidates to select from")
    accs = [float(c["accuracy"]) for c in candidates]
    best = max(accs)
    eligible = [i for i, a in enumerate(accs) if a >= best - acc_budget - 1e-12]

    def key(i):
        v = float(candidates[i][metric])
        return (math.inf if math.isnan(v) else v, -accs[i], i)

    return min(eligible, key=key)


def propose(params, mask, grow_scores, quotas, fraction, drop_noise, candidate):
    """One candidate mask update (pure, jittable; every argument may be traced).

    ``grow_scores``: mask-shaped growth priorities (|gradient|, |momentum| or random);
    ``drop_noise``: mask-shaped uniforms in [0, 1) choosing the drop set of a randomised
    candidate (``candidate`` ≥ 1; candidate 0 drops the smallest magnitudes and ignores it).
    Returns ``(new_mask, survivors)``: ``survivors`` are the active weights that were not
    dropped (their values and optimizer buffers are kept); ``new_mask`` adds the grown ones.
    Every layer keeps exactly its quota.
    """
    n_drop = jax.tree.map(lambda q: jnp.floor(fraction * q).astype(jnp.int32), quotas)
    keep = jax.tree.map(jnp.subtract, quotas, n_drop)
    pool = jax.tree.map(lambda q, n: jnp.minimum(2 * n, q), quotas, n_drop)
    mag = masks.magnitude_scores(params, mask)
    big = masks.topk_per_layer(mag, jax.tree.map(jnp.subtract, quotas, pool))

    def drop_score(m, s, b, u):
        randomized = jnp.where(b, 2.0, jnp.where(m, u, -jnp.inf))
        return jnp.where(candidate == 0, s, randomized)

    survivors = masks.topk_per_layer(masks.map_prunable(drop_score, mask, mag, big, drop_noise), keep)

    def grow_score(a, g):
        g = jnp.nan_to_num(jnp.abs(g), nan=0.0, posinf=jnp.finfo(jnp.float32).max)
        return jnp.where(a, -jnp.inf, g)

    grown = masks.topk_per_layer(masks.map_prunable(grow_score, survivors, grow_scores), n_drop)
    new_mask = masks.map_prunable(jnp.logical_or, survivors, grown)
    return new_mask, survivors


propose_jit = jax.jit(propose)


def make_sparse_step(apply_fn, tx):
    """Jitted ``step(ts, batch, lr, ema, beta) -> (ts, metrics, dense_grads, ema)``.

    The masked update is the one of :func:`ballot_jax.train.make_train_step`; the gradient is
    taken w.r.t. the effective weights, so it is also defined on pruned positions (RigL growth).
    """

    def step(ts: train.TrainState, batch, lr, ema, beta):
        w = train.batch_weights(batch)

        def loss_fn(params):
            # Pruned params are exactly 0, so the unmasked forward equals the masked one.
            logits, stats = train.forward(apply_fn, params, ts.batch_stats, masks.none_like(params), batch["image"], True)
            losses = train.example_losses(logits, batch["label"])
            return jnp.sum(losses * w) / jnp.maximum(jnp.sum(w), 1.0), (losses, logits, stats)

        grads, (losses, logits, stats) = jax.grad(loss_fn, has_aux=True)(ts.params)
        params, opt_state = train.masked_update(tx, ts, grads, lr)
        dense = masks.map_prunable(lambda m, g: g, ts.mask, grads)
        ema = masks.map_prunable(lambda m, e, g: beta * e + (1.0 - beta) * g, ts.mask, ema, grads)
        new = ts.replace(step=ts.step + 1, params=params, batch_stats=stats, opt_state=opt_state)
        return new, train.train_metrics(losses, logits, batch, ts.step), dense, ema

    return jax.jit(step, donate_argnums=(0,))


def _make_commit(tx):
    """Jitted ``commit(ts, new_mask, survivors) -> ts``: dropped/grown weights and buffers zeroed."""

    def commit(ts: train.TrainState, new_mask, survivors):
        keep = jax.tree.map(lambda m, p: jnp.ones((), jnp.bool_) if m is None else m, survivors, ts.params,
                            is_leaf=lambda x: x is None)
        opt_state = otu.tree_map_params(tx, lambda x, k: jnp.where(k, x, jnp.zeros_like(x)), ts.opt_state, keep)
        return ts.replace(mask=new_mask, params=masks.apply_mask(ts.params, survivors), opt_state=opt_state)

    return jax.jit(commit)


# ---------------------------------------------------------------------------------------------
# Method
# ---------------------------------------------------------------------------------------------


def initial_mask(ctx: loop.Context, params: Any, dense_mask: masks.Mask, s: Mapping[str, Any]) -> masks.Mask:
    """The starting sparse mask at the target density (exact per-layer quotas)."""
    density = common.target_density(ctx)
    quotas = masks.distribution_quotas(dense_mask, density, s["distribution"])[1]
    if s["init"] == "magnitude":
        return masks.topk_per_layer(masks.magnitude_scores(params, dense_mask), quotas)
    return masks.random_mask(dense_mask, quotas, (ctx.seed, SC_TAG))


def _initial_state(ctx: loop.Context, state0: loop.RunState) -> loop.RunState:
    s = settings(ctx)
    ts0 = state0.train
    mask = initial_mask(ctx, state0.rewind_params, ts0.mask, s)
    ts = loop.fresh_train_state(ctx, state0.rewind_params, state0.rewind_batch_stats, mask)
    extras = {
        "grad_ema": masks.map_prunable(lambda m, p: jnp.zeros(jnp.shape(p), jnp.float32), mask, ts.params),
        "updates": jnp.zeros((), jnp.int32),
    }
    state = state0.replace(train=ts, extras=extras)
    # Arrays made here join the device mesh of a data-parallel run like every other state.
    return ctx.replicate(state) if hasattr(ctx, "replicate") else state


def _int_quotas(mask: masks.Mask) -> Any:
    return masks.map_prunable(lambda m, q: jnp.asarray(q, jnp.int32), mask, masks.quotas_of(mask))


def _mask_update(c: loop.Context, ts: train.TrainState, grow_source: Any, quotas: Any, t: int, frac: float,
                 s: Mapping[str, Any]) -> tuple[train.TrainState, dict[str, Any]]:
    prop = propose_jit
    commit = c.cached("safecompress_commit", lambda: _make_commit(c.tx))
    proposals, tested = [], []
    for i in range(s["candidates"]):
        noise = masks.uniform_scores(ts.mask, (c.seed, SC_TAG, t, i, 0))
        grow = masks.uniform_scores(ts.mask, (c.seed, SC_TAG, t, i, 1)) if s["growth"] == "random" else grow_source
        new_mask, survivors = prop(ts.params, ts.mask, grow, quotas, jnp.float32(frac), noise, jnp.int32(i))
        proposals.append((new_mask, survivors))
        if s["candidates"] > 1:
            cand = ts.replace(mask=new_mask, params=masks.apply_mask(ts.params, survivors))
            m = loop.evaluate(c, cand, "val")
            tested.append({"accuracy": m["accuracy"], "cwv": m["cwv"], "mcd": m["mcd"]})
    chosen = select_candidate(tested, s["metric"], s["acc_budget"]) if tested else 0
    new_mask, survivors = proposals[chosen]
    record = {"step": t, "drop_fraction": frac, "chosen": chosen, "candidates": tested}
    return commit(ts, new_mask, survivors), record


def _stages(ctx: loop.Context) -> list[loop.Stage]:
    s = settings(ctx)
    epochs = s["epochs"]
    spe = ctx.steps_per_epoch
    total = epochs * spe
    interval = s["interval"] or spe
    due = set(update_steps(total, interval, s["end_fraction"]))

    def epoch(c: loop.Context, state: loop.RunState, e: int):
        step = c.cached("safecompress_step", lambda: make_sparse_step(c.apply_fn, c.tx))
        quotas = _int_quotas(state.train.mask)
        hold = {"ema": state.extras["grad_ema"], "t": e * spe, "records": []}
        beta = jnp.float32(s["momentum"])

        def step_fn(ts, batch, lr):
            ts, metrics, grads, ema = step(ts, batch, lr, hold["ema"], beta)
            hold["ema"] = ema
            hold["t"] += 1
            t = hold["t"]
            if t in due:
                frac = drop_fraction(t, total, s["drop_fraction"], s["end_fraction"])
                source = hold["ema"] if s["growth"] == "momentum" else grads
                ts, rec = _mask_update(c, ts, source, quotas, t, frac, s)
                hold["records"].append(rec)
            return ts, metrics

        ts, info, _ = loop.train_epoch(c, state.train, stage="sparse_training", stage_tag=SC_TAG, epoch=e,
                                       epochs=epochs, step_fn=step_fn)
        updates = state.extras["updates"] + len(hold["records"])
        state = state.replace(train=ts, extras=dict(state.extras, grad_ema=hold["ema"], updates=updates))
        if hold["records"]:
            info["mask_updates"] = hold["records"]
        return state, info

    def end(c: loop.Context, state: loop.RunState):
        return state, {"val": loop.evaluate(c, state.train, "val"), "mask": masks.sparsity(state.train.mask),
                       "mask_updates": int(state.extras["updates"])}

    return [loop.Stage("sparse_training", epochs=epochs, epoch=epoch, end=end)]


METHOD = register(
    Method(
        name="safecompress",
        description="SafeCompress (fairness test): dynamic sparse training from θ0, candidate masks chosen by val CWV/MCD",
        from_dense=False,
        initial_state=_initial_state,
        stages=_stages,
    )
)
