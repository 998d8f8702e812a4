"""VOC2010 + PASCAL-in-Detail ``trainval_merged.json`` → Pascal Context 60-class label PNGs.

docs/datasets.md §5, the mmseg converter's rule, re-implemented without the Detail API package: for each
image of a phase, paint every segmentation annotation of that image (json order, later ones win) with
its raw Detail ``category_id`` on a zero canvas, map the raw ids through the sorted list of the 60
(``CONTEXT_RAW_IDS``: index i ↔ label id i) by exact match — any other value is an error, as the
mmseg converter asserts — and save ``SegmentationClassContext/<id>.png`` (L mode). The split files
``ImageSets/SegmentationContext/<phase>.txt`` list the basenames sorted.

Idempotent (atomic writes, existing PNGs kept unless ``overwrite``) and checked: the number of images
of each phase must equal the known split size (val 5,105, train 4,998) unless told otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from carbench.data.pascal_context import CONTEXT_RAW_IDS, IMAGE_DIR, LABEL_DIR, SPLIT_DIR

__all__ = ["EXPECTED_COUNTS", "class_mask", "convert", "main", "raw_to_label"]

EXPECTED_COUNTS: dict[str, int] = {"val": 5105, "train": 4998}
JSON_NAME = "trainval_merged.json"
_LUT = np.full(max(CONTEXT_RAW_IDS) + 1, -1, dtype=np.int64)
_LUT[list(CONTEXT_RAW_IDS)] = np.arange(len(CONTEXT_RAW_IDS))


def _decode(segmentation: dict[str, Any], h: int, w: int) -> np.ndarray:
    seg = segmentation
    if isinstance(seg.get("counts"), list):
        seg = mask_utils.frPyObjects(seg, h, w)
    m = mask_utils.decode(seg)
    return m[..., 0] if m.ndim == 3 else m


def class_mask(image: dict[str, Any], anns: Sequence[dict[str, Any]]) -> np.ndarray:
    """Detail ``getMask(img)`` semantics: raw category ids painted in annotation order, 0 = unannotated."""
    h, w = int(image["height"]), int(image["width"])
    mask = np.zeros((h, w), dtype=np.int64)
    for ann in anns:
        m = _decode(ann["segmentation"], h, w)
        if m.shape != (h, w):
            raise ValueError(f"annotation {ann.get('id')} decodes to {m.shape}, image {image['file_name']} is {(h, w)}")
        mask[m != 0] = int(ann["category_id"])
    return mask


def raw_to_label(raw: np.ndarray, source: str = "<array>") -> np.ndarray:
    """Raw Detail ids → label ids 0..59 by exact match; anything outside the 60 ids is an error."""
    bad_range = (raw < 0) | (raw >= len(_LUT))
    out = np.where(bad_range, -1, _LUT[np.clip(raw, 0, len(_LUT) - 1)])
    if (out < 0).any():
        bad = sorted(set(np.unique(raw[out < 0]).tolist()))
        raise ValueError(f"{source}: Detail category ids {bad} are not among the 60 Pascal Context ids "
                         "(trainval_merged.json should hold only those); is this the right json?")
    return out.astype(np.uint8)


def _write_atomic(path: Path, label: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    Image.fromarray(label, mode="L").save(tmp, format="PNG")
    os.replace(tmp, path)


def convert(
    voc2010: Path,
    json_path: Path | None = None,
    phases: Sequence[str] = ("val",),
    expected: int | None = None,
    overwrite: bool = False,
) -> dict[str, int]:
    """Convert the given phases under `voc2010` (the VOC2010 folder); return {phase: images written or kept}."""
    json_path = json_path or voc2010 / JSON_NAME
    img_dir = voc2010 / IMAGE_DIR
    if not img_dir.is_dir():
        raise FileNotFoundError(f"{img_dir} does not exist: unpack VOCtrainval_03-May-2010.tar so that {voc2010} is "
                                "its VOCdevkit/VOC2010 folder; see datasets/README.md, section 'Pascal Context'.")
    if not json_path.is_file():
        raise FileNotFoundError(f"{json_path} does not exist: download trainval_merged.json (PASCAL-in-Detail) into "
                                f"{voc2010}; see datasets/README.md, section 'Pascal Context'.")
    data = json.loads(json_path.read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in data["annos_segmentation"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    (voc2010 / LABEL_DIR).mkdir(exist_ok=True)
    (voc2010 / SPLIT_DIR).mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for phase in phases:
        images = [im for im in data["images"] if im.get("phase") == phase]
        missing = [im["file_name"] for im in images if not (img_dir / im["file_name"]).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} {phase} image(s) named by {json_path.name} are missing from "
                                    f"{img_dir}, e.g. {missing[:5]}; re-extract the VOC2010 archive.")
        stems = []
        for im in tqdm(images, desc=f"Pascal Context {phase}", unit="img"):
            stem = Path(im["file_name"]).stem
            stems.append(stem)
            dst = voc2010 / LABEL_DIR / f"{stem}.png"
            if dst.exists() and not overwrite:
                continue
            label = raw_to_label(class_mask(im, by_image.get(im["image_id"], [])), im["file_name"])
            _write_atomic(dst, label)
        want = EXPECTED_COUNTS.get(phase) if expected is None else expected
        if want is not None and len(stems) != want:
            raise RuntimeError(f"Pascal Context {phase}: {json_path.name} lists {len(stems)} images, expected {want}. "
                               "Wrong json (use trainval_merged.json), or pass --expected-count for a deliberate "
                               "subset.")
        (voc2010 / SPLIT_DIR / f"{phase}.txt").write_text("".join(f"{s}\n" for s in sorted(stems)))
        counts[phase] = len(stems)
        print(f"Pascal Context {phase}: {len(stems)} label maps in {voc2010 / LABEL_DIR}, split file "
              f"{voc2010 / SPLIT_DIR / f'{phase}.txt'}")
    return counts


def main(argv: Sequence[str] | None = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(
        prog="python datasets/prepare_pascal_context.py",
        description="VOC2010 + trainval_merged.json → SegmentationClassContext/*.png (60 classes) + split files.",
    )
    parser.add_argument("voc2010", type=Path, help="the VOCdevkit/VOC2010 folder")
    parser.add_argument("--json", type=Path, default=None, help=f"Detail json (default: <voc2010>/{JSON_NAME})")
    parser.add_argument("--splits", nargs="+", default=["val"], choices=sorted(EXPECTED_COUNTS))
    parser.add_argument("--expected-count", type=int, default=None,
                        help="images per split to expect (default: the official size, val 5105)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite label maps that already exist")
    args = parser.parse_args(argv)
    return convert(args.voc2010, args.json, args.splits, args.expected_count, args.overwrite)


if __name__ == "__main__":
    main()
