"""P2: the masked train step against the same step without masks (dense), small ResNet on CPU.

Masked: ``train.make_train_step`` with a 95%-sparse magnitude mask (mask applied in the forward
pass, to the gradients, the updates and the new params). Dense: the same function with a mask
whose every leaf is ``None`` (``apply_mask`` is then the identity: no multiply, no select), so
both sides run the same code except the mask. Each measurement is ``steps`` consecutive steps;
masked and dense alternate for ``rounds`` rounds (order reversed every round) and the ratio is
the median of the paired ratios.
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

NAME = "masked_step"
GOAL = 1.03


def make_states(model, hw: int, batch_size: int = 32, density: float = 0.05):
    """(masked state, dense state, batch, train step) for ``model`` at ``hw``x``hw``."""
    from ballot_jax import masks, train

    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, hw, hw, 3)), train=False)
    params, stats = variables["params"], variables.get("batch_stats", {})
    tx = train.make_optimizer(train.OptimizerConfig())
    full = masks.init_mask(params, masks.prunable_filter())
    sparse = masks.global_magnitude_mask(params, full, density)
    no_mask = masks.init_mask(params, lambda path, leaf: False)
    masked = train.create_train_state(params, stats, tx, sparse)
    dense = train.create_train_state(params, stats, tx, no_mask)
    x, y, g = common.synthetic_arrays(batch_size, hw, 10, 2, seed=1)
    batch = {"image": jnp.asarray(x, jnp.float32) / 255.0, "label": jnp.asarray(y), "group": jnp.asarray(g),
             "weight": jnp.ones((batch_size,), jnp.float32)}
    return masked, dense, batch, tx


def run(smoke: bool = False, steps: int | None = None, rounds: int | None = None) -> tuple[list[Row], dict]:
    from ballot_jax import train

    hw = 8 if smoke else 32
    steps = steps or (2 if smoke else 4)
    rounds = rounds or (2 if smoke else 31)
    model = common.small_resnet(num_classes=10, smoke=smoke)
    masked, dense, batch, tx = make_states(model, hw)
    step_masked = train.make_train_step(model.apply, tx)
    step_dense = train.make_train_step(model.apply, tx)
    lr = np.float32(0.01)
    states = {"masked": masked, "dense": dense}
    fns = {"masked": step_masked, "dense": step_dense}

    def measure(name: str):
        def one() -> float:
            fn = fns[name]
            states[name], sec = common.timed_steps(lambda s: fn(s, batch, lr)[0], states[name], steps)
            return sec

        return one

    t = common.paired({"masked": measure("masked"), "dense": measure("dense")}, rounds=rounds, warmup=1)
    ratio = common.median_ratio(t["masked"], t["dense"])
    rows = [Row("P2", "masked train step / dense train step (small ResNet, CPU)", ratio, "x", f"<= {GOAL}x",
                ratio <= GOAL, f"{common.median(t['masked']) * 1e3:.1f} ms vs {common.median(t['dense']) * 1e3:.1f} ms"
                               f" per step; {rounds} rounds x {steps} steps")]
    return rows, {"seconds_per_step": t, "steps": steps, "rounds": rounds, "image": hw}


def main(argv=None):
    def extra(p):
        p.add_argument("--steps", type=int, default=None, help="steps per measurement (default 4)")
        p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 31)")

    return common.standard_main(NAME, __doc__.splitlines()[0], run, argv, extra)


if __name__ == "__main__":
    main()
