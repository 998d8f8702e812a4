"""What every semantic-segmentation dataset adapter is, and the strict readers they share.

An adapter owns two separate things (docs/datasets.md §9): the *metric classes* (`class_names`, in
label-id order, what the confusion matrix is indexed by) and the *text queries* fed to the model
(`queries`, one per foreground class, with `query_label_ids` saying which label id each query
votes for). Keeping them apart is what lets a config rename "bird" to "bird avian" without
changing a single label id, and lets VOC20 drop background from the metric while the model still
has a background.

The readers are strict on purpose: label PNGs are read as stored indices (never converted), their
size and values are checked against the image, and truncated files are errors. Each of these has
silently corrupted published numbers somewhere (docs/datasets.md §1).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from carbench.types import IGNORE_INDEX, Sample

__all__ = ["SemanticDataset", "read_image", "read_label"]

# Errors PIL raises for unreadable, truncated or hostile files (FileNotFoundError is handled first).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@contextmanager
def _strict_decoding() -> Iterator[None]:
    """Turn off PIL's LOAD_TRUNCATED_IMAGES while decoding.

    Some training code sets that global to True, after which a truncated JPEG decodes to an image
    with a grey lower part and no error. An evaluation must see the file's real pixels or fail.
    (The flag is process-global; data-loader workers are processes, so this is safe there.)
    """
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _open_fully(path: Path) -> Image.Image:
    """Open and fully decode an image file, turning every decode failure into a ValueError."""
    if not path.is_file():
        raise FileNotFoundError(
            f"no such file: {path} (it was listed when the dataset was opened); restore it from the dataset "
            "archive or regenerate the split"
        )
    try:
        with _strict_decoding(), Image.open(path) as im:
            im.load()  # decode now, inside the strict context; pixels stay in memory after close
            return im
    except PermissionError as e:
        raise PermissionError(
            f"cannot read {path}: permission denied; make the dataset readable by this user "
            f"(e.g. chmod -R a+rX on the dataset root)"
        ) from e
    except Image.DecompressionBombError as e:
        raise ValueError(
            f"cannot decode {path}: {e}. If the image is genuine, raise PIL.Image.MAX_IMAGE_PIXELS before the run."
        ) from e
    except _DECODE_ERRORS as e:
        raise ValueError(
            f"cannot decode {path}: {e}. The file is truncated or corrupt; re-extract it from the "
            f"dataset archive."
        ) from e


EXIF_ORIENTATION = 0x0112
#: EXIF orientations that swap width and height when a viewer applies them
_TRANSPOSING = {5: "transposed", 6: "rotated 90° clockwise", 7: "transversed", 8: "rotated 90° counter-clockwise"}


def exif_orientation(path: str | Path) -> int | None:
    """The EXIF orientation tag of an image file (1 = as stored), or None when absent or unreadable."""
    try:
        with Image.open(path) as im:
            value = im.getexif().get(EXIF_ORIENTATION)
    except (OSError, SyntaxError, ValueError):
        return None
    return int(value) if isinstance(value, int) else None


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as H×W×3 uint8 RGB, exactly as stored.

    No EXIF auto-rotation, by decision: the official CaR code and mmseg read the stored pixel grid,
    and dataset labels are aligned with it, not with the orientation a viewer would show. A label
    that only fits the EXIF-rotated image is reported as such by `read_label`. Grey or CMYK files
    are converted to RGB (colour only).
    """
    path = Path(path)
    im = _open_fully(path)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.array(im, dtype=np.uint8)


def read_label(
    path: str | Path,
    *,
    expected_mode: str | None = None,
    shape: tuple[int, int] | None = None,
    num_classes: int | None = None,
    ignore_index: int = IGNORE_INDEX,
    image_path: str | Path | None = None,
) -> np.ndarray:
    """Read a label PNG as its stored H×W uint8 values, with the checks that catch silent corruption.

    - `expected_mode`: the PIL mode the format stores ids in ('P' for VOC palette labels, 'L' for
      grayscale ones). A VOC label re-saved as 'L' holds luminance (id 1 → 38) and as 'RGB' holds
      colours, so a wrong mode is an error, never converted.
    - `shape`: the image's (H, W); labels are never resized, so a mismatch means the wrong file.
    - `num_classes`: the ids stored in the file must lie in [0, num_classes) ∪ {ignore_index}.
    - `image_path`: the image the label belongs to; named (with its EXIF orientation) when the label
      has the image's transposed shape, i.e. was drawn on the EXIF-rotated view.
    """
    path = Path(path)
    im = _open_fully(path)
    if expected_mode is not None and im.mode != expected_mode:
        hint = (
            " A palette label converted to 'L' stores luminance and to 'RGB' stores colours, not class "
            "ids: use the original file from the dataset archive, or write labels with "
            "carbench.data.voc_format.write_palette_png."
            if expected_mode == "P"
            else ""
        )
        raise ValueError(
            f"label {path} has PIL mode {im.mode!r}, expected {expected_mode!r}"
            f"{' (palette)' if expected_mode == 'P' else ''}.{hint}"
        )
    if im.mode not in ("P", "L"):
        raise ValueError(
            f"label {path} has PIL mode {im.mode!r}; label maps must be 8-bit 'P' (palette) or 'L' PNGs of class "
            "ids: use the original file from the dataset archive, or write labels with "
            "carbench.data.voc_format.write_palette_png"
        )
    label = np.array(im, dtype=np.uint8)  # P → palette indices, L → values; no colour conversion
    if shape is not None and label.shape != tuple(shape):
        orientation = exif_orientation(image_path) if image_path is not None else None
        if label.shape == tuple(shape)[::-1] and orientation in _TRANSPOSING:
            raise ValueError(
                f"label {path} is {label.shape[0]}×{label.shape[1]} (H×W), the transpose of its image {image_path} "
                f"({shape[0]}×{shape[1]}), whose EXIF orientation is {orientation} ({_TRANSPOSING[orientation]}): the "
                "label was drawn on the EXIF-rotated view. carbench (like the official code and mmseg) reads images "
                "as stored, never EXIF-rotated: rotate the image's pixels and drop its orientation tag "
                "(e.g. `exiftran -ai`), or restore the original label"
            )
        raise ValueError(
            f"label {path} has shape {label.shape[0]}×{label.shape[1]} (H×W) but its image is "
            f"{shape[0]}×{shape[1]}; labels are never resized, so this is the wrong or a damaged file: "
            f"restore the original label from the dataset archive"
        )
    if num_classes is not None:
        counts = np.bincount(label.ravel(), minlength=256)
        valid = np.zeros(256, dtype=bool)
        valid[: min(num_classes, 256)] = True
        valid[ignore_index] = True
        bad = np.flatnonzero((counts > 0) & ~valid)
        if bad.size:
            raise ValueError(
                f"label {path} contains values {bad.tolist()} outside [0, {num_classes}) ∪ {{{ignore_index}}}: it "
                f"is not a label of this dataset's {num_classes} classes. Check that dataset.name / dataset.root "
                f"point at the right dataset, and restore the original (unconverted) label from its archive"
            )
    return label


class SemanticDataset(abc.ABC):
    """Base of every semantic-segmentation adapter: an indexable list of `Sample`s plus class metadata.

    Subclasses set the attributes below in `__init__` (then call `_check_metadata()`) and implement
    `_load(index)`; indexing, length and iteration come from here.

    Attributes:
        name: short dataset name written to results (e.g. 'voc21').
        class_names: the C metric classes in label-id order (VOC21 has 'background' at 0).
        queries: the text queries fed to the model, one per foreground class.
        query_label_ids: label id each query's pixels are scored as (same length as `queries`).
        background_label: label id the model's background maps to; `ignore_index` (255) means
            "no class" for variants whose metric has no background class (VOC20, PC59).
        ignore_index: GT value never scored (255, mmseg/VOC convention).
        ids: sample ids in split-file order.
    """

    name: str
    class_names: list[str]
    queries: list[str]
    query_label_ids: list[int]
    background_label: int
    ignore_index: int = IGNORE_INDEX
    ids: list[str]

    @property
    def num_classes(self) -> int:
        """Number of metric classes C (GT values lie in [0, C) ∪ {ignore_index})."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample:
        n = len(self.ids)
        if not -n <= index < n:
            raise IndexError(f"{self.name}: index {index} out of range for {n} samples")
        return self._load(index % n)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self._load(i)

    @abc.abstractmethod
    def _load(self, index: int) -> Sample:
        """Read sample `index` (already in [0, len))."""

    def _check_metadata(self) -> None:
        """Fail at construction, not in the metric, if queries and label ids do not line up."""
        if len(self.queries) != len(self.query_label_ids):
            raise ValueError(
                f"{self.name}: {len(self.queries)} queries but {len(self.query_label_ids)} query label ids"
            )
        for q, lid in zip(self.queries, self.query_label_ids, strict=True):
            if not 0 <= lid < self.num_classes:
                raise ValueError(f"{self.name}: query {q!r} maps to label {lid}, outside [0, {self.num_classes})")
        if self.background_label != self.ignore_index and not 0 <= self.background_label < self.num_classes:
            raise ValueError(f"{self.name}: background_label {self.background_label} is not a class or ignore")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, len={len(self)}, num_classes={self.num_classes})"
