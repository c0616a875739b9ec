"""Magnitude Pruning (MP): prune the trained dense model by global weight magnitude, fine-tune.

Stages after the shared dense run (REFERENCE §4):

* one-shot (default) — ``finetune``: the global-magnitude mask of θ_T at the target density
  (one threshold over every prunable layer, ``round(density · N)`` weights kept), then
  ``retrain_epochs`` epochs of masked training that *continue* from the trained
  values of the surviving weights (no rewind; fresh optimizer state, the learning-rate schedule
  restarts as for every other method's retraining).
* gradual (``magnitude.schedule="gradual"``) — ``gradual_finetune``: the same budget, but the
  mask tightens at the start of every epoch e along the cubic schedule of Zhu & Gupta (2017),

      s_e = s_f · (1 − (1 − min(e + 1, P) / P)³),

  where s_f is the target sparsity and P = ``magnitude.gradual_epochs`` (default: the whole
  budget). Each step is a global-magnitude prune of the current (fine-tuned) weights; pruned
  weights stay pruned. The epoch ``P − 1`` starts exactly at the target and every later epoch
  trains at it, so the run ends at exactly ``round(density · N)`` kept weights. The optimizer
  state is kept across the pruning steps (the mask zeroes pruned weights' updates).

Config keys: ``sparsity``, ``retrain_epochs`` (fine-tuning budget), ``magnitude.schedule``
(``"oneshot"`` | ``"gradual"``, default ``"oneshot"``), ``magnitude.gradual_epochs`` (P, default
``retrain_epochs``; must be in [1, retrain_epochs]).
"""

from __future__ import annotations

from typing import Any

from ballot_jax import loop, masks
from ballot_jax.methods import Method, common, register

SCHEDULES = ("oneshot", "gradual")



def settings(ctx: loop.Context) -> dict[str, Any]:
    """The resolved MP options, validated."""
    budget, c = common.retrain_epochs(ctx), ctx.config.magnitude
    s = {
        "schedule": str(c.schedule),
        "epochs": budget,
        "gradual_epochs": int(common.unless_none(c.gradual_epochs, budget)),
    }
    if s["schedule"] not in SCHEDULES:
        raise ValueError(f"unknown magnitude.schedule {s['schedule']!r}; valid: {list(SCHEDULES)}")
    if s["schedule"] == "gradual" and not 1 <= s["gradual_epochs"] <= max(budget, 1):
        raise ValueError(
            f"magnitude.gradual_epochs={s['gradual_epochs']} must be in [1, retrain_epochs={budget}]: the mask "
            "must reach the target sparsity within the fine-tuning budget"
        )
    return s


def cubic_sparsity(epoch: int, target_sparsity: float, prune_epochs: int) -> float:
    """Sparsity in force during epoch ``epoch`` (0-based) of the gradual schedule.

    s_e = s_f (1 − (1 − min(e+1, P)/P)³): rises from s_f (1 − (1 − 1/P)³) at epoch 0 to exactly
    s_f from epoch P − 1 on.
    """
    t = min(epoch + 1, prune_epochs) / prune_epochs
    if t >= 1.0:
        return float(target_sparsity)
    return float(target_sparsity) * (1.0 - (1.0 - t) ** 3)


def _initial_state(ctx: loop.Context, dense: loop.RunState) -> loop.RunState:
    # Nothing method-specific is carried: the mask lives in the train state, the schedule is a
    # pure function of the epoch.
    return dense.replace(extras={})


def _oneshot_stages(ctx: loop.Context, s: dict[str, Any]) -> list[loop.Stage]:
    def begin(c: loop.Context, state: loop.RunState):
        mask = common.magnitude_ticket(c, state)
        return common.continue_with(c, state, mask), common.with_mask_info(mask)

    return [common.train_stage("finetune", s["epochs"], common.RETRAIN_TAG, begin=begin)]


def _gradual_stages(ctx: loop.Context, s: dict[str, Any]) -> list[loop.Stage]:
    epochs, P = s["epochs"], s["gradual_epochs"]
    target = 1.0 - common.target_density(ctx)

    def begin(c: loop.Context, state: loop.RunState):
        # Fresh optimizer state at θ_T, still dense: the first prune happens at epoch 0's start.
        return common.continue_with(c, state, state.train.mask), {"schedule": "gradual", "prune_epochs": P}

    def epoch(c: loop.Context, state: loop.RunState, e: int):
        sp = cubic_sparsity(e, target, P)
        ts = state.train
        current = masks.count(ts.mask)
        if int(round((1.0 - sp) * current["total"])) < current["kept"]:
            mask = masks.global_magnitude_mask(ts.params, ts.mask, 1.0 - sp)
            ts = ts.replace(mask=mask, params=masks.apply_mask(ts.params, mask))
        ts, info, _ = loop.train_epoch(c, ts, stage="gradual_finetune", stage_tag=common.RETRAIN_TAG, epoch=e,
                                       epochs=epochs)
        info["scheduled_sparsity"] = sp
        info["sparsity"] = masks.sparsity(ts.mask)
        return state.replace(train=ts), info

    def end(c: loop.Context, state: loop.RunState):
        # With epochs == 0 (no fine-tuning at all) the mask still has to reach the target.
        ts = state.train
        c_ = masks.count(ts.mask)
        if c_["kept"] != int(round(common.target_density(c) * c_["total"])):
            mask = common.magnitude_ticket(c, state)
            ts = ts.replace(mask=mask, params=masks.apply_mask(ts.params, mask))
            state = state.replace(train=ts)
        return state, {"val": loop.evaluate(c, ts, "val"), "mask": masks.sparsity(ts.mask)}

    return [loop.Stage("gradual_finetune", epochs=epochs, begin=begin, epoch=epoch, end=end)]


def _stages(ctx: loop.Context) -> list[loop.Stage]:
    s = settings(ctx)
    return _oneshot_stages(ctx, s) if s["schedule"] == "oneshot" else _gradual_stages(ctx, s)


METHOD = register(
    Method(
        name="magnitude",
        description="Magnitude Pruning: global-magnitude mask of the trained dense model, fine-tuned without rewind",
        from_dense=True,
        initial_state=_initial_state,
        stages=_stages,
    )
)
