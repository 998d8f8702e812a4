"""Generated datasets write only into folders they created: a marker file proves the folder is ours.

`dataset=toy` generates its scenes on first use into `dataset.root`. Pointed by mistake at a real
dataset (`dataset.root=/data/VOCdevkit/VOC2012` without `dataset=voc`), a writer without this
check would overwrite that folder's split file and add files to it. A folder is ours when it holds
the marker (written when we create it, or into an empty folder); anything else is refused.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

MARKER = ".carbench-generated"


class NotOurFolderError(FileExistsError):
    """The folder exists, holds files and was not created by a carbench dataset generator."""


def _legacy_toy(root: Path) -> bool:
    """A toy folder written before markers existed: it holds the toy writer's own metadata files."""
    for meta in root.glob("toy_*.json"):
        try:
            if "stream" in json.loads(meta.read_text()):
                return True
        except (OSError, ValueError):
            continue
    return False


def _read_only(root: Path, kind: str, err: OSError) -> PermissionError:
    return PermissionError(
        f"cannot write the generated {kind} dataset into {root}: {err.strerror or err} (the folder or its file "
        f"system is read-only for this user); set dataset.root=<a writable folder>, or generate it once where it "
        "is writable and point dataset.root at that copy"
    )


def claim_generated_root(root: str | Path, kind: str) -> Path:
    """Make sure `root` is a folder this generator may write into; create it (with the marker) if absent.

    Raises NotOurFolderError for a non-empty folder without the marker, and PermissionError naming
    the folder when it cannot be created or marked.
    """
    root = Path(root)
    marker = root / MARKER
    if marker.is_file():
        return root
    if root.exists() and not root.is_dir():
        raise NotOurFolderError(f"dataset.root {root} is a file, not a folder; set dataset.root=<a folder for the "
                                f"generated {kind} dataset>")
    if root.is_dir() and any(root.iterdir()) and not (kind == "toy" and _legacy_toy(root)):
        raise NotOurFolderError(
            f"{root} holds files that the {kind} generator did not write (no {MARKER} marker); refusing to write "
            f"into it. Point dataset.root at a new or empty folder, or select the dataset those files belong to "
            "(e.g. dataset=voc for a VOC2012 folder)"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"generator": kind}) + "\n")
    except OSError as err:
        if isinstance(err, PermissionError) or err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise _read_only(root, kind, err) from err
        raise
    return root


def read_only_error(root: str | Path, kind: str, err: OSError) -> PermissionError:
    """The PermissionError to raise when writing the generated files themselves fails for lack of rights."""
    return _read_only(Path(root), kind, err)
