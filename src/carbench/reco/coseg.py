"""ReCo's co-segmentation: find the pixel every retrieved image shares, and average it.

Given dense features of the k images retrieved for one concept, each pixel p gets a score: for
every retrieved image j, the highest (weighted) cosine similarity between p and any pixel of j,
averaged over the images. The seed of each image is its highest-scoring pixel, i.e. the pixel
whose best match is strong in all the other images: the object they have in common. The concept's
reference embedding is the mean of the seeds' features, L2-normalised.

Pixel weights in [0, 1] multiply the similarity *to* a pixel (the column of the affinity matrix),
so low-weight pixels cannot serve as anyone's best match:
- language guidance: sigmoid(τ · cos(dense-CLIP pixel, concept text)), τ = 10 as the authors;
- context elimination: Π_c (1 − sigmoid(cos(pixel, reference of context concept c))), which
  suppresses pixels that look like common co-occurring stuff (sky, road, … or, in the toy world,
  its background textures).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class CoSegResult:
    reference: torch.Tensor  # [C], L2-normalised
    seeds: list[tuple[int, int, int]]  # (image, row, col) of each image's seed pixel
    scores: torch.Tensor  # [N, h, w] seed scores


def seed_scores(feats: torch.Tensor, weights: torch.Tensor | None = None, row_block: int = 4096) -> torch.Tensor:
    """Seed score of every pixel: mean over images j of max over pixels q of j of cos(p, q)·w(q).

    feats: [N, P, C] (any norm; normalised here); weights: [N, P] in [0, 1] or None → [N, P].
    Rows are processed in blocks so k = 50 images at 28×28 never build the full affinity matrix.
    """
    n, p, c = feats.shape
    flat = F.normalize(feats.reshape(n * p, c).float(), dim=-1)
    w = None if weights is None else weights.reshape(1, n, p).float()
    out = torch.empty(n * p)
    for start in range(0, n * p, row_block):
        sim = (flat[start:start + row_block] @ flat.T).view(-1, n, p)  # [R, N, P]
        if w is not None:
            sim = sim * w
        out[start:start + row_block] = sim.amax(dim=2).mean(dim=1)
    return out.view(n, p)


def cosegment(feats: torch.Tensor, weights: torch.Tensor | None = None) -> CoSegResult:
    """feats [N, h, w, C] of the retrieved images (+ optional weights [N, h, w]) → reference and seeds."""
    if feats.ndim != 4 or feats.shape[0] < 1:
        raise ValueError(f"co-segmentation needs features [N, h, w, C] of ≥ 1 image, got {tuple(feats.shape)}")
    n, h, w, c = feats.shape
    if weights is not None:
        if tuple(weights.shape) != (n, h, w):
            raise ValueError(f"weights must be [N, h, w] = {(n, h, w)}, got {tuple(weights.shape)}")
        if weights.min() < -1e-6 or weights.max() > 1 + 1e-6:
            raise ValueError(f"weights must lie in [0, 1], got [{float(weights.min())}, {float(weights.max())}]")
    scores = seed_scores(feats.reshape(n, h * w, c), None if weights is None else weights.reshape(n, h * w))
    best = scores.argmax(dim=1)
    seeds = [(i, int(b) // w, int(b) % w) for i, b in enumerate(best.tolist())]
    seed_feats = torch.stack([feats[i, y, x].float() for i, y, x in seeds])
    reference = F.normalize(seed_feats.mean(0), dim=0)  # raw seed features averaged, as the authors' code
    return CoSegResult(reference, seeds, scores.view(n, h, w))


def text_weights(cos: torch.Tensor, temperature: float = 10.0) -> torch.Tensor:
    """Language guidance: sigmoid(τ · cosine) of dense-CLIP pixels with the concept's text."""
    return torch.sigmoid(temperature * cos)


def context_weights(feats: torch.Tensor, context_refs: torch.Tensor) -> torch.Tensor:
    """Π_c (1 − sigmoid(cos(pixel, ref_c))) for feats [..., C] and context references [M, C] → [...]."""
    if context_refs.numel() == 0:
        return torch.ones(feats.shape[:-1])
    cos = F.normalize(feats.float(), dim=-1) @ F.normalize(context_refs.float(), dim=-1).T  # [..., M]
    return (1 - torch.sigmoid(cos)).prod(dim=-1)
