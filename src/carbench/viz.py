"""Pictures of one segmentation: the blended overlay with a colour legend, and one panel per recurrent step.

Shared by the overlay PNGs of a run (`engine/overlays.py`) and the browser demo (`carbench.demo`), so
both draw a prediction the same way. Everything here reads only the `Prediction` contract: label
maps, names, and the trace's per-step dicts (`alive`, `kept`, `scores` and, for CaR, `maps` and
`prompted`). Colours are the VOC palette indexed by label id; a query-indexed prediction uses id
k + 1 for query k (`query_palette_ids`), so id 0 stays the uncoloured background.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from carbench.data.voc_format import VOC_PALETTE
from carbench.types import BACKGROUND, IGNORE_INDEX

Color = tuple[int, int, int]
DROPPED = (200, 30, 30)
KEPT = (20, 130, 40)
TEXT = (20, 20, 20)
MUTED = (140, 140, 140)


def font(size: int = 13) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled scalable font, so labels stay legible at every tile size."""
    return ImageFont.load_default(size=size)


def palette_color(label_id: int) -> Color:
    """RGB of a label id in the VOC palette (the colours of VOC ground truth PNGs)."""
    return tuple(int(c) for c in VOC_PALETTE[int(label_id) % 256])  # type: ignore[return-value]


def query_palette_ids(labels: np.ndarray) -> np.ndarray:
    """Query-indexed labels (BACKGROUND = −1) → palette ids: query k → k + 1, background → 0."""
    return np.where(labels == BACKGROUND, 0, labels + 1).astype(np.int64)


def blend(image: np.ndarray, label_ids: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Paint every labelled pixel (not 0, not ignore) with its palette colour over the image."""
    color = VOC_PALETTE[np.clip(label_ids, 0, 255).astype(np.uint8)].astype(np.float32)
    out = image.astype(np.float32)
    paint = (label_ids != 0) & (label_ids != IGNORE_INDEX)
    out[paint] = (1 - alpha) * out[paint] + alpha * color[paint]
    return out.clip(0, 255).astype(np.uint8)


def heatmap(image: np.ndarray, soft: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """A proposal map in [0, 1] as a jet heat map over the image (red = high)."""
    heat = cv2.applyColorMap((np.clip(soft, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return ((1 - alpha) * image.astype(np.float32) + alpha * heat.astype(np.float32)).astype(np.uint8)


def scaled(array: np.ndarray, height: int) -> Image.Image:
    """An RGB array resized to `height` pixels high (nearest neighbour: pixels stay visible)."""
    img = Image.fromarray(array)
    width = max(1, round(img.width * height / img.height))
    return img.resize((width, height), Image.NEAREST)


def legend(entries: Sequence[tuple[str, Color]], width: int = 200, size: int = 13) -> Image.Image:
    """A column of colour swatches with their names; an empty list says so instead of drawing nothing."""
    line = size + 8
    canvas = Image.new("RGB", (width, line * max(1, len(entries)) + 6), "white")
    draw = ImageDraw.Draw(canvas)
    f = font(size)
    if not entries:
        draw.text((4, 4), "(no class predicted)", fill=MUTED, font=f)
    for i, (name, color) in enumerate(entries):
        y = 3 + i * line
        draw.rectangle((4, y, 4 + size + 2, y + size + 2), fill=color, outline=TEXT)
        draw.text((size + 12, y), name, fill=TEXT, font=f)
    return canvas


def caption(text: str, width: int, size: int = 13) -> Image.Image:
    """One line of text on a white strip `width` pixels wide."""
    canvas = Image.new("RGB", (max(width, 8), size + 10), "white")
    ImageDraw.Draw(canvas).text((4, 4), text, fill=TEXT, font=font(size))
    return canvas


def titled_row(tiles: Sequence[tuple[str, Image.Image]], size: int = 13, gap: int = 6) -> Image.Image:
    """Images side by side, each with a title above it."""
    head = size + 8
    width = sum(t.width for _, t in tiles) + gap * (len(tiles) - 1)
    height = head + max(t.height for _, t in tiles)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for title, tile in tiles:
        draw.text((x + 2, 2), title, fill=TEXT, font=font(size))
        canvas.paste(tile, (x, head))
        x += tile.width + gap
    return canvas


def stack(images: Sequence[Image.Image], gap: int = 8) -> Image.Image:
    """Images one below the other, left-aligned, on white."""
    width = max(i.width for i in images)
    canvas = Image.new("RGB", (width, sum(i.height for i in images) + gap * (len(images) - 1)), "white")
    y = 0
    for img in images:
        canvas.paste(img, (0, y))
        y += img.height + gap
    return canvas


def overlay_figure(
    image: np.ndarray,
    label_ids: np.ndarray,
    names: dict[int, str],
    target_ids: np.ndarray | None = None,
    height: int = 192,
) -> Image.Image:
    """Image | (ground truth) | prediction, blended, and a legend of every label id shown.

    `names` maps palette ids to display names; ids missing from it are shown as "id N" so a colour
    in the picture never goes unexplained.
    """
    tiles = [("image", scaled(image, height))]
    shown = set(np.unique(label_ids).tolist())
    if target_ids is not None:
        tiles.append(("ground truth", scaled(blend(image, target_ids), height)))
        shown |= set(np.unique(target_ids).tolist())
    tiles.append(("CaR", scaled(blend(image, label_ids), height)))
    ids = sorted(i for i in shown if i not in (0, IGNORE_INDEX))
    entries = [(names.get(i, f"id {i}"), palette_color(i)) for i in ids]
    row = titled_row(tiles)
    key = legend(entries, width=max(160, 9 * max((len(n) for n, _ in entries), default=10) + 30))
    canvas = Image.new("RGB", (row.width + 8 + key.width, max(row.height, key.height + 21)), "white")
    canvas.paste(row, (0, 0))
    ImageDraw.Draw(canvas).text((row.width + 10, 2), "legend", fill=TEXT, font=font(13))
    canvas.paste(key, (row.width + 8, 21))
    return canvas


def _score_bar(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], score: float | None,
               theta: float | None, kept: bool) -> None:
    """Horizontal bar of a score in [0, 1], with θ as a vertical line across it."""
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=MUTED, fill=(245, 245, 245))
    if score is not None:
        xs = x0 + round((x1 - x0) * min(max(score, 0.0), 1.0))
        draw.rectangle((x0, y0, xs, y1), fill=KEPT if kept else DROPPED)
    if theta is not None:
        xt = x0 + round((x1 - x0) * theta)
        draw.line((xt, y0 - 3, xt, y1 + 3), fill=TEXT, width=2)


def step_panel(
    image: np.ndarray,
    step: dict[str, Any],
    queries: Sequence[str],
    theta: float | None,
    color_of: dict[int, Color],
    tile: int = 112,
    columns: int = 6,
) -> Image.Image:
    """One recurrent step: for each alive query its proposal map, its prompted image, its score bar
    with the θ line, and whether it was kept (green) or dropped (red, struck through).

    Steps without `maps`/`prompted` (peers' traces) get the name and score rows only.
    """
    alive = list(step.get("alive", []))
    kept = set(step.get("kept", []))
    scores = step.get("scores")
    maps, prompted = step.get("maps"), step.get("prompted")
    pictures = maps is not None and prompted is not None
    f, small = font(14), font(12)
    cell_w = 2 * tile + 12 if pictures else 230
    cell_h = (tile if pictures else 0) + 44
    cols = max(1, min(columns, len(alive)))
    rows = max(1, -(-len(alive) // cols))
    head = 26
    theta_txt = f", threshold theta = {theta:.2f} (black line on the bars)" if theta is not None else ""
    title = (f"step {step.get('step', '?')}: {len(alive)} queries in, kept {len(kept & set(alive))}, "
             f"dropped {len(set(alive) - kept)}{theta_txt}")
    width = max(cols * cell_w + 8, round(f.getlength(title)) + 8)  # a step with few queries still shows its title whole
    canvas = Image.new("RGB", (width, head + rows * cell_h + 4), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), title, fill=TEXT, font=f)
    for j, q in enumerate(alive):
        x = 4 + (j % cols) * cell_w
        y = head + (j // cols) * cell_h
        is_kept = q in kept
        if pictures:
            canvas.paste(scaled(heatmap(image, maps[j]), tile).crop((0, 0, tile, tile)), (x, y))
            canvas.paste(scaled(prompted[j], tile).crop((0, 0, tile, tile)), (x + tile + 4, y))
            if not is_kept:
                draw.rectangle((x, y, x + 2 * tile + 4, y + tile), outline=DROPPED, width=3)
        ty = y + (tile + 3 if pictures else 2)
        name = queries[q] if 0 <= q < len(queries) else f"query {q}"
        draw.rectangle((x, ty + 2, x + 11, ty + 13), fill=color_of.get(q, MUTED), outline=TEXT)
        label = f"{name}  {'kept' if is_kept else 'DROPPED'}"
        draw.text((x + 16, ty), label, fill=KEPT if is_kept else DROPPED, font=f)
        if not is_kept:
            w = draw.textlength(name, font=f)
            draw.line((x + 16, ty + 8, x + 16 + w, ty + 8), fill=DROPPED, width=2)
        score = float(scores[j]) if scores is not None else None
        bar_w = cell_w - 64
        _score_bar(draw, (x, ty + 20, x + bar_w, ty + 30), score, theta, is_kept)
        draw.text((x + bar_w + 6, ty + 18), "n/a" if score is None else f"{score:.3f}", fill=TEXT, font=small)
    return canvas


def step_panels(
    image: np.ndarray,
    trace: Sequence[dict[str, Any]],
    queries: Sequence[str],
    theta: float | None,
    color_of: dict[int, Color],
    tile: int = 112,
    columns: int = 6,
) -> list[Image.Image]:
    """One `step_panel` per entry of a prediction's trace, in order, padded to one width so that
    panels shown side by side or in a gallery are drawn at the same scale."""
    panels = [step_panel(image, step, queries, theta, color_of, tile, columns) for step in trace]
    width = max((p.width for p in panels), default=0)
    padded = []
    for p in panels:
        canvas = Image.new("RGB", (width, p.height), "white")
        canvas.paste(p, (0, 0))
        padded.append(canvas)
    return padded
