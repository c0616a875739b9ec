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

Scores are pluggable **selection criteria** (:data:`CRITERIA`, :func:`get_criterion`): each is
a small function of one vote round's :class:`RoundInputs` (the round's weights, the summed
accuracy and fairness gradients, optionally their per-batch squares or the per-group sums, the
per-layer quotas) returning a per-weight score; the vote, its accumulation and the mask from the
votes are shared (:func:`cast_votes`, :func:`mask_from_votes`). The criteria:

* ``gradient`` — the paper's score |â + η f̂| (``score="signed"``: â + η f̂), gradients
  normalised over the output axis for each input position; over the whole layer when the output
  axis has at most two units (on a two-class head the two columns' gradients are exact negatives
  and per-row normalisation makes every score 0 or √2);
* ``taylor`` — Fisher importance of removing each weight for each objective,
  T = θ² · Σ_b g_b² (per vote batch b), normalised by its layer mean, combined as Ballot combines
  gradients: s = |σ_a T̂_a + η σ_f T̂_f| with σ = sign(−θ·g) the first-order direction in which
  removal moves each loss, so a weight whose removal would raise one loss and lower the other
  (a conflict) has its two terms cancel;
* ``magnitude_veto`` — the magnitude ranking of the trained weights θ_T, with only a band of
  ±``band``·k_l ranks around each layer's cut-off re-ranked: inside it, weights whose accuracy and
  fairness gradients disagree in sign lose to those that agree;
* ``group_balanced`` — FairGRAPE's idea: per-group importance (θ · G_g)², and each layer filled
  (in chunks, greedily) so that the group with the lowest share of its importance kept gets the
  next weights; needs the per-group sums (G backward pulls: the one criterion whose cost grows
  with the number of groups);
* ``prototype`` — the authors' code literally: signed â + η f̂ with per-row normalisation, a vote
  on the classifier only, every other layer dense (its overall sparsity is far below the target,
  and it is reported as such, never as a matched comparison).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import dataclasses

import flax
import jax
import jax.numpy as jnp
import numpy as np

from ballot_jax import masks, train

PyTree = Any
SCORES = ("abs", "signed")


def group_weights(per_group_accuracy: Any, floor: float = 0.05) -> jax.Array:
    """Fairness weights w_g = 1 / max(acc_g, floor) (floats, never truncated to integers)."""
    if isinstance(per_group_accuracy, jax.core.Tracer):
        return 1.0 / jnp.maximum(jnp.asarray(per_group_accuracy, jnp.float32), floor)
    # on the host (the per-group accuracies are host floats): the same IEEE float32 arithmetic
    acc = np.asarray(per_group_accuracy, np.float32)
    return jax.device_put(np.float32(1.0) / np.maximum(acc, np.float32(floor)))


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


def make_gradient_pass(apply_fn: Callable, *, squares: bool = False, num_groups: int = 0) -> Callable:
    """Jitted ``(params, batch_stats, mask, batch, weights_g, acc) -> acc`` adding one batch's sums.

    ``acc`` holds ``"a"`` and ``"f"`` (trees shaped like the mask, ``None`` where not prunable),
    accumulated on device over the vote batches (eval-mode batch norm). With ``squares`` it also
    holds ``"a_sq"`` / ``"f_sq"``, the sums of the per-batch squared gradients (the empirical
    Fisher of :func:`taylor_scores`); with ``num_groups`` > 0, ``"per_group"``, the per-group
    gradient sums G_g (leading axis G; costs G backward pulls, for ``group_balanced``).
    """

    def step(params, batch_stats, mask, batch, weights_g, acc):
        a, f = accuracy_fairness_gradients(apply_fn, params, batch_stats, mask, batch, weights_g)
        add = lambda name, new: masks.map_prunable(lambda m, t, g: t + g, mask, acc[name], new)  # noqa: E731
        out = {"a": add("a", a), "f": add("f", f)}
        if squares:
            out["a_sq"] = add("a_sq", masks.map_prunable(lambda m, g: g * g, mask, a))
            out["f_sq"] = add("f_sq", masks.map_prunable(lambda m, g: g * g, mask, f))
        if num_groups:
            out["per_group"] = add("per_group", per_group_gradient_sums(apply_fn, params, batch_stats, mask, batch,
                                                                        num_groups))
        return out

    return jax.jit(step, donate_argnums=(5,))


def gradient_sums_like(params: PyTree, mask: masks.Mask, *, squares: bool = False, num_groups: int = 0) -> dict:
    """Zero accumulators for :func:`make_gradient_pass` (the same keys it fills)."""
    acc = {"a": zeros_like_mask(mask, params), "f": zeros_like_mask(mask, params)}
    if squares:
        acc["a_sq"], acc["f_sq"] = zeros_like_mask(mask, params), zeros_like_mask(mask, params)
    if num_groups:
        acc["per_group"] = masks.map_prunable(lambda m, p: jnp.zeros((num_groups, *jnp.shape(p)), jnp.float32), mask,
                                              params)
    return acc


def make_voting_train_step(apply_fn: Callable, tx, *, squares: bool = False) -> Callable:
    """A jitted train step that also returns the step's (a, f) sums, from one vjp.

    ``step(state, batch, lr, weights_g) -> (state, metrics, {"a", "f"[, "a_sq", "f_sq"]})``. The
    update uses the accuracy gradient (mean cross-entropy, masked) exactly as
    :func:`train.make_train_step` does; the fairness cotangent rides along in the same backward
    structure, so votes need no extra pass over the data. Train-mode batch norm, as in training.
    With ``squares`` the step's squared gradients come too (the per-step empirical Fisher).
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
        if squares:
            sums["a_sq"] = masks.map_prunable(lambda m, g: g * g, state.mask, a)
            sums["f_sq"] = masks.map_prunable(lambda m, g: g * g, state.mask, f)
        return new_state, train.train_metrics(losses, logits, batch, state.step), sums

    return jax.jit(step, donate_argnums=(0,))


def zeros_like_mask(mask: masks.Mask, params: PyTree, dtype=jnp.float32) -> PyTree:
    """Zero arrays on prunable leaves (shaped and placed like the params), ``None`` elsewhere."""
    return masks.full_like_mask(mask, params, 0, dtype)


def normalize_output_axis(g: jax.Array, eps: float = 1e-12) -> jax.Array:
    """g / ‖g‖ over the last (output) axis, for each input position of a kernel."""
    norm = jnp.sqrt(jnp.sum(jnp.square(g), axis=-1, keepdims=True))
    return g / jnp.maximum(norm, eps)


def normalize_kernel(g: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Per-row normalisation (:func:`normalize_output_axis`), or over the whole layer when the
    output axis has at most 2 units, where per-row normalisation collapses every score to 0 or √2
    (the two columns of a two-class head's gradient are exact negatives of each other)."""
    if jnp.shape(g)[-1] <= 2:
        return g / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(g))), eps)
    return normalize_output_axis(g, eps)


def scores(a: PyTree, f: PyTree, mask: masks.Mask, eta: float = 1.0, score: str = "abs",
           normalize: Callable[[jax.Array], jax.Array] = normalize_kernel) -> PyTree:
    """Per-weight gradient scores s = |â + η f̂| (or signed) on prunable leaves (``gradient``)."""
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; valid: {list(SCORES)}")

    def one(m, ga, gf):
        s = normalize(ga) + eta * normalize(gf)
        return jnp.abs(s) if score == "abs" else s

    return masks.map_prunable(one, mask, a, f)


# ---------------------------------------------------------------------------------------------
# Selection criteria: one small function per criterion, one registry
# ---------------------------------------------------------------------------------------------


@flax.struct.dataclass
class RoundInputs:
    """What one vote round knows, all on prunable leaves (``None`` elsewhere).

    ``weights``: θ_r, the round's weights for weight × gradient criteria (the dense trajectory's
    current weights; on the masked-ticket trajectory the trained dense weights θ_T, since the
    ticket's pruned weights are zero). ``reference``: θ_T, whose magnitude ticket is the baseline.
    ``a`` / ``f``: summed accuracy / fairness gradients; ``a_sq`` / ``f_sq``: sums of per-batch
    squared gradients (or ``None``); ``per_group``: the G_g sums (leading axis G, or ``None``).
    ``mask``: the prunable structure; ``quotas``: k_l per layer.
    """

    weights: PyTree
    reference: PyTree
    a: PyTree
    f: PyTree
    mask: masks.Mask
    quotas: PyTree
    a_sq: PyTree = None
    f_sq: PyTree = None
    per_group: PyTree = None


@dataclasses.dataclass(frozen=True)
class Criterion:
    """A registered selection criterion: ``score(inputs, eta=..., **options) -> per-weight scores``.

    ``needs``: which optional :class:`RoundInputs` fields it reads (``"squares"``,
    ``"per_group"``); ``head_only``: it votes on the classifier only, every other layer dense;
    ``on_host``: the score is computed with NumPy (not jittable).
    """

    name: str
    score: Callable[..., PyTree]
    description: str
    needs: tuple[str, ...] = ()
    head_only: bool = False
    on_host: bool = False


CRITERIA: dict[str, Criterion] = {}


def register_criterion(criterion: Criterion) -> Criterion:
    """Adds a criterion to :data:`CRITERIA` (a name may be registered once)."""
    if criterion.name in CRITERIA:
        raise ValueError(f"criterion {criterion.name!r} is already registered")
    CRITERIA[criterion.name] = criterion
    return criterion


def get_criterion(name: str) -> Criterion:
    """The criterion called ``name``; an unknown name gets an error listing the valid ones."""
    try:
        return CRITERIA[name]
    except KeyError:
        raise ValueError(f"unknown criterion {name!r}; valid criteria: {', '.join(CRITERIA)}") from None


def _layer_mean_normalized(t: jax.Array, eps: float = 1e-30) -> jax.Array:
    return t / jnp.maximum(jnp.mean(t), eps)


def gradient_scores(r: RoundInputs, *, eta: float = 1.0, score: str = "abs", **_: Any) -> PyTree:
    """``gradient``: the paper's |â + η f̂| (binary heads normalised per layer)."""
    return scores(r.a, r.f, r.mask, eta, score)


def taylor_scores(r: RoundInputs, *, eta: float = 1.0, **_: Any) -> PyTree:
    """``taylor``: s = |σ_a T̂_a + η σ_f T̂_f|, T = θ² Σ_b g_b² over the layer mean, σ = sign(−θ g).

    Falls back to (θ·g)² when the per-batch squares are absent (one batch).
    """

    def one(m, w, ga, gf, sa, sf):
        ta, tf = jnp.square(w) * sa, jnp.square(w) * sf
        sign_a, sign_f = jnp.sign(-w * ga), jnp.sign(-w * gf)
        return jnp.abs(sign_a * _layer_mean_normalized(ta) + eta * sign_f * _layer_mean_normalized(tf))

    square = lambda t: masks.map_prunable(lambda m, g: g * g, r.mask, t)  # noqa: E731
    sq_a = r.a_sq if r.a_sq is not None else square(r.a)
    sq_f = r.f_sq if r.f_sq is not None else square(r.f)
    return masks.map_prunable(one, r.mask, r.weights, r.a, r.f, sq_a, sq_f)


def sign_conflict(a: jax.Array, f: jax.Array) -> jax.Array:
    """1 where the accuracy and fairness gradients pull a weight in opposite directions, else 0."""
    return (jnp.sign(a) * jnp.sign(f) < 0).astype(jnp.float32)


def magnitude_veto_scores(r: RoundInputs, *, band: float = 0.1, **_: Any) -> PyTree:
    """``magnitude_veto``: |θ_T| ranking; only ranks within ±``band``·k_l of the cut-off re-ranked.

    Scores: above the band 2 + m, inside it 1 + m without a sign conflict and m with one, below
    it m − 1, where m = |θ_T| / max|θ_T| ∈ [0, 1]. Top-k_l therefore keeps everything above the
    band, nothing below it, and fills the band's k_l − (k_l − w) places with the non-conflicting
    weights first (by magnitude), w = ceil(band · k_l).
    """

    def one(m, ref, ga, gf, k):
        mag = jnp.abs(ref).ravel()
        order = jnp.argsort(-mag, stable=True)
        rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.size, dtype=order.dtype))
        k = jnp.asarray(k)
        w = jnp.ceil(band * k).astype(rank.dtype)
        m01 = mag / jnp.maximum(jnp.max(mag), 1e-30)
        agree = 1.0 - sign_conflict(ga, gf).ravel()
        s = jnp.where(rank < k - w, 2.0 + m01, jnp.where(rank < k + w, agree + m01, m01 - 1.0))
        return s.reshape(jnp.shape(ref))

    return masks.map_prunable(one, r.mask, r.reference, r.a, r.f, r.quotas)


def group_balanced_scores(r: RoundInputs, *, chunks: int = 32, **_: Any) -> PyTree:
    """``group_balanced`` (FairGRAPE's idea): keep every group's share of importance balanced.

    Per group g and weight, importance I_g = (θ · G_g)², as a share P_g of the layer's total for
    g. The layer's k_l places are filled in ``chunks`` steps: each step gives the next
    ⌈k_l / chunks⌉ places to the group whose kept share Σ_kept P_g is lowest, taking its
    highest-share weights not yet kept. Returns 1 + max_g P_g on the chosen weights and max_g P_g
    elsewhere, so top-k_l of the scores is exactly the chosen set. Host-side (NumPy), once per round.
    """

    def one(m, w, pg, k):
        w = np.asarray(w, np.float64).ravel()
        imp = np.square(w[None] * np.asarray(pg, np.float64).reshape(pg.shape[0], -1))
        share = imp / np.maximum(imp.sum(axis=1, keepdims=True), 1e-300)
        k = int(k)
        kept = np.zeros(w.size, bool)
        step = max(1, -(-k // chunks))
        while kept.sum() < k:
            g = int(np.argmin((share * kept).sum(axis=1)))
            free = np.where(~kept)[0]
            n = min(step, k - int(kept.sum()), free.size)
            top = free[np.argsort(-share[g, free], kind="stable")[:n]]
            kept[top] = True
        best = share.max(axis=0)
        return jnp.asarray((best + kept).reshape(np.shape(m)), jnp.float32)

    return masks.map_prunable(one, r.mask, r.weights, r.per_group, r.quotas)


def prototype_scores(r: RoundInputs, *, eta: float = 1.0, **_: Any) -> PyTree:
    """``prototype``: the authors' signed â + η f̂ with per-row normalisation (the vote is on the
    classifier only; the method keeps every other layer dense)."""
    return scores(r.a, r.f, r.mask, eta, "signed", normalize=normalize_output_axis)


register_criterion(Criterion("gradient", gradient_scores, "|â + η f̂| of normalised gradients (the paper's score)"))
register_criterion(Criterion("taylor", taylor_scores, "Fisher importance per objective, conflicting terms cancel",
                             needs=("squares",)))
register_criterion(Criterion("magnitude_veto", magnitude_veto_scores,
                             "magnitude ranking; a band around the cut-off re-ranked by gradient sign conflict"))
register_criterion(Criterion("group_balanced", group_balanced_scores,
                             "per-group importance (θ·G_g)², each group keeps its share (FairGRAPE)",
                             needs=("per_group",), on_host=True))
register_criterion(Criterion("prototype", prototype_scores,
                             "the authors' prototype: signed score, classifier only, the rest dense", head_only=True))


def cast_votes(votes: PyTree, score_sum: PyTree, s: PyTree, quotas: PyTree) -> tuple[PyTree, PyTree]:
    """One vote round: each layer l votes for its top k_l scores; counts and score sums grow."""
    winners = masks.topk_per_layer(s, quotas)
    if masks.is_concrete(*jax.tree.leaves((winners, votes, score_sum, s))):  # exact on the host too
        return _tally_host(winners, votes, score_sum, s)
    return _tally(winners, votes, score_sum, s)


def _tally_host(winners: masks.Mask, votes: PyTree, score_sum: PyTree, s: PyTree) -> tuple[PyTree, PyTree]:
    """:func:`_tally` on the host (an integer and a float32 add per element: the same bits), each
    result placed like its running total; a vote round no longer compiles a function per tree."""
    def count(w, v):
        v_host = np.asarray(v)
        return masks.placed_like(v_host + np.asarray(w).astype(v_host.dtype), v)

    def add(w, t, x):
        t_host = np.asarray(t)
        return masks.placed_like(t_host + np.asarray(x, t_host.dtype), t)

    return masks.map_prunable(count, winners, votes), masks.map_prunable(add, winners, score_sum, s)


@jax.jit
def _tally(winners: masks.Mask, votes: PyTree, score_sum: PyTree, s: PyTree) -> tuple[PyTree, PyTree]:
    """Votes + winners and score sums + scores, one compiled function for the whole tree."""
    votes = masks.map_prunable(lambda w, v: v + w.astype(v.dtype), winners, votes)
    score_sum = masks.map_prunable(lambda w, t, x: t + x, winners, score_sum, s)
    return votes, score_sum


def mask_from_votes(votes: PyTree, score_sum: PyTree, quotas: PyTree) -> masks.Mask:
    """Keeps the k_l weights with most votes per layer; ties broken by summed score, then position."""
    if not masks.is_concrete(*jax.tree.leaves(votes)):  # the host path reads the int32 counts exactly
        votes = _as_float32(votes)
    return masks.topk_per_layer(votes, quotas, score_sum)


@jax.jit
def _as_float32(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda v: v.astype(jnp.float32), tree)


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
