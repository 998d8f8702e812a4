"""The one results.json schema, for every task, and its compatibility aliases.

Common sections (written by the loop): ``task``, ``unit`` (what one item is: image, expression or
ref), ``num_items`` {expected, evaluated, failed, split_size}, ``failed_items`` [{id, error}],
``metrics`` (the evaluator's), ``primary_metric`` (the metrics key `evaluate.py` reports),
``steps_histogram``, ``timing`` {wall_s_this_attempt, items_per_s, stage_total_s,
stage_mean_s_per_item}, ``per_item`` [{id, steps, kept, …the evaluator's fields}], ``device``,
``distributed``, ``git_sha``, ``versions``, ``config_hash``, ``config``. Each evaluator adds its own
sections (``dataset``, ``metric_rule``, ``per_class_iou``, ``confusion``, ``filter``, ``queries_hash`` …).

Compatibility aliases (`ALIASES`): results.json files written before the schema was unified named the
counts ``num_images`` (semantic; referring files had it too) or ``num_samples`` (referring), the
failures ``failed_images`` / ``failed_samples`` and the per-item list ``per_image`` / ``per_sample``.
New files still carry those keys, holding the same values as the canonical ones, so tools written
against either schema read both; readers should use `item_counts` (carbench.runs), which accepts
either.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from carbench.engine.distributed import DistContext
from carbench.engine.evaluators.base import Evaluator
from carbench.engine.progress import RESULTS_FILE
from carbench.engine.results import git_sha, package_versions
from carbench.types import Prediction

#: per task: old key → the canonical key whose value it repeats
ALIASES: dict[str, dict[str, str]] = {
    "semantic": {"num_images": "num_items", "failed_images": "failed_items", "per_image": "per_item"},
    "referring": {"num_samples": "num_items", "num_images": "num_items", "failed_samples": "failed_items",
                  "per_sample": "per_item"},
}


def trace_times(pred: Prediction, t0: float) -> dict[str, float]:
    """Seconds per stage summed over the prediction's steps, plus the item's total since `t0`."""
    times: dict[str, float] = defaultdict(float)
    for step in pred.trace:
        for k, v in step.get("time", {}).items():
            times[k] += v
    times["total"] = time.perf_counter() - t0
    return dict(times)


def stage_summary(ok: Sequence[dict[str, Any]]) -> tuple[dict[int, int], dict[str, float]]:
    """Steps histogram and total seconds per stage over the finished items' records."""
    stage_time: dict[str, float] = defaultdict(float)
    steps_hist: dict[int, int] = defaultdict(int)
    for r in ok:
        steps_hist[r["steps"]] += 1
        for k, v in r["time"].items():
            stage_time[k] += v
    return dict(sorted(steps_hist.items())), dict(stage_time)


def assemble_results(
    evaluator: Evaluator, records: Sequence[dict[str, Any]], split_size: int, todo: int, wall: float,
    device: torch.device, ctx: DistContext, plain_cfg: Any, cfg_hash: str,
) -> dict[str, Any]:
    """The results.json dict: the evaluator's metrics (synced) and sections, the common ones, the aliases."""
    metrics = evaluator.evaluate()  # collective under torchrun
    own = evaluator.summarise(records)
    ok = [r for r in records if r["status"] == "ok"]
    failed = [{"id": r["id"], "error": r["error"]} for r in records if r["status"] == "failed"]
    steps_hist, stage_time = stage_summary(ok)
    n_ok = max(len(ok), 1)
    results: dict[str, Any] = {
        "task": evaluator.task,
        "unit": evaluator.unit,
        "dataset": own.pop("dataset"),
        "num_items": {"expected": len(records), "evaluated": len(ok), "failed": len(failed),
                      "split_size": split_size},
        "failed_items": failed,
        "metrics": metrics,
        "primary_metric": evaluator.primary_metric,
        **own,
        "steps_histogram": steps_hist,
        "timing": {
            "wall_s_this_attempt": wall,
            "items_per_s": todo / wall if wall > 0 and todo else None,
            "stage_total_s": stage_time,
            "stage_mean_s_per_item": {k: v / n_ok for k, v in stage_time.items()},
        },
        "per_item": [{"id": r["id"], "steps": r["steps"], "kept": r["kept"], **evaluator.per_item(r)} for r in ok],
        "device": str(device),
        "distributed": {"world_size": ctx.world_size, "backend": ctx.backend},
        "git_sha": git_sha(),
        "versions": package_versions(),
        "config_hash": cfg_hash,
        "config": plain_cfg,
    }
    for old, new in ALIASES[evaluator.task].items():
        results[old] = results[new]
    return results


def require_some_evaluated(evaluated: int, failed: int, run_dir: Path) -> None:
    """A run in which every item failed has no metric: fail (non-zero exit) after recording why."""
    if evaluated == 0 and failed > 0:
        raise RuntimeError(
            f"all {failed} images failed (on_error=skip), so there is no metric (null in results.json); the errors "
            f"are listed under failed_images in {run_dir / RESULTS_FILE}: fix the inputs and run again"
        )
