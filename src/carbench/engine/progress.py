"""Per-image progress log of a run, so an interrupted run resumes exactly where it stopped.

Each finished image appends one JSON line (its metric-state delta, steps, kept queries, timings,
or its error) and fsyncs it. A crash can only leave the last line half-written; that line is
ignored and cut off on resume, so the log always describes whole images. The log's first line
holds a hash of the run's config: resuming with a different config is refused, because the metric
state of the two halves would not describe one experiment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROGRESS_FILE = "progress.jsonl"
RESULTS_FILE = "results.json"
# keys that do not change what a run computes, so they may differ between a run and its resume
NON_SEMANTIC_KEYS = (
    "resume", "resume_search_dir", "num_workers", "threads", "on_error", "logger", "overlays", "dist", "sweep",
)


log = logging.getLogger(__name__)


class ResumeError(RuntimeError):
    """A run directory's progress cannot be continued by this run."""


def _record_problem(rec: dict[str, Any]) -> str | None:
    """What makes a parsed image record unusable, or None.

    Checked for every task: a non-negative int index, status 'ok' or 'failed', an error text on a
    failure, and — where present — a well-formed sparse metric state ('confusion' = [indices, counts]).
    """
    index = rec.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        return "has no valid image index"
    status = rec.get("status")
    if status == "failed":
        return None if isinstance(rec.get("error"), str) else "is a failure record without an error"
    if status != "ok":
        return f"has status {status!r} (expected 'ok' or 'failed')"
    if "confusion" in rec:
        conf = rec["confusion"]
        if not (
            isinstance(conf, list) and len(conf) == 2 and all(isinstance(c, list) for c in conf)
            and len(conf[0]) == len(conf[1])
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in conf[0] + conf[1])
        ):
            return "has a malformed metric state ('confusion' must be two equal-length lists of non-negative ints)"
    return None


def config_hash(cfg: dict[str, Any]) -> str:
    plain = {k: v for k, v in cfg.items() if k not in NON_SEMANTIC_KEYS}
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Progress:
    """The records of a run directory: header (config hash) then one record per finished image."""

    path: Path
    cfg_hash: str
    records: dict[int, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, run_dir: Path, cfg_hash: str, filename: str = PROGRESS_FILE) -> Progress:
        """Load (and repair) the log in `run_dir`, or start a new one.

        `filename`: each torchrun rank keeps its own file (engine/distributed.py), so ranks never
        interleave writes and each one repairs only its own torn line.
        """
        path = Path(run_dir) / filename
        prog = cls(path, cfg_hash)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            prog._append({"header": True, "config_hash": cfg_hash})
            return prog
        raw = path.read_bytes()
        lines = raw.split(b"\n")
        good_bytes = 0
        header = None
        for i, line in enumerate(lines):
            if not line.strip():
                good_bytes += len(line) + (1 if i < len(lines) - 1 else 0)
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if i >= len(lines) - 2:  # a torn final write: drop it
                    break
                raise ResumeError(
                    f"{path} line {i + 1} is corrupted (not JSON) in the middle of the file; the run's "
                    f"state cannot be trusted. Delete {path.parent} to start over."
                ) from None
            if not isinstance(rec, dict):
                raise ResumeError(
                    f"{path} line {i + 1} is not a JSON object ({type(rec).__name__}); the run's state cannot be "
                    f"trusted. Delete {path.parent} to start over."
                )
            if header is None:
                if not rec.get("header"):
                    raise ResumeError(
                        f"{path} does not start with a carbench header (is it a progress log of this tool?); "
                        f"delete {path.parent} or use a new run dir"
                    )
                header = rec
            else:
                problem = _record_problem(rec)
                if problem is not None:
                    raise ResumeError(
                        f"{path} line {i + 1} {problem}. Delete that line (its image is then evaluated again) "
                        f"or delete {path.parent} to start over."
                    )
                prog.records[rec["index"]] = rec
            good_bytes += len(line) + 1
        if header is None:
            # No complete line at all: the run died while writing its header, before any image finished.
            # Nothing is lost by starting the log again.
            log.warning("%s holds no complete record (interrupted while starting); starting it afresh", path)
            path.write_bytes(b"")
            prog._append({"header": True, "config_hash": cfg_hash})
            return prog
        if header.get("config_hash") != cfg_hash:
            raise ResumeError(
                f"{path.parent} holds a run with a different config (hash {header.get('config_hash')} vs "
                f"{cfg_hash}); resume with the exact same overrides, or use a new run dir."
            )
        if good_bytes < len(raw):
            with open(path, "r+b") as f:
                f.truncate(good_bytes)
        return prog

    def _append(self, rec: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(rec, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def add(self, rec: dict[str, Any]) -> None:
        self._append(rec)
        self.records[rec["index"]] = rec


def find_resumable(search_root: Path, cfg_hash: str) -> Path | None:
    """Newest run dir under `search_root` with the same config hash and no results.json yet."""
    candidates = []
    for p in Path(search_root).glob(f"**/{PROGRESS_FILE}"):
        if (p.parent / RESULTS_FILE).exists():
            continue
        try:
            with open(p) as f:
                head = json.loads(f.readline())
        except (OSError, json.JSONDecodeError):
            continue
        if head.get("config_hash") == cfg_hash:
            candidates.append(p.parent)
    return max(candidates, key=lambda d: (d / PROGRESS_FILE).stat().st_mtime, default=None)
