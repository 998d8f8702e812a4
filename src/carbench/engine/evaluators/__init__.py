"""Per-task evaluators of the one evaluation loop (base.py says what an evaluator does)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from carbench.engine.evaluators.base import Evaluator, Outputs
from carbench.engine.evaluators.gres import GRESEvaluator
from carbench.engine.evaluators.referring import ReferringEvaluator
from carbench.engine.evaluators.semantic import SemanticEvaluator
from carbench.metrics.referring import DEFAULT_THRESHOLDS

__all__ = ["Evaluator", "GRESEvaluator", "Outputs", "ReferringEvaluator", "SemanticEvaluator", "build_evaluator"]

TASKS = ("semantic", "referring")


def build_evaluator(cfg: DictConfig, dataset: Any, outputs: Outputs) -> Evaluator:
    """The evaluator of `cfg.dataset.task`: semantic, referring, or GRES for a dataset with a no-target rule."""
    task = str(cfg.dataset.get("task", "semantic"))
    if task not in TASKS:
        raise ValueError(f"unknown dataset.task {task!r}; valid: {', '.join(TASKS)}")
    metric = cfg.metric
    if task == "semantic":
        return SemanticEvaluator(
            dataset, reduction=str(metric.reduction), pred_ignore=str(metric.pred_ignore), outputs=outputs,
            theta=cfg.model.get("confidence_threshold"), max_steps=cfg.model.get("max_steps"),
            split=cfg.dataset.get("split"),
        )
    thresholds = DEFAULT_THRESHOLDS  # prec@0.5 … 0.9, as every referring paper reports
    background = list(cfg.model.get("background_queries") or [])
    if "no_target_rule" in cfg.dataset:
        return GRESEvaluator(dataset, thresholds, outputs, background, str(cfg.dataset.no_target_rule),
                             float(cfg.dataset.no_target_threshold))
    return ReferringEvaluator(dataset, thresholds, outputs, background)
