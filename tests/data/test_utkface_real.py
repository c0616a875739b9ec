"""Checks on the real UTKFace archive (``../shared/data/UTKFace.tar.gz`` from the repo root).

Skipped when the archive is absent. The full prepare (about 15-20 s on 2 cores)
is marked slow; run it with ``pytest -m slow tests/data/test_utkface_real.py``.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path

import pytest

from ballot_jax.data import prepare as prep
from ballot_jax.data.builders import RACE_NAMES, list_utkface_names, parse_utkface_name

REPO_ROOT = Path(__file__).resolve().parents[2]
ARCHIVE = REPO_ROOT.parent / "shared" / "data" / "UTKFace.tar.gz"

NUM_VALID = 23_702
MALFORMED = [
    "24_0_1_20170116220224657 .jpg.chip.jpg",
    "39_1_20170116174525125.jpg.chip.jpg",
    "55_0_0_20170116232725357jpg.chip.jpg",
    "61_1_20170109142408075.jpg.chip.jpg",
    "61_1_20170109150557335.jpg.chip.jpg",
]

pytestmark = pytest.mark.skipif(not ARCHIVE.exists(), reason=f"real UTKFace archive not found at {ARCHIVE}")


def test_real_archive_names() -> None:
    listing = list_utkface_names(ARCHIVE)
    assert len(listing.valid) == NUM_VALID
    assert [n for n, _ in listing.malformed] == MALFORMED
    assert listing.valid == sorted(listing.valid)
    parsed = [parse_utkface_name(n) for n in listing.valid]
    race = collections.Counter(RACE_NAMES[p[2]] for p in parsed)
    gender = collections.Counter(("male", "female")[p[1]] for p in parsed)
    print(f"\nUTKFace valid names: {len(listing.valid)}; malformed: {listing.malformed}")
    print("per race:", dict(race))
    print("per gender:", dict(gender))
    assert sum(race.values()) == sum(gender.values()) == NUM_VALID


@pytest.mark.slow
def test_real_archive_full_prepare(tmp_path: Path) -> None:
    start = time.perf_counter()
    report = prep.prepare("utk_face", ARCHIVE.parent, tmp_path)
    seconds = time.perf_counter() - start
    print(f"\n{report.format()}\nprepare wall time: {seconds:.1f} s")
    assert report.total == NUM_VALID
    assert report.split_counts == {"train": 18_961, "validation": 2_370, "test": 2_371}
    assert sorted(s.name for s in report.skipped) == MALFORMED
    assert all(s.split is None and "malformed" in s.reason for s in report.skipped)
    assert sum(report.counts("race").values()) == NUM_VALID
    assert sum(report.counts("gender").values()) == NUM_VALID
    builder = prep.builder_for("utk_face", tmp_path)
    test = builder.as_data_source("test")
    assert len(test) == 2_371
    first = test[0]
    assert first["image"].shape == (200, 200, 3)
    assert parse_utkface_name(first["filename"].decode())[1] == int(first["gender"])
