"""Overlay PNGs for eyeballing a run: image | ground truth | prediction | queries kept per step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from carbench.data.voc_format import VOC_PALETTE
from carbench.types import IGNORE_INDEX, Prediction, Sample


def colorize(labels: np.ndarray) -> np.ndarray:
    """Label ids → RGB with the VOC palette (ignore = its cream colour)."""
    return VOC_PALETTE[np.clip(labels, 0, 255).astype(np.uint8)]


def blend(image: np.ndarray, labels: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    color = colorize(labels).astype(np.float32)
    out = image.astype(np.float32)
    paint = (labels != 0) & (labels != IGNORE_INDEX)
    out[paint] = (1 - alpha) * out[paint] + alpha * color[paint]
    return out.clip(0, 255).astype(np.uint8)


def write_overlay(path: Path, sample: Sample, labels: np.ndarray, pred: Prediction, min_height: int = 192) -> Path:
    """One PNG: the image, GT and prediction (blended), and a text panel with the recurrence trace."""
    h, w = sample.image.shape[:2]
    scale = max(1, int(np.ceil(min_height / h)))
    panels = [sample.image, blend(sample.image, sample.target), blend(sample.image, labels)]
    tiles = [Image.fromarray(p).resize((w * scale, h * scale), Image.NEAREST) for p in panels]
    text_w = 260
    canvas = Image.new("RGB", (3 * w * scale + text_w, h * scale + 18), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (tile, title) in enumerate(zip(tiles, ["image", "ground truth", "CaR"], strict=True)):
        canvas.paste(tile, (i * w * scale, 18))
        draw.text((i * w * scale + 4, 3), title, fill="black")
    lines = [f"{sample.id}"]
    for step in pred.trace:
        kept = [sample.queries[k] for k in step["kept"]]
        lines.append(f"step {step['step']}: {len(step['alive'])} in, kept {len(kept)}")
        lines.append("  " + ", ".join(kept)[:40])
    lines.append("final: " + ", ".join(sample.queries[k] for k in pred.kept)[:40])
    draw.multiline_text((3 * w * scale + 6, 20), "\n".join(lines), fill="black", spacing=3)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
