"""Localisation aids of the toy trainer that read CaR's own proposal path (used in training only).

A CLIP trained on captions alone localises by accident; on real data that accident comes from
400 M images, on toy scenes it has to be asked for. The two aids here ask for exactly what CaR's
proposer reads at evaluation, so the toy benchmark measures CaR's method and not how lucky the
toy CLIP's gradients are:

- `gradcam_loss` (aid 4): the Grad-CAM of the proposer (`models/proposals/clip_es.py`): softmax
  over foreground + background texts, gradient w.r.t. the last block's ``ln_1`` output, spatially
  averaged, dotted with that output, is computed *with its graph* (double backward) and pulled
  towards each present class's patch coverage. Computed on the same token states and texts the
  evaluation uses, so what improves here is what CaR sees.
- `attention_affinity_loss` (aid 5): CLIP-ES refines a CAM with the attention of the last blocks
  (patch-to-patch transition matrix). Each such block's head-averaged attention of a patch is
  pulled towards the patches of its own segment (same object, or background), so the refinement
  has an affinity worth propagating along.

Both only add loss terms; the architecture and the evaluation path are unchanged.

Why these re-implement what the library computes at evaluation: the library's Grad-CAM
(`models/proposals/clip_es.py`) and attention maps (`models/backbones/vit.block_forward`) run
without a graph on a frozen backbone, while a loss needs them differentiable (`gradcam_loss`
needs the CAM's own gradient: double backward). `attention_probs` also differs from
`block_forward`'s maps in the last bits (it scales q·k after the product, torch's attention
scales q before it), and the shipped weights were trained with this version.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["attention_probs", "gradcam_loss", "attention_affinity_loss"]


def attention_probs(block: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Head-averaged attention probabilities [B, N, N] of `block` on its input `h` [B, N, C]."""
    attn = block.attn
    y = block.ln_1(h)
    c = y.shape[-1]
    q, k = F.linear(y, attn.in_proj_weight[: 2 * c], attn.in_proj_bias[: 2 * c]).chunk(2, dim=-1)
    nh = attn.num_heads
    b, n, _ = q.shape
    q = q.view(b, n, nh, c // nh).transpose(1, 2)
    k = k.view(b, n, nh, c // nh).transpose(1, 2)
    return ((q @ k.transpose(-1, -2)) / (c // nh) ** 0.5).softmax(-1).mean(1)


def gradcam_loss(
    model,
    prev: torch.Tensor,
    texts: torch.Tensor,
    in_softmax: torch.Tensor,
    target_col: torch.Tensor,
    coverage: torch.Tensor,
) -> torch.Tensor:
    """Mean squared error between the proposer's (max-normalised) Grad-CAM and patch coverage.

    Args:
        prev: token states after block L−1 for each replica [R, 1+HW, C] (one replica per
            (scene, query) pair; rows may repeat a scene).
        texts: normalised text embeddings [T, D]: foreground queries then background words.
        in_softmax: bool [R, T], which texts are in replica r's softmax (CaR's current queries +
            the background words).
        target_col: long [R], the text whose probability replica r differentiates.
        coverage: [R, HW] fraction of each patch covered by that query's object.

    The CAM's linear part z = ⟨mean_p ∂P/∂a_p, a_p⟩ is divided by its (detached) largest absolute
    value; inside the object it is pulled to the coverage, outside only its positive part is
    pulled to 0 (the evaluation applies a ReLU, so negative values there are already right).
    """
    last = model.visual.transformer.resblocks[-1]
    a = last.ln_1(prev)
    with sdpa_kernel(SDPBackend.MATH):  # the fused CPU kernel has no double backward
        y = prev + last.ls_1(last.attn(a, a, a, need_weights=False)[0])
        y = y + last.ls_2(last.mlp(last.ln_2(y)))
        img = F.normalize(model.visual.ln_post(y[:, 1:]).mean(1) @ model.visual.proj, dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * img @ texts.T
        logits = logits.masked_fill(~in_softmax, float("-inf"))
        probs = logits.softmax(-1).gather(1, target_col[:, None]).sum()
        (grad,) = torch.autograd.grad(probs, a, create_graph=True)
    acts = a[:, 1:]
    z = (grad[:, 1:].mean(1, keepdim=True) * acts).sum(-1)  # [R, HW]
    zn = z / (z.detach().abs().amax(-1, keepdim=True) + 1e-12)
    inside = coverage > 0
    err = torch.where(inside, zn - coverage, F.relu(zn))
    return (err**2).mean()


def attention_affinity_loss(attn: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of patch-to-patch attention [B, 1+HW, 1+HW] against same-segment targets.

    `segments` [B, HW] holds each patch's majority label (0 = background). Row p's target is
    uniform over the patches with p's label; the CLS row and column carry no target (CLS gets
    no attention mass in the target, so mass sent to it counts as a miss).
    """
    same = (segments[:, :, None] == segments[:, None, :]).float()
    target = same / same.sum(-1, keepdim=True)
    logp = attn[:, 1:, 1:].clamp_min(1e-8).log()
    return -(target * logp).sum(-1).mean()
