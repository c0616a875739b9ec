"""Pruning methods, each a list of stages plus the function that chooses its mask.

Every method plugs into the same machinery (:mod:`ballot_jax.loop`), prunes the same layers
(:func:`ballot_jax.masks.prunable_filter`) to the same sparsity with the same retraining budget.
Look methods up by name with :func:`get`; :func:`names` lists them.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Sequence

from ballot_jax import config as config_lib
from ballot_jax import loop


@dataclasses.dataclass(frozen=True)
class Method:
    """A registered method.

    ``from_dense``: the method starts from the shared dense run of its seed (its final state is
    passed to ``initial_state``); otherwise it starts from θ0. ``initial_state(ctx, state)``
    gives the method's full run state (every checkpoint has its structure); ``stages(ctx)`` its
    stages. ``description`` is one line for tables and ``--help``. ``parse_variant(tokens)``, when
    given, turns the parts of a name ``"<name>:<part>:<part>"`` into config overrides, so variants
    of one method run side by side in one comparison (sharing each seed's dense run).
    ``check(config)``, when given, raises ``ValueError`` for a bad option before anything runs.
    """

    name: str
    description: str
    from_dense: bool
    initial_state: Callable[[loop.Context, loop.RunState], loop.RunState]
    stages: Callable[[loop.Context], Sequence[loop.Stage]]
    parse_variant: Callable[[list[str]], dict[str, Any]] | None = None
    check: Callable[[Any], None] | None = None


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
    """The method called ``name``, or a variant ``"<name>:<part>..."`` of it; an unknown name gets
    an error listing the valid ones."""
    _load_builtin()
    base_name, *parts = name.split(":")
    try:
        base = _REGISTRY[base_name]
    except KeyError:
        raise ValueError(f"unknown method {base_name!r}; valid methods: {', '.join(sorted(_REGISTRY))} "
                         "(variants: ballot:<criterion>[:<trajectory>][:<retrain_from>])") from None
    if not parts:
        return base
    if base.parse_variant is None:
        raise ValueError(f"method {base_name!r} has no variants (got {name!r})")
    overrides = base.parse_variant(parts)
    return dataclasses.replace(
        base,
        name=name,
        description=f"{base.description} [{', '.join(f'{k}={v}' for k, v in overrides.items())}]",
        initial_state=lambda ctx, state: base.initial_state(with_options(ctx, overrides), state),
        stages=lambda ctx: base.stages(with_options(ctx, overrides)),
        check=None if base.check is None else lambda config: base.check(_overridden(config, overrides)),
    )


def check(names: Sequence[str], config: Any) -> None:
    """Validates every method's options in ``config`` (``ValueError`` naming the problem)."""
    for name in names:
        method = get(name)
        if method.check is not None:
            method.check(config)


def _overridden(config: Any, overrides: dict[str, Any]) -> Any:
    return config_lib.override(copy.deepcopy(config), overrides)


def with_options(ctx: loop.Context, overrides: dict[str, Any]) -> loop.Context:
    """``ctx`` with config keys overridden (dotted keys, ``"ballot.criterion"``; compiled steps and
    caches shared)."""
    return dataclasses.replace(ctx, config=_overridden(ctx.config, overrides))


def directory_name(name: str) -> str:
    """A method's folder name in a work directory (``ballot:taylor:dense`` → ``ballot-taylor-dense``)."""
    return name.replace(":", "-")


def parse(spec: str | Sequence[str]) -> list[str]:
    """Method names from ``"all"``, ``"ballot,lth"`` or a list; each name is validated."""
    if isinstance(spec, str):
        spec = names() if spec.strip() == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    out = [get(n).name for n in spec]
    if not out:
        raise ValueError(f"no methods given; valid methods: {', '.join(names())} (or 'all')")
    return out
