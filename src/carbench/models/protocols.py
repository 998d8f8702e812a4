"""Inference protocols: how an image and the class names reach a segmenter (`protocol=car|sclip`).

`car` (default): the model sees the native-resolution image and the dataset's queries as they are
— CaR's own evaluation (docs/method.md §3).

`sclip`: the protocol of SCLIP and the peers that reuse its mmseg-1.x harness (ClearCLIP, NACLIP,
ProxyCLIP, …; docs/peers.md §1.1), around any segmenter, so CaR can be compared on their terms:
1. resize so the short side is 336 (long side ≤ 2048, aspect kept, mmseg `Resize(2048, 336)`);
2. slide 224×224 windows with stride 112 (last window flush with the border), average the
   per-window outputs where windows overlap, upsample bilinearly to the original size;
3. text: the 80 OpenAI ImageNet templates (passed to the model on every call), and a query with comma-separated
   synonyms ("person, person in shirt") is split, each synonym a text, the class score the max;
4. background: the protocol's background words compete as texts (SCLIP's VOC21 name file starts
   with such a line); `area_threshold` drops foreground classes covering less than that share of
   the foreground (SCLIP `area_thd`); pixels whose best probability is below `prob_threshold`
   (SCLIP `prob_thd`) are background.
Models with dense text similarities (`dense_similarity`, i.e. dense_clip) are treated exactly as
SCLIP does: window cosines averaged, ×`logit_scale`, softmax over texts. Other models (CaR, ovseg,
clip_es) run whole on each window and their per-query masks are averaged as the probabilities.
Defaults are SCLIP's VOC21 config (cfg_voc21.py, cls_voc21.txt); datasets without background use
`protocol.background_queries=[] protocol.area_threshold=null`, as SCLIP's configs do.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch

from carbench.models.baselines.common import check_image, check_queries
from carbench.types import (
    BACKGROUND,
    DenseSimilarity,
    Prediction,
    SampleSegmenter,
    Segmenter,
    TextOverridable,
)

PROTOCOLS = ("car", "sclip")

#: SCLIP's background synonyms for VOC21 (first line of configs/cls_voc21.txt, from TCL).
SCLIP_VOC_BACKGROUND = (
    "sky", "wall", "tree", "wood", "grass", "road", "sea", "river", "mountain", "sands", "desk", "bed", "building",
    "cloud", "lamp", "door", "window", "wardrobe", "ceiling", "shelf", "curtain", "stair", "floor", "hill", "rail",
    "fence",
)


def imagenet_templates() -> list[str]:
    """The 80 OpenAI ImageNet prompt templates (CLIP paper; shipped by open_clip) as format strings."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]


def resize_shape(h: int, w: int, short_side: int, max_long_side: int) -> tuple[int, int]:
    """mmcv `rescale_size` with keep_ratio: one factor so short ≤ short_side and long ≤ max_long_side."""
    scale = min(max_long_side / max(h, w), short_side / min(h, w))
    return int(h * scale + 0.5), int(w * scale + 0.5)


def sliding_windows(h: int, w: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(y1, y2, x1, x2) windows as mmseg's slide inference lays them out (last one flush with the border)."""
    rows = max(h - crop + stride - 1, 0) // stride + 1
    cols = max(w - crop + stride - 1, 0) // stride + 1
    out = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + crop, h), min(c * stride + crop, w)
            out.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return out


def split_synonyms(queries: Sequence[str], background: Sequence[str], split: bool) -> tuple[list[str], list[int]]:
    """Texts to run and, for each, its class (query index, or len(queries) for background)."""
    texts, owner = [], []
    groups = [(k, q.split(",") if split else [q]) for k, q in enumerate(queries)]
    groups += [(len(queries), [b]) for b in background]
    for k, names in groups:
        for name in (n.strip() for n in names):
            if not name:
                continue
            if name in texts:
                if owner[texts.index(name)] != k:
                    raise ValueError(f"protocol=sclip: text {name!r} is a synonym of two classes")
                continue
            texts.append(name)
            owner.append(k)
    return texts, owner


@dataclass
class SclipParams:
    short_side: int = 336
    max_long_side: int = 2048
    crop: int = 224
    stride: int = 112
    templates: list[str] | str = "imagenet80"
    logit_scale: float = 65.0  # cfg_voc21.py (SCLIP's default elsewhere: 40)
    prob_threshold: float = 0.1  # cfg_voc21.py prob_thd
    area_threshold: float | None = 0.1  # cfg_voc21.py area_thd
    background_queries: list[str] = field(default_factory=lambda: list(SCLIP_VOC_BACKGROUND))
    split_synonyms: bool = True


class SclipProtocol:
    """Wraps any segmenter with SCLIP's inference protocol; itself a `Segmenter`."""

    def __init__(self, inner: Segmenter, params: SclipParams | None = None) -> None:
        if isinstance(inner, SampleSegmenter):
            raise ValueError("protocol=sclip re-runs a model on resized windows; precomputed predictions cannot be")
        self.inner = inner
        self.params = params or SclipParams()
        p = self.params
        if p.crop < 1 or p.stride < 1 or p.short_side < 1:
            raise ValueError(f"protocol sizes must be positive: crop={p.crop} stride={p.stride} short={p.short_side}")
        # the protocol's templates are passed on every call; the wrapped model is never modified
        self.templates = imagenet_templates() if p.templates == "imagenet80" else list(p.templates)
        self.dense = isinstance(inner, DenseSimilarity)
        if not self.dense and not isinstance(inner, TextOverridable):
            raise ValueError(f"protocol=sclip runs the model with its own text templates, but "
                             f"{type(inner).__name__} takes no templates per call (no text_defaults / "
                             "segment(..., templates=…)); use protocol=car for it")

    def _window_scores(self, crop: np.ndarray, texts: list[str]) -> np.ndarray:
        if self.dense:
            return self.inner.dense_similarity(crop, texts, templates=self.templates).float().cpu().numpy()
        return self.inner.segment(crop, texts, templates=self.templates).masks.astype(np.float32)

    def segment(self, image: np.ndarray, queries: list[str]) -> Prediction:
        check_image(image)
        queries = check_queries(queries)
        p = self.params
        texts, owner = split_synonyms(queries, p.background_queries, p.split_synonyms)
        t0 = time.perf_counter()
        h, w = image.shape[:2]
        rh, rw = resize_shape(h, w, p.short_side, p.max_long_side)
        resized = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_LINEAR)
        acc = np.zeros((len(texts), rh, rw), np.float32)
        count = np.zeros((rh, rw), np.float32)
        windows = sliding_windows(rh, rw, p.crop, p.stride)
        for y1, y2, x1, x2 in windows:
            acc[:, y1:y2, x1:x2] += self._window_scores(np.ascontiguousarray(resized[y1:y2, x1:x2]), texts)
            count[y1:y2, x1:x2] += 1
        avg = torch.from_numpy(acc / count)[None]
        avg = torch.nn.functional.interpolate(avg, size=(h, w), mode="bilinear", align_corners=False)[0]
        probs = (p.logit_scale * avg).softmax(0) if self.dense else avg
        labels, class_probs = self._labels(probs.numpy(), owner, len(queries))
        kept = [k for k in range(len(queries)) if (labels == k).any()]
        scores = np.array([class_probs[k][labels == k].mean() if k in kept else 0.0 for k in range(len(queries))],
                          np.float32)
        trace = [{"step": 1, "alive": list(range(len(queries))), "kept": kept, "windows": len(windows),
                  "time": {"protocol_sclip": time.perf_counter() - t0}}]
        return Prediction(labels=labels, masks=np.ascontiguousarray(class_probs[: len(queries)], np.float32),
                          scores=scores, kept=kept, trace=trace)

    def _labels(self, probs: np.ndarray, owner: list[int], n: int) -> tuple[np.ndarray, np.ndarray]:
        """Max over synonyms, SCLIP's area and probability thresholds → (labels, class probs)."""
        has_bg = n in owner
        classes = n + int(has_bg)
        owner_arr = np.asarray(owner)
        cls = np.stack([probs[owner_arr == c].max(0) for c in range(classes)])
        if self.params.area_threshold is not None:
            win = cls.argmax(0)
            area = np.array([(win == c).sum() for c in range(n)], np.float64)
            small = area <= self.params.area_threshold * max(area.sum(), 1)
            cls[:n][small] = 0.0
        win = cls.argmax(0)
        labels = np.where((win < n) & (cls.max(0) >= self.params.prob_threshold), win, BACKGROUND).astype(np.int64)
        return labels, cls


def build_protocol(cfg: dict[str, Any] | None, segmenter: Segmenter) -> Segmenter:
    """Wrap `segmenter` as `cfg` (model.protocol) says; `car` (or no protocol) returns it unchanged."""
    cfg = dict(cfg or {})
    name = cfg.pop("name", "car")
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; valid: {', '.join(PROTOCOLS)}")
    if name == "car":
        if cfg:
            raise ValueError(f"protocol=car takes no settings, got {sorted(cfg)}")
        return segmenter
    if cfg.get("logit_scale") is not None and not math.isfinite(float(cfg["logit_scale"])):
        raise ValueError("protocol.logit_scale must be finite")
    return SclipProtocol(segmenter, SclipParams(**cfg))
