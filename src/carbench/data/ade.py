"""ADE20K: ADE-150 (SceneParsing ``ADEChallengeData2016``) and ADE-847 (ADE20K-full, detectron2 layout).

- ``ade150``: ``<root>/images/<split>/*.jpg`` and ``<root>/annotations/<split>/*.png`` (8-bit ``L``),
  0 = "other / unlabeled", 1..150 = classes. mmseg's ``reduce_zero_label``: 0 → ignore (255),
  k → k−1, so the metric has 150 classes and no background. 2,000 validation images.
- ``ade847``: the detectron2 conversion of ADE20K-full (``prepare_ade20k_full_sem_seg``):
  ``<root>/images_detectron2/<split>/*.jpg`` and ``<root>/annotations_detectron2/<split>/*.tif``,
  16-bit TIFFs holding class ids 0..846 and 65,535 for unlabeled, which is the ignore value here
  (a class id can exceed 255, so 255 cannot be). 2,000 validation images.

Class strings (label-id order) are the official CaR loaders' lists, which are also the queries CaR
feeds: for ADE-150 the comma-split WordNet synonyms ("chest, of, drawers, chest, bureau, dresser"),
for ADE-847 the WordNet synonym strings. In both the model's background means "no class".
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from carbench.data.class_lists import load_class_list
from carbench.data.folder_semantic import FolderSemantic, check_queries, identity_lut, reduce_zero_lut
from carbench.data.registry import register_dataset
from carbench.types import IGNORE_INDEX

__all__ = ["ADE150", "ADE847", "ADE150_CLASSES", "ADE847_CLASSES", "ADE847_IGNORE"]

ADE150_CLASSES: tuple[str, ...] = load_class_list("ade150", 150)
ADE847_CLASSES: tuple[str, ...] = load_class_list("ade847", 847)
#: the value detectron2's converter stores for unlabeled pixels, used as ignore index for ADE-847
ADE847_IGNORE = 65535

HINT_150 = (
    "Expected <root>/images/<split>/*.jpg and <root>/annotations/<split>/*.png (ADEChallengeData2016); follow "
    "datasets/README.md, section 'ADE-150': unzip ADEChallengeData2016.zip (no conversion), then "
    "`python datasets/prepare_ade150.py <root>` checks it; set dataset.root=<root>."
)
HINT_847 = (
    "Expected <root>/images_detectron2/<split>/*.jpg and <root>/annotations_detectron2/<split>/*.tif (16-bit); "
    "follow datasets/README.md, section 'ADE-847': `python datasets/prepare_ade847.py <root>` converts the unpacked "
    "ADE20K_2021_17_01 release (or checks a detectron2-converted one with --check-only); set dataset.root=<root>."
)


@register_dataset("ade150")
class ADE150(FolderSemantic):
    """ADE-150 from `root` = the ``ADEChallengeData2016`` folder.

    Args:
        root: folder holding ``images/`` and ``annotations/``.
        split: ``validation`` (2,000 images, the benchmark) or ``training``.
        queries: 150 query strings in label-id order; default the official CaR strings.
    """

    def __init__(self, root: str | os.PathLike[str], split: str = "validation",
                 queries: Sequence[str] | None = None) -> None:
        self.root, self.split, self.name = Path(root).expanduser(), split, "ade150"
        self.class_names = list(ADE150_CLASSES)
        self.queries = check_queries(queries, ADE150_CLASSES, "ADE-150")
        self.query_label_ids = list(range(150))
        self.background_label = self.ignore_index = IGNORE_INDEX
        self.image_dir, self.label_dir = f"images/{split}", f"annotations/{split}"
        self.image_suffix, self.label_suffix = ".jpg", ".png"
        self.value_lut = reduce_zero_lut(150, IGNORE_INDEX, 256)
        self.value_lut[IGNORE_INDEX] = IGNORE_INDEX  # mmseg keeps a stored 255 as ignore
        self.what, self.hint = "ADE-150", HINT_150
        self._open()


@register_dataset("ade847")
class ADE847(FolderSemantic):
    """ADE-847 from `root` = the ``ADE20K_2021_17_01`` folder after detectron2's conversion.

    Args:
        root: folder holding ``images_detectron2/`` and ``annotations_detectron2/``.
        split: ``validation`` (2,000 images) or ``training``.
        queries: 847 query strings in label-id order; default the official CaR strings.
    """

    def __init__(self, root: str | os.PathLike[str], split: str = "validation",
                 queries: Sequence[str] | None = None) -> None:
        self.root, self.split, self.name = Path(root).expanduser(), split, "ade847"
        self.class_names = list(ADE847_CLASSES)
        self.queries = check_queries(queries, ADE847_CLASSES, "ADE-847")
        self.query_label_ids = list(range(847))
        self.background_label = self.ignore_index = ADE847_IGNORE
        self.image_dir, self.label_dir = f"images_detectron2/{split}", f"annotations_detectron2/{split}"
        self.image_suffix, self.label_suffix = ".jpg", ".tif"
        self.value_lut = identity_lut(847, ADE847_IGNORE, ADE847_IGNORE, ADE847_IGNORE + 1)
        self.sixteen_bit = True
        self.what, self.hint = "ADE-847", HINT_847
        self._open()
