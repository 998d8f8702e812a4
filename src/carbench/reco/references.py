"""Reference embeddings per concept: retrieve k archive images, co-segment them, cache the result.

One `ReferenceStore` serves a whole run: each concept is retrieved and co-segmented once, and the
result is kept under the key (concept, index fingerprint, dense backbone, k, guidance switches), so
a benchmark of 80 classes does the work 80 times, not once per image. Context concepts (ReCo's
"context elimination") are co-segmented first without elimination; a query that is itself a
context concept reuses that reference, as the authors' code does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from carbench.reco.archive import Archive
from carbench.reco.coseg import context_weights, cosegment, text_weights
from carbench.reco.dense import DenseBackbone
from carbench.reco.index import EmbeddingIndex, clip_input
from carbench.reco.knn import topk


def center_square(image: np.ndarray, size: int) -> np.ndarray:
    """Short-side resize + centre crop to size×size, as uint8 RGB (what both CLIP and the dense backbone see)."""
    x = clip_input([image], size, torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1))
    return (x[0].permute(1, 2, 0).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)


class ReferenceStore:
    """Concept → reference embedding [C], computed on first use and cached."""

    def __init__(
        self,
        index: EmbeddingIndex,
        archive: Archive,
        retrieval_clip,
        retrieval_templates: Sequence[str],
        dense: DenseBackbone,
        k: int = 50,
        text_clip=None,
        temperature: float = 10.0,
        context_categories: Sequence[str] = (),
        knn_block: int = 65536,
        knn_backend: str = "auto",
        batch: int = 16,
    ) -> None:
        if k < 1:
            raise ValueError(f"model.k must be ≥ 1 (images retrieved per concept), got {k}")
        self.index, self.archive, self.clip = index, archive, retrieval_clip
        self.templates = list(retrieval_templates) or ["{}"]
        self.dense, self.k, self.text_clip, self.temperature = dense, k, text_clip, temperature
        self.context_categories = list(dict.fromkeys(context_categories))
        self.knn_block, self.knn_backend, self.batch = knn_block, knn_backend, batch
        self._cache: dict[tuple, torch.Tensor] = {}
        self._context: torch.Tensor | None = None
        self._retrieved: dict[str, list[int]] = {}
        self.coseg_calls = 0  # concepts actually co-segmented (tests, logs)
        self.index_scans = 0  # passes over the index embeddings

    def key(self, concept: str, context: bool) -> tuple:
        return (concept, self.index.fingerprint, self.dense.name, self.k, self.text_clip is not None,
                tuple(self.context_categories) if context else ())

    def retrieve(self, concept: str) -> list[int]:
        """Indices of the k archive images whose CLIP embedding is closest to the concept's text."""
        if concept not in self._retrieved:
            self.prefetch([concept])
        return self._retrieved[concept]

    def prefetch(self, concepts: Sequence[str]) -> None:
        """Retrieve every not yet retrieved concept in one pass over the index (one scan of a 2 GB
        ImageNet index serves all of a benchmark's classes instead of one scan per class)."""
        todo = [c for c in dict.fromkeys(concepts) if c not in self._retrieved]
        if not todo:
            return
        text = self.clip.encode_text_averaged(todo, self.templates).float()
        _, idx = topk(self.index.embeddings, text, self.k, self.knn_block, self.knn_backend)
        self.index_scans += 1
        for c, row in zip(todo, idx.tolist(), strict=True):
            self._retrieved[c] = row

    @torch.no_grad()
    def _coseg(self, concept: str, context_refs: torch.Tensor | None) -> torch.Tensor:
        images = [center_square(self.archive.load(i), self.dense.ref_size) for i in self.retrieve(concept)]
        feats = torch.cat([self.dense.reference_features(images[b:b + self.batch])
                           for b in range(0, len(images), self.batch)]).cpu()  # [N, h, w, C]
        n, h, w, _ = feats.shape
        weights = torch.ones(n, h, w)
        if self.text_clip is not None:
            cos = torch.stack([self.text_clip.dense_similarity(im, [concept])[0] for im in images]).cpu()
            weights = weights * text_weights(F.interpolate(cos[:, None], size=(h, w), mode="area")[:, 0],
                                             self.temperature)
        if context_refs is not None and len(context_refs):
            weights = weights * context_weights(feats, context_refs)
        self.coseg_calls += 1
        return cosegment(feats, weights).reference

    def context_references(self) -> torch.Tensor:
        if self._context is None:
            refs = []
            for c in self.context_categories:
                key = self.key(c, context=False)
                if key not in self._cache:
                    self._cache[key] = self._coseg(c, None)
                refs.append(self._cache[key])
            self._context = torch.stack(refs) if refs else torch.zeros(0)
        return self._context

    def reference(self, concept: str) -> torch.Tensor:
        if concept in self.context_categories:
            self.context_references()
            return self._cache[self.key(concept, context=False)]
        key = self.key(concept, context=True)
        if key not in self._cache:
            self._cache[key] = self._coseg(concept, self.context_references())
        return self._cache[key]

    def references(self, concepts: Sequence[str]) -> torch.Tensor:
        missing = [c for c in concepts if self.key(c, c not in self.context_categories) not in self._cache]
        if missing:
            self.prefetch([*self.context_categories, *missing])
        return torch.stack([self.reference(c) for c in concepts])
