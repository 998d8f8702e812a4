"""What every label converter shares: atomic writes, skip-if-present, a progress bar, a loud count check.

Converters are run once on a freshly unpacked dataset and may be re-run at any time: an output that
already exists is kept (unless ``overwrite``), each output is written to a temporary name and renamed
(an interrupted run never leaves a half-written label), and the number of images and labels found
afterwards must equal the official split size, or the run fails naming both numbers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

__all__ = ["check_count", "convert_files", "write_png_l", "write_tiff_u16"]


def write_png_l(path: Path, label: np.ndarray) -> None:
    """Write an 8-bit ``L`` PNG atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    Image.fromarray(np.asarray(label, dtype=np.uint8), mode="L").save(tmp, format="PNG")
    os.replace(tmp, path)


def write_tiff_u16(path: Path, label: np.ndarray) -> None:
    """Write a 16-bit (``I;16``) TIFF atomically, the format detectron2's converters write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    Image.fromarray(np.ascontiguousarray(label, dtype=np.uint16)).save(tmp, format="TIFF")
    os.replace(tmp, path)


def convert_files(
    pairs: Sequence[tuple[Path, Path]],
    convert: Callable[[Path], np.ndarray],
    write: Callable[[Path, np.ndarray], None],
    desc: str,
    overwrite: bool = False,
) -> tuple[int, int]:
    """Write ``write(dst, convert(src))`` for each (src, dst) whose dst is absent; return (written, skipped)."""
    written = skipped = 0
    for src, dst in tqdm(pairs, desc=desc, unit="label"):
        if dst.exists() and not overwrite:
            skipped += 1
            continue
        write(dst, convert(src))
        written += 1
    return written, skipped


def check_count(what: str, images: int, labels: int, expected: int | None, where: Path) -> None:
    """Print the counts and raise RuntimeError if they differ from `expected` (None: no official size)."""
    print(f"{what}: {images} images, {labels} label maps under {where}")
    if expected is not None and (images != expected or labels != expected):
        raise RuntimeError(
            f"{what}: expected {expected} images and label maps, found {images} images and {labels} maps under "
            f"{where}. The download is incomplete or mixes splits; re-extract it (or pass --expected-count for a "
            "deliberate subset)."
        )
