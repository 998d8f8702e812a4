"""What the page's inputs become before they reach the model: queries, an RGB image, background lists.

Every check here raises `InputError` with a message written for the person at the page (what is
wrong and what to type instead); the app shows it in place of the results.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from carbench.toy.model import TOY_COLORS
from carbench.toy.scenes import make_scene, scene_rng

#: Longest image side the demo runs at; larger uploads are downscaled (CLIP runs at native resolution).
MAX_SIDE = 512

#: Toy val scenes offered in the scene picker (indices): multi-object ones, so the recurrence has work to do.
TOY_SCENE_INDICES = (1, 3, 4, 7, 12, 14)


class InputError(ValueError):
    """An input the page can explain: shown as a message, never as a crash."""


def parse_queries(text: str | None, what: str = "query") -> list[str]:
    """Comma-separated queries → a list; blank entries and duplicates are named in the error."""
    if text is None or not text.strip():
        raise InputError(f"The {what} list is empty: type at least one {what}, e.g. `circle, star, ring`.")
    parts = [p.strip() for p in text.split(",")]
    blank = [i + 1 for i, p in enumerate(parts) if not p]
    if blank:
        raise InputError(
            f"Entry {', '.join(map(str, blank))} of the {what} list is blank (two commas in a row, or a comma "
            f"at the start or end). Remove the extra comma."
        )
    dups = sorted(q for q, n in Counter(parts).items() if n > 1)
    if dups:
        raise InputError(
            f"Duplicate {what}: {', '.join(repr(d) for d in dups)}. Each {what} must appear once "
            "(two identical queries would split one object's score); remove the repeats."
        )
    return parts


def load_image(path: str | Path | None, max_side: int = MAX_SIDE) -> tuple[np.ndarray, str | None]:
    """An uploaded file → H×W×3 uint8 RGB, downscaled so its long side is ≤ `max_side`.

    Returns the image and a note when it was downscaled (None otherwise).
    """
    if path is None:
        raise InputError("No image: upload one, or pick a toy scene from the list.")
    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        name = Path(path).name
        raise InputError(
            f"`{name}` is not an image this demo can read ({type(err).__name__}). Upload a PNG, JPEG, "
            "WebP or BMP picture."
        ) from err
    w, h = rgb.size
    note = None
    if max(w, h) > max_side:
        scale = max_side / max(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        rgb = rgb.resize(size, Image.BICUBIC)
        note = f"The image was {w}×{h}; it was downscaled to {size[0]}×{size[1]} (longest side {max_side} px)."
    return np.array(rgb, dtype=np.uint8), note  # a writable copy (torch.from_numpy warns on read-only)


def toy_scenes() -> dict[str, np.ndarray]:
    """The picker's toy scenes (val split, seed 0, 96 px), named after their index and the shapes in them."""
    scenes = {}
    for i in TOY_SCENE_INDICES:
        scene = make_scene(scene_rng(0, "val", i), 96, colors=TOY_COLORS)
        scenes[f"toy val {i}: {', '.join(o.name for o in scene.objects)}"] = scene.image
    return scenes
