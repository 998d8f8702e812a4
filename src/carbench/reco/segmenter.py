"""`model=reco`: label each pixel by its dense feature's similarity to each concept's reference.

score_k(p) = sigmoid(cos(f(p), r_k)), bilinearly upsampled; with `dense_clip_inference` multiplied
by the language term sigmoid(τ · cos(dense-CLIP(p), text_k)), as the authors' inference does. The
pixel goes to the best-scoring text; texts from `background_queries` (set by the dataset configs
for benchmarks with a background class) compete like any concept and their pixels become
background. The post-processor (`postprocess=crf`) refines every text's map, background texts
included, given as scores divided by the pixel's best score, which makes the CRF's unary the
authors' one (`_refine` says why). Given the queries' maps only, as other baselines do, the
CRF's background channel (1 − max) takes the objects, because the product of two sigmoids sits
near 0.3-0.5 (toy val: 26.2 mIoU vs 43.3 without CRF; scores over their sum: 9.6).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from carbench.models.baselines.common import (
    check_background_queries,
    check_image,
    check_queries,
    probs_to_prediction,
)
from carbench.models.queries import check_model_background
from carbench.models.recurrent import PostProcess
from carbench.reco.coseg import text_weights
from carbench.reco.dense import DenseBackbone
from carbench.reco.references import ReferenceStore
from carbench.types import BACKGROUND, Prediction


class ReCo:
    """Retrieve and Co-segment; implements the `Segmenter` protocol."""

    def __init__(
        self,
        references: ReferenceStore,
        dense: DenseBackbone,
        text_clip=None,
        dense_clip_inference: bool = True,
        temperature: float = 10.0,
        background_queries: Sequence[str] = (),
        postprocess: PostProcess | None = None,
    ) -> None:
        if dense_clip_inference and text_clip is None:
            raise ValueError("model.dense_clip_inference=true needs the dense CLIP (model.text_clip); "
                             "set model.dense_clip_inference=false or name a CLIP preset in model.text_clip")
        self.references, self.dense, self.text_clip = references, dense, text_clip
        self.dense_clip_inference, self.temperature = dense_clip_inference, temperature
        self.background_queries = check_model_background(background_queries)
        self.postprocess = postprocess

    @torch.no_grad()
    def scores(self, image: np.ndarray, texts: list[str]) -> torch.Tensor:
        """Per-text scores [T, H, W] in [0, 1]."""
        refs = self.references.references(texts)
        feats = self.dense.image_features(image).cpu()  # [h, w, C]
        cos = torch.einsum("hwc,tc->thw", F.normalize(feats, dim=-1), F.normalize(refs, dim=-1))
        s = F.interpolate(torch.sigmoid(cos)[None], size=image.shape[:2], mode="bilinear", align_corners=False)[0]
        if self.dense_clip_inference:
            s = s * text_weights(self.text_clip.dense_similarity(image, texts).cpu(), self.temperature)
        return s

    def segment(self, image: np.ndarray, queries: list[str]) -> Prediction:
        check_image(image)
        queries = check_queries(queries)
        texts = queries + check_background_queries(queries, self.background_queries)
        t0 = time.perf_counter()
        before = self.references.coseg_calls
        s = self.scores(image, texts)
        rel = (s / s.amax(0, keepdim=True).clamp_min(1e-12)).numpy()  # 1 for each pixel's winner
        trace: list[dict[str, Any]] = [{"step": 1, "alive": list(range(len(queries))),
                                        "new_references": self.references.coseg_calls - before,
                                        "time": {"reco": time.perf_counter() - t0}}]
        pred = probs_to_prediction(rel, len(queries), 0.0, trace=trace)
        if self.postprocess is not None:
            t0 = time.perf_counter()
            pred = self._refine(image, rel, len(queries), trace)
            trace[0]["time"]["postprocess"] = time.perf_counter() - t0
        trace[0]["kept"] = list(pred.kept)
        return pred

    def _refine(self, image: np.ndarray, rel: np.ndarray, n_queries: int, trace: list[dict[str, Any]]) -> Prediction:
        """Post-process every text's map (background queries included), then paint the queries' masks.

        The maps are scores divided by each pixel's best score, so −log(map) equals ReCo's CRF unary
        −log(score / Σ scores) up to a per-pixel constant (which mean-field inference ignores), and
        the harness CRF's extra background channel (1 − max = 0) never wins on its own.
        """
        masks = np.asarray(self.postprocess(image, rel), dtype=np.float32)  # [T, H, W]
        return _paint(masks, rel, n_queries, trace)


def _paint(masks: np.ndarray, rel: np.ndarray, n_queries: int, trace: list[dict[str, Any]]) -> Prediction:
    """Refined masks [T, H, W] → Prediction over the queries: a pixel goes to the text whose refined
    mask holds it (the relative score breaks overlaps); pixels of background texts, or of no text, are
    background. Scores are each query's mean relative score inside its mask."""
    held = masks > 0.5
    win = np.where(held.any(0), np.where(held, rel, -1.0).argmax(0), -1)
    labels = np.where((win >= 0) & (win < n_queries), win, BACKGROUND).astype(np.int64)
    out = np.zeros((n_queries, *labels.shape), np.float32)
    scores = np.zeros(n_queries, np.float32)
    kept = []
    for k in range(n_queries):
        own = labels == k
        out[k] = own
        if own.any():
            kept.append(k)
            scores[k] = float(rel[k][own].mean())
    return Prediction(labels=labels, masks=out, scores=scores, kept=kept, trace=trace)
