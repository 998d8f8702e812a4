"""An allocation failure on a huge image is reported with the image's size and how to cap it.

CaR runs CLIP at the image's native resolution, so memory grows with the pixel count (attention
with the square of it); a 20,000-pixel-wide photo makes the allocator ask for hundreds of GB and
fail with a bare "DefaultCPUAllocator: can't allocate memory" that names neither image nor fix.
"""

from __future__ import annotations

import re
from typing import Any

_OOM_PATTERNS = ("can't allocate memory", "out of memory", "not enough memory", "failed to allocate")


class ImageTooLargeError(RuntimeError):
    """Processing one image needed more memory than the device has."""


def is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, MemoryError):
        return True
    return isinstance(err, RuntimeError) and any(p in str(err).lower() for p in _OOM_PATTERNS)


def _requested(err: BaseException) -> str:
    m = re.search(r"allocate (\d+) bytes", str(err))
    if m:
        return f", it asked for {int(m.group(1)) / 1e9:.1f} GB"
    m = re.search(r"allocate ([\d.]+ [KMGT]i?B)", str(err))
    return f", it asked for {m.group(1)}" if m else ""


def explain_out_of_memory(err: Exception, sample: Any) -> Exception:
    """`err` unchanged, or an ImageTooLargeError naming the image's size and the ways to cap it."""
    if not is_out_of_memory(err):
        return err
    image = getattr(sample, "image", None)
    shape = getattr(image, "shape", None)
    size = f"{shape[1]}×{shape[0]} pixels ({shape[0] * shape[1] / 1e6:.1f} MP)" if shape is not None else "unknown size"
    return ImageTooLargeError(
        f"out of memory on an image of {size}{_requested(err)} ({type(err).__name__}). CaR runs at the native "
        "resolution: cap it with protocol=sclip (short side 336, sliding window), downscale that image, or set "
        "on_error=skip to exclude it"
    )
