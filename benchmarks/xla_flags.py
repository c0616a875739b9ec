"""XLA:CPU options for convolution training, each tried on the P7 reference step (kept or not).

XLA reads ``XLA_FLAGS`` once per process, so every candidate runs ``benchmarks/throughput.py``
(ResNet-18, ImageNet stem, 64×64, batch 32, the masked train step) in its own process; the
candidates alternate over ``--rounds`` rounds (A B C …, then … C B A) so that load drifts hit all
of them alike, and the ratio to the default flags is taken per round (median over rounds).
Besides the default, the candidates are the library paths the jaxlib in use offers for
convolutions on this CPU: YNNPACK for individual convolutions and oneDNN.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.common import Row  # noqa: E402

NAME = "xla_flags"
CANDIDATES = {
    "default": "",
    "ynn_convolution": "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution",
    "onednn": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "vector_width_512": "--xla_cpu_prefer_vector_width=512",
    "ynn_eltwise": "--xla_cpu_experimental_ynn_fusion_type=+eltwise",
    "ynn_reduce": "--xla_cpu_experimental_ynn_fusion_type=+reduce",
    "no_concurrency_scheduler": "--xla_cpu_enable_concurrency_optimized_scheduler=false",
}


def _one(flags: str, impls: str, steps: int, smoke: bool) -> dict[str, float]:
    """Seconds per train step of each conv_impl, measured in a fresh process with ``flags``."""
    env = dict(os.environ, XLA_FLAGS=" ".join(f for f in (os.environ.get("XLA_FLAGS", ""), flags) if f))
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, str(Path(__file__).with_name("throughput.py")), "--out", out, "--impls", impls,
               "--steps", str(steps), "--rounds", "1"] + (["--smoke"] if smoke else [])
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"XLA_FLAGS={flags!r} failed:\n{proc.stderr[-2000:]}")
        with open(os.path.join(out, "throughput.json")) as f:
            per_step = json.load(f)["meta"]["seconds_per_step"]
    return {impl: common.median(v) for impl, v in per_step.items()}


def run(smoke: bool = False, rounds: int | None = None, steps: int | None = None, impls: str = "xla,auto",
        candidates: str = ",".join(CANDIDATES)) -> tuple[list[Row], dict]:
    names = [c.strip() for c in candidates.split(",") if c.strip()]
    if smoke:  # that the flags reach a fresh process: the default and one candidate, one lowering
        names, impls = names[:2], impls.split(",")[-1]
    rounds = rounds or (1 if smoke else 2)
    steps = steps or (1 if smoke else 4)
    times: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    errors: dict[str, str] = {}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            if name in errors:
                continue
            try:
                times[name].append(_one(CANDIDATES[name], impls, steps, smoke))
            except RuntimeError as e:
                errors[name] = str(e).splitlines()[-1][:200]
    rows = []
    base = times.get("default") or []
    for name in names:
        if name in errors:
            rows.append(Row("P7", f"XLA flags '{name}': failed", None, "", "info", None, errors[name]))
            continue
        for impl in impls.split(","):
            per_step = [t[impl] for t in times[name]]
            note = f"{common.median(per_step) * 1e3:.0f} ms/step; {CANDIDATES[name] or '(no flags)'}"
            if name == "default" or len(base) != len(per_step):
                rows.append(Row("P7", f"train step, conv_impl={impl}, XLA flags '{name}'",
                                common.median(per_step) * 1e3, "ms", "info", None, note))
            else:
                ratio = common.median_ratio([b[impl] for b in base], per_step)
                rows.append(Row("P7", f"speed-up of XLA flags '{name}' over default, conv_impl={impl}", ratio, "x",
                                "> 1 to keep", ratio > 1.0, note))
    return rows, {"seconds_per_step": times, "errors": errors, "candidates": {n: CANDIDATES[n] for n in names}}


def main(argv=None):
    def extra(p):
        p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 2)")
        p.add_argument("--steps", type=int, default=None, help="steps per measurement (default 4)")
        p.add_argument("--impls", default="xla,auto", help="comma-separated conv_impl values")
        p.add_argument("--candidates", default=",".join(CANDIDATES), help=f"some of {', '.join(CANDIDATES)}")

    return common.standard_main(NAME, __doc__.splitlines()[0], run, argv, extra)


if __name__ == "__main__":
    main()
