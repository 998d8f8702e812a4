"""Metrics: dataset-level semantic mIoU and referring-segmentation scores (torchmetrics Metrics)."""

from carbench.metrics.referring import ReferringIoU
from carbench.metrics.semantic import SemanticIoU

__all__ = ["ReferringIoU", "SemanticIoU"]
