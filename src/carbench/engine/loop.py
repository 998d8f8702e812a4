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

Batching (`model.batch_images=N`, N > 1, for a `BatchSegmenter` such as CaR): the loop groups up to
N loaded items, starts their model work in one call, and finishes the previous group's items, in
index order, after that: the same pipelining with a group as the unit. Records stay per item and
identical to an unbatched run's, except `time.total`, which is then the group's time from its
start to the item's record divided by the group's size. If starting a group raises, its items are
started again one by one, so a failure is recorded against (or raised naming) its own item and
its group-mates are unaffected.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from carbench.data import build_dataset
from carbench.engine import distributed as dist_util
from carbench.engine.disk import disk_error, is_disk_error
from carbench.engine.evaluators import Evaluator, Outputs, build_evaluator
from carbench.engine.interrupts import interrupted, raise_if_received, stop_between_items, stop_requested
from carbench.engine.loggers import build_logger, overlay_count
from carbench.engine.oom import explain_out_of_memory
from carbench.engine.oracle import empty_prediction, lift_prediction, oracle_indices, oracle_sample
from carbench.engine.progress import RESULTS_FILE, Progress
from carbench.engine.results import write_json_atomic
from carbench.engine.run_setup import gather_records, identify_run, item_count, make_loader, open_run
from carbench.engine.schema import assemble_results, require_some_evaluated, trace_times
from carbench.models.build import build_model
from carbench.types import BatchSegmenter, DeferredSegmenter, Prediction, Sample, SampleSegmenter, Segmenter

log = logging.getLogger(__name__)

Started = Callable[[], Prediction]
Loaded = tuple[int, Sample | None, str | None]  # what the loader yields: index, sample, load error
Pending = tuple[int, str, Sample | None, Started | Exception, float, int]  # idx, id, sample, started, t0, group size


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


def _ready(pred: Prediction) -> Started:
    return lambda: pred


def _lifted(finish: Started, indices: list[int], n_queries: int) -> Started:
    """An oracle item's finisher: the prediction on its GT classes mapped back to all its queries."""
    return lambda: lift_prediction(finish(), indices, n_queries)


def start_batch(segmenter: BatchSegmenter, samples: Sequence[Sample],
                oracle_label_ids: list[int] | None = None) -> list[Started]:
    """`start_segment` of several samples with the model's work of all of them in one call (same outputs)."""
    out: list[Started | None] = [None] * len(samples)
    asked: list[tuple[int, Sample, list[int] | None]] = []  # position, what the model sees, oracle indices
    for k, sample in enumerate(samples):
        if oracle_label_ids is None:
            asked.append((k, sample, None))
            continue
        indices = oracle_indices(sample, oracle_label_ids)
        if not indices:
            out[k] = _ready(empty_prediction(sample))
        else:
            asked.append((k, oracle_sample(sample, indices), indices))
    if asked:
        finishes = segmenter.segment_batch_deferred([s.image for _, s, _ in asked], [s.queries for _, s, _ in asked])
        if len(finishes) != len(asked):
            raise RuntimeError(f"{type(segmenter).__name__}.segment_batch_deferred returned {len(finishes)} results "
                               f"for {len(asked)} images; it must return one per image")
        for (k, _, indices), finish in zip(asked, finishes, strict=True):
            if indices is None:
                out[k] = finish
            else:
                out[k] = _lifted(finish, indices, len(samples[k].queries))
    return out  # type: ignore[return-value]  # every position was filled above


def batch_images(cfg: DictConfig) -> int:
    """`model.batch_images` (default 1) as an int ≥ 1, or a ValueError naming the value and the fix."""
    value = cfg.model.get("batch_images", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"model.batch_images must be an integer ≥ 1 (1 = one image at a time), got {value!r} "
                         f"({type(value).__name__}); set e.g. model.batch_images=4")
    return value


def check_batchable(n: int, segmenter: Segmenter, cfg: DictConfig) -> None:
    """Refuse `model.batch_images` > 1 for a model that cannot run images together."""
    if n > 1 and not isinstance(segmenter, BatchSegmenter):
        what = f"model={cfg.model.get('name')}"
        if cfg.model.get("two_pass"):
            what += " with two passes (model.two_pass)"
        if cfg.dataset.get("task", "semantic") != "semantic":
            what += f" on a {cfg.dataset.task} dataset"
        raise ValueError(f"model.batch_images={n} needs a model that segments several images together, but "
                         f"{what} ({type(segmenter).__name__}) does not; set model.batch_images=1")


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
    """This rank's items: segment, score, record — pipelined by one item, or by one group of
    `batch` items (module docstring)."""

    def __init__(self, segmenter: Segmenter, evaluator: Evaluator, progress: Progress, run_dir: Path,
                 on_error: str, noun: str, oracle_label_ids: list[int] | None = None, batch: int = 1) -> None:
        self.segmenter, self.evaluator, self.progress = segmenter, evaluator, progress
        self.run_dir, self.on_error, self.noun, self.oracle = run_dir, on_error, noun, oracle_label_ids
        self.batch = batch

    def run(self, loader: Any, ids: list[str], bar: Any) -> None:
        """Item i is finished (post-processing collected, scored, recorded) after item i+1's model work
        has started (with batching: after the next group's), which overlaps a worker's CRF with the
        model; an error is attributed to its item.

        A signal (`stop_between_items`) ends the loop at the next item boundary, after the started
        items are finished and recorded; the caller raises it."""
        pending: list[Pending] = []
        group: list[Loaded] = []
        for item in loader:
            if stop_requested():
                group = []  # loaded, not started: evaluated on resume
                break
            group.append(item)
            if len(group) == self.batch:
                pending = self.advance(group, pending, ids, bar)
                group = []
        if group:
            pending = self.advance(group, pending, ids, bar)
        self.finish_all(pending, bar)

    def advance(self, group: list[Loaded], pending: list[Pending], ids: list[str], bar: Any) -> list[Pending]:
        """Start `group`, then finish the `pending` items before it; returns the group's pending items."""
        t0 = time.perf_counter()
        try:
            started = self.start_group(group)
        except BaseException:  # Ctrl-C / kill while this group ran: keep the finished ones before it
            self.finish_all(pending, bar)
            raise
        self.finish_all(pending, bar)
        return [(idx, sample.id if sample is not None else ids[idx], sample, st, t0, len(group))
                for (idx, sample, _), st in zip(group, started, strict=True)]

    def finish_all(self, pending: list[Pending], bar: Any) -> None:
        """Finish these items in order, advancing the progress bar by one each."""
        for item in pending:
            self.finish(*item)
            bar.update(1)

    def start_group(self, group: list[Loaded]) -> list[Started | Exception]:
        """Start every item of `group` (one model call for the loaded ones when batching); an item's
        failure is returned in its place, to be recorded or raised in order when it is finished."""
        if self.batch == 1 or len(group) == 1:
            return [self.start_one(sample, error) for _, sample, error in group]
        loaded = [k for k, (_, sample, error) in enumerate(group) if error is None and sample is not None]
        try:
            together = start_batch(self.segmenter, [group[k][1] for k in loaded], self.oracle)  # type: ignore[arg-type]
        except Exception as err:  # one image may have failed: retry them one by one to find which
            log.warning("a batch of %d %ss failed (%s: %s); running its %ss one by one",
                        len(loaded), self.noun, type(err).__name__, err, self.noun)
            return [self.start_one(sample, error) for _, sample, error in group]
        by_position = dict(zip(loaded, together, strict=True))
        return [by_position[k] if k in by_position else self.start_one(sample, error)
                for k, (_, sample, error) in enumerate(group)]

    def start_one(self, sample: Sample | None, load_error: str | None) -> Started | Exception:
        """Start one item; its exception (e.g. the loader's error) is returned, not raised."""
        try:
            if load_error is not None:
                raise RuntimeError(load_error)
            return start_segment(self.segmenter, sample, self.oracle)  # type: ignore[arg-type]
        except Exception as err:  # recorded (or raised) in order, when this item is finished
            return err

    def finish(self, idx: int, sample_id: str, sample: Sample | None, started: Started | Exception,
               t0: float, group_size: int = 1) -> None:
        """Collect one item's prediction, score it and append its record (or its failure)."""
        try:
            if isinstance(started, Exception):
                raise started
            pred = started()
            fields = self.evaluator.process(sample, pred)
            times = trace_times(pred, t0)
            times["total"] /= group_size  # a group's items share its time (module docstring)
            self.progress.add({
                "index": idx, "id": sample.id, "status": "ok", **fields, "steps": len(pred.trace),
                "kept": [sample.queries[k] for k in pred.kept], "time": times,
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
    batch = batch_images(cfg)
    segmenter = build_model(cfg, device)
    check_batchable(batch, segmenter, cfg)
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

    t_start = time.perf_counter()
    with stop_between_items(noun):  # a signal stops the loop between items, never inside a lock (interrupts.py)
        loader = make_loader(cfg, dataset, mine)
        bar = tqdm(total=n if not ctx.enabled else len(mine), initial=n - len(todo) if not ctx.enabled else 0,
                   desc=evaluator.describe() + (f" [rank {ctx.rank}]" if ctx.enabled else ""),
                   unit={"image": "img", "expression": "expr"}.get(evaluator.unit, evaluator.unit),
                   dynamic_ncols=True, disable=ctx.enabled and not ctx.is_main)
        items = ItemLoop(segmenter, evaluator, progress, run_dir, on_error, noun, oracle, batch)
        try:
            run_guarded(lambda: items.run(loader, ids, bar), logger, run_dir, progress, ctx, n)
        finally:
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
