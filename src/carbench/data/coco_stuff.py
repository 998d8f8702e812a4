"""COCO-Stuff-171: COCO 2017 val with 80 thing + 91 stuff classes (mmseg ``COCOStuffDataset``).

``<root>/images/val2017/<id>.jpg`` and ``<root>/annotations/val2017/<id>_labelTrainIds.png``
(8-bit ``L``, 0..170, 255 = unlabeled), made from the raw stuffthingmaps in the same folder by
``datasets/prepare_coco_stuff171.py`` (the mmseg table: raw COCO id − 1 → dense trainId). No
background class: the model's background means "no class". 5,000 validation images.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from carbench.data.coco_object import COCO_OBJECT_CLASSES
from carbench.data.folder_semantic import FolderSemantic, check_queries, identity_lut
from carbench.data.registry import register_dataset
from carbench.types import IGNORE_INDEX

__all__ = ["COCO_STUFF_CLASSES", "COCO_STUFF_LABEL_SUFFIX", "COCOStuff171"]

#: The 91 stuff classes in COCO-Stuff id order (mmseg names).
_STUFF: tuple[str, ...] = (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood",
    "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house",
    "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river",
    "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel",
    "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)
#: 171 metric classes in trainId order: the 80 things (COCO names) then the 91 stuff classes.
COCO_STUFF_CLASSES: tuple[str, ...] = (*COCO_OBJECT_CLASSES[1:], *_STUFF)
COCO_STUFF_LABEL_SUFFIX = "_labelTrainIds.png"
HINT = (
    "Expected <root>/images/val2017/<id>.jpg and <root>/annotations/val2017/<id>_labelTrainIds.png; follow "
    "datasets/README.md, section 'COCO-Stuff-171': unpack val2017.zip and stuffthingmaps_trainval2017.zip, then "
    "run `python datasets/prepare_coco_stuff171.py <root>`; set dataset.root=<root>."
)


@register_dataset("coco_stuff171")
class COCOStuff171(FolderSemantic):
    """COCO-Stuff-171 from `root` (the COCO-Stuff-164k folder with ``images/`` and ``annotations/``).

    Args:
        root: folder with ``images/<split>2017`` and ``annotations/<split>2017``.
        split: ``val`` (5,000 images) or ``train``.
        queries: 171 query strings in trainId order; default the class names with '-' read as a space
            ("building-other" → "building other").
    """

    def __init__(self, root: str | os.PathLike[str], split: str = "val",
                 queries: Sequence[str] | None = None) -> None:
        self.root, self.split, self.name = Path(root).expanduser(), split, "coco_stuff171"
        self.class_names = list(COCO_STUFF_CLASSES)
        default = [c.replace("-", " ") for c in COCO_STUFF_CLASSES]
        self.queries = check_queries(queries, default, "COCO-Stuff-171")
        self.query_label_ids = list(range(171))
        self.background_label = self.ignore_index = IGNORE_INDEX
        self.image_dir, self.label_dir = f"images/{split}2017", f"annotations/{split}2017"
        self.image_suffix, self.label_suffix = ".jpg", COCO_STUFF_LABEL_SUFFIX
        self.value_lut = identity_lut(171, IGNORE_INDEX, IGNORE_INDEX, 256)
        self.what, self.hint = "COCO-Stuff-171", HINT
        self._open()
