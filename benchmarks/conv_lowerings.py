"""P7: each convolution of the reference ResNet-18, each of its three products, under each lowering.

For every distinct convolution shape of the reference model (ResNet-18, ImageNet stem, 64x64
inputs, batch 32) this times the forward pass, the input gradient and the kernel gradient under
every lowering that :mod:`ballot_jax.models.conv` offers for that product (``xla``: XLA's
convolution; ``patches``: im2col + one matmul; ``offsets``: one matmul per kernel offset, kernel
gradient only; ``torch``: PyTorch's CPU kernel through a buffer callback, where PyTorch is
installed). Lowerings alternate inside each round, so a loaded machine slows them alike. The
table gives the median milliseconds, the fastest lowering, and the lowering that ``conv_impl="auto"``
(:func:`~ballot_jax.models.conv.choose_conv_impl`) uses, and the step time each choice implies
(sum over the model's convolutions, input gradient of the stem excluded: nothing needs it), also
for ``"auto_torch"`` where PyTorch is installed. Each product is timed alone: inside a train step
the PyTorch products run slower (see ``ballot_jax.models.torch_conv``), so only whole-step
comparisons (``throughput.py``) decide a rule.
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

NAME = "conv_lowerings"

# (name, input side, cin, cout, kernel, stride, padding, how many in ResNet-18, input grad needed)
REFERENCE_SHAPES = (
    ("stem 7x7/2 3->64 @64", 64, 3, 64, 7, 2, 3, 1, False),
    ("3x3 64->64 @16", 16, 64, 64, 3, 1, 1, 4, True),
    ("3x3/2 64->128 @16", 16, 64, 128, 3, 2, 1, 1, True),
    ("1x1/2 64->128 @16", 16, 64, 128, 1, 2, 0, 1, True),
    ("3x3 128->128 @8", 8, 128, 128, 3, 1, 1, 3, True),
    ("3x3/2 128->256 @8", 8, 128, 256, 3, 2, 1, 1, True),
    ("1x1/2 128->256 @8", 8, 128, 256, 1, 2, 0, 1, True),
    ("3x3 256->256 @4", 4, 256, 256, 3, 1, 1, 3, True),
    ("3x3/2 256->512 @4", 4, 256, 512, 3, 2, 1, 1, True),
    ("1x1/2 256->512 @4", 4, 256, 512, 1, 2, 0, 1, True),
    ("3x3 512->512 @2", 2, 512, 512, 3, 1, 1, 3, True),
)
SMOKE_SHAPES = (("3x3 8->8 @8", 8, 8, 8, 3, 1, 1, 1, True), ("3x3 8->8 @2", 2, 8, 8, 3, 1, 1, 1, True))


def product_fns(ks: tuple[int, int], st: tuple[int, int], pads) -> dict[str, dict[str, object]]:
    """Jitted ``fn(x, kernel, g)`` per product and lowering."""
    from ballot_jax.models import conv as C
    from ballot_jax.models import torch_conv

    def usable(names):
        return [n for n in names if n != "torch" or torch_conv.available()]

    fwd = {name: jax.jit(lambda x, k, g, f=C._FORWARD[name]: f(x, k, st, pads))
           for name in usable(C.FORWARD_LOWERINGS)}
    dx = {name: jax.jit(lambda x, k, g, n=name: C._input_grad(n, x, k, g, st, pads, None))
          for name in usable(C.INPUT_GRAD_LOWERINGS)}
    dk = {name: jax.jit(lambda x, k, g, n=name: C._kernel_grad(n, x, k, g, st, pads, None))
          for name in usable(C.KERNEL_GRAD_LOWERINGS)}
    return {"forward": fwd, "input_grad": dx, "kernel_grad": dk}


def run(smoke: bool = False, rounds: int | None = None, reps: int | None = None) -> tuple[list[Row], dict]:
    from ballot_jax.models import conv as C
    from ballot_jax.models import torch_conv

    with_torch = torch_conv.available()
    shapes = SMOKE_SHAPES if smoke else REFERENCE_SHAPES
    batch = 2 if smoke else 32
    rounds = rounds or (1 if smoke else 5)
    reps = reps or (1 if smoke else 3)
    rng = np.random.default_rng(0)
    rows, meta = [], {"batch": batch, "rounds": rounds, "reps": reps, "shapes": {}}
    total = {"fastest": 0.0, "auto": 0.0, **({"auto_torch": 0.0} if with_torch else {})}
    for name, side, cin, cout, k, s, p, count, needs_dx in shapes:
        ks, st, pads = (k, k), (s, s), ((p, p), (p, p))
        x = jnp.asarray(rng.standard_normal((batch, side, side, cin)), jnp.float32)
        w = jnp.asarray(rng.standard_normal((k, k, cin, cout)) * 0.05, jnp.float32)
        g = jnp.asarray(rng.standard_normal(C.conv_xla(x, w, st, pads).shape), jnp.float32)
        plan = C.parse_plan(C.choose_conv_impl((side, side), ks, st, cin, cout))
        plan_torch = C.parse_plan(C.choose_conv_impl((side, side), ks, st, cin, cout, torch=True))
        fns = product_fns(ks, st, pads)
        measures = {}
        for product, by_lowering in fns.items():
            if product == "input_grad" and not needs_dx:
                continue
            for lowering, fn in by_lowering.items():
                def one(fn=fn) -> float:
                    _, sec = common.timed_steps(lambda _: fn(x, w, g), None, reps)
                    return sec
                measures[f"{product}:{lowering}"] = one
        t = common.paired(measures, rounds=rounds, warmup=1)
        ms = {key: 1e3 * common.median(v) for key, v in t.items()}
        meta["shapes"][name] = {"ms": ms, "auto_plan": plan, "count": count}
        for i, product in enumerate(("forward", "input_grad", "kernel_grad")):
            mine = {key.split(":")[1]: v for key, v in ms.items() if key.startswith(product + ":")}
            if not mine:
                continue
            best = min(mine, key=mine.get)
            total["fastest"] += count * mine[best]
            total["auto"] += count * mine[plan[i]]
            if with_torch:
                total["auto_torch"] += count * mine[plan_torch[i]]
            detail = ", ".join(f"{lw} {v:.2f}" for lw, v in sorted(mine.items(), key=lambda kv: kv[1]))
            ratio = mine[plan[i]] / mine[best]
            rows.append(Row("P7", f"{name} x{count}: {product}, auto uses {plan[i]}", mine[plan[i]], "ms",
                            "fastest lowering", plan[i] == best or ratio <= 1.1,
                            f"{detail} (ms); auto/fastest {ratio:.2f}"))
    rows.append(Row("P7", "sum over the model's convolutions, auto's lowerings", total["auto"], "ms", "info", None,
                    f"fastest per product: {total['fastest']:.0f} ms"
                    + (f"; auto_torch's lowerings: {total['auto_torch']:.0f} ms" if with_torch else "")))
    meta["total_ms"] = total
    return rows, meta


def main(argv=None):
    def extra(p):
        p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 5)")
        p.add_argument("--reps", type=int, default=None, help="calls per measurement (default 3)")

    return common.standard_main(NAME, __doc__.splitlines()[0], run, argv, extra)


if __name__ == "__main__":
    main()
