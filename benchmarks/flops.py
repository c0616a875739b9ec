"""P6: achieved FLOP/s of the train step / the machine's matmul FLOP/s, measured in the same run.

FLOPs per step come from the compiled step's ``cost_analysis()`` (XLA's own count of the
executable); the step time from timing ``steps`` consecutive steps. The machine's reference is
a large float32 ``jnp.dot`` (``n`` x ``n`` by ``n`` x ``n``, 2n^3 FLOPs), timed alternately with the
step. Model: the small ResNet (ResNet-18 width 0.25, CIFAR stem, 32x32, batch 32,
``conv_impl="auto"``); ``--reference`` adds the reference-setting ResNet-18 (ImageNet stem,
64x64) as an information row.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.common import Row  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

NAME = "flops"
GOAL = 0.50


def step_flops(step, *args) -> float:
    """FLOPs of one call of the jitted ``step`` at these arguments (XLA cost analysis)."""
    cost = step.lower(*args).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", 0.0))


def matmul_measure(n: int, reps: int):
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    f = jax.jit(jnp.dot)
    f(a, b).block_until_ready()

    def one() -> float:
        t0 = time.perf_counter()
        for _ in range(reps):
            c = f(a, b)
        c.block_until_ready()
        return (time.perf_counter() - t0) / reps

    return one, 2.0 * n**3


def measure_model(model, hw: int, steps: int, rounds: int, mm_one, mm_flops: float, label: str, row_id: str,
                  goal: float | None) -> tuple[Row, dict]:
    from benchmarks.masked_step import make_states
    from ballot_jax import train

    masked, _, batch, tx = make_states(model, hw)
    step = train.make_train_step(model.apply, tx)
    lr = np.float32(0.01)
    flops = step_flops(step, masked, batch, lr)
    box = {"s": masked}

    def one() -> float:
        box["s"], sec = common.timed_steps(lambda s: step(s, batch, lr)[0], box["s"], steps)
        return sec

    t = common.paired({"step": one, "matmul": mm_one}, rounds=rounds, warmup=1)
    fracs = [(flops / s) / (mm_flops / m) for s, m in zip(t["step"], t["matmul"])]
    frac = common.median(fracs)
    achieved = flops / common.median(t["step"])
    peak = mm_flops / common.median(t["matmul"])
    row = Row(row_id, f"train step FLOP/s / matmul FLOP/s ({label})", 100 * frac, "%",
              f">= {goal * 100:.0f}%" if goal is not None else "info", None if goal is None else frac >= goal,
              f"{achieved / 1e9:.1f} vs {peak / 1e9:.1f} GFLOP/s; {flops / 1e9:.2f} GFLOP/step, "
              f"{common.median(t['step']) * 1e3:.0f} ms/step")
    return row, {"flops_per_step": flops, "step_seconds": t["step"], "matmul_seconds": t["matmul"],
                 "achieved_gflops": achieved / 1e9, "matmul_gflops": peak / 1e9}


def breakdown_rows(model, hw: int, steps: int, rounds: int, mm_one, mm_flops: float) -> tuple[list[Row], dict]:
    """Information rows: forward (eval mode) and forward+backward (no optimizer) against the full step."""
    from benchmarks.masked_step import make_states
    from ballot_jax import train

    state, _, batch, tx = make_states(model, hw)

    def fwd(params, stats, mask, images):
        return train.forward(model.apply, params, stats, mask, images, False)[0]

    def grad(params, stats, mask, b):
        def loss(p):
            logits, new_stats = train.forward(model.apply, p, stats, mask, b["image"], True)
            return jnp.mean(train.example_losses(logits, b["label"])), new_stats

        return jax.grad(loss, has_aux=True)(params)

    parts = {"forward": (jax.jit(fwd), (state.params, state.batch_stats, state.mask, batch["image"])),
             "forward+backward": (jax.jit(grad), (state.params, state.batch_stats, state.mask, batch))}
    rows, meta = [], {}
    for name, (fn, args) in parts.items():
        flops = step_flops(fn, *args)
        common.block(fn(*args))

        def one(fn=fn, args=args) -> float:
            t0 = time.perf_counter()
            for _ in range(steps):
                out = fn(*args)
            common.block(out)
            return (time.perf_counter() - t0) / steps

        t = common.paired({"part": one, "matmul": mm_one}, rounds=rounds, warmup=0)
        frac = common.median([(flops / a) / (mm_flops / m) for a, m in zip(t["part"], t["matmul"])])
        rows.append(Row("P6", f"  {name} only: FLOP/s / matmul FLOP/s", 100 * frac, "%", "info", None,
                        f"{flops / 1e9:.2f} GFLOP, {common.median(t['part']) * 1e3:.0f} ms"))
        meta[name] = {"flops": flops, "seconds": t["part"], "matmul_seconds": t["matmul"]}
    return rows, meta


def run(smoke: bool = False, reference: bool = False, n: int | None = None) -> tuple[list[Row], dict]:
    n = n or (256 if smoke else 2048)
    mm_one, mm_flops = matmul_measure(n, reps=2 if smoke else 3)
    rows, meta = [], {"matmul_n": n}
    row, m = measure_model(common.small_resnet(num_classes=10, smoke=smoke), 8 if smoke else 32,
                           steps=2 if smoke else 10, rounds=2 if smoke else 5, mm_one=mm_one, mm_flops=mm_flops,
                           label="small ResNet, 32x32, batch 32" if not smoke else "smoke model", row_id="P6",
                           goal=GOAL)
    rows.append(row)
    meta["small"] = m
    if not smoke:
        brows, bmeta = breakdown_rows(common.small_resnet(num_classes=10), 32, steps=10, rounds=3, mm_one=mm_one,
                                      mm_flops=mm_flops)
        rows.extend(brows)
        meta["small_breakdown"] = bmeta
    if reference and not smoke:
        row, m = measure_model(common.reference_resnet("auto"), 64, steps=3, rounds=3, mm_one=mm_one, mm_flops=mm_flops,
                               label="reference ResNet-18, 64x64, batch 32", row_id="P6", goal=None)
        rows.append(row)
        meta["reference"] = m
    return rows, meta


def main(argv=None):
    def extra(p):
        p.add_argument("--reference", action="store_true", help="also the reference ResNet-18 (information row)")
        p.add_argument("--n", type=int, default=None, help="matmul size (default 2048)")

    return common.standard_main(NAME, __doc__.splitlines()[0], run, argv, extra)


if __name__ == "__main__":
    main()
