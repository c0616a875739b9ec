"""Where the train step's time goes: per-operation times from a ``jax.profiler`` trace.

    python benchmarks/profile_ops.py --model small --impl auto      # ResNet-18 w0.25, 32x32
    python benchmarks/profile_ops.py --model reference --impl xla   # ResNet-18, ImageNet stem, 64x64
    python benchmarks/profile_ops.py --vote-step                    # the voting train step

Traces ``steps`` train steps, reads the trace back with ``jax.profiler.ProfileData`` and sums the
XLA:CPU thunk events (one per executed HLO operation or fusion, on the XLA threads) by
name and by kind (the name without its ``.N`` suffix). Not a pass/fail benchmark: it is the tool
used to explain the numbers in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import collections
import glob
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

_SKIP = ("ThreadpoolListener", "end: ", "ThunkExecutor", "PjitFunction", "$")


def op_times(fn, steps: int) -> tuple[dict[str, float], float]:
    """(op name -> seconds over ``steps`` calls of ``fn()``, wall seconds) from a profiler trace."""
    from jax.profiler import ProfileData

    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        with jax.profiler.trace(d):
            for _ in range(steps):
                fn()
        wall = time.perf_counter() - t0
        files = glob.glob(f"{d}/**/*.xplane.pb", recursive=True)
        data = ProfileData.from_file(files[0])
        totals: dict[str, float] = collections.defaultdict(float)
        for plane in data.planes:
            if plane.name != "/host:CPU":
                continue
            for line in plane.lines:
                if line.name == "python":
                    continue
                for ev in line.events:
                    if not ev.name.startswith(_SKIP):
                        totals[ev.name] += ev.duration_ns * 1e-9
    return dict(totals), wall


def kind(name: str) -> str:
    return re.sub(r"[.\d]+$", "", name)


def summarize(totals: dict[str, float], steps: int, top: int = 25) -> str:
    total = sum(totals.values())
    by_kind: dict[str, float] = collections.defaultdict(float)
    for n, t in totals.items():
        by_kind[kind(n)] += t
    lines = [f"ops total {total / steps * 1e3:.1f} ms/step", "", "by kind:"]
    for k, t in sorted(by_kind.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {k:<40} {t / steps * 1e3:8.2f} ms/step  {100 * t / total:5.1f}%")
    lines += ["", f"top {top} ops:"]
    for n, t in sorted(totals.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {n:<40} {t / steps * 1e3:8.2f} ms/step  {100 * t / total:5.1f}%")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("small", "reference"), default="small")
    p.add_argument("--impl", default="auto", help="auto, auto_torch, xla, patches, hybrid, torch or a plan forward/input_grad/kernel_grad")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--vote-step", action="store_true", help="profile the voting train step instead")
    p.add_argument("--dense", action="store_true", help="a mask of None leaves (no mask ops) instead of 95%% sparse")
    p.add_argument("--hlo", default=None, help="write the optimized HLO text of the step here")
    args = p.parse_args(argv)
    from benchmarks.masked_step import make_states
    from ballot_jax import conflicts, train

    if args.model == "small":
        model, hw = common.small_resnet(num_classes=10, conv_impl=args.impl), 32
    else:
        model, hw = common.reference_resnet(args.impl, num_classes=10), 64
    masked, dense, batch, tx = make_states(model, hw)
    state = dense if args.dense else masked
    lr = np.float32(0.01)
    if args.vote_step:
        step = conflicts.make_voting_train_step(model.apply, tx)
        w = jax.numpy.ones((2,), jax.numpy.float32)
        call = lambda s: step(s, batch, lr, w)  # noqa: E731
    else:
        step = train.make_train_step(model.apply, tx)
        call = lambda s: step(s, batch, lr)  # noqa: E731
    if args.hlo:
        step_args = (state, batch, lr, w) if args.vote_step else (state, batch, lr)
        Path(args.hlo).write_text(step.lower(*step_args).compile().as_text())
    box = {"s": call(state)[0]}
    common.block(box["s"])

    def one():
        box["s"] = call(box["s"])[0]
        common.block(box["s"])

    totals, wall = op_times(one, args.steps)
    print(f"{args.model} model, conv_impl={args.impl}, {'dense ' if args.dense else ''}"
          f"{'voting ' if args.vote_step else ''}train step; "
          f"{wall / args.steps * 1e3:.1f} ms/step wall under the profiler; {common.load_str()}")
    print(summarize(totals, args.steps))


if __name__ == "__main__":
    main()
