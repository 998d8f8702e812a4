"""The mmseg / detectron2 "image folder + label folder" layout shared by ADE, COCO-Stuff, Cityscapes and PC459.

These benchmarks have no split file: the samples are every image under ``<root>/<image_dir>`` whose
name ends with the image suffix (recursively, sorted by relative path), and each label sits at the
same relative path under ``<root>/<label_dir>`` with the label suffix. Every image must have its
label; a missing one fails at construction with the count and the first few paths.

Two label encodings occur:

- 8-bit ``L`` PNGs (ADE-150, COCO-Stuff-171, Cityscapes trainIds), read by `base.read_label`;
- 16-bit TIFFs (detectron2's ADE-847 and Pascal Context 459 conversions, more than 255 classes),
  read by `read_label_u16` below, which keeps the stored uint16 values exactly.

A per-dataset lookup table (`value_lut`) maps stored values to metric class ids; a stored value
the table does not know is an error naming the file, never a silent class.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from carbench.data.base import SemanticDataset, _open_fully, read_image, read_label
from carbench.data.layout import MAX_LISTED, report_missing, require_dirs
from carbench.types import Sample

__all__ = ["INVALID", "FolderSemantic", "check_queries", "identity_lut", "read_label_u16", "reduce_zero_lut"]

#: lookup-table entry for stored values no file of the dataset may contain
INVALID = -2


def read_label_u16(path: str | Path, *, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a 16-bit label TIFF (PIL mode ``I;16``) as its stored H×W uint16 values.

    An 8-bit file here means a different (or re-saved) conversion, whose values would be wrapped or
    truncated ids: an error, never converted.
    """
    path = Path(path)
    im = _open_fully(path)
    if im.mode not in ("I;16", "I;16B", "I;16L"):
        raise ValueError(
            f"label {path} has PIL mode {im.mode!r}; this dataset stores class ids as 16-bit TIFFs ('I;16'), as "
            "detectron2's converters write them. Re-run the dataset's prepare script (datasets/README.md)"
        )
    label = np.array(im).astype(np.uint16)
    if shape is not None and label.shape != tuple(shape):
        raise ValueError(
            f"label {path} has shape {label.shape[0]}×{label.shape[1]} (H×W) but its image is "
            f"{shape[0]}×{shape[1]}; labels are never resized, so this is the wrong or a damaged file"
        )
    return label


def check_queries(queries: Sequence[str] | None, default: Sequence[str], what: str) -> list[str]:
    """The query list (default `default`), checked: one non-empty string per class, in class order."""
    out = list(default if queries is None else queries)
    if len(out) != len(default) or not all(isinstance(q, str) and q.strip() for q in out):
        raise ValueError(
            f"{what} needs exactly {len(default)} non-empty query strings, one per class in label-id order "
            f"({', '.join(map(str, default[:3]))}, …); got {len(out)}"
        )
    return out


class FolderSemantic(SemanticDataset):
    """Base for folder-layout adapters; subclasses set the layout attributes and call `_open`.

    Attributes set by subclasses before `_open`: ``name``, ``class_names``, ``queries``,
    ``query_label_ids``, ``background_label``, ``ignore_index`` and
    ``image_dir`` / ``label_dir`` (relative to root), ``image_suffix`` / ``label_suffix``,
    ``value_lut`` (stored value → class id, ``ignore_index`` or `INVALID`), ``sixteen_bit``,
    ``label_mode`` (PIL mode of 8-bit labels), ``what`` (name in messages), ``hint`` (how to get the data).
    """

    image_dir: str
    label_dir: str
    image_suffix: str
    label_suffix: str
    value_lut: np.ndarray
    sixteen_bit: bool = False
    label_mode: str = "L"
    what: str
    hint: str
    root: Path
    split: str

    def _open(self) -> None:
        """Check metadata and layout, list the samples, check every label exists."""
        self._check_metadata()
        require_dirs(self.root, [self.image_dir, self.label_dir], self.what, self.hint)
        img_root = self.root / self.image_dir
        images = sorted(
            p.relative_to(img_root).as_posix() for p in img_root.rglob(f"*{self.image_suffix}") if p.is_file()
        )
        if not images:
            raise FileNotFoundError(f"{self.what}: no '*{self.image_suffix}' images under {img_root}. {self.hint}")
        self.ids = [p[: -len(self.image_suffix)] for p in images]
        report_missing((self.label_path(i) for i in self.ids), self.what, self.hint)

    def image_path(self, sample_id: str) -> Path:
        return self.root / self.image_dir / f"{sample_id}{self.image_suffix}"

    def label_path(self, sample_id: str) -> Path:
        return self.root / self.label_dir / f"{sample_id}{self.label_suffix}"

    def decode(self, stored: np.ndarray, source: Path | str = "<array>") -> np.ndarray:
        """Stored label values → H×W int64 class ids / ignore_index, rejecting values the table does not know."""
        stored = stored.astype(np.int64)
        if stored.size and int(stored.max()) >= len(self.value_lut):
            bad = np.unique(stored[stored >= len(self.value_lut)])
        else:
            bad = np.array([], dtype=np.int64)
        if bad.size == 0:
            target = self.value_lut[stored]
            bad = np.unique(stored[target == INVALID])
            if bad.size == 0:
                return target
        shown = bad[:MAX_LISTED].tolist()
        raise ValueError(
            f"label {source} holds values {shown} that no {self.what} label contains; check dataset.root points at "
            f"the converted {self.what} labels (datasets/README.md), not another dataset's or raw ids"
        )

    def _load(self, index: int) -> Sample:
        sid = self.ids[index]
        image_path, label_path = self.image_path(sid), self.label_path(sid)
        image = read_image(image_path)
        if self.sixteen_bit:
            stored = read_label_u16(label_path, shape=image.shape[:2])
        else:
            stored = read_label(label_path, expected_mode=self.label_mode, shape=image.shape[:2])
        target = self.decode(stored, label_path)
        return Sample(
            id=sid, image=image, target=target, queries=list(self.queries),
            meta={"image_path": str(image_path), "label_path": str(label_path), "split": self.split},
        )


def reduce_zero_lut(num_classes: int, ignore_index: int, size: int) -> np.ndarray:
    """Table for mmseg's ``reduce_zero_label``: stored 0 → ignore, k → k−1 for k in 1..C, else INVALID."""
    lut = np.full(size, INVALID, dtype=np.int64)
    lut[0] = ignore_index
    lut[1 : num_classes + 1] = np.arange(num_classes)
    return lut


def identity_lut(num_classes: int, ignore_value: int, ignore_index: int, size: int) -> np.ndarray:
    """Table for labels that store class ids directly: k → k for k < C, `ignore_value` → ignore, else INVALID."""
    lut = np.full(size, INVALID, dtype=np.int64)
    lut[:num_classes] = np.arange(num_classes)
    lut[ignore_value] = ignore_index
    return lut
