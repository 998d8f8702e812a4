"""Cityscapes val, 19 evaluation classes (trainIds), in the official folder layout.

``<root>/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` (2048×1024 RGB) and
``<root>/gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png`` (8-bit ``L``, 0..18, 255 = ignore),
the latter written from ``*_gtFine_labelIds.png`` through the official id → trainId table
(`LABEL_ID_TO_TRAIN_ID`, the cityscapesScripts ``labels.py`` table) by
``datasets/prepare_cityscapes.py``. 500 validation images. No background class.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from carbench.data.folder_semantic import FolderSemantic, check_queries, identity_lut
from carbench.data.registry import register_dataset
from carbench.types import IGNORE_INDEX

__all__ = ["CITYSCAPES_CLASSES", "LABEL_ID_TO_TRAIN_ID", "Cityscapes", "label_ids_to_train_ids"]

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
#: labelId → trainId for the 34 ids a ``*_gtFine_labelIds.png`` holds (0..33); unlisted ids → 255.
LABEL_ID_TO_TRAIN_ID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
    27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
NUM_LABEL_IDS = 34
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelTrainIds.png"
RAW_SUFFIX = "_gtFine_labelIds.png"
HINT = (
    "Expected <root>/leftImg8bit/<split>/<city>/*_leftImg8bit.png and "
    "<root>/gtFine/<split>/<city>/*_gtFine_labelTrainIds.png; follow datasets/README.md, section 'Cityscapes': "
    "unzip leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip, then run "
    "`python datasets/prepare_cityscapes.py <root>`; set dataset.root=<root>."
)


def label_ids_to_train_ids(label_ids: np.ndarray, source: str = "<array>") -> np.ndarray:
    """``*_labelIds`` values (0..33) → trainIds (0..18, 255); a value outside 0..33 is an error."""
    lut = np.full(NUM_LABEL_IDS, IGNORE_INDEX, dtype=np.uint8)
    for lid, tid in LABEL_ID_TO_TRAIN_ID.items():
        lut[lid] = tid
    bad = np.unique(label_ids[label_ids >= NUM_LABEL_IDS])
    if bad.size:
        raise ValueError(
            f"{source} holds values {bad[:10].tolist()} that are not Cityscapes label ids (0..33); is it a "
            f"*_gtFine_labelIds.png (not color, instanceIds or already converted trainIds)?"
        )
    return lut[label_ids]


@register_dataset("cityscapes")
class Cityscapes(FolderSemantic):
    """Cityscapes from `root` (holding ``leftImg8bit/`` and ``gtFine/``).

    Args:
        root: the Cityscapes folder.
        split: ``val`` (500 images, the benchmark) or ``train``.
        queries: 19 query strings in trainId order; default the class names.
    """

    def __init__(self, root: str | os.PathLike[str], split: str = "val",
                 queries: Sequence[str] | None = None) -> None:
        self.root, self.split, self.name = Path(root).expanduser(), split, "cityscapes"
        self.class_names = list(CITYSCAPES_CLASSES)
        self.queries = check_queries(queries, CITYSCAPES_CLASSES, "Cityscapes")
        self.query_label_ids = list(range(19))
        self.background_label = self.ignore_index = IGNORE_INDEX
        self.image_dir, self.label_dir = f"leftImg8bit/{split}", f"gtFine/{split}"
        self.image_suffix, self.label_suffix = IMAGE_SUFFIX, LABEL_SUFFIX
        self.value_lut = identity_lut(19, IGNORE_INDEX, IGNORE_INDEX, 256)
        self.what, self.hint = "Cityscapes", HINT
        self._open()
