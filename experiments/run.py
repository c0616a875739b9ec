r"""Runs a configured experiment: every method × seed (compare mode) or a sweep over sparsity.

    python experiments/run.py --config=configs/quickstart.py
    python experiments/run.py --config=configs/utkface.py:cpu,gender_by_race --config.seeds=5
    python experiments/run.py --config=configs/cifar100.py --config.sweep=0.5,0.8,0.9,0.95

The work directory defaults to ``runs/<config name>[_<variants>][_<hash of overrides>]``, so
rerunning the same command resumes where it stopped and skips finished runs. Outputs:
``config.json`` (the resolved config), ``results.json`` / ``.csv`` / ``.md``, ``timings.json``, PNG plots,
``run.log``; with a sweep, one such directory per sparsity plus ``sweep.md`` and its plots.
All logic lives in :mod:`ballot_jax.experiment` and :mod:`ballot_jax.report`.
"""

from __future__ import annotations

import os
import time

from absl import app, flags
from ml_collections import config_flags

from ballot_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with variants: configs/utkface.py:cpu,gender_by_race", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Work directory (default: runs/<config name>[_<variants>][_<override hash>]).")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    """Resolves the config and work directory, runs the job, prints the summary table."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from ballot_jax import experiment

    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/quickstart.py")
    overrides = config_flags.get_override_values(FLAGS["config"])
    workdir = _WORKDIR.value or cli.default_workdir(config, overrides)
    t0 = time.perf_counter()
    results, paths = cli.run_job(config, workdir)
    print()
    from ballot_jax import report
    if config.sweep:
        print(report.sweep_markdown(results))
    else:
        print(report.summary_markdown(results))
    print(f"wall time: {time.perf_counter() - t0:.0f} s; wrote {len(paths)} files under {workdir}:")
    for p in paths:
        print("  " + os.path.relpath(p, workdir))


def main_with_clean_errors(argv: list[str]) -> None:
    """:func:`main` with a user's mistake reported in one line (``--debug``: the traceback)."""
    with cli.user_errors():
        main(argv)


if __name__ == "__main__":
    app.run(main_with_clean_errors, flags_parser=cli.parse_flags)
