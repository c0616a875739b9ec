"""One process of a simulated multi-host run (CPU, 4 devices per process), used by test_parallel.

Usage: python multihost_job.py PROCESS_ID NUM_PROCESSES PORT WORKDIR OUT.npz

Starts JAX's distributed runtime on localhost through ``parallel.initialize`` (the environment
variables a real cluster launcher would set), builds the context with ``experiment.make_context``
(a mesh over the devices of every process, process-local batches), runs the dense stage and
Ballot with Orbax checkpoints in WORKDIR, and (process 0) saves votes, mask and test metrics.
"""

from __future__ import annotations

import os
import sys

pid, nproc, port, workdir, out = sys.argv[1:6]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=nproc, JAX_PROCESS_ID=pid)
sys.path.insert(0, os.path.dirname(__file__))

import ml_collections  # noqa: E402

from ballot_jax import config as config_lib  # noqa: E402
from ballot_jax import parallel  # noqa: E402

parallel.initialize(ml_collections.ConfigDict({"distributed": True}))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ballot_jax import experiment, loop, masks, methods  # noqa: E402
from ballot_jax.methods import common  # noqa: E402
from helpers import TinyNet  # noqa: E402
from test_parallel import CONFIG, array_task  # noqa: E402


def main() -> None:
    assert jax.process_count() == int(nproc) and jax.device_count() == 4 * int(nproc), jax.devices()
    cfg = config_lib.make(CONFIG, seed_offset=0)
    ctx = experiment.make_context(cfg, array_task(), TinyNet())
    assert isinstance(ctx.task.train, parallel.ProcessLocalSplit)
    assert ctx.sharding.mesh.size == jax.device_count()
    variables = TinyNet().init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    dense, _ = loop.run_stages(ctx, [common.dense_stage(ctx)], loop.initial_state(ctx, variables), f"{workdir}/dense")
    m = methods.get("ballot")
    state, meta = loop.run_stages(ctx, m.stages(ctx), m.initial_state(ctx, dense), f"{workdir}/ballot")
    test = loop.evaluate(ctx, state.train, "test")
    names = masks.layer_names(state.train.mask)
    experiment._write_json(f"{out}.p{pid}.json", {"accuracy": test["accuracy"]})  # process 0 only
    if parallel.is_main_process():
        np.savez(out, accuracy=test["accuracy"], cwv=test["cwv"], mcd=test["mcd"],
                 losses=np.array([e["train_loss"] for e in meta["log"] if "train_loss" in e]),
                 **{"mask/" + k: v for k, v in masks.to_numpy(state.train.mask).items()},
                 **{"votes/" + k: np.asarray(v) for k, v in zip(names, masks.prunable_leaves(state.votes, state.train.mask))})
    print("DONE", pid, flush=True)


if __name__ == "__main__":
    main()
