"""Generalised referring segmentation (gRefCOCO): expressions with one, several or no target.

The evaluator of ``dataset=grefcoco``. Before scoring, the dataset's ``no_target_rule`` may turn a
prediction into the empty mask (`carbench.metrics.gres.apply_no_target_rule`; CaR's confidence is
its best kept query's final score). Then `GRESMetric` gives ReLA's gIoU, cIoU, N-acc, T-acc and
prec@X (over items with a target), and `ReferringIoU` the RefCOCO-style mIoU and oIoU of the same
masks (a no-target item with an empty prediction has IoU 0 there, 1 in gIoU). A record keeps I, U,
|P| and |G|, which is all either metric needs to replay it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from carbench.engine.evaluators.base import Outputs
from carbench.engine.evaluators.referring import ReferringEvaluator, foreground
from carbench.metrics import ReferringIoU
from carbench.metrics.gres import GRESMetric, apply_no_target_rule
from carbench.types import Prediction, Sample


def confidence(prediction: Prediction) -> float:
    """The model's confidence in its answer: the best final score of a kept query (0 when none is kept)."""
    scores = np.asarray(prediction.scores, dtype=np.float64).reshape(-1)
    kept = [k for k in prediction.kept if 0 <= k < len(scores)]
    return float(scores[kept].max()) if kept else 0.0


class GRESEvaluator(ReferringEvaluator):
    """`ReferringEvaluator` with the no-target rule and the GRES metrics (module docstring).

    Args (besides ReferringEvaluator's):
        no_target_rule / no_target_threshold: the dataset's rule for answering "nothing here".
    """

    primary_metric = "gIoU"

    def __init__(self, dataset: Any, thresholds: Sequence[float], outputs: Outputs,
                 background_queries: Sequence[str] = (), no_target_rule: str = "never",
                 no_target_threshold: float = 0.0) -> None:
        apply_no_target_rule(np.zeros((1, 1), bool), 0.0, no_target_rule, float(no_target_threshold))  # validate
        self.no_target_rule, self.no_target_threshold = no_target_rule, float(no_target_threshold)
        self._counts: dict[str, int] = {}
        super().__init__(dataset, thresholds, outputs, background_queries)

    def reset(self) -> None:
        self.metric = ReferringIoU(thresholds=self.thresholds)
        self.gres = GRESMetric(thresholds=self.thresholds)

    def to(self, device: torch.device) -> GRESEvaluator:
        self.metric, self.gres = self.metric.to(device), self.gres.to(device)
        return self

    def process(self, sample: Sample, prediction: Prediction) -> dict[str, Any]:
        fg, target = foreground(sample, prediction)
        fg = apply_no_target_rule(fg, confidence(prediction), self.no_target_rule, self.no_target_threshold)
        inter, union = int((fg & target).sum()), int((fg | target).sum())
        pred_area, target_area = int(fg.sum()), int(target.sum())
        self.metric.update_counts(inter, union)
        self.gres.update_counts(inter, union, pred_area, target_area)
        self.write_outputs(sample, fg, target, prediction)
        return {
            "intersection": inter, "union": union, "pred_area": pred_area, "target_area": target_area,
            "ref_id": sample.meta.get("ref_id"), "image_id": sample.meta.get("image_id"),
            "no_target": target_area == 0,
            "scores": [float(s) for s in np.asarray(prediction.scores).reshape(-1)],
        }

    def replay(self, record: dict[str, Any]) -> None:
        self.metric.update_counts(record["intersection"], record["union"])
        self.gres.update_counts(record["intersection"], record["union"], record["pred_area"], record["target_area"])

    def evaluate(self) -> dict[str, Any]:
        plain = self.metric.compute()
        gres = self.gres.compute()
        metrics = {k: v for k, v in gres.items() if not k.startswith("num_")}
        metrics["mIoU"], metrics["oIoU"] = plain["mIoU"], plain["oIoU"]
        self._counts = {k: v for k, v in gres.items() if k.startswith("num_")}
        return metrics

    def per_item(self, record: dict[str, Any]) -> dict[str, Any]:
        return {**super().per_item(record), "no_target": record["no_target"]}

    def summarise(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        out = super().summarise(records)
        out["no_target"] = {"rule": self.no_target_rule, "threshold": self.no_target_threshold,
                            **self._counts}
        return out

    def metric_rule(self) -> dict[str, Any]:
        return {"gIoU": "mean per-expression IoU; a no-target expression counts 1 when predicted empty, else 0",
                "cIoU": "sum I / sum U", "N-acc": "share of no-target expressions predicted empty",
                "T-acc": "share of target expressions predicted non-empty",
                "prec": "IoU >= X over target expressions", "mIoU": "mean per-expression IoU (empty union = 0)",
                "oIoU": "= cIoU", "resolution": "original image"}
