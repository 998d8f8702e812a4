"""The Pascal VOC palette-PNG label format: colour map, writer and reader.

A VOC label file is a palette ("P") PNG whose *pixel values are the class ids* and whose palette
is only there so the file looks right in an image viewer. Dataset fixtures, the toy world and
prediction saving all write this format, so the helpers here depend on nothing but numpy, PIL and the
shared readers in `base`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from carbench.data.base import read_label

__all__ = ["VOC_PALETTE", "voc_palette", "write_palette_png", "read_palette_png"]


def voc_palette(n: int = 256) -> np.ndarray:
    """The standard VOC colour map as an (n, 3) uint8 array.

    For index i, its bits are dealt three at a time to R, G, B (bit 0 → R, bit 1 → G, bit 2 → B),
    filling each channel from its most significant bit down (docs/datasets.md §4). This is the map the
    devkit's labels carry, so files we write are indistinguishable from real ones.
    """
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        pal[i] = (r, g, b)
    return pal


#: The full 256-entry VOC colour map, (256, 3) uint8; index 255 (void) is (224, 224, 192).
VOC_PALETTE: np.ndarray = voc_palette(256)
VOC_PALETTE.setflags(write=False)


def write_palette_png(path: str | Path, label: np.ndarray) -> None:
    """Write an H×W map of ids in [0, 255] as a P-mode PNG carrying the full VOC palette.

    Values are checked rather than wrapped: silently casting 256 or −1 to uint8 would store a
    different class id than the caller meant.
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"write_palette_png({path}): expected an H×W label map, got shape {label.shape}")
    if label.dtype.kind not in "iub":
        raise ValueError(f"write_palette_png({path}): expected integer ids, got dtype {label.dtype}")
    if label.size and (int(label.min()) < 0 or int(label.max()) > 255):
        raise ValueError(
            f"write_palette_png({path}): ids must lie in [0, 255], got min {int(label.min())}, "
            f"max {int(label.max())}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8))  # mode 'L', values = ids
    img.putpalette(VOC_PALETTE.tobytes())  # turns it into 'P' without touching the pixel values
    img.save(path, format="PNG")


def read_palette_png(path: str | Path) -> np.ndarray:
    """Read a P-mode PNG as its H×W uint8 palette indices (= class ids), never converting colours.

    Raises ValueError if the file is not a palette image (an 'L' or 'RGB' re-export would hold
    luminance or colours instead of ids) or cannot be decoded.
    """
    return read_label(path, expected_mode="P")
