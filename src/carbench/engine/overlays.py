"""Overlay PNGs for eyeballing a run: image | ground truth | prediction with a colour legend, then one
panel per recurrent step (each alive query's proposal, prompted image and score against θ).

The drawing itself lives in `carbench.viz`, shared with the browser demo.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from carbench import viz
from carbench.types import Prediction, Sample


def label_names(
    sample: Sample,
    labels: np.ndarray,
    pred: Prediction,
    class_names: Sequence[str] | None = None,
    label_of_query: Mapping[str, int] | None = None,
) -> tuple[dict[int, str], dict[int, viz.Color]]:
    """Display name of each label id, and colour of each query (its label id's palette colour).

    With the dataset's `class_names` and query → label id map every id is named; a query the map
    lacks (or every query, without one: the referring loop) is tied to the label id it painted.
    """
    names: dict[int, str] = dict(enumerate(class_names)) if class_names is not None else {}
    query_ids: dict[int, int] = {}
    for k, query in enumerate(sample.queries):
        if label_of_query is not None and query in label_of_query:
            query_ids[k] = int(label_of_query[query])
        elif (pred.labels == k).any():
            query_ids[k] = int(labels[pred.labels == k][0])
    for k, label_id in query_ids.items():
        names.setdefault(label_id, sample.queries[k])
    return names, {k: viz.palette_color(i) for k, i in query_ids.items()}


def write_overlay(
    path: Path,
    sample: Sample,
    labels: np.ndarray,
    pred: Prediction,
    min_height: int = 192,
    class_names: Sequence[str] | None = None,
    label_of_query: Mapping[str, int] | None = None,
    theta: float | None = None,
) -> Path:
    """One PNG: the blended image / GT / prediction row with its legend, and the per-step panels.

    `labels` is the prediction in dataset label ids (what the metric scored); `theta` draws the
    confidence threshold on the step panels' score bars.
    """
    names, colors = label_names(sample, labels, pred, class_names, label_of_query)
    top = viz.overlay_figure(sample.image, labels, names, target_ids=sample.target.astype(np.int64),
                             height=max(min_height, sample.image.shape[0]))
    steps = viz.step_panels(sample.image, pred.trace, sample.queries, theta, colors)
    final = f"{sample.id} · final: " + (", ".join(sample.queries[k] for k in pred.kept) or "(none)")
    path.parent.mkdir(parents=True, exist_ok=True)
    viz.stack([top, viz.caption(final, top.width), *steps]).save(path)
    return path
