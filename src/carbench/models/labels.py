"""Turning per-query masks and scores into the final output (docs/method.md §1.7).

Semantic: one label map in which higher-scoring queries are painted last and so win overlaps
(CRF masks are already exclusive; order only matters after e.g. a SAM refinement). Referring:
the K query masks are merged into one foreground by a score-weighted mean, with the official
"too small → union" fallback.
"""

from __future__ import annotations

import numpy as np

from carbench.types import BACKGROUND


def assemble_semantic_labels(masks: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """K×H×W masks (bool or float) + K scores → H×W int64 labels (query index or BACKGROUND).

    Queries are painted in ascending score order (stable, so on equal scores the higher index
    paints last and wins) on the pixels where their mask is > 0.5; queries with score ≤ 0 (the
    dropped ones) paint nothing. Unclaimed pixels stay BACKGROUND — there is no extra per-pixel
    confidence threshold, as in the official `assign_label`.
    """
    masks = np.asarray(masks)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if masks.ndim != 3:
        raise ValueError(f"masks must be K×H×W, got shape {masks.shape}")
    if scores.shape[0] != masks.shape[0]:
        raise ValueError(f"got {masks.shape[0]} masks but {scores.shape[0]} scores")
    labels = np.full(masks.shape[1:], BACKGROUND, dtype=np.int64)
    for k in np.argsort(scores, kind="stable"):
        if scores[k] > 0:
            labels[masks[k] > 0.5] = k
    return labels


def merge_referring(masks: np.ndarray, scores: np.ndarray, min_area_frac: float = 0.05) -> np.ndarray:
    """K×H×W masks + K scores → H×W bool foreground for one referring sample.

    Foreground = (Σ s_k M_k / Σ s_k) ≥ 0.5. If that covers ≤ `min_area_frac` of the image (or all
    scores are 0, so the mean is undefined), fall back to the union of the masks' non-zero
    pixels — the official guard against a confident but tiny/empty merge. Resizing to the GT
    size is the caller's job (do it on the result or on the masks beforehand).
    """
    masks = np.asarray(masks)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if masks.ndim != 3 or masks.shape[0] < 1:
        raise ValueError(f"masks must be K×H×W with K ≥ 1, got shape {masks.shape}")
    if scores.shape[0] != masks.shape[0]:
        raise ValueError(f"got {masks.shape[0]} masks but {scores.shape[0]} scores")
    if (scores < 0).any():
        raise ValueError(f"scores must be ≥ 0, got {scores}")
    if not 0.0 <= min_area_frac <= 1.0:
        raise ValueError(f"min_area_frac must be in [0, 1], got {min_area_frac}")
    union = (masks > 0).any(0)
    total = scores.sum()
    if total <= 0:
        return union
    fg = _weighted_mean(masks, scores, total) >= 0.5
    if fg.sum() <= min_area_frac * fg.size:
        return union
    return fg


#: float64 elements a row band of the K-stack may occupy in `_weighted_mean` (32 MB)
_BAND_ELEMENTS = 1 << 22


def _weighted_mean(masks: np.ndarray, scores: np.ndarray, total: float) -> np.ndarray:
    """Σ_k s_k·M_k / total as H×W float64, upcasting the K masks one band of rows at a time.

    The sum is float64 as it always was, but a float64 copy of a whole K×H×W stack (gigabytes for
    hundreds of queries on a large image) is never made; each pixel's sum is the same dot product.
    """
    k, h, w = masks.shape
    rows = max(1, _BAND_ELEMENTS // max(1, k * w))
    out = np.empty((h, w), dtype=np.float64)
    for r in range(0, h, rows):
        out[r:r + rows] = np.tensordot(scores, masks[:, r:r + rows].astype(np.float64), axes=1)
    return out / total
