"""FairScratch (Fair Scratch Tickets, Tang et al., CVPR 2023): a fair mask over frozen random weights.

No weight is ever trained. Every prunable kernel W_l is frozen at a random initialisation and a
real-valued score tensor S_l of the same shape is learned; the forward pass uses

    W_l ⊙ m_l,   m_l = top-k_l(|S_l|)   (exactly k_l weights of layer l kept),

and the backward pass treats the top-k as the identity (straight-through estimator, as in
edge-popup): ∂L/∂S_l = ∂L/∂(W_l ⊙ m_l) ⊙ W_l ⊙ sign(S_l), so unselected weights receive a
score gradient and can enter the mask. The loss is

    L = CE + λ · fairness surrogate   (λ = ``fairscratch.fairness_weight``, default 1.0)

with the surrogate chosen by ``fairscratch.surrogate`` (see :func:`fairness_surrogate`):

* ``"loss_variance"``: variance over the batch's groups of the mean per-group cross-entropy —
  the class-wise surrogate when groups are the classes (the paper's setting);
* ``"dp"`` (demographic parity): for every class c, the variance over groups of the mean
  predicted probability of c, averaged over classes (for two classes: the variance of the
  mean positive probability);
* ``"eo"`` (equal opportunity): for every class c, the variance over groups of the mean
  predicted probability of c among the examples labelled c (soft true-positive rate); for two
  classes only the positive class 1, otherwise averaged over classes;
* ``"auto"`` (default): ``loss_variance`` when the task's groups are the classes
  (``task.info["groups"] == "classes"``), ``dp`` otherwise.

Groups absent from a batch are left out of the variance.

Decisions (REFERENCE §4 leaves them open):

* Frozen weights (``fairscratch.init``): ``"kaiming_normal"`` (default; fresh N(0, 2/fan_in) draws,
  NumPy seeded by the run's seed, edge-popup's setting, independent of the model's own
  initialiser), ``"model"`` (θ0 exactly as the model initialised it), ``"signed_constant"``
  (sign(θ0) · sqrt(2/fan_in), edge-popup's best), ``"scaled_signed_constant"`` (the same
  divided by sqrt(density_l)). Only prunable kernels are replaced; fan_in = Π shape[:-1] (Flax layout).
  The frozen weights are stored (unmasked) as the run's ``rewind_params``.
* Everything but the scores stays frozen: biases, batch-norm scale/offset and any layer kept
  dense (``keep_stem``/``keep_head``) keep their θ0 values. Batch-norm *running statistics*
  are updated (training-mode forward), as in edge-popup.
* Per-layer quotas k_l: ``fairscratch.distribution`` = ``"uniform"`` (default; the same density in every
  layer, edge-popup's choice; there is no dense run to borrow the magnitude ticket's
  allocation from) or ``"erk"``; rounded so that Σ_l k_l = round(d · N) exactly.
* Scores start as U(−1/sqrt(fan_in), 1/sqrt(fan_in)) (edge-popup's Kaiming-uniform; a NumPy
  draw seeded by the run's seed) and are optimised with optax: ``fairscratch.optimizer`` ("sgd"),
  ``fairscratch.learning_rate`` (the run's ``learning_rate``), ``fairscratch.momentum`` (the run's momentum),
  ``fairscratch.weight_decay`` (the run's weight decay), ``fairscratch.schedule`` (the run's schedule) over the
  whole run.
* Budget: ``fairscratch.epochs``, default ``dense_epochs + retrain_epochs`` — the same number of training steps
  as the methods that train dense first and then retrain (no weight training follows).

The run state: ``train.params`` = W ⊙ m (bit-identical to W on kept positions), ``train.mask``
= top-k_l(|S|) (always in sync with the scores), ``train.opt_state`` = the score optimizer's
state, ``extras["scores"]`` = S (mask-shaped, ``None`` off the prunable kernels). The final
mask is the top-k_l of the final scores.

Config keys and defaults: ``fairscratch.epochs`` (dense_epochs + retrain_epochs), ``fairscratch.init`` ("kaiming_normal"),
``fairscratch.fairness_weight`` (1.0), ``fairscratch.surrogate`` ("auto"), ``fairscratch.distribution`` ("uniform"),
``fairscratch.optimizer`` ("sgd"), ``fairscratch.learning_rate`` / ``fairscratch.momentum`` / ``fairscratch.weight_decay`` /
``fairscratch.schedule`` (the run's ``learning_rate`` / ``momentum`` / ``weight_decay`` / ``schedule``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ballot_jax import loop, masks, train
from ballot_jax.methods import Method, common, register

FS_TAG = 21  # data order and rng tag
INITS = ("model", "kaiming_normal", "signed_constant", "scaled_signed_constant")
SURROGATES = ("auto", "loss_variance", "dp", "eo")
DISTRIBUTIONS = ("uniform", "erk")




def settings(ctx: loop.Context) -> dict[str, Any]:
    """The resolved FairScratch options, validated (``surrogate`` resolved from ``auto``)."""
    c = ctx.config.fairscratch
    s = {
        "epochs": int(common.unless_none(c.epochs, common.total_epochs(ctx))),
        "init": str(c.init),
        "lambda": float(c.fairness_weight),
        "surrogate": str(c.surrogate),
        "distribution": str(c.distribution),
        "optimizer": str(c.optimizer),
        "lr": float(common.unless_none(c.learning_rate, ctx.opt.learning_rate)),
        "momentum": float(common.unless_none(c.momentum, ctx.opt.momentum)),
        "weight_decay": float(common.unless_none(c.weight_decay, ctx.opt.weight_decay)),
        "schedule": str(common.unless_none(c.schedule, ctx.opt.schedule)),
    }
    for key, valid in (("init", INITS), ("surrogate", SURROGATES), ("distribution", DISTRIBUTIONS)):
        if s[key] not in valid:
            raise ValueError(f"unknown fairscratch.{key} {s[key]!r}; valid: {list(valid)}")
    if s["epochs"] < 1:
        raise ValueError("fairscratch.epochs must be at least 1")
    if s["lambda"] < 0:
        raise ValueError("fairscratch.fairness_weight must be >= 0")
    if s["surrogate"] == "auto":
        info = getattr(ctx.task, "info", None) or {}
        s["surrogate"] = "loss_variance" if info.get("groups") == "classes" else "dp"
    return s


# ---------------------------------------------------------------------------------------------
# Fairness surrogates
# ---------------------------------------------------------------------------------------------


def _masked_variance(values: jax.Array, present: jax.Array, axis: int = 0) -> jax.Array:
    """Population variance of ``values`` over the entries where ``present`` (0 if none)."""
    p = present.astype(values.dtype)
    n = jnp.maximum(jnp.sum(p, axis=axis, keepdims=True), 1.0)
    mean = jnp.sum(values * p, axis=axis, keepdims=True) / n
    return jnp.squeeze(jnp.sum(p * (values - mean) ** 2, axis=axis, keepdims=True) / n, axis)


def fairness_surrogate(losses: jax.Array, logits: jax.Array, labels: jax.Array, groups: jax.Array,
                       weights: jax.Array, num_groups: int, kind: str) -> jax.Array:
    """A differentiable batch fairness penalty (see the module docstring); 0 for a single group."""
    gw = jax.nn.one_hot(groups, num_groups, dtype=jnp.float32) * weights[:, None]  # [B, G]
    n_g = jnp.sum(gw, axis=0)
    if kind == "loss_variance":
        mean_loss = jnp.sum(gw * losses[:, None], axis=0) / jnp.maximum(n_g, 1.0)
        return _masked_variance(mean_loss, n_g > 0)
    probs = jax.nn.softmax(logits, axis=-1)  # [B, C]
    num_classes = probs.shape[-1]
    if kind == "dp":
        rate = gw.T @ probs / jnp.maximum(n_g, 1.0)[:, None]  # [G, C]
        present = jnp.broadcast_to((n_g > 0)[:, None], rate.shape)
        return jnp.mean(_masked_variance(rate, present, axis=0))
    if kind == "eo":
        y = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
        den = gw.T @ y  # [G, C]
        rate = (gw.T @ (y * probs)) / jnp.maximum(den, 1.0)
        per_class = _masked_variance(rate, den > 0, axis=0)
        return per_class[1] if num_classes == 2 else jnp.mean(per_class)
    raise ValueError(f"unknown fairness surrogate {kind!r}; valid: {list(SURROGATES[1:])}")


# ---------------------------------------------------------------------------------------------
# Scores, frozen weights and the score train step
# ---------------------------------------------------------------------------------------------


def _fan_in(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape[:-1])) if len(shape) > 1 else int(shape[0])


def frozen_weights(ctx: loop.Context, params: Any, mask: masks.Mask, kind: str, densities: Any) -> Any:
    """The weights kept frozen for the run (only prunable kernels differ from ``params``)."""
    if kind == "model":
        return train.copy_tree(params)
    rng = np.random.default_rng([int(ctx.seed) & 0xFFFFFFFF, FS_TAG, 0])

    def replace(m, p, d):
        std = math.sqrt(2.0 / _fan_in(p.shape))
        if kind == "kaiming_normal":
            return jnp.asarray(std * rng.standard_normal(np.shape(p)), p.dtype)
        sign = jnp.where(p >= 0, 1.0, -1.0)
        scale = std / math.sqrt(max(float(d), 1e-12)) if kind == "scaled_signed_constant" else std
        return (sign * scale).astype(p.dtype)

    new = masks.map_prunable(replace, mask, params, densities)
    return jax.tree.map(lambda m, p, n: p if m is None else n, mask, params, new, is_leaf=lambda x: x is None)


def initial_scores(mask: masks.Mask, seed_words) -> Any:
    """Scores ~ U(−1/sqrt(fan_in), 1/sqrt(fan_in)) on prunable kernels, ``None`` elsewhere."""
    u = masks.uniform_scores(mask, seed_words)
    return masks.map_prunable(lambda m, x: (2.0 * x - 1.0) / math.sqrt(_fan_in(m.shape)), mask, u)


def score_optimizer(ctx: loop.Context, s: Mapping[str, Any]):
    """(optax transformation with injected lr, per-step learning rates) of the scores."""
    cfg = dataclasses.replace(ctx.opt, optimizer=s["optimizer"], learning_rate=s["lr"], momentum=s["momentum"],
                              weight_decay=s["weight_decay"], schedule=s["schedule"])
    steps = s["epochs"] * ctx.steps_per_epoch
    return train.make_optimizer(cfg), train.learning_rates(train.make_schedule(cfg, steps), steps)


def score_mask(scores: Any, quotas: Any) -> masks.Mask:
    """m_l = top-k_l(|S_l|)."""
    return masks.topk_per_layer(jax.tree.map(jnp.abs, scores), quotas)


def make_score_step(apply_fn, tx, num_groups: int, kind: str, lam: float):
    """Jitted ``step(ts, scores, weights, batch, lr, quotas) -> (ts, scores, metrics, extra)``.

    ``weights`` are the frozen (unmasked) parameters; ``ts.mask`` must be top-k(|scores|).
    """

    def step(ts: train.TrainState, scores, weights, batch, lr, quotas):
        w = train.batch_weights(batch)

        def loss_fn(sc):
            a = jax.tree.map(jnp.abs, sc)
            # Value W ⊙ m exactly; gradient ∂L/∂a = ∂L/∂w_eff ⊙ W (straight-through top-k).
            eff = jax.tree.map(
                lambda m, p, x: p if m is None else jnp.where(m, p, jnp.zeros_like(p)) + p * (x - jax.lax.stop_gradient(x)),
                ts.mask, weights, a, is_leaf=lambda x: x is None,
            )
            logits, stats = train.forward(apply_fn, eff, ts.batch_stats, masks.none_like(eff), batch["image"], True)
            losses = train.example_losses(logits, batch["label"])
            ce = jnp.sum(losses * w) / jnp.maximum(jnp.sum(w), 1.0)
            fair = fairness_surrogate(losses, logits, batch["label"], batch["group"], w, num_groups, kind)
            return ce + lam * fair, (losses, logits, stats, fair)

        (total, (losses, logits, stats, fair)), grads = jax.value_and_grad(loss_fn, has_aux=True)(scores)
        updates, opt_state = tx.update(grads, train.with_learning_rate(ts.opt_state, lr), scores)
        scores = jax.tree.map(jnp.add, scores, updates)
        mask = score_mask(scores, quotas)
        params = masks.apply_mask(weights, mask)
        metrics = train.train_metrics(losses, logits, batch, ts.step)
        metrics["nonfinite"] = jnp.maximum(metrics["nonfinite"], (~jnp.isfinite(total)).astype(jnp.int32))
        new = ts.replace(step=ts.step + 1, params=params, batch_stats=stats, opt_state=opt_state, mask=mask)
        return new, scores, metrics, {"surrogate": fair, "steps": jnp.ones((), jnp.float32)}

    return jax.jit(step, donate_argnums=(0, 1))


# ---------------------------------------------------------------------------------------------
# Method
# ---------------------------------------------------------------------------------------------


def _cache_key(what: str, s: Mapping[str, Any]) -> str:
    # The compiled step and the optimizer depend on the settings: key the context cache by them.
    return f"fairscratch_{what}:{sorted(s.items())}"


def _quotas(ctx: loop.Context, dense_mask: masks.Mask, distribution: str) -> Any:
    density = common.target_density(ctx)
    return masks.distribution_quotas(dense_mask, density, distribution)


def _initial_state(ctx: loop.Context, state0: loop.RunState) -> loop.RunState:
    s = settings(ctx)
    dense_mask = state0.train.mask
    dens, quotas = _quotas(ctx, dense_mask, s["distribution"])
    weights = frozen_weights(ctx, state0.rewind_params, dense_mask, s["init"], dens)
    scores = initial_scores(dense_mask, (ctx.seed, FS_TAG, 1))
    mask = score_mask(scores, quotas)
    tx, _ = ctx.cached(_cache_key("optimizer", s), lambda: score_optimizer(ctx, s))
    ts = train.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=masks.apply_mask(weights, mask),
        batch_stats=train.copy_tree(state0.rewind_batch_stats),
        opt_state=tx.init(scores),
        mask=mask,
    )
    state = state0.replace(train=ts, rewind_params=weights, extras={"scores": scores})
    # Arrays made here join the device mesh of a data-parallel run like every other state.
    return ctx.replicate(state) if hasattr(ctx, "replicate") else state


def _stages(ctx: loop.Context) -> list[loop.Stage]:
    s = settings(ctx)
    epochs = s["epochs"]

    def epoch(c: loop.Context, state: loop.RunState, e: int):
        tx, lrs = c.cached(_cache_key("optimizer", s), lambda: score_optimizer(c, s))
        step = c.cached(_cache_key("step", s),
                        lambda: make_score_step(c.apply_fn, tx, c.task.num_groups, s["surrogate"], s["lambda"]))
        quotas = masks.map_prunable(lambda m, q: jnp.asarray(q, jnp.int32), state.train.mask,
                                    masks.quotas_of(state.train.mask))
        weights = state.rewind_params
        spe = c.steps_per_epoch
        hold = {"scores": train.copy_tree(state.extras["scores"]), "t": e * spe}

        def step_fn(ts, batch, _lr):
            lr = lrs[min(hold["t"], len(lrs) - 1)]
            ts, hold["scores"], metrics, extra = step(ts, hold["scores"], weights, batch, lr, quotas)
            hold["t"] += 1
            return ts, metrics, extra

        ts, info, extra = loop.train_epoch(c, state.train, stage="scores", stage_tag=FS_TAG, epoch=e, epochs=epochs,
                                           step_fn=step_fn)
        info["train_surrogate"] = float(extra["surrogate"]) / max(float(extra["steps"]), 1.0)
        info["surrogate"] = s["surrogate"]
        return state.replace(train=ts, extras=dict(state.extras, scores=hold["scores"])), info

    def end(c: loop.Context, state: loop.RunState):
        return state, {"val": loop.evaluate(c, state.train, "val"), "mask": masks.sparsity(state.train.mask),
                       "surrogate": s["surrogate"]}

    return [loop.Stage("scores", epochs=epochs, epoch=epoch, end=end)]


METHOD = register(
    Method(
        name="fairscratch",
        description="FairScratch: top-k score masks over frozen random weights, trained with CE + λ·fairness surrogate",
        from_dense=False,
        initial_state=_initial_state,
        stages=_stages,
    )
)
