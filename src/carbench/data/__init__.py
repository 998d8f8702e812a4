"""Dataset adapters: each benchmark's on-disk format → `carbench.types.Sample`, built by name.

Importing this package registers the built-in adapters (`voc`, `voc_fixture`, `toy`, `coco_object`,
`pascal_context`, `refcoco`, `refcoco+`, `refcocog`, `ade150`, `ade847`, `context459`, `coco_stuff171`,
`cityscapes`, `grefcoco`), so `build_dataset({"name": "voc", "root": ...})`
works after `import carbench.data`.
"""

from carbench.data.ade import ADE150, ADE847  # registers "ade150", "ade847"
from carbench.data.base import SemanticDataset, read_image, read_label
from carbench.data.cityscapes import Cityscapes  # registers "cityscapes"
from carbench.data.coco_object import COCOObject  # registers "coco_object"
from carbench.data.coco_stuff import COCOStuff171  # registers "coco_stuff171"
from carbench.data.context459 import PascalContext459  # registers "context459"
from carbench.data.grefcoco import GRefCOCO  # registers "grefcoco"
from carbench.data.pascal_context import PascalContext  # registers "pascal_context"
from carbench.data.refcoco import ReferringDataset  # registers "refcoco", "refcoco+", "refcocog"
from carbench.data.registry import DATASETS, build_dataset, register_dataset
from carbench.data.toy import ToySegmentation  # registers "toy"
from carbench.data.voc import VOCSegmentation  # registers "voc"
from carbench.data.voc_fixture import voc_fixture_dataset  # registers "voc_fixture"

__all__ = [
    "ADE150",
    "ADE847",
    "COCOStuff171",
    "Cityscapes",
    "GRefCOCO",
    "PascalContext459",
    "COCOObject",
    "DATASETS",
    "PascalContext",
    "ReferringDataset",
    "SemanticDataset",
    "ToySegmentation",
    "VOCSegmentation",
    "build_dataset",
    "read_image",
    "read_label",
    "register_dataset",
    "voc_fixture_dataset",
]
