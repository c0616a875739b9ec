"""Conflict detection: accuracy and fairness gradients, scores and votes (Ballot §3, step 2).

For a batch with group ids g(i) and per-example losses ℓ_i (cross-entropy):

* accuracy gradient  a = Σ_i ∇ℓ_i = Σ_g G_g,
* fairness gradient  f = Σ_i w_{g(i)} ∇ℓ_i = Σ_g w_g G_g,   w_g = 1 / max(acc_g, floor),

where G_g = Σ_{i∈g} ∇ℓ_i are the per-group gradient sums and acc_g the group's accuracy on the
held-out validation split. Both are linear combinations of the G_g, and so both are vector–
Jacobian products of the per-example loss vector: one ``jax.vjp`` of the forward pass, then the
two cotangents (w_i) and (w_i · w_{g(i)}) pulled back together. The cost is one forward and two
backward passes whatever the number of groups G (the group ids only change a gather).

Gradients are taken with respect to the *effective* weights θ ⊙ m, so a pruned weight still
has a gradient (how the loss would change if it came back): the vote can move a weight in or
out of the ticket. Both gradients share one forward pass, so they are taken at the same weights
in the same batch-norm mode (the prototype got this wrong).

Scores: every prunable kernel's gradients are normalised over the output axis (the last axis
of a Flax kernel) for each input position, â = a / ‖a‖_out, f̂ = f / ‖f‖_out, and
``s = |â + η f̂|`` (``score="abs"``, default) or ``s = â + η f̂`` (``score="signed"``). Where
accuracy and fairness pull a weight in opposite directions the terms cancel and the score is
small: that weight loses the vote.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ballot_jax import masks, train

PyTree = Any
SCORES = ("abs", "signed")


def group_weights(per_group_accuracy: Any, floor: float = 0.05) -> jax.Array:
    """Fairness weights w_g = 1 / max(acc_g, floor) (floats, never truncated to integers)."""
    acc = jnp.asarray(per_group_accuracy, jnp.float32)
    return 1.0 / jnp.maximum(acc, floor)


def _example_losses_fn(apply_fn, batch_stats, batch, train_mode: bool):
    def losses(effective_params):
        variables = {"params": effective_params}
        if batch_stats:
            variables["batch_stats"] = batch_stats
        if train_mode and batch_stats:
            logits, updated = apply_fn(variables, batch["image"], train=True, mutable=["batch_stats"])
            new_stats = updated["batch_stats"]
        else:
            logits, new_stats = apply_fn(variables, batch["image"], train=train_mode), batch_stats
        logits = logits.astype(jnp.float32)
        return train.example_losses(logits, batch["label"]), (logits, new_stats)

    return losses


def _pull_back_both(vjp_fn: Callable, batch: Mapping[str, jax.Array], weights_g: jax.Array) -> tuple[PyTree, PyTree]:
    """(a, f) = (Σ_i w_i ∇ℓ_i, Σ_i w_i·w_g(i) ∇ℓ_i): one forward's vjp, pulled back twice.

    Both cotangents share the forward residuals. They are pulled back one after the other, not
    with ``jax.vmap``: on XLA:CPU the vmapped backward pass cost 1.63× a training step against
    1.43× for two sequential ones, measured side by side (``benchmarks/vote_step.py``), with equal
    results up to float rounding.
    """
    w = train.batch_weights(batch)
    (a,) = vjp_fn(w)
    (f,) = vjp_fn(w * weights_g[batch["group"]])
    return a, f


def accuracy_fairness_gradients(
    apply_fn: Callable,
    params: PyTree,
    batch_stats: PyTree,
    mask: masks.Mask,
    batch: Mapping[str, jax.Array],
    weights_g: jax.Array,
    *,
    train_mode: bool = False,
) -> tuple[PyTree, PyTree]:
    """Sums (a, f) over a batch, w.r.t. the effective weights θ ⊙ m; one vjp, two cotangents."""
    effective = masks.apply_mask(params, mask)
    losses, vjp_fn, _ = jax.vjp(_example_losses_fn(apply_fn, batch_stats, batch, train_mode), effective, has_aux=True)
    return _pull_back_both(vjp_fn, batch, weights_g)


def per_group_gradient_sums(
    apply_fn: Callable,
    params: PyTree,
    batch_stats: PyTree,
    mask: masks.Mask,
    batch: Mapping[str, jax.Array],
    num_groups: int,
) -> PyTree:
    """The G_g themselves (leading axis G). Costs G backward passes: for diagnostics only."""
    effective = masks.apply_mask(params, mask)
    _, vjp_fn, _ = jax.vjp(_example_losses_fn(apply_fn, batch_stats, batch, False), effective, has_aux=True)
    w = train.batch_weights(batch)
    onehot = jax.nn.one_hot(batch["group"], num_groups, dtype=jnp.float32).T * w[None]
    (per_group,) = jax.vmap(vjp_fn)(onehot)
    return per_group


def make_gradient_pass(apply_fn: Callable) -> Callable:
    """Jitted ``(params, batch_stats, mask, batch, weights_g, acc) -> acc`` adding (a, f) sums.

    ``acc`` is ``{"a": tree, "f": tree}`` shaped like the mask (``None`` where not prunable),
    accumulated on device over the vote batches (eval-mode batch norm).
    """

    def step(params, batch_stats, mask, batch, weights_g, acc):
        a, f = accuracy_fairness_gradients(apply_fn, params, batch_stats, mask, batch, weights_g)
        return {
            "a": masks.map_prunable(lambda m, s, g: s + g, mask, acc["a"], a),
            "f": masks.map_prunable(lambda m, s, g: s + g, mask, acc["f"], f),
        }

    return jax.jit(step, donate_argnums=(5,))


def make_voting_train_step(apply_fn: Callable, tx) -> Callable:
    """A jitted train step that also returns the step's (a, f) sums, from one vjp.

    ``step(state, batch, lr, weights_g) -> (state, metrics, {"a", "f"})``. The update uses the
    accuracy gradient (mean cross-entropy, masked) exactly as :func:`train.make_train_step`
    does; the fairness cotangent rides along in the same backward structure, so votes need no
    extra pass over the data. Train-mode batch norm, as in training.
    """

    def step(state: train.TrainState, batch, lr, weights_g):
        effective = masks.apply_mask(state.params, state.mask)
        losses, vjp_fn, (logits, new_stats) = jax.vjp(
            _example_losses_fn(apply_fn, state.batch_stats, batch, True), effective, has_aux=True
        )
        a, f = _pull_back_both(vjp_fn, batch, weights_g)
        n = jnp.maximum(jnp.sum(train.batch_weights(batch)), 1.0)
        grads = jax.tree.map(lambda g: g / n, a)
        params, opt_state = train.masked_update(tx, state, grads, lr)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_stats, opt_state=opt_state)
        sums = {"a": masks.map_prunable(lambda m, g: g, state.mask, a), "f": masks.map_prunable(lambda m, g: g, state.mask, f)}
        return new_state, train.train_metrics(losses, logits, batch, state.step), sums

    return jax.jit(step, donate_argnums=(0,))


def zeros_like_mask(mask: masks.Mask, params: PyTree, dtype=jnp.float32) -> PyTree:
    """Zero arrays on prunable leaves (shaped and placed like the params), ``None`` elsewhere."""
    return masks.map_prunable(lambda m, p: jnp.zeros_like(p, dtype), mask, params)


def normalize_output_axis(g: jax.Array, eps: float = 1e-12) -> jax.Array:
    """g / ‖g‖ over the last (output) axis, for each input position of a kernel."""
    norm = jnp.sqrt(jnp.sum(jnp.square(g), axis=-1, keepdims=True))
    return g / jnp.maximum(norm, eps)


def scores(a: PyTree, f: PyTree, mask: masks.Mask, eta: float = 1.0, score: str = "abs") -> PyTree:
    """Per-weight conflict scores s = |â + η f̂| (or signed) on prunable leaves."""
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; valid: {list(SCORES)}")

    def one(m, ga, gf):
        s = normalize_output_axis(ga) + eta * normalize_output_axis(gf)
        return jnp.abs(s) if score == "abs" else s

    return masks.map_prunable(one, mask, a, f)


def cast_votes(votes: PyTree, score_sum: PyTree, s: PyTree, quotas: PyTree) -> tuple[PyTree, PyTree]:
    """One vote round: each layer l votes for its top k_l scores; counts and score sums grow."""
    winners = masks.topk_per_layer(s, quotas)
    votes = masks.map_prunable(lambda w, v: v + w.astype(v.dtype), winners, votes)
    score_sum = masks.map_prunable(lambda w, t, x: t + x, winners, score_sum, s)
    return votes, score_sum


def mask_from_votes(votes: PyTree, score_sum: PyTree, quotas: PyTree) -> masks.Mask:
    """Keeps the k_l weights with most votes per layer; ties broken by summed score, then position."""
    as_float = masks.map_prunable(lambda q, v: v.astype(jnp.float32), quotas, votes)
    return masks.topk_per_layer(as_float, quotas, score_sum)


def conflict_diagnostics(a: PyTree, f: PyTree, mask: masks.Mask) -> dict[str, dict[str, float]]:
    """Per layer: fraction of weights whose a and f disagree in sign, and cos(a, f)."""
    names = masks.layer_names(mask)
    out = {}
    for name, ga, gf in zip(names, masks.prunable_leaves(a, mask), masks.prunable_leaves(f, mask)):
        ga, gf = np.asarray(ga, np.float64).ravel(), np.asarray(gf, np.float64).ravel()
        both = (ga != 0) & (gf != 0)
        disagree = float(np.mean(np.sign(ga[both]) != np.sign(gf[both]))) if both.any() else 0.0
        denom = np.linalg.norm(ga) * np.linalg.norm(gf)
        out[name] = {"sign_disagreement": disagree, "cosine_a_f": float(ga @ gf / denom) if denom > 0 else 0.0}
    return out


def group_cosine_matrix(per_group: PyTree, mask: masks.Mask) -> list[list[float]]:
    """Cosine similarity between the per-group gradient sums (all prunable layers together)."""
    flat = np.concatenate(
        [np.asarray(x, np.float64).reshape(np.shape(x)[0], -1) for x in masks.prunable_leaves(per_group, mask)], axis=1
    )
    norms = np.linalg.norm(flat, axis=1)
    norms[norms == 0] = 1.0
    unit = flat / norms[:, None]
    return (unit @ unit.T).round(6).tolist()
