"""`model.oracle_queries=true`: the model run with exactly the ground-truth classes of each image as queries.

The upper bound of CaR's filter: whatever the recurrence would have dropped or kept wrongly, here the
query list *is* the set of classes present (the dataset's queries whose label id occurs in the GT, in
the dataset's order). The model itself is unchanged (θ included: add ``model.confidence_threshold=0``
to also stop it from dropping a present class). The prediction is mapped back to the dataset's query
indices, so the metric, the records and the filter diagnostics read it like any other.

An image with no queried class in its GT (only background / ignore) is predicted all background
without calling the model, since there is nothing to ask about.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from carbench.types import BACKGROUND, Prediction, Sample


def oracle_indices(sample: Sample, query_label_ids: Sequence[int]) -> list[int]:
    """Indices of the dataset queries whose label id occurs in the sample's GT, in query order."""
    present = {int(v) for v in np.unique(sample.target)}
    return [k for k, label in enumerate(query_label_ids) if int(label) in present]


def oracle_sample(sample: Sample, indices: Sequence[int]) -> Sample:
    """The sample with only the queries at `indices`."""
    return dataclasses.replace(sample, queries=[sample.queries[k] for k in indices])


def _remap_step(step: dict[str, Any], indices: Sequence[int]) -> dict[str, Any]:
    """A trace step whose query indices point into the full query list (copied; arrays are shared)."""
    out = dict(step)
    if "query_ids" in out:  # a pass of a multi-pass model: its own list is a subset of ours
        out["query_ids"] = [int(indices[k]) for k in out["query_ids"]]
        return out
    for key in ("alive", "kept"):
        if key in out:
            out[key] = [int(indices[k]) for k in out[key]]
    return out


def lift_prediction(pred: Prediction, indices: Sequence[int], num_queries: int) -> Prediction:
    """A prediction over the queries at `indices` → the same prediction over all `num_queries` queries."""
    idx = np.asarray(indices, dtype=np.int64)
    if len(idx) != len(pred.scores):
        raise ValueError(f"the model returned {len(pred.scores)} scores for {len(idx)} oracle queries")
    labels = np.where(pred.labels == BACKGROUND, BACKGROUND, idx[np.clip(pred.labels, 0, None)] if len(idx) else 0)
    masks = np.zeros((num_queries, *pred.masks.shape[1:]), dtype=pred.masks.dtype)
    scores = np.zeros(num_queries, dtype=np.asarray(pred.scores).dtype)
    masks[idx], scores[idx] = pred.masks, pred.scores
    return Prediction(labels=labels.astype(np.int64), masks=masks, scores=scores,
                      kept=[int(idx[k]) for k in pred.kept], trace=[_remap_step(s, indices) for s in pred.trace])


def empty_prediction(sample: Sample) -> Prediction:
    """All background, nothing kept: the answer for an image whose GT holds no queried class."""
    h, w = sample.target.shape[:2]
    return Prediction(labels=np.full((h, w), BACKGROUND, np.int64),
                      masks=np.zeros((len(sample.queries), h, w), np.float32),
                      scores=np.zeros(len(sample.queries), np.float32), kept=[],
                      trace=[{"step": 1, "alive": [], "kept": [], "time": {}}])
