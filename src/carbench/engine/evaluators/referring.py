"""Referring segmentation (RefCOCO / RefCOCO+ / RefCOCOg): one foreground mask per item, scored by IoU.

Metrics (`ReferringIoU`): mIoU (mean per-item IoU, the number the CaR paper reports), oIoU a.k.a.
cIoU (ΣI / ΣU) and prec@X (share of items with IoU ≥ X), at the original image resolution. An item
is an expression (``dataset.mode=expression``) or a ref with all its expressions (``dataset.mode=ref``).
A record keeps the item's (I, U) pixel counts; records are replayed in index order, so the float
sums of a resumed run equal those of one pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from carbench.data.voc_format import write_palette_png
from carbench.engine.evaluators.base import Evaluator, Outputs
from carbench.engine.evaluators.semantic import queries_hash
from carbench.engine.overlays import write_overlay
from carbench.metrics import ReferringIoU
from carbench.models.queries import check_model_background
from carbench.types import BACKGROUND, Prediction, Sample


def foreground(sample: Sample, prediction: Prediction) -> tuple[np.ndarray, np.ndarray]:
    """(predicted foreground, GT mask) as bool maps of one shape, or a ValueError saying why not."""
    fg = np.asarray(prediction.labels) != BACKGROUND
    target = np.asarray(sample.target, dtype=bool)
    if fg.shape != target.shape:
        raise ValueError(f"prediction is {fg.shape} but the GT mask is {target.shape}; masks are scored "
                         "at the original image resolution")
    return fg, target


class ReferringEvaluator(Evaluator):
    """Scores foreground masks against a referring dataset (attributes: name, split, split_by, mode,
    text, mask_rule, `queries_of(i)`).

    Args:
        dataset: the adapter.
        thresholds: the X of prec@X (config `metric.prec_thresholds`).
        outputs: which PNGs to write.
        background_queries: the model's CAM background words, recorded in results.json.
    """

    task = "referring"
    primary_metric = "mIoU"

    def __init__(self, dataset: Any, thresholds: Sequence[float], outputs: Outputs,
                 background_queries: Sequence[str] = ()) -> None:
        self.dataset, self.thresholds, self.outputs = dataset, tuple(float(t) for t in thresholds), outputs
        self.background_queries = check_model_background(background_queries)
        self.unit = "expression" if dataset.mode == "expression" else "ref"
        self.reset()
        if outputs.save_predictions:
            outputs.pred_dir.mkdir(parents=True, exist_ok=True)

    def reset(self) -> None:
        self.metric = ReferringIoU(thresholds=self.thresholds)

    def to(self, device: torch.device) -> ReferringEvaluator:
        self.metric = self.metric.to(device)
        return self

    def describe(self) -> str:
        return f"CaR on {self.dataset.name} {self.dataset.split_by}/{self.dataset.split}"

    def count_line(self, results: dict[str, Any]) -> str:
        c, unit = results["num_items"], "expr" if self.unit == "expression" else "ref"
        return (f"{unit}s: expected {c['expected']}, evaluated {c['evaluated']}, failed {c['failed']} "
                f"({results['dataset']['num_images']} images)")

    def write_outputs(self, sample: Sample, fg: np.ndarray, target: np.ndarray, prediction: Prediction) -> None:
        if self.outputs.save_predictions:
            write_palette_png(self.outputs.pred_dir / f"{sample.id}.png", fg.astype(np.uint8))
        overlay = self.outputs.overlay_path(sample.id)
        if overlay is not None:
            shown = Sample(sample.id, sample.image, target.astype(np.int64), sample.queries, sample.meta)
            write_overlay(overlay, shown, fg.astype(np.int64), prediction)

    def process(self, sample: Sample, prediction: Prediction) -> dict[str, Any]:
        fg, target = foreground(sample, prediction)
        inter, union = int((fg & target).sum()), int((fg | target).sum())
        self.metric.update_counts(inter, union)
        self.write_outputs(sample, fg, target, prediction)
        return {
            "intersection": inter, "union": union, "ref_id": sample.meta.get("ref_id"),
            "sent_ids": sample.meta.get("sent_ids"), "image_id": sample.meta.get("image_id"),
            "scores": [float(s) for s in np.asarray(prediction.scores).reshape(-1)],
        }

    def replay(self, record: dict[str, Any]) -> None:
        self.metric.update_counts(record["intersection"], record["union"])

    def evaluate(self) -> dict[str, Any]:
        scores = self.metric.compute()
        metrics = {k: v for k, v in scores.items() if k != "num_samples"}
        metrics["cIoU"] = metrics["oIoU"]  # the same number under its other name (ReLA/GRES)
        return metrics

    def per_item(self, record: dict[str, Any]) -> dict[str, Any]:
        i, u = record["intersection"], record["union"]
        return {"ref_id": record.get("ref_id"), "I": i, "U": u, "iou": i / u if u else 0.0}

    def summarise(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        ds = self.dataset
        ok = [r for r in records if r["status"] == "ok"]
        all_queries = [q for i in range(len(records)) for q in ds.queries_of(i)]
        return {
            "dataset": {"name": ds.name, "split": ds.split, "split_by": ds.split_by, "mode": ds.mode,
                        "text": ds.text, "mask_rule": ds.mask_rule,
                        "num_images": len({r.get("image_id") for r in ok}) if ok else 0},
            "sample_unit": ds.mode,
            "metric_rule": self.metric_rule(),
            "queries_hash": queries_hash(all_queries),
            "background_queries": self.background_queries,
        }

    def metric_rule(self) -> dict[str, Any]:
        return {"iou_empty_union": 0, "prec": "IoU >= X", "mIoU": "mean of per-sample IoU",
                "oIoU": "sum I / sum U", "resolution": "original image"}
