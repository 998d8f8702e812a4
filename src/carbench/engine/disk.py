"""Write failures of the run's own files are the disk's fault, not the image's.

A full disk (or quota, or a file system turned read-only) while appending a record would otherwise
be reported as "image X failed", and `on_error=skip` would skip image after image.
"""

from __future__ import annotations

import errno
from pathlib import Path

DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


class OutputWriteError(OSError):
    """The run cannot write its progress, predictions or results."""


def is_disk_error(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in DISK_ERRNOS


def disk_error(err: OSError, run_dir: Path) -> OutputWriteError:
    """The error to raise instead of blaming the image being processed."""
    what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EROFS: "the file system is read-only", errno.EFBIG: "a file grew past the file system's limit"}
    return OutputWriteError(
        err.errno, f"cannot write to run dir {run_dir}: {what.get(err.errno, err.strerror)} ({err.strerror}: "
        f"{err.filename or run_dir}); free space or set hydra.run.dir=<another disk>, then rerun with resume=true "
        "(the images finished so far are kept)"
    )
