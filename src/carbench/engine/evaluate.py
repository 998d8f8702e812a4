"""The evaluation loop: dataset → segmenter → metric, with a progress bar and a complete results.json.

`run_evaluation(cfg, out_dir)` is what `evaluate.py` (the Hydra entry point) calls; it is a plain
function of a config so tests and other tools can call it without Hydra.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from carbench.data import build_dataset
from carbench.data.voc_format import write_palette_png
from carbench.engine import distributed as dist_util
from carbench.engine import run_lock
from carbench.engine.config_check import check_int_values, check_keys
from carbench.engine.disk import disk_error, is_disk_error
from carbench.engine.interrupts import RunInterrupted, interrupted, raise_if_received, sigterm_as_interrupt
from carbench.engine.loggers import build_logger, overlay_count
from carbench.engine.oom import explain_out_of_memory
from carbench.engine.overlays import write_overlay
from carbench.engine.progress import (
    PROGRESS_FILE,
    RESULTS_FILE,
    Progress,
    ResumeError,
    check_record_ids,
    config_hash,
    find_resumable,
    find_same_config,
)
from carbench.engine.results import git_sha, package_versions, write_json_atomic
from carbench.engine.run_identity import data_fingerprint, explain_mismatch, header, semantic_config
from carbench.engine.workers import die_with_parent
from carbench.metrics import SemanticIoU, scores_from_confusion
from carbench.models.clip import resolve_device
from carbench.models.factory import build_segmenter
from carbench.types import BACKGROUND, Prediction

log = logging.getLogger(__name__)

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


class _Loaded(torch.utils.data.Dataset):
    """Dataset view for the DataLoader: yields (index, sample or None, error or None).

    Decoding runs in background workers; a bad file becomes a recorded error instead of killing
    the worker, so `on_error=skip` can skip it and `on_error=raise` can name it.
    """

    def __init__(self, dataset, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        idx = self.indices[i]
        try:
            return idx, self.dataset[idx], None
        except Exception as err:  # noqa: BLE001 — reported per image, never swallowed
            return idx, None, f"{type(err).__name__}: {err}"


def _resolve_run_dir(cfg: DictConfig, out_dir: Path, cfg_hash: str, head: dict[str, Any]) -> Path:
    """Where this run writes: `out_dir`, or with resume=true the newest unfinished matching run.

    An unfinished run of the same config whose data changed (split re-sorted, ids removed, files
    rewritten) is refused with what changed, rather than silently starting afresh next to it."""
    if (out_dir / RESULTS_FILE).exists() and (out_dir / PROGRESS_FILE).exists():
        raise ResumeError(f"{out_dir} already holds a finished run (results.json); use a new run dir")
    if cfg.get("resume") and not (out_dir / PROGRESS_FILE).exists():
        root = Path(str(cfg.get("resume_search_dir") or "outputs"))
        found = find_resumable(root, cfg_hash)
        if found is not None:
            log.info("resuming the unfinished run in %s", found)
            return found
        stale = find_same_config(root, config_hash(semantic_config(head["config"])))
        if stale is not None:
            run, old = stale
            raise ResumeError(
                f"cannot resume {run}: {explain_mismatch(old, head)}. Its records describe other images; "
                "restore the original split/files to resume it, or run without resume=true to start afresh"
            )
        log.warning("resume=true but no unfinished run with this config was found; starting fresh")
    return out_dir


def run_evaluation(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Evaluate `cfg.model` on `cfg.dataset`; write results.json (and predictions) under out_dir.

    Every finished image is appended to progress.jsonl (fsynced), so a run killed at any point
    and restarted with the same command + resume=true (or into the same run dir) ends with the
    same metrics as an uninterrupted run. results.json is written once, complete, atomically.

    Under `torchrun` (WORLD_SIZE > 1) every rank evaluates a strided shard of the remaining images
    into its own progress file, the confusion matrices are summed by torchmetrics' distributed sync,
    and rank 0 alone writes results.json and calls the logger (engine/distributed.py).
    """
    out_dir = Path(out_dir)
    plain_cfg = OmegaConf.to_container(cfg, resolve=True)
    check_keys(plain_cfg)
    check_int_values(plain_cfg)
    cfg_hash = config_hash(plain_cfg)  # refined with the data fingerprint once the dataset is open
    on_error = str(cfg.get("on_error", "raise"))
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    seed_everything(int(cfg.seed))
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    device = resolve_device(str(cfg.device))
    if cfg.dataset.get("task", "semantic") == "referring":  # RefCOCO/+/g: per-expression masks
        from carbench.engine.referring import run_referring as runner
    else:
        runner = _run_semantic
    with sigterm_as_interrupt():
        try:
            ctx = dist_util.init_distributed(cfg.get("dist"), device)
            try:
                if ctx.is_main:  # rank 0 alone creates and probes the run dir; the others wait for it
                    check_writable(out_dir)
                dist_util.barrier(ctx)
                return runner(cfg, out_dir, plain_cfg, cfg_hash, on_error, dist_util.rank_device(device, ctx), ctx)
            finally:
                run_lock.release_held()
                dist_util.shutdown(ctx)
        except RunInterrupted:
            raise
        except KeyboardInterrupt as err:  # before the loop started: nothing was evaluated by this attempt
            raise interrupted(err, None, None, None) from None


def identify_run(plain_cfg: dict[str, Any], dataset: Any, n: int) -> tuple[str, dict[str, Any]]:
    """The run's hash and progress-log header, covering the config and the data (ids + file stats)."""
    data = data_fingerprint(dataset, n)
    cfg_hash = config_hash(plain_cfg, data)
    return cfg_hash, header(plain_cfg, data, cfg_hash)


def image_count(cfg: DictConfig, dataset: Any) -> int:
    """How many items of the split this run evaluates: all, or the first `limit`."""
    limit = cfg.get("limit")
    if limit is None:
        return len(dataset)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive integer (the first N images) or null for the whole split, "
                         f"got {limit!r}")
    return min(limit, len(dataset))


def open_run(
    cfg: DictConfig, out_dir: Path, cfg_hash: str, ctx: dist_util.DistContext, head: dict[str, Any],
    ids: list[str],
) -> tuple[Path, Progress, dict[int, dict[str, Any]]]:
    """The run dir (rank 0 decides and locks it, every rank agrees), this rank's progress file, and
    every record a previous attempt of this run left in any rank's file (each checked against `ids`)."""
    resolved: tuple[str | None, str | None] = (None, None)
    if ctx.is_main:
        try:
            run_dir = _resolve_run_dir(cfg, out_dir, cfg_hash, head)
            run_lock.acquire(run_dir)
            progress = Progress.open(run_dir, cfg_hash, filename=dist_util.progress_filename(ctx), header=head)
            resolved = (str(run_dir), None)
        except (ResumeError, run_lock.RunDirLockedError) as err:
            resolved = (None, f"{type(err).__name__}: {err}")
    found, error = dist_util.broadcast(resolved, ctx)
    if error is not None:
        kind, _, msg = error.partition(": ")
        raise (run_lock.RunDirLockedError if kind == "RunDirLockedError" else ResumeError)(msg)
    run_dir = Path(found)
    if not ctx.is_main:
        progress = Progress.open(run_dir, cfg_hash, filename=dist_util.progress_filename(ctx), header=head)
    dist_util.barrier(ctx)  # every rank has repaired its own file before anyone reads the others
    done_before = dist_util.read_all_records(run_dir, cfg_hash)
    check_record_ids(done_before, ids, run_dir)
    dist_util.barrier(ctx)  # nobody appends this attempt's records before everyone has read
    return run_dir, progress, done_before


def make_loader(cfg: DictConfig, dataset: Any, indices: list[int]) -> torch.utils.data.DataLoader:
    """Items `indices` of `dataset`, decoded in `num_workers` background workers, errors passed along."""
    workers = int(cfg.get("num_workers", 0))
    return torch.utils.data.DataLoader(
        _Loaded(dataset, indices), batch_size=None, shuffle=False, num_workers=workers,
        collate_fn=lambda x: x, prefetch_factor=2 if workers else None,
        worker_init_fn=die_with_parent if workers else None,
    )


def run_guarded(loop: Callable[[], None], logger: Any, run_dir: Path, progress: Progress,
                ctx: dist_util.DistContext, total: int) -> None:
    """Run this rank's loop; if it or another rank fails, close the logger and raise on every rank
    instead of leaving the others waiting in the collective that follows. A signal (Ctrl-C, SIGTERM)
    becomes RunInterrupted saying how many of the `total` items are kept and how to go on."""
    try:
        loop()
        raise_if_received()  # a signal whose exception a finaliser swallowed still stops the run here
    except KeyboardInterrupt as err:
        logger.finish(None, run_dir)
        kept = len(dist_util.read_all_records(run_dir, progress.cfg_hash))
        raise interrupted(err, kept, total, run_dir) from None
    except BaseException:
        dist_util.any_rank_failed(True, ctx)  # release the other ranks from the collective below
        logger.finish(None, run_dir)
        raise
    if dist_util.any_rank_failed(False, ctx):
        logger.finish(None, run_dir)
        raise RuntimeError(
            f"another rank failed (see its log); this rank's finished items are kept in {progress.path}. "
            "Rerun the same command with resume=true to continue."
        )


def gather_records(run_dir: Path, cfg_hash: str, n: int, ctx: dist_util.DistContext) -> list[dict[str, Any]]:
    """Every rank's records of items 0..n-1, in order, once every rank has finished writing."""
    dist_util.barrier(ctx)
    records = dist_util.read_all_records(run_dir, cfg_hash)
    missing = [i for i in range(n) if i not in records]
    if missing:
        raise RuntimeError(f"{len(missing)} items have no record in {run_dir} (first: index {missing[0]})")
    return [records[i] for i in range(n)]


def trace_times(pred: Prediction, t0: float) -> dict[str, float]:
    """Seconds per stage summed over the prediction's steps, plus the item's total since `t0`."""
    times: dict[str, float] = defaultdict(float)
    for step in pred.trace:
        for k, v in step["time"].items():
            times[k] += v
    times["total"] = time.perf_counter() - t0
    return dict(times)


def stage_summary(ok: list[dict[str, Any]]) -> tuple[dict[int, int], dict[str, float]]:
    """Steps histogram and total seconds per stage over the finished items' records."""
    stage_time: dict[str, float] = defaultdict(float)
    steps_hist: dict[int, int] = defaultdict(int)
    for r in ok:
        steps_hist[r["steps"]] += 1
        for k, v in r["time"].items():
            stage_time[k] += v
    return dict(sorted(steps_hist.items())), dict(stage_time)


def _run_semantic(
    cfg: DictConfig, out_dir: Path, plain_cfg: Any, cfg_hash: str, on_error: str, device: torch.device,
    ctx: dist_util.DistContext,
) -> dict[str, Any]:
    """The semantic loop of `run_evaluation` for this rank (the whole job when not distributed)."""
    out_dir = Path(dist_util.broadcast(str(out_dir), ctx))  # Hydra may stamp each rank's dir differently
    dataset = build_dataset(cfg.dataset)
    n = image_count(cfg, dataset)
    cfg_hash, head = identify_run(plain_cfg, dataset, n)
    if cfg.model.get("two_pass"):  # Pascal Context: things pass + stuff pass (models/two_pass.py, car-method §1.7)
        from carbench.models.two_pass import build_two_pass

        segmenter = build_two_pass(cfg.model, cfg.get("postprocess"), device=device, seed=int(cfg.seed))
    else:
        segmenter = build_segmenter(cfg.model, cfg.get("postprocess"), device=device, seed=int(cfg.seed))
    run_dir, progress, done_before = open_run(cfg, out_dir, cfg_hash, ctx, head, list(dataset.ids))

    metric = SemanticIoU(
        num_classes=dataset.num_classes,
        ignore_index=dataset.ignore_index,
        reduction=str(cfg.metric.reduction),
        pred_ignore=str(cfg.metric.pred_ignore),
        class_names=dataset.class_names,
    )
    # state of the images a previous attempt finished (any rank's file); added once, on rank 0
    for rec in done_before.values() if ctx.is_main else ():
        if rec["status"] == "ok":
            flat = metric.confusion.view(-1)
            flat[torch.as_tensor(rec["confusion"][0], dtype=torch.long)] += torch.as_tensor(
                rec["confusion"][1], dtype=torch.int64
            )
    todo = [i for i in range(n) if i not in done_before]
    if done_before and ctx.is_main:
        log.info("resuming: %d of %d images already done in %s", n - len(todo), n, run_dir)
    mine = dist_util.shard(todo, ctx)
    if ctx.backend == "nccl":
        metric = metric.to(device)  # nccl gathers CUDA tensors only
    lut = label_lookup(dataset.query_label_ids, dataset.background_label)
    pred_dir = run_dir / "predictions"
    if cfg.save_predictions:
        pred_dir.mkdir(exist_ok=True)
    logger = build_logger(cfg) if ctx.is_main else build_logger(None)
    logger.start(plain_cfg, run_dir)

    loader = make_loader(cfg, dataset, mine)
    t_start = time.perf_counter()
    bar = tqdm(total=n if not ctx.enabled else len(mine), initial=n - len(todo) if not ctx.enabled else 0,
               desc=f"CaR on {dataset.name}" + (f" [rank {ctx.rank}]" if ctx.enabled else ""), unit="img",
               dynamic_ncols=True, disable=ctx.enabled and not ctx.is_main)
    run_guarded(lambda: _loop(cfg, loader, dataset, segmenter, metric, lut, progress, run_dir, pred_dir, on_error, bar),
                logger, run_dir, progress, ctx, n)
    bar.close()
    wall = time.perf_counter() - t_start
    scores = metric.compute()  # collective under torchrun: torchmetrics sums the ranks' confusion matrices
    results = _assemble_results(cfg, dataset, device, plain_cfg, cfg_hash, n, todo, wall, scores, metric,
                                gather_records(run_dir, cfg_hash, n, ctx), ctx)
    results["run_dir"] = str(run_dir)
    if not ctx.is_main:
        return results
    write_json_atomic(run_dir / RESULTS_FILE, {k: v for k, v in results.items() if k != "run_dir"})
    logger.finish(results, run_dir)
    ok_n, failed_n = results["num_images"]["evaluated"], results["num_images"]["failed"]
    print(f"images: expected {n}, evaluated {ok_n}, failed {failed_n}")
    require_some_evaluated(ok_n, failed_n, run_dir)
    if overlay_count(cfg):
        print(f"overlays (image | GT | CaR | kept queries per step): {run_dir / 'overlays'}")
    log.info("mIoU %.2f on %d images of %s; results in %s", scores["mIoU"], ok_n, dataset.name, run_dir)
    return results


def start_segment(segmenter: Any, sample: Any) -> Callable[[], Prediction]:
    """Begin one image; the returned function yields its Prediction. A segmenter with
    `segment_deferred` (CaR with post-processing workers) is still running its CRF in a worker when
    this returns, so the loop can start the next image's CLIP work before finishing this one."""
    if hasattr(segmenter, "segment_sample"):  # models that need the sample id (e.g. precomputed)
        pred = segmenter.segment_sample(sample)
    elif hasattr(segmenter, "segment_deferred"):
        return segmenter.segment_deferred(sample.image, sample.queries)
    else:
        pred = segmenter.segment(sample.image, sample.queries)
    return lambda: pred


def _loop(
    cfg: DictConfig, loader: Any, dataset: Any, segmenter: Any, metric: SemanticIoU, lut: np.ndarray,
    progress: Progress, run_dir: Path, pred_dir: Path, on_error: str, bar: Any,
) -> None:
    """Segment and score this rank's images, appending each finished one to its progress file.

    Pipelined by one image: image i is finished (post-processing collected, scored, recorded) after
    image i+1's CLIP work has started, which overlaps a worker's CRF with the model. Records are
    still written in order, and an error is attributed to the image that caused it.
    """
    pending: tuple | None = None
    for idx, sample, load_error in loader:
        raise_if_received()
        sample_id = sample.id if sample is not None else dataset.ids[idx]
        t0 = time.perf_counter()
        try:
            if load_error is not None:
                raise RuntimeError(load_error)
            started: Callable[[], Prediction] | Exception = start_segment(segmenter, sample)
        except Exception as err:  # recorded (or raised) in order, when this image is finished
            started = err
        except BaseException:  # Ctrl-C / kill while this image ran: keep the finished one before it
            if pending is not None:
                _finish(cfg, *pending, dataset, metric, lut, progress, run_dir, pred_dir, on_error)
            raise
        if pending is not None:
            _finish(cfg, *pending, dataset, metric, lut, progress, run_dir, pred_dir, on_error)
            bar.update(1)
        pending = (idx, sample_id, sample, started, t0)
    if pending is not None:
        _finish(cfg, *pending, dataset, metric, lut, progress, run_dir, pred_dir, on_error)
        bar.update(1)


def _finish(
    cfg: DictConfig, idx: int, sample_id: str, sample: Any, started: Callable[[], Prediction] | Exception,
    t0: float, dataset: Any, metric: SemanticIoU, lut: np.ndarray, progress: Progress, run_dir: Path,
    pred_dir: Path, on_error: str,
) -> None:
    """Collect one image's prediction, score it and append its record (or its failure)."""
    try:
        if isinstance(started, Exception):
            raise started
        pred = started()
        labels = to_dataset_labels(pred, lut)
        before = metric.confusion.clone()
        metric.update(labels, sample.target)
        delta = (metric.confusion - before).view(-1)
        nz = torch.nonzero(delta).view(-1)
        times = trace_times(pred, t0)
        if cfg.save_predictions:
            write_palette_png(pred_dir / f"{sample.id}.png", labels.astype(np.uint8))
        if idx < overlay_count(cfg):
            write_overlay(run_dir / "overlays" / f"{sample.id}.png", sample, labels, pred, class_names=dataset.class_names,
                          label_of_query=dict(zip(dataset.queries, dataset.query_label_ids, strict=True)),
                          theta=cfg.model.get("confidence_threshold"))
        progress.add({
            "index": idx, "id": sample.id, "status": "ok",
            "confusion": [nz.tolist(), delta[nz].tolist()],
            "steps": len(pred.trace), "kept": [sample.queries[k] for k in pred.kept], "time": times,
        })
    except Exception as err:
        if is_disk_error(err):  # the run's own files cannot be written: not this image's fault
            raise disk_error(err, run_dir) from err
        err = explain_out_of_memory(err, sample)  # a huge image: name its size and the cap
        if on_error == "raise" or isinstance(err, (KeyboardInterrupt, MemoryError)):
            raise RuntimeError(
                f"image {sample_id} (index {idx}) failed: {err}. {len(progress.records)} finished images are "
                f"kept in {progress.path}; fix the input and rerun with resume=true, or set on_error=skip "
                "to record failures and exclude them from the metric."
            ) from err
        log.warning("image %s failed and is skipped (on_error=skip): %s", sample_id, err)
        progress.add({"index": idx, "id": sample_id, "status": "failed", "error": f"{type(err).__name__}: {err}"})


def _assemble_results(
    cfg: DictConfig, dataset: Any, device: torch.device, plain_cfg: Any, cfg_hash: str, n: int, todo: list[int],
    wall: float, scores: dict[str, Any], metric: SemanticIoU, records: list[dict[str, Any]],
    ctx: dist_util.DistContext,
) -> dict[str, Any]:
    """The results.json dict, from the synced metric and the records of every rank."""
    ok = [r for r in records if r["status"] == "ok"]
    failed = [{"id": r["id"], "error": r["error"]} for r in records if r["status"] == "failed"]
    steps_hist, stage_time = stage_summary(ok)
    n_ok = max(len(ok), 1)
    results: dict[str, Any] = {
        "dataset": {"name": dataset.name, "split": cfg.dataset.get("split"), "num_classes": dataset.num_classes},
        "num_images": {"expected": n, "evaluated": len(ok), "failed": len(failed), "split_size": len(dataset)},
        "failed_images": failed,
        "metrics": {
            "mIoU": scores["mIoU"],
            "aAcc": scores["aAcc"],
            "mAcc": scores["mAcc"],
            "mIoU_present_classes": scores_from_confusion(scores["confusion"], "present", metric.pred_ignore)["mIoU"],
        },
        "metric_rule": {"reduction": metric.reduction, "pred_ignore": metric.pred_ignore},
        "per_class_iou": dict(zip(dataset.class_names, scores["per_class_iou"], strict=True)),
        "confusion": scores["confusion"].tolist(),
        "queries": list(dataset.queries),
        "queries_hash": queries_hash(list(dataset.queries)),
        "steps_histogram": steps_hist,
        "timing": {
            "wall_s_this_attempt": wall,
            "images_per_s": len(todo) / wall if wall > 0 and todo else None,
            "stage_total_s": stage_time,
            "stage_mean_s_per_image": {k: v / n_ok for k, v in stage_time.items()},
        },
        "per_image": [{"id": r["id"], "steps": r["steps"], "kept": r["kept"]} for r in ok],
        "device": str(device),
        "distributed": {"world_size": ctx.world_size, "backend": ctx.backend},
        "git_sha": git_sha(),
        "versions": package_versions(),
        "config_hash": cfg_hash,
        "config": plain_cfg,
    }
    return results


def require_some_evaluated(evaluated: int, failed: int, run_dir: Path) -> None:
    """A run in which every image failed has no metric: fail (non-zero exit) after recording why."""
    if evaluated == 0 and failed > 0:
        raise RuntimeError(
            f"all {failed} images failed (on_error=skip), so there is no metric (null in results.json); the errors "
            f"are listed under failed_images in {run_dir / RESULTS_FILE}: fix the inputs and run again"
        )


def check_writable(out_dir: Path) -> None:
    """Fail before any work if results cannot be written (the probe's name is per process: ranks never share it)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write_test.{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"results dir {out_dir} is not writable ({err}); set hydra.run.dir=<a writable dir>") from err
