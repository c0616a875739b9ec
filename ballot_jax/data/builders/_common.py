"""Shared machinery for the manual-download TFDS builders of ``ballot_jax``.

Everything here works without TensorFlow: images are verified and (only when
necessary) re-encoded with PIL, archives are read with :mod:`tarfile` /
:mod:`zipfile`, and the builders write ``array_record`` files that are read
back with ``builder.as_data_source(split)``.

Besides the TFDS files, every prepared dataset directory holds two JSON files
written by :class:`ManualImageBuilder`:

* ``prepare_report.json``: per-split example counts, per-attribute counts,
  skipped inputs and re-encoded images;
* ``skipped.json``: just the skipped inputs (name, split, reason).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import io
import itertools
import json
import logging
import os
import pickle
import tarfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

logger = logging.getLogger(__name__)

REPORT_FILENAME = "prepare_report.json"
SKIPPED_FILENAME = "skipped.json"
SPLITS = ("train", "validation", "test")

KeyExample = tuple[str, dict[str, Any]]
T = TypeVar("T")


# --------------------------------------------------------------------------
# Errors and records


class ManualDataError(Exception):
    """Base class of the errors raised for unusable manual inputs."""


class ManualDataMissingError(ManualDataError, FileNotFoundError):
    """A required manual input (directory, archive or file) is absent."""

    def __init__(self, dataset: str, expected: Sequence[str], searched: os.PathLike | str,
                 instructions: str = "") -> None:
        self.dataset = dataset
        self.expected = list(expected)
        self.searched = str(searched)
        alternatives = " or ".join(repr(e) for e in self.expected)
        msg = (f"[{dataset}] manual input missing: expected {alternatives} in directory "
               f"{self.searched!r}, but it is not there.")
        if instructions:
            msg += "\nWhat to place there:\n" + instructions.strip()
        super().__init__(msg)


class ManualDataLayoutError(ManualDataError, ValueError):
    """A manual input exists but its content does not have the expected layout."""

    def __init__(self, dataset: str, source: os.PathLike | str, expected: str, found: str) -> None:
        self.dataset = dataset
        self.source = str(source)
        self.expected = expected
        self.found = found
        super().__init__(f"[{dataset}] unexpected layout in {self.source!r}: expected {expected}; "
                         f"found instead: {found}")


class BadImageError(ValueError):
    """An image cannot be decoded or does not have the expected geometry."""


@dataclasses.dataclass(frozen=True)
class Skip:
    """One input left out of (or altered in) a prepared dataset, with the reason."""

    name: str
    reason: str
    split: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Returns a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Skip":
        """Inverse of :meth:`to_json`."""
        return cls(name=str(d["name"]), reason=str(d["reason"]), split=d.get("split"))


# --------------------------------------------------------------------------
# Reading manual inputs


class FileSource:
    """Uniform read access to the files of a directory, a tar archive or a zip archive.

    Names are POSIX paths relative to the archive root (for a directory: relative to
    its *parent*, so that ``UTKFace/`` on disk and ``UTKFace/`` inside the archive
    give the same names).
    """

    def __init__(self, path: os.PathLike | str, dataset: str) -> None:
        self.path = Path(path)
        self.dataset = dataset
        self._tar_members: dict[str, bytes] | None = None
        self._zip: zipfile.ZipFile | None = None
        self._names: list[str] | None = None

    @property
    def kind(self) -> str:
        """'dir', 'zip' or 'tar'."""
        if self.path.is_dir():
            return "dir"
        if self.path.name.lower().endswith(".zip"):
            return "zip"
        return "tar"

    def _unreadable(self, err: Exception) -> ManualDataLayoutError:
        return ManualDataLayoutError(self.dataset, self.path, f"a readable {self.kind} archive",
                                     f"{type(err).__name__}: {err}")

    def names(self) -> list[str]:
        """All regular-file names (sorted)."""
        if self._names is None:
            if self.kind == "dir":
                base = self.path.parent
                out = []
                for root, _, files in os.walk(self.path):
                    rel = Path(root).relative_to(base).as_posix()
                    out.extend(f"{rel}/{f}" for f in files)
                self._names = sorted(out)
            elif self.kind == "zip":
                self._names = sorted(i.filename for i in self._zipfile().infolist() if not i.is_dir())
            else:
                self._names = sorted(self._tar().keys())
        return self._names

    def list_tar_names(self) -> list[str]:
        """Regular-file names of a tar archive without keeping their bytes (cheap listing)."""
        try:
            with tarfile.open(self.path) as tf:
                return sorted(_norm(m.name) for m in tf if m.isfile())
        except (tarfile.TarError, OSError, EOFError) as err:
            raise self._unreadable(err) from err

    def read(self, name: str) -> bytes:
        """The bytes of file ``name``."""
        kind = self.kind
        if kind == "dir":
            return (self.path.parent / name).read_bytes()
        if kind == "zip":
            return self._zipfile().read(name)
        return self._tar()[name]

    def top_level(self, names: Sequence[str] | None = None, limit: int = 8) -> str:
        """A short description of the first top-level entries (for layout errors)."""
        tops: list[str] = []
        for n in (self.names() if names is None else names):
            top = n.split("/", 1)[0] + ("/" if "/" in n else "")
            if top not in tops:
                tops.append(top)
        shown = ", ".join(repr(t) for t in tops[:limit])
        more = f" (+{len(tops) - limit} more)" if len(tops) > limit else ""
        return f"top-level entries [{shown}]{more}" if tops else "no files at all"

    def _zipfile(self) -> zipfile.ZipFile:
        if self._zip is None:
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as err:
                raise self._unreadable(err) from err
        return self._zip

    def _tar(self) -> dict[str, bytes]:
        if self._tar_members is None:
            members: dict[str, bytes] = {}
            try:
                with tarfile.open(self.path) as tf:
                    for m in tf:
                        if m.isfile():
                            f = tf.extractfile(m)
                            if f is not None:
                                members[_norm(m.name)] = f.read()
            except (tarfile.TarError, OSError, EOFError) as err:
                raise self._unreadable(err) from err
            self._tar_members = members
        return self._tar_members

    def close(self) -> None:
        """Releases the archive handle and cached bytes."""
        if self._zip is not None:
            self._zip.close()
            self._zip = None
        self._tar_members = None


def _norm(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


def find_input(manual_dir: Path | None, candidates: Sequence[str], dataset: str,
               instructions: str) -> Path:
    """Returns the first existing ``manual_dir/candidate``; raises ManualDataMissingError."""
    if manual_dir is None or not manual_dir.is_dir():
        raise ManualDataMissingError(dataset, candidates, manual_dir if manual_dir else "<unset>",
                                     instructions + "\n(The directory itself does not exist.)")
    for c in candidates:
        p = manual_dir / c
        if p.exists() and (not p.is_dir() or any(p.iterdir())):
            return p
    raise ManualDataMissingError(dataset, candidates, manual_dir, instructions)


_NUMPY_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # Python 3 protocol-2 pickles store bytes via _codecs.encode
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except numpy array reconstruction."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def load_cifar_pickle(data: bytes) -> dict[str, Any]:
    """Loads one CIFAR python-layout pickle; keys are returned as ``str``.

    Only plain containers and numpy arrays are allowed (no arbitrary code runs).
    """
    obj = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    if not isinstance(obj, dict):
        raise pickle.UnpicklingError(f"expected a dict, got {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def as_str(x: Any) -> str:
    """bytes -> str (latin1-safe); anything else -> str(x)."""
    return x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)


# --------------------------------------------------------------------------
# Images


def checked_image(data: bytes, *, size: tuple[int, int] | None, fmt: str) -> tuple[bytes, str | None]:
    """Verifies that ``data`` decodes and returns the bytes to store.

    Args:
      data: encoded image bytes.
      size: expected ``(width, height)`` or ``None`` to accept any size.
      fmt: the feature's encoding, ``'jpeg'`` or ``'png'``.

    Returns:
      ``(bytes, note)``. The original bytes are returned unchanged when they are
      already an RGB image in ``fmt``; otherwise the image is converted to RGB and
      re-encoded, and ``note`` says why.

    Raises:
      BadImageError: the image cannot be decoded or has the wrong size.
    """
    want = "JPEG" if fmt == "jpeg" else "PNG"
    try:
        with Image.open(io.BytesIO(data)) as im:
            orig_format, mode, im_size = im.format, im.mode, im.size
            if orig_format == "JPEG":
                im.draft(None, (1, 1))  # DCT-scaled decode: still reads every byte
            im.load()
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, ValueError...)
        raise BadImageError(f"undecodable image: {type(err).__name__}: {err}") from err
    if size is not None and tuple(im_size) != tuple(size):
        raise BadImageError(f"unexpected size {im_size[0]}x{im_size[1]} "
                            f"(expected {size[0]}x{size[1]})")
    if orig_format == want and mode == "RGB":
        return data, None
    with Image.open(io.BytesIO(data)) as im:
        rgb = im.convert("RGB")
    return encode_image(rgb, fmt), f"re-encoded as RGB {want} (was {orig_format} mode {mode})"


def encode_image(img: Image.Image | np.ndarray, fmt: str) -> bytes:
    """Encodes an RGB image (PIL or uint8 HxWx3 array) as JPEG (quality 95) or PNG."""
    if isinstance(img, np.ndarray):
        img = Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8), mode="RGB")
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=95)
    else:
        img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def to_grayscale_rgb(images: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luminance (0.299 R + 0.587 G + 0.114 B, rounded) replicated to 3 channels."""
    lum = np.rint(images.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))
    lum = np.clip(lum, 0, 255).astype(np.uint8)
    return np.repeat(lum[..., None], 3, axis=-1)


# --------------------------------------------------------------------------
# Seeded splits


def round_half_up(x: float) -> int:
    """Rounds halves upwards (0.5 -> 1), unlike Python's banker's rounding."""
    return int(np.floor(x + 0.5))


def random_partition(n: int, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Splits ``range(n)`` into len(fractions) parts with a seeded permutation.

    ``perm = np.random.default_rng(seed).permutation(n)``; part ``i`` gets the next
    ``floor(fractions[i] * n)`` entries of ``perm``, the last part gets the rest.
    Each part is returned sorted.
    """
    perm = np.random.default_rng(seed).permutation(n)
    out, start = [], 0
    for i, f in enumerate(fractions):
        stop = n if i == len(fractions) - 1 else start + int(np.floor(f * n))
        out.append(np.sort(perm[start:stop]))
        start = stop
    return out


def stratified_holdout(groups: Sequence[int] | np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask selecting a seeded ``fraction`` of every group.

    For each distinct group id (ascending) with members ``idx`` (ascending), one
    generator ``rng = np.random.default_rng(seed)`` draws ``rng.permutation(len(idx))``
    and the first ``round_half_up(fraction * len(idx))`` members are selected.
    """
    groups = np.asarray(groups)
    mask = np.zeros(len(groups), dtype=bool)
    rng = np.random.default_rng(seed)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        k = round_half_up(fraction * len(idx))
        mask[idx[rng.permutation(len(idx))[:k]]] = True
    return mask


# --------------------------------------------------------------------------
# Base builder


class ManualImageBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the manual-download image builders (array_record, no TensorFlow).

    Subclasses define ``_features()``, ``_make_generators(manual_dir)`` and the
    class attributes below. The base class:

    * defaults the file format to ``array_record`` and never tries GCS;
    * keeps generation order (``disable_shuffling=True``): record ``i`` of a split
      is the ``i``-th example the generator yields (documented per builder);
    * counts examples per split for the features in ``COUNTED`` (and pairs in
      ``JOINT_COUNTED``), collects skipped inputs and re-encoded images, and writes
      them to ``prepare_report.json`` and ``skipped.json`` in the prepared dir.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    DESCRIPTION: str = ""
    HOMEPAGE: str = ""
    CITATION: str = ""
    SUPERVISED_KEYS: tuple[str, str] | None = None
    COUNTED: tuple[str, ...] = ()
    JOINT_COUNTED: tuple[tuple[str, str], ...] = ()

    def __init__(self, *, file_format: str | tfds.core.FileFormat | None = None, **kwargs: Any) -> None:
        super().__init__(file_format=file_format or tfds.core.FileFormat.ARRAY_RECORD, **kwargs)
        self._skips: list[Skip] = []
        self._converted: list[Skip] = []
        self._counts: dict[str, dict[str, collections.Counter]] = {}
        self._manual_root: Path | None = None

    # -- to implement -----------------------------------------------------
    def _features(self) -> tfds.features.FeaturesDict:
        raise NotImplementedError

    def _make_generators(self, manual_dir: Path | None) -> dict[str, Iterator[KeyExample]]:
        """Returns split name -> iterator of (key, example); raises ManualData*Error."""
        raise NotImplementedError

    # -- TFDS hooks ---------------------------------------------------------
    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION or (type(self).__doc__ or "").strip(),
            features=self._features(),
            supervised_keys=self.SUPERVISED_KEYS,
            homepage=self.HOMEPAGE or None,
            citation=self.CITATION or None,
            disable_shuffling=True,
        )

    def download_and_prepare(self, *, download_dir: Any = None,
                             download_config: tfds.download.DownloadConfig | None = None,
                             **kwargs: Any) -> None:
        """Like TFDS's, but never contacts GCS (this data is manual-only)."""
        cfg = download_config or tfds.download.DownloadConfig()
        cfg = dataclasses.replace(cfg, try_download_gcs=False)
        super().download_and_prepare(download_dir=download_dir, download_config=cfg, **kwargs)

    def _download_and_prepare(self, dl_manager: Any, download_config: Any) -> None:
        manual = download_config.manual_dir or getattr(dl_manager, "_manual_dir", None)
        self._manual_root = Path(os.fspath(manual)).expanduser() if manual else None
        self._skips, self._converted, self._counts = [], [], {}
        self.__dict__.pop("_feature_cache", None)  # label names may be set during generation
        super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
        report = self._report_dict()
        (self.data_path / REPORT_FILENAME).write_text(json.dumps(report, indent=1))
        (self.data_path / SKIPPED_FILENAME).write_text(json.dumps(
            {"num_skipped": len(self._skips), "skipped": report["skipped"]}, indent=1))
        if self._skips:
            logger.warning("%s: skipped %d input(s):\n%s", self.name, len(self._skips),
                           "\n".join(f"  [{s.split or '-'}] {s.name}: {s.reason}" for s in self._skips))

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[KeyExample]]:
        gens = self._make_generators(self._manual_root)
        return {split: self._generate_examples(split=split, examples=g) for split, g in gens.items()}

    def _generate_examples(self, split: str, examples: Iterable[KeyExample]) -> Iterator[KeyExample]:
        counts = self._counts.setdefault(split, {})
        n = 0
        for key, ex in examples:
            for name, value in self.count_labels(ex).items():
                counts.setdefault(name, collections.Counter())[value] += 1
            n += 1
            yield key, ex
        if n == 0:
            skipped = [s for s in self._skips if s.split == split]
            raise ManualDataError(
                f"[{self.name}] split {split!r} would be empty: no usable inputs "
                f"({len(skipped)} skipped: {[f'{s.name}: {s.reason}' for s in skipped[:5]]})")

    # -- helpers for subclasses --------------------------------------------
    def skip(self, name: str, reason: str, split: str | None = None) -> None:
        """Records an input left out of the dataset."""
        self._skips.append(Skip(name=name, reason=reason, split=split))

    def verified_images(self, items: Iterable[T], read: Callable[[T], bytes], name: Callable[[T], str],
                        split: str, *, size: tuple[int, int] | None, fmt: str) -> Iterator[tuple[T, bytes]]:
        """Yields ``(item, image bytes)`` in input order, skipping undecodable images.

        ``read(item)`` and :func:`checked_image` run on a small thread pool (PIL
        releases the GIL while decoding) with a bounded look-ahead window.
        """
        def work(item: T) -> tuple[bytes | None, str | None, str | None]:
            try:
                out, note = checked_image(read(item), size=size, fmt=fmt)
            except BadImageError as err:
                return None, None, str(err)
            return out, note, None

        workers = max(1, min(8, os.cpu_count() or 1))
        it = iter(items)
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            window: collections.deque = collections.deque(
                (item, pool.submit(work, item)) for item in itertools.islice(it, 16 * workers))
            while window:
                item, fut = window.popleft()
                for nxt in itertools.islice(it, 1):
                    window.append((nxt, pool.submit(work, nxt)))
                out, note, err = fut.result()
                if out is None:
                    self.skip(name(item), str(err), split)
                    continue
                if note:
                    self._converted.append(Skip(name=name(item), reason=note, split=split))
                yield item, out

    def count_labels(self, example: Mapping[str, Any]) -> dict[str, str]:
        """Maps each counted feature (and joint pair) of ``example`` to a value name."""
        out: dict[str, str] = {}
        for path in self.COUNTED:
            out[path] = self._value_name(path, example)
        for a, b in self.JOINT_COUNTED:
            out[f"{a}+{b}"] = f"{self._value_name(a, example)}/{self._value_name(b, example)}"
        return out

    def _value_name(self, path: str, example: Mapping[str, Any]) -> str:
        cache = self.__dict__.setdefault("_feature_cache", {})
        if path not in cache:
            feat: Any = self.info.features
            for part in path.split("/"):
                feat = feat[part]
            names = feat.names if isinstance(feat, tfds.features.ClassLabel) else None
            cache[path] = (path.split("/"), names)
        parts, names = cache[path]
        value: Any = example
        for part in parts:
            value = value[part]
        if names is not None and not isinstance(value, (str, bytes)):
            return names[int(value)]
        return as_str(value.item() if hasattr(value, "item") else value)

    def _report_dict(self) -> dict[str, Any]:
        split_counts = {s: int(self.info.splits[s].num_examples) for s in self.info.splits.keys()}
        return {
            "dataset": self.name,
            "version": str(self.version),
            "split_counts": split_counts,
            "attribute_counts": {s: {k: dict(sorted(v.items())) for k, v in c.items()}
                                 for s, c in self._counts.items()},
            "skipped": [s.to_json() for s in self._skips],
            "converted": [s.to_json() for s in self._converted],
        }


def read_report(builder: tfds.core.DatasetBuilder) -> dict[str, Any] | None:
    """The ``prepare_report.json`` of a prepared builder, or None if absent."""
    path = Path(os.fspath(builder.data_path)) / REPORT_FILENAME
    if not path.exists():
        return None
    return json.loads(path.read_text())
