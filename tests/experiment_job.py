"""A tiny quickstart comparison (dense, Ballot, magnitude; one seed), run in a subprocess by the
crash-resume and determinism tests of ``tests/test_experiment_resume.py``.

Usage: python experiment_job.py WORKDIR [PAUSE] [SEED_OFFSET]

It prints ``EPOCH <run> <stage> <epoch>`` after every training epoch (before that epoch's
checkpoint is written), ``DONE <method>`` after each finished method run, and ``PAUSED`` just
before it sleeps for a long time at the point named by PAUSE, so that the test can SIGKILL it there:

  epoch:<run>:<stage>:<epoch>   after that epoch, before its checkpoint (e.g. ``epoch:dense:dense:0``,
                                ``epoch:ballot:ticket:0`` — inside the voting trajectory)
  after:<method>                after that method's run has finished, before the next one starts
  ckpt:<run>:<n>                inside the write of that run's checkpoint n (0 is written when the
                                first stage begins, then one after every epoch and stage end): the
                                data is in Orbax's temporary directory, not yet renamed to its step
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from orbax.checkpoint.path import atomicity  # noqa: E402

from ballot_jax import config as config_lib  # noqa: E402
from ballot_jax import experiment, loop  # noqa: E402

OVERRIDES = {"seeds": 1, "dense_epochs": 2, "retrain_epochs": 2, "methods": "ballot,magnitude", "progress": False,
             "plots": False, "ballot.vote_epochs": 2, "ballot.diag_batches": 0}


def quickstart_config(seed_offset: int = 0):
    """configs/quickstart.py with :data:`OVERRIDES` (a run of a few tens of seconds)."""
    spec = importlib.util.spec_from_file_location("quickstart_config", os.path.join(REPO, "configs", "quickstart.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config()
    return config_lib.override(config, dict(OVERRIDES, seed_offset=seed_offset))


def _pause() -> None:
    print("PAUSED", flush=True)
    time.sleep(900)


def install_hooks(pause: str) -> None:
    """Wraps the loop's run/epoch functions and Orbax's commit step to print progress and pause."""
    current = {"run": ""}

    run_stages = loop.run_stages

    def run_stages_named(ctx, stages, state, directory, *, run_name="", **kw):
        current["run"] = run_name.split()[-1]
        return run_stages(ctx, stages, state, directory, run_name=run_name, **kw)

    train_epoch = loop.train_epoch

    def train_epoch_logged(*a, **kw):
        out = train_epoch(*a, **kw)
        print("EPOCH", current["run"], kw["stage"], kw["epoch"], flush=True)
        if pause == f"epoch:{current['run']}:{kw['stage']}:{kw['epoch']}":
            _pause()
        return out

    run_method = experiment.run_method

    def run_method_logged(ctx, name, *a, **kw):
        out = run_method(ctx, name, *a, **kw)
        print("DONE", name, flush=True)
        if pause == f"after:{name}":
            _pause()
        return out

    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize_paused(self, *a, **kw):
        step = self.get().name.split(".")[0]  # "<n>.orbax-checkpoint-tmp…" for a whole checkpoint
        if pause == f"ckpt:{current['run']}:{step}":
            print("WRITING", self.get(), flush=True)
            _pause()
        return await finalize(self, *a, **kw)

    loop.run_stages, loop.train_epoch, experiment.run_method = run_stages_named, train_epoch_logged, run_method_logged
    atomicity.AtomicRenameTemporaryPath.finalize = finalize_paused


def main(workdir: str, pause: str = "", seed_offset: int = 0) -> None:
    install_hooks(pause)
    experiment.run_comparison(quickstart_config(seed_offset), workdir)
    print("FINISHED", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "", int(sys.argv[3]) if len(sys.argv) > 3 else 0)
