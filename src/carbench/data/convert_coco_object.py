"""COCO-Stuff-164k stuffthingmaps → COCO-Object ``*_instanceTrainIds.png`` (the GroupViT rule).

docs/datasets.md §6. Raw stuffthingmap value = COCO category id − 1 (things 0..89 with 11 unused ids,
stuff 91..181, 255 = unlabeled). Output = 1 + the mmseg COCO-Stuff trainId for things (1..80) and
0 for every raw value > 90, i.e. stuff **and unlabeled** become background. Raw values outside the
table (the 11 unused thing ids, or anything else) are an error: the GroupViT script would leave them
unchanged and so silently create wrong class ids.

Idempotent: outputs are written atomically (temp file + rename) and existing ones are kept unless
``overwrite``; inputs whose name contains "TrainIds" (our outputs, mmseg's) are never read as raw
maps. The number of converted + already present files is checked against the split's known size.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from carbench.data.coco_object import LABEL_SUFFIX

__all__ = ["EXPECTED_COUNTS", "INSTANCE_LUT", "convert_split", "main"]

#: Known COCO 2017 split sizes (the GroupViT script asserts train + val = 123,287).
EXPECTED_COUNTS: dict[str, int] = {"val": 5000, "train": 118287}
UNUSED_THING_RAW: tuple[int, ...] = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
UNLABELED = 255
INVALID = -1


def _instance_lut() -> np.ndarray:
    """256-entry table raw value → COCO-Object id (INVALID for values no stuffthingmap should hold)."""
    lut = np.full(256, INVALID, dtype=np.int64)
    things = [r for r in range(90) if r not in UNUSED_THING_RAW]
    assert len(things) == 80
    for train_id, raw in enumerate(things):
        lut[raw] = train_id + 1
    lut[91:182] = 0  # stuff → background
    lut[UNLABELED] = 0  # unlabeled → background (255 > 90 in the GroupViT rule)
    return lut


INSTANCE_LUT: np.ndarray = _instance_lut()
INSTANCE_LUT.setflags(write=False)


def convert_map(raw: np.ndarray, source: Path | str = "<array>") -> np.ndarray:
    """One raw stuffthingmap (H×W uint8) → instanceTrainIds (H×W uint8, values 0..80)."""
    out = INSTANCE_LUT[raw]
    if (out == INVALID).any():
        bad = sorted(set(np.unique(raw[out == INVALID]).tolist()))
        raise ValueError(
            f"{source} holds raw values {bad} that no COCO-Stuff stuffthingmap contains (valid: 0..89 without "
            f"{list(UNUSED_THING_RAW)}, 91..181, 255). Is this an already converted or foreign label file?"
        )
    return out.astype(np.uint8)


def _write_atomic(path: Path, label: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    Image.fromarray(label, mode="L").save(tmp, format="PNG")
    os.replace(tmp, path)


def convert_split(root: Path, split: str = "val", expected: int | None = None, overwrite: bool = False) -> int:
    """Convert ``root/annotations/<split>2017/<id>.png`` in place; return the number of output files.

    Raises FileNotFoundError if the folder is missing and RuntimeError if the count of output maps (or of
    images in ``root/images/<split>2017``) differs from `expected` (default: the known split size).
    """
    expected = EXPECTED_COUNTS.get(split) if expected is None else expected
    ann_dir = root / "annotations" / f"{split}2017"
    img_dir = root / "images" / f"{split}2017"
    needed = ((ann_dir, "stuffthingmaps (stuffthingmaps_trainval2017.zip)"), (img_dir, f"images ({split}2017.zip)"))
    for d, what in needed:
        if not d.is_dir():
            raise FileNotFoundError(f"{d} does not exist: unpack the COCO-Stuff {what} there; see datasets/README.md, "
                                    "section 'COCO-Object'.")
    raws = sorted(p for p in ann_dir.glob("*.png") if "TrainIds" not in p.name)
    written = skipped = 0
    for src in tqdm(raws, desc=f"COCO-Object {split}", unit="map"):
        dst = ann_dir / f"{src.stem}{LABEL_SUFFIX}"
        if dst.exists() and not overwrite:
            skipped += 1
            continue
        with Image.open(src) as im:
            if im.mode != "L":
                raise ValueError(f"{src} has PIL mode {im.mode!r}; COCO-Stuff stuffthingmaps are 8-bit 'L' PNGs")
            raw = np.array(im, dtype=np.uint8)
        _write_atomic(dst, convert_map(raw, src))
        written += 1
    outputs = len(list(ann_dir.glob(f"*{LABEL_SUFFIX}")))
    images = len(list(img_dir.glob("*.jpg")))
    print(f"COCO-Object {split}: {written} converted, {skipped} already present, {outputs} label maps, "
          f"{images} images in {img_dir}")
    if expected is not None and (outputs != expected or images != expected):
        raise RuntimeError(
            f"COCO-Object {split}: expected {expected} images and label maps, found {images} images and {outputs} "
            f"maps under {root}. The download is incomplete or mixes splits; re-extract it (or pass --expected-count "
            "for a deliberate subset)."
        )
    return outputs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python datasets/prepare_coco_object.py",
        description="COCO-Stuff-164k stuffthingmaps → COCO-Object *_instanceTrainIds.png (GroupViT rule), in place.",
    )
    parser.add_argument("root", type=Path,
                        help="COCO-Stuff folder holding images/<split>2017 and annotations/<split>2017")
    parser.add_argument("--splits", nargs="+", default=["val"], choices=sorted(EXPECTED_COUNTS))
    parser.add_argument("--expected-count", type=int, default=None,
                        help="images per split to expect (default: the official size, val 5000)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite label maps that already exist")
    args = parser.parse_args(argv)
    total = 0
    for split in args.splits:
        total += convert_split(args.root, split, args.expected_count, args.overwrite)
    return total


if __name__ == "__main__":
    main()
