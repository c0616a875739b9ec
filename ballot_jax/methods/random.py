"""Random pruning: a random mask with the magnitude ticket's per-layer densities (a control).

One stage after the shared dense run (REFERENCE §4):

``retrain`` — compute the global-magnitude ticket of θ_T only for its per-layer kept counts
k_l, draw a mask keeping exactly k_l uniformly random weights of each prunable layer (a NumPy
draw seeded by the run's seed alone, see :func:`ballot_jax.masks.random_mask`), rewind to θ0 (or θ_k) and train ``retrain_epochs``
epochs with the mask enforced, on the same data order as every other method's
retraining. It isolates what the *choice* of weights buys at a fixed layer-wise allocation.

Config keys: ``sparsity``, ``retrain_epochs``, ``random.quotas`` (``"magnitude"``: the ticket's k_l,
default; ``"uniform"`` / ``"erk"``: k_l from that distribution at the target density, the
total still exactly ``round(density · N)``).
"""

from __future__ import annotations

from typing import Any


from ballot_jax import loop, masks
from ballot_jax.methods import Method, common, register

QUOTAS = ("magnitude", "uniform", "erk")
RANDOM_TAG = 31  # seed word of the mask draw



def random_quotas(ctx: loop.Context, state: loop.RunState, kind: str) -> Any:
    """Per-layer kept counts k_l of the random mask (a tree of ints shaped like the mask)."""
    density = common.target_density(ctx)
    if kind == "magnitude":
        return masks.quotas_of(common.magnitude_ticket(ctx, state, density))
    if kind not in QUOTAS:
        raise ValueError(f"unknown random.quotas {kind!r}; valid: {list(QUOTAS)}")
    return masks.distribution_quotas(state.train.mask, density, kind)[1]


def _initial_state(ctx: loop.Context, dense: loop.RunState) -> loop.RunState:
    return dense.replace(extras={})


def _stages(ctx: loop.Context) -> list[loop.Stage]:
    kind = str(ctx.config.random.quotas)
    if kind not in QUOTAS:
        raise ValueError(f"unknown random.quotas {kind!r}; valid: {list(QUOTAS)}")

    def begin(c: loop.Context, state: loop.RunState):
        quotas = random_quotas(c, state, kind)
        mask = masks.random_mask(state.train.mask, quotas, (c.seed, RANDOM_TAG))
        return common.rewind_to(c, state, mask), common.with_mask_info(mask, quotas=kind)

    return [common.train_stage("retrain", common.retrain_epochs(ctx), common.RETRAIN_TAG, begin=begin)]


METHOD = register(
    Method(
        name="random",
        description="Random pruning: random mask with the magnitude ticket's per-layer densities, rewound and retrained",
        from_dense=True,
        initial_state=_initial_state,
        stages=_stages,
    )
)
