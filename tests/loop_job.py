"""A small Ballot pipeline on fake data, run in a subprocess by the resume tests.

Usage: python loop_job.py WORKDIR OUT.npz [PAUSE_AT]

PAUSE_AT ("stage:epoch", e.g. "ticket:1") prints a line after every epoch and sleeps for a long
time after the named one, so a test can SIGKILL the job there; "any" sleeps after every epoch.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

import jax
import jax.numpy as jnp
import numpy as np

from ballot_jax import config as config_lib
from ballot_jax import loop, masks, methods, train
from ballot_jax.methods import common
from helpers import TinyNet
from fakes import fake_task


def main(workdir: str, out: str, pause: str = "") -> None:
    task = fake_task()
    cfg = config_lib.make(sparsity=0.6, retrain_epochs=3, dense_epochs=2, batch_size=16, augment=False,
                          ballot={"vote_epochs": 3})
    opt = train.OptimizerConfig()
    model = TinyNet()
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    ctx = loop.Context(apply_fn=model.apply, task=task, config=cfg, opt=opt, tx=train.make_optimizer(opt), seed=0,
                       batch_size=16, eval_batch_size=32, is_prunable=masks.prunable_filter())
    if pause:
        inner = loop.train_epoch

        def slow_epoch(*a, **k):
            out_ = inner(*a, **k)
            print("EPOCH", k["stage"], k["epoch"], flush=True)
            if pause in ("any", f"{k['stage']}:{k['epoch']}"):
                time.sleep(600)
            return out_

        loop.train_epoch = slow_epoch
    dense, _ = loop.run_stages(ctx, [common.dense_stage(ctx)], loop.initial_state(ctx, variables), f"{workdir}/dense")
    m = methods.get("ballot")
    final, meta = loop.run_stages(ctx, m.stages(ctx), m.initial_state(ctx, dense), f"{workdir}/ballot")
    test = loop.evaluate(ctx, final.train, "test")
    np.savez(out, accuracy=test["accuracy"], cwv=test["cwv"], mcd=test["mcd"],
             **{"mask/" + k: v for k, v in masks.to_numpy(final.train.mask).items()},
             **{"votes/" + k: np.asarray(v) for k, v in zip(masks.layer_names(final.votes), masks.prunable_leaves(final.votes, final.votes))},
             **{"param/" + k: np.asarray(v) for k, v in zip(masks.layer_names(final.train.mask), masks.prunable_leaves(final.train.params, final.train.mask))})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "")
