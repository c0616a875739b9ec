"""Stages shared by several methods: dense training, magnitude tickets, rewind-and-retrain.

Stage tags (the integers that seed each stage's data order) are fixed here so that two methods
retraining "the same way" see the same batches.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from ballot_jax import loop, masks, train

DENSE_TAG, TICKET_TAG, RETRAIN_TAG = 1, 2, 3


def unless_none(value: Any, fallback: Any) -> Any:
    """``value``, or ``fallback`` when it is None: a config placeholder whose documented meaning is
    "the same as another key" (``lth.round_epochs`` None: ``retrain_epochs``)."""
    return fallback if value is None else value


def total_epochs(ctx: loop.Context) -> int:
    """dense_epochs + retrain_epochs: the training a dense-then-retrain method gets in all.

    Methods that start from θ0 (SafeCompress, FairScratch) get this budget so every method
    trains for the same number of steps.
    """
    return int(ctx.config.dense_epochs) + retrain_epochs(ctx)


def target_density(ctx: loop.Context) -> float:
    """1 − sparsity, the fraction of prunable weights every method keeps."""
    return 1.0 - masks.check_sparsity(ctx.config.sparsity)


def rewind_step(ctx: loop.Context) -> int:
    """Late-rewinding step k (0 = rewind to θ0)."""
    return int(ctx.config.rewind_step)


def dense_stage(ctx: loop.Context) -> loop.Stage:
    """Dense training for ``dense_epochs``; keeps θ0 (or θ_k when ``rewind_step`` = k > 0)."""
    epochs = int(ctx.config.dense_epochs)
    total = epochs * ctx.steps_per_epoch
    if rewind_step(ctx) > total:
        raise ValueError(f"rewind_step={rewind_step(ctx)} is beyond the dense run's {total} steps ({epochs} epochs × "
                         f"{ctx.steps_per_epoch}): θ_k would never be saved; choose rewind_step ≤ {total}")

    def epoch(c: loop.Context, state: loop.RunState, e: int):
        k = rewind_step(c)
        captured = {}

        def after_step(ts, step):
            if k and step == k:
                captured["params"] = train.copy_tree(ts.params)
                captured["batch_stats"] = train.copy_tree(ts.batch_stats)

        ts, info, _ = loop.train_epoch(c, state.train, stage="dense", stage_tag=DENSE_TAG, epoch=e, epochs=epochs,
                                       after_step=after_step if k else None)
        state = state.replace(train=ts)
        val = loop.evaluate(c, ts, "val")  # the learning curve that plateau() judges
        info.update(val_accuracy=val["accuracy"], val_min_class_recall=val["min_class_recall"])
        if captured:
            state = state.replace(rewind_params=captured["params"], rewind_batch_stats=captured["batch_stats"])
            info["rewind_point_saved_at_step"] = k
        return state, info

    def end(c: loop.Context, state: loop.RunState):
        return state, {"val": loop.evaluate(c, state.train, "val")}

    return loop.Stage("dense", epochs=epochs, epoch=epoch, end=end)


PLATEAU_WINDOW, PLATEAU_TOLERANCE = 3, 0.01


def plateau(log: Sequence[Mapping[str, Any]], window: int = PLATEAU_WINDOW,
            tolerance: float = PLATEAU_TOLERANCE) -> dict[str, Any]:
    """Whether the dense run trained to a plateau, from its stage log.

    ``reached``: the validation accuracy of the last ``window`` epochs lies within ``tolerance``
    (max − min) and every class is predicted correctly at least once on validation (min recall >
    0): the condition under which comparing the fairness of its tickets means something.
    """
    curve = [e for e in log if e.get("stage") == "dense" and e.get("phase") == "epoch" and "val_accuracy" in e]
    last = [float(e["val_accuracy"]) for e in curve[-window:]]
    spread = max(last) - min(last) if last else float("nan")
    recall = float(curve[-1]["val_min_class_recall"]) if curve else float("nan")
    return {"val_accuracy_last": last, "spread": spread, "window": window, "tolerance": tolerance,
            "min_class_recall": recall,
            "reached": bool(len(last) == window and spread <= tolerance + 1e-9 and recall > 0)}


def magnitude_ticket(ctx: loop.Context, state: loop.RunState, density: float | None = None) -> masks.Mask:
    """Global-magnitude mask of the current (trained) params at the target density."""
    density = target_density(ctx) if density is None else density
    return masks.global_magnitude_mask(state.train.params, state.train.mask, density)


def rewind_to(ctx: loop.Context, state: loop.RunState, mask: masks.Mask) -> loop.RunState:
    """θ0 (or θ_k) with ``mask`` applied and a fresh optimizer state (lr schedule restarts)."""
    ts = loop.fresh_train_state(ctx, state.rewind_params, state.rewind_batch_stats, mask)
    return state.replace(train=ts)


def continue_with(ctx: loop.Context, state: loop.RunState, mask: masks.Mask) -> loop.RunState:
    """The current trained weights with ``mask`` applied and a fresh optimizer state (fine-tuning)."""
    ts = loop.fresh_train_state(ctx, state.train.params, state.train.batch_stats, mask)
    return state.replace(train=ts)


def train_stage(
    name: str,
    epochs: int,
    stage_tag: int = RETRAIN_TAG,
    begin: Callable[[loop.Context, loop.RunState], tuple[loop.RunState, dict[str, Any]]] | None = None,
) -> loop.Stage:
    """``epochs`` epochs of masked training after an optional ``begin`` (e.g. prune + rewind).

    Ends with the validation metrics of the result.
    """

    def epoch(c: loop.Context, state: loop.RunState, e: int):
        ts, info, _ = loop.train_epoch(c, state.train, stage=name, stage_tag=stage_tag, epoch=e, epochs=epochs)
        return state.replace(train=ts), info

    def end(c: loop.Context, state: loop.RunState):
        return state, {"val": loop.evaluate(c, state.train, "val"), "mask": masks.summary(state.train.mask)["sparsity"]}

    return loop.Stage(name, epochs=epochs, begin=begin, epoch=epoch, end=end)


def retrain_epochs(ctx: loop.Context) -> int:
    """The retraining budget every method gets after choosing its mask."""
    return int(ctx.config.retrain_epochs)


def with_mask_info(mask: masks.Mask, **extra: Any) -> dict[str, Any]:
    """A stage info dict with the chosen mask's sparsity."""
    return {"sparsity": masks.sparsity(mask), **extra}
