"""The two contracts every part of carbench speaks: a dataset `Sample` in, a model `Prediction` out.

Kept in one tiny module with no heavy imports so that `data`, `metrics`, `models` and `engine`
can all depend on it without depending on each other (docs/architecture.md, "Layers").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

#: Value of `Prediction.labels` for pixels that no query claims (the model's background).
BACKGROUND = -1

#: Ignore value of every semantic label map (mmseg / VOC convention).
IGNORE_INDEX = 255


@dataclass
class Sample:
    """One evaluation item as every dataset adapter yields it."""

    id: str
    image: np.ndarray  # H×W×3 uint8 RGB
    target: np.ndarray  # semantic: H×W int64 class ids, 255 = ignore; referring: H×W bool
    queries: list[str]  # semantic: the dataset's query names; referring: [the expression]
    meta: dict[str, Any] = field(default_factory=dict)  # file paths, ref id, split, …


@dataclass
class Prediction:
    """What every segmenter returns for one image."""

    labels: np.ndarray  # H×W int64: index into the queries, or BACKGROUND (-1)
    masks: np.ndarray  # K×H×W float32 in [0, 1], one per query (zeros for dropped queries)
    scores: np.ndarray  # K float32, final query scores (0 for dropped queries)
    kept: list[int]  # indices of the queries that survived the recurrence
    trace: list[dict[str, Any]] = field(default_factory=list)  # per step: alive, scores, timings


@runtime_checkable
class Segmenter(Protocol):
    """Anything that turns (image, queries) into a `Prediction`."""

    def segment(self, image: np.ndarray, queries: list[str]) -> Prediction: ...


# Optional capabilities. The engine and the wrappers test for them with isinstance (these Protocols
# are runtime-checkable), so a new model opts in by defining the method, never by subclassing.


@runtime_checkable
class SampleSegmenter(Protocol):
    """A model that needs the whole sample (its id), e.g. one that reads saved predictions."""

    def segment_sample(self, sample: Sample) -> Prediction: ...


@runtime_checkable
class DeferredSegmenter(Protocol):
    """A model that can do its GPU work now and finish later (its CRF runs in a worker meanwhile)."""

    def segment_deferred(self, image: np.ndarray, queries: list[str]) -> Callable[[], Prediction]: ...


@runtime_checkable
class BatchSegmenter(Protocol):
    """A model that can run the GPU work of several images together (`model.batch_images`).

    One finishing function per image, in order; each gives the `Prediction` that image's own
    `segment` would give. The post-processing of every image has started before this returns.
    """

    def segment_batch_deferred(
        self, images: Sequence[np.ndarray], queries: Sequence[list[str]]
    ) -> list[Callable[[], Prediction]]: ...


@runtime_checkable
class TextOverridable(Protocol):
    """A model whose background words and text templates can be replaced for one call.

    Two-pass runs (stuff pass: the thing queries become background) and inference protocols (their
    own templates) pass what they change as arguments, so no caller mutates a shared component.
    `None` keeps the model's own. `text_defaults()` returns those own values (background words,
    templates or None when a sub-part owns them); it is also what tells this capability apart from
    a plain `Segmenter` at run time.
    """

    def text_defaults(self) -> tuple[list[str], list[str] | None]: ...

    def segment(
        self,
        image: np.ndarray,
        queries: list[str],
        *,
        background: Sequence[str] | None = None,
        templates: Sequence[str] | None = None,
    ) -> Prediction: ...


@runtime_checkable
class DenseSimilarity(Protocol):
    """A model with per-pixel text similarities (T×H×W cosines), used as the sliding-window protocols do."""

    def dense_similarity(self, image: np.ndarray, texts: Sequence[str], templates: Sequence[str] | None = None) -> Any:
        ...
