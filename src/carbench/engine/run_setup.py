"""Before the first item of a run: where it writes, what it resumes, which items it evaluates, how they load.

Shared by every task through engine/loop.py. The run dir is decided and locked by rank 0 alone; a
resume is checked against the config hash, the data fingerprint and the ids of every kept record,
so a changed config, split or file is refused with what changed instead of being mixed in.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from carbench.engine import distributed as dist_util
from carbench.engine import run_lock
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
from carbench.engine.run_identity import data_fingerprint, explain_mismatch, header, semantic_config
from carbench.engine.workers import die_with_parent

log = logging.getLogger(__name__)


def identify_run(plain_cfg: dict[str, Any], dataset: Any, n: int) -> tuple[str, dict[str, Any]]:
    """The run's hash and progress-log header, covering the config and the data (ids + file stats)."""
    data = data_fingerprint(dataset, n)
    cfg_hash = config_hash(plain_cfg, data)
    return cfg_hash, header(plain_cfg, data, cfg_hash)


def item_count(cfg: DictConfig, dataset: Any) -> int:
    """How many items of the split this run evaluates: all, or the first `limit`."""
    limit = cfg.get("limit")
    if limit is None:
        return len(dataset)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive integer (the first N images) or null for the whole split, "
                         f"got {limit!r}")
    return min(limit, len(dataset))


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


class _Loaded(torch.utils.data.Dataset):
    """Dataset view for the DataLoader: yields (index, sample or None, error or None).

    Decoding runs in background workers; a bad file becomes a recorded error instead of killing
    the worker, so `on_error=skip` can skip it and `on_error=raise` can name it.
    """

    def __init__(self, dataset: Any, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, Any, str | None]:
        idx = self.indices[i]
        try:
            return idx, self.dataset[idx], None
        except Exception as err:  # noqa: BLE001 — reported per item, never swallowed
            return idx, None, f"{type(err).__name__}: {err}"


def make_loader(cfg: DictConfig, dataset: Any, indices: list[int]) -> torch.utils.data.DataLoader:
    """Items `indices` of `dataset`, decoded in `num_workers` background workers, errors passed along."""
    workers = int(cfg.get("num_workers", 0))
    return torch.utils.data.DataLoader(
        _Loaded(dataset, indices), batch_size=None, shuffle=False, num_workers=workers,
        collate_fn=lambda x: x, prefetch_factor=2 if workers else None,
        worker_init_fn=die_with_parent if workers else None,
    )


def gather_records(run_dir: Path, cfg_hash: str, n: int, ctx: dist_util.DistContext) -> list[dict[str, Any]]:
    """Every rank's records of items 0..n-1, in order, once every rank has finished writing."""
    dist_util.barrier(ctx)
    records = dist_util.read_all_records(run_dir, cfg_hash)
    missing = [i for i in range(n) if i not in records]
    if missing:
        raise RuntimeError(f"{len(missing)} items have no record in {run_dir} (first: index {missing[0]})")
    return [records[i] for i in range(n)]


def check_writable(out_dir: Path) -> None:
    """Fail before any work if results cannot be written (the probe's name is per process: ranks never share it)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write_test.{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"results dir {out_dir} is not writable ({err}); set hydra.run.dir=<a writable dir>") from err
