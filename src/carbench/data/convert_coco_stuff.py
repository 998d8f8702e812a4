"""COCO-Stuff-164k raw stuffthingmaps → COCO-Stuff-171 ``*_labelTrainIds.png`` (the mmseg table).

Raw stuffthingmap value = COCO category id − 1: things 0..89 with 11 ids unused, stuff 91..181,
255 unlabeled. The 80 used thing values map to trainIds 0..79 in order, stuff 91..181 to 80..170,
255 stays 255. Any other raw value (an unused thing id, 90, 182..254) is an error naming the file:
it means the input is not a raw stuffthingmap. Outputs sit next to the raw maps.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from carbench.data.coco_stuff import COCO_STUFF_LABEL_SUFFIX
from carbench.data.convert_coco_object import UNUSED_THING_RAW
from carbench.data.convert_labels import check_count, convert_files, write_png_l

__all__ = ["EXPECTED_COUNTS", "STUFF_LUT", "convert_split", "main", "raw_to_train_ids"]

EXPECTED_COUNTS: dict[str, int] = {"val": 5000, "train": 118287}
_INVALID = -1


def _lut() -> np.ndarray:
    lut = np.full(256, _INVALID, dtype=np.int64)
    things = [r for r in range(90) if r not in UNUSED_THING_RAW]
    lut[things] = np.arange(80)
    lut[91:182] = np.arange(80, 171)
    lut[255] = 255
    return lut


STUFF_LUT: np.ndarray = _lut()
STUFF_LUT.setflags(write=False)


def raw_to_train_ids(raw: np.ndarray, source: Path | str = "<array>") -> np.ndarray:
    """One raw stuffthingmap (H×W uint8) → trainIds (H×W uint8: 0..170, 255)."""
    out = STUFF_LUT[raw]
    if (out == _INVALID).any():
        bad = sorted(set(np.unique(raw[out == _INVALID]).tolist()))
        raise ValueError(
            f"{source} holds raw values {bad} that no COCO-Stuff stuffthingmap contains (valid: 0..89 without "
            f"{list(UNUSED_THING_RAW)}, 91..181, 255). Is this an already converted or foreign label file?"
        )
    return out.astype(np.uint8)


def _read_raw(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        if im.mode != "L":
            raise ValueError(f"{path} has PIL mode {im.mode!r}; COCO-Stuff stuffthingmaps are 8-bit 'L' PNGs")
        return raw_to_train_ids(np.array(im, dtype=np.uint8), path)


def convert_split(root: Path, split: str = "val", expected: int | None = None, overwrite: bool = False) -> int:
    """Convert ``root/annotations/<split>2017/<id>.png`` in place; return the number of label maps there."""
    expected = EXPECTED_COUNTS.get(split) if expected is None else expected
    ann_dir, img_dir = root / "annotations" / f"{split}2017", root / "images" / f"{split}2017"
    for d in (ann_dir, img_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"{d} does not exist: unpack {split}2017.zip and stuffthingmaps_trainval2017.zip "
                                    "under the root; see datasets/README.md, section 'COCO-Stuff-171'.")
    raws = sorted(p for p in ann_dir.glob("*.png") if "TrainIds" not in p.name)
    pairs = [(p, ann_dir / f"{p.stem}{COCO_STUFF_LABEL_SUFFIX}") for p in raws]
    written, skipped = convert_files(pairs, _read_raw, write_png_l, f"COCO-Stuff-171 {split}", overwrite)
    print(f"COCO-Stuff-171 {split}: {written} converted, {skipped} already present")
    labels = len(list(ann_dir.glob(f"*{COCO_STUFF_LABEL_SUFFIX}")))
    check_count(f"COCO-Stuff-171 {split}", len(list(img_dir.glob("*.jpg"))), labels, expected, root)
    return labels


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python datasets/prepare_coco_stuff171.py",
                                     description="COCO-Stuff-164k stuffthingmaps → *_labelTrainIds.png, in place.")
    parser.add_argument("root", type=Path, help="folder holding images/<split>2017 and annotations/<split>2017")
    parser.add_argument("--splits", nargs="+", default=["val"], choices=sorted(EXPECTED_COUNTS))
    parser.add_argument("--expected-count", type=int, default=None, help="images per split (default: official)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite label maps that already exist")
    args = parser.parse_args(argv)
    return sum(convert_split(args.root, s, args.expected_count, args.overwrite) for s in args.splits)


if __name__ == "__main__":
    main()
