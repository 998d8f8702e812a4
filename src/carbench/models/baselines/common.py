"""What the baseline segmenters share: input checks, text embeddings, label maps.

Every baseline turns per-pixel class probabilities over [queries ; background queries] into a
`Prediction` the same way, so differences between baselines are differences of method, not of
bookkeeping: argmax over all texts; a pixel whose winner is a background query, or whose best
probability is below `prob_threshold` (SCLIP's `prob_thd`; 0 = off), is BACKGROUND. A mask
post-processor (the dense CRF, SAM) is applied to the per-query probability maps exactly as to
CaR's proposals (`apply_postprocess`), so "+CRF" means the same thing for every model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from carbench.models import queries as queries_mod
from carbench.models.labels import assemble_semantic_labels
from carbench.models.recurrent import PostProcess, check_queries
from carbench.types import BACKGROUND, Prediction

__all__ = [
    "apply_postprocess", "check_background_queries", "check_image", "check_queries", "own_texts", "probs_to_prediction",
]


def check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be H×W×3 uint8 RGB, got shape {image.shape} dtype {image.dtype}")


def own_texts(background_queries: Sequence[str], templates: Sequence[str] | str) -> tuple[list[str], list[str]]:
    """A baseline's own background words and templates, checked when it is built: a bare string is one
    template (never its letters), the background words get the query checks, and no template means the
    query itself ("{}")."""
    background = queries_mod.check_model_background(background_queries)
    templates = [templates] if isinstance(templates, str) else list(templates)
    return background, templates or ["{}"]


def check_background_queries(queries: Sequence[str], background: Sequence[str]) -> list[str]:
    """Background queries get the foreground queries' checks and may not repeat a query (models/queries.py)."""
    return queries_mod.check_background_queries(queries, background)


def probs_to_prediction(
    probs: np.ndarray, n_queries: int, prob_threshold: float = 0.0, covered: np.ndarray | None = None,
    trace: list[dict] | None = None,
) -> Prediction:
    """T×H×W probabilities over [queries ; background queries] → Prediction over the queries.

    `covered` (H×W bool) marks pixels that have any evidence at all (e.g. under some proposal);
    the others are BACKGROUND. Scores are each query's mean probability over the pixels it wins.
    """
    if probs.ndim != 3 or probs.shape[0] < n_queries:
        raise ValueError(f"probs must be T×H×W with T ≥ {n_queries}, got {probs.shape}")
    win = probs.argmax(0)
    best = probs.max(0)
    labels = np.where((win < n_queries) & (best >= prob_threshold), win, BACKGROUND).astype(np.int64)
    if covered is not None:
        labels[~covered] = BACKGROUND
    scores = np.zeros(n_queries, np.float32)
    kept = []
    for k in range(n_queries):
        own = labels == k
        if own.any():
            kept.append(k)
            scores[k] = float(probs[k][own].mean())
    masks = np.ascontiguousarray(probs[:n_queries], dtype=np.float32)
    return Prediction(labels=labels, masks=masks, scores=scores, kept=kept, trace=trace or [])


def apply_postprocess(image: np.ndarray, pred: Prediction, postprocess: PostProcess | None) -> Prediction:
    """Refine a baseline's per-query maps with CaR's post-processor and repaint the labels.

    The maps are zeroed where the baseline itself said background (a background query won or the
    probability threshold failed), so the CRF's background channel (1 − max) takes those pixels.
    Scores become each query's mean probability inside its refined mask; the label map is painted
    as CaR's (`assemble_semantic_labels`: higher scores win overlaps).
    """
    if postprocess is None:
        return pred
    fg = pred.masks * (pred.labels >= 0)[None]
    masks = np.asarray(postprocess(image, fg), dtype=np.float32)
    scores = np.array([float(pred.masks[k][masks[k] > 0.5].mean()) if (masks[k] > 0.5).any() else 0.0
                       for k in range(len(masks))], np.float32)
    labels = assemble_semantic_labels(masks, scores)
    kept = [k for k in range(len(masks)) if (labels == k).any()]
    if pred.trace:
        pred.trace[-1]["kept"] = kept
    return Prediction(labels=labels, masks=masks, scores=scores, kept=kept, trace=pred.trace)
