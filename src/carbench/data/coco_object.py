"""COCO-Object: COCO 2017 val, 80 things + background (81 classes), the GroupViT / SCLIP protocol.

The label maps are the community's ``annotations/val2017/<id>_instanceTrainIds.png`` (L-mode,
0 = background incl. stuff and unlabeled, 1..80 = things), made from COCO-Stuff-164k's
stuffthingmaps by ``datasets/prepare_coco_object.py`` (docs/datasets.md §6). Samples are found like
mmseg without a split file: every ``*.jpg`` under ``images/val2017``, sorted; each must have its
label. Background is a scored class (CaR configs/coco.yaml: n_class 81, ignore_background False).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from carbench.data.base import SemanticDataset, read_image, read_label
from carbench.data.layout import report_missing, require_dirs
from carbench.data.registry import register_dataset
from carbench.types import Sample

__all__ = ["COCO_OBJECT_CLASSES", "COCOObject", "LABEL_SUFFIX"]

#: Metric classes in label-id order: background + the 80 COCO names with spaces (mmseg / SCLIP).
COCO_OBJECT_CLASSES: tuple[str, ...] = (
    "background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie",
    "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl",
    "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)
LABEL_SUFFIX = "_instanceTrainIds.png"
IMAGE_DIR = "images/{split}2017"
LABEL_DIR = "annotations/{split}2017"
HINT = (
    "Expected <root>/images/val2017/<id>.jpg and <root>/annotations/val2017/<id>_instanceTrainIds.png; "
    "follow datasets/README.md, section 'COCO-Object': unpack val2017.zip and stuffthingmaps_trainval2017.zip, "
    "then run `python datasets/prepare_coco_object.py <root>`; set dataset.root=<root> "
    "(default $CARBENCH_DATASETS/coco_stuff164k)."
)


@register_dataset("coco_object")
class COCOObject(SemanticDataset):
    """COCO-Object val from `root` (the COCO-Stuff-164k folder holding ``images/`` and ``annotations/``).

    Args:
        root: folder with ``images/<split>2017`` and ``annotations/<split>2017``.
        split: ``val`` (5,000 images, the benchmark) or ``train``.
        queries: 80 query strings in id order (1..80); default the plain COCO names. The dataset config
            passes the CLIP-ES-style names the official code feeds ("person with clothes,people,human", …).
    """

    def __init__(self, root: str | os.PathLike[str], split: str = "val", queries: Sequence[str] | None = None) -> None:
        foreground = list(COCO_OBJECT_CLASSES[1:])
        queries = list(foreground if queries is None else queries)
        if len(queries) != len(foreground) or not all(isinstance(q, str) and q.strip() for q in queries):
            raise ValueError(
                f"COCO-Object needs exactly {len(foreground)} non-empty query strings, one per thing class in id "
                f"order ({', '.join(foreground[:3])}, …); got {len(queries)}"
            )
        self.root = Path(root).expanduser()
        self.split = split
        self.name = "coco_object"
        self.class_names = list(COCO_OBJECT_CLASSES)
        self.queries = queries
        self.query_label_ids = list(range(1, len(foreground) + 1))
        self.background_label = 0
        self._check_metadata()

        self.image_dir = self.root / IMAGE_DIR.format(split=split)
        self.label_dir = self.root / LABEL_DIR.format(split=split)
        require_dirs(self.root, [IMAGE_DIR.format(split=split), LABEL_DIR.format(split=split)], "COCO-Object", HINT)
        # mmseg without ann_file: recursive listing of *.jpg, sorted by path; label mirrors the sub-path.
        images = sorted(p.relative_to(self.image_dir) for p in self.image_dir.rglob("*.jpg"))
        if not images:
            raise FileNotFoundError(f"COCO-Object: no .jpg images under {self.image_dir}. {HINT}")
        self.ids = [str(p.with_suffix("")) for p in images]
        report_missing((self.label_path_of(i) for i in self.ids), "COCO-Object", HINT)

    def label_path_of(self, sample_id: str) -> Path:
        return self.label_dir / f"{sample_id}{LABEL_SUFFIX}"

    def _load(self, index: int) -> Sample:
        sid = self.ids[index]
        image_path, label_path = self.image_dir / f"{sid}.jpg", self.label_path_of(sid)
        image = read_image(image_path)
        label = read_label(label_path, expected_mode="L", shape=image.shape[:2], num_classes=self.num_classes)
        return Sample(
            id=sid, image=image, target=label.astype(np.int64), queries=list(self.queries),
            meta={"image_path": str(image_path), "label_path": str(label_path), "split": self.split},
        )
