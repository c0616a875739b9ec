"""Fixtures generating small manual downloads in the real archive layouts."""

from __future__ import annotations

import io
import pickle
import tarfile
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# --------------------------------------------------------------------------- helpers


def jpeg_bytes(width: int, height: int, seed: int, mode: str = "RGB") -> bytes:
    """A small smooth JPEG (compresses well, so fixtures stay tiny)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(base, "RGB").resize((width, height), Image.BILINEAR)
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def truncated_jpeg(width: int, height: int, seed: int) -> bytes:
    """A JPEG whose entropy-coded data is cut: header parses, decoding fails."""
    data = jpeg_bytes(width, height, seed)
    return data[: len(data) // 2]


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _add_dir(tf: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tf.addfile(info)


# --------------------------------------------------------------------------- UTKFace

UTK_MALFORMED = (
    "39_1_20170116174525125.jpg.chip.jpg",        # race missing (as in the real set)
    "24_0_1_20170116220224657 .jpg.chip.jpg",     # stray space (as in the real set)
)
UTK_CORRUPT = "30_1_2_20170104000000001.jpg.chip.jpg"


def utk_valid_names() -> list[str]:
    """28 well-formed names covering both genders and all 5 races (incl. the corrupt one)."""
    names = [f"{20 + i}_{i % 2}_{i % 5}_2017010{i % 9}12{i:06d}.jpg.chip.jpg" for i in range(27)]
    return names + [UTK_CORRUPT]


@pytest.fixture(scope="session")
def utk_manual_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """manual_dir with UTKFace.tar.gz: 27 good + 1 corrupt JPEG + 2 malformed names."""
    d = tmp_path_factory.mktemp("utk_manual")
    with tarfile.open(d / "UTKFace.tar.gz", "w:gz") as tf:
        _add_dir(tf, "UTKFace")
        for i, n in enumerate(utk_valid_names()):
            data = truncated_jpeg(200, 200, i) if n == UTK_CORRUPT else jpeg_bytes(200, 200, i)
            _add_bytes(tf, f"UTKFace/{n}", data)
        for i, n in enumerate(UTK_MALFORMED):
            _add_bytes(tf, f"UTKFace/{n}", jpeg_bytes(200, 200, 100 + i))
    return d


@pytest.fixture(scope="session")
def utk_folder_manual_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """manual_dir with an extracted UTKFace/ folder (10 good images, 1 malformed)."""
    d = tmp_path_factory.mktemp("utk_folder")
    (d / "UTKFace").mkdir()
    for i, n in enumerate(utk_valid_names()[:10]):
        (d / "UTKFace" / n).write_bytes(jpeg_bytes(200, 200, i))
    (d / "UTKFace" / UTK_MALFORMED[0]).write_bytes(jpeg_bytes(200, 200, 9))
    return d


# --------------------------------------------------------------------------- CelebA



def _celeba_attrs() -> tuple[str, ...]:
    from ballot_jax.data.builders.celeb_a import ATTRIBUTE_NAMES  # pylint: disable=import-outside-toplevel
    return ATTRIBUTE_NAMES


CELEBA_PARTITION = [0] * 8 + [1] * 2 + [2] * 2  # 12 images: 8 / 2 / 2
CELEBA_CORRUPT = "000005.jpg"


def celeba_values(i: int) -> list[int]:
    """Deterministic -1/1 attribute row of image i (Male = odd i, Smiling = i % 3 == 0)."""
    attrs = _celeba_attrs()
    row = [1 if (i + j) % 4 == 0 else -1 for j in range(len(attrs))]
    row[attrs.index("Male")] = 1 if i % 2 else -1
    row[attrs.index("Smiling")] = 1 if i % 3 == 0 else -1
    return row


def _write_celeba_lists(d: Path, n: int) -> None:
    attrs = _celeba_attrs()
    lines = [str(n), " ".join(attrs) + " "]
    for i in range(1, n + 1):
        lines.append(f"{i:06d}.jpg " + " ".join(f"{v:2d}" for v in celeba_values(i)))
    (d / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (d / "list_eval_partition.txt").write_text(
        "".join(f"{i:06d}.jpg {CELEBA_PARTITION[i - 1]}\n" for i in range(1, n + 1)))


@pytest.fixture(scope="session")
def celeba_manual_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """img_align_celeba/ folder with 12 images (one corrupt) + attr & partition files."""
    d = tmp_path_factory.mktemp("celeba_manual")
    (d / "img_align_celeba").mkdir()
    for i in range(1, 13):
        name = f"{i:06d}.jpg"
        data = truncated_jpeg(178, 218, i) if name == CELEBA_CORRUPT else jpeg_bytes(178, 218, i)
        (d / "img_align_celeba" / name).write_bytes(data)
    _write_celeba_lists(d, 12)
    return d


@pytest.fixture(scope="session")
def celeba_zip_manual_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """img_align_celeba.zip with 4 images, attr/partition files listing 5 (one missing)."""
    d = tmp_path_factory.mktemp("celeba_zip")
    with zipfile.ZipFile(d / "img_align_celeba.zip", "w") as zf:
        zf.writestr("img_align_celeba/", b"")
        for i in range(1, 5):
            zf.writestr(f"img_align_celeba/{i:06d}.jpg", jpeg_bytes(178, 218, i))
    _write_celeba_lists(d, 5)
    # 5 images listed; image 5 (partition 0) is absent from the zip.
    (d / "list_eval_partition.txt").write_text(
        "000001.jpg 0\n000002.jpg 0\n000003.jpg 1\n000004.jpg 2\n000005.jpg 0\n")
    return d


# --------------------------------------------------------------------------- CIFAR

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_PER_BATCH = 40  # 5 batches -> 200 training images, 20 per class
CIFAR10_TEST = 30


def _cifar_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _pickle(obj: object) -> bytes:
    return pickle.dumps(obj, protocol=2)


@pytest.fixture(scope="session")
def cifar10_manual_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cifar-10-python.tar.gz with 5 x 40 training and 30 test images (bytes keys, as the real pickles)."""
    d = tmp_path_factory.mktemp("cifar10_manual")
    with tarfile.open(d / "cifar-10-python.tar.gz", "w:gz") as tf:
        _add_dir(tf, "cifar-10-batches-py")
        for b in range(1, 6):
            labels = [(b + i) % 10 for i in range(CIFAR10_PER_BATCH)]
            _add_bytes(tf, f"cifar-10-batches-py/data_batch_{b}", _pickle({
                b"batch_label": f"training batch {b} of 5".encode(), b"labels": labels,
                b"data": _cifar_images(CIFAR10_PER_BATCH, b),
                b"filenames": [f"img_{b}_{i}.png".encode() for i in range(CIFAR10_PER_BATCH)]}))
        _add_bytes(tf, "cifar-10-batches-py/test_batch", _pickle({
            b"batch_label": b"testing batch 1 of 1", b"labels": [i % 10 for i in range(CIFAR10_TEST)],
            b"data": _cifar_images(CIFAR10_TEST, 99),
            b"filenames": [f"test_{i}.png".encode() for i in range(CIFAR10_TEST)]}))
        _add_bytes(tf, "cifar-10-batches-py/batches.meta", _pickle({
            b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_cases_per_batch": CIFAR10_PER_BATCH,
            b"num_vis": 3072}))
    return d


CIFAR100_TRAIN = 500  # 5 per fine class, so the 10% holdout takes 1 of each
CIFAR100_TEST = 40


@pytest.fixture(scope="session")
def cifar100_manual_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cifar-100-python.tar.gz with 500 training and 40 test images."""
    d = tmp_path_factory.mktemp("cifar100_manual")
    fine_names = [f"fine_{i:02d}" for i in range(100)]
    coarse_names = [f"coarse_{i:02d}" for i in range(20)]

    def batch(n: int, seed: int, name: bytes) -> dict:
        fine = [(seed + i) % 100 for i in range(n)]
        return {b"filenames": [f"{i}.png".encode() for i in range(n)], b"batch_label": name,
                b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine],
                b"data": _cifar_images(n, seed)}

    with tarfile.open(d / "cifar-100-python.tar.gz", "w:gz") as tf:
        _add_dir(tf, "cifar-100-python")
        _add_bytes(tf, "cifar-100-python/train", _pickle(batch(CIFAR100_TRAIN, 1, b"training batch 1 of 1")))
        _add_bytes(tf, "cifar-100-python/test", _pickle(batch(CIFAR100_TEST, 2, b"testing batch 1 of 1")))
        _add_bytes(tf, "cifar-100-python/meta", _pickle({
            b"fine_label_names": [n.encode() for n in fine_names],
            b"coarse_label_names": [n.encode() for n in coarse_names]}))
    return d


# --------------------------------------------------------------------------- Tiny ImageNet

TINY_WNIDS = ["n02124075", "n01443537", "n04067472"]  # deliberately unsorted, like wnids.txt
TINY_TRAIN_PER_CLASS = 10
TINY_GRAY = "n01443537_3.JPEG"


@pytest.fixture(scope="session")
def tiny_manual_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-imagenet-200.zip with 3 wnids x 10 train images, 6 val images, 2 test images."""
    d = tmp_path_factory.mktemp("tiny_manual")
    root = "tiny-imagenet-200"
    with zipfile.ZipFile(d / "tiny-imagenet-200.zip", "w") as zf:
        zf.writestr(f"{root}/wnids.txt", "\n".join(TINY_WNIDS) + "\n")
        zf.writestr(f"{root}/words.txt", "".join(f"{w}\tthing {w}\n" for w in TINY_WNIDS + ["n00000001"]))
        for c, w in enumerate(TINY_WNIDS):
            boxes = []
            for k in range(TINY_TRAIN_PER_CLASS):
                name = f"{w}_{k}.JPEG"
                mode = "L" if name == TINY_GRAY else "RGB"
                zf.writestr(f"{root}/train/{w}/images/{name}", jpeg_bytes(64, 64, 10 * c + k, mode))
                boxes.append(f"{name}\t0\t0\t63\t63\n")
            zf.writestr(f"{root}/train/{w}/{w}_boxes.txt", "".join(boxes))
        ann = []
        for k in range(6):
            name = f"val_{k}.JPEG"
            zf.writestr(f"{root}/val/images/{name}", jpeg_bytes(64, 64, 500 + k))
            ann.append(f"{name}\t{TINY_WNIDS[k % 3]}\t1\t2\t60\t61\n")
        zf.writestr(f"{root}/val/val_annotations.txt", "".join(ann))
        for k in range(2):
            zf.writestr(f"{root}/test/images/test_{k}.JPEG", jpeg_bytes(64, 64, 900 + k))
    return d


# --------------------------------------------------------------------------- for assertions


@pytest.fixture(scope="session")
def gen() -> types.SimpleNamespace:
    """The constants and helpers the fixtures above were generated with."""
    return types.SimpleNamespace(
        UTK_MALFORMED=UTK_MALFORMED, UTK_CORRUPT=UTK_CORRUPT, utk_valid_names=utk_valid_names,
        CELEBA_PARTITION=CELEBA_PARTITION, CELEBA_CORRUPT=CELEBA_CORRUPT, celeba_values=celeba_values,
        CIFAR10_NAMES=CIFAR10_NAMES, CIFAR10_PER_BATCH=CIFAR10_PER_BATCH, CIFAR10_TEST=CIFAR10_TEST,
        cifar_images=_cifar_images, CIFAR100_TRAIN=CIFAR100_TRAIN, CIFAR100_TEST=CIFAR100_TEST,
        TINY_WNIDS=TINY_WNIDS, TINY_TRAIN_PER_CLASS=TINY_TRAIN_PER_CLASS, TINY_GRAY=TINY_GRAY,
        jpeg_bytes=jpeg_bytes, truncated_jpeg=truncated_jpeg,
    )
