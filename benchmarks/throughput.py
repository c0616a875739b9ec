"""P7: training throughput (images/s) in the reference setting, ``conv_impl`` "xla" vs "auto".

ResNet-18 with the ImageNet stem, width 1.0, 5 classes, 64x64 inputs, batch 32, the masked train
step with a 95%-sparse mask (compute is dense, as in every method). The two lowerings alternate
(``steps`` steps per measurement, order reversed every round); the goal is the PyTorch
prototype's 130 images/s on this machine kind. Both models share one parameter tree, so the
check that the lowerings agree compares their logits (eval mode) on the same batch.
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

NAME = "throughput"
GOAL_IMAGES_PER_S = 130.0
GOAL_LOGIT_DIFF = 1e-3


def run(smoke: bool = False, steps: int | None = None, rounds: int | None = None,
        impls: str = "xla,auto", dtype: str = "float32") -> tuple[list[Row], dict]:
    from benchmarks.masked_step import make_states
    from benchmarks.flops import step_flops
    from ballot_jax import train

    # "auto" or "auto@bfloat16": a lowering, optionally with its compute dtype (default ``dtype``)
    impl_list = [s.strip() for s in impls.split(",") if s.strip()]
    hw, batch_size = (16, 8) if smoke else (64, 32)
    steps = steps or (1 if smoke else 4)
    rounds = rounds or (1 if smoke else 3)
    lr = np.float32(0.01)
    models, states, fns, flops = {}, {}, {}, {}
    for impl in impl_list:
        lowering, _, dt = impl.partition("@")
        models[impl] = common.reference_resnet(lowering, smoke=smoke, dtype=dt or dtype)
        states[impl], _, batch, tx = make_states(models[impl], hw, batch_size=batch_size)
        fns[impl] = train.make_train_step(models[impl].apply, tx)
        flops[impl] = step_flops(fns[impl], states[impl], batch, lr)

    # Agreement: the same variables through every lowering, eval mode.
    variables = models[impl_list[0]].init(jax.random.PRNGKey(0), jnp.zeros((1, hw, hw, 3)), train=False)
    logits = {i: np.asarray(jax.jit(lambda v, x, m=models[i]: m.apply(v, x, train=False))(variables, batch["image"]))
              for i in impl_list}

    def measure(impl: str):
        def one() -> float:
            states[impl], sec = common.timed_steps(lambda s: fns[impl](s, batch, lr)[0], states[impl], steps)
            return sec

        return one

    t = common.paired({i: measure(i) for i in impl_list}, rounds=rounds, warmup=1)
    rows = []
    for impl in impl_list:
        ips = batch_size / common.median(t[impl])
        rows.append(Row("P7", f"training throughput, reference ResNet-18 64x64, conv_impl={impl}", ips, "img/s",
                        f">= {GOAL_IMAGES_PER_S:.0f} img/s", ips >= GOAL_IMAGES_PER_S,
                        f"{common.median(t[impl]) * 1e3:.0f} ms/step; {flops[impl] / 1e9:.1f} GFLOP/step, "
                        f"{flops[impl] / common.median(t[impl]) / 1e9:.1f} GFLOP/s"))
    if "xla" in t and "auto" in t:
        speedup = common.median_ratio(t["xla"], t["auto"])
        rows.append(Row("P7", "speed-up of conv_impl=auto over xla (paired)", speedup, "x", "info", None))
    base = impl_list[0]
    for impl in impl_list[1:]:
        diff = float(np.max(np.abs(logits[impl] - logits[base])))
        scale = float(np.max(np.abs(logits[base])))
        rows.append(Row("P7", f"max |logits({impl}) - logits({base})|, one batch, eval mode", diff, "",
                        f"<= {GOAL_LOGIT_DIFF:g}", diff <= GOAL_LOGIT_DIFF, f"max |logit| {scale:.3g}"))
    meta = {"seconds_per_step": t, "flops_per_step": flops, "steps": steps, "rounds": rounds,
            "batch_size": batch_size, "image": hw}
    return rows, meta


def main(argv=None):
    def extra(p):
        p.add_argument("--steps", type=int, default=None, help="steps per measurement (default 4)")
        p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3)")
        p.add_argument("--impls", default="xla,auto", help="comma-separated conv_impl values, each optionally "
                       "@dtype (auto@bfloat16)")
        p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype")

    return common.standard_main(NAME, __doc__.splitlines()[0], run, argv, extra)


if __name__ == "__main__":
    main()
