"""The toy benchmark: procedural scenes (carbench.toy.scenes) in the VOC layout, read by the VOC adapter.

`dataset=toy` generates the requested split on first use, deterministically from (seed, split,
index), into `root/seed<seed>-<size>px`, and then reads it exactly as real VOC is read. Splits
train / tune / val come from disjoint random streams, so thresholds chosen on `tune` never see `val`.
Each (seed, size) world has its own folder: two runs with different `dataset.seed` (the golden
numbers run three) never regenerate each other's images under a running or resumable run.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path

from carbench.data.generated import claim_generated_root, read_only_error
from carbench.data.registry import register_dataset
from carbench.data.voc import VOCSegmentation
from carbench.toy.scenes import CLASS_NAMES, SPLIT_OFFSETS, write_toy_split

TOY_CLASSES: tuple[str, ...] = ("background", *CLASS_NAMES)


class ToySegmentation(VOCSegmentation):
    CLASSES = TOY_CLASSES


def world_folder(root: Path, seed: int, size: int) -> Path:
    """Where the scenes of one (seed, size) world live under the toy root."""
    return root / f"seed{seed}-{size}px"


@register_dataset("toy")
def toy_dataset(
    root: str | os.PathLike[str],
    split: str = "val",
    n: int = 100,
    seed: int = 0,
    size: int = 96,
    queries: Sequence[str] | None = None,
) -> ToySegmentation:
    """Toy split `split` with `n` scenes of `size`² pixels from `seed`, generated if absent."""
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"unknown toy split {split!r}; valid: {', '.join(SPLIT_OFFSETS)}")
    root = claim_generated_root(Path(root).expanduser(), "toy")  # never write into someone else's folder
    root = claim_generated_root(world_folder(root, int(seed), int(size)), "toy")
    try:
        write_toy_split(root, split, int(n), int(seed), int(size))
    except OSError as err:
        if isinstance(err, PermissionError) or err.errno == errno.EROFS:
            raise read_only_error(root, "toy", err) from err
        raise
    ds = ToySegmentation(root, split=split, variant="voc21", queries=queries)
    ds.name = "toy"
    return ds
