"""Checks shared by the dataset adapters: is the folder there, is the split file there, are all files there.

Every benchmark fails the same way, at construction and before any model is loaded: the message
names the path it expected and the section of ``datasets/README.md`` (and the conversion command)
that produces it. A split that names missing files reports how many are missing and lists the
first few; nothing is ever skipped silently.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["MAX_LISTED", "require_dirs", "read_split_file", "read_split_text", "report_missing", "require_file"]

MAX_LISTED = 10


def _where(path: Path) -> str:
    return "" if path.is_absolute() else f" (relative to the working directory: {path.resolve()})"


def require_dirs(root: Path, subdirs: Sequence[str], what: str, hint: str) -> None:
    """Raise FileNotFoundError if `root` or any of `root/<subdir>` is not a directory.

    Args:
        root: the dataset root the config points at.
        subdirs: folders that must exist under it.
        what: the benchmark's name for the message ("Pascal Context").
        hint: how to obtain / convert the data (README section + command).
    """
    if not root.is_dir():
        raise FileNotFoundError(f"{what} root {root} does not exist{_where(root)}. {hint}")
    missing = [str(root / d) for d in subdirs if not (root / d).is_dir()]
    if missing:
        raise FileNotFoundError(f"{what} root {root} lacks {', '.join(missing)}. {hint}")


def require_file(path: Path, what: str, hint: str) -> None:
    """Raise FileNotFoundError naming `path` if it is not a regular file."""
    if not path.is_file():
        raise FileNotFoundError(f"{what}: expected file {path} is missing{_where(path)}. {hint}")


def read_split_text(path: Path, what: str) -> str:
    """A split file's text. UTF-8, with or without a byte-order mark (an editor's BOM would otherwise glue
    itself to the first id, whose files then "do not exist"); UTF-16 and other encodings are refused
    with the command that converts them, never guessed."""
    raw = path.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ValueError(
            f"{what} split file {path} is UTF-16 encoded (it starts with a UTF-16 byte-order mark); split files are "
            f"UTF-8 text: convert it with `iconv -f UTF-16 -t UTF-8 {path} > fixed.txt` and replace the file"
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{what} split file {path} is not UTF-8 text (byte {err.start}: {raw[err.start:err.start + 1]!r}); "
            "split files list one ASCII id per line: re-save it as UTF-8 or re-extract it from the dataset archive"
        ) from None


def read_split_file(path: Path, what: str, hint: str) -> list[str]:
    """Ids listed in a split file (one per line, whitespace stripped, blank lines skipped), in file order."""
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
        raise FileNotFoundError(
            f"{what} split file {path} not found; split files that exist there: {available or 'none'} "
            f"(set dataset.split=<one of them>). {hint}"
        )
    ids = [line.strip() for line in read_split_text(path, what).splitlines()]
    ids = [i for i in ids if i]
    if not ids:
        raise ValueError(f"{what} split file {path} lists no ids. {hint}")
    return ids


def report_missing(expected: Iterable[Path], what: str, hint: str) -> None:
    """Raise FileNotFoundError with the count and the first few of `expected` paths that do not exist.

    Uses one directory listing per parent folder instead of one stat per file, so checking the
    5,000 COCO or 10,000 Context files costs milliseconds.
    """
    listings: dict[Path, set[str]] = {}
    missing: list[str] = []
    n = 0
    for p in expected:
        n += 1
        parent = p.parent
        if parent not in listings:
            listings[parent] = set(os.listdir(parent)) if parent.is_dir() else set()
        if p.name not in listings[parent]:
            missing.append(str(p))
    if missing:
        shown = "\n  ".join(missing[:MAX_LISTED])
        more = f"\n  … and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
        raise FileNotFoundError(
            f"{what}: {len(missing)} of {n} file(s) the split needs are missing:\n  {shown}{more}\n"
            f"The dataset is incomplete. {hint}"
        )
