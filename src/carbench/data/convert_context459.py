"""Pascal Context full annotations (``trainval/<id>.mat``) → the PC-459 layout the official CaR loader reads.

Input: the VOC2010 folder with ``JPEGImages/``, ``ImageSets/Main/<split>.txt`` and the Pascal Context
``trainval/`` folder of MATLAB files (``LabelMap``: 1..459 = the ``labels.txt`` classes, 0 = unlabeled).
Output under ``<out>``: ``images/<validation|training>/<id>.jpg`` (hard links where the file system
allows, else copies) and ``annotations_ctx459/<split>/<id>.tif``, 16-bit, value ``LabelMap − 1`` with
unlabeled stored as 65,535 — the same bytes detectron2-style conversions write. The Pascal Context
val set is the VOC2010 ``Main/val`` list (5,105 images), train is ``Main/train`` (4,998).
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from carbench.data.context459 import CONTEXT459_IGNORE, IMAGE_DIR, LABEL_DIR
from carbench.data.convert_labels import check_count, convert_files, write_tiff_u16
from carbench.data.layout import read_split_file

__all__ = ["EXPECTED_COUNTS", "SPLIT_NAMES", "convert_split", "label_map_to_ids", "main"]

EXPECTED_COUNTS: dict[str, int] = {"val": 5105, "train": 4998}
SPLIT_NAMES: dict[str, str] = {"val": "validation", "train": "training"}
HINT = ("see datasets/README.md, section 'Pascal Context 459' (VOCtrainval_03-May-2010.tar + the Pascal Context "
        "trainval.tar.gz unpacked into the VOC2010 folder)")


def label_map_to_ids(label_map: np.ndarray, source: str = "<array>") -> np.ndarray:
    """``LabelMap`` (0 unlabeled, 1..459) → stored ids (0..458, 65,535 unlabeled) as uint16."""
    lm = np.asarray(label_map).astype(np.int64)
    bad = np.unique(lm[(lm < 0) | (lm > 459)])
    if bad.size:
        raise ValueError(f"{source}: LabelMap values {bad[:10].tolist()} are outside 0..459; not a Pascal Context "
                         "full-annotation file")
    return np.where(lm == 0, CONTEXT459_IGNORE, lm - 1).astype(np.uint16)


def _read_mat(path: Path) -> np.ndarray:
    try:
        from scipy.io import loadmat  # only this converter needs scipy
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the Pascal Context 459 converter reads MATLAB files with scipy: pip install scipy") from e
    mat = loadmat(str(path))
    if "LabelMap" not in mat:
        raise ValueError(f"{path} has no 'LabelMap' variable (keys: {sorted(k for k in mat if not k.startswith('_'))}); "
                         f"it is not a Pascal Context annotation. {HINT}")
    return label_map_to_ids(mat["LabelMap"], str(path))


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def convert_split(voc2010: Path, out: Path, split: str = "val", expected: int | None = None,
                  overwrite: bool = False) -> int:
    """Write images and 16-bit labels of `split` under `out`; return the number of label files there."""
    expected = EXPECTED_COUNTS.get(split) if expected is None else expected
    for d in ("JPEGImages", "trainval", "ImageSets/Main"):
        if not (voc2010 / d).is_dir():
            raise FileNotFoundError(f"{voc2010 / d} does not exist; {HINT}")
    ids = read_split_file(voc2010 / "ImageSets" / "Main" / f"{split}.txt", "Pascal Context 459", HINT)
    missing = [i for i in ids if not (voc2010 / "trainval" / f"{i}.mat").is_file()]
    if missing:
        raise FileNotFoundError(f"Pascal Context 459: {len(missing)} of {len(ids)} {split} ids have no "
                                f"trainval/<id>.mat (first: {missing[:3]}); {HINT}")
    name = SPLIT_NAMES[split]
    img_dir, lab_dir = out / IMAGE_DIR.format(split=name), out / LABEL_DIR.format(split=name)
    for i in ids:
        _link_or_copy(voc2010 / "JPEGImages" / f"{i}.jpg", img_dir / f"{i}.jpg")
    pairs = [(voc2010 / "trainval" / f"{i}.mat", lab_dir / f"{i}.tif") for i in ids]
    written, skipped = convert_files(pairs, _read_mat, write_tiff_u16, f"Pascal Context 459 {split}", overwrite)
    print(f"Pascal Context 459 {split}: {written} converted, {skipped} already present")
    labels = len(list(lab_dir.glob("*.tif")))
    check_count(f"Pascal Context 459 {split}", len(list(img_dir.glob("*.jpg"))), labels, expected, out)
    return labels


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python datasets/prepare_context459.py",
                                     description="Pascal Context trainval/*.mat → images/ + annotations_ctx459/ (16-bit).")
    parser.add_argument("voc2010", type=Path, help="VOC2010 folder with JPEGImages/, ImageSets/Main/ and trainval/")
    parser.add_argument("out", type=Path, help="output root (dataset.root of dataset=context459)")
    parser.add_argument("--splits", nargs="+", default=["val"], choices=sorted(EXPECTED_COUNTS))
    parser.add_argument("--expected-count", type=int, default=None, help="images per split (default: official)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite labels that already exist")
    args = parser.parse_args(argv)
    return sum(convert_split(args.voc2010, args.out, s, args.expected_count, args.overwrite) for s in args.splits)


if __name__ == "__main__":
    main()
