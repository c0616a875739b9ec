"""CelebA (aligned & cropped) as a manual TFDS builder: ``celeb_a_manual``.

Named ``celeb_a_manual`` so that it does not clash with TFDS's own registered
``celeb_a`` builder (which downloads from Google Drive and needs TensorFlow).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import tensorflow_datasets as tfds

from ballot_jax.data.builders import _common
from ballot_jax.data.builders._common import FileSource, KeyExample, ManualDataLayoutError

IMAGE_FOLDER = "img_align_celeba"
IMAGE_ZIP = "img_align_celeba.zip"
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IMAGE_SIZE = (178, 218)  # (width, height)
PARTITION_SPLITS = {"0": "train", "1": "validation", "2": "test"}

ATTRIBUTE_NAMES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings",
    "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)

MANUAL_INSTRUCTIONS = f"""\
From the CelebA site (https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html), folders
"Img" and "Anno" / "Eval", place in <manual_dir>:
  <manual_dir>/{IMAGE_FOLDER}/        the aligned & cropped JPEGs (000001.jpg ...),
      OR <manual_dir>/{IMAGE_ZIP}  (the zip as downloaded, holding {IMAGE_FOLDER}/)
  <manual_dir>/{ATTR_FILE}      (40 binary attributes, values -1/1)
  <manual_dir>/{PARTITION_FILE}   (0 = train, 1 = validation, 2 = test)
"""


def read_attributes(text: str, source: str = ATTR_FILE) -> dict[str, list[int]]:
    """Parses ``list_attr_celeba.txt`` -> {image name: 40 values in {0, 1}}.

    Line 1 is the image count, line 2 the 40 attribute names (must equal
    ``ATTRIBUTE_NAMES``), then ``<name> <v1> ... <v40>`` with ``v`` in {-1, 1}.
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    header = lines[1].split() if len(lines) >= 2 else []
    if tuple(header) != ATTRIBUTE_NAMES:
        raise ManualDataLayoutError("celeb_a_manual", source,
                                    f"line 2 = the 40 CelebA attribute names ({', '.join(ATTRIBUTE_NAMES[:3])}, ...)",
                                    f"{header[:5]!r}... ({len(header)} names)")
    out: dict[str, list[int]] = {}
    for ln in lines[2:]:
        parts = ln.split()
        if len(parts) != 41 or any(v not in ("-1", "1") for v in parts[1:]):
            raise ManualDataLayoutError("celeb_a_manual", source,
                                        "'<image> ' followed by 40 values in {-1, 1}", repr(ln[:120]))
        out[parts[0]] = [1 if v == "1" else 0 for v in parts[1:]]
    try:
        declared = int(lines[0].split()[0])
    except (ValueError, IndexError):
        declared = -1
    if declared != len(out):
        raise ManualDataLayoutError("celeb_a_manual", source,
                                    f"first line = number of images ({len(out)} rows follow)",
                                    repr(lines[0][:80] if lines else ""))
    return out


def read_partition(text: str, source: str = PARTITION_FILE) -> dict[str, str]:
    """Parses ``list_eval_partition.txt`` -> {image name: 'train'|'validation'|'test'}."""
    out: dict[str, str] = {}
    for ln in text.splitlines():
        parts = ln.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in PARTITION_SPLITS:
            raise ManualDataLayoutError("celeb_a_manual", source,
                                        "lines '<image> <0|1|2>'", repr(ln[:120]))
        out[parts[0]] = PARTITION_SPLITS[parts[1]]
    return out


class CelebAManual(_common.ManualImageBuilder):
    """CelebA aligned & cropped faces (218x178) with the 40 binary attributes.

    Splits come from the official ``list_eval_partition.txt`` (0 train, 1
    validation, 2 test). ``attributes/<Name>`` is 0/1 (file values -1/1). Images
    listed but absent, missing from one of the two lists, or undecodable are
    skipped and reported. Records are stored in file-name order within each split;
    the stored JPEG bytes are the original files.
    """

    name = "celeb_a_manual"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_INSTRUCTIONS
    HOMEPAGE = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
    CITATION = """@inproceedings{liu2015faceattributes,
  title={Deep Learning Face Attributes in the Wild},
  author={Liu, Ziwei and Luo, Ping and Wang, Xiaogang and Tang, Xiaoou},
  booktitle={ICCV}, year={2015}}"""
    COUNTED = tuple(f"attributes/{a}" for a in ATTRIBUTE_NAMES)

    def _features(self) -> tfds.features.FeaturesDict:
        return tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(IMAGE_SIZE[1], IMAGE_SIZE[0], 3), encoding_format="jpeg"),
            "attributes": tfds.features.FeaturesDict(
                {a: tfds.features.ClassLabel(num_classes=2) for a in ATTRIBUTE_NAMES}),
            "filename": tfds.features.Text(),
        })

    def _make_generators(self, manual_dir: Path | None) -> dict[str, Iterator[KeyExample]]:
        img_path = _common.find_input(manual_dir, [IMAGE_FOLDER, IMAGE_ZIP], self.name, MANUAL_INSTRUCTIONS)
        attr_path = _common.find_input(manual_dir, [ATTR_FILE], self.name, MANUAL_INSTRUCTIONS)
        part_path = _common.find_input(manual_dir, [PARTITION_FILE], self.name, MANUAL_INSTRUCTIONS)
        attrs = read_attributes(attr_path.read_text(), str(attr_path))
        parts = read_partition(part_path.read_text(), str(part_path))

        src = FileSource(img_path, self.name)
        files = {n.rsplit("/", 1)[-1]: n for n in src.names()
                 if n.startswith(IMAGE_FOLDER + "/") and n.lower().endswith(".jpg")}
        if not files:
            raise ManualDataLayoutError(self.name, img_path, f"JPEG files under {IMAGE_FOLDER}/",
                                        src.top_level())
        by_split: dict[str, list[str]] = {s: [] for s in _common.SPLITS}
        for img in sorted(set(attrs) | set(parts)):
            if img not in parts:
                self.skip(img, f"listed in {ATTR_FILE} but not in {PARTITION_FILE}")
            elif img not in attrs:
                self.skip(img, f"listed in {PARTITION_FILE} but not in {ATTR_FILE}", parts[img])
            elif img not in files:
                self.skip(img, f"image file missing from {img_path.name}", parts[img])
            else:
                by_split[parts[img]].append(img)
        return {s: self._examples(s, names, files, attrs, src) for s, names in by_split.items()}

    def _examples(self, split: str, names: list[str], files: dict[str, str],
                  attrs: dict[str, list[int]], src: FileSource) -> Iterator[KeyExample]:
        for img, data in self.verified_images(names, lambda n: src.read(files[n]), str, split,
                                              size=IMAGE_SIZE, fmt="jpeg"):
            yield img, {"image": data, "attributes": dict(zip(ATTRIBUTE_NAMES, attrs[img])),
                        "filename": img}
