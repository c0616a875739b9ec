"""Deterministic, reproducible batch iteration over image classification splits.

Two interchangeable implementations of the :class:`Split` protocol:

* :class:`SourceSplit` streams examples from a random-access source (a TFDS
  ``builder.as_data_source(split)`` or any ``Sequence`` of example dicts)
  through a ``grain.MapDataset`` pipeline. Use it for data that does not fit in
  memory (CelebA has ~200k images).
* :class:`ArraySplit` holds a whole split as arrays (images already resized,
  stored as ``uint8`` when they come from real images), either in host memory
  (numpy batches) or placed on the accelerator (``on_device=True``: jitted
  gather + augmentation on the device, the fast path for small data).

Batches
-------
Every batch is a dict with a constant shape (``batch_size`` rows):

* ``"image"``: ``float32[B, H, W, C]`` with values in ``[0, 1]`` (no mean/std
  normalisation; models normalise themselves if they want to),
* ``"label"``: ``int32[B]``,
* ``"group"``: ``int32[B]``,
* ``"weight"``: ``float32[B]``, 1 for real examples and 0 for padding rows
  (only the final batch of ``drop_remainder=False`` iteration has padding;
  padding rows are all-zero images with label 0 and group 0).

Without ``sharding`` the host paths yield numpy arrays and the device path
yields ``jax.Array`` on the device holding the data; with a
``jax.sharding.Sharding`` every batch is placed with
``jax.device_put(batch, sharding)``.

Determinism
-----------
The order of an epoch is ``epoch_order(n, seed, epoch, shuffle)`` and the
augmentation parameters of the example at position ``i`` of that order are
``augment_params(n, seed, epoch, pad)[..][i]``; both are pure functions of
``(seed, epoch)`` computed with numpy, so an epoch is reproduced exactly from
its number alone. The training loop (:mod:`ballot_jax.loop`) relies on this:
it checkpoints after every epoch, stores no position inside an epoch, and a
resumed run redoes an interrupted epoch from batch 0. Batch ``k`` holds positions
``k*B .. (k+1)*B-1``, so ``start_batch=k`` yields exactly batches ``k, k+1, ...``
of the full epoch, for callers that want part of an epoch. Because all three
paths share these two functions, host, device and grain-streamed batches of
the same data are identical for the same ``(seed, epoch)``, augmentation
included (the device path draws no ``jax.random`` numbers; it receives the
epoch's order and crop/flip parameters once per epoch and slices them on
device).

Augmentation (``augment=True``): zero-pad by ``crop_padding(size)`` pixels
(4 px at 32x32, scaled with the image size), random crop back to the original
size, random horizontal flip with probability 1/2. Evaluation uses none.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from absl import flags

Batch = dict  # {"image": f32[B,H,W,C] in [0,1], "label": i32[B], "group": i32[B], "weight": f32[B]}

__all__ = [
    "Batch",
    "Split",
    "ArraySplit",
    "SourceSplit",
    "epoch_order",
    "augment_params",
    "crop_padding",
    "count_batches",
    "resize_image",
]

# uint8 -> [0, 1] is a multiplication by this constant on every path (XLA turns a
# division by 255 into this multiplication, so numpy does the same to match bit for bit).
_INV255 = np.float32(1.0 / 255.0)
_ORDER_STREAM = 0
_AUGMENT_STREAM = 1


@runtime_checkable
class Split(Protocol):
    """One split of a task: deterministic iteration over batches, reproducible per ``(seed, epoch)``."""

    num_examples: int

    def batches(
        self,
        *,
        batch_size: int,
        epoch: int,
        seed: int,
        shuffle: bool,
        augment: bool,
        start_batch: int = 0,
        drop_remainder: bool = True,
        sharding: Any = None,
    ) -> Iterator[Batch]:
        """Yields batches ``start_batch, start_batch+1, ...`` of epoch ``epoch``."""
        ...

    def num_batches(self, batch_size: int, drop_remainder: bool) -> int:
        """Number of batches one epoch yields (from ``start_batch=0``)."""
        ...


# ---------------------------------------------------------------------------
# Pure helpers shared by every path.
# ---------------------------------------------------------------------------


def _rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    """A numpy generator that is a pure function of (seed, epoch, stream)."""
    mask = (1 << 64) - 1
    return np.random.Generator(
        np.random.PCG64(np.random.SeedSequence([int(seed) & mask, int(epoch) & mask, stream]))
    )


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Positions -> example indices for one epoch (identity when not shuffling)."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    return _rng(seed, epoch, _ORDER_STREAM).permutation(n).astype(np.int64)


def crop_padding(size: int) -> int:
    """Padding of the random crop: 4 px at 32 px, proportional otherwise (>= 1)."""
    return max(1, int(round(size / 8)))


def augment_params(n: int, seed: int, epoch: int, pad: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-position crop offsets ``dy, dx`` in ``[0, 2*pad]`` and flip bits (int32)."""
    rng = _rng(seed, epoch, _AUGMENT_STREAM)
    dy = rng.integers(0, 2 * pad + 1, size=n, dtype=np.int32)
    dx = rng.integers(0, 2 * pad + 1, size=n, dtype=np.int32)
    flip = rng.integers(0, 2, size=n, dtype=np.int32)
    return dy, dx, flip


def count_batches(n: int, batch_size: int, drop_remainder: bool) -> int:
    """Number of batches of ``batch_size`` over ``n`` examples."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return n // batch_size if drop_remainder else -(-n // batch_size)


def _check_start(start_batch: int) -> None:
    if start_batch < 0:
        raise ValueError(f"start_batch must be >= 0, got {start_batch}")


def _to_float(images: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1] (x * (1/255)); float input is returned as float32."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) * _INV255
    return images.astype(np.float32, copy=False)


def _gather_augment(images: np.ndarray, idx: np.ndarray, dy: np.ndarray, dx: np.ndarray, flip: np.ndarray,
                    pad: int) -> np.ndarray:
    """``images[idx]`` zero-padded by ``pad``, cropped at ``(dy, dx)``, mirrored where ``flip``; float32.

    Works on the stored dtype (uint8: 4x less memory traffic) and converts at the
    end; the values equal the device path's single-gather formulation.
    """
    x = images[idx]
    h, w = x.shape[1:3]
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.empty_like(x)
    for i in range(len(x)):
        crop = padded[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        out[i] = crop[:, ::-1] if flip[i] else crop
    return _to_float(out)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crops to a square (if needed) and resizes bilinearly (PIL) to ``size``.

    ``image`` is ``uint8[H, W]`` or ``uint8[H, W, C]``; the result always has a
    channel axis. Images already of the target size are returned unchanged.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    h, w = image.shape[:2]
    if h != w:
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        image = image[top : top + s, left : left + s]
        h = w = s
    if h == size:
        return np.ascontiguousarray(image)
    from PIL import Image  # pylint: disable=import-outside-toplevel

    if image.dtype != np.uint8:
        raise TypeError(f"resize_image expects uint8 images, got {image.dtype}")
    channels = image.shape[2]
    pil = Image.fromarray(image[:, :, 0] if channels == 1 else image)
    out = np.asarray(pil.resize((size, size), Image.BILINEAR))
    return out[:, :, None] if channels == 1 else out


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """Appends ``rows`` zero rows along axis 0."""
    if rows == 0:
        return x
    return np.concatenate([x, np.zeros((rows,) + x.shape[1:], x.dtype)], axis=0)


def _place(batch: Batch, sharding: Any) -> Batch:
    if sharding is None:
        return batch
    import jax  # pylint: disable=import-outside-toplevel

    return jax.device_put(batch, sharding)


# ---------------------------------------------------------------------------
# In-memory split (host numpy or on device).
# ---------------------------------------------------------------------------


def _device_batch_impl(images, labels, groups, order, dy, dx, flip, batch_index, n, *, batch_size, augment, pad):
    """Batch ``batch_index`` of an epoch, gathered (and augmented) on the data's device.

    ``order``/``dy``/``dx``/``flip`` are the epoch's per-position arrays (padded to
    a whole number of batches). The crop and flip are folded into a single gather
    ``image[idx, dy - pad + i, dx - pad + (W-1-j if flip else j)]`` with
    out-of-image pixels zeroed: the same values as the host's pad-crop-flip.
    """
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

    start = batch_index * batch_size
    valid = start + jnp.arange(batch_size) < n
    idx = jax.lax.dynamic_slice(order, (start,), (batch_size,))
    h, w = images.shape[1:3]
    if augment:
        b_dy, b_dx, b_flip = (jax.lax.dynamic_slice(p, (start,), (batch_size,)) for p in (dy, dx, flip))
        rows = b_dy[:, None] - pad + jnp.arange(h)[None, :]
        j = jnp.arange(w)[None, :]
        cols = b_dx[:, None] - pad + jnp.where(b_flip[:, None] == 1, w - 1 - j, j)
        inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        x = images[idx[:, None, None], jnp.clip(rows, 0, h - 1)[:, :, None], jnp.clip(cols, 0, w - 1)[:, None, :]]
        keep = inside & valid[:, None, None]
    else:
        x = images[idx]
        keep = jnp.broadcast_to(valid[:, None, None], (batch_size, h, w))
    x = x.astype(jnp.float32) * _INV255 if images.dtype == jnp.uint8 else x.astype(jnp.float32)
    x = jnp.where(keep[..., None], x, jnp.zeros_like(x))
    return {
        "image": x,
        "label": jnp.where(valid, labels[idx], 0).astype(jnp.int32),
        "group": jnp.where(valid, groups[idx], 0).astype(jnp.int32),
        "weight": valid.astype(jnp.float32),
    }


@functools.cache
def _device_batch() -> Callable[..., Batch]:
    """The jitted batch gather, created on first use (keeps jax off the import path)."""
    import jax  # pylint: disable=import-outside-toplevel

    return jax.jit(_device_batch_impl, static_argnames=("batch_size", "augment", "pad"))


class ArraySplit:
    """A split held whole as arrays, on the host or on the device.

    Args:
      images: ``uint8[N, H, W, C]`` (scaled by ``1/255`` per batch; 4x less
        memory than float) or float arrays already in ``[0, 1]``; already at the
        final size (resizing happens once, before).
      labels: ``int[N]`` class ids.
      groups: ``int[N]`` group ids.
      on_device: place the arrays on the default device once; batches are then
        gathered and augmented by a jitted function and yielded as
        ``jax.Array``. Otherwise batches are numpy arrays built on the host.
      name: a label for messages.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        groups: np.ndarray,
        *,
        on_device: bool = False,
        name: str = "",
    ) -> None:
        images = np.asarray(images)
        if images.ndim != 4:
            raise ValueError(f"images must be [N, H, W, C], got shape {images.shape}")
        labels = np.asarray(labels, np.int32)
        groups = np.asarray(groups, np.int32)
        if not len(images) == len(labels) == len(groups):
            raise ValueError(f"length mismatch: {len(images)} images, {len(labels)} labels, {len(groups)} groups")
        self.images = images
        self.labels = labels
        self.groups = groups
        self.num_examples: int = int(len(labels))
        self.image_shape: tuple[int, int, int] = tuple(int(s) for s in images.shape[1:])  # type: ignore[assignment]
        self.on_device = bool(on_device)
        self.name = name
        self._device_arrays: tuple[Any, Any, Any] | None = None
        if self.on_device:
            import jax  # pylint: disable=import-outside-toplevel

            self._device_arrays = tuple(jax.device_put((images, labels, groups)))  # type: ignore[assignment]

    def __repr__(self) -> str:
        where = "device" if self.on_device else "host"
        return f"ArraySplit({self.name!r}, n={self.num_examples}, shape={self.image_shape}, {where})"

    def num_batches(self, batch_size: int, drop_remainder: bool) -> int:
        """Number of batches one epoch yields."""
        return count_batches(self.num_examples, batch_size, drop_remainder)

    def with_device(self, on_device: bool) -> "ArraySplit":
        """The same data on the other side of the host/device boundary."""
        if on_device == self.on_device:
            return self
        return ArraySplit(self.images, self.labels, self.groups, on_device=on_device, name=self.name)

    def batches(
        self,
        *,
        batch_size: int,
        epoch: int,
        seed: int,
        shuffle: bool,
        augment: bool,
        start_batch: int = 0,
        drop_remainder: bool = True,
        sharding: Any = None,
    ) -> Iterator[Batch]:
        """Yields batches ``start_batch, ...`` of the epoch (see module docstring)."""
        _check_start(start_batch)
        n = self.num_examples
        nb = self.num_batches(batch_size, drop_remainder)
        order = epoch_order(n, seed, epoch, shuffle)
        pad = crop_padding(self.image_shape[0])
        params = augment_params(n, seed, epoch, pad) if augment else None
        if self.on_device:
            return self._device_batches(order, params, batch_size, nb, start_batch, augment, pad, sharding)
        return self._host_batches(order, params, batch_size, nb, start_batch, pad, sharding)

    def _host_batches(self, order, params, batch_size, nb, start_batch, pad, sharding) -> Iterator[Batch]:
        for b in range(start_batch, nb):
            idx = order[b * batch_size : (b + 1) * batch_size]
            k = len(idx)
            if params is None:
                images = _to_float(self.images[idx])
            else:
                dy, dx, flip = (p[b * batch_size : b * batch_size + k] for p in params)
                images = _gather_augment(self.images, idx, dy, dx, flip, pad)
            missing = batch_size - k
            batch = {
                "image": _pad_rows(images, missing),
                "label": _pad_rows(self.labels[idx], missing),
                "group": _pad_rows(self.groups[idx], missing),
                "weight": _pad_rows(np.ones(k, np.float32), missing),
            }
            yield _place(batch, sharding)

    def _device_batches(self, order, params, batch_size, nb, start_batch, augment, pad, sharding) -> Iterator[Batch]:
        import jax  # pylint: disable=import-outside-toplevel

        if start_batch >= nb:
            return
        images, labels, groups = self._device_arrays  # type: ignore[misc]
        device = next(iter(images.devices()))
        total = max(nb * batch_size, self.num_examples)
        if params is None:
            params = (np.zeros(1, np.int32),) * 3
        else:
            params = tuple(_pad_rows(p, total - len(p)) for p in params)
        order_d, dy_d, dx_d, flip_d = jax.device_put(
            (_pad_rows(order.astype(np.int32), total - len(order)),) + tuple(params), device
        )
        n = np.int32(self.num_examples)
        gather = _device_batch()
        for b in range(start_batch, nb):
            batch = gather(
                images, labels, groups, order_d, dy_d, dx_d, flip_d, np.int32(b), n,
                batch_size=batch_size, augment=augment, pad=pad,
            )
            yield _place(batch, sharding)


# ---------------------------------------------------------------------------
# Streaming split over a random-access source (grain).
# ---------------------------------------------------------------------------


class _EpochView(Sequence):
    """Position -> {"image": raw image, "label", "group"} for one epoch's order."""

    def __init__(self, source: Sequence[Mapping[str, Any]], source_index: np.ndarray, labels: np.ndarray,
                 groups: np.ndarray, image_key: str) -> None:
        self._source = source
        self._source_index = source_index
        self._labels = labels
        self._groups = groups
        self._image_key = image_key

    def __len__(self) -> int:
        return len(self._source_index)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        example = self._source[int(self._source_index[i])]
        return {"image": example[self._image_key], "label": self._labels[i], "group": self._groups[i]}


@dataclasses.dataclass
class _Resize:
    """Per-example map (picklable for grain worker processes): resize, keep the epoch position."""

    size: int

    def __call__(self, position: int, element: dict[str, Any]) -> dict[str, Any]:
        return {"image": resize_image(np.asarray(element["image"]), self.size), "label": np.int32(element["label"]),
                "group": np.int32(element["group"]), "position": position}


@dataclasses.dataclass
class _Collate:
    """Stacks examples into a batch padded to ``batch_size`` rows with weights.

    With ``as_float`` the uint8 images become float32 in [0, 1], augmented with
    the epoch's parameters at each example's position (whole batch at once).
    """

    batch_size: int
    params: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    pad: int
    as_float: bool = True

    def __call__(self, elements: Sequence[dict[str, Any]]) -> Batch:
        k = len(elements)
        missing = self.batch_size - k
        images = np.stack([e["image"] for e in elements])
        if self.as_float:
            if self.params is None:
                images = _to_float(images)
            else:
                pos = np.array([e["position"] for e in elements], np.int64)
                dy, dx, flip = (p[pos] for p in self.params)
                images = _gather_augment(images, np.arange(k), dy, dx, flip, self.pad)
        return {
            "image": _pad_rows(images, missing),
            "label": _pad_rows(np.array([e["label"] for e in elements], np.int32), missing),
            "group": _pad_rows(np.array([e["group"] for e in elements], np.int32), missing),
            "weight": _pad_rows(np.ones(k, np.float32), missing),
        }


def _check_worker_flags(worker_count: int, flag_values: flags.FlagValues | None = None) -> None:
    """Refuses grain worker processes while the absl flags are unparsed; this library never parses them.

    grain 0.2.18's ``mp_prefetch`` reads the absl flag
    ``--grain_enable_multiprocess_worker_profiling`` without a fallback when JAX
    is installed (google/grain#1355, fixed after 0.2.18), so it fails outside an
    absl app. Parsing flags belongs to the program's entry point:
    ``experiments/*.py`` run under ``absl.app.run``, which parses them.
    ``flag_values`` defaults to ``absl.flags.FLAGS`` (only read).
    """
    if worker_count <= 0:
        return
    if flag_values is None:
        from absl import flags as absl_flags  # pylint: disable=import-outside-toplevel

        flag_values = absl_flags.FLAGS
    if not flag_values.is_parsed():
        raise RuntimeError(
            f"worker_count={worker_count} needs the absl flags parsed (grain 0.2.18's mp_prefetch reads one, "
            "google/grain#1355); "
            "run under absl.app.run, call absl.flags.FLAGS(sys.argv) in your entry point, or use worker_count=0"
        )


class SourceSplit:
    """A split streamed from a random-access source through a grain pipeline.

    Args:
      source: random access ``Sequence`` of example dicts (e.g. a TFDS
        ``builder.as_data_source(split)``); only ``example[image_key]`` is read
        per step, as a ``uint8`` image of any size.
      labels: ``int[N]`` class id of each example of the split.
      groups: ``int[N]`` group id of each example of the split.
      image_size: output side length; images are centre-cropped to a square if
        needed and resized bilinearly (PIL) on the fly.
      indices: source index of each split example (default ``arange(N)``), e.g.
        to take the first N examples of a larger source.
      image_key: feature name of the image.
      worker_count: grain worker processes (``mp_prefetch``); default 0 = read
        in the calling process, the sensible choice on a 2-core machine. Above
        0 the absl flags must be parsed by the program (``absl.app.run`` does;
        see :func:`_check_worker_flags`), else a ``RuntimeError`` is raised here.
      read_threads: threads that build batches in the calling (or each worker)
        process; each thread builds whole batches.
      prefetch: batches buffered ahead per process.
      name: a label for messages.
    """

    def __init__(
        self,
        source: Sequence[Mapping[str, Any]],
        labels: np.ndarray,
        groups: np.ndarray,
        *,
        image_size: int,
        indices: np.ndarray | None = None,
        image_key: str = "image",
        worker_count: int = 0,
        read_threads: int = 2,
        prefetch: int = 4,
        name: str = "",
    ) -> None:
        self.labels = np.asarray(labels, np.int32)
        self.groups = np.asarray(groups, np.int32)
        if len(self.labels) != len(self.groups):
            raise ValueError(f"length mismatch: {len(self.labels)} labels, {len(self.groups)} groups")
        self.indices = np.arange(len(self.labels), dtype=np.int64) if indices is None else np.asarray(indices, np.int64)
        if len(self.indices) != len(self.labels):
            raise ValueError(f"length mismatch: {len(self.indices)} indices, {len(self.labels)} labels")
        self.source = source
        self.num_examples: int = int(len(self.labels))
        self.image_size = int(image_size)
        self.image_key = image_key
        self.worker_count = int(worker_count)
        _check_worker_flags(self.worker_count)
        self.read_threads = int(read_threads)
        self.prefetch = int(prefetch)
        self.name = name

    def __repr__(self) -> str:
        return f"SourceSplit({self.name!r}, n={self.num_examples}, size={self.image_size}, workers={self.worker_count})"

    def num_batches(self, batch_size: int, drop_remainder: bool) -> int:
        """Number of batches one epoch yields."""
        return count_batches(self.num_examples, batch_size, drop_remainder)

    def _dataset(self, *, batch_size: int, order: np.ndarray, params, drop_remainder: bool, start_batch: int,
                 as_float: bool):
        import grain  # pylint: disable=import-outside-toplevel

        view = _EpochView(self.source, self.indices[order], self.labels[order], self.groups[order], self.image_key)
        ds = grain.MapDataset.source(view)
        ds = ds.map_with_index(_Resize(self.image_size))
        collate = _Collate(batch_size, params, crop_padding(self.image_size), as_float)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=collate)
        ds = ds[start_batch:]
        it = ds.to_iter_dataset(
            grain.ReadOptions(num_threads=self.read_threads, prefetch_buffer_size=self.prefetch if self.read_threads else 0)
        )
        if self.worker_count > 0:
            it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.worker_count))
        return it

    def batches(
        self,
        *,
        batch_size: int,
        epoch: int,
        seed: int,
        shuffle: bool,
        augment: bool,
        start_batch: int = 0,
        drop_remainder: bool = True,
        sharding: Any = None,
    ) -> Iterator[Batch]:
        """Yields batches ``start_batch, ...`` of the epoch as numpy (see module docstring)."""
        _check_start(start_batch)
        n = self.num_examples
        if start_batch >= self.num_batches(batch_size, drop_remainder):
            return iter(())
        order = epoch_order(n, seed, epoch, shuffle)
        params = augment_params(n, seed, epoch, crop_padding(self.image_size)) if augment else None
        it = self._dataset(batch_size=batch_size, order=order, params=params, drop_remainder=drop_remainder,
                           start_batch=start_batch, as_float=True)
        return (_place(batch, sharding) for batch in it)

    def materialize(self, *, on_device: bool = False, batch_size: int = 256,
                    progress: Callable[[int, int], None] | None = None) -> ArraySplit:
        """Reads the whole split once (resized, uint8) into an :class:`ArraySplit`."""
        n = self.num_examples
        order = np.arange(n, dtype=np.int64)
        it = self._dataset(batch_size=batch_size, order=order, params=None, drop_remainder=False, start_batch=0,
                           as_float=False)
        chunks = []
        done = 0
        for batch in it:
            k = min(batch_size, n - done)
            chunks.append(batch["image"][:k])
            done += k
            if progress is not None:
                progress(done, n)
        size = self.image_size
        images = np.concatenate(chunks) if chunks else np.zeros((0, size, size, 3), np.uint8)
        return ArraySplit(images, self.labels, self.groups, on_device=on_device, name=self.name)


def estimated_bytes(num_examples: int, image_size: int, channels: int = 3) -> int:
    """Bytes needed to hold ``num_examples`` uint8 images of the given size."""
    return int(num_examples) * int(image_size) ** 2 * int(channels)
