"""Reading finished runs: find results.json files and describe each run in the paper's terms.

The report and the regression gate read only results.json (DESIGN.md: "the regression check and
the sweeps read only that file"). This module turns one into (a) a flat config for ablation
tables and (b) `paper_settings`: the handful of named settings the paper's tables vary (backbones,
CAM, recurrence, η/θ/λ, prompts, background-query group, post-processing), so a run can be
matched to the table row that describes it.
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
RESULTS_FILE = "results.json"

#: results.json `dataset.name` (the adapter's name, variant included) → carbench dataset config name.
ADAPTER_TO_DATASET = {"voc21": "voc", "voc20": "voc20", "pc60": "context", "pc59": "context59"}
#: config keys that never describe *what* was computed (left out of ablation axes).
NOT_AXES = ("resume", "resume_search_dir", "num_workers", "threads", "on_error", "logger", "overlays", "dist",
            "save_predictions", "device", "sweep", "dataset.root", "model.cache_dir")


def find_results(root: Path) -> list[Path]:
    """results.json files under `root` (a multirun dir, a run dir or the file), in job order."""
    root = Path(root)
    if root.is_file():
        return [root]
    files = list(root.rglob(RESULTS_FILE))

    def key(p: Path) -> tuple:
        rel = p.relative_to(root).parts[:-1]
        return tuple((0, int(x), "") if x.isdigit() else (1, 0, x) for x in rel)

    return sorted(files, key=key)


def load_results(path: Path) -> dict[str, Any]:
    data = json.loads(Path(path).read_text())
    data.setdefault("run_dir", str(Path(path).parent))
    return data


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'model': {'cam': 'x'}} → {'model.cam': 'x'}; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


@lru_cache(maxsize=1)
def background_groups() -> dict[str, frozenset[str]]:
    """Named background-query sets from conf/bg_queries/ (T, A, M, unions, none, released)."""
    groups: dict[str, frozenset[str]] = {}
    for f in sorted((CONF_DIR / "bg_queries").glob("*.yaml")):
        words = (yaml.safe_load(f.read_text()) or {}).get("model", {}).get("background_queries")
        if words is not None:
            groups[f.stem] = frozenset(words)
    return groups


def background_name(words: list[str] | None) -> str:
    """The group a background-query list is (T, TA, TAM, none, released …), else 'custom(N words)'."""
    words = list(words or [])
    if not words:
        return "empty"
    found = [name for name, group in background_groups().items() if group == frozenset(words)]
    return found[0] if found else f"custom({len(words)} words)"


def prompts_name(prompts: list[str] | str | None) -> str:
    """Order-free name of a visual-prompt combination: the code applies them in one fixed order."""
    if prompts is None:
        return "none"
    if isinstance(prompts, str):
        prompts = [p for p in re.split(r"[+,\s]+", prompts) if p]
    return "+".join(sorted(prompts)) or "none"


def dataset_key(results: dict[str, Any]) -> str:
    """The carbench dataset config name a run evaluated (voc, voc20, context, context59, coco_object …)."""
    adapter = (results.get("dataset") or {}).get("name")
    if adapter in ADAPTER_TO_DATASET:
        return ADAPTER_TO_DATASET[adapter]
    return str(((results.get("config") or {}).get("dataset") or {}).get("name") or adapter)


def paper_settings(results: dict[str, Any]) -> dict[str, Any]:
    """The settings the paper's tables vary, read from a run's resolved config."""
    cfg = results.get("config") or {}
    model = cfg.get("model") or {}
    post = cfg.get("postprocess") or {}
    max_steps = model.get("max_steps")
    return {
        "dataset": dataset_key(results),
        "split": (cfg.get("dataset") or {}).get("split"),
        "model": model.get("name", "car"),
        "protocol": (model.get("protocol") or {}).get("name", "car"),  # conf/protocol/: car | sclip
        "proposal": model.get("proposal"),
        "classifier": model.get("classifier"),
        "cam": model.get("cam", "clip_es"),
        "recurrence": not (max_steps is not None and int(max_steps) <= 1),
        "eta": model.get("mask_threshold"),
        "theta": model.get("confidence_threshold"),
        "lambda": model.get("clipes_threshold"),
        "prompts": prompts_name(model.get("visual_prompts")),
        "bg": background_name(model.get("background_queries")),
        "postprocess": post.get("name", "none") if isinstance(post, dict) else str(post),
        "templates": len(model.get("templates") or []),
    }


def is_partial(results: dict[str, Any]) -> bool:
    """True when the run did not score its whole split (limit=N, or failed images)."""
    n = results.get("num_images") or {}
    return n.get("evaluated") != n.get("split_size") or bool(n.get("failed"))


def metric_value(results: dict[str, Any], metric: str) -> float | None:
    """`mIoU`, `aAcc`, … from results['metrics'], or `per_class_iou.<class>`; None if absent."""
    if metric.startswith("per_class_iou."):
        value = (results.get("per_class_iou") or {}).get(metric.split(".", 1)[1])
    else:
        value = (results.get("metrics") or {}).get(metric)
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def format_value(value: Any) -> str:
    """Cell text of a config value: lists of prompts/background words get their short names."""
    if isinstance(value, list):
        return f"[{len(value)} items]" if len(value) > 6 else "+".join(map(str, value))
    if value is None:
        return "null"
    return str(value)
