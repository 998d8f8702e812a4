"""Class-name tables too long to keep inline (ADE-150, ADE-847, Pascal Context 459), one name per line.

The files under ``data/classnames/`` hold the class strings in label-id order, exactly as the
official CaR loaders spell them (they are also the text queries CaR feeds, synonyms and all). They
ship as package data; a missing or damaged file is an installation error, reported as such.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

__all__ = ["CLASS_LIST_DIR", "load_class_list"]

CLASS_LIST_DIR = Path(__file__).resolve().parent / "classnames"


@cache
def load_class_list(name: str, expected: int) -> tuple[str, ...]:
    """The `expected` class strings of ``classnames/<name>.txt`` in file order (label-id order)."""
    path = CLASS_LIST_DIR / f"{name}.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"class-name table {path} is missing from the carbench installation; reinstall carbench "
            f"(`pip install -e .` from the repository) so its package data is present"
        )
    names = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if len(names) != expected or len(set(names)) != len(names):
        raise ValueError(
            f"class-name table {path} lists {len(names)} names ({len(set(names))} distinct), expected {expected} "
            f"distinct names; restore the file from the carbench repository"
        )
    return names
