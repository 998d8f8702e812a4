"""The one evaluation loop: dataset → model → evaluator, for every task.

`run_task` is what `run_evaluation` (engine/evaluate.py) runs on each rank once seed, device and
torchrun are set up. It builds the dataset, the model (`carbench.models.build.build_model`, which
alone decides two-pass, referring or protocol wrapping) and the task's evaluator
(engine/evaluators/), replays what an earlier attempt of the run finished, evaluates this rank's
share of the rest, and writes one results.json (engine/schema.py).

Guarantees, the same for every task: every finished item is appended (fsynced) to the rank's
progress file before the next one is recorded; a failure is raised naming the item, or with
``on_error=skip`` recorded and excluded; a failure on one rank stops all of them; a signal stops
the run saying what is kept; post-processing of item i may still run in a worker while item i+1's
CLIP work starts (a `DeferredSegmenter`), and records are still written in order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from carbench.data import build_dataset
from carbench.engine import distributed as dist_util
from carbench.engine.disk import disk_error, is_disk_error
from carbench.engine.evaluators import Evaluator, Outputs, build_evaluator
from carbench.engine.interrupts import interrupted, raise_if_received
from carbench.engine.loggers import build_logger, overlay_count
from carbench.engine.oom import explain_out_of_memory
from carbench.engine.oracle import empty_prediction, lift_prediction, oracle_indices, oracle_sample
from carbench.engine.progress import RESULTS_FILE, Progress
from carbench.engine.results import write_json_atomic
from carbench.engine.run_setup import gather_records, identify_run, item_count, make_loader, open_run
from carbench.engine.schema import assemble_results, require_some_evaluated, trace_times
from carbench.models.build import build_model
from carbench.types import DeferredSegmenter, Prediction, Sample, SampleSegmenter, Segmenter

log = logging.getLogger(__name__)

Started = Callable[[], Prediction]


def _segment(segmenter: Segmenter, sample: Sample) -> Started:
    """Begin one item; the returned function yields its Prediction (module docstring: deferral)."""
    if isinstance(segmenter, SampleSegmenter):  # models that need the sample itself (e.g. precomputed)
        pred = segmenter.segment_sample(sample)
    elif isinstance(segmenter, DeferredSegmenter):
        return segmenter.segment_deferred(sample.image, sample.queries)
    else:
        pred = segmenter.segment(sample.image, sample.queries)
    return lambda: pred


def start_segment(segmenter: Segmenter, sample: Sample, oracle_label_ids: list[int] | None = None) -> Started:
    """`_segment`, or with `oracle_label_ids` (model.oracle_queries) the model asked only about the
    classes in the sample's GT, its prediction mapped back to every query (engine/oracle.py)."""
    if oracle_label_ids is None:
        return _segment(segmenter, sample)
    indices = oracle_indices(sample, oracle_label_ids)
    if not indices:
        empty = empty_prediction(sample)
        return lambda: empty
    finish = _segment(segmenter, oracle_sample(sample, indices))
    return lambda: lift_prediction(finish(), indices, len(sample.queries))


def oracle_labels(cfg: DictConfig, dataset: Any, segmenter: Segmenter) -> list[int] | None:
    """The dataset's query label ids when `model.oracle_queries` is on (else None), or why it cannot be."""
    if not cfg.model.get("oracle_queries"):
        return None
    if cfg.dataset.get("task", "semantic") != "semantic":
        raise ValueError("model.oracle_queries=true needs a semantic dataset (the GT classes become the queries); "
                         f"dataset {cfg.dataset.name!r} is {cfg.dataset.task}: drop the override")
    if isinstance(segmenter, SampleSegmenter):
        raise ValueError("model.oracle_queries=true cannot change the queries of precomputed predictions "
                         f"(model={cfg.model.get('name')}): drop the override or pick a model that takes queries")
    return [int(v) for v in dataset.query_label_ids]


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


class ItemLoop:
    """This rank's items: segment, score, record — pipelined by one item (module docstring)."""

    def __init__(self, segmenter: Segmenter, evaluator: Evaluator, progress: Progress, run_dir: Path,
                 on_error: str, noun: str, oracle_label_ids: list[int] | None = None) -> None:
        self.segmenter, self.evaluator, self.progress = segmenter, evaluator, progress
        self.run_dir, self.on_error, self.noun, self.oracle = run_dir, on_error, noun, oracle_label_ids

    def run(self, loader: Any, ids: list[str], bar: Any) -> None:
        """Item i is finished (post-processing collected, scored, recorded) after item i+1's model work
        has started, which overlaps a worker's CRF with the model; an error is attributed to its item."""
        pending: tuple | None = None
        for idx, sample, load_error in loader:
            raise_if_received()
            sample_id = sample.id if sample is not None else ids[idx]
            t0 = time.perf_counter()
            try:
                if load_error is not None:
                    raise RuntimeError(load_error)
                started: Started | Exception = start_segment(self.segmenter, sample, self.oracle)
            except Exception as err:  # recorded (or raised) in order, when this item is finished
                started = err
            except BaseException:  # Ctrl-C / kill while this item ran: keep the finished one before it
                if pending is not None:
                    self.finish(*pending)
                raise
            if pending is not None:
                self.finish(*pending)
                bar.update(1)
            pending = (idx, sample_id, sample, started, t0)
        if pending is not None:
            self.finish(*pending)
            bar.update(1)

    def finish(self, idx: int, sample_id: str, sample: Sample | None, started: Started | Exception,
               t0: float) -> None:
        """Collect one item's prediction, score it and append its record (or its failure)."""
        try:
            if isinstance(started, Exception):
                raise started
            pred = started()
            fields = self.evaluator.process(sample, pred)
            self.progress.add({
                "index": idx, "id": sample.id, "status": "ok", **fields, "steps": len(pred.trace),
                "kept": [sample.queries[k] for k in pred.kept], "time": trace_times(pred, t0),
            })
        except Exception as err:
            if is_disk_error(err):  # the run's own files cannot be written: not this item's fault
                raise disk_error(err, self.run_dir) from err
            err = explain_out_of_memory(err, sample)  # a huge image: name its size and the cap
            if self.on_error == "raise" or isinstance(err, (KeyboardInterrupt, MemoryError)):
                raise RuntimeError(
                    f"{self.noun} {sample_id} (index {idx}) failed: {err}. {len(self.progress.records)} finished "
                    f"{self.noun}s are kept in {self.progress.path}; fix the input and rerun with resume=true, or "
                    "set on_error=skip to record failures and exclude them from the metric."
                ) from err
            log.warning("%s %s failed and is skipped (on_error=skip): %s", self.noun, sample_id, err)
            self.progress.add({"index": idx, "id": sample_id, "status": "failed",
                               "error": f"{type(err).__name__}: {err}"})


def run_task(cfg: DictConfig, out_dir: Path, plain_cfg: Any, on_error: str, device: torch.device,
             ctx: dist_util.DistContext) -> dict[str, Any]:
    """This rank's part of a run of any task (module docstring); rank 0 writes results.json."""
    out_dir = Path(dist_util.broadcast(str(out_dir), ctx))  # Hydra may stamp each rank's dir differently
    dataset = build_dataset(cfg.dataset)
    n = item_count(cfg, dataset)
    cfg_hash, head = identify_run(plain_cfg, dataset, n)
    segmenter = build_model(cfg, device)
    oracle = oracle_labels(cfg, dataset, segmenter)
    ids = list(dataset.ids)
    run_dir, progress, done_before = open_run(cfg, out_dir, cfg_hash, ctx, head, ids)

    outputs = Outputs(run_dir, bool(cfg.save_predictions), frozenset(ids[:overlay_count(cfg)]))
    evaluator = build_evaluator(cfg, dataset, outputs)
    noun = "image" if evaluator.task == "semantic" else "sample"
    for i in sorted(done_before) if ctx.is_main else ():  # once, on rank 0, in index order (same float sums)
        if done_before[i]["status"] == "ok":
            evaluator.replay(done_before[i])
    todo = [i for i in range(n) if i not in done_before]
    if done_before and ctx.is_main:
        log.info("resuming: %d of %d %ss already done in %s", n - len(todo), n, noun, run_dir)
    mine = dist_util.shard(todo, ctx)
    if ctx.backend == "nccl":
        evaluator.to(device)  # nccl gathers CUDA tensors only
    logger = build_logger(cfg) if ctx.is_main else build_logger(None)
    logger.start(plain_cfg, run_dir)

    loader = make_loader(cfg, dataset, mine)
    t_start = time.perf_counter()
    bar = tqdm(total=n if not ctx.enabled else len(mine), initial=n - len(todo) if not ctx.enabled else 0,
               desc=evaluator.describe() + (f" [rank {ctx.rank}]" if ctx.enabled else ""),
               unit={"image": "img", "expression": "expr"}.get(evaluator.unit, evaluator.unit),
               dynamic_ncols=True, disable=ctx.enabled and not ctx.is_main)
    items = ItemLoop(segmenter, evaluator, progress, run_dir, on_error, noun, oracle)
    run_guarded(lambda: items.run(loader, ids, bar), logger, run_dir, progress, ctx, n)
    bar.close()
    wall = time.perf_counter() - t_start
    results = assemble_results(evaluator, gather_records(run_dir, cfg_hash, n, ctx), len(dataset), len(todo),
                               wall, device, ctx, plain_cfg, cfg_hash)
    results["run_dir"] = str(run_dir)
    if not ctx.is_main:
        return results
    write_json_atomic(run_dir / RESULTS_FILE, {k: v for k, v in results.items() if k != "run_dir"})
    logger.finish(results, run_dir)
    counts = results["num_items"]
    print(evaluator.count_line(results))
    if evaluator.task != "semantic":
        print("  ".join(f"{k} {v:.2f}" for k, v in results["metrics"].items()))
    require_some_evaluated(counts["evaluated"], counts["failed"], run_dir)
    if outputs.overlay_ids:
        print(f"overlays (image | GT | CaR | kept queries per step): {run_dir / 'overlays'}")
    primary = results["metrics"][evaluator.primary_metric]
    log.info("%s %.2f on %d %ss of %s; results in %s", evaluator.primary_metric, primary, counts["evaluated"],
             noun, results["dataset"]["name"], run_dir)
    return results
