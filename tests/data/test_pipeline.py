"""Tests of ballot_jax.data.pipeline: determinism, start_batch, padding, path agreement."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from ballot_jax.data.pipeline import (
    ArraySplit,
    SourceSplit,
    Split,
    augment_params,
    crop_padding,
    epoch_order,
    resize_image,
)

N, SIZE, BS = 70, 16, 16  # 70 is not a multiple of 16: the last eval batch is padded


@pytest.fixture(scope="module")
def data():
    """uint8 images with the example id as label (so order is observable)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.arange(N, dtype=np.int32)
    groups = (np.arange(N) % 3).astype(np.int32)
    return images, labels, groups


def _make(kind: str, data) -> Split:
    images, labels, groups = data
    if kind == "host":
        return ArraySplit(images, labels, groups)
    if kind == "device":
        return ArraySplit(images, labels, groups, on_device=True)
    source = [{"image": images[i], "other": i} for i in range(N)]
    return SourceSplit(source, labels, groups, image_size=SIZE)


KINDS = ("host", "device", "source")


def _epoch(split: Split, **kw) -> list[dict[str, np.ndarray]]:
    args = dict(batch_size=BS, epoch=0, seed=0, shuffle=True, augment=True)
    args.update(kw)
    return [{k: np.asarray(v) for k, v in b.items()} for b in split.batches(**args)]


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


@pytest.mark.parametrize("kind", KINDS)
def test_protocol_and_types(kind, data):
    split = _make(kind, data)
    assert isinstance(split, Split)
    assert split.num_examples == N
    batch = next(iter(split.batches(batch_size=BS, epoch=0, seed=0, shuffle=False, augment=False)))
    assert set(batch) == {"image", "label", "group", "weight"}
    if kind == "device":
        assert all(isinstance(v, jax.Array) for v in batch.values())
    else:
        assert all(isinstance(v, np.ndarray) for v in batch.values())
    assert batch["image"].shape == (BS, SIZE, SIZE, 3) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and batch["group"].dtype == np.int32
    assert batch["weight"].dtype == np.float32
    # Unaugmented, unshuffled: the stored images scaled to [0, 1].
    np.testing.assert_allclose(np.asarray(batch["image"]), data[0][:BS] / 255.0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_per_seed_and_epoch(kind, data):
    split = _make(kind, data)
    first = _epoch(split, epoch=3, seed=5)
    assert _same(first, _epoch(split, epoch=3, seed=5))
    assert not _same(first, _epoch(split, epoch=4, seed=5))
    assert not _same(first, _epoch(split, epoch=3, seed=6))
    # Same order but fresh crops/flips when only augmentation changes.
    labels = np.concatenate([b["label"] for b in first])
    assert sorted(labels.tolist()) == sorted(set(labels.tolist()))  # no repeats within an epoch


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("drop_remainder", [True, False])
def test_resume_equals_tail(kind, drop_remainder, data):
    split = _make(kind, data)
    full = _epoch(split, epoch=2, seed=1, drop_remainder=drop_remainder)
    assert len(full) == split.num_batches(BS, drop_remainder)
    for k in (1, 3, len(full)):
        assert _same(_epoch(split, epoch=2, seed=1, drop_remainder=drop_remainder, start_batch=k), full[k:])
    assert _epoch(split, epoch=2, seed=1, start_batch=len(full) + 5, drop_remainder=drop_remainder) == []
    with pytest.raises(ValueError):
        _epoch(split, start_batch=-1)


def test_all_paths_agree(data):
    """Host, device and grain-streamed batches are identical, augmentation included."""
    for kw in (dict(shuffle=True, augment=True), dict(shuffle=False, augment=False, drop_remainder=False),
               dict(shuffle=True, augment=False, drop_remainder=False)):
        host, device, source = (_epoch(_make(k, data), epoch=7, seed=11, **kw) for k in KINDS)
        assert _same(host, device)
        assert _same(host, source)


@pytest.mark.parametrize("kind", KINDS)
def test_padding_and_weights(kind, data):
    split = _make(kind, data)
    assert split.num_batches(BS, True) == N // BS
    assert split.num_batches(BS, False) == -(-N // BS)
    batches = _epoch(split, shuffle=True, augment=False, drop_remainder=False)
    assert all(b["image"].shape[0] == BS for b in batches)  # constant shape
    weights = np.concatenate([b["weight"] for b in batches])
    assert weights.sum() == N and set(weights.tolist()) == {0.0, 1.0}
    last = batches[-1]
    real = N - BS * (len(batches) - 1)
    assert last["weight"][:real].tolist() == [1.0] * real
    assert not last["weight"][real:].any()
    assert not last["image"][real:].any() and not last["label"][real:].any() and not last["group"][real:].any()
    labels = np.concatenate([b["label"] for b in batches])[weights == 1]
    assert sorted(labels.tolist()) == list(range(N))  # every example exactly once
    groups = np.concatenate([b["group"] for b in batches])[weights == 1]
    np.testing.assert_array_equal(groups, data[2][labels])
    # drop_remainder=True: all weights 1, the tail is dropped.
    dropped = _epoch(split, drop_remainder=True)
    assert len(dropped) == N // BS and all(b["weight"].all() for b in dropped)


def test_augmentation_is_padded_crop_and_flip(data):
    images, labels, _ = data
    split = _make("host", data)
    seed, epoch = 3, 1
    batches = _epoch(split, seed=seed, epoch=epoch, drop_remainder=False)
    pad = crop_padding(SIZE)
    assert pad == 2 and crop_padding(32) == 4 and crop_padding(64) == 8
    dy, dx, flip = augment_params(N, seed, epoch, pad)
    assert 0 < flip.mean() < 1 and dy.min() >= 0 and dy.max() <= 2 * pad
    order = epoch_order(N, seed, epoch, True)
    out = np.concatenate([b["image"] for b in batches])[:N]
    padded = np.pad(images / np.float32(255), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    for pos in range(N):
        i = order[pos]
        assert labels[i] == np.concatenate([b["label"] for b in batches])[pos]
        want = padded[i, dy[pos] : dy[pos] + SIZE, dx[pos] : dx[pos] + SIZE]
        if flip[pos]:
            want = want[:, ::-1]
        np.testing.assert_allclose(out[pos], want, atol=1e-6)


def test_order_helpers():
    assert epoch_order(5, 0, 0, False).tolist() == [0, 1, 2, 3, 4]
    a = epoch_order(100, 1, 2, True)
    assert sorted(a.tolist()) == list(range(100))
    assert np.array_equal(a, epoch_order(100, 1, 2, True))
    assert not np.array_equal(a, epoch_order(100, 1, 3, True))


@pytest.mark.parametrize("kind", ("host", "device"))
def test_sharding_places_batches(kind, data):
    devices = jax.devices()
    n_dev = max(d for d in (1, 2, 4, 8) if d <= len(devices) and BS % d == 0)
    mesh = jax.sharding.Mesh(np.array(devices[:n_dev]), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    split = _make(kind, data)
    plain = _epoch(split, seed=2)
    sharded = list(split.batches(batch_size=BS, epoch=0, seed=2, shuffle=True, augment=True, sharding=sharding))
    assert all(isinstance(v, jax.Array) and v.sharding == sharding for b in sharded for v in b.values())
    assert _same(plain, [{k: np.asarray(v) for k, v in b.items()} for b in sharded])


def test_resize_image():
    rng = np.random.default_rng(1)
    tall = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
    out = resize_image(tall, 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    same = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert resize_image(same, 32) is not None and np.array_equal(resize_image(same, 32), same)
    flat = np.full((40, 40, 3), 77, np.uint8)
    assert np.all(resize_image(flat, 16) == 77)
    assert resize_image(flat[:, :, 0], 16).shape == (16, 16, 1)


def test_source_split_resizes_like_materialized(data):
    """A streamed split over large images equals its in-memory materialisation."""
    rng = np.random.default_rng(2)
    big = rng.integers(0, 256, (20, 40, 48, 3), dtype=np.uint8)  # non-square: centre-cropped
    labels = np.arange(20, dtype=np.int32)
    source = SourceSplit([{"image": im} for im in big], labels, labels % 2, image_size=SIZE, read_threads=0)
    memory = source.materialize()
    assert memory.images.shape == (20, SIZE, SIZE, 3) and memory.images.dtype == np.uint8
    np.testing.assert_array_equal(memory.images[3], resize_image(big[3], SIZE))
    for kw in (dict(shuffle=True, augment=True), dict(shuffle=False, augment=False, drop_remainder=False)):
        assert _same(_epoch(source, seed=4, **kw), _epoch(memory, seed=4, **kw))
    # A subset through `indices`: the split's examples are source[indices].
    sub = SourceSplit([{"image": im} for im in big], labels[5:9], labels[5:9] % 2, image_size=SIZE,
                      indices=np.arange(5, 9))
    np.testing.assert_array_equal(sub.materialize().images, memory.images[5:9])


@pytest.fixture
def absl_flags_parsed():
    """Parses the absl flags as a program's entry point would (absl.app.run), and undoes it after."""
    from absl import flags

    was_parsed = flags.FLAGS.is_parsed()
    if not was_parsed:
        flags.FLAGS(["test"])
    yield
    if not was_parsed:
        flags.FLAGS.unparse_flags()


def test_worker_processes_need_parsed_flags_and_the_library_never_parses_them(data):
    from absl import flags

    from ballot_jax.data import pipeline

    unparsed, parsed = flags.FlagValues(), flags.FlagValues()
    parsed(["prog"])
    with pytest.raises(RuntimeError, match=r"worker_count=2 needs the absl flags parsed.*worker_count=0"):
        pipeline._check_worker_flags(2, unparsed)
    pipeline._check_worker_flags(2, parsed)
    pipeline._check_worker_flags(0, unparsed)
    assert not unparsed.is_parsed()
    before = flags.FLAGS.is_parsed()
    images, labels, groups = data
    split = SourceSplit([{"image": im} for im in images], labels, groups, image_size=SIZE)
    _epoch(split)
    split.materialize()
    assert flags.FLAGS.is_parsed() == before


@pytest.mark.slow
def test_source_split_with_worker_process(data, absl_flags_parsed):
    """worker_count>0 (grain mp_prefetch) yields the same batches as in-process reading.

    Slow and out of the default run: it forks worker processes from a process whose JAX runtime
    has started threads, and a full-suite run aborted later in the same process after it.
    """
    images, labels, groups = data
    source = [{"image": images[i]} for i in range(N)]
    inproc = SourceSplit(source, labels, groups, image_size=SIZE)
    worker = SourceSplit(source, labels, groups, image_size=SIZE, worker_count=1)
    kw = dict(seed=9, epoch=1, drop_remainder=False)
    assert _same(_epoch(inproc, **kw)[2:], _epoch(worker, start_batch=2, **kw))
