"""Mask proposals from Grad-CAM over CLIP, with CLIP-ES's class-aware attention affinity (CAA).

This is CaR's proposal generator (docs/method.md §1.3): for each foreground query, Grad-CAM of the
softmax probability (over foreground + background queries) w.r.t. the last block's `ln_1` output,
min-max normalised; then (CLIP-ES) refined by a Sinkhorn-normalised, symmetrised, squared
attention affinity restricted to the boxes around the CAM's confident regions.
`refine=False` gives plain Grad-CAM (the paper's Table 2 ablation).

Two official-code behaviours are switches here (docs/method.md §5.2, both default to the official code):
- `box_end_quirk`: the official box end is clipped to size − 1 and then used as an exclusive slice
  end, so a box that touches the right (bottom) edge of the patch grid loses its last column (row).
- `pil_resize`: the image is brought to a multiple of the patch size by resizing the uint8 image
  with PIL's bicubic filter (so the CAM input is quantised to 8 bits), not by interpolating floats.

Cost per call: one no-grad pass through blocks 1..L−1, then the last block is run once on a
batch that replicates its input once per query, so ONE backward yields every query's gradient
(each replica only influences its own query's output). This is output-identical to one backward
per query, which is what the official code does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from carbench.models.backbones.vit import ClipBackbone, block_forward

EPS = 1e-15


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Scale the last two dims of x to [0, 1] (a constant map becomes 0)."""
    flat = x.flatten(-2)
    lo = flat.min(-1, keepdim=True).values
    hi = flat.max(-1, keepdim=True).values
    return ((flat - lo) / (hi - lo + EPS)).view_as(x)


def box_mask(cam: np.ndarray, lam: float, box_end_quirk: bool = True) -> np.ndarray:
    """Patch-level boolean mask of the bounding boxes around the CAM's regions above λ·max.

    The CAM is quantised to uint8 (0..255) and thresholded strictly at int(λ·max) like OpenCV's
    THRESH_BINARY; every external and internal contour contributes its bounding box. If nothing
    survives, λ is lowered by 0.1 until something does (docs/method.md §1.3).
    `box_end_quirk=True` clips each box's exclusive end to (width − 1, height − 1) as the official
    code does, so a box reaching the grid's right or bottom edge loses that last column or row;
    False covers the whole box.
    """
    gray = (np.clip(cam, 0, 1) * 255).astype(np.uint8)
    out = np.zeros(cam.shape, dtype=bool)
    peak = int(gray.max())
    if peak == 0:
        return out
    t = lam
    while True:
        _, binary = cv2.threshold(gray, int(t * peak), 255, cv2.THRESH_BINARY)
        contours, _ = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
        if contours or t <= 0:
            break
        t -= 0.1
    rows, cols = cam.shape
    for c in contours:
        x, y, w, h = cv2.boundingRect(c)
        x1, y1 = x + w, y + h
        if box_end_quirk:
            x1, y1 = min(x1, cols - 1), min(y1, rows - 1)
        out[y:y1, x:x1] = True
    return out


def affinity(attn_maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """CLIP-ES transition matrix from attention maps [(1, N, N)] → [hw, hw].

    Mean over the given blocks, CLS row/column removed, 3 rounds of column- then row-normalisation,
    symmetrised, then squared once (paper Eq. 8 with t = 2).
    """
    w = torch.stack([a[0] for a in attn_maps]).float().mean(0)[1:, 1:]
    for _ in range(3):
        w = w / w.sum(0, keepdim=True)
        w = w / w.sum(1, keepdim=True)
    w = (w + w.T) / 2
    return w @ w


class ClipESProposer:
    """Soft mask proposals for a list of queries, one per query, at the image's native size.

    Implements `Proposer` (models/components.py). The CAM texts are this proposer's business:
    background words always carry `cam_template`; the queries do too, except at step 1 when
    `cam_text_quirk` is on (quirk A: the official code shows the raw query text first).
    """

    def __init__(
        self,
        backbone: ClipBackbone,
        clipes_threshold: float = 0.4,
        refine: bool = True,
        cam_template: str = "a clean origami {}.",
        affinity_blocks: int = 8,
        query_chunk: int = 32,
        box_end_quirk: bool = True,
        pil_resize: bool = True,
        cam_text_quirk: bool = True,
    ) -> None:
        if not 0.0 <= clipes_threshold <= 1.0:
            raise ValueError(f"clipes_threshold (λ) must be in [0, 1], got {clipes_threshold}")
        if not isinstance(cam_template, str) or cam_template.count("{}") != 1:
            raise ValueError(f"model.proposer.cam_template needs exactly one '{{}}' slot, got {cam_template!r}")
        self.backbone = backbone
        self.lam = clipes_threshold
        self.refine = refine
        self.cam_template = cam_template
        self.affinity_blocks = affinity_blocks
        self.query_chunk = query_chunk
        self.box_end_quirk = box_end_quirk
        self.pil_resize = pil_resize
        self.cam_text_quirk = cam_text_quirk

    def cam_texts(self, queries: Sequence[str], step: int) -> list[str]:
        """Quirk A: raw query text at step 1, the CAM template from step 2 on (switchable)."""
        if step == 1 and self.cam_text_quirk:
            return list(queries)
        return [self.cam_template.format(q) for q in queries]

    def proposal_key(self, queries: Sequence[str], background: Sequence[str], step: int) -> tuple:
        """The maps depend on the image and exactly these texts (see `KeyedProposer`)."""
        return tuple(self.cam_texts(queries, step)), tuple(background)

    def warm(self, queries: Sequence[str], background: Sequence[str]) -> None:
        """Encode both steps' texts now (the backbone caches them, so later steps and images are free)."""
        self.text_matrix(self.cam_texts(queries, 1), background)
        self.text_matrix(self.cam_texts(queries, 2), background)

    def propose(self, image: np.ndarray, queries: Sequence[str], background: Sequence[str], step: int) -> np.ndarray:
        """`Proposer.propose`: this step's CAM texts for `queries`, then `propose_texts`."""
        return self.propose_texts(image, self.cam_texts(queries, step), background)

    def cam_input(self, image: np.ndarray) -> torch.Tensor:
        """The normalised CAM input [1, 3, H', W'], H' and W' the next multiples of the patch size.

        `pil_resize=True` resizes the uint8 image with PIL's bicubic filter first (the result is
        quantised back to 8 bits, as the official code's torchvision-on-PIL transform does);
        False lets the backbone interpolate the float image.
        """
        if not self.pil_resize:
            return self.backbone.to_input(image)
        h, w = image.shape[:2]
        p = self.backbone.patch_size
        size = (math.ceil(w / p) * p, math.ceil(h / p) * p)  # PIL takes (width, height)
        if size != (w, h):
            image = np.array(Image.fromarray(np.ascontiguousarray(image)).resize(size, Image.BICUBIC))
        return self.backbone.to_input(image)

    def text_matrix(self, fg_texts: Sequence[str], background: Sequence[str] = ()) -> torch.Tensor:
        """[fg ; bg] normalised text embeddings; bg always carries the CAM template."""
        fg = self.backbone.encode_strings(list(fg_texts))
        if not background:
            return fg
        bg = self.backbone.encode_strings([self.cam_template.format(b) for b in background])
        return torch.cat([fg, bg], 0)

    def _grad_cams(self, a_in: torch.Tensor, x_in: torch.Tensor, text: torch.Tensor, n_fg: int, grid):
        """Grad-CAM maps [n_fg, h, w] from the last block's ln_1 output `a_in` [1, N, C]."""
        bb = self.backbone
        block = bb.blocks[-1]
        cams = []
        for start in range(0, n_fg, self.query_chunk):
            idx = torch.arange(start, min(start + self.query_chunk, n_fg), device=a_in.device)
            a = a_in.expand(len(idx), -1, -1).clone().requires_grad_(True)
            x = x_in.expand(len(idx), -1, -1)
            with torch.enable_grad():
                attn_out = block.attn(a, a, a, need_weights=False)[0]
                y = x + block.ls_1(attn_out)
                y = y + block.ls_2(block.mlp(block.ln_2(y)))
                img = F.normalize(bb.patch_mean_embedding(y).float(), dim=-1)
                probs = (bb.logit_scale * img @ text.T).softmax(-1)
                target = probs[torch.arange(len(idx)), idx].sum()
                (grad,) = torch.autograd.grad(target, a)
            acts = a.detach()[:, 1:].float()  # [n, hw, C]
            g = grad[:, 1:].float()
            alpha = g.mean(1, keepdim=True)  # spatial mean of the gradient per channel
            cam = F.relu((alpha * acts).sum(-1)).view(len(idx), *grid)
            cams.append(cam)
        return torch.cat(cams, 0)

    def propose_texts(self, image: np.ndarray, fg_texts: Sequence[str], background: Sequence[str] = ()) -> np.ndarray:
        """Soft proposals [K, H, W] float32 in [0, 1] for the given (already templated) query texts."""
        if len(fg_texts) == 0:
            raise ValueError("propose() needs at least one query")
        bb = self.backbone
        h, w = image.shape[:2]
        L = len(bb.blocks)
        with torch.no_grad():
            tokens, grid = bb.embed(self.cam_input(image))
            first_attn = max(0, L - self.affinity_blocks) if self.refine else None
            x_in, attn_maps = bb.run_blocks(tokens, 0, L - 1, attn_from=first_attn)
            a_in = bb.blocks[-1].ln_1(x_in)
            if self.refine:  # the last block's attention map, from the same input as the grad pass
                _, last = block_forward(bb.blocks[-1], x_in, need_attn=True)
                attn_maps.append(last)
        n = len(fg_texts)
        cams = self._grad_cams(a_in, x_in, self.text_matrix(fg_texts, background), n, grid)
        empty = cams.flatten(1).amax(1) <= 0
        if empty.any() and background:  # official rule: redo with fg texts only
            redo = self._grad_cams(a_in, x_in, self.text_matrix(fg_texts), n, grid)
            cams[empty] = redo[empty]
        cams = minmax(cams.detach())
        if self.refine:
            trans = affinity(attn_maps)
            refined = []
            for cam in cams:
                mask = torch.from_numpy(box_mask(cam.cpu().numpy(), self.lam, self.box_end_quirk)).to(trans.device)
                r = (trans * mask.flatten()[None, :].float()) @ cam.flatten()
                refined.append(r.view(grid))
            cams = minmax(torch.stack(refined))
        maps = cams.cpu().numpy().astype(np.float32)
        return np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) for m in maps]).clip(0, 1)
