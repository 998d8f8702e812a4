"""Dense-CLIP proposals inside CaR's recurrence (`model/proposer=dense_maskclip|dense_sclip`).

Instead of Grad-CAM, every pixel is compared with the texts by a dense CLIP read-out: the last
block's attention is replaced as MaskCLIP (value path only) or SCLIP (correlative q·qᵀ + k·kᵀ)
do (`baselines/dense_clip.py`). Per step, the alive queries and the background words compete in
one softmax over texts at each pixel; each query's probability map is then min-max scaled to
[0, 1], so η (`model.mask_threshold`) means the same "share of this query's peak" as for CLIP-ES
maps. The recurrence then drops queries the scorer rejects, and the survivors' softmax no longer
has to share pixels with them — the same effect the recurrence has on CLIP-ES maps.

The proposals depend only on the image and the texts (no step-dependent text, unlike CLIP-ES's
quirk A), so a step whose alive set did not change is reused by the loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from carbench.models.backbones.vit import ClipBackbone
from carbench.models.baselines.dense_clip import ATTENTION_MODES, DenseClip
from carbench.models.proposals.clip_es import minmax


class DenseProposer:
    """`Proposer` from a dense CLIP's per-pixel text similarities (softmax over fg + bg, min-max per query).

    Args:
        backbone: the proposal CLIP (shared with the rest of the model through the backbone pool).
        templates: text templates averaged per query and background word.
        attention: maskclip | sclip | vanilla (the last block's attention, see `baselines/dense_clip.py`).
        keep_residual: keep the last block's residual + FFN (MaskCLIP, SCLIP) or drop them (ClearCLIP).
        logit_scale: softmax temperature over texts; None = the CLIP's own.
        amp: autocast on CUDA (auto | bf16 | fp16 | none); CPU stays fp32.
    """

    def __init__(
        self,
        backbone: ClipBackbone,
        templates: Sequence[str],
        attention: str,
        keep_residual: bool,
        logit_scale: float | None,
        amp: str,
    ) -> None:
        if attention not in ATTENTION_MODES:
            raise ValueError(f"unknown model.proposer.attention {attention!r}; valid: {', '.join(ATTENTION_MODES)}")
        if isinstance(templates, str) or not templates:
            raise ValueError(f"model.proposer.templates must be a non-empty list of '{{}}' templates, got {templates!r}")
        self.backbone = backbone
        self.dense = DenseClip(backbone, templates=templates, attention=attention, keep_residual=keep_residual,
                               logit_scale=logit_scale, amp=amp)

    def proposal_key(self, queries: Sequence[str], background: Sequence[str], step: int) -> tuple:
        """The maps depend on the image and these texts only (`KeyedProposer`)."""
        return tuple(queries), tuple(background)

    def warm(self, queries: Sequence[str], background: Sequence[str]) -> None:
        """Encode every text now (the backbone caches them for later steps and images)."""
        self.backbone.encode_text_averaged(list(queries) + list(background), self.dense.templates)

    def propose(self, image: np.ndarray, queries: Sequence[str], background: Sequence[str], step: int) -> np.ndarray:
        """K×H×W float32 maps in [0, 1]: per-pixel softmax over queries + background, min-max per query."""
        if len(queries) == 0:
            raise ValueError("propose() needs at least one query")
        texts = list(queries) + list(background)
        with torch.no_grad():
            sim = self.dense.dense_similarity(image, texts)
            probs = (self.dense.logit_scale * sim.float()).softmax(0)[: len(queries)]
            maps = minmax(probs)
        return maps.cpu().numpy().astype(np.float32).clip(0, 1)
