"""Tiny COCO-Stuff, Pascal Context (Detail json) and REFER datasets in their exact on-disk formats.

The tests run the real converters and adapters on these (docs/datasets.md §12). Content is a few flat
rectangles on noisy backgrounds, chosen so every expected number can be worked out by hand:

- `write_coco_stuff_fixture`: ``images/val2017/*.jpg`` + raw stuffthingmaps ``annotations/val2017/*.png``
  (L mode) holding a gap-shifted thing id, stuff ids and 255 (unlabeled); returns, per id, the
  instanceTrainIds map the GroupViT rule must produce (written out by hand, not via the converter's table).
- `write_context_fixture`: ``VOCdevkit/VOC2010/JPEGImages`` + ``trainval_merged.json`` (PASCAL-in-Detail:
  images with phase, RLE ``annos_segmentation`` in paint order, categories with raw ids) and the
  expected 60-class label of each val image.
- `write_refer_fixture`: ``images/mscoco/images/train2014`` + ``<dataset>/instances.json`` (polygons, one
  annotation with two overlapping polygons) + ``refs(<split_by>).p`` pickles for refcoco, refcoco+ and
  refcocog (unc / umd / google).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

__all__ = ["REFER_ANNS", "write_coco_stuff_fixture", "write_context_fixture", "write_refer_fixture"]

Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 (x1/y1 exclusive)


def _image(rng: np.random.Generator, w: int, h: int, rects: list[tuple[Rect, tuple[int, int, int]]]) -> np.ndarray:
    img = np.clip(rng.normal(110, 12, size=(h, w, 3)), 0, 255)
    for (x0, y0, x1, y1), colour in rects:
        img[y0:y1, x0:x1] = colour
    return img.astype(np.uint8)


def _save_jpeg(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img, "RGB").save(path, format="JPEG", quality=95)


def _save_l(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label.astype(np.uint8), mode="L").save(path, format="PNG")


# (id, (W, H), background raw value, [(rect, raw value, expected COCO-Object id)])
_COCO_SCENES: list[tuple[str, tuple[int, int], int, list[tuple[Rect, int, int]]]] = [
    # raw 12 = stop sign (COCO id 13; id 12 unused) → trainId 11 → 12
    ("000000000139", (40, 30), 255, [((2, 2, 14, 12), 12, 12),
                                     ((20, 4, 36, 20), 95, 0),      # stuff → background
                                     ((5, 18, 15, 28), 0, 1)]),     # person
    ("000000000285", (30, 40), 181, [((3, 3, 13, 23), 89, 80),      # toothbrush, the last thing
                                     ((15, 20, 28, 38), 255, 0)]),  # unlabeled → background
    ("000000000632", (64, 48), 91, [((10, 10, 40, 30), 26, 25),     # raw 26 = backpack → trainId 24 → 25
                                    ((42, 5, 60, 40), 2, 3)]),      # car
]


def write_coco_stuff_fixture(root: str | Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Write 3 val images + raw stuffthingmaps under `root`; return {id: expected instanceTrainIds}."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    expected: dict[str, np.ndarray] = {}
    palette = [(220, 40, 40), (40, 200, 60), (50, 70, 220)]
    for sid, (w, h), bg, rects in _COCO_SCENES:
        raw = np.full((h, w), bg, dtype=np.uint8)
        exp = np.full((h, w), 0, dtype=np.uint8)  # every background value here (255, 181, 91) → 0
        for (x0, y0, x1, y1), r, e in rects:
            raw[y0:y1, x0:x1] = r
            exp[y0:y1, x0:x1] = e
        colours = [(rect, palette[j % 3]) for j, (rect, _, _) in enumerate(rects)]
        _save_jpeg(root / "images" / "val2017" / f"{sid}.jpg", _image(rng, w, h, colours))
        _save_l(root / "annotations" / "val2017" / f"{sid}.png", raw)
        expected[sid] = exp
    return expected


def _rle(mask: np.ndarray) -> dict[str, Any]:
    enc = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in enc["size"]], "counts": enc["counts"].decode("ascii")}


# (stem, (W, H), phase, [(rect, raw Detail id, label id)]) painted in this order (later wins)
_CONTEXT_SCENES: list[tuple[str, tuple[int, int], str, list[tuple[Rect, int, int]]]] = [
    ("2008_000002", (40, 30), "val", [((0, 0, 40, 12), 440, 56),       # wall (top band)
                                      ((8, 4, 20, 26), 284, 37),       # person over the wall: wins the overlap
                                      ((24, 14, 38, 28), 2, 1)]),      # aeroplane
    ("2008_000003", (30, 40), "val", [((0, 30, 30, 40), 458, 59),      # wood, the highest id
                                      ((5, 5, 20, 20), 25, 7)]),       # bird
    ("2008_000007", (64, 48), "val", []),                              # nothing annotated → all 0
    ("2008_000008", (40, 30), "train", [((0, 0, 10, 10), 284, 37)]),  # train only: must not enter val
]
_CONTEXT_CATEGORIES = {2: "aeroplane", 25: "bird", 284: "person", 440: "wall", 458: "wood"}


def write_context_fixture(root: str | Path, seed: int = 0, extra_category: int | None = None) -> dict[str, np.ndarray]:
    """Write VOC2010 JPEGs + a Detail-format trainval_merged.json under `root`/VOCdevkit/VOC2010.

    Returns {stem: expected label (60-class ids)} for the val images. `extra_category` adds an annotation
    with that raw id to the first image (e.g. 1, outside the 60) so a converter's check can be tested.
    """
    voc = Path(root) / "VOCdevkit" / "VOC2010"
    rng = np.random.default_rng(seed)
    images, annos, expected = [], [], {}
    palette = [(200, 200, 200), (230, 80, 30), (40, 60, 210)]
    ann_id = 1
    for k, (stem, (w, h), phase, rects) in enumerate(_CONTEXT_SCENES):
        image_id = int(stem.replace("_", ""))
        images.append({"image_id": image_id, "file_name": f"{stem}.jpg", "height": h, "width": w, "phase": phase})
        exp = np.zeros((h, w), dtype=np.uint8)
        for (x0, y0, x1, y1), raw_id, label in rects:
            m = np.zeros((h, w), dtype=np.uint8)
            m[y0:y1, x0:x1] = 1
            annos.append({"id": ann_id, "image_id": image_id, "category_id": raw_id, "segmentation": _rle(m),
                          "iscrowd": 0, "area": int(m.sum()), "bbox": [x0, y0, x1 - x0, y1 - y0], "parts": []})
            ann_id += 1
            exp[y0:y1, x0:x1] = label
        if extra_category is not None and k == 0:
            m = np.zeros((h, w), dtype=np.uint8)
            m[0:2, 0:2] = 1
            annos.append({"id": ann_id, "image_id": image_id, "category_id": extra_category, "segmentation": _rle(m),
                          "iscrowd": 0, "area": 4, "bbox": [0, 0, 2, 2], "parts": []})
            ann_id += 1
        colours = [(rect, palette[j % 3]) for j, (rect, _, _) in enumerate(rects)]
        _save_jpeg(voc / "JPEGImages" / f"{stem}.jpg", _image(rng, w, h, colours))
        if phase == "val":
            expected[stem] = exp
    cats = sorted(set(_CONTEXT_CATEGORIES) | ({extra_category} if extra_category is not None else set()))
    data = {
        "info": {"description": "carbench PASCAL-in-Detail fixture"},
        "images": images,
        "annos_segmentation": annos,
        "annos_occlusion": [],
        "annos_boundary": [],
        "parts": [],
        "categories": [{"category_id": c, "name": _CONTEXT_CATEGORIES.get(c, f"raw{c}"), "supercategory": "object",
                        "onlysemantic": 0, "parts": []} for c in cats],
    }
    (voc / "trainval_merged.json").write_text(json.dumps(data))
    return expected


def _poly(rect: Rect) -> list[float]:
    x0, y0, x1, y1 = rect
    return [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]


#: ann id → (image id, category id, polygons as rects). pycocotools fills a rect polygon (x0,y0)-(x1,y1)
#: on rows y0..y1−1 and columns x0..x1−1, so ann 101 covers 10×8 = 80 px and ann 102's two 10×10 squares
#: overlap on 5×5 px: 150 px covered exactly once ("exclusive"), 175 px in the union.
REFER_ANNS: dict[int, tuple[int, int, list[Rect]]] = {
    101: (9, 1, [(2, 2, 12, 10)]),
    102: (9, 3, [(0, 0, 10, 10), (5, 5, 15, 15)]),
    103: (25, 18, [(5, 10, 25, 30)]),
    104: (25, 18, [(0, 0, 5, 5)]),
    105: (25, 1, [(20, 0, 30, 5)]),
}
_REFER_IMAGES = {9: (40, 30), 25: (30, 40)}  # image id → (W, H)
_CATEGORIES = [{"id": 1, "name": "person", "supercategory": "person"},
               {"id": 3, "name": "car", "supercategory": "vehicle"},
               {"id": 18, "name": "dog", "supercategory": "animal"}]
#: (ref id, ann id, [(sent id, raw text)]) per split name; split names are per partition.
_REFS_UNC = [
    (10, 101, "val", [(100, "The MAN on the left"), (101, 'Guy "in" red/blue')]),
    (11, 102, "val", [(102, "the car")]),
    (12, 103, "testA", [(103, "left dog"), (104, "dog")]),
    (13, 104, "testB", [(105, "small thing")]),
    (14, 105, "train", [(106, "corner")]),
]
_SPLIT_RENAME = {"umd": {"testA": "test", "testB": "test"}, "google": {"testA": "val", "testB": "train"}}
_PARTITIONS = {"refcoco": ("unc",), "refcoco+": ("unc",), "refcocog": ("umd", "google")}


def _refs(split_by: str) -> list[dict[str, Any]]:
    out = []
    for ref_id, ann_id, split, sents in _REFS_UNC:
        image_id, cat, _ = REFER_ANNS[ann_id]
        out.append({
            "ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "category_id": cat,
            "split": _SPLIT_RENAME.get(split_by, {}).get(split, split),
            "sent_ids": [s for s, _ in sents],
            "sentences": [{"sent_id": s, "raw": raw, "sent": raw.lower(), "tokens": raw.lower().split()}
                          for s, raw in sents],
            "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
        })
    return out


def write_refer_fixture(root: str | Path, seed: int = 0) -> Path:
    """Write the REFER tree for refcoco, refcoco+ (unc) and refcocog (umd, google) under `root`; return it.

    Splits per partition: unc val (2 refs, 3 expressions) / testA (1 ref, 2) / testB (1, 1) / train (1, 1);
    umd: testA/testB refs become 'test' (2 refs, 3 expressions); google: testA → val, testB → train.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    images = []
    for image_id, (w, h) in _REFER_IMAGES.items():
        name = f"COCO_train2014_{image_id:012d}.jpg"
        rects = [(r[0], (60 + 50 * k, 200 - 40 * k, 90)) for k, (iid, _, r) in enumerate(REFER_ANNS.values())
                 if iid == image_id]
        _save_jpeg(root / "images" / "mscoco" / "images" / "train2014" / name, _image(rng, w, h, rects))
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
    anns = [{"id": a, "image_id": iid, "category_id": cat, "segmentation": [_poly(r) for r in rects],
             "area": float(sum((r[2] - r[0]) * (r[3] - r[1]) for r in rects)), "iscrowd": 0,
             "bbox": [float(min(r[0] for r in rects)), float(min(r[1] for r in rects)),
                      float(max(r[2] for r in rects) - min(r[0] for r in rects)),
                      float(max(r[3] for r in rects) - min(r[1] for r in rects))]}
            for a, (iid, cat, rects) in REFER_ANNS.items()]
    instances = {"images": images, "annotations": anns, "categories": _CATEGORIES}
    for dataset, partitions in _PARTITIONS.items():
        d = root / dataset
        d.mkdir(parents=True, exist_ok=True)
        (d / "instances.json").write_text(json.dumps(instances))
        for split_by in partitions:
            with open(d / f"refs({split_by}).p", "wb") as fh:
                pickle.dump(_refs(split_by), fh, protocol=2)  # the released pickles are Python-2 era
    return root
