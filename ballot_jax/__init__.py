"""ballot_jax: fair sparse subnetworks (Ballot, ISSTA 2024) in JAX/Flax.

Public entry points: :func:`select_subnetwork` (Ballot's mask for your own model and data) and
:func:`run_experiment` (every method × seed on a configured task). Modules: ``masks``,
``fairness``, ``models``, ``train``, ``data``, ``conflicts``, ``loop``, ``methods``.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["select_subnetwork", "run_experiment", "SubnetworkResult"]


def __getattr__(name: str) -> Any:
    # Lazy: `import ballot_jax` stays cheap; the heavy modules load on first use.
    if name in ("select_subnetwork", "SubnetworkResult"):
        from ballot_jax import selection

        return getattr(selection, name)
    if name == "run_experiment":
        from ballot_jax import experiment

        return experiment.run_experiment
    raise AttributeError(f"module 'ballot_jax' has no attribute {name!r}")
