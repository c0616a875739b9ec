"""P1 (per step): the voting train step / the plain train step, before and after a fix.

``vote_source="train_steps"`` makes every train step also return the step's accuracy and
fairness gradient sums (a, f): ``conflicts.make_voting_train_step`` pulls the two cotangents
back through one VJP one after the other (the two backward passes share the forward residuals).
This measures, per step and without the epoch's other costs, that step against the plain masked
train step, and against the formulation the library used before, ``jax.vmap`` of the VJP over the
two stacked cotangents (kept here as the "before"). Same model and batch as ``vote_cost``
(ResNet-18 width 0.25, CIFAR stem, 32x32, batch 32); alternating measurements, medians of paired
ratios.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.common import Row  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

NAME = "vote_step"


def vmapped_voting_step(apply_fn, tx):
    """The voting train step as the library had it before: ``jax.vmap`` over the 2 cotangents."""
    from ballot_jax import conflicts, masks, train

    def step(state, batch, lr, weights_g):
        effective = masks.apply_mask(state.params, state.mask)
        losses, vjp_fn, (logits, new_stats) = jax.vjp(
            conflicts._example_losses_fn(apply_fn, state.batch_stats, batch, True), effective, has_aux=True)
        w = train.batch_weights(batch)
        (both,) = jax.vmap(vjp_fn)(jnp.stack([w, w * weights_g[batch["group"]]]))
        a, f = jax.tree.map(lambda g: g[0], both), jax.tree.map(lambda g: g[1], both)
        n = jnp.maximum(jnp.sum(train.batch_weights(batch)), 1.0)
        params, opt_state = train.masked_update(tx, state, jax.tree.map(lambda g: g / n, a), lr)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_stats, opt_state=opt_state)
        sums = {"a": masks.map_prunable(lambda m, g: g, state.mask, a),
                "f": masks.map_prunable(lambda m, g: g, state.mask, f)}
        return new_state, train.train_metrics(losses, logits, batch, state.step), sums

    return jax.jit(step, donate_argnums=(0,))


def run(smoke: bool = False, steps: int | None = None, rounds: int | None = None) -> tuple[list[Row], dict]:
    from benchmarks.masked_step import make_states
    from ballot_jax import conflicts, train

    hw = 8 if smoke else 32
    steps = steps or (1 if smoke else 3)
    rounds = rounds or (1 if smoke else 7)
    model = common.small_resnet(num_classes=10, smoke=smoke)
    state, _, batch, tx = make_states(model, hw)
    w = jnp.linspace(1.0, 3.0, 10, dtype=jnp.float32)
    lr = np.float32(0.01)
    fns = {"plain": lambda s, f=train.make_train_step(model.apply, tx): f(s, batch, lr),
           "vmap": lambda s, f=vmapped_voting_step(model.apply, tx): f(s, batch, lr, w),
           "sequential": lambda s, f=conflicts.make_voting_train_step(model.apply, tx): f(s, batch, lr, w)}
    states = {k: jax.tree.map(jnp.copy, state) for k in fns}
    out = {k: fns[k](jax.tree.map(jnp.copy, state)) for k in ("vmap", "sequential")}
    diff = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(out["vmap"][2]),
                                                             jax.tree.leaves(out["sequential"][2])))
    scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(out["vmap"][2]))

    def measure(k):
        def one() -> float:
            states[k], sec = common.timed_steps(lambda s: fns[k](s)[0], states[k], steps)
            return sec

        return one

    t = common.paired({k: measure(k) for k in fns}, rounds=rounds, warmup=1)
    r_vmap = common.median_ratio(t["vmap"], t["plain"])
    r_seq = common.median_ratio(t["sequential"], t["plain"])
    rows = [
        Row("P1", "voting train step / train step (library: the 2 cotangents pulled back in sequence)", r_seq, "x",
            "info", None, f"{common.median(t['sequential']) * 1e3:.0f} ms vs {common.median(t['plain']) * 1e3:.0f} ms"
            " per step"),
        Row("P1", "  before: vmap over the 2 cotangents", r_vmap, "x", "info", None,
            f"{common.median(t['vmap']) * 1e3:.0f} ms per step; max |(a, f) difference| {diff:.2g} "
            f"(max |value| {scale:.2g})"),
    ]
    return rows, {"seconds_per_step": t, "steps": steps, "rounds": rounds, "max_abs_diff": diff}


def main(argv=None):
    def extra(p):
        p.add_argument("--steps", type=int, default=None, help="steps per measurement (default 3)")
        p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 7)")

    return common.standard_main(NAME, __doc__.splitlines()[0], run, argv, extra)


if __name__ == "__main__":
    main()
