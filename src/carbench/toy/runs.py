"""Run the toy benchmark from Python: one Hydra-composed config, one `run_evaluation`, one summary.

Shared by the threshold tuner (`carbench.toy.tune`), the golden-number writer
(`carbench.toy.golden`) and the CI gate test, so all three measure exactly what
`python evaluate.py dataset=toy <overrides>` measures.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from carbench.data import build_dataset
from carbench.engine.evaluate import run_evaluation, seed_everything
from carbench.engine.evaluators.semantic import label_lookup, to_dataset_labels
from carbench.metrics import SemanticIoU
from carbench.metrics.query_set import QuerySetDiagnostics
from carbench.models.factory import build_segmenter

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"


def toy_config(overrides: list[str]) -> DictConfig:
    """The config `python evaluate.py dataset=toy *overrides` would run."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=["dataset=toy", *overrides])


def present_labels(target: np.ndarray, ignore_index: int, background: int = 0) -> set[int]:
    """Class ids present in a GT label map, without background and ignore."""
    return {int(v) for v in np.unique(target)} - {background, ignore_index}


def filter_diagnostics(results: dict[str, Any], cfg: DictConfig) -> dict[str, Any]:
    """`QuerySetDiagnostics` of a run's final kept sets against the GT classes (results.json keeps
    only the final set per image, so this is the metric's ``final`` row).

    This is the recurrence's own job (drop the absent classes, keep the present ones), measured
    independently of how well the masks are drawn.
    """
    ds = build_dataset(cfg.dataset)
    by_id = {sid: i for i, sid in enumerate(ds.ids)}
    name_to_label = dict(zip(ds.queries, ds.query_label_ids, strict=True))
    diag = QuerySetDiagnostics(max_steps=1)
    for rec in results["per_image"]:
        present = present_labels(ds[by_id[rec["id"]]].target, ds.ignore_index)
        kept = {name_to_label[q] for q in rec["kept"]}
        diag.update([kept], present)
    if not results["per_image"]:
        raise ValueError("no evaluated images in results; nothing to score")
    return diag.compute()["final"]


def query_set_accuracy(results: dict[str, Any], cfg: DictConfig) -> float:
    """Fraction of evaluated images whose kept queries are exactly the classes present in the GT."""
    return float(filter_diagnostics(results, cfg)["exact"])


def _summary(miou: float, diag: dict[str, Any], images: int, t0: float) -> dict[str, Any]:
    return {
        "mIoU": round(float(miou), 2),
        "query_set_accuracy": round(float(diag["exact"]), 3),
        "kept_precision": round(float(diag["precision"]), 3),
        "kept_recall": round(float(diag["recall"]), 3),
        "wrongly_dropped": int(diag["wrongly_dropped"]),
        "wrongly_kept": int(diag["wrongly_kept"]),
        "images": int(images),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def run_toy(overrides: list[str], out_dir: Path | None = None) -> dict[str, Any]:
    """Evaluate `dataset=toy *overrides`; return mIoU, the filter diagnostics, image count and wall time."""
    cfg = toy_config(overrides)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results = run_evaluation(cfg, Path(out_dir) if out_dir is not None else Path(tmp))
    diag = filter_diagnostics(results, cfg)
    return _summary(results["metrics"]["mIoU"], diag, results["num_images"]["evaluated"], t0)


def run_toy_oracle(overrides: list[str]) -> dict[str, Any]:
    """CaR with a perfect filter: each image's queries are exactly its GT classes and θ = 0.

    With θ = 0 every query survives (the double-softmax scores are positive), so the loop runs
    two steps (the second with the CAM template, as a converged CaR run ends) and paints every
    present class: the mIoU the masks reach when the filter makes no mistake. Same dataset,
    model, post-processing and metric as `run_toy`; the engine's loop is not used because its
    query list is the dataset's, the same for every image.
    """
    cfg = toy_config([*overrides, "model.confidence_threshold=0.0"])
    t0 = time.perf_counter()
    seed_everything(int(cfg.seed))
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    ds = build_dataset(cfg.dataset)
    segmenter = build_segmenter(cfg.model, cfg.get("postprocess"), device="cpu", seed=int(cfg.seed))
    metric = SemanticIoU(
        num_classes=ds.num_classes,
        ignore_index=ds.ignore_index,
        reduction=str(cfg.metric.reduction),
        pred_ignore=str(cfg.metric.pred_ignore),
    )
    diag = QuerySetDiagnostics(max_steps=1)
    n = len(ds) if cfg.get("limit") is None else min(int(cfg.limit), len(ds))
    for i in range(n):
        sample = ds[i]
        present = present_labels(sample.target, ds.ignore_index)
        pairs = [(q, lab) for q, lab in zip(sample.queries, ds.query_label_ids, strict=True) if lab in present]
        if not pairs:
            raise ValueError(f"toy image {sample.id} has no object; the oracle needs at least one GT class")
        pred = segmenter.segment(sample.image, [q for q, _ in pairs])
        lut = label_lookup([lab for _, lab in pairs], ds.background_label)
        metric.update(to_dataset_labels(pred, lut), sample.target)
        diag.update([{pairs[k][1] for k in pred.kept}], present)
    return _summary(metric.compute()["mIoU"], diag.compute()["final"], n, t0)
