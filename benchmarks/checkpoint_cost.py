"""How long a checkpoint stops training: synchronous Orbax write vs the library's asynchronous one.

The state is a whole :class:`ballot_jax.loop.RunState` of the reference ResNet-18 (ImageNet stem,
5 classes: params, batch statistics, SGD momentum, mask, rewind point, votes and Ballot's extras
of the same size), saved as ``loop.run_stages`` saves it. "Blocking" is the time from the call to
the moment training may continue: for the synchronous write the whole write, for the asynchronous
one the copy to host (the write then overlaps the next epoch; it is waited for before the next
checkpoint). The two alternate over ``--rounds`` rounds, each into a fresh directory.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.common import Row  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

NAME = "checkpoint_cost"


def reference_state(smoke: bool):
    """A RunState of the reference model with every field a Ballot run checkpoints."""
    from ballot_jax import conflicts, loop, masks, train

    model = common.reference_resnet(smoke=smoke)
    hw = 16 if smoke else 64
    variables = jax.jit(model.init, static_argnames="train")(jax.random.PRNGKey(0), jnp.zeros((1, hw, hw, 3)),
                                                           train=False)
    tx = train.make_optimizer(train.OptimizerConfig())
    mask = masks.init_mask(variables["params"], masks.prunable_filter())
    ts = train.create_train_state(variables["params"], variables["batch_stats"], tx, mask)
    votes = masks.map_prunable(lambda m: jnp.zeros(jnp.shape(m), jnp.int32), mask)
    extras = {"score_sum": conflicts.zeros_like_mask(mask, ts.params), "trained_params": ts.params,
              "trained_batch_stats": ts.batch_stats, "rounds": jnp.zeros((), jnp.int32)}
    return loop.RunState(train=ts, rewind_params=ts.params, rewind_batch_stats=ts.batch_stats, votes=votes,
                         extras=extras)


def run(smoke: bool = False, rounds: int | None = None) -> tuple[list[Row], dict]:
    import orbax.checkpoint as ocp

    from ballot_jax import loop

    rounds = rounds or (1 if smoke else 5)
    state = reference_state(smoke)
    nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    meta = {"run": "bench", "stages": ["x"], "stage": 0, "phase": "epochs", "epoch": 1, "log": [], "done": False}

    def measure(asynchronous: bool):
        def one() -> float:
            with tempfile.TemporaryDirectory() as d:
                mngr = ocp.CheckpointManager(d, options=ocp.CheckpointManagerOptions(
                    max_to_keep=3, create=True, enable_async_checkpointing=asynchronous))
                t0 = time.perf_counter()
                if asynchronous:
                    loop._save(mngr, 0, state, meta)  # pylint: disable=protected-access  (the library's save)
                else:
                    mngr.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta)))
                    mngr.wait_until_finished()
                blocking = time.perf_counter() - t0
                mngr.wait_until_finished()
                mngr.close()
            return blocking

        return one

    t = common.paired({"sync": measure(False), "async": measure(True)}, rounds=rounds, warmup=1)
    ratio = common.median_ratio(t["sync"], t["async"])
    rows = [
        Row("P4", "checkpoint: training stopped, synchronous / asynchronous write", ratio, "x", "> 1", ratio > 1.0,
            f"{common.median(t['sync']) * 1e3:.0f} ms vs {common.median(t['async']) * 1e3:.0f} ms per checkpoint; "
            f"state {nbytes / 2**20:.1f} MiB"),
    ]
    return rows, {"seconds": t, "state_bytes": nbytes, "rounds": rounds}


def main(argv=None):
    def extra(p):
        p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 5)")

    return common.standard_main(NAME, __doc__.splitlines()[0], run, argv, extra)


if __name__ == "__main__":
    main()
