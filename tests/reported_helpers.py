"""results.json documents for report / regress tests.

Both tools read only results.json, so a document with the paper's settings stands in for a
ViT-L/14 run on real VOC, which no test can afford. `paper_voc_results` mirrors the keys the
engine writes (`carbench.engine.evaluate._assemble_results`).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

CONF = Path(__file__).resolve().parents[1] / "conf"
VOC = yaml.safe_load((CONF / "dataset" / "voc.yaml").read_text())
VOC_MODEL = {**yaml.safe_load((CONF / "dataset_text" / "voc.yaml").read_text())["model"],
             **yaml.safe_load((CONF / "dataset_model" / "voc_car.yaml").read_text())["model"]}


def paper_voc_results(miou: float, run_dir: str = "run", evaluated: int = 1449, **model: Any) -> dict[str, Any]:
    """A finished VOC-21 run with the paper's settings (conf/dataset_text/voc.yaml, conf/dataset_model/voc_car.yaml + CRF), `model` overrides."""
    m = copy.deepcopy(VOC_MODEL)
    m.update({"name": "car", "cam": "clip_es", "max_steps": None}, **model)
    return {
        "dataset": {"name": "voc21", "split": "val", "num_classes": 21},
        "num_images": {"expected": evaluated, "evaluated": evaluated, "failed": 0, "split_size": 1449},
        "metrics": {"mIoU": miou, "aAcc": 90.0, "mAcc": 70.0, "mIoU_present_classes": miou},
        "metric_rule": {"reduction": "mmseg", "pred_ignore": "miss"},
        "per_class_iou": {"background": 88.0, "aeroplane": 70.0},
        "config": {"model": m, "dataset": {"name": "voc", "split": "val", "variant": "voc21", "root": "/x"},
                   "postprocess": {"name": "crf"}, "device": "cuda", "logger": {"name": "none"}, "seed": 0},
        "run_dir": run_dir,
    }


def write_results(path: Path, results: dict[str, Any]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps({k: v for k, v in results.items() if k != "run_dir"}))
    return path / "results.json"
