"""Finding a local checkpoint file that no package can download for us (SAM, HQ-SAM, OVSeg).

A checkpoint is given as a path, or as the bare file name it is published under; a bare name is
looked up in `$CARBENCH_CHECKPOINTS`, `./checkpoints` and `~/.cache/carbench/checkpoints`. When it
is nowhere, the error names the file, every place looked at and where the file is published, so
an offline cluster user knows exactly what to copy where. Nothing ever falls back to random init.
"""

from __future__ import annotations

import os
from pathlib import Path

CHECKPOINT_DIRS_ENV = "CARBENCH_CHECKPOINTS"
DEFAULT_CHECKPOINT_DIRS = ("checkpoints", "~/.cache/carbench/checkpoints")


class CheckpointError(FileNotFoundError):
    """A checkpoint file is missing or does not fit the architecture that asked for it."""


def checkpoint_dirs() -> list[Path]:
    """The folders a bare checkpoint file name is looked up in, in order."""
    env = os.environ.get(CHECKPOINT_DIRS_ENV)
    return [Path(d).expanduser() for d in ([env] if env else []) + list(DEFAULT_CHECKPOINT_DIRS)]


def resolve_checkpoint(name_or_path: str, what: str, published: str,
                       error: type[CheckpointError] = CheckpointError) -> Path:
    """The checkpoint file `name_or_path` names; `error` (naming file, places, source) if absent."""
    given = Path(name_or_path).expanduser()
    looked = [given]
    if given.is_file():
        return given
    if given.name == str(name_or_path):  # a bare file name: search the checkpoint folders
        for d in checkpoint_dirs():
            looked.append(d / given.name)
            if looked[-1].is_file():
                return looked[-1]
    raise error(
        f"{what} needs the checkpoint file {given.name!r}, which was not found. Looked in: "
        f"{'; '.join(str(p) for p in looked)}. Download it from {published} and put it in one of "
        f"those folders (or ${CHECKPOINT_DIRS_ENV}), or pass its path."
    )
