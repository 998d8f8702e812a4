"""The per-sample prediction files `save_predictions=true` writes: `<run dir>/predictions/<id>.png`.

A palette PNG holds ids 0..255, which is every VOC / Context-59/60 / COCO / ADE-150 / Cityscapes label
space. ADE-847 (ids 0..846, unlabeled 65,535) and Pascal Context 459 (0..458, 65,535) do not fit: an
8-bit file would silently wrap id 300 to 44. For those the file is a 16-bit greyscale PNG (lossless,
read by PIL, OpenCV's IMREAD_UNCHANGED and every PNG decoder; the same values detectron2 stores in its
16-bit TIFF labels). The choice is made once per run from the dataset's largest label id, so all files
of a run share one format and one file's values never depend on which classes that image happened to hold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from carbench.data.voc_format import write_palette_png

__all__ = ["PALETTE_MAX_ID", "needs_16bit", "read_prediction_png", "write_prediction_png"]

#: the largest id an 8-bit palette PNG can hold
PALETTE_MAX_ID = 255
_U16_MAX = 65535
_U16_MODES = ("I;16", "I;16B", "I;16L")


def needs_16bit(max_label_id: int) -> bool:
    """True when a label space whose largest id (ignore/background value included) is `max_label_id`
    cannot be stored in a palette PNG."""
    if max_label_id < 0 or max_label_id > _U16_MAX:
        raise ValueError(f"label ids must lie in [0, {_U16_MAX}] to be saved as PNG, got largest id {max_label_id}")
    return max_label_id > PALETTE_MAX_ID


def write_prediction_png(path: str | Path, labels: np.ndarray, sixteen_bit: bool) -> Path:
    """Write an H×W map of dataset label ids: a VOC-palette PNG, or a 16-bit greyscale PNG when `sixteen_bit`.

    Values outside the chosen format's range are an error (never wrapped), naming the file and the range.
    """
    path = Path(path)
    labels = np.asarray(labels)
    if not sixteen_bit:
        write_palette_png(path, labels)
        return path
    if labels.ndim != 2 or labels.dtype.kind not in "iub":
        raise ValueError(f"{path}: expected an H×W integer label map, got shape {labels.shape} dtype {labels.dtype}")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) > _U16_MAX):
        raise ValueError(f"{path}: 16-bit prediction PNGs hold ids in [0, {_U16_MAX}], got min {int(labels.min())}, "
                         f"max {int(labels.max())}")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint16)).save(path, format="PNG")
    return path


def read_prediction_png(path: str | Path) -> np.ndarray:
    """H×W label ids of a file `write_prediction_png` wrote (palette indices or 16-bit values) as int64.

    An RGB or other colour PNG is refused: its pixels are colours, not ids.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prediction {path} does not exist")
    with Image.open(path) as im:
        im.load()
        if im.mode in ("P", "L"):
            return np.array(im, dtype=np.uint8).astype(np.int64)
        if im.mode in _U16_MODES:
            return np.array(im).astype(np.int64)
        raise ValueError(f"prediction {path} has PIL mode {im.mode!r}; expected a palette ('P'), grey ('L') or "
                         "16-bit grey ('I;16') PNG of label ids")
