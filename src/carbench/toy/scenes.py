"""Procedural toy scenes: coloured shapes on textured backgrounds, with exact masks and captions.

The toy world is what lets CaR's quality be measured for real without downloading anything: the
tiny CLIP of `carbench.toy.model` is trained on these scenes and the toy benchmark evaluates on
them.

A scene is a `size`×`size` RGB image with 1-3 objects of *distinct* classes (`CLASS_NAMES`,
label ids 1..8) drawn one after the other (later objects on top, partial overlaps allowed) on one
of `BACKGROUND_KINDS` (colour gradient, stripes, blurred blobs, low-frequency noise, checkers),
plus per-pixel sensor noise. Objects are painted with a flat colour from `COLOR_NAMES` plus a
soft shading ramp; the label map marks exactly the pixels where each object stayed visible (no
anti-aliasing, so image and mask agree pixel for pixel). Every object keeps at least
`MIN_VISIBLE` of its own area visible, otherwise it is placed again. Ring has a hole that shows
the background (label 0 there).

Captions name the classes present ("a photo of a star and a ring"); about a third of them also
name colours ("a red star and a blue ring") and a few name the background ("... on stripes").
Mostly colour-free captions make a contrastively trained model learn shape rather than colour.

Determinism: scene i of split s is `make_scene(np.random.default_rng([seed, SPLIT_OFFSETS[s], i]),
size)`, so each (seed, split, index) has its own independent stream; different split offsets
give disjoint streams (train / tune / val never share a scene). The training script draws from
the *train* stream (index 0, 1, 2, …), so the train split on disk is exactly the first n scenes
the model sees, and tune / val are never seen in training.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

__all__ = [
    "CLASS_NAMES",
    "COLOR_NAMES",
    "COLORS",
    "CLASS_COLORS",
    "COLOR_MODES",
    "BACKGROUND_KINDS",
    "SPLIT_OFFSETS",
    "MIN_VISIBLE",
    "SceneObject",
    "Scene",
    "scene_rng",
    "make_scene",
    "make_background",
    "shape_mask",
    "caption_for",
    "join_phrases",
    "write_toy_split",
    "split_is_complete",
]

#: Shape classes; label id of CLASS_NAMES[k] is k + 1 (0 = background).
CLASS_NAMES: list[str] = ["circle", "square", "triangle", "star", "ring", "cross", "heart", "hexagon"]

#: Object colours (RGB). Backgrounds draw from the whole colour space, so colour alone never
#: separates object from background.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 215, 30),
    "orange": (245, 130, 20),
    "purple": (140, 40, 180),
    "white": (240, 240, 240),
    "pink": (245, 120, 190),
}
COLOR_NAMES: list[str] = list(COLORS)

#: Each class's own two colours in the ``by_class`` world: a ring, so every colour belongs to
#: exactly two classes and the shape still has to tell those two apart. Real classes carry local
#: evidence (fur, wheels, leaves) in every patch; a flat shape of any colour carries it only on
#: its outline, so the inside of an object gives a patch-level classifier nothing to go on.
CLASS_COLORS: dict[str, tuple[str, str]] = {
    name: (COLOR_NAMES[k], COLOR_NAMES[(k + 1) % len(COLOR_NAMES)]) for k, name in enumerate(CLASS_NAMES)
}

#: How an object's colour is drawn: ``any`` (any of COLOR_NAMES, whatever the class: the world the
#: toy CLIP is pre-trained on) or ``by_class`` (one of the class's CLASS_COLORS).
COLOR_MODES: tuple[str, ...] = ("any", "by_class")

#: Background textures; these words are also the model's background vocabulary.
BACKGROUND_KINDS: list[str] = ["gradient", "stripes", "blobs", "noise", "checkers"]

#: Stream offset of each split (see module docstring).
SPLIT_OFFSETS: dict[str, int] = {"train": 0, "tune": 1, "val": 2}

#: Minimum visible fraction of each object's own area after later objects are drawn on top.
MIN_VISIBLE = 0.5

_FORMAT_VERSION = 1  # bump when the generator changes: written splits are regenerated


@dataclass
class SceneObject:
    class_id: int  # 1..len(CLASS_NAMES)
    name: str
    color: str
    center: tuple[float, float]  # (x, y) pixels
    radius: float  # pixels (circumradius of the shape)
    angle: float  # radians
    visible_pixels: int = 0


@dataclass
class Scene:
    image: np.ndarray  # H×W×3 uint8 RGB
    label: np.ndarray  # H×W uint8, 0 = background, k = CLASS_NAMES[k-1]
    objects: list[SceneObject] = field(default_factory=list)
    caption: str = ""
    background: str = ""  # one of BACKGROUND_KINDS

    @property
    def class_ids(self) -> list[int]:
        return sorted({o.class_id for o in self.objects})


def check_color_mode(colors: str) -> str:
    """`colors` if it is one of COLOR_MODES, else a ValueError naming the valid ones."""
    if colors not in COLOR_MODES:
        raise ValueError(f"unknown toy colour mode {colors!r}; valid: {', '.join(COLOR_MODES)}")
    return colors


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of scene `index` of `split` (see module docstring)."""
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLIT_OFFSETS)}")
    return np.random.default_rng([int(seed), SPLIT_OFFSETS[split], int(index)])


# ----------------------------------------------------------------------------- backgrounds
def _random_color(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3)


def make_background(rng: np.random.Generator, size: int, kind: str | None = None) -> tuple[np.ndarray, str]:
    """A float32 size×size×3 background in [0, 255] of the given (or a random) kind."""
    kind = kind or BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == "gradient":
        a = rng.uniform(0, 2 * math.pi)
        t = (np.cos(a) * (xx - 0.5) + np.sin(a) * (yy - 0.5)) * rng.uniform(0.8, 1.6) + 0.5
        t = np.clip(t, 0, 1)[..., None]
        bg = (1 - t) * _random_color(rng) + t * _random_color(rng)
    elif kind == "stripes":
        a = rng.uniform(0, math.pi)
        period = rng.uniform(0.08, 0.3)
        phase = (np.cos(a) * xx + np.sin(a) * yy) / period + rng.uniform(0, 1)
        if rng.random() < 0.5:
            t = (np.floor(phase) % 2)[..., None]  # hard stripes
        else:
            t = (0.5 + 0.5 * np.sin(2 * math.pi * phase))[..., None]
        bg = (1 - t) * _random_color(rng) + t * _random_color(rng)
    elif kind == "blobs":
        bg = np.broadcast_to(_random_color(rng), (size, size, 3)).astype(np.float32).copy()
        for _ in range(int(rng.integers(3, 8))):
            cx, cy = rng.uniform(0, 1, 2)
            s = rng.uniform(0.06, 0.25)
            w = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))[..., None]
            bg = (1 - w) * bg + w * _random_color(rng)
    elif kind == "noise":
        cells = int(rng.integers(3, 9))
        low = rng.uniform(0, 255, (cells, cells, 3)).astype(np.float32)
        bg = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    elif kind == "checkers":
        n = rng.uniform(3, 9)
        a = rng.uniform(0, math.pi / 2)
        u = (np.cos(a) * xx + np.sin(a) * yy) * n
        v = (-np.sin(a) * xx + np.cos(a) * yy) * n
        t = ((np.floor(u) + np.floor(v)) % 2)[..., None]
        bg = (1 - t) * _random_color(rng) + t * _random_color(rng)
    else:
        raise ValueError(f"unknown background kind {kind!r}; valid: {', '.join(BACKGROUND_KINDS)}")
    # desaturate a little at random so backgrounds are often (not always) duller than objects
    g = bg.mean(-1, keepdims=True)
    bg = g + (bg - g) * rng.uniform(0.3, 1.0)
    return np.clip(bg, 0, 255).astype(np.float32), kind


# ----------------------------------------------------------------------------- shapes
def _regular(n: int, r: float, angle: float, cx: float, cy: float, start: float = -math.pi / 2) -> np.ndarray:
    t = start + angle + np.arange(n) * 2 * math.pi / n
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def _rotate(pts: np.ndarray, angle: float, cx: float, cy: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    x, y = pts[:, 0], pts[:, 1]
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], 1)


def _fill(mask: np.ndarray, pts: np.ndarray, shift: int = 4) -> None:
    """Fill a polygon with sub-pixel vertex precision (no anti-aliasing: the mask stays binary)."""
    p = np.round(pts * (1 << shift)).astype(np.int32)
    cv2.fillPoly(mask, [p], 1, lineType=cv2.LINE_8, shift=shift)


def shape_mask(name: str, size: int, center: tuple[float, float], radius: float, angle: float) -> np.ndarray:
    """Binary uint8 size×size mask of one shape; `radius` is its circumradius in pixels."""
    cx, cy = center
    r = radius
    m = np.zeros((size, size), np.uint8)
    if name == "circle":
        _fill(m, _regular(64, r * 0.9, 0.0, cx, cy))
    elif name == "square":
        _fill(m, _regular(4, r, angle + math.pi / 4, cx, cy))
    elif name == "triangle":
        _fill(m, _regular(3, r, angle, cx, cy))
    elif name == "star":
        outer = _regular(5, r, angle, cx, cy)
        inner = _regular(5, r * 0.45, angle + math.pi / 5, cx, cy)
        pts = np.empty((10, 2))
        pts[0::2], pts[1::2] = outer, inner
        _fill(m, pts)
    elif name == "ring":
        _fill(m, _regular(64, r * 0.95, 0.0, cx, cy))
        hole = np.zeros_like(m)
        _fill(hole, _regular(64, r * 0.5, 0.0, cx, cy))
        m[hole > 0] = 0
    elif name == "cross":
        a, b = r * 0.95, r * 0.33
        pts = np.array(
            [
                [-b, -a],
                [b, -a],
                [b, -b],
                [a, -b],
                [a, b],
                [b, b],
                [b, a],
                [-b, a],
                [-b, b],
                [-a, b],
                [-a, -b],
                [-b, -b],
            ]
        )
        _fill(m, _rotate(pts, angle, cx, cy))
    elif name == "heart":
        t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        pts = np.stack([x, y + 2.5], 1) * (r / 17.0)
        _fill(m, _rotate(pts, angle * 0.3, cx, cy))  # hearts stay roughly upright
    elif name == "hexagon":
        _fill(m, _regular(6, r, angle, cx, cy))
    else:
        raise ValueError(f"unknown shape {name!r}; valid: {', '.join(CLASS_NAMES)}")
    return m


# ----------------------------------------------------------------------------- captions
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def join_phrases(phrases: list[str]) -> str:
    """["a star"] → "a star"; two → "x and y"; three → "x, y and z"."""
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


_CAPTION_TEMPLATES = [
    "a photo of {}.",
    "{}.",
    "a picture of {}.",
    "an image of {}.",
    "there is {} in the scene.",
]


def caption_for(objects: list[SceneObject], background: str, rng: np.random.Generator) -> str:
    """Caption naming every object (in random order), colours ~30 %, background ~15 %."""
    order = rng.permutation(len(objects))
    with_color = rng.random() < 0.3
    phrases = []
    for k in order:
        o = objects[int(k)]
        words = f"{o.color} {o.name}" if with_color else o.name
        phrases.append(f"{_article(words)} {words}")
    body = join_phrases(phrases)
    if rng.random() < 0.15:
        body = f"{body} on {background}"
    return _CAPTION_TEMPLATES[int(rng.integers(len(_CAPTION_TEMPLATES)))].format(body)


# ----------------------------------------------------------------------------- scenes
def make_scene(
    rng: np.random.Generator, size: int = 96, n_objects: int | None = None, colors: str = "any"
) -> Scene:
    """One random scene (see module docstring). `n_objects` forces the count (0 = background only);
    `colors` is one of COLOR_MODES."""
    if size < 16:
        raise ValueError(f"scene size must be ≥ 16 px, got {size}")
    check_color_mode(colors)
    bg, kind = make_background(rng, size)
    n = int(rng.integers(1, 4)) if n_objects is None else int(n_objects)
    if not 0 <= n <= len(CLASS_NAMES):
        raise ValueError(f"n_objects must lie in [0, {len(CLASS_NAMES)}], got {n}")
    classes = rng.choice(len(CLASS_NAMES), size=n, replace=False) + 1
    img = bg
    label = np.zeros((size, size), np.uint8)
    placed: list[tuple[SceneObject, np.ndarray]] = []
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for cid in classes:
        name = CLASS_NAMES[int(cid) - 1]
        if colors == "by_class":
            color = CLASS_COLORS[name][int(rng.integers(2))]
        else:
            color = COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))]
        obj = None
        for _ in range(20):
            r = rng.uniform(0.12, 0.24) * size
            cx, cy = rng.uniform(r * 0.8, size - r * 0.8, 2)
            ang = float(rng.uniform(0, 2 * math.pi))
            m = shape_mask(name, size, (cx, cy), r, ang)
            area = int(m.sum())
            if area == 0:
                continue
            # would this object hide too much of an earlier one?
            ok = all(
                ((pm > 0) & (m == 0)).sum() >= MIN_VISIBLE * max(1, int(po.visible_pixels))
                for po, pm in placed
            )
            if ok:
                obj = SceneObject(int(cid), name, color, (float(cx), float(cy)), float(r), ang, area)
                break
        if obj is None:
            continue
        # update earlier objects' visible masks
        placed = [(po, (pm > 0) & (m == 0)) for po, pm in placed]
        placed.append((obj, m > 0))
        # paint: flat colour with a soft shading ramp and slight jitter
        base = np.array(COLORS[color], np.float32) + rng.normal(0, 12, 3)
        a = rng.uniform(0, 2 * math.pi)
        ramp = ((np.cos(a) * (xx - obj.center[0]) + np.sin(a) * (yy - obj.center[1])) / max(obj.radius, 1.0))[
            ..., None
        ]
        shade = base * (1.0 + 0.18 * ramp)
        img = np.where(m[..., None] > 0, shade, img)
    objects = []
    for po, pm in placed:
        po.visible_pixels = int(pm.sum())
        label[pm] = po.class_id
        objects.append(po)
    # sensor noise + occasional mild blur over the whole image (mask unaffected)
    img = img + rng.normal(0, rng.uniform(2, 14), img.shape)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img.astype(np.float32), (3, 3), 0)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    caption = caption_for(objects, kind, rng) if objects else f"a photo of {kind}."
    return Scene(image=image, label=label, objects=objects, caption=caption, background=kind)


# ----------------------------------------------------------------------------- VOC layout
def _ids(split: str, n: int) -> list[str]:
    return [f"{split}_{i:05d}" for i in range(n)]


def split_is_complete(root: str | Path, split: str, n: int, seed: int, size: int, colors: str = "any") -> bool:
    """True iff `root` holds exactly this split (same n, seed, size, colour mode, generator version)."""
    root = Path(root)
    meta_path = root / f"toy_{split}.json"
    list_path = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    cap_path = root / f"captions_{split}.json"
    if not (meta_path.is_file() and list_path.is_file() and cap_path.is_file()):
        return False
    try:
        meta = json.loads(meta_path.read_text())
        caps = json.loads(cap_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    want = {"split": split, "n": n, "seed": seed, "size": size, "version": _FORMAT_VERSION}
    if any(meta.get(k) != v for k, v in want.items()) or meta.get("colors", "any") != colors:
        return False
    ids = list_path.read_text().split()
    if ids != _ids(split, n) or len(caps) != n:
        return False
    return all(
        (root / "JPEGImages" / f"{i}.jpg").is_file() and (root / "SegmentationClass" / f"{i}.png").is_file()
        for i in ids
    )


def write_toy_split(root: str | Path, split: str, n: int, seed: int, size: int = 96, colors: str = "any") -> None:
    """Write `n` scenes of `split` in the VOC layout under `root` (idempotent).

    root/JPEGImages/<id>.jpg (quality 95), root/SegmentationClass/<id>.png (palette PNG, pixel
    value = class id), root/ImageSets/Segmentation/<split>.txt, root/captions_<split>.json
    ({id: caption}) and root/toy_<split>.json (the generation parameters). If the split is
    already complete with the same parameters nothing is written; otherwise it is regenerated
    and the list file and metadata are written last, so an interrupted run is redone.
    """
    from carbench.data.generated import claim_generated_root
    from carbench.data.voc_format import write_palette_png

    root = Path(root)
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    check_color_mode(colors)
    claim_generated_root(root, "toy")  # only into a folder the generator created (marker file)
    if split_is_complete(root, split, n, seed, size, colors):
        return
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    meta_path = root / f"toy_{split}.json"
    meta_path.unlink(missing_ok=True)
    ids = _ids(split, n)
    captions = {}
    for i, sid in enumerate(ids):
        scene = make_scene(scene_rng(seed, split, i), size, colors=colors)
        Image.fromarray(scene.image).save(root / "JPEGImages" / f"{sid}.jpg", quality=95)
        write_palette_png(root / "SegmentationClass" / f"{sid}.png", scene.label)
        captions[sid] = scene.caption
    (root / f"captions_{split}.json").write_text(json.dumps(captions, indent=0))
    (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    meta = {
        "split": split,
        "n": n,
        "seed": seed,
        "size": size,
        "version": _FORMAT_VERSION,
        "colors": colors,
        "classes": CLASS_NAMES,
        "stream": f"np.random.default_rng([seed, {SPLIT_OFFSETS[split]}, index])",
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    if not split_is_complete(root, split, n, seed, size, colors):
        raise RuntimeError(f"toy split {split!r} under {root} is incomplete after writing; check disk space")
