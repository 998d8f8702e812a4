"""Dataset adapters: each benchmark's on-disk format → `carbench.types.Sample`, built by name.

Importing this package registers the built-in adapters (`voc`, `voc_fixture`, `toy`), so
`build_dataset({"name": "voc", "root": ...})` works after `import carbench.data`.
"""

from carbench.data.base import SemanticDataset, read_image, read_label
from carbench.data.registry import DATASETS, build_dataset, register_dataset
from carbench.data.toy import ToySegmentation  # registers "toy"
from carbench.data.voc import VOCSegmentation  # registers "voc" and "voc_fixture"

__all__ = [
    "DATASETS",
    "SemanticDataset",
    "ToySegmentation",
    "VOCSegmentation",
    "build_dataset",
    "read_image",
    "read_label",
    "register_dataset",
]
