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

Cost per call: one no-grad pass through blocks 1..L−1, then ONE forward of the last block, from
which every query's gradient is taken. The part after the attention (residual, MLP, pooling,
softmax) is differentiated by autograd with a batch of one-hot cotangents, `query_chunk` at a time;
the attention itself by a closed form that returns only what Grad-CAM's channel weights use, the
gradient summed over patch tokens (see `_attention_backward_sums`), so no [K, N, C] gradient at
ln_1 and no [K, heads, N, N] score gradient is ever formed. Per query this is about two thirds of
one backward of the block, against a forward plus a backward per query before. `query_chunk=1`
keeps the official structure instead: for each query its own forward and backward of the last
block (the reference implementation). Both give the same maps (to float rounding).
`propose_batch` runs the no-grad part for images of the same CAM size as one batch.

Memory is bounded for large images (a 2048×1024 input on ViT-B/16 has N = 8193 tokens, and one
N×N float32 map is 268 MB): attention runs one head at a time (`head_averaged_attention`), the
affinity keeps a running mean of the blocks' maps rather than every map, the closed-form backward
recomputes one head's probabilities at a time, the box mask multiplies the CAM rather than a copy
of the transition matrix, and the batched backward through the MLP takes as many queries as
`GRAD_BUDGET_BYTES` allows (`backward_chunk`). None of this changes the maps beyond float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from carbench.models.backbones.vit import (
    AttentionMean,
    ClipBackbone,
    block_forward,
    head_averaged_attention,
    is_packed_attention,
)

EPS = 1e-15
GRAD_BUDGET_BYTES = 1 << 30  # memory for one batched backward through the last block's MLP (`backward_chunk`)


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
    """CLIP-ES transition matrix from attention maps [(1, N, N)] → [hw, hw]: `transition` of their mean."""
    return transition(torch.stack([a[0] for a in attn_maps]).float().mean(0))


def transition(mean_attn: torch.Tensor) -> torch.Tensor:
    """CLIP-ES transition matrix [hw, hw] from the block-mean attention map [N, N] (CLS first).

    CLS row/column removed, 3 rounds of column- then row-normalisation, symmetrised, then squared
    once (paper Eq. 8 with t = 2). The normalisation runs in place on one copy, so besides the
    input at most two [hw, hw] float32 matrices are alive at once (268 MB each at 2048×1024 on ViT-B/16).
    """
    w = mean_attn.float()[1:, 1:]
    w = w / w.sum(0, keepdim=True)
    w.div_(w.sum(1, keepdim=True))
    for _ in range(2):
        w.div_(w.sum(0, keepdim=True))
        w.div_(w.sum(1, keepdim=True))
    sym = w + w.T
    del w
    sym.div_(2)
    return sym @ sym


def _image_embedding(bb: ClipBackbone, block: torch.nn.Module, x_in: torch.Tensor, attn_out: torch.Tensor):
    """The CAM's normalised image embedding [B, D] from the last block's attention output: the rest of
    the block (residual, MLP) and CLIP-ES's patch-mean pooling."""
    y = x_in + block.ls_1(attn_out)
    y = y + block.ls_2(block.mlp(block.ln_2(y)))
    return F.normalize(bb.patch_mean_embedding(y).float(), dim=-1)


def _check_attention(block: torch.nn.Module) -> torch.nn.MultiheadAttention:
    """The last block's attention, if it is the packed, batch-first nn.MultiheadAttention the shared
    backward is derived for (every open_clip ViT block that `block_forward` accepts)."""
    attn = getattr(block, "attn", None)
    if not is_packed_attention(attn):
        raise NotImplementedError(
            f"the CLIP-ES proposer's Grad-CAM needs the last block's attention to be a batch-first, packed "
            f"nn.MultiheadAttention without extra key/value biases (open_clip's ResidualAttentionBlock), got "
            f"{type(attn).__name__} in {type(block).__name__}; pick a preset whose ViT uses that block"
        )
    return attn


class _AttentionParts(NamedTuple):
    """One image's per-head attention quantities [H, N, ·] in float32, shared by every query.

    The probabilities P [H, N, N] are not kept (3.2 GB for a 2048×1024 image on ViT-B/16): only
    their CLS column, and `_head_probs` recomputes one head's P where a full one is needed.
    """

    q: torch.Tensor  # [H, N, dh] queries (unscaled)
    k: torch.Tensor  # [H, N, dh]
    v: torch.Tensor  # [H, N, dh]
    p_cls: torch.Tensor  # [H, N] attention of every token to the CLS token: P[:, :, 0]
    o: torch.Tensor  # [H, N, dh] P·V, before the output projection


def _head_probs(q: torch.Tensor, k: torch.Tensor, h: int) -> torch.Tensor:
    """Attention probabilities [N, N] of head h (rows sum to one) from unscaled q, k [H, N, dh]."""
    return ((q[h] * q.shape[-1] ** -0.5) @ k[h].transpose(-1, -2)).softmax(-1)


def _attention_parts(attn: torch.nn.MultiheadAttention, a: torch.Tensor) -> _AttentionParts:
    """Recompute q, k, v, P's CLS column and P·V of `attn` on one image's tokens a [N, C] (no grad),
    one head's P at a time."""
    n, c = a.shape
    h = attn.num_heads
    dh = c // h
    b_in = attn.in_proj_bias.float() if attn.in_proj_bias is not None else None
    q, k, v = F.linear(a.float(), attn.in_proj_weight.float(), b_in).view(n, 3, h, dh).permute(1, 2, 0, 3)
    o = torch.empty_like(v)
    p_cls = q.new_empty(h, n)
    for i in range(h):
        p = _head_probs(q, k, i)
        o[i] = p @ v[i]
        p_cls[i] = p[:, 0]
        del p
    return _AttentionParts(q, k, v, p_cls, o)


def _attention_backward_sums(
    attn: torch.nn.MultiheadAttention, parts: _AttentionParts, g_out: torch.Tensor
) -> torch.Tensor:
    """Σ over patch tokens of d(target)/d a, for K targets at once: [K, C], where a [N, C] is the
    attention's input (one image's ln_1 output, `parts` computed from it) and g_out [K, N, C] are the
    targets' cotangents at the attention's output.

    Grad-CAM's channel weight is the patch-token mean of this gradient, and the input projection is
    linear, so summing the q/k/v gradients over tokens before projecting back is exact. The sums
    themselves avoid the full [K, heads, N, N] score gradient: softmax rows sum to one (v's sum), the
    softmax Jacobian's rows sum to zero (k's sum needs only the CLS column), and q's sum needs the
    score gradient's column sums, which are one P^T·g product per query. Everything in float32.
    """
    q, k, v, p_cls, o = parts
    h, n, dh = q.shape
    scale = dh**-0.5
    g_o = (g_out.float() @ attn.out_proj.weight.float()).view(len(g_out), n, h, dh).transpose(1, 2)  # [K,H,N,dh]
    r = (g_o * o).sum(-1)  # [K, H, N]: Σ_u P[s,u]·dP[s,u] with dP[s,t] = g_o[s]·v[t]
    s_v = ((1 - p_cls)[None, :, :, None] * g_o).sum(2)  # Σ_{t≥1} Σ_s P[s,t] g_o[s]
    ds_cls = p_cls * ((g_o * v[:, :1]).sum(-1) - r)  # score gradient's CLS column dS[s, 0]
    s_k = -scale * (ds_cls[..., None] * q).sum(2)  # Σ_{t≥1} dS[s,t] = −dS[s,0]
    # One head at a time, P recomputed (`_head_probs`): a [H, N, N] P is 3.2 GB for a 2048×1024
    # ViT-B/16 input. einsum, not `p_rows @ g_o`: a broadcast matmul would copy P once per query;
    # einsum folds K into the columns of one product per head.
    pg = torch.empty(len(g_o), h, n, dh, dtype=g_o.dtype, device=g_o.device)
    pr = torch.empty(len(g_o), h, n, dtype=g_o.dtype, device=g_o.device)
    for i in range(h):
        p_rows = _head_probs(q, k, i)[None, 1:].transpose(-1, -2)  # [1, N, N−1]: patch rows of P, transposed
        pg[:, i : i + 1] = torch.einsum("hst,khtd->khsd", p_rows, g_o[:, i : i + 1, 1:])
        pr[:, i : i + 1] = torch.einsum("hst,kht->khs", p_rows, r[:, i : i + 1, 1:])
        del p_rows
    col = (v * pg).sum(-1) - pr  # Σ_{s≥1} dS[s,t]
    s_q = scale * (col[..., None] * k).sum(2)  # [K, H, dh]
    sums = torch.cat([s.flatten(1) for s in (s_q, s_k, s_v)], 1)  # [K, 3C], in_proj's q|k|v order
    return sums @ attn.in_proj_weight.float()


def last_block_grad_cams(
    bb: ClipBackbone,
    a_in: torch.Tensor,
    x_in: torch.Tensor,
    text: torch.Tensor,
    n_fg: int,
    grid: tuple[int, int],
    query_chunk: int,
) -> torch.Tensor:
    """Grad-CAM maps [n_fg, h, w] of the first n_fg rows of `text` [K, D], from ONE forward of the last block.

    `a_in`, `x_in` [1, N, C]: the last block's ln_1 output and its input (the residual). The part of
    the block after the attention is differentiated by autograd with a batch of one-hot cotangents
    (`is_grads_batched`, at most `query_chunk` at a time), which gives each query's gradient at the
    attention's output; the attention itself is differentiated by `_attention_backward_sums`, which
    returns directly the token sums Grad-CAM's channel weights need.
    """
    block = bb.blocks[-1]
    attn = _check_attention(block)
    acts = a_in[0, 1:].detach().float()  # [hw, C]
    hw = acts.shape[0]
    with torch.no_grad():
        parts = _attention_parts(attn, a_in[0])
        attn_out = head_averaged_attention(attn, a_in, need_weights=False)[0]  # one head's scores at a time
    attn_out.requires_grad_(True)  # autograd starts here: the attention's own backward is the closed form
    with torch.enable_grad():
        img = _image_embedding(bb, block, x_in.detach(), attn_out)
        probs = (bb.logit_scale * img @ text.T).softmax(-1)[0, :n_fg]
    sub = backward_chunk(a_in.shape[1], block.mlp.c_fc.out_features)
    cams = []
    for start in range(0, n_fg, query_chunk):
        m = min(query_chunk, n_fg - start)
        g_out = torch.cat([_output_cotangents(probs, attn_out, start + s, min(sub, m - s)) for s in range(0, m, sub)])
        alpha = _attention_backward_sums(attn, parts, g_out[:, 0]) / hw  # [m, C]
        cams.append(F.relu(acts @ alpha.T).T.reshape(m, *grid))
    return torch.cat(cams, 0)


def backward_chunk(n_tokens: int, mlp_width: int, budget_bytes: int = GRAD_BUDGET_BYTES) -> int:
    """Queries per batched autograd backward through the last block's MLP, so that its per-query
    [N, mlp_width] float32 temporaries (about four alive at once) fit in `budget_bytes`; at least one.

    At 2048×1024 on ViT-B/16 each query costs about 0.4 GB there (N = 8193, width 3072), so 19
    queries in one backward would need about 7 GB; small inputs still take every query at once.
    """
    return max(1, budget_bytes // (4 * 4 * n_tokens * mlp_width))


def _output_cotangents(probs: torch.Tensor, attn_out: torch.Tensor, first: int, m: int) -> torch.Tensor:
    """Gradients [m, 1, N, C] of probs[first : first + m] w.r.t. the attention output, one batched backward."""
    onehot = torch.zeros(m, probs.shape[-1], dtype=probs.dtype, device=probs.device)
    onehot[:, first : first + m] = torch.eye(m, dtype=probs.dtype, device=probs.device)
    (g_out,) = torch.autograd.grad(probs, attn_out, onehot, retain_graph=True, is_grads_batched=True)
    return g_out


@dataclass
class _CamFeatures:
    """What the CAM needs from the frozen part of the ViT for a batch of same-size inputs."""

    x_in: torch.Tensor  # [B, N, C] the last block's input
    a_in: torch.Tensor  # [B, N, C] its ln_1 output (where the gradient is taken)
    attn_mean: torch.Tensor | None  # [B, N, N] mean of the affinity blocks' head-averaged maps (None without refine)
    grid: tuple[int, int]


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
        if isinstance(query_chunk, bool) or not isinstance(query_chunk, int) or query_chunk < 1:
            raise ValueError(
                f"model.proposer.query_chunk must be an int ≥ 1 (queries per batched backward; 1 = one "
                f"forward and backward per query, the official structure), got {query_chunk!r}"
            )
        if isinstance(affinity_blocks, bool) or not isinstance(affinity_blocks, int) or affinity_blocks < 1:
            raise ValueError(
                f"model.affinity_blocks must be an integer ≥ 1 (CLIP-ES averages the attention of the last N blocks; "
                f"a value above the CLIP's depth means all of them), got {affinity_blocks!r}; CLIP-ES uses 8"
            )
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
        """Grad-CAM maps [n_fg, h, w] from the last block's ln_1 output `a_in` [1, N, C]: the shared
        forward (`last_block_grad_cams`), or the official per-query structure when `query_chunk=1`."""
        if self.query_chunk == 1:
            return self._grad_cams_per_query(a_in, x_in, text, n_fg, grid)
        return last_block_grad_cams(self.backbone, a_in, x_in, text, n_fg, grid, self.query_chunk)

    def _grad_cams_per_query(self, a_in: torch.Tensor, x_in: torch.Tensor, text: torch.Tensor, n_fg: int, grid):
        """The official structure (`query_chunk=1`, `model.impl=reference`): for each query its own
        forward of the last block and its own backward."""
        bb = self.backbone
        block = bb.blocks[-1]
        cams = []
        for i in range(n_fg):
            a = a_in.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                attn_out = block.attn(a, a, a, need_weights=False)[0]
                probs = (bb.logit_scale * _image_embedding(bb, block, x_in, attn_out) @ text.T).softmax(-1)
                (grad,) = torch.autograd.grad(probs[0, i], a)
            alpha = grad[0, 1:].float().mean(0)  # spatial mean of the gradient per channel
            cams.append(F.relu(a_in[0, 1:].float() @ alpha).view(*grid))
        return torch.stack(cams)

    def propose_texts(self, image: np.ndarray, fg_texts: Sequence[str], background: Sequence[str] = ()) -> np.ndarray:
        """Soft proposals [K, H, W] float32 in [0, 1] for the given (already templated) query texts."""
        if len(fg_texts) == 0:
            raise ValueError("propose() needs at least one query")
        feats = self._features(self.cam_input(image))
        return self._maps(feats, 0, image.shape[:2], fg_texts, background)

    def propose_batch(
        self,
        images: Sequence[np.ndarray],
        queries: Sequence[Sequence[str]],
        background: Sequence[str],
        steps: Sequence[int],
    ) -> list[np.ndarray]:
        """`BatchProposer.propose_batch`: image i with its own queries and step, each result equal to
        `propose(images[i], queries[i], background, steps[i])`.

        Images whose CAM input has the same size share one batched pass through the embedding and
        blocks 1..L−1 (attention maps included); the Grad-CAM gradients and the refinement then run
        per image, since every image has its own queries.
        """
        if not len(images) == len(queries) == len(steps):
            raise ValueError(
                f"propose_batch needs one query list and one step per image, got {len(images)} images, "
                f"{len(queries)} query lists and {len(steps)} steps"
            )
        for i, q in enumerate(queries):
            if len(q) == 0:
                raise ValueError(f"propose_batch: image {i} has no queries; propose() needs at least one query")
        inputs = [self.cam_input(im) for im in images]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, x in enumerate(inputs):
            groups.setdefault(tuple(x.shape), []).append(i)
        out: list[np.ndarray | None] = [None] * len(images)
        for members in groups.values():
            feats = self._features(torch.cat([inputs[i] for i in members], 0))
            for row, i in enumerate(members):
                texts = self.cam_texts(queries[i], steps[i])
                out[i] = self._maps(feats, row, images[i].shape[:2], texts, background)
        return out  # type: ignore[return-value]

    def _features(self, x: torch.Tensor) -> _CamFeatures:
        """The no-grad part for a batch of CAM inputs [B, 3, H', W'] of one size."""
        bb = self.backbone
        L = len(bb.blocks)
        with torch.no_grad():
            tokens, grid = bb.embed(x)
            first_attn = max(0, L - self.affinity_blocks) if self.refine else None
            acc = AttentionMean()  # one running N×N sum per image, not one map per block
            x_in, _ = bb.run_blocks(tokens, 0, L - 1, attn_from=first_attn, attn_mean=acc, by_head=True)
            a_in = bb.blocks[-1].ln_1(x_in)
            if self.refine:  # the last block's attention map, from the same input as the grad pass
                _, last = block_forward(bb.blocks[-1], x_in, need_attn=True)
                acc.add(last)
                del last
        return _CamFeatures(x_in, a_in, acc.mean() if self.refine else None, grid)

    def _maps(
        self, feats: _CamFeatures, row: int, size: tuple[int, int], fg_texts: Sequence[str], background: Sequence[str]
    ) -> np.ndarray:
        """Proposals [K, H, W] of image `row` of `feats`: Grad-CAM, the empty-CAM redo, the refinement."""
        grid = feats.grid
        x_in, a_in = feats.x_in[row : row + 1], feats.a_in[row : row + 1]
        n = len(fg_texts)
        cams = self._grad_cams(a_in, x_in, self.text_matrix(fg_texts, background), n, grid)
        empty = cams.flatten(1).amax(1) <= 0
        if empty.any() and background:  # official rule: redo with fg texts only
            redo = self._grad_cams(a_in, x_in, self.text_matrix(fg_texts), n, grid)
            cams[empty] = redo[empty]
        cams = minmax(cams.detach())
        if self.refine:
            trans = transition(feats.attn_mean[row])
            refined = []
            for cam in cams:
                mask = torch.from_numpy(box_mask(cam.cpu().numpy(), self.lam, self.box_end_quirk)).to(trans.device)
                # trans @ (mask·cam): the products of (trans·mask) @ cam (mask is 0/1) without an N×N copy
                r = trans @ (mask.flatten().float() * cam.flatten())
                refined.append(r.view(grid))
            cams = minmax(torch.stack(refined))
        maps = cams.cpu().numpy().astype(np.float32)
        h, w = size
        return np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) for m in maps]).clip(0, 1)
