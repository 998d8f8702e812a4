"""Experiment loggers behind one small interface: `none` (results.json only) and `wandb`.

The evaluation loop calls `start()` once the run dir is known and `finish(results)` once
results.json is written. A logger is a side channel: results.json stays the source of truth, so
every W&B failure (missing package, no API key, no network, a crash inside wandb) is turned into a
warning and the run goes on. Without an API key or a reachable server the W&B logger writes an
offline run and prints where its files are and how to upload them (`wandb sync DIR`).
"""

from __future__ import annotations

import logging
import math
import netrc
import os
import socket
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

log = logging.getLogger(__name__)

PER_CLASS_TABLE = "per_class_iou"
SUMMARY_METRICS = ("mIoU", "mIoU_present_classes", "aAcc", "mAcc", "oIoU", "cIoU", "gIoU", "N-acc", "T-acc")


class RunLogger(Protocol):
    """What the evaluation loop needs from a logger."""

    def start(self, config: dict[str, Any], run_dir: Path) -> None: ...

    def finish(self, results: dict[str, Any] | None, run_dir: Path) -> None:
        """Log the final results (None = the run failed) and close the logger."""
        ...


class NoLogger:
    """`logger=none`: everything is in results.json already."""

    def start(self, config: dict[str, Any], run_dir: Path) -> None:
        return None

    def finish(self, results: dict[str, Any] | None, run_dir: Path) -> None:
        return None


def has_wandb_api_key(base_url: str) -> bool:
    """True if wandb could authenticate: WANDB_API_KEY, or a netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(base_url).hostname or "api.wandb.ai"
    path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def server_reachable(base_url: str, timeout_s: float = 3.0) -> bool:
    """One TCP connect to the W&B server, so a cluster node without internet goes offline at once."""
    parsed = urlparse(base_url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "api.wandb.ai", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def choose_wandb_mode(requested: str) -> tuple[str, str]:
    """(mode, reason). `auto` = WANDB_MODE if set, else online only with a key and a reachable server."""
    if requested not in ("auto", "online", "offline", "disabled"):
        raise ValueError(f"logger.mode must be auto|online|offline|disabled, got {requested!r}")
    if requested != "auto":
        return requested, "logger.mode"
    env = os.environ.get("WANDB_MODE")
    if env:
        return ("offline" if env == "dryrun" else env), "WANDB_MODE"
    base_url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    if not has_wandb_api_key(base_url):
        return "offline", "no W&B API key (WANDB_API_KEY or ~/.netrc)"
    if not server_reachable(base_url):
        return "offline", f"{base_url} is not reachable"
    return "online", "API key and server found"


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(float(x)) else None


class WandbLogger:
    """`logger=wandb`: resolved config, final metrics, per-class IoU table, overlay images; group = sweep."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.run: Any = None
        self.wandb: Any = None

    def _init_kwargs(self, config: dict[str, Any], run_dir: Path, mode: str) -> dict[str, Any]:
        c = self.cfg
        sweep = config.get("sweep") or {}
        group = c.get("group") or sweep.get("name")
        wandb_dir = Path(c.get("dir") or run_dir)
        wandb_dir.mkdir(parents=True, exist_ok=True)
        name = c.get("run_name") or "/".join(run_dir.resolve().parts[-2:])
        return {
            "project": c.get("project") or "carbench",
            "entity": c.get("entity"),
            "group": group,
            "job_type": c.get("job_type") or "eval",
            "tags": list(c.get("tags") or []),
            "name": name,
            "notes": c.get("notes"),
            "config": config,
            "dir": str(wandb_dir),
            "mode": mode,
            "reinit": "finish_previous",  # Hydra multirun runs many jobs in one process
        }

    def start(self, config: dict[str, Any], run_dir: Path) -> None:
        try:
            import wandb
        except ImportError:
            log.warning("logger=wandb but the wandb package is not installed (pip install wandb); logging skipped")
            return
        self.wandb = wandb
        mode, why = choose_wandb_mode(str(self.cfg.get("mode") or "auto"))
        if mode == "disabled":
            return
        kwargs = self._init_kwargs(config, run_dir, mode)
        timeout = float(self.cfg.get("init_timeout_s") or 60)
        try:
            self.run = wandb.init(settings=wandb.Settings(init_timeout=timeout, silent=True), **kwargs)
        except Exception as err:  # noqa: BLE001 — W&B must never stop an evaluation
            if mode == "offline":
                log.warning("W&B init failed (%s); logging skipped, results.json is unaffected", err)
                return
            log.warning("W&B online init failed (%s); falling back to offline mode", err)
            mode, why = "offline", f"online init failed: {err}"
            try:
                self.run = wandb.init(settings=wandb.Settings(silent=True), **{**kwargs, "mode": "offline"})
            except Exception as err2:  # noqa: BLE001
                log.warning("W&B offline init failed too (%s); logging skipped", err2)
                return
        if mode == "offline":
            where = self.offline_dir()
            msg = f"W&B offline ({why}): run files in {where}; upload later with `wandb sync {where}`"
            print(msg)
            log.info(msg)
        else:
            log.info("W&B run: %s", getattr(self.run, "url", None))

    def offline_dir(self) -> str | None:
        """The directory holding the run's .wandb file (what `wandb sync` takes)."""
        try:
            return str(Path(self.run.settings.sync_dir))
        except Exception:  # noqa: BLE001
            return None

    def finish(self, results: dict[str, Any] | None, run_dir: Path) -> None:
        if self.run is None:
            return
        try:
            if results is not None:
                self._log_results(results, run_dir)
            self.run.finish(exit_code=0 if results is not None else 1)
        except Exception as err:  # noqa: BLE001
            log.warning("W&B logging of the final results failed (%s); results.json is unaffected", err)
        finally:
            self.run = None

    def _log_results(self, results: dict[str, Any], run_dir: Path) -> None:
        wandb = self.wandb
        metrics = results.get("metrics", {})
        summary = {k: _finite(metrics[k]) for k in SUMMARY_METRICS if k in metrics}
        counts = results.get("num_items", {})
        summary.update({f"images/{k}": v for k, v in counts.items()})
        final = (results.get("filter") or {}).get("final") or {}  # semantic runs: the filter diagnostics
        summary.update({f"filter/{k}": _finite(v) for k, v in final.items() if k != "step"})
        summary["results_json"] = str(run_dir / "results.json")
        self.run.summary.update(summary)
        payload: dict[str, Any] = {k: v for k, v in summary.items() if isinstance(v, float)}
        per_class = results.get("per_class_iou") or {}
        if per_class:
            rows = [[name, _finite(iou)] for name, iou in per_class.items()]
            payload[PER_CLASS_TABLE] = wandb.Table(columns=["class", "IoU"], data=rows)
        max_images = int(self.cfg.get("max_overlays") or 0)
        overlays = sorted((run_dir / "overlays").glob("*.png"))[:max_images]
        for png in overlays:  # one key per image: overlays differ in size, W&B galleries want one size
            payload[f"overlays/{png.stem}"] = wandb.Image(
                str(png), caption=f"{png.stem}: image | GT | CaR | kept queries per step"
            )
        self.run.log(payload)


def overlay_count(cfg: Any) -> int:
    """Images to draw overlays for: `overlays=N`, or more if the logger uploads more (W&B max_overlays)."""
    block = (cfg.get("logger") if cfg is not None else None) or {}
    wanted = int(block.get("max_overlays") or 0) if block.get("name") == "wandb" else 0
    return max(int(cfg.get("overlays") or 0), wanted)


def build_logger(cfg: Any) -> RunLogger:
    """Logger named by `cfg.logger.name` (none | wandb); a missing logger block means none."""
    from omegaconf import DictConfig, OmegaConf

    block = cfg.get("logger") if cfg is not None else None
    if isinstance(block, DictConfig):
        block = OmegaConf.to_container(block, resolve=True)
    block = dict(block or {})
    name = block.get("name", "none")
    if name == "none":
        return NoLogger()
    if name == "wandb":
        return WandbLogger(block)
    raise ValueError(f"unknown logger {name!r}; valid: none, wandb")
