"""Pascal Context val (VOC2010 images, 5,105), PC60 (background scored) and PC59 (background ignored).

Reads the converted layout mmseg and CaR both use (docs/datasets.md §5):
``VOCdevkit/VOC2010/{JPEGImages, SegmentationClassContext, ImageSets/SegmentationContext}``, label
PNGs in L mode with values 0..59 (0 = background and everything outside the 59 classes), made from
the PASCAL-in-Detail json by ``datasets/prepare_pascal_context.py``.

- ``pc60``: 60 classes, background scored (mmseg ``PascalContextDataset``; CaR n_class 60).
- ``pc59``: 59 classes, mmseg ``reduce_zero_label`` (GT 0 → 255, k → k−1); the model's background
  is "no class" (255), as for VOC20.

Class ids follow the alphabetical order of the sorted raw Detail ids (not the old VOC-first
mmseg 0.x list, docs/datasets.md §5 "Trap").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from carbench.data.base import SemanticDataset, read_image, read_label
from carbench.data.layout import read_split_file, report_missing, require_dirs
from carbench.data.registry import register_dataset
from carbench.types import IGNORE_INDEX, Sample

__all__ = ["CONTEXT_CLASSES", "CONTEXT_RAW_IDS", "CONTEXT_VARIANTS", "PascalContext"]

#: (class name, raw PASCAL-in-Detail category id) in label-id order 0..59 (docs/datasets.md §5).
_CLASS_TABLE: tuple[tuple[str, int], ...] = (
    ("background", 0), ("aeroplane", 2), ("bag", 9), ("bed", 18), ("bedclothes", 19), ("bench", 22),
    ("bicycle", 23), ("bird", 25), ("boat", 31), ("book", 33), ("bottle", 34), ("building", 44), ("bus", 45),
    ("cabinet", 46), ("car", 59), ("cat", 65), ("ceiling", 68), ("chair", 72), ("cloth", 80), ("computer", 85),
    ("cow", 98), ("cup", 104), ("curtain", 105), ("dog", 113), ("door", 115), ("fence", 144), ("floor", 158),
    ("flower", 159), ("food", 162), ("grass", 187), ("ground", 189), ("horse", 207), ("keyboard", 220),
    ("light", 232), ("motorbike", 258), ("mountain", 259), ("mouse", 260), ("person", 284), ("plate", 295),
    ("platform", 296), ("pottedplant", 308), ("road", 324), ("rock", 326), ("sheep", 347), ("shelves", 349),
    ("sidewalk", 354), ("sign", 355), ("sky", 360), ("snow", 366), ("sofa", 368), ("table", 397), ("track", 415),
    ("train", 416), ("tree", 420), ("truck", 424), ("tvmonitor", 427), ("wall", 440), ("water", 445),
    ("window", 454), ("wood", 458),
)
CONTEXT_CLASSES: tuple[str, ...] = tuple(n for n, _ in _CLASS_TABLE)
#: Sorted raw Detail ids; index i ↔ label id i (what the converter maps through).
CONTEXT_RAW_IDS: tuple[int, ...] = tuple(r for _, r in _CLASS_TABLE)
CONTEXT_VARIANTS: tuple[str, ...] = ("pc60", "pc59")

IMAGE_DIR = "JPEGImages"
LABEL_DIR = "SegmentationClassContext"
SPLIT_DIR = "ImageSets/SegmentationContext"
HINT = (
    "Expected VOCdevkit/VOC2010/{JPEGImages,SegmentationClassContext,ImageSets/SegmentationContext}; follow "
    "datasets/README.md, section 'Pascal Context': unpack VOCtrainval_03-May-2010.tar, put trainval_merged.json "
    "in VOCdevkit/VOC2010, then run `python datasets/prepare_pascal_context.py <path>/VOCdevkit/VOC2010`; set "
    "dataset.root=<path>/VOCdevkit/VOC2010."
)

_REDUCE_ZERO_LUT = np.arange(256, dtype=np.int64) - 1
_REDUCE_ZERO_LUT[0] = IGNORE_INDEX
_REDUCE_ZERO_LUT[IGNORE_INDEX] = IGNORE_INDEX


@register_dataset("pascal_context")
class PascalContext(SemanticDataset):
    """Pascal Context from `root` = the ``VOCdevkit/VOC2010`` folder.

    Args:
        root: the VOC2010 folder after conversion.
        split: a file in ImageSets/SegmentationContext (``val``: 5,105 images).
        variant: ``pc60`` (background scored) or ``pc59`` (background ignored, reduce_zero_label).
        queries: 59 query strings in id order 1..59; default the class names. The dataset config passes
            CaR's names (airplane, plant, monitor, …, data/context.py).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "val",
        variant: str = "pc60",
        queries: Sequence[str] | None = None,
    ) -> None:
        if variant not in CONTEXT_VARIANTS:
            raise ValueError(f"unknown Pascal Context variant {variant!r}; set dataset.variant to one of "
                             f"{list(CONTEXT_VARIANTS)}")
        foreground = list(CONTEXT_CLASSES[1:])
        queries = list(foreground if queries is None else queries)
        if len(queries) != len(foreground) or not all(isinstance(q, str) and q.strip() for q in queries):
            raise ValueError(
                f"Pascal Context needs exactly {len(foreground)} non-empty query strings, one per class in id "
                f"order ({', '.join(foreground[:3])}, …); got {len(queries)}"
            )
        self.root = Path(root).expanduser()
        self.split, self.variant, self.name = split, variant, variant
        self.queries = queries
        if variant == "pc60":
            self.class_names = list(CONTEXT_CLASSES)
            self.query_label_ids = list(range(1, len(foreground) + 1))
            self.background_label = 0
        else:
            self.class_names = foreground
            self.query_label_ids = list(range(len(foreground)))
            self.background_label = IGNORE_INDEX
        self._check_metadata()

        require_dirs(self.root, [IMAGE_DIR, LABEL_DIR, SPLIT_DIR], "Pascal Context", HINT)
        self.ids = read_split_file(self.root / SPLIT_DIR / f"{split}.txt", "Pascal Context", HINT)
        report_missing(
            (p for i in self.ids for p in (self.image_path(i), self.label_path(i))), "Pascal Context", HINT
        )

    def image_path(self, sample_id: str) -> Path:
        return self.root / IMAGE_DIR / f"{sample_id}.jpg"

    def label_path(self, sample_id: str) -> Path:
        return self.root / LABEL_DIR / f"{sample_id}.png"

    def _load(self, index: int) -> Sample:
        sid = self.ids[index]
        image = read_image(self.image_path(sid))
        raw = read_label(self.label_path(sid), expected_mode="L", shape=image.shape[:2],
                         num_classes=len(CONTEXT_CLASSES))
        target = _REDUCE_ZERO_LUT[raw] if self.variant == "pc59" else raw.astype(np.int64)
        return Sample(
            id=sid, image=image, target=target, queries=list(self.queries),
            meta={"image_path": str(self.image_path(sid)), "label_path": str(self.label_path(sid)),
                  "split": self.split, "variant": self.variant},
        )
