"""The toy benchmark: procedural scenes (carbench.toy.scenes) in the VOC layout, read by the VOC adapter.

`dataset=toy` generates the requested split on first use, deterministically from (seed, split,
index), into `root/seed<seed>-<size>px`, and then reads it exactly as real VOC is read. Splits
train / tune / val come from disjoint random streams, so thresholds chosen on `tune` never see `val`.
Each (seed, size, colour mode) world has its own folder: two runs with different `dataset.seed` (the golden
numbers run three) never regenerate each other's images under a running or resumable run.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path

from carbench.checks import check_whole
from carbench.data.generated import claim_generated_root, read_only_error
from carbench.data.registry import register_dataset
from carbench.data.voc import VOCSegmentation
from carbench.toy.scenes import CLASS_NAMES, SPLIT_OFFSETS, check_color_mode, write_toy_split

TOY_CLASSES: tuple[str, ...] = ("background", *CLASS_NAMES)


class ToySegmentation(VOCSegmentation):
    CLASSES = TOY_CLASSES


#: (minimum, example) of the toy dataset's whole-number keys; below the minimum the generator cannot run
#: (a negative seed has no random stream, a scene under 16 px has no room for a shape)
WHOLE_KEYS: dict[str, tuple[int, int]] = {"n": (1, 100), "seed": (0, 1), "size": (16, 96)}


def check_whole_numbers(**values: object) -> None:
    """Raise ValueError naming `dataset.<key>` when one of n / seed / size is not a whole number ≥ its minimum.

    Checked before any folder is made, so a bad value writes nothing; a float such as n=2.5 would
    otherwise run silently as int(2.5) = 2 scenes."""
    for key, value in values.items():
        check_whole(f"dataset.{key}", value, *WHOLE_KEYS[key])


def world_folder(root: Path, seed: int, size: int, colors: str = "any") -> Path:
    """Where the scenes of one (seed, size, colour mode) world live under the toy root."""
    return root / (f"seed{seed}-{size}px" + ("" if colors == "any" else f"-{colors}"))


@register_dataset("toy")
def toy_dataset(
    root: str | os.PathLike[str],
    split: str = "val",
    n: int = 100,
    seed: int = 0,
    size: int = 96,
    colors: str = "any",
    queries: Sequence[str] | None = None,
) -> ToySegmentation:
    """Toy split `split` with `n` scenes of `size`² pixels from `seed`, generated if absent;
    `colors` is how objects are coloured (`carbench.toy.scenes.COLOR_MODES`)."""
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"unknown toy split {split!r}; valid: {', '.join(SPLIT_OFFSETS)}")
    check_color_mode(colors)
    check_whole_numbers(n=n, seed=seed, size=size)
    root = claim_generated_root(Path(root).expanduser(), "toy")  # never write into someone else's folder
    root = claim_generated_root(world_folder(root, seed, size, colors), "toy")
    try:
        write_toy_split(root, split, n, seed, size, colors)
    except OSError as err:
        if isinstance(err, PermissionError) or err.errno == errno.EROFS:
            raise read_only_error(root, "toy", err) from err
        raise
    ds = ToySegmentation(root, split=split, variant="voc21", queries=queries)
    ds.name = "toy"
    return ds
