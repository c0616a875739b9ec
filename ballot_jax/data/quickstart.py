"""Quickstart data: scikit-learn's 8x8 digits as a skewed colour/gray task.

THIS IS A SMOKE DEMO, NOT A BENCHMARK. It exists so that examples, tests and
CI can train something real in seconds with nothing to download: the data
ships inside scikit-learn (``sklearn.datasets.load_digits``: 1,797 grayscale
8x8 images of the digits 0-9, 16 intensity levels). Numbers obtained on it say
nothing about CIFAR-10S, CelebA or UTKFace.

Construction, in the spirit of CIFAR-10S (a colour/gray skew per class):

* the 1,797 images are split by a seeded permutation (``seed``, default 0)
  into test (``round(0.3 * 1797) = 539`` images), validation
  (``round(0.1 * 1797) = 180``) and train (the remaining 1,078);
* every image is upsampled bilinearly from 8x8 to ``image_size`` (default 16)
  and rendered either in *colour* (the digit's intensity times a saturated
  colour of random hue, black background) or in *gray* (the intensity on all
  three channels);
* train and validation are skewed: within each of the digits 0-4 exactly
  ``round(color_fraction * n_class)`` images are colour (default
  ``color_fraction=0.95``), within 5-9 exactly that many are gray; the images
  chosen are seeded;
* test contains every test image twice, once in colour and once in gray
  (1,078 examples: the 539 colour versions first, then the 539 gray ones).

Sensitive attribute ``color``: 0 = colour, 1 = gray (as in ``cifar10_s``).
Images are stored as ``uint8[N, S, S, 3]``. With the defaults the splits have
1,078 (train), 180 (validation) and 1,078 (test) examples.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os

import numpy as np

__all__ = [
    "QUICKSTART_CLASS_NAMES",
    "QUICKSTART_COLOR_NAMES",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_SEED",
    "DEFAULT_COLOR_FRACTION",
    "DEFAULT_VAL_FRACTION",
    "DEFAULT_TEST_FRACTION",
    "load_digits_arrays",
    "quickstart_arrays",
]

QUICKSTART_CLASS_NAMES: list[str] = [str(d) for d in range(10)]
QUICKSTART_COLOR_NAMES: list[str] = ["color", "gray"]
# The defaults of quickstart_arrays (and so of the data config keys image_size, data_seed,
# color_fraction, val_fraction and test_fraction for the quickstart; see tasks.DEFAULTS).
DEFAULT_IMAGE_SIZE = 16
DEFAULT_SEED = 0
DEFAULT_COLOR_FRACTION = 0.95
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_TEST_FRACTION = 0.3
_NUM_DIGITS = 1797


@functools.cache
def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``(images float32[1797, 8, 8] in [0, 16], labels int32[1797])`` from scikit-learn.

    Reads the CSV bundled with scikit-learn directly (importing
    ``sklearn.datasets`` costs ~2 s); falls back to ``load_digits`` if the file
    is not where it is expected.
    """
    spec = importlib.util.find_spec("sklearn")
    path = None
    if spec is not None and spec.origin:
        candidate = os.path.join(os.path.dirname(spec.origin), "datasets", "data", "digits.csv.gz")
        if os.path.exists(candidate):
            path = candidate
    if path is not None:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float32)
        images, labels = table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int32)
    else:  # pragma: no cover - depends on scikit-learn's layout
        from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel

        digits = load_digits()
        images, labels = digits.images.astype(np.float32), digits.target.astype(np.int32)
    if images.shape != (_NUM_DIGITS, 8, 8):
        raise RuntimeError(f"unexpected digits data shape {images.shape}")
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` bilinear interpolation weights (half-pixel centres, edge clamp)."""
    centers = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    centers = np.clip(centers, 0, n_in - 1)
    lo = np.floor(centers).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = centers - lo
    m = np.zeros((n_out, n_in), np.float64)
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m


def _hue_to_rgb(hue: np.ndarray) -> np.ndarray:
    """Fully saturated, full-value RGB colours ``[N, 3]`` for hues in ``[0, 1)``."""
    h6 = hue[:, None] * 6.0
    r = np.clip(np.abs(h6 - 3.0) - 1.0, 0.0, 1.0)
    g = np.clip(2.0 - np.abs(h6 - 2.0), 0.0, 1.0)
    b = np.clip(2.0 - np.abs(h6 - 4.0), 0.0, 1.0)
    return np.concatenate([r, g, b], axis=1)


def _render(intensity: np.ndarray, colour: np.ndarray | None) -> np.ndarray:
    """uint8 RGB images from intensities ``[N, S, S]`` in [0, 1] (gray if ``colour`` is None)."""
    if colour is None:
        rgb = np.repeat(intensity[..., None], 3, axis=-1)
    else:
        rgb = intensity[..., None] * colour[:, None, None, :]
    return np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)


def _skewed_gray_mask(labels: np.ndarray, color_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """1 = gray, 0 = colour; exact per-class proportions, digits 0-4 mostly colour."""
    gray = np.zeros(len(labels), np.int32)
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        n_color = int(round(color_fraction * len(members)))
        if digit >= 5:
            n_color = len(members) - n_color
        shuffled = rng.permutation(members)
        gray[shuffled[n_color:]] = 1
    return gray


def quickstart_arrays(
    *,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = DEFAULT_SEED,
    color_fraction: float = DEFAULT_COLOR_FRACTION,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> dict[str, dict[str, np.ndarray]]:
    """The quickstart splits as arrays.

    Returns ``{"train"|"validation"|"test": {"image": uint8[N,S,S,3],
    "label": int32[N], "color": int32[N] (0 colour, 1 gray),
    "digit_index": int32[N] (row in load_digits)}}``. See the module docstring.
    """
    if not 0.5 <= color_fraction <= 1.0:
        raise ValueError(f"color_fraction must be in [0.5, 1], got {color_fraction}")
    if val_fraction < 0 or test_fraction <= 0 or val_fraction + test_fraction >= 1:
        raise ValueError(f"bad fractions: val_fraction={val_fraction}, test_fraction={test_fraction}")
    images, labels = load_digits_arrays()
    n = len(labels)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5A17]))
    perm = rng.permutation(n)
    n_test = int(round(test_fraction * n))
    n_val = int(round(val_fraction * n))
    split_index = {
        "test": np.sort(perm[:n_test]),
        "validation": np.sort(perm[n_test : n_test + n_val]),
        "train": np.sort(perm[n_test + n_val :]),
    }
    # Upsample every image once; colours are drawn per image, used if colour.
    m = _bilinear_matrix(8, int(image_size))
    intensity = np.einsum("ij,njk,lk->nil", m, images.astype(np.float64) / 16.0, m)
    colours = _hue_to_rgb(rng.random(n))

    out: dict[str, dict[str, np.ndarray]] = {}
    for split in ("train", "validation"):
        idx = split_index[split]
        gray = _skewed_gray_mask(labels[idx], color_fraction, rng)
        rendered = np.where(
            gray[:, None, None, None] == 1,
            _render(intensity[idx], None),
            _render(intensity[idx], colours[idx]),
        )
        out[split] = {"image": rendered, "label": labels[idx].copy(), "color": gray,
                      "digit_index": idx.astype(np.int32)}
    idx = split_index["test"]
    out["test"] = {
        "image": np.concatenate([_render(intensity[idx], colours[idx]), _render(intensity[idx], None)]),
        "label": np.concatenate([labels[idx], labels[idx]]),
        "color": np.concatenate([np.zeros(len(idx), np.int32), np.ones(len(idx), np.int32)]),
        "digit_index": np.concatenate([idx, idx]).astype(np.int32),
    }
    return out
