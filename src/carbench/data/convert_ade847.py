"""The full ADE20K release (``ADE20K_2021_17_01``) → the ADE-847 layout `dataset=ade847` reads.

The ADE-847 benchmark is defined by detectron2's conversion script for this release; this module
produces the same layout and values without detectron2:

Input (the release as unpacked; what this converter assumes about it):
- ``<release>/index_ade20k.pkl``: a pickled dict whose lists ``folder`` and ``filename`` name every
  image; an image lives at ``<parent of release>/<folder>/<filename>`` (the folders start with the
  release's own name, e.g. ``ADE20K_2021_17_01/images/ADE/validation/...``);
- next to each ``<stem>.jpg`` its object map ``<stem>_seg.png`` (RGB), whose pixel holds the ADE20K
  object class ``(R // 10) * 256 + G`` (0 = unlabeled);
- the split is the second ``_`` field of the file name: ``ADE_val_…`` is validation, any other
  (``ADE_train_…``, ``ADE_frame_…``) training.

Output under ``<release>``: ``images_detectron2/<split>/<stem>.jpg`` and
``annotations_detectron2/<split>/<stem>.tif`` (16-bit). Each of the 847 benchmark classes is one ADE20K
object class (the table ``classnames/ade847_source_ids.txt``, in label-id order, next to the names in
``classnames/ade847.txt``); its pixels get the label id 0..846 and every other object class,
and unlabeled, 65,535. Images whose short side exceeds 512 px are scaled to a 512-px short side
(long side rounded): the image bilinearly, the object map by nearest neighbour. Every image is
re-encoded as JPEG with Pillow's defaults, resized or not, as the reference conversion does, so the
pixels match the published layout rather than the raw release.
"""

from __future__ import annotations

import argparse
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from carbench.data.ade import ADE847_IGNORE
from carbench.data.check_folder_dataset import check
from carbench.data.class_lists import load_class_list
from carbench.data.convert_labels import check_count, write_tiff_u16

__all__ = ["EXPECTED_COUNTS", "MAX_SHORT_SIDE", "SPLITS", "convert", "decode_object_map", "label_lookup",
           "main", "output_size", "split_of"]

EXPECTED_COUNTS: dict[str, int] = {"validation": 2000, "training": 25574}
SPLITS = tuple(EXPECTED_COUNTS)
MAX_SHORT_SIDE = 512
INDEX_FILE = "index_ade20k.pkl"
IMAGE_DIR, LABEL_DIR = "images_detectron2/{split}", "annotations_detectron2/{split}"
HINT = ("see datasets/README.md, section 'ADE-847': unpack ADE20K_2021_17_01.zip (ade20k.csail.mit.edu) and pass "
        "the ADE20K_2021_17_01 folder")
#: object classes the 2021 release can encode: (255 // 10) * 256 + 255
_MAX_OBJECT = 25 * 256 + 255


def label_lookup() -> np.ndarray:
    """Table object class → stored label (0..846, or 65,535 for the classes outside the benchmark)."""
    source = [int(s) for s in load_class_list("ade847_source_ids", 847)]
    lut = np.full(_MAX_OBJECT + 1, ADE847_IGNORE, dtype=np.uint16)
    lut[np.asarray(source)] = np.arange(847, dtype=np.uint16)
    return lut


def decode_object_map(seg: np.ndarray, source: str = "<array>") -> np.ndarray:
    """An RGB ``_seg.png`` array → H×W int32 ADE20K object classes, (R // 10) * 256 + G."""
    if seg.ndim != 3 or seg.shape[2] < 3 or seg.dtype != np.uint8:
        raise ValueError(f"{source}: expected an 8-bit RGB object map (the release's *_seg.png), got shape "
                         f"{seg.shape} dtype {seg.dtype}")
    return (seg[..., 0].astype(np.int32) // 10) * 256 + seg[..., 1].astype(np.int32)


def output_size(height: int, width: int) -> tuple[int, int]:
    """(H, W) after the conversion's resize: the short side capped at 512, aspect kept (rounded)."""
    if width >= height > MAX_SHORT_SIDE:
        return MAX_SHORT_SIDE, round(width / height * MAX_SHORT_SIDE)
    if height >= width > MAX_SHORT_SIDE:
        return round(height / width * MAX_SHORT_SIDE), MAX_SHORT_SIDE
    return height, width


def split_of(filename: str) -> str:
    """``ADE_val_…`` → validation; every other release file (train, frame) → training."""
    parts = filename.split("_")
    if len(parts) < 3 or not filename.endswith(".jpg"):
        raise ValueError(f"index entry {filename!r} is not an ADE20K image name (ADE_<split>_<number>.jpg); {HINT}")
    return "validation" if parts[1] == "val" else "training"


#: The only globals the index may name: what numpy needs to rebuild its arrays and scalars.
INDEX_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
) | {("numpy", "ndarray"), ("numpy", "dtype")}


class IndexUnpickler(pickle.Unpickler):
    """Reads the release's index (a pickle) without letting it run code.

    A plain `pickle.load` would call whatever the file names; the index only holds dicts, lists,
    strings and numpy arrays, so every other global is refused with the file named.
    """

    def find_class(self, module: str, name: str):  # noqa: D102 - see the class docstring
        if (module, name) not in INDEX_GLOBALS:
            raise pickle.UnpicklingError(
                f"{INDEX_FILE} names {module}.{name}, which an ADE20K index never holds (only dicts, lists, strings "
                f"and numpy arrays); refusing to load it. Re-download the release; {HINT}"
            )
        return super().find_class(module, name)


def _read_index(release: Path) -> list[tuple[Path, str]]:
    """(image path, split) of every image the release's index lists."""
    path = release / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; {HINT}")
    with path.open("rb") as f:
        index = IndexUnpickler(f).load()
    if not isinstance(index, dict) or not {"folder", "filename"} <= set(index):
        keys = sorted(index) if isinstance(index, dict) else type(index).__name__
        raise ValueError(f"{path} has no 'folder' and 'filename' lists (found {keys}); not the ADE20K 2021 index")
    if len(index["folder"]) != len(index["filename"]):
        raise ValueError(f"{path}: {len(index['folder'])} folders but {len(index['filename'])} file names")
    return [(release.parent / str(d) / str(n), split_of(str(n))) for d, n in zip(index["folder"], index["filename"],
                                                                               strict=True)]


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    Image.fromarray(image).save(tmp, format="JPEG")
    os.replace(tmp, path)


def convert_one(image_path: Path, lut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One release image and its object map → (resized image, uint16 label map)."""
    seg_path = image_path.with_name(image_path.stem + "_seg.png")
    for p in (image_path, seg_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} does not exist but {INDEX_FILE} lists it; the release is incomplete. {HINT}")
    with Image.open(image_path) as im:
        image = np.asarray(im)
    with Image.open(seg_path) as im:
        objects = decode_object_map(np.asarray(im), str(seg_path))
    if objects.shape != image.shape[:2]:
        raise ValueError(f"{seg_path} is {objects.shape[0]}×{objects.shape[1]} but {image_path} is "
                         f"{image.shape[0]}×{image.shape[1]}; the two files do not belong together")
    h, w = output_size(*objects.shape)
    if (h, w) != objects.shape:
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        objects = cv2.resize(objects, (w, h), interpolation=cv2.INTER_NEAREST)
    return image, lut[objects]


def convert(release: Path, splits: Sequence[str] = ("validation",), expected: int | None = None,
            overwrite: bool = False) -> dict[str, int]:
    """Write the ADE-847 layout for `splits` under `release`; return the label count per split.

    Pairs whose image and label both exist are skipped (re-running is cheap and safe) unless `overwrite`.
    """
    for s in splits:
        if s not in EXPECTED_COUNTS:
            raise ValueError(f"unknown split {s!r}; valid: {', '.join(SPLITS)}")
    entries = [(p, s) for p, s in _read_index(release) if s in splits]
    lut = label_lookup()
    written = skipped = 0
    for image_path, split in tqdm(entries, desc="ADE-847 " + "+".join(splits), unit="image"):
        img_out = release / IMAGE_DIR.format(split=split) / image_path.name
        lab_out = release / LABEL_DIR.format(split=split) / f"{image_path.stem}.tif"
        if img_out.exists() and lab_out.exists() and not overwrite:
            skipped += 1
            continue
        image, label = convert_one(image_path, lut)
        _write_jpeg(img_out, image)
        write_tiff_u16(lab_out, label)
        written += 1
    print(f"ADE-847: {written} converted, {skipped} already present")
    counts = {}
    for s in splits:
        img_dir, lab_dir = release / IMAGE_DIR.format(split=s), release / LABEL_DIR.format(split=s)
        n_img = len(list(img_dir.glob("*.jpg"))) if img_dir.is_dir() else 0
        n_lab = len(list(lab_dir.glob("*.tif"))) if lab_dir.is_dir() else 0
        check_count(f"ADE-847 {s}", n_img, n_lab, EXPECTED_COUNTS[s] if expected is None else expected, release)
        counts[s] = n_lab
    return counts


def main(argv: Sequence[str] | None = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(
        prog="python datasets/prepare_ade847.py",
        description="ADE20K_2021_17_01 (index_ade20k.pkl + *_seg.png) → images_detectron2/ + annotations_detectron2/ "
                    "(16-bit TIFF, 0..846, 65535 unlabeled).")
    parser.add_argument("release", type=Path, help="the unpacked ADE20K_2021_17_01 folder (becomes dataset.root)")
    parser.add_argument("--splits", nargs="+", default=["validation"], choices=SPLITS)
    parser.add_argument("--expected-count", type=int, default=None, help="images per split (default: official)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite outputs that already exist")
    parser.add_argument("--check-only", action="store_true",
                        help="only check an already converted folder (e.g. made by detectron2's script)")
    args = parser.parse_args(argv)
    if args.check_only:
        return {s: check("ade847", args.release, s, args.expected_count) for s in args.splits}
    return convert(args.release, args.splits, args.expected_count, args.overwrite)
