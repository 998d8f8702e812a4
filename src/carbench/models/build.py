"""`build_model(cfg, device)`: the one model entry point of a run.

Given the whole composed config (model, postprocess, protocol, the dataset's task, seed) it decides
everything about the model that depends on more than the model section: the referring wrapper
(per-expression CRF and score-weighted merge) for referring datasets, the things-then-stuff scheme
when `model.two_pass` is set, and otherwise the plain model of `model.name`. The engine calls only
this, so it never needs to know which wrapping a dataset asks for.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from carbench.models.factory import build_segmenter
from carbench.models.referring import build_referring_segmenter
from carbench.models.two_pass import build_two_pass
from carbench.types import Segmenter

__all__ = ["build_model"]


def model_task(cfg: DictConfig) -> str:
    """The dataset's task (semantic | referring); a dataset config without `task` is semantic."""
    dataset = cfg.get("dataset")
    task = dataset.get("task", "semantic") if dataset is not None else "semantic"
    if task not in ("semantic", "referring"):
        raise ValueError(f"dataset.task must be semantic or referring, got {task!r}")
    return str(task)


def build_model(cfg: DictConfig, device: torch.device | str = "cpu") -> Segmenter:
    """The segmenter a run of `cfg` evaluates (see the module docstring for the wrapping rules)."""
    seed = int(cfg.get("seed", 0))
    post = cfg.get("postprocess")
    if model_task(cfg) == "referring":
        return build_referring_segmenter(cfg.model, post, device=device, seed=seed)
    if cfg.model.get("two_pass"):
        return build_two_pass(cfg.model, post, device=device, seed=seed)
    return build_segmenter(cfg.model, post, device=device, seed=seed)
