"""P3: compilations across every stage of a Ballot run and an LTH run sharing one Context.

Runs the shared dense stage, then every stage of ``ballot`` and of ``lth`` (iterative, 95%
sparsity: 14 pruning rounds) through ``loop.run_stages`` (with Orbax checkpoints, as experiments
run) on tiny synthetic data, with one ``loop.Context``, and evaluates each result on the test
split. Counts ``train.compilation_count(ctx.train_step)`` (goal: one entry, there is one batch
shape) and every XLA compilation seen by the ``jax_log_compiles`` log (function name and
argument shapes), so a function compiled twice for the same shapes shows up as a duplicate.
Op-by-op (eager) compilations of single ``jax.numpy`` operations outside ``jit`` are counted
separately: they are compiled once per shape and then cached as well.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.common import Row  # noqa: E402

NAME = "compilations"
# jitted functions of the library (named functions); everything else is an eager single op.
_LIBRARY_FUNCTIONS = ("jit(step)", "jit(_device_batch_impl)", "jit(per_group_gradient_sums)")


def run_methods(smoke: bool) -> dict:
    """Dense + Ballot + LTH on one fresh Context; compile records and the train step cache size."""
    from ballot_jax import experiment, loop, methods, train
    from ballot_jax.methods import common as mcommon

    hw = 8
    cfg = common.config(model="cnn_small", retrain_epochs=1, dense_epochs=1, batch_size=16, eval_batch_size=32,
                        sparsity=0.2 if smoke else 0.95, augment=True, seeds=1, ballot={"diag_batches": 1})
    task = common.synthetic_task(n_train=48, n_val=40, n_test=40, hw=hw, num_classes=3, num_groups=4)
    model = common.small_resnet(num_classes=3, smoke=True)
    ctx = experiment.make_context(cfg, task, model)
    variables = experiment.init_variables(model, task.image_shape, 0)
    per_method = {}
    t0 = time.perf_counter()
    # Full runs checkpoint into a temporary directory as experiments do; smoke runs skip Orbax.
    with tempfile.TemporaryDirectory() as workdir, common.CompileLog() as log:
        where = (lambda name: None) if smoke else (lambda name: f"{workdir}/{name}")
        dense, _ = loop.run_stages(ctx, [mcommon.dense_stage(ctx)], loop.initial_state(ctx, variables), where("dense"))
        per_method["dense"] = list(log.compiles)
        for name in ("ballot", "lth"):
            mark = len(log.compiles)
            method = methods.get(name)
            state, _ = loop.run_stages(ctx, method.stages(ctx), method.initial_state(ctx, dense), where(name))
            loop.evaluate(ctx, state.train, "test")
            per_method[name] = log.compiles[mark:]
        stages = {n: [s.name for s in methods.get(n).stages(ctx)] for n in ("ballot", "lth")}
    seconds = time.perf_counter() - t0
    return {"log": log, "per_method": per_method, "stages": stages, "seconds": seconds,
            "cache": train.compilation_count(ctx.train_step),
            "step_compile_seconds": sum(d for n, d in log.backend if n == "jit(step)"),
            "step_compiles": sum(1 for n, _ in log.backend if n == "jit(step)")}


def run(smoke: bool = False) -> tuple[list[Row], dict]:
    before = run_methods(smoke)
    log, per_method, stages, seconds = before["log"], before["per_method"], before["stages"], before["seconds"]
    cache = before["cache"]
    # Eager ops are keyed by static parameters that the log does not show: check jitted functions only.
    dups = [d for d in log.duplicates() if d[0] in _LIBRARY_FUNCTIONS]
    lib = {n: c for n, c in log.by_name().items() if n in _LIBRARY_FUNCTIONS}
    eager = sum(c for n, c in log.by_name().items() if n not in _LIBRARY_FUNCTIONS)
    lth_new = [n for n, _ in per_method["lth"]]
    lth_new_lib = [n for n in lth_new if n in _LIBRARY_FUNCTIONS]
    rows = [
        Row("P3", "train step compilations, dense + Ballot + LTH stages (one shape)", cache, "compiles", "1",
            cache == 1,
            f"ballot stages {stages['ballot']}, lth {len(stages['lth'])} stages"),
        Row("P3", "same function compiled again for the same shapes", len(dups), "count", "0", len(dups) == 0,
            "; ".join(f"{n} x{c}" for n, _, c in dups[:5])),
        Row("P3", "jitted library functions compiled (all stages, both methods)", sum(lib.values()), "compiles",
            "one per function and shape", None, ", ".join(f"{n}: {c}" for n, c in lib.items())),
        Row("P3", "jitted library functions compiled during the LTH run (after Ballot)", len(lth_new_lib),
            "compiles", "0 (all shared)", len(lth_new_lib) == 0, ", ".join(lth_new_lib)),
        Row("P3", "op-by-op (eager) compilations, all stages", eager, "compiles", "info", None,
            f"{len(lth_new) - len(lth_new_lib)} of them during the LTH run; compile time in all: {log.seconds:.1f} s "
            f"of {seconds:.1f} s"),
    ]
    meta = {"by_name": log.by_name(), "duplicates": [(n, s, c) for n, s, c in dups], "stages": stages,
            "per_method": {k: [n for n, _ in v] for k, v in per_method.items()}, "compile_seconds": log.seconds,
            "seconds": seconds, "train_step_cache_size": cache}
    return rows, meta


def main(argv=None):
    return common.standard_main(NAME, __doc__.splitlines()[0], run, argv)


if __name__ == "__main__":
    main()
