"""Prepare the manual-download datasets and summarise what was written.

Usage::

    python -m ballot_jax.data prepare --dataset=utk_face \\
        --manual_dir=/path/with/UTKFace.tar.gz --data_dir=/path/to/tfds_data
    python -m ballot_jax.data list

or from Python: ``prepare("utk_face", manual_dir, data_dir).format()``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import tensorflow_datasets as tfds

from ballot_jax.data.builders import (
    CelebAManual,
    Cifar10S,
    Cifar100Manual,
    ManualDataError,
    ManualImageBuilder,
    Skip,
    TinyImagenet,
    UtkFace,
    read_report,
)

DATASETS: dict[str, type[ManualImageBuilder]] = {
    "utk_face": UtkFace,
    "celeb_a_manual": CelebAManual,
    "cifar10_s": Cifar10S,
    "cifar100_manual": Cifar100Manual,
    "tiny_imagenet": TinyImagenet,
}

ALIASES: dict[str, str] = {
    "utkface": "utk_face",
    "celeb_a": "celeb_a_manual",
    "celeba": "celeb_a_manual",
    "cifar10s": "cifar10_s",
    "cifar100": "cifar100_manual",
    "tinyimagenet": "tiny_imagenet",
}

_MAX_TABLE_VALUES = 24


class UnknownDatasetError(ValueError):
    """Raised for a dataset name that is neither in DATASETS nor in ALIASES."""


def resolve_dataset(dataset: str) -> str:
    """Canonical dataset name for ``dataset`` (a DATASETS key or an alias)."""
    key = dataset.strip().lower().replace("-", "_")
    key = ALIASES.get(key, ALIASES.get(key.replace("_", ""), key))
    if key not in DATASETS:
        raise UnknownDatasetError(
            f"unknown dataset {dataset!r}; valid names: {', '.join(DATASETS)} "
            f"(aliases: {', '.join(f'{a}->{n}' for a, n in ALIASES.items())})")
    return key


def builder_for(dataset: str, data_dir: str | os.PathLike) -> ManualImageBuilder:
    """A builder (array_record format) for ``dataset`` rooted at ``data_dir``."""
    return DATASETS[resolve_dataset(dataset)](data_dir=os.fspath(data_dir))


@dataclasses.dataclass
class PrepareReport:
    """What a prepared dataset holds: split sizes, attribute counts, skipped inputs."""

    dataset: str
    version: str
    data_path: str
    split_counts: dict[str, int]
    attribute_counts: dict[str, dict[str, dict[str, int]]]  # split -> feature -> value -> n
    skipped: list[Skip]
    converted: list[Skip] = dataclasses.field(default_factory=list)
    already_prepared: bool = False
    seconds: float = 0.0

    @property
    def total(self) -> int:
        """Number of examples over all splits."""
        return sum(self.split_counts.values())

    @property
    def num_skipped(self) -> int:
        """Number of inputs left out."""
        return len(self.skipped)

    def counts(self, feature: str, split: str | None = None) -> dict[str, int]:
        """Value -> count of ``feature`` in ``split`` (all splits summed if None)."""
        out: dict[str, int] = {}
        for s, feats in self.attribute_counts.items():
            if split is None or s == split:
                for v, n in feats.get(feature, {}).items():
                    out[v] = out.get(v, 0) + n
        return out

    def format(self) -> str:
        """A human-readable multi-line summary."""
        how = ("already prepared; nothing generated" if self.already_prepared
               else f"prepared in {self.seconds:.1f} s")
        splits = list(self.split_counts)
        lines = [f"{self.dataset} {self.version} at {self.data_path} ({how})",
                 "examples: " + ", ".join(f"{s} {n}" for s, n in self.split_counts.items())
                 + f", total {self.total}"]
        features: list[str] = []
        for feats in self.attribute_counts.values():
            features.extend(f for f in feats if f not in features)
        if features:
            lines.append("per-attribute counts (" + " / ".join(splits) + "):")
        for feat in features:
            values: list[str] = []
            for s in splits:
                values.extend(v for v in self.attribute_counts.get(s, {}).get(feat, {}) if v not in values)
            per = {s: self.attribute_counts.get(s, {}).get(feat, {}) for s in splits}
            if set(values) <= {"0", "1"}:
                lines.append(f"  {feat} =1: " + " / ".join(str(per[s].get("1", 0)) for s in splits)
                             + "  (=0: " + " / ".join(str(per[s].get("0", 0)) for s in splits) + ")")
            elif len(values) <= _MAX_TABLE_VALUES:
                lines.append(f"  {feat}:")
                width = max(len(v) for v in values)
                for v in values:
                    lines.append(f"    {v:<{width}}  " + " / ".join(str(per[s].get(v, 0)) for s in splits))
            else:
                rng = [f"{s} {min(per[s].get(v, 0) for v in values)}..{max(per[s].get(v, 0) for v in values)}"
                       for s in splits]
                lines.append(f"  {feat}: {len(values)} values; per-value count range: " + ", ".join(rng))
        lines.append(f"skipped: {self.num_skipped}")
        for sk in self.skipped:
            lines.append(f"  [{sk.split or '-'}] {sk.name}: {sk.reason}")
        if self.converted:
            lines.append(f"re-encoded (kept, converted to RGB): {len(self.converted)}")
            for sk in self.converted[:10]:
                lines.append(f"  [{sk.split or '-'}] {sk.name}: {sk.reason}")
            if len(self.converted) > 10:
                lines.append(f"  ... and {len(self.converted) - 10} more (see prepare_report.json)")
        return "\n".join(lines)


def report_for(builder: ManualImageBuilder, *, already_prepared: bool = False,
               seconds: float = 0.0) -> PrepareReport:
    """Builds the :class:`PrepareReport` of a prepared builder.

    Reads ``prepare_report.json``; if it is absent (data prepared some other way),
    counts the attributes from the records (images are not decoded).
    """
    split_counts = {s: int(builder.info.splits[s].num_examples) for s in builder.info.splits.keys()}
    raw = read_report(builder)
    if raw is not None:
        attr = raw.get("attribute_counts", {})
        skipped = [Skip.from_json(d) for d in raw.get("skipped", [])]
        converted = [Skip.from_json(d) for d in raw.get("converted", [])]
    else:
        attr, skipped, converted = _count_records(builder, split_counts), [], []
    return PrepareReport(dataset=builder.name, version=str(builder.version),
                         data_path=os.fspath(builder.data_path), split_counts=split_counts,
                         attribute_counts=attr, skipped=skipped, converted=converted,
                         already_prepared=already_prepared, seconds=seconds)


def _count_records(builder: ManualImageBuilder, split_counts: dict[str, int]) -> dict[str, Any]:
    out: dict[str, dict[str, dict[str, int]]] = {}
    for split in split_counts:
        source = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
        counts: dict[str, dict[str, int]] = {}
        for i in range(len(source)):
            for feat, value in builder.count_labels(source[i]).items():
                c = counts.setdefault(feat, {})
                c[value] = c.get(value, 0) + 1
        out[split] = {f: dict(sorted(c.items())) for f, c in counts.items()}
    return out


def is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
    """Whether ``builder``'s data is fully written (quietly: no TFDS warning if absent)."""
    return os.path.exists(os.path.join(os.fspath(builder.data_path), "dataset_info.json")) \
        and builder.is_prepared()


def prepare(dataset: str, manual_dir: str | os.PathLike, data_dir: str | os.PathLike) -> PrepareReport:
    """Prepares ``dataset`` from ``manual_dir`` into ``data_dir`` (no-op if already there).

    Raises:
      UnknownDatasetError: unknown name.
      ManualDataMissingError / ManualDataLayoutError: unusable manual inputs.
    """
    builder = builder_for(dataset, data_dir)
    if is_prepared(builder):
        return report_for(builder, already_prepared=True)
    start = time.perf_counter()
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=os.fspath(manual_dir), try_download_gcs=False))
    return report_for(builder, seconds=time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point (``python -m ballot_jax.data ...``); returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m ballot_jax.data",
                                     description="Prepare ballot_jax datasets (no TensorFlow).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="prepare one dataset from its manual download")
    p.add_argument("--dataset", required=True, help=f"one of {', '.join(DATASETS)}")
    p.add_argument("--manual_dir", required=True, help="directory holding the downloaded files")
    p.add_argument("--data_dir", required=True, help="TFDS data directory to write to")
    sub.add_parser("list", help="list datasets and what each expects in manual_dir")
    args = parser.parse_args(argv)

    if args.command == "list":
        for name, cls in DATASETS.items():
            print(f"== {name}\n{cls.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        return 0
    try:
        report = prepare(args.dataset, args.manual_dir, args.data_dir)
    except (UnknownDatasetError, ManualDataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
