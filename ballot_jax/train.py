"""Masked training: train state, jitted masked train/eval steps, optax optimizers and schedules.

The mask zeroes the gradients, the optimizer's update and the new parameters, so a pruned weight
stays exactly 0.0 under momentum and weight decay; every state starts masked
(:func:`create_train_state`), so the train step's forward pass reads the parameters as they are
(the evaluation step, which takes any params and a mask, masks them). The learning rate is an
argument of the step (``optax.inject_hyperparams``), so a whole run with any schedule, any stage
length or learning-rate rewinding compiles the step once per shape. Masks are arguments too: a
new mask never recompiles.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterable, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ballot_jax import fairness, masks

PyTree = Any
Batch = Mapping[str, jax.Array]
ApplyFn = Callable[..., Any]


@flax.struct.dataclass
class TrainState:
    """Everything a masked train step reads and writes."""

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    mask: masks.Mask


def create_train_state(
    params: PyTree, batch_stats: PyTree, tx: optax.GradientTransformation, mask: masks.Mask
) -> TrainState:
    """A fresh state (step 0, new optimizer state) with the mask applied to ``params``.

    The arrays (mask included) are copied, so the caller's trees (e.g. the rewind point θ0 or a
    mask shared with another state) survive the train step's buffer donation. Concrete trees, all
    placed or none, are copied and masked on the host (a copy and a select: the same values), each
    array placed like its source, and only the step counter and ``tx.init`` are compiled (one
    function per optimizer and tree shape); other trees build the state in one compiled function.
    """
    leaves = jax.tree.leaves((params, batch_stats, mask))
    # A mix of committed and uncommitted arrays goes to the compiled builder, which commits them all
    # (a state mixing the two would compile the train step once per mix).
    if masks.is_concrete(*leaves) and len({bool(getattr(x, "committed", False)) for x in leaves}) <= 1:
        step, opt_state = _fresh_optimizer_state(params, tx)
        masked = masks.apply_mask(params, mask)  # new buffers on prunable leaves, the others as given
        return TrainState(
            step=step,
            params=jax.tree.map(lambda m, p: _host_copy(p) if m is None else p, mask, masked,
                                is_leaf=lambda x: x is None),
            batch_stats=jax.tree.map(_host_copy, batch_stats or {}),
            opt_state=opt_state,
            mask=jax.tree.map(_host_copy, mask),
        )
    return _create_train_state(params, batch_stats, tx, mask)


def _host_copy(x: Any) -> jax.Array:
    """A copy of ``x`` in a new buffer, placed like ``x`` (see :func:`masks.placed_like`)."""
    return masks.placed_like(np.array(x, copy=True), x)


@jax.jit
def copy_tree(tree: PyTree) -> PyTree:
    """A copy of every array of ``tree`` in new buffers (survives the donation of the original), one
    compiled function per tree structure instead of one eager copy per leaf shape."""
    return jax.tree.map(jnp.copy, tree)


@functools.partial(jax.jit, static_argnums=(1,), keep_unused=True)
def _fresh_optimizer_state(params: PyTree, tx: optax.GradientTransformation) -> tuple[jax.Array, PyTree]:
    # keep_unused: the outputs do not read params, but must be placed (committed) as they are.
    return jnp.zeros((), jnp.int32), tx.init(params)


@functools.partial(jax.jit, static_argnums=(2,))
def _create_train_state(params: PyTree, batch_stats: PyTree, tx: optax.GradientTransformation,
                        mask: masks.Mask) -> TrainState:
    mask = jax.tree.map(jnp.copy, mask)
    params = jax.tree.map(jnp.copy, masks.apply_mask(params, mask))
    batch_stats = jax.tree.map(jnp.copy, batch_stats or {})
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        mask=mask,
    )


# ---------------------------------------------------------------------------------------------
# Optimizers and schedules
# ---------------------------------------------------------------------------------------------

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("step", "cosine", "warmup_cosine", "constant", "warmup_constant")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer and schedule settings. Defaults are the paper prototype's recipe."""

    optimizer: str = "sgd"
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    nesterov: bool = False
    schedule: str = "step"
    decay_boundaries: tuple[float, ...] = (0.4, 0.6, 0.8)  # fractions of the stage's steps
    decay_factor: float = 0.1
    warmup_fraction: float = 0.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Any) -> "OptimizerConfig":
        """Builds from a mapping/ConfigDict, taking only the known keys."""
        get = config.get if hasattr(config, "get") else lambda k, d=None: getattr(config, k, d)
        kw = {}
        for f in dataclasses.fields(cls):
            v = get(f.name, None)
            if v is not None:
                kw[f.name] = tuple(v) if f.name == "decay_boundaries" else v
        return cls(**kw)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """An optax optimizer whose learning rate is an injected hyper-parameter.

    SGD applies weight decay as an L2 term added to the gradient before momentum (as
    PyTorch's SGD does); AdamW decays decoupled.
    """
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; valid: {list(OPTIMIZERS)}")

    def build(learning_rate: float) -> optax.GradientTransformation:
        if cfg.optimizer == "sgd":
            return optax.chain(
                optax.add_decayed_weights(cfg.weight_decay),
                optax.sgd(learning_rate, momentum=cfg.momentum or None, nesterov=cfg.nesterov),
            )
        if cfg.optimizer == "adam":
            return optax.chain(optax.add_decayed_weights(cfg.weight_decay), optax.adam(learning_rate))
        return optax.adamw(learning_rate, weight_decay=cfg.weight_decay)

    return optax.inject_hyperparams(build)(learning_rate=cfg.learning_rate)


def make_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """The learning-rate schedule of one training stage of ``total_steps`` steps.

    ``step``: lr · factor^(#boundaries passed), boundaries at fractions of the stage (paper:
    ×0.1 at 40/60/80%). ``cosine``: cosine decay to 0. ``warmup_*``: linear warm-up over
    ``warmup_fraction`` of the stage first. ``constant``: lr. Learning-rate rewinding is simply
    restarting the schedule at step 0 when a stage is retrained. ``step`` and ``constant`` come as a
    :class:`HostSchedule`, which :func:`learning_rates` evaluates without compiling.
    """
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {cfg.schedule!r}; valid: {list(SCHEDULES)}")
    total_steps = max(int(total_steps), 1)
    lr = cfg.learning_rate
    warmup = int(round(cfg.warmup_fraction * total_steps))
    if cfg.schedule == "step":
        bounds: dict[int, float] = {}
        for b in cfg.decay_boundaries:  # boundaries that round to one step multiply: no decay is lost
            step = int(round(b * total_steps))
            bounds[step] = bounds.get(step, 1.0) * cfg.decay_factor
        return HostSchedule(optax.piecewise_constant_schedule(lr, bounds),
                            functools.partial(_piecewise_constant_on_host, lr, tuple(sorted(bounds.items()))))
    if cfg.schedule == "constant":
        return HostSchedule(optax.constant_schedule(lr), functools.partial(_constant_on_host, lr))
    if cfg.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, total_steps)
    if cfg.schedule == "warmup_constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)], [warmup]
        )
    return optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 1), total_steps)


@dataclasses.dataclass(frozen=True)
class HostSchedule:
    """An optax schedule (``schedule``, for traced use) with ``on_host``, the same float32 values
    computed by NumPy: evaluating the optax schedule eagerly compiles one XLA op per operation
    and length (≈ 0.5 s of a cold start for ``step``)."""

    schedule: optax.Schedule
    on_host: Callable[[np.ndarray], np.ndarray]

    def __call__(self, count: Any) -> Any:
        return self.schedule(count)


def _piecewise_constant_on_host(init_value: float, boundaries_and_scales: tuple[tuple[int, float], ...],
                                count: np.ndarray) -> np.ndarray:
    """``optax.piecewise_constant_schedule``'s arithmetic, operation for operation in float32."""
    f32 = np.float32
    count = np.asarray(count, np.int32)
    v: Any = f32(init_value)
    for threshold, scale in boundaries_and_scales:
        indicator = np.maximum(f32(0), np.sign(np.int32(threshold) - count).astype(f32))
        v = v * indicator + (f32(1) - indicator) * f32(scale) * v
    return np.broadcast_to(np.asarray(v, f32), count.shape)


def _constant_on_host(value: float, count: np.ndarray) -> np.ndarray:
    """``optax.constant_schedule``'s value for every step, float32."""
    return np.full(np.shape(count), value, np.float32)


def learning_rates(schedule: optax.Schedule, total_steps: int) -> np.ndarray:
    """The schedule evaluated on the host for every step of a stage (float32 array).

    A :class:`HostSchedule` (``step``, ``constant``) is computed by NumPy, bit for bit the optax
    values (tested) with no compilation; other schedules, and every schedule with 64-bit JAX
    types enabled (then optax computes in float64), are evaluated by JAX.
    """
    n = max(int(total_steps), 1)
    if isinstance(schedule, HostSchedule) and not jax.config.jax_enable_x64:
        return np.array(schedule.on_host(np.arange(n, dtype=np.int32)), np.float32)
    steps = jnp.arange(n)
    return np.broadcast_to(np.asarray(schedule(steps), dtype=np.float32), steps.shape).copy()


# ---------------------------------------------------------------------------------------------
# Losses and steps
# ---------------------------------------------------------------------------------------------


def forward(
    apply_fn: ApplyFn, params: PyTree, batch_stats: PyTree, mask: masks.Mask, images: jax.Array, train: bool
) -> tuple[jax.Array, PyTree]:
    """Logits of the masked model and (in train mode) the updated batch statistics."""
    variables = {"params": masks.apply_mask(params, mask)}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    if train and batch_stats:
        logits, updated = apply_fn(variables, images, train=True, mutable=["batch_stats"])
        return logits.astype(jnp.float32), updated["batch_stats"]
    logits = apply_fn(variables, images, train=train)
    return logits.astype(jnp.float32), batch_stats


def example_losses(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example cross-entropy ℓ_i = −log softmax(logits_i)[y_i]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def batch_weights(batch: Batch) -> jax.Array:
    """The batch's example weights (1 real, 0 padding); all ones when absent."""
    w = batch.get("weight")
    return jnp.ones(batch["label"].shape, jnp.float32) if w is None else w.astype(jnp.float32)


def with_learning_rate(opt_state: Any, lr: jax.Array) -> Any:
    """``opt_state`` of an optimizer from :func:`make_optimizer` with its injected learning rate set to ``lr``."""
    hyper = dict(opt_state.hyperparams, learning_rate=jnp.asarray(lr, jnp.float32))
    return opt_state._replace(hyperparams=hyper)


def masked_update(
    tx: optax.GradientTransformation, state: TrainState, grads: PyTree, lr: jax.Array
) -> tuple[PyTree, PyTree]:
    """One optimizer update with the mask applied to gradients, updates and new params."""
    grads = masks.apply_mask(grads, state.mask)
    updates, opt_state = tx.update(grads, with_learning_rate(state.opt_state, lr), state.params)
    updates = masks.apply_mask(updates, state.mask)
    params = masks.apply_mask(optax.apply_updates(state.params, updates), state.mask)
    return params, opt_state


def train_metrics(losses: jax.Array, logits: jax.Array, batch: Batch, step: jax.Array) -> dict[str, jax.Array]:
    """Device-side sums for an epoch summary.

    ``nonfinite`` is 1 when the loss is NaN/inf and ``first_nonfinite_step`` is then the step
    number (a large sentinel otherwise); :func:`sum_metrics` keeps the minimum of the latter.
    """
    w = batch_weights(batch)
    loss = jnp.sum(losses * w)
    correct = jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * w)
    bad = ~jnp.isfinite(loss)
    return {
        "loss_sum": loss,
        "correct": correct,
        "count": jnp.sum(w),
        "nonfinite": bad.astype(jnp.int32),
        "first_nonfinite_step": jnp.where(bad, step, _NO_STEP).astype(jnp.int32),
    }


_NO_STEP = np.iinfo(np.int32).max


def make_train_step(apply_fn: ApplyFn, tx: optax.GradientTransformation, *, donate: bool = True) -> Callable:
    """A jitted ``step(state, batch, lr) -> (state, metrics)`` of masked SGD-style training.

    Loss = Σ_i w_i ℓ_i / Σ_i w_i (w = batch weights). Compiles once per batch shape; masks and
    the learning rate are arguments. ``state.params`` must be zero where ``state.mask`` is False, as
    :func:`create_train_state` and every step leave them (the forward pass does not mask them again).
    """

    def step(state: TrainState, batch: Batch, lr: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
        w = batch_weights(batch)

        def loss_fn(params):
            # params are already zero where masked (create_train_state and every step leave them so),
            # and masked_update zeroes the gradients: masking them again here gave the same bits for a
            # select per prunable leaf (reference ResNet-18: 567 -> 546 fusions; step 0.97x the time).
            logits, new_stats = forward(apply_fn, params, state.batch_stats, masks.none_like(params),
                                        batch["image"], True)
            losses = example_losses(logits, batch["label"])
            return jnp.sum(losses * w) / jnp.maximum(jnp.sum(w), 1.0), (losses, logits, new_stats)

        grads, (losses, logits, new_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
        params, opt_state = masked_update(tx, state, grads, lr)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_stats, opt_state=opt_state)
        return new_state, train_metrics(losses, logits, batch, state.step)

    return jax.jit(step, donate_argnums=(0,) if donate else ())


def make_eval_step(apply_fn: ApplyFn) -> Callable:
    """A jitted ``step(params, batch_stats, mask, batch, counts) -> counts``.

    ``counts`` is the fairness confusion tensor [G, C, C] (see :mod:`ballot_jax.fairness`),
    accumulated on device so a whole split is evaluated with one host transfer.
    """

    def step(params, batch_stats, mask, batch, counts):
        logits, _ = forward(apply_fn, params, batch_stats, mask, batch["image"], False)
        preds = jnp.argmax(logits, -1)
        return fairness.update_counts(counts, batch["label"], preds, batch["group"], batch_weights(batch))

    return jax.jit(step)


def evaluate_counts(
    eval_step: Callable,
    state: TrainState,
    batches: Iterable[Batch],
    *,
    num_groups: int,
    num_classes: int,
) -> jax.Array:
    """Confusion counts [G, C, C] of the masked model over ``batches`` (device array)."""
    # Placed like the state (replicated on its mesh, or committed to its device): one compile.
    counts = jax.device_put(fairness.init_counts(num_groups, num_classes), state.step.sharding)
    for batch in batches:
        counts = eval_step(state.params, state.batch_stats, state.mask, batch, counts)
    return counts


def sum_metrics(total: dict[str, jax.Array] | None, new: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Adds step metrics on device (no host sync); ``first_*`` entries keep their minimum."""
    return new if total is None else _sum_metrics(total, new)


@jax.jit
def _sum_metrics(total: dict[str, jax.Array], new: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {k: (jnp.minimum if k.startswith("first_") else jnp.add)(total[k], new[k]) for k in new}


@jax.jit
def add_trees(a: PyTree, b: PyTree) -> PyTree:
    """``a + b`` leaf by leaf, one compiled call per tree structure (not one eager add per leaf)."""
    return jax.tree.map(jnp.add, a, b)


def summarize(total: Mapping[str, jax.Array]) -> dict[str, float]:
    """Host-side epoch summary: mean loss, accuracy, count and non-finite step count."""
    t = jax.device_get(total)
    n = max(float(t["count"]), 1.0)
    return {
        "loss": float(t["loss_sum"]) / n,
        "accuracy": float(t["correct"]) / n,
        "examples": int(t["count"]),
        "nonfinite_steps": int(t["nonfinite"]),
        "first_nonfinite_step": None if int(t["first_nonfinite_step"]) == _NO_STEP else int(t["first_nonfinite_step"]),
    }


def compilation_count(jitted: Callable) -> int:
    """How many shapes a ``jax.jit`` function has been compiled for (1 after a whole run: no retrace).

    JAX offers no public API for this; ``_cache_size`` is private and used here only, so a JAX
    upgrade that changes it breaks one line.
    """
    return int(jitted._cache_size())  # pylint: disable=protected-access
