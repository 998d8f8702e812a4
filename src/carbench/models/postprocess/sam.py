"""SAM refinement of CaR's final masks (`postprocess=sam`, docs/method.md §1.6).

CaR's masks are first made exclusive by the dense CRF (or binarised at 0.5 with `crf: null`);
then SAM's automatic mask generator segments the whole image once, with no prompt from CaR, and
each non-empty CaR mask M is matched against the N SAM masks S_n:

    I_n = |M ∩ S_n|,  IoM_n = I_n / min(|M|, |S_n|)   — except that when I_n / |M| is below
    `min_pred_threshold`, IoM_n = I_n / |M| (a tiny SAM fragment must not match merely by lying
    inside M).

The SAM masks with IoM_n > φ_iom form the match (if none does, the single best one); their union
C replaces M iff IoU(C, M) > φ_iou, otherwise M is kept. The replaced masks can overlap; the label
map resolves that by painting higher-scoring queries last (`models/labels.py`).

Thresholds. The paper states φ_iom = φ_iou = 0.7 for every dataset (default here, `matching=paper`).
The released code uses φ_iom = `car.iom_thres` per dataset (VOC 0.6, COCO 0.7, Context 0.5) and
φ_iou = `sam.matching_thresh`, absent from every config and so its function default 0.9; these are
`matching=official_voc|official_coco|official_context`. Which values produced the paper's CaR+SAM
numbers is unknown (docs/method.md §7.3). `min_pred_threshold` is 0.05 in the released VOC config
(the function default is 0.2). `replace=always` reproduces the demo, which skips the IoU check.
When SAM returns no mask at all, M is kept (the released code would fail on an empty argmax).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: name → (φ_iom, φ_iou); see the module docstring for the source of each pair.
MATCHING_PRESETS: dict[str, tuple[float, float]] = {
    "paper": (0.7, 0.7),
    "official_voc": (0.6, 0.9),
    "official_coco": (0.7, 0.9),
    "official_context": (0.5, 0.9),
}
REPLACE_MODES = ("iou", "always")

PostProcess = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class SamMatchParams:
    """Matching thresholds. `iom_threshold`/`iou_threshold` = None take the `matching` preset's values."""

    matching: str = "paper"
    iom_threshold: float | None = None
    iou_threshold: float | None = None
    min_pred_threshold: float = 0.05
    replace: str = "iou"

    def __post_init__(self) -> None:
        if self.matching not in MATCHING_PRESETS:
            raise ValueError(f"unknown SAM matching {self.matching!r}; valid: {', '.join(MATCHING_PRESETS)}")
        if self.replace not in REPLACE_MODES:
            raise ValueError(f"unknown SAM replace mode {self.replace!r}; valid: {', '.join(REPLACE_MODES)}")
        iom, iou = MATCHING_PRESETS[self.matching]
        self.iom_threshold = iom if self.iom_threshold is None else float(self.iom_threshold)
        self.iou_threshold = iou if self.iou_threshold is None else float(self.iou_threshold)
        for name in ("iom_threshold", "iou_threshold", "min_pred_threshold"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"SAM {name} must be in [0, 1], got {v}")


def iom_scores(mask: np.ndarray, sam_masks: np.ndarray, min_pred_threshold: float) -> np.ndarray:
    """IoM of one H×W bool mask against N×H×W bool SAM masks (N floats; see module docstring)."""
    m = mask.reshape(-1).astype(np.float64)
    s = sam_masks.reshape(len(sam_masks), -1).astype(np.float64)
    inter = s @ m
    area_m = m.sum()
    area_s = s.sum(1)
    over_m = inter / area_m if area_m > 0 else np.zeros_like(inter)
    over_s = np.divide(inter, area_s, out=np.zeros_like(inter), where=area_s > 0)
    return np.where(over_m < min_pred_threshold, over_m, np.maximum(over_m, over_s))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def match_mask(mask: np.ndarray, sam_masks: np.ndarray, params: SamMatchParams) -> tuple[np.ndarray, dict[str, Any]]:
    """Refine one H×W bool mask with the SAM masks; returns (new mask, what happened)."""
    if not mask.any() or len(sam_masks) == 0:
        return mask, {"matched": [], "iou": None, "replaced": False}
    scores = iom_scores(mask, sam_masks, params.min_pred_threshold)
    matched = np.flatnonzero(scores > params.iom_threshold)
    if matched.size == 0:
        matched = np.array([int(np.argmax(scores))])
    combined = sam_masks[matched].any(0)
    overlap = iou(combined, mask)
    replaced = params.replace == "always" or overlap > params.iou_threshold
    info = {"matched": matched.tolist(), "iou": overlap, "replaced": bool(replaced)}
    return (combined if replaced else mask), info


def refine_masks(masks: np.ndarray, sam_masks: np.ndarray, params: SamMatchParams) -> tuple[np.ndarray, list[dict]]:
    """K×H×W bool masks → K×H×W bool refined masks (empty masks stay empty) + per-mask info."""
    if masks.ndim != 3:
        raise ValueError(f"masks must be K×H×W, got shape {masks.shape}")
    if sam_masks.ndim != 3 or sam_masks.shape[1:] != masks.shape[1:]:
        raise ValueError(f"SAM masks {sam_masks.shape} must be N×H×W with H×W = {masks.shape[1:]}")
    out, infos = [], []
    for m in masks.astype(bool):
        new, info = match_mask(m, sam_masks.astype(bool), params)
        out.append(new)
        infos.append(info)
    return np.stack(out) if out else masks.astype(bool), infos


@dataclass
class SamRefine:
    """Post-processor: ``SamRefine(masker, base, params)(image, maps)`` → K×H×W bool masks.

    `base` makes the maps exclusive first (the dense CRF, as in the paper); None binarises at 0.5.
    `masker` is anything that maps an image to N×H×W bool class-agnostic masks (SAM's automatic
    mask generator in practice). `last` holds the matching details of the latest call.
    """

    masker: Callable[[np.ndarray], np.ndarray]
    base: PostProcess | None = None
    params: SamMatchParams = field(default_factory=SamMatchParams)
    last: dict[str, Any] = field(default_factory=dict)

    def __call__(self, image: np.ndarray, maps: np.ndarray) -> np.ndarray:
        masks = self.base(image, maps) if self.base is not None else np.asarray(maps) > 0.5
        sam_masks = self.masker(image)
        refined, infos = refine_masks(np.asarray(masks, dtype=bool), sam_masks, self.params)
        self.last = {"num_sam_masks": int(len(sam_masks)), "per_mask": infos}
        return refined
