"""Pascal VOC 2012 segmentation, read from the devkit's own layout (docs/datasets.md §4).

Two variants over the same files:

- ``voc21``: 21 classes, background (0) scored — mmseg ``PascalVOCDataset``.
- ``voc20``: 20 classes, background not scored — SCLIP's ``PascalVOC20Dataset`` with mmseg's
  ``reduce_zero_label`` (GT 0 → 255, k → k−1); the model's background maps to "no class" (255).

Everything that can be checked without decoding pixels (layout, split file, every listed file
present) is checked at construction, so a broken dataset fails in a second, not after an hour.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from carbench.data.base import SemanticDataset, read_image, read_label
from carbench.data.layout import read_split_text
from carbench.data.registry import register_dataset
from carbench.types import IGNORE_INDEX, Sample

__all__ = ["VOC_CLASSES", "VOC_VARIANTS", "VOCSegmentation"]

#: mmseg's VOC class names in label-id order (0 = background).
VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
VOC_VARIANTS: tuple[str, ...] = ("voc21", "voc20")

IMAGE_DIR = "JPEGImages"
LABEL_DIR = "SegmentationClass"
SPLIT_DIR = "ImageSets/Segmentation"
LAYOUT_HINT = (
    "set dataset.root=/path/to/VOCdevkit/VOC2012 or CARBENCH_DATASETS=/path/to/data_root; expected layout "
    "VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation}; see datasets/README.md"
)
MAX_LISTED = 10

# mmseg reduce_zero_label on uint8 ids: 0 → 255, k → k−1, 255 stays 255.
_REDUCE_ZERO_LUT = np.arange(256, dtype=np.int64) - 1
_REDUCE_ZERO_LUT[0] = IGNORE_INDEX
_REDUCE_ZERO_LUT[IGNORE_INDEX] = IGNORE_INDEX


def _check_layout(root: Path) -> None:
    """Raise FileNotFoundError naming what is missing under `root`, and where the data might be instead."""
    if not root.is_dir():
        where = "" if root.is_absolute() else f" (relative to the working directory: {root.resolve()})"
        what = "is a file, not a directory" if root.exists() else "does not exist"
        raise FileNotFoundError(f"VOC root {root} {what}{where}; {LAYOUT_HINT}")
    missing = [d for d in (IMAGE_DIR, LABEL_DIR, SPLIT_DIR) if not (root / d).is_dir()]
    if not missing:
        return
    guess = next(
        (c for c in (root / "VOC2012", root / "VOCdevkit" / "VOC2012") if (c / IMAGE_DIR).is_dir()), None
    )
    did_you_mean = f" Found a VOC2012 folder at {guess}: set dataset.root={guess}." if guess else ""
    raise FileNotFoundError(
        f"VOC root {root} lacks {', '.join(str(root / d) for d in missing)}; root must be the VOC2012 "
        f"folder itself.{did_you_mean} {LAYOUT_HINT}"
    )


def _read_split(root: Path, split: str) -> list[str]:
    """Ids of `split` in file order (mmseg: one id per line, whitespace stripped, blank lines skipped)."""
    split_file = root / SPLIT_DIR / f"{split}.txt"
    if not split_file.is_file():
        available = sorted(p.stem for p in (root / SPLIT_DIR).glob("*.txt"))
        raise FileNotFoundError(
            f"VOC split file {split_file} not found; split files that exist: {available or 'none'} "
            f"(set dataset.split=<one of them>). {LAYOUT_HINT}"
        )
    ids = [line.strip() for line in read_split_text(split_file, "VOC").splitlines()]
    ids = [i for i in ids if i]
    if not ids:
        raise ValueError(f"VOC split file {split_file} lists no ids; re-extract it from the VOC2012 archive")
    seen: set[str] = set()
    dups = sorted({i for i in ids if i in seen or seen.add(i)})
    if dups:  # each would be scored twice, silently weighting those images double in the metric
        shown = ", ".join(dups[:MAX_LISTED]) + (f" … and {len(dups) - MAX_LISTED} more" if len(dups) > MAX_LISTED else "")
        raise ValueError(
            f"VOC split file {split_file} lists {len(dups)} id(s) more than once ({shown}); each image must be "
            f"listed once: remove the repeated lines or re-extract the file from the VOC2012 archive"
        )
    return ids


def _check_files(root: Path, ids: Sequence[str]) -> None:
    """Check every listed id has its JPEG and its label PNG (one directory listing each, not 2N stats)."""
    images = set(os.listdir(root / IMAGE_DIR))
    labels = set(os.listdir(root / LABEL_DIR))
    missing = [
        str(root / d / f"{i}{ext}")
        for i in ids
        for d, ext, present in ((IMAGE_DIR, ".jpg", images), (LABEL_DIR, ".png", labels))
        if f"{i}{ext}" not in present
    ]
    if missing:
        shown = "\n  ".join(missing[:MAX_LISTED])
        more = f"\n  … and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
        suffixed = [i for i in ids if i.lower().endswith((".jpg", ".png", ".jpeg"))]
        ext_hint = (
            f" The split lists file names ({suffixed[0]!r}): split files list ids without extension."
            if suffixed else ""
        )
        raise FileNotFoundError(
            f"{len(missing)} file(s) listed by the split under {root} are missing:\n  {shown}{more}\n"
            f"The dataset is incomplete: re-extract VOCtrainval_11-May-2012.tar ({LAYOUT_HINT}).{ext_hint}"
        )


@register_dataset("voc")
class VOCSegmentation(SemanticDataset):
    """Pascal VOC 2012 semantic segmentation from `root` = the ``VOCdevkit/VOC2012`` folder.

    Subclasses that reuse the VOC layout with other classes (the toy world) override `CLASSES`.

    Args:
        root: the VOC2012 folder (holding JPEGImages, SegmentationClass, ImageSets/Segmentation).
        split: name of a file in ImageSets/Segmentation (``val`` for the benchmark: 1,449 images).
        variant: ``voc21`` (background scored) or ``voc20`` (background ignored, reduce_zero_label).
        queries: the 20 foreground query strings in class order; defaults to the plain class names.
            Dataset configs pass CaR's renamed queries ("bird avian", …); label ids never change.
    """

    CLASSES: tuple[str, ...] = VOC_CLASSES  # label-id order, 0 = background

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "val",
        variant: str = "voc21",
        queries: Sequence[str] | None = None,
    ) -> None:
        if variant not in VOC_VARIANTS:
            raise ValueError(f"unknown VOC variant {variant!r}; set dataset.variant to one of {list(VOC_VARIANTS)}")
        foreground = list(self.CLASSES[1:])
        nfg = len(foreground)
        if queries is None:
            queries = foreground
        queries = list(queries)
        if len(queries) != len(foreground) or not all(isinstance(q, str) and q.strip() for q in queries):
            raise ValueError(
                f"VOC needs exactly {len(foreground)} non-empty query strings, one per foreground class in "
                f"id order ({', '.join(foreground)}); got {len(queries)}: {queries}"
            )
        self.root = Path(root).expanduser()
        self.split = split
        self.variant = variant
        self.name = variant
        self.queries = queries
        if variant == "voc21":
            self.class_names = list(self.CLASSES)
            self.query_label_ids = list(range(1, nfg + 1))
            self.background_label = 0
        else:
            self.class_names = foreground
            self.query_label_ids = list(range(nfg))
            self.background_label = IGNORE_INDEX
        self._check_metadata()

        _check_layout(self.root)
        self.ids = _read_split(self.root, split)
        _check_files(self.root, self.ids)

    def image_path(self, index: int) -> Path:
        return self.root / IMAGE_DIR / f"{self.ids[index]}.jpg"

    def label_path(self, index: int) -> Path:
        return self.root / LABEL_DIR / f"{self.ids[index]}.png"

    def _load(self, index: int) -> Sample:
        image_path, label_path = self.image_path(index), self.label_path(index)
        image = read_image(image_path)
        raw = read_label(label_path, expected_mode="P", shape=image.shape[:2], num_classes=len(self.CLASSES),
                         image_path=image_path)
        target = _REDUCE_ZERO_LUT[raw] if self.variant == "voc20" else raw.astype(np.int64)
        return Sample(
            id=self.ids[index],
            image=image,
            target=target,
            queries=list(self.queries),
            meta={"image_path": str(image_path), "label_path": str(label_path), "split": self.split,
                  "variant": self.variant},
        )
