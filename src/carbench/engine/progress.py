"""Per-image progress log of a run, so an interrupted run resumes exactly where it stopped.

Each finished image appends one JSON line (its metric-state delta, steps, kept queries, timings,
or its error) and fsyncs it. A crash can only leave the last line half-written; that line is
ignored and cut off on resume, so the log always describes whole images. The log's first line
holds a hash of the run's config: resuming with a different config is refused, because the metric
state of the two halves would not describe one experiment.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carbench.engine.run_identity import NON_SEMANTIC_KEYS, explain_mismatch, run_hash

__all__ = ["NON_SEMANTIC_KEYS", "PROGRESS_FILE", "RESULTS_FILE", "Progress", "ResumeError", "config_hash",
           "find_resumable"]

PROGRESS_FILE = "progress.jsonl"
RESULTS_FILE = "results.json"


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


def config_hash(cfg: dict[str, Any], data: dict[str, Any] | None = None) -> str:
    """Hash of what decides a run's numbers: the semantic config and the data fingerprint (run_identity.py)."""
    return run_hash(cfg, data)


@dataclass
class Progress:
    """The records of a run directory: header (config hash) then one record per finished image."""

    path: Path
    cfg_hash: str
    records: dict[int, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, run_dir: Path, cfg_hash: str, filename: str = PROGRESS_FILE,
             header: dict[str, Any] | None = None) -> Progress:
        """Load (and repair) the log in `run_dir`, or start a new one.

        `filename`: each torchrun rank keeps its own file (engine/distributed.py), so ranks never
        interleave writes and each one repairs only its own torn line. `header`: what the hash was
        computed from (run_identity.header), stored so a refused resume can say what differs.
        """
        path = Path(run_dir) / filename
        prog = cls(path, cfg_hash)
        head = header or {"header": True, "config_hash": cfg_hash}
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            prog._append(head)
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
            prog._append(head)
            return prog
        if header.get("config_hash") != cfg_hash:
            raise ResumeError(
                f"{path.parent} holds a run with a different config or data ({explain_mismatch(header, head)}); "
                "resume with the exact same overrides and data, or use a new run dir."
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


def find_same_config(search_root: Path, config_only_hash: str) -> tuple[Path, dict[str, Any]] | None:
    """Newest unfinished run under `search_root` whose header's config (data aside) hashes to
    `config_only_hash`, with that header; used to explain why such a run cannot be resumed."""
    best: tuple[float, Path, dict[str, Any]] | None = None
    for p in Path(search_root).glob(f"**/{PROGRESS_FILE}"):
        if (p.parent / RESULTS_FILE).exists():
            continue
        try:
            with open(p) as f:
                head = json.loads(f.readline())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(head, dict) and isinstance(head.get("config"), dict) and \
                run_hash(head["config"]) == config_only_hash:
            mtime = p.stat().st_mtime
            if best is None or mtime > best[0]:
                best = (mtime, p.parent, head)
    return None if best is None else (best[1], best[2])


def check_record_ids(records: dict[int, dict[str, Any]], ids: list[str], run_dir: Path) -> None:
    """Every kept record must describe the image now at its index: else the split changed under the run.

    Records are keyed by position; without this check a re-sorted split would score one image twice
    and another never, and a shortened one would carry records of images it no longer has.
    """
    wrong = []
    for index, rec in sorted(records.items()):
        now = ids[index] if index < len(ids) else None
        if rec.get("id") != now:
            wrong.append(f"index {index} was {rec.get('id')!r}, now {now!r}" if now is not None
                         else f"index {index} ({rec.get('id')!r}) is past the end of the split ({len(ids)} ids)")
    if wrong:
        shown = "; ".join(wrong[:5]) + (f" … and {len(wrong) - 5} more" if len(wrong) > 5 else "")
        raise ResumeError(
            f"the split changed since {run_dir} was started: {len(wrong)} kept record(s) name other images ({shown}). "
            "Restore the original split file to resume, or start a new run dir"
        )
