"""Semantic segmentation: mIoU (both averaging rules), per-class IoU, confusion, and the filter diagnostics.

Each item's record carries the sparse change of the confusion matrix it caused and, for the filter
diagnostics, the label ids kept after each step, kept in the end and present in its GT; a resumed
run adds these back and ends with the state of an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from carbench.engine.evaluators.base import Evaluator, Outputs
from carbench.engine.evaluators.query_sets import final_labels, kept_label_steps, present_labels
from carbench.engine.overlays import write_overlay
from carbench.engine.prediction_png import needs_16bit, write_prediction_png
from carbench.metrics import SemanticIoU, scores_from_confusion
from carbench.metrics.query_set import QuerySetDiagnostics
from carbench.types import BACKGROUND, Prediction, Sample


def label_lookup(query_label_ids: Sequence[int], background_label: int) -> np.ndarray:
    """Table that maps Prediction.labels (query index, BACKGROUND = −1) to dataset label ids."""
    return np.asarray([*query_label_ids, background_label], dtype=np.int64)


def to_dataset_labels(pred: Prediction, lut: np.ndarray) -> np.ndarray:
    """The prediction's label map in dataset label ids (what the metric scores and the PNGs hold)."""
    idx = np.where(pred.labels == BACKGROUND, len(lut) - 1, pred.labels)
    return lut[idx]


def queries_hash(queries: Sequence[str]) -> str:
    """Short hash of the exact query strings, so runs with renamed classes are never compared blindly."""
    return hashlib.sha256(json.dumps(list(queries)).encode()).hexdigest()[:16]


class SemanticEvaluator(Evaluator):
    """Scores label maps against a semantic dataset (`SemanticDataset` attributes: class_names, queries,
    query_label_ids, background_label, ignore_index).

    Args:
        dataset: the adapter (read for its classes and queries only).
        reduction / pred_ignore: `SemanticIoU`'s averaging and "no class" rules (config `metric`).
        outputs: which PNGs to write.
        theta: θ drawn on the overlays' score bars.
        max_steps: rows of the filter diagnostics; at least the longest recurrence the model can run.
        split: the configured split, written to results.json.
    """

    task = "semantic"
    unit = "image"
    primary_metric = "mIoU"

    def __init__(self, dataset: Any, reduction: str, pred_ignore: str, outputs: Outputs,
                 theta: float | None = None, max_steps: int | None = None, split: str | None = None) -> None:
        self.dataset, self.split = dataset, split
        self.reduction, self.pred_ignore = reduction, pred_ignore
        self.outputs = outputs
        self.theta = theta
        self.lut = label_lookup(dataset.query_label_ids, dataset.background_label)
        # ADE-847 / Context-459 ids (and their 65,535 "unlabeled") do not fit a palette PNG
        self.sixteen_bit = needs_16bit(int(self.lut.max()))
        self.label_of_query = dict(zip(dataset.queries, dataset.query_label_ids, strict=True))
        # CaR's recurrence drops at least one query per step until it stops, so K queries run ≤ K+1 steps
        self.max_steps = max(len(dataset.queries) + 1, int(max_steps or 0), 1)
        self._scores: dict[str, Any] | None = None
        self._filter: dict[str, Any] | None = None
        self.reset()
        if outputs.save_predictions:
            outputs.pred_dir.mkdir(parents=True, exist_ok=True)

    def reset(self) -> None:
        self.metric = SemanticIoU(num_classes=self.dataset.num_classes, ignore_index=self.dataset.ignore_index,
                                  reduction=self.reduction, pred_ignore=self.pred_ignore,
                                  class_names=self.dataset.class_names)
        self.query_sets = QuerySetDiagnostics(max_steps=self.max_steps)

    def to(self, device: torch.device) -> SemanticEvaluator:
        self.metric = self.metric.to(device)
        self.query_sets = self.query_sets.to(device)
        return self

    def describe(self) -> str:
        return f"CaR on {self.dataset.name}"

    def process(self, sample: Sample, prediction: Prediction) -> dict[str, Any]:
        labels = to_dataset_labels(prediction, self.lut)
        before = self.metric.confusion.clone()
        self.metric.update(labels, sample.target)
        delta = (self.metric.confusion - before).view(-1)
        nz = torch.nonzero(delta).view(-1)
        ids = self.dataset.query_label_ids
        filt = {"steps": kept_label_steps(prediction, ids), "final": final_labels(prediction, ids),
                "present": present_labels(sample.target, ids)}
        self.query_sets.update(filt["steps"], filt["present"], filt["final"])
        if self.outputs.save_predictions:
            write_prediction_png(self.outputs.pred_dir / f"{sample.id}.png", labels, self.sixteen_bit)
        overlay = self.outputs.overlay_path(sample.id)
        if overlay is not None:
            write_overlay(overlay, sample, labels, prediction, class_names=self.dataset.class_names,
                          label_of_query=self.label_of_query, theta=self.theta)
        return {"confusion": [nz.tolist(), delta[nz].tolist()], "filter": filt}

    def replay(self, record: dict[str, Any]) -> None:
        flat = self.metric.confusion.view(-1)
        device = flat.device
        flat[torch.as_tensor(record["confusion"][0], dtype=torch.long, device=device)] += torch.as_tensor(
            record["confusion"][1], dtype=torch.int64, device=device)
        filt = record["filter"]
        self.query_sets.update(filt["steps"], filt["present"], filt["final"])

    def evaluate(self) -> dict[str, Any]:
        scores = self.metric.compute()  # collective under torchrun: the ranks' confusion matrices are summed
        self._scores = scores
        self._filter = self.query_sets.compute()
        return {
            "mIoU": scores["mIoU"],
            "aAcc": scores["aAcc"],
            "mAcc": scores["mAcc"],
            "mIoU_present_classes": scores_from_confusion(scores["confusion"], "present", self.pred_ignore)["mIoU"],
        }

    def per_item(self, record: dict[str, Any]) -> dict[str, Any]:
        return {}

    def summarise(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if self._scores is None or self._filter is None:
            raise RuntimeError("summarise() needs evaluate() first (it reads the synced metric state)")
        ds = self.dataset
        return {
            "dataset": {"name": ds.name, "split": self.split, "num_classes": ds.num_classes},
            "metric_rule": {"reduction": self.reduction, "pred_ignore": self.pred_ignore},
            "per_class_iou": dict(zip(ds.class_names, self._scores["per_class_iou"], strict=True)),
            "confusion": self._scores["confusion"].tolist(),
            "filter": self._filter,
            "queries": list(ds.queries),
            "queries_hash": queries_hash(ds.queries),
        }
