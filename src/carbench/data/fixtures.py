"""Small Pascal VOC 2012 datasets in the real on-disk format, generated deterministically from a seed.

Tests, the bundled default run and benchmarks read these through the *real* VOC adapter, so the
files use the exact devkit layout and encodings (docs/datasets.md §12): JPEGs written by Pillow, palette
("P") label PNGs carrying the full VOC colour map, split files in ImageSets/Segmentation with an
extra train-only id (proves split filtering), a void (255) band around one object and one image
with only background + void.

Each image shows 2–3 classes as filled ellipses/rectangles in flat, saturated colours with evenly
spaced hues on a dull noisy background, so a segmenter can actually separate them.

CLI: ``python -m carbench.data.fixtures OUT_DIR [--num-val N] [--size WxH ...] [--seed S]``.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from carbench.data.voc import IMAGE_DIR, LABEL_DIR, SPLIT_DIR
from carbench.data.voc_format import write_palette_png
from carbench.types import IGNORE_INDEX

__all__ = ["DEFAULT_SIZES", "fixture_ids", "write_voc_fixture", "ensure_voc_fixture", "main"]

#: (W, H) of successive images, cycled: landscape, portrait and a larger one (exercises resize/aspect).
DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((40, 30), (30, 40), (64, 48))
TRAIN_ID = "2007_000032"  # the train-only id (real VOC train id; sorts before the val ids)
MARKER = "carbench_fixture.json"
MIN_SIDE = 16
_FORMAT_VERSION = 1  # bump when the generated content changes, so cached fixtures are regenerated


def fixture_ids(num_val: int) -> list[str]:
    """The val ids, VOC style: 2007_000033, 2007_000042, … (ascending like the real val.txt)."""
    return [f"2007_{33 + 9 * i:06d}" for i in range(num_val)]


def _distinct_colours(rng: np.random.Generator, n: int) -> list[tuple[int, int, int]]:
    """n flat, saturated colours with evenly spaced hues (random offset): always far apart in one image."""
    offset = float(rng.random())
    out = []
    for j in range(n):
        r, g, b = colorsys.hsv_to_rgb((offset + j / n) % 1.0, 0.85, 0.95)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def _shape_mask(rng: np.random.Generator, w: int, h: int, kind: str) -> np.ndarray:
    """Boolean H×W mask of one filled ellipse or rectangle covering roughly 25–45 % of each side."""
    sw = int(rng.integers(max(6, w * 25 // 100), max(7, w * 45 // 100) + 1))
    sh = int(rng.integers(max(6, h * 25 // 100), max(7, h * 45 // 100) + 1))
    x0 = int(rng.integers(1, w - sw))
    y0 = int(rng.integers(1, h - sh))
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    box = (x0, y0, x0 + sw - 1, y0 + sh - 1)
    if kind == "ellipse":
        draw.ellipse(box, fill=1)
    else:
        draw.rectangle(box, fill=1)
    return np.array(canvas, dtype=bool)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3×3 binary dilation in numpy (no scipy needed for a 1-px ring)."""
    p = np.pad(mask, 1)
    h, w = mask.shape
    return np.logical_or.reduce([p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)])


def _erode(mask: np.ndarray) -> np.ndarray:
    return ~_dilate(~mask)


def _make_scene(rng: np.random.Generator, w: int, h: int, pattern: int) -> tuple[np.ndarray, np.ndarray]:
    """One (image H×W×3 uint8, label H×W uint8) pair.

    pattern 0: two classes, a 2-px void band straddling the last-drawn object's boundary;
    pattern 1: background + a void (255) "difficult" region only;
    pattern 2: three classes.
    """
    base = np.array([105, 115, 95], dtype=np.float64) + rng.normal(0, 6, size=3)
    image = np.clip(base + rng.normal(0, 12, size=(h, w, 3)), 0, 255)
    label = np.zeros((h, w), dtype=np.uint8)
    if pattern == 1:
        m = _shape_mask(rng, w, h, "ellipse")
        label[m] = IGNORE_INDEX
        image[m] = (150, 140, 150)  # something ambiguous was there
        return image.astype(np.uint8), label
    n = 2 if pattern == 0 else 3
    classes = rng.choice(np.arange(1, 21), size=n, replace=False)
    colours = _distinct_colours(rng, n)
    for j, k in enumerate(classes):
        m = _shape_mask(rng, w, h, "ellipse" if j % 2 == 0 else "rectangle")
        label[m] = k
        image[m] = colours[j]
    if pattern == 0:
        last = label == classes[-1]  # drawn last, so fully visible: the band always exists
        outside = _dilate(last) & ~last
        inside = last & ~_erode(last)
        label[(outside & (label == 0)) | inside] = IGNORE_INDEX
    return image.astype(np.uint8), label


def _write_voc2012(voc_dir: Path, num_val: int, seed: int, sizes: Sequence[tuple[int, int]]) -> None:
    """Write the fixture into `voc_dir` (the VOC2012 folder). Image i depends only on (seed, i)."""
    if num_val < 1:
        raise ValueError(f"num_val must be ≥ 1, got {num_val}")
    sizes = [(int(w), int(h)) for w, h in sizes]
    if not sizes or any(min(s) < MIN_SIDE for s in sizes):
        raise ValueError(f"sizes must be a non-empty list of (W, H) with both ≥ {MIN_SIDE}, got {sizes}")
    val_ids = fixture_ids(num_val)
    items = [(i, sid, i % 3) for i, sid in enumerate(val_ids)] + [(num_val, TRAIN_ID, 0)]
    for d in (IMAGE_DIR, LABEL_DIR, SPLIT_DIR):
        (voc_dir / d).mkdir(parents=True, exist_ok=True)
    for i, sid, pattern in items:
        rng = np.random.default_rng([seed, i])
        w, h = sizes[i % len(sizes)]
        image, label = _make_scene(rng, w, h, pattern)
        Image.fromarray(image, "RGB").save(voc_dir / IMAGE_DIR / f"{sid}.jpg", format="JPEG", quality=95)
        write_palette_png(voc_dir / LABEL_DIR / f"{sid}.png", label)
    split_dir = voc_dir / SPLIT_DIR
    (split_dir / "val.txt").write_text("".join(f"{i}\n" for i in val_ids))
    (split_dir / "train.txt").write_text(f"{TRAIN_ID}\n")
    (split_dir / "trainval.txt").write_text("".join(f"{i}\n" for i in sorted([TRAIN_ID, *val_ids])))


def write_voc_fixture(
    root: str | os.PathLike[str],
    num_val: int = 3,
    seed: int = 0,
    sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
) -> Path:
    """Write a small VOC2012-format dataset under `root`/VOCdevkit/VOC2012 and return that folder.

    Args:
        root: the data root (what CARBENCH_DATASETS points at).
        num_val: number of val images (ids from `fixture_ids`); train.txt gets one more id.
        seed: all content is a pure function of (seed, image index, size).
        sizes: (W, H) per image, cycled; e.g. ``[(500, 375)]`` for VOC-like resolution.
    """
    voc_dir = Path(root) / "VOCdevkit" / "VOC2012"
    _write_voc2012(voc_dir, num_val, seed, sizes)
    return voc_dir


def _fixture_spec(num_val: int, seed: int, sizes: Sequence[tuple[int, int]]) -> dict:
    return {"version": _FORMAT_VERSION, "num_val": num_val, "seed": seed, "sizes": [list(s) for s in sizes]}


def ensure_voc_fixture(
    voc_dir: str | os.PathLike[str],
    num_val: int = 3,
    seed: int = 0,
    sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
) -> Path:
    """Generate the fixture into `voc_dir` (the VOC2012 folder itself) unless an identical one is there.

    Written to a temporary sibling and renamed into place, so several ranks (torchrun) or runs
    starting together never read a half-written dataset. Only folders carrying our marker are
    ever deleted: a real dataset at that path is an error, not something to overwrite.
    """
    voc_dir = Path(voc_dir)
    spec = _fixture_spec(int(num_val), int(seed), [(int(w), int(h)) for w, h in sizes])
    marker = voc_dir / MARKER
    if marker.is_file():
        if json.loads(marker.read_text()) == spec:
            return voc_dir
        shutil.rmtree(voc_dir)  # ours (marker present) but made with other parameters
    elif voc_dir.exists():
        if voc_dir.is_dir() and not any(voc_dir.iterdir()):
            voc_dir.rmdir()
        else:
            raise FileExistsError(
                f"{voc_dir} exists but is not a carbench fixture (no {MARKER}); refusing to overwrite it. "
                f"Point dataset.root elsewhere, or use dataset=voc to read a real VOC2012 folder."
            )
    voc_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = voc_dir.parent / f".{voc_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    _write_voc2012(tmp, spec["num_val"], spec["seed"], [tuple(s) for s in spec["sizes"]])
    (tmp / MARKER).write_text(json.dumps(spec))
    try:
        os.rename(tmp, voc_dir)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        if not marker.is_file() or json.loads(marker.read_text()) != spec:
            raise
    return voc_dir


def _parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected WxH like 500x375, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def main(argv: Sequence[str] | None = None) -> Path:
    """CLI entry point; prints and returns the VOC2012 folder it wrote."""
    parser = argparse.ArgumentParser(
        prog="python -m carbench.data.fixtures",
        description="Write a small Pascal VOC 2012-format segmentation dataset (OUT_DIR/VOCdevkit/VOC2012).",
    )
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="data root to write into")
    parser.add_argument("--num-val", type=int, default=3, help="number of val images (default 3)")
    parser.add_argument(
        "--size", type=_parse_size, action="append", metavar="WxH",
        help="image size; repeat to cycle several (default 40x30, 30x40, 64x48)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    voc_dir = write_voc_fixture(args.out_dir, args.num_val, args.seed, args.size or DEFAULT_SIZES)
    print(voc_dir)
    return voc_dir


if __name__ == "__main__":
    main()
