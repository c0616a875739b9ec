"""Data-parallel scale-out with ``jax.sharding``: one mesh, two shardings, the compiler does the rest.

The whole run is written as if for one device. Scaling out only changes *where arrays live*:

* every batch is split along its leading axis over the mesh axis ``"data"``
  (:func:`batch_sharding`);
* params, batch statistics, optimizer state, masks, votes and score sums are replicated on every
  device (:func:`replicated`, :func:`replicate`).

The jitted steps are unchanged. Given a sharded batch and replicated state, XLA partitions each
step itself and inserts the collectives: the mean loss, its gradient, the batch-norm statistics,
the fairness confusion counts and the (a, f) gradient sums of the vote are all reductions over
the batch axis, so they become all-reduces across devices. There is no ``pmap``, no host-side
loop over devices and no hand-written ``psum``.

The global batch size is the configured one whatever the device count
(:func:`per_device_batch` checks that it divides), so a run on 8 devices sees exactly the
batches, the learning-rate schedule and the number of steps of the same run on 1 device.

Multi-host (TPU pods, several GPU machines): :func:`initialize` starts JAX's distributed runtime
when ``config.distributed`` is true. Every process builds the same global batch order (a pure
function of seed and epoch) and keeps only the rows its own devices hold; the global
``jax.Array`` is assembled with ``jax.make_array_from_process_local_data``
(:func:`global_batch`, :class:`ProcessLocalSplit`). In a single process this is plain
``jax.device_put``. See ``docs/scaling.md``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

PyTree = Any
DATA = "data"
log = logging.getLogger(__name__)

__all__ = [
    "DATA",
    "ProcessLocalSplit",
    "batch_sharding",
    "check_batch_sizes",
    "context_sharding",
    "distribute_task",
    "global_batch",
    "initialize",
    "is_main_process",
    "make_mesh",
    "per_device_batch",
    "process_rows",
    "replicate",
    "replicated",
]


# ---------------------------------------------------------------------------------------------
# Runtime, mesh and shardings
# ---------------------------------------------------------------------------------------------


def initialize(config: Any = None) -> bool:
    """Starts JAX's multi-host runtime when ``config.distributed`` is true; call before any JAX use.

    ``jax.distributed.initialize()`` detects Cloud TPU pods, SLURM, Open MPI and Kubernetes by
    itself. Elsewhere set ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0) and
    ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` on every process. Returns whether the runtime is
    (now) initialized; a second call is a no-op.
    """
    get = config.get if hasattr(config, "get") else (lambda k, d=None: getattr(config, k, d))
    if config is None or not bool(get("distributed", False)):
        return jax.distributed.is_initialized()
    if jax.distributed.is_initialized():
        return True
    kwargs = {}
    if os.environ.get("JAX_NUM_PROCESSES"):
        kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
    if os.environ.get("JAX_PROCESS_ID"):
        kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
    jax.distributed.initialize(**kwargs)
    log.info("distributed runtime: process %d of %d, %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def is_main_process() -> bool:
    """True on the process that writes reports (process 0; always true on one host)."""
    return jax.process_index() == 0


def make_mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``devices`` (default: every device of every host).

    ``jax.make_mesh`` orders the devices for fast all-reduces on the physical topology (TPU).
    The axis is ``Auto``: shardings are propagated by the compiler, the model code knows nothing.
    """
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh((len(devices),), (DATA,), axis_types=(AxisType.Auto,), devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``"data"``; other axes whole. Fits every batch leaf."""
    return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of ``mesh``."""
    return NamedSharding(mesh, P())


def _replicated_for(where: Any) -> jax.sharding.Sharding | None:
    if where is None:
        return None
    if isinstance(where, Mesh):
        return replicated(where)
    if isinstance(where, NamedSharding):
        return replicated(where.mesh)
    if isinstance(where, jax.sharding.Sharding):
        if len(where.device_set) == 1:
            return where
        raise TypeError(f"cannot derive a replicated sharding from {where!r}; pass a Mesh or NamedSharding")
    return jax.sharding.SingleDeviceSharding(where)  # a Device


def _put(x: Any, sharding: jax.sharding.Sharding) -> Any:
    if not isinstance(x, (jax.Array, np.ndarray, np.generic)):
        return x  # None, Python scalars and other static leaves stay as they are
    if isinstance(x, jax.Array) and x.sharding == sharding and x.committed:
        return x
    if jax.process_count() == 1 or (isinstance(x, jax.Array) and not x.is_fully_addressable):
        return jax.device_put(x, sharding)
    # Multi-host: a process-local value (identical on every host) becomes one global replicated array.
    return jax.make_array_from_process_local_data(sharding, np.asarray(x), np.shape(x))


def replicate(tree: PyTree, where: Any) -> PyTree:
    """``tree``'s arrays replicated on the mesh of ``where`` (a Mesh, a NamedSharding such as the
    batch sharding, or a device); ``where=None`` returns ``tree`` unchanged.

    Arrays already placed that way are returned as they are (no copy); non-array leaves are kept.
    """
    sharding = _replicated_for(where)
    if sharding is None:
        return tree
    return jax.tree.map(lambda x: _put(x, sharding), tree)


# ---------------------------------------------------------------------------------------------
# Batch sizes and batches
# ---------------------------------------------------------------------------------------------


def per_device_batch(global_batch: int, n: int, name: str = "batch_size") -> int:
    """Rows per device of a global batch of ``global_batch`` over ``n`` devices.

    The global batch is the configured one whatever ``n`` (same batches, schedule and step count
    on every device count); it must divide evenly.
    """
    global_batch, n = int(global_batch), int(n)
    if n < 1:
        raise ValueError(f"need at least one device, got {n}")
    if global_batch < 1 or global_batch % n:
        raise ValueError(f"{name} {global_batch} does not divide over {n} devices: use a multiple of {n}")
    return global_batch // n


def check_batch_sizes(config: Any, n: int) -> dict[str, int]:
    """Per-device sizes of ``config.batch_size`` and ``config.eval_batch_size`` (errors name the key)."""
    return {k: per_device_batch(int(config[k]), n, k) for k in ("batch_size", "eval_batch_size")}


def context_sharding(config: Any) -> NamedSharding | None:
    """The batch sharding a run uses: over every device when there are several and
    ``config.data_parallel`` (default true); ``None`` (plain single-device jit) otherwise.

    Checks that both batch sizes divide over the devices.
    """
    get = config.get if hasattr(config, "get") else (lambda k, d=None: getattr(config, k, d))
    if not bool(get("data_parallel", True)):
        if jax.process_count() > 1:
            raise ValueError("config.distributed needs config.data_parallel=True (one mesh over all hosts)")
        return None
    if jax.device_count() == 1:
        return None
    mesh = make_mesh()
    check_batch_sizes(config, mesh.size)
    return batch_sharding(mesh)


def process_rows(sharding: jax.sharding.Sharding, global_rows: int) -> np.ndarray:
    """The rows of a global batch of ``global_rows`` that this process's devices hold, in the
    order ``jax.make_array_from_process_local_data`` expects them (ascending)."""
    shape = (int(global_rows),)
    starts = set()
    for index in sharding.addressable_devices_indices_map(shape).values():
        sl = index[0]
        starts.add((sl.start or 0, shape[0] if sl.stop is None else sl.stop))
    return np.concatenate([np.arange(a, b) for a, b in sorted(starts)]) if starts else np.zeros(0, np.int64)


def global_batch(batch: dict, sharding: jax.sharding.Sharding) -> dict:
    """A host batch holding the *global* rows → a global ``jax.Array`` per leaf, split by ``sharding``.

    One process: ``jax.device_put``. Several: each process keeps the rows its devices hold
    (:func:`process_rows`) and ``jax.make_array_from_process_local_data`` assembles the global
    array; no process ever sends data to another.
    """
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    rows = None
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        if rows is None:
            rows = process_rows(sharding, v.shape[0])
        out[k] = jax.make_array_from_process_local_data(sharding, v[rows], v.shape)
    return out


@dataclasses.dataclass
class ProcessLocalSplit:
    """A :class:`ballot_jax.data.Split` for multi-host runs: same batches, assembled per process.

    Every process iterates the wrapped split's global batch order (identical on all hosts: a pure
    function of seed and epoch) without placing it, then keeps its own rows and builds the global
    array (:func:`global_batch`). Single-process runs do not need it (the split's own
    ``device_put`` does the same).
    """

    inner: Any

    @property
    def num_examples(self) -> int:
        return self.inner.num_examples

    def num_batches(self, batch_size: int, drop_remainder: bool) -> int:
        return self.inner.num_batches(batch_size, drop_remainder)

    def batches(self, *, sharding: Any = None, **kwargs: Any) -> Iterator[dict]:
        for batch in self.inner.batches(sharding=None, **kwargs):
            yield batch if sharding is None else global_batch(batch, sharding)

    def __getattr__(self, name: str) -> Any:  # image_shape, name, ... of the wrapped split
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def distribute_task(task: Any) -> Any:
    """``task`` with every split wrapped in :class:`ProcessLocalSplit` when several processes run;
    ``task`` itself otherwise."""
    if jax.process_count() == 1:
        return task
    wrapped = {k: ProcessLocalSplit(getattr(task, k)) for k in ("train", "val", "test")
               if not isinstance(getattr(task, k), ProcessLocalSplit)}
    return dataclasses.replace(task, **wrapped) if wrapped else task
