"""Builders prepare small fixture archives (real layouts) and read back without TensorFlow."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ballot_jax.data import prepare as prep
from ballot_jax.data.builders import (
    ATTRIBUTE_NAMES,
    REPORT_FILENAME,
    SKIPPED_FILENAME,
    CelebAManual,
    Cifar10S,
    ManualDataLayoutError,
    ManualDataMissingError,
    TinyImagenet,
    UtkFace,
    gray_mask,
    list_utkface_names,
    parse_utkface_name,
    utkface_split,
)
from ballot_jax.data.builders._common import to_grayscale_rgb

REPO_ROOT = Path(__file__).resolve().parents[2]


class SmallTinyImagenet(TinyImagenet, skip_registration=True):
    """Tiny ImageNet with 3 classes, for the 3-wnid fixture zip."""

    name = "tiny_imagenet_small_test"
    NUM_CLASSES = 3


def _all(source) -> list[dict]:
    return [source[i] for i in range(len(source))]


def _prepare_builder(builder, manual_dir: Path) -> None:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))


# --------------------------------------------------------------------------- prepared fixtures


@pytest.fixture(scope="module")
def utk(utk_manual_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    data_dir = tmp_path_factory.mktemp("utk_data")
    return prep.prepare("utk_face", utk_manual_dir, data_dir), data_dir


@pytest.fixture(scope="module")
def cifar10s(cifar10_manual_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    data_dir = tmp_path_factory.mktemp("c10s_data")
    return prep.prepare("cifar10_s", cifar10_manual_dir, data_dir), data_dir


# --------------------------------------------------------------------------- UTKFace


def test_parse_utkface_name() -> None:
    assert parse_utkface_name("UTKFace/25_1_3_20170104000000001.jpg.chip.jpg") == (25, 1, 3)
    assert parse_utkface_name("1_0_0_20161219140623097.jpg.chip.jpg") == (1, 0, 0)
    for bad in ("39_1_20170116174525125.jpg.chip.jpg", "24_0_1_20170116220224657 .jpg.chip.jpg",
                "55_0_0_20170116232725357jpg.chip.jpg", "25_2_0_20170104.jpg.chip.jpg",
                "25_0_5_20170104.jpg.chip.jpg", "25_0_0_20170104.jpg", ".DS_Store"):
        assert parse_utkface_name(bad) is None, bad


def test_utkface_split_is_seeded_and_documented() -> None:
    names = [f"{i}_0_0_{i:08d}.jpg.chip.jpg" for i in range(1, 101)]
    a = utkface_split(names)
    assert a == utkface_split(list(reversed(names)))  # order of input irrelevant
    assert [len(a[s]) for s in ("train", "validation", "test")] == [80, 10, 10]
    assert sorted(a["train"] + a["validation"] + a["test"]) == sorted(names)
    assert all(a[s] == sorted(a[s]) for s in a)
    perm = np.random.default_rng(0).permutation(100)
    assert a["validation"] == sorted(sorted(names)[i] for i in perm[80:90])
    assert utkface_split(names, seed=1) != a


def test_list_utkface_names(utk_manual_dir: Path, gen) -> None:
    for path in (utk_manual_dir, utk_manual_dir / "UTKFace.tar.gz"):
        listing = list_utkface_names(path)
        assert listing.valid == sorted(gen.utk_valid_names())
        assert sorted(n for n, _ in listing.malformed) == sorted(gen.UTK_MALFORMED)


def test_utk_face_prepare_counts_and_skips(utk, gen) -> None:
    report, _ = utk
    valid = gen.utk_valid_names()
    expected = utkface_split(valid)
    corrupt_split = next(s for s, names in expected.items() if gen.UTK_CORRUPT in names)
    sizes = {s: len(n) - (s == corrupt_split) for s, n in expected.items()}
    assert report.split_counts == sizes
    assert report.total == len(valid) - 1
    reasons = {s.name: s.reason for s in report.skipped}
    assert set(reasons) == {*gen.UTK_MALFORMED, gen.UTK_CORRUPT}
    assert all("malformed name" in reasons[n] for n in gen.UTK_MALFORMED)
    assert "undecodable" in reasons[gen.UTK_CORRUPT]
    assert [s.split for s in report.skipped if s.name == gen.UTK_CORRUPT] == [corrupt_split]
    # per-attribute counts agree with the file names
    good = [n for n in valid if n != gen.UTK_CORRUPT]
    races = [("white", "black", "asian", "indian", "others")[parse_utkface_name(n)[2]] for n in good]
    assert report.counts("race") == {r: races.count(r) for r in set(races)}
    assert sum(report.counts("gender").values()) == len(good)
    text = report.format()
    assert "skipped: 3" in text and gen.UTK_CORRUPT in text and "race:" in text


def test_utk_face_reads_back_through_data_source(utk, gen) -> None:
    report, data_dir = utk
    builder = prep.builder_for("utk_face", data_dir)
    assert builder.info.features["gender"].names == ["male", "female"]
    assert builder.info.features["race"].names == ["white", "black", "asian", "indian", "others"]
    assert builder.info.features["age"].np_dtype == np.int32
    expected = utkface_split(gen.utk_valid_names())
    for split in ("train", "validation", "test"):
        records = _all(builder.as_data_source(split))
        assert len(records) == report.split_counts[split]
        names = [r["filename"].decode() for r in records]
        assert names == [n for n in expected[split] if n != gen.UTK_CORRUPT]  # sorted order kept
        for r, n in zip(records, names):
            assert r["image"].shape == (200, 200, 3) and r["image"].dtype == np.uint8
            assert (int(r["age"]), int(r["gender"]), int(r["race"])) == parse_utkface_name(n)
    skipped = json.loads((Path(builder.data_path) / SKIPPED_FILENAME).read_text())
    assert skipped["num_skipped"] == 3
    assert (Path(builder.data_path) / REPORT_FILENAME).exists()
    assert "tensorflow" not in sys.modules


def test_utk_face_original_jpeg_bytes_are_kept(utk, utk_manual_dir: Path) -> None:
    _, data_dir = utk
    builder = prep.builder_for("utk_face", data_dir)
    rec = builder.as_data_source("train", decoders={"image": tfds.decode.SkipDecoding()})[0]
    with tarfile.open(utk_manual_dir / "UTKFace.tar.gz") as tf:
        original = tf.extractfile(f"UTKFace/{rec['filename'].decode()}").read()
    assert rec["image"] == original


def test_prepare_again_is_a_noop_with_counts(utk, utk_manual_dir: Path) -> None:
    report, data_dir = utk
    again = prep.prepare("utkface", utk_manual_dir / "does-not-matter", data_dir)
    assert again.already_prepared
    assert again.split_counts == report.split_counts
    assert again.attribute_counts == report.attribute_counts
    assert again.skipped == report.skipped
    assert "already prepared" in again.format()


def test_report_without_json_counts_records(utk) -> None:
    report, data_dir = utk
    builder = prep.builder_for("utk_face", data_dir)
    path = Path(builder.data_path) / REPORT_FILENAME
    saved = path.read_text()
    path.unlink()
    try:
        recount = prep.report_for(builder)
    finally:
        path.write_text(saved)
    assert recount.attribute_counts == report.attribute_counts
    assert recount.skipped == []


def test_utk_face_from_extracted_folder(utk_folder_manual_dir: Path, tmp_path: Path) -> None:
    report = prep.prepare("utk_face", utk_folder_manual_dir, tmp_path)
    assert report.split_counts == {"train": 8, "validation": 1, "test": 1}
    assert [s.name for s in report.skipped] == ["39_1_20170116174525125.jpg.chip.jpg"]


# --------------------------------------------------------------------------- CelebA


def test_celeb_a_from_folder(celeba_manual_dir: Path, tmp_path: Path, gen) -> None:
    report = prep.prepare("celeb_a", celeba_manual_dir, tmp_path)
    assert report.dataset == "celeb_a_manual"
    assert report.split_counts == {"train": 7, "validation": 2, "test": 2}  # 8 train - 1 corrupt
    assert [(s.name, s.split) for s in report.skipped] == [(gen.CELEBA_CORRUPT, "train")]
    builder = CelebAManual(data_dir=str(tmp_path))
    assert list(builder.info.features["attributes"].keys()) == list(ATTRIBUTE_NAMES)
    partition = {f"{i:06d}.jpg": ("train", "validation", "test")[p]
                 for i, p in enumerate(gen.CELEBA_PARTITION, start=1)}
    for split in ("train", "validation", "test"):
        for rec in _all(builder.as_data_source(split)):
            name = rec["filename"].decode()
            assert partition[name] == split
            assert rec["image"].shape == (218, 178, 3)
            want = [(v + 1) // 2 for v in gen.celeba_values(int(name[:6]))]
            assert [int(rec["attributes"][a]) for a in ATTRIBUTE_NAMES] == want
    males = sum(gen.celeba_values(i)[ATTRIBUTE_NAMES.index("Male")] == 1
                for i in range(1, 13) if f"{i:06d}.jpg" != gen.CELEBA_CORRUPT)
    assert report.counts("attributes/Male").get("1", 0) == males


def test_celeb_a_from_zip_reports_missing_image(celeba_zip_manual_dir: Path, tmp_path: Path) -> None:
    report = prep.prepare("celeb_a_manual", celeba_zip_manual_dir, tmp_path)
    assert report.split_counts == {"train": 2, "validation": 1, "test": 1}
    assert len(report.skipped) == 1
    assert report.skipped[0].name == "000005.jpg" and "missing" in report.skipped[0].reason


def test_celeb_a_wrong_attribute_header(celeba_manual_dir: Path, tmp_path: Path) -> None:
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "img_align_celeba").symlink_to(celeba_manual_dir / "img_align_celeba")
    (manual / "list_eval_partition.txt").write_text((celeba_manual_dir / "list_eval_partition.txt").read_text())
    lines = (celeba_manual_dir / "list_attr_celeba.txt").read_text().splitlines()
    lines[1] = lines[1].replace("Male", "Man")
    (manual / "list_attr_celeba.txt").write_text("\n".join(lines))
    with pytest.raises(ManualDataLayoutError, match="attribute names"):
        prep.prepare("celeb_a", manual, tmp_path / "data")


# --------------------------------------------------------------------------- CIFAR-10S


def test_cifar10_s_splits_and_skew(cifar10s, gen) -> None:
    report, data_dir = cifar10s
    n_train = 5 * gen.CIFAR10_PER_BATCH
    assert report.split_counts["train"] + report.split_counts["validation"] == n_train
    assert report.split_counts["test"] == 2 * gen.CIFAR10_TEST
    per_class = n_train // 10  # 20
    both = {s: report.counts("label+color", s) for s in ("train", "validation")}
    for c, name in enumerate(gen.CIFAR10_NAMES):
        gray = sum(both[s].get(f"{name}/gray", 0) for s in both)
        color = sum(both[s].get(f"{name}/color", 0) for s in both)
        assert gray + color == per_class
        assert gray == (1 if c < 5 else 19)  # round(5% of 20) / round(95% of 20)
    # validation: 10% of every (label, colour) group -> the skew is kept
    assert report.counts("color", "validation") == {"color": 10, "gray": 10}
    assert report.counts("color", "test") == {"color": gen.CIFAR10_TEST, "gray": gen.CIFAR10_TEST}


def test_cifar10_s_pixels(cifar10s, gen) -> None:
    _, data_dir = cifar10s
    builder = prep.builder_for("cifar10_s", data_dir)
    assert builder.info.features["label"].names == gen.CIFAR10_NAMES
    assert builder.info.features["color"].names == ["color", "gray"]
    src = gen.cifar_images(gen.CIFAR10_TEST, 99).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    test = _all(builder.as_data_source("test"))
    n = gen.CIFAR10_TEST
    for i in range(n):
        col, gray = test[i], test[n + i]
        assert int(col["color"]) == 0 and int(gray["color"]) == 1
        assert int(col["label"]) == int(gray["label"]) == i % 10
        np.testing.assert_array_equal(col["image"], src[i])  # PNG: lossless
        np.testing.assert_array_equal(gray["image"], to_grayscale_rgb(src[i]))
        assert (gray["image"][..., 0] == gray["image"][..., 2]).all()
    train = _all(builder.as_data_source("train"))
    for rec in train[:20]:
        img = rec["image"]
        is_gray = bool((img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all())
        assert is_gray == bool(rec["color"])


def test_gray_mask_rule() -> None:
    labels = np.repeat(np.arange(10), 5000)
    mask = gray_mask(labels)
    per_class = [int(mask[labels == c].sum()) for c in range(10)]
    assert per_class == [250] * 5 + [4750] * 5
    assert (gray_mask(labels) == mask).all()


def test_cifar10_missing_member(tmp_path: Path, cifar10_manual_dir: Path) -> None:
    manual = tmp_path / "manual"
    manual.mkdir()
    with tarfile.open(cifar10_manual_dir / "cifar-10-python.tar.gz") as src, \
            tarfile.open(manual / "cifar-10-python.tar.gz", "w:gz") as dst:
        for m in src:
            if not m.name.endswith("test_batch"):
                dst.addfile(m, src.extractfile(m) if m.isfile() else None)
    with pytest.raises(ManualDataLayoutError, match="test_batch") as err:
        prep.prepare("cifar10_s", manual, tmp_path / "data")
    assert "data_batch_1" in str(err.value)  # says what was found


# --------------------------------------------------------------------------- CIFAR-100


def test_cifar100(cifar100_manual_dir: Path, tmp_path: Path, gen) -> None:
    report = prep.prepare("cifar100", cifar100_manual_dir, tmp_path)
    assert report.split_counts == {"train": gen.CIFAR100_TRAIN - 100, "validation": 100,
                                   "test": gen.CIFAR100_TEST}
    builder = prep.builder_for("cifar100_manual", tmp_path)
    assert builder.info.features["label"].names[:2] == ["fine_00", "fine_01"]
    assert len(builder.info.features["coarse_label"].names) == 20
    recs = _all(builder.as_data_source("validation"))
    assert sorted(int(r["label"]) for r in recs) == list(range(100))  # stratified: 1 per class
    for r in recs:
        assert r["image"].shape == (32, 32, 3)
        assert int(r["coarse_label"]) == int(r["label"]) // 5


# --------------------------------------------------------------------------- Tiny ImageNet


def test_tiny_imagenet(tiny_manual_dir: Path, tmp_path: Path, gen) -> None:
    builder = SmallTinyImagenet(data_dir=str(tmp_path))
    _prepare_builder(builder, tiny_manual_dir)
    report = prep.report_for(builder)
    assert report.split_counts == {"train": 27, "validation": 3, "test": 6}
    assert builder.info.features["label"].names == sorted(gen.TINY_WNIDS)
    assert [c.name.rsplit("/", 1)[-1] for c in report.converted] == [gen.TINY_GRAY]
    reread = SmallTinyImagenet(data_dir=str(tmp_path))
    assert reread.info.features["label"].names == sorted(gen.TINY_WNIDS)
    wnids = sorted(gen.TINY_WNIDS)
    for split in ("train", "validation", "test"):
        for r in _all(reread.as_data_source(split)):
            assert r["image"].shape == (64, 64, 3)
            name = r["filename"].decode()
            if split == "test":
                k = int(name.split("_")[1].split(".")[0])
                assert wnids[int(r["label"])] == gen.TINY_WNIDS[k % 3]
            else:
                assert name.startswith(wnids[int(r["label"])])
    assert report.counts("label", "validation") == {w: 1 for w in wnids}


def test_tiny_imagenet_needs_200_wnids(tiny_manual_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ManualDataLayoutError, match="200 wnids"):
        prep.prepare("tiny_imagenet", tiny_manual_dir, tmp_path)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("dataset, expected", [
    ("utk_face", "UTKFace.tar.gz"), ("celeb_a", "img_align_celeba.zip"),
    ("cifar10_s", "cifar-10-python.tar.gz"), ("cifar100", "cifar-100-python.tar.gz"),
    ("tiny_imagenet", "tiny-imagenet-200.zip")])
def test_missing_manual_input(dataset: str, expected: str, tmp_path: Path) -> None:
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "unrelated.txt").write_text("x")
    with pytest.raises(ManualDataMissingError) as err:
        prep.prepare(dataset, manual, tmp_path / "data")
    assert isinstance(err.value, FileNotFoundError)
    assert expected in str(err.value) and str(manual) in str(err.value)
    assert "place" in str(err.value).lower()
    with pytest.raises(ManualDataMissingError, match="does not exist"):
        prep.prepare(dataset, tmp_path / "nowhere", tmp_path / "data")


def test_utk_wrong_layout_names_what_was_found(tmp_path: Path, gen) -> None:
    manual = tmp_path / "manual"
    manual.mkdir()
    with tarfile.open(manual / "UTKFace.tar.gz", "w:gz") as tf:
        data = gen.jpeg_bytes(200, 200, 0)
        info = tarfile.TarInfo("crop_part1/25_0_0_20170104.jpg.chip.jpg")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    with pytest.raises(ManualDataLayoutError, match="crop_part1/") as err:
        prep.prepare("utk_face", manual, tmp_path / "data")
    assert "UTKFace/" in str(err.value)


def test_unreadable_archive(tmp_path: Path) -> None:
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "UTKFace.tar.gz").write_bytes(b"this is not a tar file" * 10)
    with pytest.raises(ManualDataLayoutError, match="readable tar"):
        prep.prepare("utk_face", manual, tmp_path / "data")


def test_all_inputs_corrupt_is_an_error_not_an_empty_split(tmp_path: Path, gen) -> None:
    manual = tmp_path / "manual"
    (manual / "UTKFace").mkdir(parents=True)
    for i, n in enumerate(gen.utk_valid_names()[:10]):
        (manual / "UTKFace" / n).write_bytes(gen.truncated_jpeg(200, 200, i))
    with pytest.raises(Exception, match="would be empty"):
        prep.prepare("utk_face", manual, tmp_path / "data")


def test_wrong_image_size_is_skipped(tmp_path: Path, gen) -> None:
    manual = tmp_path / "manual"
    (manual / "UTKFace").mkdir(parents=True)
    names = gen.utk_valid_names()[:11]
    for i, n in enumerate(names):
        (manual / "UTKFace" / n).write_bytes(gen.jpeg_bytes(200, 200 if i else 100, i))
    report = prep.prepare("utk_face", manual, tmp_path / "data")
    assert report.total == 10
    assert [s.name for s in report.skipped] == [names[0]]
    assert "unexpected size 200x100" in report.skipped[0].reason


# --------------------------------------------------------------------------- prepare API / CLI


def test_dataset_registry() -> None:
    for name, cls in prep.DATASETS.items():
        assert cls.name == name
        assert "<manual_dir>" in cls.MANUAL_DOWNLOAD_INSTRUCTIONS
    assert prep.resolve_dataset("celeb_a") == "celeb_a_manual"
    assert prep.resolve_dataset("CIFAR-100") == "cifar100_manual"
    assert isinstance(prep.builder_for("utkface", "/tmp/unused-data-dir"), UtkFace)
    assert isinstance(prep.builder_for("cifar10s", "/tmp/unused-data-dir"), Cifar10S)
    with pytest.raises(prep.UnknownDatasetError, match="utk_face.*cifar10_s"):
        prep.builder_for("mnist", "/tmp/unused-data-dir")


def test_builders_default_to_array_record() -> None:
    b = UtkFace(data_dir="/tmp/unused-data-dir")
    assert b.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
    assert set(UtkFace.MANUAL_DOWNLOAD_INSTRUCTIONS.split()) >= {"<manual_dir>/UTKFace.tar.gz"}


def test_cli_main(utk, utk_manual_dir: Path, capsys: pytest.CaptureFixture) -> None:
    report, data_dir = utk
    rc = prep.main(["prepare", "--dataset=utk_face", f"--manual_dir={utk_manual_dir}",
                    f"--data_dir={data_dir}"])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"train {report.split_counts['train']}" in out and "race:" in out and "skipped: 3" in out
    rc = prep.main(["prepare", "--dataset=cifar10_s", f"--manual_dir={utk_manual_dir}",
                    f"--data_dir={data_dir}"])
    assert rc == 2 and "cifar-10-python.tar.gz" in capsys.readouterr().err


def test_python_dash_m_entry_point() -> None:
    proc = subprocess.run([sys.executable, "-m", "ballot_jax.data", "list"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "utk_face" in proc.stdout and "UTKFace.tar.gz" in proc.stdout
