"""The two contracts every part of carbench speaks: a dataset `Sample` in, a model `Prediction` out.

Kept in one tiny module with no heavy imports so that `data`, `metrics`, `models` and `engine`
can all depend on it without depending on each other (see DESIGN.md, "The contracts").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

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


class Segmenter(Protocol):
    """Anything that turns (image, queries) into a `Prediction`."""

    def segment(self, image: np.ndarray, queries: list[str]) -> Prediction: ...
