"""Reading finished runs: find results.json files and describe each run in the paper's terms.

The report and the regression gate read only results.json, never a run's other files. This
module turns one into (a) a flat config for ablation tables and (b) `paper_settings`: the handful
of named settings the paper's tables vary (backbones, CAM, recurrence, η/θ/λ, prompts,
background-query group, post-processing), so a run can be matched to the table row that
describes it. Results files of every schema version are read (`item_counts`).
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


class ResultsFileError(ValueError):
    """A results.json that cannot be read as a finished run's results (empty, cut short, not ours)."""


#: keys every finished run's results.json has (semantic and referring alike)
REQUIRED_KEYS = ("metrics", "num_images", "config")
#: where a results.json keeps its item counts: the unified key first, then the older names, which files
#: written before the schema was unified use and newer files repeat (carbench.engine.schema.ALIASES)
COUNT_KEYS = ("num_items", "num_images", "num_samples")
#: the filter diagnostics' totals (results.json `filter.final`) a report shows, with their column names
FILTER_COLUMNS = {"precision": "kept precision", "recall": "kept recall", "exact": "kept = GT",
                  "wrongly_dropped": "wrongly dropped", "wrongly_kept": "wrongly kept"}


def item_counts(results: dict[str, Any]) -> dict[str, Any]:
    """{expected, evaluated, failed, split_size} of a run, from whichever count key its results.json has."""
    for key in COUNT_KEYS:
        if isinstance(results.get(key), dict):
            return results[key]
    return {}


def load_results(path: Path) -> dict[str, Any]:
    """A run's results.json as a dict, or ResultsFileError naming the file and what is wrong with it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ResultsFileError(f"cannot read {path}: {err}") from err
    if not text.strip():
        raise ResultsFileError(f"{path} is empty: the run did not finish writing it; rerun that run (resume=true "
                               "keeps its finished images)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ResultsFileError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}): it is "
                               "cut short or corrupt; rerun that run to rewrite it") from None
    if not isinstance(data, dict):
        raise ResultsFileError(f"{path} holds a JSON {type(data).__name__}, not a carbench results object")
    missing = [k for k in REQUIRED_KEYS if k not in data and not (k == "num_images" and item_counts(data))]
    if missing:
        raise ResultsFileError(f"{path} lacks {', '.join(missing)}: it is not a complete carbench results.json "
                               "(rerun that run, or pass the right file)")
    data.setdefault("run_dir", str(path.parent))
    return data


def failed_jobs(root: Path) -> list[dict[str, str]]:
    """Jobs of a multirun dir (numbered subfolders with a .hydra folder) that left no results.json.

    Each entry: `dir`, `overrides` (the job's command-line overrides) and `reason`. A report must
    list them: dropping them would make a sweep look complete.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for job in sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        if (job / RESULTS_FILE).exists() or not (job / ".hydra").is_dir():
            continue
        overrides_file = job / ".hydra" / "overrides.yaml"
        try:
            overrides = " ".join(yaml.safe_load(overrides_file.read_text()) or [])
        except (OSError, yaml.YAMLError):
            overrides = "?"
        progress = job / "progress.jsonl"
        if progress.exists():
            done = max(0, sum(1 for line in progress.read_text().splitlines() if line.strip()) - 1)
            reason = f"stopped after {done} image(s) (no results.json; see {job}/*.log)"
        else:
            reason = f"failed before its first image (no results.json; see {job}/*.log)"
        out.append({"dir": str(job), "overrides": overrides, "reason": reason})
    return out


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
    n = item_counts(results)
    return n.get("evaluated") != n.get("split_size") or bool(n.get("failed"))


def metric_value(results: dict[str, Any], metric: str) -> float | None:
    """`mIoU`, `aAcc`, … from results['metrics'], `per_class_iou.<class>`, or `filter.<total>` (the
    filter diagnostics over the final kept sets: precision, recall, exact, wrongly_dropped, wrongly_kept);
    None if absent."""
    if metric.startswith("per_class_iou."):
        value = (results.get("per_class_iou") or {}).get(metric.split(".", 1)[1])
    elif metric.startswith("filter."):
        value = ((results.get("filter") or {}).get("final") or {}).get(metric.split(".", 1)[1])
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
