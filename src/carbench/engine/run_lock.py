"""One run per run dir: a lock file holding the owner's pid, taken with O_EXCL.

Two runs writing one run dir would both evaluate every image and interleave records. The lock
(`run.lock`: pid, host, the process start time) makes the second one fail at start naming the
owner. A lock whose owner is gone (killed with SIGKILL, the machine rebooted) is stale: it is taken
over with a warning, so a killed run can always be resumed. A lock from another host cannot be
checked and is respected; its message says how to remove it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
_HELD: list[Path] = []


class RunDirLockedError(RuntimeError):
    """Another live process owns the run dir."""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid from the owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(owner: dict) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    recorded, now = owner.get("start"), _start_time(pid)
    return recorded is None or now is None or recorded == now


def _owner_record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "start": _start_time(os.getpid())}


def acquire(run_dir: Path) -> Path:
    """Lock `run_dir` for this process, taking over a stale lock; RunDirLockedError if a live run owns it."""
    path = Path(run_dir) / LOCK_FILE
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(path.read_text() or "{}")
            except (OSError, json.JSONDecodeError):
                owner = {}
            if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
                return path  # already ours (a second call in the same process)
            if owner.get("host") not in (None, socket.gethostname()):
                raise RunDirLockedError(
                    f"run dir {run_dir} is locked by pid {owner.get('pid')} on host {owner.get('host')}; wait for that "
                    f"run to finish, use another hydra.run.dir, or delete {path} if that run is gone"
                ) from None
            if _alive(owner):
                raise RunDirLockedError(
                    f"run dir {run_dir} is in use by another run (pid {owner.get('pid')}); wait for it to finish or "
                    "use another hydra.run.dir (two runs in one dir would both evaluate every image)"
                ) from None
            log.warning("taking over the stale lock of %s (its owner, pid %s, is gone)", run_dir, owner.get("pid"))
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(_owner_record(), f)
        _HELD.append(path)
        return path
    raise RunDirLockedError(f"could not lock run dir {run_dir}: {path} keeps reappearing; another run is starting there")


def release_held() -> None:
    """Remove the locks this process holds (called when the run ends, however it ends)."""
    while _HELD:
        path = _HELD.pop()
        try:
            owner = json.loads(path.read_text())
            if owner.get("pid") == os.getpid():
                path.unlink()
        except (OSError, json.JSONDecodeError):
            pass
