"""The evaluation loop: dataset → segmenter → metric, with a progress bar and a complete results.json.

`run_evaluation(cfg, out_dir)` is what `evaluate.py` (the Hydra entry point) calls; it is a plain
function of a config so tests and other tools can call it without Hydra.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from carbench.data import build_dataset
from carbench.data.voc_format import write_palette_png
from carbench.engine.results import git_sha, package_versions, write_json_atomic
from carbench.metrics import SemanticIoU
from carbench.models.clip import resolve_device
from carbench.models.factory import build_segmenter
from carbench.types import BACKGROUND, Prediction

log = logging.getLogger(__name__)

STAGES = ("text", "cam", "prompts", "classifier", "postprocess")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def label_lookup(query_label_ids: list[int], background_label: int) -> np.ndarray:
    """Table that maps Prediction.labels (query index, BACKGROUND = −1) to dataset label ids."""
    return np.asarray([*query_label_ids, background_label], dtype=np.int64)


def to_dataset_labels(pred: Prediction, lut: np.ndarray) -> np.ndarray:
    idx = np.where(pred.labels == BACKGROUND, len(lut) - 1, pred.labels)
    return lut[idx]


def queries_hash(queries: list[str]) -> str:
    """Short hash of the exact query strings, so runs with renamed classes are never compared blindly."""
    return hashlib.sha256(json.dumps(queries).encode()).hexdigest()[:16]


def run_evaluation(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Evaluate `cfg.model` on `cfg.dataset`; write results.json (and predictions) under out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(int(cfg.seed))
    device = resolve_device(str(cfg.device))
    dataset = build_dataset(cfg.dataset)
    limit = cfg.get("limit")
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    segmenter = build_segmenter(cfg.model, cfg.get("postprocess"), device=device, seed=int(cfg.seed))
    metric = SemanticIoU(
        num_classes=dataset.num_classes,
        ignore_index=dataset.ignore_index,
        reduction=str(cfg.metric.reduction),
        pred_ignore=str(cfg.metric.pred_ignore),
        class_names=dataset.class_names,
    )
    present = SemanticIoU(
        num_classes=dataset.num_classes, ignore_index=dataset.ignore_index, reduction="present",
        pred_ignore=str(cfg.metric.pred_ignore),
    )
    lut = label_lookup(dataset.query_label_ids, dataset.background_label)
    pred_dir = out_dir / "predictions"
    if cfg.save_predictions:
        pred_dir.mkdir(exist_ok=True)

    stage_time: dict[str, float] = defaultdict(float)
    steps_hist: dict[int, int] = defaultdict(int)
    per_image: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for i in tqdm(range(n), desc=f"CaR on {dataset.name}", unit="img", dynamic_ncols=True):
        t0 = time.perf_counter()
        sample = dataset[i]
        stage_time["load"] += time.perf_counter() - t0
        pred = segmenter.segment(sample.image, sample.queries)
        labels = to_dataset_labels(pred, lut)
        metric.update(labels, sample.target)
        present.update(labels, sample.target)
        for step in pred.trace:
            for k, v in step["time"].items():
                stage_time[k] += v
        steps_hist[len(pred.trace)] += 1
        per_image.append(
            {"id": sample.id, "steps": len(pred.trace), "kept": [sample.queries[k] for k in pred.kept]}
        )
        if cfg.save_predictions:
            write_palette_png(pred_dir / f"{sample.id}.png", labels.astype(np.uint8))
    wall = time.perf_counter() - t_start

    scores = metric.compute()
    results: dict[str, Any] = {
        "dataset": {"name": dataset.name, "split": cfg.dataset.get("split"), "num_classes": dataset.num_classes},
        "num_images": {"expected": len(dataset), "evaluated": n, "failed": 0},
        "metrics": {
            "mIoU": scores["mIoU"],
            "aAcc": scores["aAcc"],
            "mAcc": scores["mAcc"],
            "mIoU_present_classes": present.compute()["mIoU"],
        },
        "metric_rule": {"reduction": str(cfg.metric.reduction), "pred_ignore": str(cfg.metric.pred_ignore)},
        "per_class_iou": dict(zip(dataset.class_names, scores["per_class_iou"], strict=True)),
        "queries": list(dataset.queries),
        "queries_hash": queries_hash(list(dataset.queries)),
        "steps_histogram": dict(sorted(steps_hist.items())),
        "timing": {
            "wall_s": wall,
            "images_per_s": n / wall if wall > 0 else None,
            "stage_total_s": dict(stage_time),
            "stage_mean_s_per_image": {k: v / max(n, 1) for k, v in stage_time.items()},
        },
        "per_image": per_image,
        "device": str(device),
        "git_sha": git_sha(),
        "versions": package_versions(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    write_json_atomic(out_dir / "results.json", results)
    log.info("mIoU %.2f on %d images of %s; results in %s", scores["mIoU"], n, dataset.name, out_dir)
    return results
