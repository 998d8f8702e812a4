"""Metrics: dataset-level semantic mIoU and referring-segmentation scores (torchmetrics Metrics)."""

from carbench.metrics.referring import ReferringIoU
from carbench.metrics.semantic import SemanticIoU, scores_from_confusion

__all__ = ["ReferringIoU", "SemanticIoU", "scores_from_confusion"]
