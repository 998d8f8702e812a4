"""DataLoader worker set-up: a worker must never outlive the run that started it.

PyTorch's workers notice a dead parent only between items; one blocked on a full result queue
waits for good. On Linux each worker asks the kernel to SIGKILL it when its parent dies
(PR_SET_PDEATHSIG), so a run killed with SIGKILL leaves no process behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(_worker_id: int = 0) -> None:
    """worker_init_fn: SIGKILL this worker when its parent exits (no-op off Linux)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the call above: nobody will read our results
        os._exit(1)
