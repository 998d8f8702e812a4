"""CaR for referring segmentation: the expression(s) as queries, per-query binary CRF, merge by score.

docs/method.md §1.7 / §3. The recurrence is the semantic one (`CaR`), given the sample's expressions
as queries and the dataset's background words in the CAM softmax. Then, as the official code does
for referring:

1. each surviving query's final proposal is CRF'd on its own as two channels [(1 − y)^bf, y]
   (`crf_binary`), not jointly as in semantic mode;
2. the K masks are merged into one foreground: (Σ s_k M_k / Σ s_k) ≥ 0.5, falling back to the union
   of the masks when that covers ≤ 5 % of the image (`labels.merge_referring`).

With one expression per sample (the standard protocol) the classifier score is 1 whatever the
image, so the loop stops after two steps and the output is the CLIP-ES proposal + CRF — exactly
what the official code does with one query. With all expressions of a ref (``dataset.mode=ref``) the
classifier does filter and weight them.

The output is a `Prediction` whose `labels` are 0 on the foreground and BACKGROUND elsewhere, so
the referring engine needs nothing but the Segmenter protocol.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
import torch
from omegaconf import DictConfig

from carbench.models.factory import build_postprocess, build_segmenter
from carbench.models.labels import merge_referring
from carbench.models.postprocess.crf import DenseCRF
from carbench.types import BACKGROUND, Prediction, SampleSegmenter, Segmenter

__all__ = ["ReferringCaR", "build_referring_segmenter"]


class ReferringCaR:
    """Wrap a semantic segmenter built *without* post-processing (its masks are the soft proposals).

    Args:
        segmenter: returns per-query soft masks and scores (CaR with ``postprocess=None``).
        crf: the dense CRF whose binary mode refines each mask, or None (masks merged as they are).
        min_area_frac: the merge's fallback threshold (official: 0.05 of the image).
    """

    def __init__(self, segmenter: Segmenter, crf: DenseCRF | None = None, min_area_frac: float = 0.05) -> None:
        self.segmenter = segmenter
        self.crf = crf
        self.min_area_frac = float(min_area_frac)

    def segment(self, image: np.ndarray, queries: list[str]) -> Prediction:
        pred = self.segmenter.segment(image, queries)
        t0 = time.perf_counter()
        masks = pred.masks.astype(np.float32)
        if self.crf is not None:
            for k in range(len(queries)):
                if pred.scores[k] > 0:  # dropped queries keep their zero mask
                    masks[k] = self.crf.binary(image, np.clip(masks[k], 0.0, 1.0))
        t1 = time.perf_counter()
        fg = merge_referring(masks, pred.scores, self.min_area_frac)
        t2 = time.perf_counter()
        times = pred.trace[-1]["time"]
        times["postprocess"] = times.get("postprocess", 0.0) + (t1 - t0)
        times["merge"] = t2 - t1
        labels = np.where(fg, 0, BACKGROUND).astype(np.int64)
        return Prediction(labels=labels, masks=masks, scores=pred.scores, kept=list(pred.kept), trace=pred.trace)


def build_referring_segmenter(
    model_cfg: Mapping | DictConfig,
    postprocess_cfg: Mapping | DictConfig | None,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> Segmenter:
    """The model of `model_cfg` without post-processing, wrapped with the referring CRF and merge
    (a model with ``segment_sample``, i.e. precomputed masks, is returned unwrapped).

    Only ``postprocess=crf`` (binary mode) and ``postprocess=none`` exist for referring; another
    post-processor is an error rather than being silently skipped.
    """
    post = build_postprocess(postprocess_cfg)
    if post is not None and not isinstance(post, DenseCRF):
        raise ValueError(f"referring segmentation supports postprocess=crf or none, not {type(post).__name__}")
    min_area = float(model_cfg.get("referring_min_area", 0.05))  # official merge_masks_simple: 5 % of the image
    base = build_segmenter(model_cfg, None, device=device, seed=seed)
    if isinstance(base, SampleSegmenter):  # precomputed masks are final: score them as they are
        return base
    return ReferringCaR(base, post, min_area)
