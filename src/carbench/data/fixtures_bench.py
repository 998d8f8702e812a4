"""Tiny ADE-150, ADE-847, PC-459, COCO-Stuff-171, Cityscapes and gRefCOCO datasets in their exact on-disk bytes.

Each writer puts a few small images with flat rectangles on noise where the real benchmark keeps
them, with labels in the real encoding, and returns what the adapter must produce, written out by
hand (never through the adapter's own table):

- `write_ade150_fixture`: ``ADEChallengeData2016`` PNGs with 0 (unlabeled) and ids 1..150 — checks
  the k → k−1 shift and 0 → ignore;
- `write_ade847_fixture`: detectron2's 16-bit TIFFs with ids above 255 (300, 846) and 65,535;
- `write_context459_fixture`: Pascal Context ``trainval/*.mat`` files (``LabelMap`` 0..459) plus the
  VOC2010 images and ``ImageSets/Main`` lists, for the converter;
- `write_cityscapes_fixture`: ``leftImg8bit`` + ``*_gtFine_labelIds.png`` with ids the official table
  maps to trainIds and ids it ignores;
- `write_grefcoco_fixture`: ``grefs(unc).json`` + ``instances.json`` with a one-target, a two-target and
  a no-target expression in val.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from carbench.data.convert_labels import write_png_l, write_tiff_u16
from carbench.data.fixtures_more import _image, _save_jpeg

__all__ = [
    "write_ade150_fixture", "write_ade847_fixture", "write_cityscapes_fixture", "write_context459_fixture",
    "write_grefcoco_fixture",
]

Rect = tuple[int, int, int, int]
_COLOURS = [(220, 40, 40), (40, 200, 60), (50, 70, 220), (230, 200, 30)]


def _scene(rng: np.random.Generator, w: int, h: int, bg: int, rects: list[tuple[Rect, int]],
           dtype: type = np.uint8) -> tuple[np.ndarray, np.ndarray]:
    """(image, stored label) for a background value and rectangles painted in order."""
    label = np.full((h, w), bg, dtype=dtype)
    for (x0, y0, x1, y1), v in rects:
        label[y0:y1, x0:x1] = v
    img = _image(rng, w, h, [(r, _COLOURS[k % 4]) for k, (r, _) in enumerate(rects)])
    return img, label


# ADE-150: (stem, (W, H), stored background, [(rect, stored id)]) → expected = stored − 1, 0 → 255
_ADE150 = [
    ("ADE_val_00000001", (40, 30), 1, [((2, 2, 14, 12), 13), ((20, 4, 36, 20), 0), ((5, 18, 15, 28), 150)]),
    ("ADE_val_00000002", (30, 40), 3, [((3, 3, 13, 23), 21)]),
]


def write_ade150_fixture(root: str | Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Write ``ADEChallengeData2016`` (2 validation images + 1 training image); return {stem: expected target}."""
    root, rng = Path(root), np.random.default_rng(seed)
    expected: dict[str, np.ndarray] = {}
    for stem, (w, h), bg, rects in _ADE150:
        img, lab = _scene(rng, w, h, bg, rects)
        _save_jpeg(root / "images" / "validation" / f"{stem}.jpg", img)
        write_png_l(root / "annotations" / "validation" / f"{stem}.png", lab)
        exp = lab.astype(np.int64) - 1
        exp[lab == 0] = 255
        expected[stem] = exp
    img, lab = _scene(rng, 24, 24, 2, [])
    _save_jpeg(root / "images" / "training" / "ADE_train_00000001.jpg", img)
    write_png_l(root / "annotations" / "training" / "ADE_train_00000001.png", lab)
    return expected


# ADE-847: stored ids are the class ids; 65535 = unlabeled
_ADE847 = [
    ("ADE_val_00000001", (40, 30), 0, [((2, 2, 14, 12), 300), ((20, 4, 36, 20), 65535), ((5, 18, 15, 28), 846)]),
    ("ADE_val_00000002", (30, 40), 255, [((3, 3, 13, 23), 12)]),
]


def write_ade847_fixture(root: str | Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Write ``images_detectron2`` / ``annotations_detectron2`` (16-bit TIFF); return {stem: expected target}."""
    root, rng = Path(root), np.random.default_rng(seed)
    expected: dict[str, np.ndarray] = {}
    for stem, (w, h), bg, rects in _ADE847:
        img, lab = _scene(rng, w, h, bg, rects, dtype=np.uint16)
        _save_jpeg(root / "images_detectron2" / "validation" / f"{stem}.jpg", img)
        write_tiff_u16(root / "annotations_detectron2" / "validation" / f"{stem}.tif", lab)
        expected[stem] = lab.astype(np.int64)  # ids stay, 65535 is the ignore index
    return expected


# PC-459 LabelMap: 0 = unlabeled, k = labels.txt class k (expected stored/target id k − 1)
_CTX459 = [
    ("2008_000002", (40, 30), 0, [((2, 2, 14, 12), 284), ((20, 4, 36, 20), 459), ((5, 18, 15, 28), 1)]),
    ("2008_000003", (30, 40), 440, [((3, 3, 13, 23), 260)]),
    ("2008_000007", (32, 24), 44, [((1, 1, 9, 9), 0)]),
]


def _write_mat(path: Path, label_map: np.ndarray) -> None:
    from scipy.io import (
        savemat,  # the real files are MATLAB v5; only this fixture and its converter need scipy
    )

    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), {"LabelMap": label_map.astype(np.uint16)})


def write_context459_fixture(root: str | Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Write ``VOCdevkit/VOC2010`` images, ``trainval/*.mat`` and ``ImageSets/Main/{train,val}.txt``.

    The first two scenes are val, the third train. Returns {id: expected 16-bit stored label}.
    """
    voc, rng = Path(root) / "VOCdevkit" / "VOC2010", np.random.default_rng(seed)
    expected: dict[str, np.ndarray] = {}
    for sid, (w, h), bg, rects in _CTX459:
        img, lab = _scene(rng, w, h, bg, rects, dtype=np.uint16)
        _save_jpeg(voc / "JPEGImages" / f"{sid}.jpg", img)
        _write_mat(voc / "trainval" / f"{sid}.mat", lab)
        exp = lab.astype(np.int64) - 1
        exp[lab == 0] = 65535
        expected[sid] = exp
    (voc / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (voc / "ImageSets" / "Main" / "val.txt").write_text("2008_000002\n2008_000003\n")
    (voc / "ImageSets" / "Main" / "train.txt").write_text("2008_000007\n")
    return expected


# Cityscapes labelIds → expected trainIds: 7 road → 0, 26 car → 13, 24 person → 11, 33 bicycle → 18,
# 1 ego vehicle → 255, 9 parking → 255, 23 sky → 10
_CITY = [
    ("frankfurt", "frankfurt_000000_000294", (64, 32), 7, [((2, 2, 20, 12), 26), ((30, 4, 50, 20), 1),
                                                           ((5, 18, 15, 30), 24)], {7: 0, 26: 13, 1: 255, 24: 11}),
    ("lindau", "lindau_000000_000019", (48, 24), 23, [((3, 3, 13, 20), 33), ((20, 10, 40, 22), 9)],
     {23: 10, 33: 18, 9: 255}),
]


def write_cityscapes_fixture(root: str | Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Write ``leftImg8bit/val`` PNGs and ``gtFine/val`` ``*_gtFine_labelIds.png``; return {id: expected trainIds}."""
    root, rng = Path(root), np.random.default_rng(seed)
    expected: dict[str, np.ndarray] = {}
    for city, stem, (w, h), bg, rects, table in _CITY:
        img, lab = _scene(rng, w, h, bg, rects)
        path = root / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, "RGB").save(path, format="PNG")
        write_png_l(root / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png", lab)
        exp = np.zeros_like(lab, dtype=np.int64)
        for raw, train_id in table.items():
            exp[lab == raw] = train_id
        expected[f"{city}/{stem}"] = exp
    return expected


def _poly(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def write_grefcoco_fixture(root: str | Path, seed: int = 0) -> dict[str, dict]:
    """Write a gRefCOCO release in miniature; return {sample id: {"area": GT pixels, "no_target": bool}}.

    val: ref 1 (one target, two sentences), ref 2 (two targets, one sentence), ref 3 (no target,
    ``ann_id [-1]``, one sentence); testA: ref 4; train: ref 5 (must not appear in val).
    """
    root, rng = Path(root), np.random.default_rng(seed)
    img_dir = root / "images" / "mscoco" / "images" / "train2014"
    images = []
    for iid, (w, h) in ((9, (40, 30)), (25, (32, 32))):
        name = f"COCO_train2014_{iid:012d}.jpg"
        _save_jpeg(img_dir / name, _image(rng, w, h, [((2, 2, 12, 12), _COLOURS[0])]))
        images.append({"id": iid, "file_name": name, "height": h, "width": w})
    anns = [
        {"id": 101, "image_id": 9, "category_id": 1, "segmentation": _poly(2, 2, 12, 12), "iscrowd": 0},
        {"id": 102, "image_id": 9, "category_id": 1, "segmentation": _poly(20, 5, 30, 25), "iscrowd": 0},
        {"id": 103, "image_id": 25, "category_id": 18, "segmentation": _poly(4, 4, 20, 12), "iscrowd": 0},
    ]

    def ref(rid: int, image_id: int, ann_ids: list[int], split: str, sents: list[str]) -> dict:
        return {"ref_id": rid, "image_id": image_id, "ann_id": ann_ids, "category_id": [1], "split": split,
                "no_target": ann_ids == [-1], "sent_ids": [rid * 10 + k for k in range(len(sents))],
                "sentences": [{"sent_id": rid * 10 + k, "raw": s, "sent": s.lower(), "tokens": s.lower().split()}
                              for k, s in enumerate(sents)]}

    refs = [
        ref(1, 9, [101], "val", ["The LEFT person", "man on the left"]),
        ref(2, 9, [101, 102], "val", ["both people"]),
        ref(3, 25, [-1], "val", ["the giraffe"]),
        ref(4, 25, [103], "testA", ["the dog"]),
        ref(5, 9, [102], "train", ["right one"]),
    ]
    folder = root / "grefcoco"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "grefs(unc).json").write_text(json.dumps(refs))
    (folder / "instances.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]}))
    return {
        "ref1_sent10": {"area": 100, "no_target": False}, "ref1_sent11": {"area": 100, "no_target": False},
        "ref2_sent20": {"area": 300, "no_target": False}, "ref3_sent30": {"area": 0, "no_target": True},
    }
