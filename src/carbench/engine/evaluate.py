"""`run_evaluation(cfg, out_dir)`: what `evaluate.py` (the Hydra entry point) calls, for every task.

A plain function of a config, so tests and other tools can call it without Hydra. It checks the
config (strict keys, whole numbers), seeds, picks the device, joins torchrun when launched by it,
turns SIGTERM into a clean interrupt, and runs the one loop (engine/loop.py).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from carbench.engine import distributed as dist_util
from carbench.engine import run_lock
from carbench.engine.config_check import check_bool_values, check_int_values, check_keys
from carbench.engine.interrupts import RunInterrupted, interrupted, sigterm_as_interrupt
from carbench.engine.log_filters import quiet_third_party_info
from carbench.engine.loop import run_task
from carbench.engine.run_setup import check_writable
from carbench.models.backbones.device import resolve_device

__all__ = ["run_evaluation", "seed_everything"]

ON_ERROR = ("raise", "skip")


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (the official evaluation uses seed 0)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_evaluation(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Evaluate `cfg.model` on `cfg.dataset`; write results.json (and predictions) under out_dir.

    Every finished item is appended to progress.jsonl (fsynced), so a run killed at any point and
    restarted with the same command + resume=true (or into the same run dir) ends with the same
    metrics as an uninterrupted run. results.json is written once, complete, atomically.

    Under `torchrun` (WORLD_SIZE > 1) every rank evaluates a strided shard of the remaining items
    into its own progress file, the metric states are summed by torchmetrics' distributed sync,
    and rank 0 alone writes results.json and calls the logger (engine/distributed.py).
    """
    out_dir = Path(out_dir)
    quiet_third_party_info()  # open_clip's root-logger INFO lines (engine/log_filters.py)
    plain_cfg = OmegaConf.to_container(cfg, resolve=True)
    check_keys(plain_cfg)
    check_int_values(plain_cfg)
    check_bool_values(plain_cfg)
    on_error = str(cfg.get("on_error", "raise"))
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    seed_everything(int(cfg.seed))
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    device = resolve_device(str(cfg.device))
    with sigterm_as_interrupt():
        try:
            ctx = dist_util.init_distributed(cfg.get("dist"), device)
            try:
                if ctx.is_main:  # rank 0 alone creates and probes the run dir; the others wait for it
                    check_writable(out_dir)
                dist_util.barrier(ctx)
                return run_task(cfg, out_dir, plain_cfg, on_error, dist_util.rank_device(device, ctx), ctx)
            finally:
                run_lock.release_held()
                dist_util.shutdown(ctx)
        except RunInterrupted:
            raise
        except KeyboardInterrupt as err:  # before the loop started: nothing was evaluated by this attempt
            raise interrupted(err, None, None, None) from None
