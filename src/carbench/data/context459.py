"""Pascal Context with all 459 classes (PC-459), in the detectron2-style layout the official CaR loader reads.

``<root>/images/<split>/*.jpg`` (VOC2010 images) and ``<root>/annotations_ctx459/<split>/*.tif``:
16-bit TIFFs holding class ids 0..458 (the Pascal Context ``labels.txt`` order minus one) and 65,535
for unlabeled pixels, written from the dataset's ``trainval/*.mat`` by
``datasets/prepare_context459.py``. 5,105 validation images. No background class: the model's
background means "no class", and 65,535 is the ignore value (a class id can exceed 255).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from carbench.data.class_lists import load_class_list
from carbench.data.folder_semantic import FolderSemantic, check_queries, identity_lut
from carbench.data.registry import register_dataset

__all__ = ["CONTEXT459_CLASSES", "CONTEXT459_IGNORE", "PascalContext459"]

CONTEXT459_CLASSES: tuple[str, ...] = load_class_list("context459", 459)
CONTEXT459_IGNORE = 65535
IMAGE_DIR = "images/{split}"
LABEL_DIR = "annotations_ctx459/{split}"
HINT = (
    "Expected <root>/images/<split>/*.jpg and <root>/annotations_ctx459/<split>/*.tif (16-bit); follow "
    "datasets/README.md, section 'Pascal Context 459': unpack VOCtrainval_03-May-2010.tar and the Pascal "
    "Context trainval.tar.gz, then run `python datasets/prepare_context459.py <VOC2010 folder> <root>`; "
    "set dataset.root=<root>."
)


@register_dataset("context459")
class PascalContext459(FolderSemantic):
    """PC-459 from `root` (holding ``images/`` and ``annotations_ctx459/``).

    Args:
        root: the converted folder.
        split: ``validation`` (5,105 images) or ``training`` (4,998).
        queries: 459 query strings in label-id order; default the official CaR class names.
    """

    def __init__(self, root: str | os.PathLike[str], split: str = "validation",
                 queries: Sequence[str] | None = None) -> None:
        self.root, self.split, self.name = Path(root).expanduser(), split, "pc459"
        self.class_names = list(CONTEXT459_CLASSES)
        self.queries = check_queries(queries, CONTEXT459_CLASSES, "Pascal Context 459")
        self.query_label_ids = list(range(459))
        self.background_label = self.ignore_index = CONTEXT459_IGNORE
        self.image_dir, self.label_dir = IMAGE_DIR.format(split=split), LABEL_DIR.format(split=split)
        self.image_suffix, self.label_suffix = ".jpg", ".tif"
        self.value_lut = identity_lut(459, CONTEXT459_IGNORE, CONTEXT459_IGNORE, CONTEXT459_IGNORE + 1)
        self.sixteen_bit = True
        self.what, self.hint = "Pascal Context 459", HINT
        self._open()
