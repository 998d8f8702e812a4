"""OVSeg's two-stage paradigm with class-agnostic SAM proposals (`model=ovseg`).

Stage 1: SAM's automatic mask generator proposes class-agnostic masks (OVSeg itself uses a
MaskFormer trained on COCO-Stuff; SAM keeps the baseline training-free on the proposal side).
Stage 2, as OVSeg's `MaskFormerClipAdapter` does it: each proposal's bounding box is cropped, the
pixels outside the mask are filled with CLIP's mean colour, the crop is resized to 224×224 and
classified by CLIP against the queries (+ background queries). With `mask_prompt=true` the
mask-adapted CLIP's *mask prompt* replaces the patch tokens that lie entirely outside the mask with
learned tokens, at the input and after each of the first depth−1 blocks (OVSeg's mask prompt
tuning); this needs the `ovseg_vitl14` preset (or another OVSeg checkpoint).

Label map, as MaskFormer's semantic inference: each pixel gets the class distribution averaged
over the proposals covering it; argmax; uncovered pixels and background-query winners are
BACKGROUND. OVSeg's ensemble with its own MaskFormer classifier is not reproduced (no trained
segmenter here), so numbers are those of the paradigm, not of the released OVSeg model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

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

REGION_SIZE = 224  # OVSeg resizes every masked region to CLIP's 224×224 input


def region_crops(image: np.ndarray, masks: np.ndarray, mean_rgb: Sequence[float],
                 expand_ratio: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked crops [N, 3, 224, 224] in [0, 1] (outside filled with mean) and their masks [N, 1, 224, 224]."""
    h, w = image.shape[:2]
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
    fill = torch.tensor(mean_rgb, dtype=torch.float32).view(3, 1, 1)
    crops, crop_masks = [], []
    for m in masks:
        ys, xs = np.nonzero(m)
        x1, x2, y1, y2 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        cx, cy, bw, bh = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * expand_ratio, (y2 - y1) * expand_ratio
        x1, x2 = max(int(cx - bw / 2), 0), min(int(np.ceil(cx + bw / 2)), w)
        y1, y2 = max(int(cy - bh / 2), 0), min(int(np.ceil(cy + bh / 2)), h)
        mk = torch.from_numpy(np.ascontiguousarray(m[y1:y2, x1:x2])).float()[None]
        crop = img[:, y1:y2, x1:x2] * mk + fill * (1 - mk)
        crops.append(F.interpolate(crop[None], size=(REGION_SIZE, REGION_SIZE), mode="bicubic",
                                   align_corners=False).clamp(0, 1))
        crop_masks.append(F.interpolate(mk[None], size=(REGION_SIZE, REGION_SIZE), mode="nearest"))
    return torch.cat(crops), torch.cat(crop_masks)


@torch.no_grad()
def encode_with_mask_prompt(bb: ClipBackbone, x: torch.Tensor, region_masks: torch.Tensor,
                            mask_embedding: torch.Tensor) -> torch.Tensor:
    """OVSeg's mask-prompted image embedding of normalised regions x [N, 3, 224, 224].

    Patches whose region mask is entirely 0 (avg-pool over the patch, then ceil) get the learned
    token mask_embedding[0] instead of their patch embedding, and mask_embedding[d] after block d
    for d < depth; CLS and positional embeddings are untouched.
    """
    v = bb.visual
    feats = v.conv1(x)
    gh, gw = feats.shape[-2:]
    feats = feats.flatten(2).transpose(1, 2)  # [N, g², C]
    keep = torch.ceil(F.avg_pool2d(region_masks.float(), bb.patch_size)).flatten(1)[..., None]  # [N, g², 1]
    tokens_emb = mask_embedding.to(feats.dtype)
    if tokens_emb.shape[1] == 1:
        tokens_emb = tokens_emb.expand(-1, feats.shape[1], -1)
    feats = feats * keep + tokens_emb[0][None] * (1 - keep)
    cls = v.class_embedding.to(feats.dtype).expand(feats.shape[0], 1, -1)
    tokens = v.ln_pre(torch.cat([cls, feats], 1) + bb._pos_embed(int(gh), int(gw)).to(feats.dtype))
    for i, block in enumerate(bb.blocks):
        tokens = block(tokens)
        d = i + 1
        if d < tokens_emb.shape[0]:
            patches = tokens[:, 1:] * keep + tokens_emb[d][None] * (1 - keep)
            tokens = torch.cat([tokens[:, :1], patches], 1)
    return F.normalize(bb.pooled_embedding(tokens).float(), dim=-1)


class OVSegStyle:
    """SAM proposals classified by (mask-adapted) CLIP; implements the `Segmenter` protocol."""

    def __init__(
        self,
        backbone: ClipBackbone,
        masker: Callable[[np.ndarray], np.ndarray],
        templates: Sequence[str] = ("a clean origami {}.",),
        background_queries: Sequence[str] = (),
        mask_prompt: bool = True,
        expand_ratio: float = 1.0,
        logit_scale: float | None = None,
        prob_threshold: float = 0.0,
        batch_size: int = 32,
        amp: str = "auto",
        postprocess: PostProcess | None = None,
    ) -> None:
        if mask_prompt and backbone.mask_embedding is None:
            raise ValueError(
                f"model.mask_prompt=true needs OVSeg's mask-prompt tokens, but CLIP preset {backbone.preset.name!r} "
                "has none (only OVSeg checkpoints carry them: use model.clip=ovseg_vitl14), or set model.mask_prompt=false"
            )
        self.backbone = backbone
        self.masker = masker
        self.background_queries, self.templates = own_texts(background_queries, templates)
        self.mask_prompt = mask_prompt
        self.expand_ratio = expand_ratio
        self.logit_scale = float(logit_scale) if logit_scale is not None else backbone.logit_scale
        self.prob_threshold = prob_threshold
        self.batch_size = batch_size
        self.amp = amp
        self.postprocess = postprocess

    @torch.no_grad()
    def region_probs(
        self, image: np.ndarray, masks: np.ndarray, texts: Sequence[str], templates: Sequence[str] | None = None
    ) -> torch.Tensor:
        """Class distribution [N, T] of each proposal over the texts (templates: None = this model's own)."""
        bb = self.backbone
        mean = bb.mean.view(3).tolist()
        crops, crop_masks = region_crops(image, masks, mean, self.expand_ratio)
        embs = []
        with autocast(bb.device, self.amp):
            for i in range(0, len(crops), self.batch_size):
                x = ((crops[i : i + self.batch_size].to(bb.device)) - bb.mean) / bb.std
                if self.mask_prompt:
                    m = crop_masks[i : i + self.batch_size].to(bb.device)
                    embs.append(encode_with_mask_prompt(bb, x, m, bb.mask_embedding))
                else:
                    embs.append(bb.encode_images(x))
            text = bb.encode_text_averaged(list(texts), list(templates or self.templates)).float()
        return (self.logit_scale * torch.cat(embs) @ text.T).softmax(-1)

    def text_defaults(self) -> tuple[list[str], list[str] | None]:
        """This model's background words and templates (`TextOverridable`)."""
        return list(self.background_queries), list(self.templates)

    def segment(
        self,
        image: np.ndarray,
        queries: list[str],
        *,
        background: Sequence[str] | None = None,
        templates: Sequence[str] | None = None,
    ) -> Prediction:
        """SAM regions classified by CLIP (`background` / `templates`: None = this model's own)."""
        check_image(image)
        queries = check_queries(queries)
        bg = self.background_queries if background is None else background
        texts = queries + check_background_queries(queries, bg)
        t0 = time.perf_counter()
        masks = np.asarray(self.masker(image), dtype=bool)
        masks = masks[masks.reshape(len(masks), -1).any(1)] if len(masks) else masks
        t1 = time.perf_counter()
        h, w = image.shape[:2]
        if len(masks) == 0:
            probs, covered = np.zeros((len(texts), h, w), np.float32), np.zeros((h, w), bool)
        else:
            cls = self.region_probs(image, masks, texts, templates).cpu().numpy()  # [N, T]
            count = masks.sum(0)
            covered = count > 0
            probs = np.tensordot(cls.T, masks.astype(np.float32), axes=1) / np.maximum(count, 1)
        t2 = time.perf_counter()
        trace = [{"step": 1, "alive": list(range(len(queries))), "proposals": int(len(masks)),
                  "time": {"proposals": t1 - t0, "classifier": t2 - t1}}]
        pred = probs_to_prediction(probs, len(queries), self.prob_threshold, covered=covered, trace=trace)
        trace[0]["kept"] = list(pred.kept)
        t0 = time.perf_counter()
        pred = apply_postprocess(image, pred, self.postprocess)
        trace[0]["time"]["postprocess"] = time.perf_counter() - t0
        return pred
