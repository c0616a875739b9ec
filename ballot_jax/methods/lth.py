"""Standard Lottery Ticket Hypothesis: iterative magnitude pruning with rewinding.

Stages after the shared dense run (REFERENCE §4), one stage per pruning round ("level"):

``level_r`` (r = 1 … L) — prune the current trained weights by global magnitude (one threshold
over every prunable layer; weights pruned in earlier rounds stay pruned) down to density d_r,
rewind the survivors to the rewind point of the dense run (θ0, or θ_k with ``rewind_step`` = k),
and train with the mask enforced. Round 1 prunes θ_T of the dense run.

Densities: each round keeps a fraction 1 − p of the weights left by the previous one
(p = ``lth.rate``, 0.2 by default), d_r = (1 − p)^r, and the last round lands exactly on the
target density d:

    L = ceil(log d / log(1 − p)),   d_r = (1 − p)^r for r < L,   d_L = d

(so the last round removes at most p of what is left; L = 1 when d ≥ 1 − p). With
``lth.max_rounds`` = M and L > M, there are M rounds at an equal, larger rate instead,
d_r = d^(r/M). With ``lth.schedule="oneshot"`` there is a single round straight to d (L = 1).

Budget: the last round trains ``retrain_epochs`` epochs — the budget every method
gets after choosing its mask, on the same data order (stage tag ``RETRAIN_TAG``). Every
intermediate round trains ``lth.round_epochs`` epochs (default: the same ``retrain_epochs``, as in the
original LTH protocol), so the iterative variant costs L × retrain_epochs after the dense run; the
one-shot variant costs exactly the common budget. Each intermediate round has its own data
order (stage tag 100 + r).

``extras["level"]`` (int32) is the index of the round in progress / last finished (0 before the
first), so a checkpoint says how far the pruning got.

Config keys: ``sparsity``, ``retrain_epochs`` and ``config.lth``: ``rate``, ``schedule``,
``round_epochs``, ``max_rounds`` (defaults in :func:`ballot_jax.config.base_config`); the rewind point comes from the dense run
(``rewind_step``).
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp

from ballot_jax import loop, masks
from ballot_jax.methods import Method, common, register

SCHEDULES = ("iterative", "oneshot")
ROUND_TAG = 100  # data-order tag of intermediate round r is ROUND_TAG + r



def settings(ctx: loop.Context) -> dict[str, Any]:
    """The resolved LTH options, validated."""
    budget, c = common.retrain_epochs(ctx), ctx.config.lth
    s = {
        "rate": float(c.rate),
        "schedule": str(c.schedule),
        "round_epochs": int(common.unless_none(c.round_epochs, budget)),
        "max_rounds": c.max_rounds,
        "epochs": budget,
    }
    if s["max_rounds"] is not None:
        s["max_rounds"] = int(s["max_rounds"])
        if s["max_rounds"] < 1:
            raise ValueError("lth.max_rounds must be at least 1 (or None for no cap)")
    if s["schedule"] not in SCHEDULES:
        raise ValueError(f"unknown lth.schedule {s['schedule']!r}; valid: {list(SCHEDULES)}")
    if not 0.0 < s["rate"] < 1.0:
        raise ValueError(f"lth.rate={s['rate']} must be in (0, 1): the fraction of remaining weights pruned per round")
    if s["round_epochs"] < 0:
        raise ValueError("lth.round_epochs must be >= 0")
    return s


def level_densities(density: float, rate: float = 0.2, schedule: str = "iterative",
                    max_rounds: int | None = None) -> list[float]:
    """Densities d_1 … d_L of the pruning rounds; the last one is exactly ``density``.

    L = ceil(log(density) / log(1 − rate)) (at least 1), d_r = (1 − rate)^r before the last.
    A tolerance of 1e-9 absorbs round-off, so e.g. density 0.64 at rate 0.2 is 2 rounds. When
    L exceeds ``max_rounds`` = M, M rounds with d_r = density^(r/M) are used instead.
    """
    if schedule == "oneshot" or density >= 1.0 - rate:
        return [float(density)]
    if density <= 0.0:
        raise ValueError("the target density must be positive for iterative pruning")
    levels = max(1, math.ceil(math.log(density) / math.log(1.0 - rate) - 1e-9))
    if max_rounds is not None and levels > max_rounds:
        return [density ** (r / max_rounds) for r in range(1, max_rounds)] + [float(density)]
    return [(1.0 - rate) ** r for r in range(1, levels)] + [float(density)]


def _initial_state(ctx: loop.Context, dense: loop.RunState) -> loop.RunState:
    return dense.replace(extras={"level": jnp.zeros((), jnp.int32)})


def _level_stage(ctx: loop.Context, r: int, density: float, epochs: int, tag: int) -> loop.Stage:
    def begin(c: loop.Context, state: loop.RunState):
        ts = state.train
        mask = masks.global_magnitude_mask(ts.params, ts.mask, density)
        state = common.rewind_to(c, state, mask)
        state = state.replace(extras=dict(state.extras, level=jnp.asarray(r, jnp.int32)))
        return state, common.with_mask_info(mask, level=r, level_density=density)

    return common.train_stage(f"level_{r}", epochs, tag, begin=begin)


def _stages(ctx: loop.Context) -> list[loop.Stage]:
    s = settings(ctx)
    dens = level_densities(common.target_density(ctx), s["rate"], s["schedule"], s["max_rounds"])
    L = len(dens)
    return [
        _level_stage(ctx, r, d, s["epochs"] if r == L else s["round_epochs"],
                     common.RETRAIN_TAG if r == L else ROUND_TAG + r)
        for r, d in enumerate(dens, start=1)
    ]


METHOD = register(
    Method(
        name="lth",
        description="Standard LTH: iterative global magnitude pruning (20% of the rest per round), rewind, retrain",
        from_dense=True,
        initial_state=_initial_state,
        stages=_stages,
    )
)
