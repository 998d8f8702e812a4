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
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from carbench.data import build_dataset
from carbench.engine.evaluate import run_evaluation

CONF_DIR = Path(__file__).resolve().parents[3] / "conf"


def toy_config(overrides: list[str]) -> DictConfig:
    """The config `python evaluate.py dataset=toy *overrides` would run."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=["dataset=toy", *overrides])


def query_set_accuracy(results: dict[str, Any], cfg: DictConfig) -> float:
    """Fraction of evaluated images whose kept queries are exactly the classes present in the GT.

    This is the recurrence's own job (drop the absent classes, keep the present ones), measured
    independently of how well the masks are drawn.
    """
    ds = build_dataset(cfg.dataset)
    by_id = {sid: i for i, sid in enumerate(ds.ids)}
    name_to_label = dict(zip(ds.queries, ds.query_label_ids, strict=True))
    hits = []
    for rec in results["per_image"]:
        target = ds[by_id[rec["id"]]].target
        present = {int(v) for v in np.unique(target)} - {0, ds.ignore_index}
        kept = {name_to_label[q] for q in rec["kept"]}
        hits.append(kept == present)
    if not hits:
        raise ValueError("no evaluated images in results; nothing to score")
    return float(np.mean(hits))


def run_toy(overrides: list[str], out_dir: Path | None = None) -> dict[str, Any]:
    """Evaluate `dataset=toy *overrides`; return mIoU, query-set accuracy, image count and wall time."""
    cfg = toy_config(overrides)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results = run_evaluation(cfg, Path(out_dir) if out_dir is not None else Path(tmp))
    return {
        "mIoU": round(float(results["metrics"]["mIoU"]), 2),
        "query_set_accuracy": round(query_set_accuracy(results, cfg), 3),
        "images": int(results["num_images"]["evaluated"]),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
