"""Dense CLIP: classify every patch token against the text queries (`model=dense_clip`).

The common core of the training-free peers (docs/peers.md §1.2): CLIP's patch tokens, after `ln_post`
and the projection, are compared with the text embeddings, and the cosine map is upsampled to the
image. Plain CLIP's last-block attention makes these tokens noisy, so the peers change only the
last block's attention (`attention=`):

- `maskclip` (MaskCLIP, Zhou et al. ECCV'22): query/key discarded — each token attends to itself,
  i.e. the output is out_proj(v);
- `sclip` (SCLIP, Wang et al. ECCV'24): correlative self-attention,
  softmax(q qᵀ/√d) + softmax(k kᵀ/√d) applied to v;
- `vanilla`: CLIP's own attention (the weak "CLIP" row of the peers' tables).

`keep_residual=true` keeps the last block's residual and FFN (MaskCLIP, SCLIP); `false` drops
both, as ClearCLIP proposes. Input is the native-resolution image snapped to the patch grid with
interpolated positional embeddings (as CaR's CLIP-ES); `protocol=sclip` replaces that with the
peers' 336 / sliding-224 protocol. Text: the model's `templates` averaged per query (dataset
configs give CaR's 15; `protocol=sclip` gives the 80 ImageNet ones); background queries compete in
the softmax and their pixels become background.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from carbench.models.backbones.device import autocast
from carbench.models.backbones.vit import ClipBackbone
from carbench.models.baselines.common import (
    apply_postprocess,
    check_background_queries,
    check_image,
    check_queries,
    own_texts,
    probs_to_prediction,
)
from carbench.models.recurrent import PostProcess
from carbench.types import Prediction

ATTENTION_MODES = ("maskclip", "sclip", "vanilla")


def last_block_attention(attn: torch.nn.MultiheadAttention, y: torch.Tensor, mode: str) -> torch.Tensor:
    """The last block's attention output for normalised tokens y [B, N, C] under `mode`."""
    b, n, c = y.shape
    heads = attn.num_heads
    q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(b, n, heads, c // heads).transpose(1, 2) for t in (q, k, v))  # [B, h, N, d]
    scale = (c // heads) ** -0.5
    if mode == "maskclip":
        out = v
    elif mode == "sclip":
        weights = ((q @ q.transpose(-1, -2)) * scale).softmax(-1) + ((k @ k.transpose(-1, -2)) * scale).softmax(-1)
        out = weights @ v
    elif mode == "vanilla":
        out = ((q @ k.transpose(-1, -2)) * scale).softmax(-1) @ v
    else:
        raise ValueError(f"unknown dense_clip attention {mode!r}; valid: {', '.join(ATTENTION_MODES)}")
    return attn.out_proj(out.transpose(1, 2).reshape(b, n, c))


class DenseClip:
    """MaskCLIP / SCLIP-style dense classification; implements the `Segmenter` protocol."""

    def __init__(
        self,
        backbone: ClipBackbone,
        templates: Sequence[str] = ("a clean origami {}.",),
        background_queries: Sequence[str] = (),
        attention: str = "maskclip",
        keep_residual: bool = True,
        logit_scale: float | None = None,
        prob_threshold: float = 0.0,
        amp: str = "auto",
        postprocess: PostProcess | None = None,
    ) -> None:
        if attention not in ATTENTION_MODES:
            raise ValueError(f"unknown dense_clip attention {attention!r}; valid: {', '.join(ATTENTION_MODES)}")
        if not 0.0 <= prob_threshold <= 1.0:
            raise ValueError(f"prob_threshold must be in [0, 1], got {prob_threshold}")
        self.backbone = backbone
        self.background_queries, self.templates = own_texts(background_queries, templates)
        self.attention = attention
        self.keep_residual = keep_residual
        self.logit_scale = float(logit_scale) if logit_scale is not None else backbone.logit_scale
        self.prob_threshold = prob_threshold
        self.amp = amp
        self.postprocess = postprocess

    @torch.no_grad()
    def patch_features(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """L2-normalised dense features [h·w, D] of the image and the patch grid (h, w)."""
        bb = self.backbone
        tokens, grid = bb.embed(bb.to_input(image))
        x, _ = bb.run_blocks(tokens, 0, len(bb.blocks) - 1)
        last = bb.blocks[-1]
        out = last_block_attention(last.attn, last.ln_1(x), self.attention)
        if self.keep_residual:
            x = x + last.ls_1(out)
            x = x + last.ls_2(last.mlp(last.ln_2(x)))
        else:
            x = out
        feats = bb.visual.ln_post(x[0, 1:])
        if bb.visual.proj is not None:
            feats = feats @ bb.visual.proj
        return F.normalize(feats.float(), dim=-1), grid

    def text_defaults(self) -> tuple[list[str], list[str] | None]:
        """This model's background words and templates (`TextOverridable`)."""
        return list(self.background_queries), list(self.templates)

    @torch.no_grad()
    def dense_similarity(
        self, image: np.ndarray, texts: Sequence[str], templates: Sequence[str] | None = None
    ) -> torch.Tensor:
        """Cosine similarity [T, H, W] of every pixel with each text (templates averaged; None = own), bilinear."""
        check_image(image)
        with autocast(self.backbone.device, self.amp):
            feats, (gh, gw) = self.patch_features(image)
            text = self.backbone.encode_text_averaged(list(texts), list(templates or self.templates)).float()
        cos = (feats @ text.T).T.reshape(len(texts), 1, gh, gw)
        return F.interpolate(cos, size=image.shape[:2], mode="bilinear", align_corners=False)[:, 0]

    def segment(
        self,
        image: np.ndarray,
        queries: list[str],
        *,
        background: Sequence[str] | None = None,
        templates: Sequence[str] | None = None,
    ) -> Prediction:
        """Dense classification of one image (`background` / `templates`: None = this model's own)."""
        queries = check_queries(queries)
        bg = self.background_queries if background is None else background
        texts = queries + check_background_queries(queries, bg)
        t0 = time.perf_counter()
        probs = (self.logit_scale * self.dense_similarity(image, texts, templates)).softmax(0).cpu().numpy()
        trace = [{"step": 1, "alive": list(range(len(queries))), "time": {"dense": time.perf_counter() - t0}}]
        pred = probs_to_prediction(probs, len(queries), self.prob_threshold, trace=trace)
        trace[0]["kept"] = list(pred.kept)
        t0 = time.perf_counter()
        pred = apply_postprocess(image, pred, self.postprocess)
        trace[0]["time"]["postprocess"] = time.perf_counter() - t0
        return pred
