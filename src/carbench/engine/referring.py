"""The referring-segmentation loop (RefCOCO / RefCOCO+ / RefCOCOg): expression(s) → foreground mask → scores.

`run_evaluation` dispatches here (after seeding, device and torchrun set-up) when ``dataset.task == "referring"``. Same guarantees as the
semantic loop, built from the same helpers (progress.py, results.py, distributed.py, loggers.py,
evaluate.py): a progress bar; every finished sample appended (fsynced) to progress.jsonl with its
(I, U) pixel counts, so an interrupted run resumes to the metrics of an uninterrupted one; expected /
evaluated / failed counts; ``on_error=raise|skip``; torchrun sharding with the metric state summed by
torchmetrics; one atomic results.json with metrics, config, config hash, expression hash, git sha
and versions.

Metrics (`ReferringIoU`, datasets.md §11): mIoU (mean per-sample IoU — what the CaR paper reports),
oIoU a.k.a. cIoU (ΣI/ΣU) and prec@0.5…0.9 (IoU ≥ X), at the original image resolution. A sample is
an expression (``dataset.mode=expression``) or a ref (``dataset.mode=ref``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from carbench.data import build_dataset
from carbench.data.voc_format import write_palette_png
from carbench.engine import distributed as dist_util
from carbench.engine.disk import disk_error, is_disk_error
from carbench.engine.evaluate import (
    gather_records,
    identify_run,
    image_count,
    make_loader,
    open_run,
    queries_hash,
    require_some_evaluated,
    run_guarded,
    stage_summary,
    start_segment,
    trace_times,
)
from carbench.engine.interrupts import raise_if_received
from carbench.engine.loggers import build_logger, overlay_count
from carbench.engine.oom import explain_out_of_memory
from carbench.engine.overlays import write_overlay
from carbench.engine.progress import RESULTS_FILE, Progress
from carbench.engine.results import git_sha, package_versions, write_json_atomic
from carbench.metrics import ReferringIoU
from carbench.models.referring import build_referring_segmenter
from carbench.types import BACKGROUND, Sample

log = logging.getLogger(__name__)

__all__ = ["run_referring"]


def run_referring(
    cfg: DictConfig, out_dir: Path, plain_cfg: Any, cfg_hash: str, on_error: str, device: torch.device,
    ctx: dist_util.DistContext,
) -> dict[str, Any]:
    """This rank's part of a referring run; `run_evaluation` has set up seed, device and torchrun."""
    out_dir = Path(dist_util.broadcast(str(out_dir), ctx))
    dataset = build_dataset(cfg.dataset)
    n = image_count(cfg, dataset)
    cfg_hash, head = identify_run(plain_cfg, dataset, n)
    segmenter = build_referring_segmenter(cfg.model, cfg.get("postprocess"), device=device, seed=int(cfg.seed))
    run_dir, progress, done_before = open_run(cfg, out_dir, cfg_hash, ctx, head, list(dataset.ids))

    metric = ReferringIoU(thresholds=tuple(cfg.get("metric", {}).get("prec_thresholds", (0.5, 0.6, 0.7, 0.8, 0.9))))
    for i in sorted(done_before) if ctx.is_main else ():  # replayed in index order: same float sums as one pass
        rec = done_before[i]
        if rec["status"] == "ok":
            metric.update_counts(rec["intersection"], rec["union"])
    todo = [i for i in range(n) if i not in done_before]
    if done_before and ctx.is_main:
        log.info("resuming: %d of %d samples already done in %s", n - len(todo), n, run_dir)
    mine = dist_util.shard(todo, ctx)
    if ctx.backend == "nccl":
        metric = metric.to(device)
    pred_dir = run_dir / "predictions"
    if cfg.save_predictions:
        pred_dir.mkdir(exist_ok=True)
    logger = build_logger(cfg) if ctx.is_main else build_logger(None)
    logger.start(plain_cfg, run_dir)

    loader = make_loader(cfg, dataset, mine)
    t_start = time.perf_counter()
    unit = "expr" if dataset.mode == "expression" else "ref"
    bar = tqdm(total=n if not ctx.enabled else len(mine), initial=n - len(todo) if not ctx.enabled else 0,
               desc=f"CaR on {dataset.name} {dataset.split_by}/{dataset.split}", unit=unit, dynamic_ncols=True,
               disable=ctx.enabled and not ctx.is_main)
    run_guarded(lambda: _loop(cfg, loader, dataset, segmenter, metric, progress, run_dir, pred_dir, on_error, bar),
                logger, run_dir, progress, ctx, n)
    bar.close()
    wall = time.perf_counter() - t_start
    scores = metric.compute()
    results = _assemble(cfg, dataset, device, plain_cfg, cfg_hash, n, todo, wall, scores,
                        gather_records(run_dir, cfg_hash, n, ctx), ctx)
    results["run_dir"] = str(run_dir)
    if not ctx.is_main:
        return results
    write_json_atomic(run_dir / RESULTS_FILE, {k: v for k, v in results.items() if k != "run_dir"})
    logger.finish(results, run_dir)
    c = results["num_samples"]
    print(f"{unit}s: expected {n}, evaluated {c['evaluated']}, failed {c['failed']} "
          f"({results['dataset']['num_images']} images)")
    print("  ".join(f"{k} {v:.2f}" for k, v in results["metrics"].items()))
    require_some_evaluated(c["evaluated"], c["failed"], run_dir)
    log.info("mIoU %.2f oIoU %.2f on %d samples of %s %s/%s; results in %s", scores["mIoU"], scores["oIoU"],
             c["evaluated"], dataset.name, dataset.split_by, dataset.split, run_dir)
    return results


def _loop(
    cfg: DictConfig, loader: Any, dataset: Any, segmenter: Any, metric: ReferringIoU, progress: Progress,
    run_dir: Path, pred_dir: Path, on_error: str, bar: Any,
) -> None:
    """Segment and score this rank's samples, appending each finished one to its progress file."""
    for idx, sample, load_error in loader:
        raise_if_received()
        sample_id = sample.id if sample is not None else dataset.ids[idx]
        try:
            if load_error is not None:
                raise RuntimeError(load_error)
            t0 = time.perf_counter()
            pred = start_segment(segmenter, sample)()  # precomputed masks, or the wrapped model
            fg = np.asarray(pred.labels) != BACKGROUND
            target = np.asarray(sample.target, dtype=bool)
            if fg.shape != target.shape:
                raise ValueError(f"prediction is {fg.shape} but the GT mask is {target.shape}; masks are scored "
                                 "at the original image resolution")
            inter, union = int((fg & target).sum()), int((fg | target).sum())
            metric.update_counts(inter, union)
            times = trace_times(pred, t0)
            if cfg.save_predictions:
                write_palette_png(pred_dir / f"{sample.id}.png", fg.astype(np.uint8))
            if idx < overlay_count(cfg):
                shown = Sample(sample.id, sample.image, target.astype(np.int64), sample.queries, sample.meta)
                write_overlay(run_dir / "overlays" / f"{sample.id}.png", shown, fg.astype(np.int64), pred)
            progress.add({
                "index": idx, "id": sample.id, "status": "ok", "intersection": inter, "union": union,
                "ref_id": sample.meta.get("ref_id"), "sent_ids": sample.meta.get("sent_ids"),
                "image_id": sample.meta.get("image_id"), "steps": len(pred.trace),
                "kept": [sample.queries[k] for k in pred.kept],
                "scores": [float(s) for s in np.asarray(pred.scores).reshape(-1)], "time": times,
            })
        except Exception as err:
            if is_disk_error(err):  # the run's own files cannot be written: not this sample's fault
                raise disk_error(err, run_dir) from err
            err = explain_out_of_memory(err, sample)  # a huge image: name its size and the cap
            if on_error == "raise" or isinstance(err, (KeyboardInterrupt, MemoryError)):
                raise RuntimeError(
                    f"sample {sample_id} (index {idx}) failed: {err}. {len(progress.records)} finished samples are "
                    f"kept in {progress.path}; fix the input and rerun with resume=true, or set on_error=skip "
                    "to record failures and exclude them from the metric."
                ) from err
            log.warning("sample %s failed and is skipped (on_error=skip): %s", sample_id, err)
            progress.add({"index": idx, "id": sample_id, "status": "failed", "error": f"{type(err).__name__}: {err}"})
        bar.update(1)


def _assemble(
    cfg: DictConfig, dataset: Any, device: torch.device, plain_cfg: Any, cfg_hash: str, n: int, todo: list[int],
    wall: float, scores: dict[str, Any], records: list[dict[str, Any]], ctx: dist_util.DistContext,
) -> dict[str, Any]:
    """The results.json dict, from the synced metric and every rank's records."""
    ok = [r for r in records if r["status"] == "ok"]
    failed = [{"id": r["id"], "error": r["error"]} for r in records if r["status"] == "failed"]
    steps_hist, stage_time = stage_summary(ok)
    n_ok = max(len(ok), 1)
    all_queries = [dataset.queries_of(i) for i in range(n)]
    counts = {"expected": n, "evaluated": len(ok), "failed": len(failed), "split_size": len(dataset)}
    metrics = {k: v for k, v in scores.items() if k != "num_samples"}
    metrics["cIoU"] = metrics["oIoU"]  # the same number under its other name (ReLA/GRES)
    return {
        "task": "referring",
        "dataset": {"name": dataset.name, "split": dataset.split, "split_by": dataset.split_by,
                    "mode": dataset.mode, "text": dataset.text, "mask_rule": dataset.mask_rule,
                    "num_images": len({r.get("image_id") for r in ok}) if ok else 0},
        "sample_unit": dataset.mode,  # one sample = one expression, or one ref with all its expressions
        "num_samples": counts,
        "num_images": counts,  # the same counts under the key the entry point and the sweep tools read
        "failed_samples": failed,
        "metrics": metrics,
        "metric_rule": {"iou_empty_union": 0, "prec": "IoU >= X", "mIoU": "mean of per-sample IoU",
                        "oIoU": "sum I / sum U", "resolution": "original image"},
        "queries_hash": queries_hash([q for qs in all_queries for q in qs]),
        "background_queries": list(cfg.model.get("background_queries") or []),
        "steps_histogram": steps_hist,
        "timing": {
            "wall_s_this_attempt": wall,
            "samples_per_s": len(todo) / wall if wall > 0 and todo else None,
            "stage_total_s": stage_time,
            "stage_mean_s_per_sample": {k: v / n_ok for k, v in stage_time.items()},
        },
        "per_sample": [
            {"id": r["id"], "ref_id": r.get("ref_id"), "I": r["intersection"], "U": r["union"],
             "iou": r["intersection"] / r["union"] if r["union"] else 0.0, "steps": r["steps"], "kept": r["kept"]}
            for r in ok
        ],
        "device": str(device),
        "distributed": {"world_size": ctx.world_size, "backend": ctx.backend},
        "git_sha": git_sha(),
        "versions": package_versions(),
        "config_hash": cfg_hash,
        "config": plain_cfg,
    }
