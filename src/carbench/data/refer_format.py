"""The REFER toolkit's on-disk format (RefCOCO / RefCOCO+ / RefCOCOg), read as the toolkit reads it.

docs/datasets.md §10: ``<root>/<dataset>/refs(<split_by>).p`` is a pickled list of ref dicts and
``<root>/<dataset>/instances.json`` holds COCO-style images / annotations / categories; images are
``<root>/images/mscoco/images/train2014/<file_name>``. The rules reproduced here:

- split selection (REFER ``getRefIds``): 'testA'/'testB'/'testC' match refs whose split contains that
  letter, 'test' matches any split containing 'test', 'train'/'val' match exactly;
- GT decoding (REFER ``getMask``): polygons → one RLE each (pycocotools ``frPyObjects``) → decode →
  **sum** over polygons; LAVT / CaR then keep pixels whose sum is exactly 1 (``exclusive``), so where two
  polygons of one object overlap the pixel is background. ``union`` (sum > 0, what COCO's annToMask and
  CRIS do) is offered as an option.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from carbench.data.base import read_image

__all__ = [
    "IMAGE_SUBDIR", "MASK_RULES", "SPLITS_BY", "clean_expression", "decode_ann_mask", "load_refer", "select_refs",
]

IMAGE_SUBDIR = "images/mscoco/images/train2014"
MASK_RULES = ("exclusive", "union")
#: Splits each partition defines (REFER README / docs/datasets.md §10); train is listed but never a benchmark.
SPLITS_BY: dict[str, tuple[str, ...]] = {
    "unc": ("train", "val", "testA", "testB"),
    "umd": ("train", "val", "test"),
    "google": ("train", "val"),
}



class _PlainUnpickler(pickle.Unpickler):
    """Unpickler for REFER's `refs(<split_by>).p`: plain data only, every global refused."""

    def __init__(self, fh, path: Path) -> None:
        super().__init__(fh)
        self.path = path

    def find_class(self, module: str, name: str):  # noqa: D102 - pickle API
        raise pickle.UnpicklingError(
            f"{self.path}: refusing global {module}.{name}; REFER refs hold only plain data — re-download the file"
        )

def load_refer(root: Path, dataset: str, split_by: str, hint: str) -> tuple[list[dict], dict[str, Any]]:
    """(refs, instances) of one dataset/partition; a missing file names its path and `hint`."""
    ref_file = root / dataset / f"refs({split_by}).p"
    inst_file = root / dataset / "instances.json"
    for f in (ref_file, inst_file):
        if not f.is_file():
            present = sorted(p.name for p in (root / dataset).glob("*")) if (root / dataset).is_dir() else []
            raise FileNotFoundError(
                f"{dataset}: expected {f}, which is missing (files in {root / dataset}: {present or 'none'}). {hint}"
            )
    with open(ref_file, "rb") as fh:
        # written by Python 2 (plain lists/dicts/str/int); a restricted unpickler refuses any global, so a
        # tampered annotation file can never run code
        refs = _PlainUnpickler(fh, ref_file).load()
    if not isinstance(refs, list) or (refs and not isinstance(refs[0], dict)):
        raise ValueError(f"{ref_file} does not hold a list of ref dicts (REFER format); re-download it. {hint}")
    with open(inst_file) as fh:
        instances = json.load(fh)
    missing_keys = [k for k in ("images", "annotations", "categories") if k not in instances]
    if missing_keys:
        raise ValueError(f"{inst_file} lacks the COCO keys {missing_keys}; re-download it. {hint}")
    return refs, instances


def select_refs(refs: list[dict], split: str) -> list[dict]:
    """Refs of `split` in file order, with REFER ``getRefIds``'s matching rule."""
    if split in ("testA", "testB", "testC"):
        return [r for r in refs if split[-1] in r["split"]]
    if split in ("testAB", "testBC", "testAC"):
        return [r for r in refs if r["split"] == split]
    if split == "test":
        return [r for r in refs if "test" in r["split"]]
    if split in ("train", "val"):
        return [r for r in refs if r["split"] == split]
    raise ValueError(f"unknown REFER split {split!r}; valid: train, val, test, testA, testB (per partition)")


def clean_expression(text: str) -> str:
    """The official CaR text processing for RefCOCO* (utils.process_sentence): lower-case, drop '"' and '/'."""
    return text.lower().replace('"', "").replace("/", "")


def decode_ann_mask(segmentation: Any, height: int, width: int, rule: str = "exclusive") -> np.ndarray:
    """H×W bool GT of one annotation, as REFER ``getMask`` + the LAVT/CaR ``== 1`` (or ``> 0``) rule.

    `segmentation` is a list of polygons ``[[x1, y1, x2, y2, …], …]`` or an RLE dict (compressed
    ``counts`` string, or uncompressed list as in iscrowd annotations).
    """
    if rule not in MASK_RULES:
        raise ValueError(f"unknown mask rule {rule!r}; valid: {', '.join(MASK_RULES)}")
    if isinstance(segmentation, list):
        if not segmentation:
            raise ValueError("annotation has an empty polygon list")
        rles = mask_utils.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict):
        rles = mask_utils.frPyObjects(segmentation, height, width) if isinstance(segmentation["counts"], list) \
            else segmentation
    else:
        raise ValueError(f"unsupported segmentation type {type(segmentation).__name__}")
    m = mask_utils.decode(rles)
    summed = m.astype(np.int64).sum(axis=2) if m.ndim == 3 else m.astype(np.int64)
    if summed.shape != (height, width):
        raise ValueError(f"decoded mask is {summed.shape}, but the annotation's image is {(height, width)}")
    return summed == 1 if rule == "exclusive" else summed > 0


def read_coco_image(image_dir: Path, info: dict[str, Any]) -> np.ndarray:
    """The COCO image an instances.json `images` entry names, checked against the size it records
    (a mismatch means the wrong image folder or a corrupt file, and would misplace every mask)."""
    path = image_dir / info["file_name"]
    image = read_image(path)
    h, w = int(info["height"]), int(info["width"])
    if image.shape[:2] != (h, w):
        raise ValueError(f"{path} is {image.shape[0]}×{image.shape[1]} but instances.json says {h}×{w}")
    return image
