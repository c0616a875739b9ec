"""Test helpers shared by several test modules: a tiny Flax model, random batches, and
``experiments/run.py`` called in this process.

(Kept out of conftest.py: several conftest modules exist and `import conftest` is ambiguous.)
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import sys
import types

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TinyNet(nn.Module):
    """Conv -> BN -> relu -> pool -> dense: two prunable kernels ("stem", "head")."""

    num_classes: int = 3
    features: int = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.features, (3, 3), use_bias=False, name="stem")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x)
        x = nn.relu(x)
        x = nn.Conv(self.features, (3, 3), use_bias=False, name="conv")(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)




def random_batch(seed: int, n: int = 16, num_classes: int = 3, num_groups: int = 2, hw: int = 8):
    """A deterministic random batch {image, label, group, weight}."""
    rng = np.random.default_rng(seed)
    return {
        "image": jnp.asarray(rng.normal(size=(n, hw, hw, 3)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, num_classes, n), jnp.int32),
        "group": jnp.asarray(rng.integers(0, num_groups, n), jnp.int32),
        "weight": jnp.ones((n,), jnp.float32),
    }


@functools.cache
def run_script() -> types.ModuleType:
    """``experiments/run.py`` as a module, loaded once per process (loading defines its absl flags)."""
    spec = importlib.util.spec_from_file_location("ballot_run_script", os.path.join(REPO, "experiments", "run.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def call_run_script(argv: list[str], *, as_command: bool = False) -> None:
    """``python experiments/run.py *argv`` from the repository root, in this process.

    ``as_command``: through the same entry as the command line (``cli.parse_flags``, then
    ``main_with_clean_errors``), so a user's mistake ends in ``SystemExit(2)`` with one
    ``error: …`` line on stderr; otherwise the flags are parsed and ``main`` called, and errors
    propagate. absl's global flag state is restored afterwards either way.
    """
    from ballot_jax import cli  # pylint: disable=import-outside-toplevel

    mod = run_script()
    cwd, saved_argv = os.getcwd(), sys.argv
    os.chdir(REPO)  # the documented commands run from the repository root
    sys.argv = ["run.py", *argv]  # config_flags reads its overrides from sys.argv
    try:
        if as_command:
            mod.main_with_clean_errors(cli.parse_flags(sys.argv))
        else:
            mod.main(mod.FLAGS(sys.argv))
    finally:
        os.chdir(cwd)
        sys.argv = saved_argv
        mod.FLAGS.unparse_flags()
        for name in [n for n in mod.FLAGS if n.startswith("config.")]:  # overrides are defined per parse
            delattr(mod.FLAGS, name)
        root = logging.getLogger()
        for h in [h for h in root.handlers if isinstance(h, logging.FileHandler)
                  and h.baseFilename.endswith(cli.RUN_LOG)]:
            root.removeHandler(h)
            h.close()
