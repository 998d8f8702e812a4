"""Mask classifier: how well does each visually prompted image match its own query?

docs/method.md §1.4. Each prompted image i (drawn for query i) is encoded once; for every template
t the probabilities p_t = softmax_j(scale · cos(img_i, text_{t,j})) over the current queries are
summed over templates and, as in the official code, passed through a second softmax
(`double_softmax`). The score of query i is P[i, i]. Text embeddings come from the backbone's cache,
so each (query, template) string is encoded once per run, not once per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from carbench.models.backbones.vit import ClipBackbone


def check_templates(templates: Sequence[str] | str) -> list[str]:
    """The templates as a list, or a ValueError naming the bad ones (each needs one '{}' slot)."""
    if isinstance(templates, str):
        templates = [templates]
    if not templates:
        raise ValueError("the classifier needs at least one template: set model.templates, e.g. ['a photo of a {}.']")
    bad = [t for t in templates if not isinstance(t, str) or t.count("{}") != 1]
    if bad:
        raise ValueError(
            f"every classifier template needs exactly one '{{}}' slot where the query goes; bad: {bad} "
            "(fix model.templates, e.g. 'a photo of a {}.')"
        )
    return list(templates)


class MaskClassifier:
    """CaR's mask scorer (implements `MaskScorer`, models/components.py): CLIP on prompted images."""

    def __init__(
        self,
        backbone: ClipBackbone,
        templates: Sequence[str] = ("a clean origami {}.",),
        double_softmax: bool = True,
        skip_last_block: bool = True,
        center_crop: bool = True,
        batch_size: int = 32,
        encode_per_template: bool = False,
    ) -> None:
        self.backbone = backbone
        self.templates = check_templates(templates)
        self.double_softmax = double_softmax
        self.skip_last_block = skip_last_block
        self.center_crop = center_crop
        self.batch_size = batch_size
        self.encode_per_template = encode_per_template  # official structure: same images re-encoded T times
        self.size = backbone.preset.image_size

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """CLIP's own transform: short side → size (bicubic, PIL), centre crop, normalise."""
        out = []
        for im in images:
            pil = TF.resize(Image.fromarray(im), self.size, interpolation=InterpolationMode.BICUBIC)
            if self.center_crop:
                pil = TF.center_crop(pil, self.size)
            else:
                pil = pil.resize((self.size, self.size), Image.BICUBIC)
            out.append(TF.to_tensor(pil))
        x = torch.stack(out).to(self.backbone.device)
        return (x - self.backbone.mean) / self.backbone.std

    def _templates(self, templates: Sequence[str] | None) -> list[str]:
        """This call's templates: the given ones (checked like the constructor's) or the scorer's own."""
        if templates is None:
            return self.templates
        return check_templates(templates)

    def warm_text(self, queries: Sequence[str], templates: Sequence[str] | None = None) -> None:
        """Encode every (query, template) text now; the backbone caches them for the rest of the run."""
        self.backbone.encode_text(list(queries), self._templates(templates))

    @torch.no_grad()
    def score_matrix(
        self, prompted: Sequence[np.ndarray], queries: Sequence[str], templates: Sequence[str] | None = None
    ) -> torch.Tensor:
        """P [images × queries]: each row a distribution over the current queries."""
        templates = self._templates(templates)
        if self.encode_per_template:
            probs = torch.stack([self._probs(self._embed(prompted), queries, [t])[0] for t in templates])
        else:
            probs = self._probs(self._embed(prompted), queries, templates)
        return self._combine(probs, len(templates))

    def _combine(self, probs: torch.Tensor, n_templates: int) -> torch.Tensor:
        """Per-template probabilities [T, images, queries] → P [images × queries] (sum, then softmax or mean)."""
        summed = probs.sum(0)
        return summed.softmax(-1) if self.double_softmax else summed / n_templates

    def _embed(self, prompted: Sequence[np.ndarray]) -> torch.Tensor:
        """Image embeddings [images, D], encoded in chunks of `batch_size` (bounds the memory of one pass)."""
        x = self.preprocess(prompted)
        return torch.cat(
            [
                self.backbone.encode_images(x[i : i + self.batch_size], skip_last_block=self.skip_last_block)
                for i in range(0, len(x), self.batch_size)
            ]
        )

    def _probs(self, emb: torch.Tensor, queries: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """Per-template probabilities [T, images, queries] of already encoded images (once for all templates)."""
        text = self.backbone.encode_text(queries, templates)  # [T, K, D]
        return (self.backbone.logit_scale * torch.einsum("nd,tkd->tnk", emb, text)).softmax(-1)

    def score(
        self, prompted: Sequence[np.ndarray], queries: Sequence[str], templates: Sequence[str] | None = None
    ) -> np.ndarray:
        """Diagonal scores s_i = P[i, i] for prompted image i drawn from query i."""
        if len(prompted) != len(queries):
            raise ValueError(f"{len(prompted)} prompted images for {len(queries)} queries")
        return self.score_matrix(prompted, queries, templates).diagonal().cpu().numpy().astype(np.float32)

    @torch.no_grad()
    def score_batch(
        self,
        prompted: Sequence[Sequence[np.ndarray]],
        queries: Sequence[Sequence[str]],
        templates: Sequence[str] | None = None,
    ) -> list[np.ndarray]:
        """`score` of several images at once (implements `BatchScorer`): every image's crops go through
        the image tower together, in chunks of `batch_size`, so a GPU sees full batches even when each
        image has only a few alive queries; the softmax over queries then stays within each image.

        The reference structure (`encode_per_template`) re-encodes per template by design, so it
        scores image by image."""
        if len(prompted) != len(queries):
            raise ValueError(f"prompted images for {len(prompted)} images but queries for {len(queries)}")
        for i, (p, q) in enumerate(zip(prompted, queries, strict=True)):
            if len(p) != len(q):
                raise ValueError(f"image {i} of the batch: {len(p)} prompted images for {len(q)} queries")
        if self.encode_per_template:
            return [self.score(p, q, templates) for p, q in zip(prompted, queries, strict=True)]
        templates = self._templates(templates)
        emb = self._embed([crop for p in prompted for crop in p])
        out, start = [], 0
        for q in queries:
            matrix = self._combine(self._probs(emb[start : start + len(q)], q, templates), len(templates))
            out.append(matrix.diagonal().cpu().numpy().astype(np.float32))
            start += len(q)
        return out
