"""Data-parallel evaluation under `torchrun`: process group, sharding, per-rank progress files.

`torchrun --nproc-per-node N evaluate.py …` starts N copies of the Hydra entry point with RANK /
WORLD_SIZE / LOCAL_RANK / MASTER_ADDR in the environment. Each rank evaluates a strided shard of
the images still to do (`todo[rank::world]`, so every image is evaluated exactly once, remainder
included — the official code's chunking silently drops it), appends its finished images to its own
progress file, and the metric's confusion matrix is summed across ranks by torchmetrics' own
distributed sync inside `compute()`. Rank 0 alone writes results.json and talks to the logger.

Resume works across world sizes: every rank reads the records of *all* progress files of the run
dir, so a run interrupted with 4 processes can be finished with 1, or the other way round.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from carbench.engine.progress import PROGRESS_FILE, ResumeError

log = logging.getLogger(__name__)

RANK_PROGRESS_GLOB = "progress.rank*.jsonl"


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job. The default (rank 0 of 1) means: not distributed."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False  # this module created the process group, so it also destroys it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def pick_backend(requested: str, device: torch.device) -> str:
    """`auto` → nccl for CUDA devices, gloo otherwise (CPU runs, CI)."""
    if requested not in ("auto", "gloo", "nccl"):
        raise ValueError(f"dist.backend must be auto|gloo|nccl, got {requested!r}")
    if requested != "auto":
        return requested
    return "nccl" if device.type == "cuda" else "gloo"


def rank_device(device: torch.device, ctx: DistContext) -> torch.device:
    """One GPU per rank: `cuda` (or auto → cuda) becomes cuda:LOCAL_RANK; explicit indices are kept."""
    if ctx.enabled and device.type == "cuda" and device.index is None:
        return torch.device("cuda", ctx.local_rank)
    return device


def init_distributed(dist_cfg: Any, device: torch.device) -> DistContext:
    """Join the torchrun process group if WORLD_SIZE > 1 (env:// rendezvous); else a no-op context."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistContext()
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if dist.is_initialized():  # the caller set it up (e.g. a launcher); use it, leave it alone
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend(), False)
    get = dist_cfg.get if dist_cfg is not None else (lambda _k, d=None: d)
    dev = rank_device(device, DistContext(rank, world, local_rank))
    backend = pick_backend(str(get("backend", "auto") or "auto"), dev)
    if backend == "nccl":
        torch.cuda.set_device(dev)
    timeout = timedelta(seconds=float(get("timeout_s", 1800) or 1800))
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world, timeout=timeout)
    log.info("distributed: rank %d of %d (local %d), backend %s", rank, world, local_rank, backend)
    return DistContext(rank, world, local_rank, backend, True)


def shutdown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def shard(indices: list[int], ctx: DistContext) -> list[int]:
    """This rank's share of `indices`: strided, so shards differ in size by at most one and none is lost."""
    return indices[ctx.rank :: ctx.world_size]


def broadcast(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's `obj` on every rank (the run dir, which Hydra may have stamped differently per rank)."""
    if not ctx.enabled:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def any_rank_failed(failed_here: bool, ctx: DistContext) -> bool:
    """Collective: True if any rank failed, so the others stop instead of hanging in the metric sync."""
    if not ctx.enabled:
        return failed_here
    flag = torch.tensor([1 if failed_here else 0], dtype=torch.int64)
    if ctx.backend == "nccl":
        flag = flag.cuda()
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def progress_filename(ctx: DistContext) -> str:
    """Rank 0 keeps the single-process name, so `resume=true` discovery finds every run the same way."""
    return PROGRESS_FILE if ctx.rank == 0 else f"progress.rank{ctx.rank}.jsonl"


def progress_files(run_dir: Path) -> list[Path]:
    files = [Path(run_dir) / PROGRESS_FILE, *sorted(Path(run_dir).glob(RANK_PROGRESS_GLOB))]
    return [f for f in files if f.exists()]


def read_all_records(run_dir: Path, cfg_hash: str) -> dict[int, dict[str, Any]]:
    """Records of every progress file in `run_dir` (read-only; a torn last line is ignored).

    Every file must carry this run's config hash: a shard from another experiment must never be
    mixed into the metric.
    """
    records: dict[int, dict[str, Any]] = {}
    for path in progress_files(run_dir):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1:  # torn final write of an interrupted rank
                    break
                raise ResumeError(f"{path} line {i + 1} is corrupted; delete {run_dir} to start over") from None
            if rec.get("header"):
                if rec.get("config_hash") != cfg_hash:
                    raise ResumeError(
                        f"{path} belongs to a run with config hash {rec.get('config_hash')}, not {cfg_hash}; "
                        "resume with the exact same overrides, or use a new run dir"
                    )
                continue
            records[int(rec["index"])] = rec
    return records
