r"""The selection-criteria ablation: Ballot variants and the baselines in one comparison.

    python experiments/ablation.py --config=configs/quickstart.py:bench --config.seeds=5
    python experiments/ablation.py --config=configs/utkface.py:bench \
        --config.manual_dir=../shared/data --config.data_dir=/tmp/tfds
    python experiments/ablation.py --combine=runs/quickstart_bench_ablation,runs/utkface_bench_ablation

Runs (or resumes: finished runs are skipped) every method of ``--variants`` and ``--baselines``
on one work directory, so each seed's dense model is shared by all of them, writes the usual
reports plus ``ablation.md`` (tables and the default chosen on the validation split, see
:mod:`ballot_jax.ablation`) and prints it. ``--combine`` reads finished ablations instead and
prints the one default chosen over all of them (validation only).
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from ballot_jax import cli

DEFAULT_VARIANTS = ("ballot,ballot:magnitude_veto,ballot:taylor:dense,ballot:group_balanced:dense,"
                    "ballot:magnitude_veto:trained")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file with variants, e.g. configs/utkface.py:bench",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory (default: runs/<config>_ablation[_<hash>]).")
_VARIANTS = flags.DEFINE_string("variants", DEFAULT_VARIANTS, "Ballot variants, comma-separated (ballot:<criterion>"
                                "[:<trajectory>][:<retrain_from>]).")
_BASELINES = flags.DEFINE_string("baselines", "lth,magnitude,random", "Baselines run beside them.")
_COMBINE = flags.DEFINE_list("combine", [], "Instead of running: work directories of finished ablations whose "
                             "validation choices are combined into one default (ablation.choose_across).")
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    """Runs the ablation comparison and writes ``ablation.md``."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from ballot_jax import ablation, experiment, methods

    if _COMBINE.value:
        choices = {d: ablation.choose(experiment.load_results(d)) for d in _COMBINE.value}
        both = ablation.choose_across(choices)
        for name in sorted(both["mean_ratio"], key=both["mean_ratio"].get):
            per = ", ".join(f"{choices[d]['scores'][name]['unfairness_ratio']:.3f}" for d in choices)
            print(f"{name:45s} mean val unfairness ratio {both['mean_ratio'][name]:.3f} ({per})"
                  f"{'' if name in both['qualifying'] else '  (does not qualify everywhere)'}")
        print(f"chosen: {both['chosen']}")
        return
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/quickstart.py:bench")
    try:
        names = methods.parse(f"{_VARIANTS.value},{_BASELINES.value}")
    except ValueError as e:
        sys.exit(f"error: {e}")
    config.methods = ",".join(names)
    overrides = config_flags.get_override_values(FLAGS["config"])
    workdir = _WORKDIR.value or cli.default_workdir(config, overrides) + "_ablation"
    t0 = time.perf_counter()
    results, _ = cli.run_job(config, workdir)
    text = ablation.ablation_markdown(results)
    with open(os.path.join(workdir, "ablation.md"), "w") as f:
        f.write(f"# Ablation: {config.name}:{config.variant}\n\n{text}")
    print(text)
    print(f"wall time: {time.perf_counter() - t0:.0f} s; wrote {os.path.join(workdir, 'ablation.md')}")


def main_with_clean_errors(argv: list[str]) -> None:
    """:func:`main` with a user's mistake reported in one line (``--debug``: the traceback)."""
    with cli.user_errors():
        main(argv)


if __name__ == "__main__":
    app.run(main_with_clean_errors, flags_parser=cli.parse_flags)
