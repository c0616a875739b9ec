"""Pruning methods, each a list of stages plus the function that chooses its mask.

Every method plugs into the same machinery (:mod:`ballot_jax.loop`), prunes the same layers
(:func:`ballot_jax.masks.prunable_filter`) to the same sparsity with the same retraining budget.
Look methods up by name with :func:`get`; :func:`names` lists them.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from ballot_jax import loop


@dataclasses.dataclass(frozen=True)
class Method:
    """A registered method.

    ``from_dense``: the method starts from the shared dense run of its seed (its final state is
    passed to ``initial_state``); otherwise it starts from θ0. ``initial_state(ctx, state)``
    gives the method's full run state (every checkpoint has its structure); ``stages(ctx)`` its
    stages. ``description`` is one line for tables and ``--help``.
    """

    name: str
    description: str
    from_dense: bool
    initial_state: Callable[[loop.Context, loop.RunState], loop.RunState]
    stages: Callable[[loop.Context], Sequence[loop.Stage]]


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Adds a method to the registry (a name may be registered once)."""
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


def _load_builtin() -> None:
    # Importing the modules registers their methods.
    from ballot_jax.methods import ballot  # noqa: F401

    for module in ("magnitude", "lth", "random", "safecompress", "fairscratch"):
        try:
            __import__(f"ballot_jax.methods.{module}")
        except ModuleNotFoundError as e:
            if e.name != f"ballot_jax.methods.{module}":
                raise


def names() -> list[str]:
    """Registered method names, sorted."""
    _load_builtin()
    return sorted(_REGISTRY)


def get(name: str) -> Method:
    """The method called ``name``; an unknown name gets an error listing the valid ones."""
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(sorted(_REGISTRY))}") from None


def parse(spec: str | Sequence[str]) -> list[str]:
    """Method names from ``"all"``, ``"ballot,lth"`` or a list; each name is validated."""
    if isinstance(spec, str):
        spec = names() if spec.strip() == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    out = [get(n).name for n in spec]
    if not out:
        raise ValueError(f"no methods given; valid methods: {', '.join(names())} (or 'all')")
    return out
