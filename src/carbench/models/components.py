"""The two seams of CaR's recurrence: a `Proposer` and a `MaskScorer`.

CaR's loop (models/recurrent.py) only ever calls these. A proposer turns the alive queries (plus
the background words that compete with them) into one soft map per query; a scorer says, for each
visually prompted image, how well it shows its own query. Anything with these methods plugs in:
name its class in `model.proposer._target_` / `model.scorer._target_` (conf/model/proposer/*.yaml,
conf/model/scorer/*.yaml). No base class is needed; the Protocols only document the contract.

Two optional capabilities let a component do more than the minimum:
- `WarmsText` / `WarmsScorerText`: encode every text the loop can need before the first step, so
  text encoding is timed separately and cached across images;
- `KeyedProposer`: says when two steps would give identical proposals, so the loop reuses the
  previous step instead of recomputing it (a proposer without it is always recomputed);
- `BatchProposer` / `BatchScorer`: do one step of several images in one call, so the CLIP work of
  a batch (`model.batch_images`) runs together; a component without them is called image by image.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Proposer(Protocol):
    """Image + queries (+ background words, step number) → K×H×W float32 maps in [0, 1].

    `step` is the 1-based step of the recurrence; a proposer may use it (CLIP-ES shows the raw
    query text at step 1 and the CAM template later, as the official code does) or ignore it.
    `background` is passed on every call so one proposer serves callers with different background
    lists (the stuff pass of Pascal Context uses the thing queries) without being mutated.
    """

    def propose(self, image: np.ndarray, queries: Sequence[str], background: Sequence[str], step: int) -> np.ndarray:
        ...


@runtime_checkable
class WarmsText(Protocol):
    """A proposer that can encode its texts for these queries and background words up front."""

    def warm(self, queries: Sequence[str], background: Sequence[str]) -> None: ...


@runtime_checkable
class KeyedProposer(Protocol):
    """A proposer whose output depends only on the image and the returned key.

    Two steps with equal keys give bit-identical maps, so the loop may reuse the first.
    """

    def proposal_key(self, queries: Sequence[str], background: Sequence[str], step: int) -> Hashable: ...


@runtime_checkable
class BatchProposer(Protocol):
    """A proposer that can do one step of several images together (each with its own queries and step).

    Returns one K_i×H_i×W_i map stack per image, each equal (within 1e-4) to
    `propose(images[i], queries[i], background, steps[i])`; the loop relies on that equality, so a
    batched run keeps the same queries as the unbatched one.
    """

    def propose_batch(
        self,
        images: Sequence[np.ndarray],
        queries: Sequence[Sequence[str]],
        background: Sequence[str],
        steps: Sequence[int],
    ) -> list[np.ndarray]: ...


@runtime_checkable
class MaskScorer(Protocol):
    """Prompted images (image i drawn for query i) + queries → K scores, score i for query i.

    `templates=None` means the scorer's own text templates; a caller (an inference protocol) may
    pass others for one call.
    """

    def score(
        self, prompted: Sequence[np.ndarray], queries: Sequence[str], templates: Sequence[str] | None = None
    ) -> np.ndarray: ...


@runtime_checkable
class WarmsScorerText(Protocol):
    """A scorer that can encode its (query, template) texts up front."""

    def warm_text(self, queries: Sequence[str], templates: Sequence[str] | None = None) -> None: ...


@runtime_checkable
class BatchScorer(Protocol):
    """A scorer that can score the prompted images of several images in one call.

    `prompted[i]` and `queries[i]` belong to image i; the result is one score vector per image,
    each equal to `score(prompted[i], queries[i], templates)` (any softmax over queries stays
    within one image).
    """

    def score_batch(
        self,
        prompted: Sequence[Sequence[np.ndarray]],
        queries: Sequence[Sequence[str]],
        templates: Sequence[str] | None = None,
    ) -> list[np.ndarray]: ...
