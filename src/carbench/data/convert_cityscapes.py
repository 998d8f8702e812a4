"""Cityscapes ``*_gtFine_labelIds.png`` → ``*_gtFine_labelTrainIds.png`` (19 classes, 255 ignore), in place.

The official id → trainId table (`carbench.data.cityscapes.LABEL_ID_TO_TRAIN_ID`); every label id
outside the 19 evaluated classes becomes 255. Checks the official split sizes (val 500, train 2,975).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from carbench.data.cityscapes import IMAGE_SUFFIX, LABEL_SUFFIX, RAW_SUFFIX, label_ids_to_train_ids
from carbench.data.convert_labels import check_count, convert_files, write_png_l

__all__ = ["EXPECTED_COUNTS", "convert_split", "main"]

EXPECTED_COUNTS: dict[str, int] = {"val": 500, "train": 2975}


def _read_ids(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        if im.mode not in ("L", "P"):
            raise ValueError(f"{path} has PIL mode {im.mode!r}; *_gtFine_labelIds.png are 8-bit grayscale")
        return label_ids_to_train_ids(np.array(im, dtype=np.uint8), str(path))


def convert_split(root: Path, split: str = "val", expected: int | None = None, overwrite: bool = False) -> int:
    """Write the trainId maps of ``root/gtFine/<split>``; return the number of label maps there."""
    expected = EXPECTED_COUNTS.get(split) if expected is None else expected
    gt, img = root / "gtFine" / split, root / "leftImg8bit" / split
    for d, archive in ((gt, "gtFine_trainvaltest.zip"), (img, "leftImg8bit_trainvaltest.zip")):
        if not d.is_dir():
            raise FileNotFoundError(f"{d} does not exist: unzip {archive} into {root}; see datasets/README.md, "
                                    "section 'Cityscapes'.")
    raws = sorted(gt.rglob(f"*{RAW_SUFFIX}"))
    pairs = [(p, p.with_name(p.name[: -len(RAW_SUFFIX)] + LABEL_SUFFIX)) for p in raws]
    written, skipped = convert_files(pairs, _read_ids, write_png_l, f"Cityscapes {split}", overwrite)
    print(f"Cityscapes {split}: {written} converted, {skipped} already present")
    labels = len(list(gt.rglob(f"*{LABEL_SUFFIX}")))
    check_count(f"Cityscapes {split}", len(list(img.rglob(f"*{IMAGE_SUFFIX}"))), labels, expected, root)
    return labels


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python datasets/prepare_cityscapes.py",
                                     description="Cityscapes *_gtFine_labelIds.png → *_gtFine_labelTrainIds.png.")
    parser.add_argument("root", type=Path, help="Cityscapes folder holding leftImg8bit/ and gtFine/")
    parser.add_argument("--splits", nargs="+", default=["val"], choices=sorted(EXPECTED_COUNTS))
    parser.add_argument("--expected-count", type=int, default=None, help="images per split (default: official)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite label maps that already exist")
    args = parser.parse_args(argv)
    return sum(convert_split(args.root, s, args.expected_count, args.overwrite) for s in args.splits)


if __name__ == "__main__":
    main()
