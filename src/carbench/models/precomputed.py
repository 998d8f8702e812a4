"""Score predictions another method already wrote to disk (`model=precomputed`).

The fair way to compare with a peer: run its own code, keep its PNGs, and let carbench's data
pipeline and metric score them, so only the method differs. One PNG per sample, `root/<id>.png`
(`pattern` changes the name), at the image's size (never resized: a size mismatch is the wrong
file, and an error).

Semantic datasets (`values`):
- `dataset` (default): pixel values are the dataset's metric label ids — exactly what carbench's
  own `save_predictions=true` writes, so a saved run scores to the same mIoU. For VOC21 these are
  the VOC ids (0 = background); for VOC20 the 20 classes are 0..19 and 255 = no class. mmseg's
  `format_only` dumps of reduce_zero_label datasets are shifted by one: `value_offset=-1`.
- `query`: value k = the k-th query, `background_value` = background.
A value that is neither (e.g. 255 on VOC21) is an error naming the file and the values, unless
`unknown=background`.

Referring datasets: a binary mask PNG per sample (any non-zero value is foreground).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from carbench.types import BACKGROUND, IGNORE_INDEX, Prediction, Sample

VALUE_SPACES = ("dataset", "query")
UNKNOWN_MODES = ("error", "background")


def read_prediction_png(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """H×W values of a prediction PNG: palette indices or grey values (uint8), or 16-bit grey values (uint16,
    what `save_predictions` writes for label spaces beyond 255 ids such as ADE-847); never colours."""
    if not path.is_file():
        raise FileNotFoundError(f"precomputed prediction {path} does not exist (model.root / model.pattern)")
    with Image.open(path) as im:
        im.load()
        if im.mode not in ("P", "L", "1", "I;16", "I;16B", "I;16L"):
            raise ValueError(
                f"precomputed prediction {path} has PIL mode {im.mode!r}; write label ids as a palette ('P'), "
                "grey ('L') or 16-bit grey ('I;16') PNG, not colours"
            )
        values = np.array(im).astype(np.uint16) if im.mode.startswith("I;16") else np.array(im, dtype=np.uint8)
    if values.shape != tuple(shape):
        raise ValueError(
            f"precomputed prediction {path} is {values.shape[0]}×{values.shape[1]} but the image is "
            f"{shape[0]}×{shape[1]}; predictions are scored at the image size and never resized"
        )
    return values


class Precomputed:
    """Reads `root/<sample id>.png`; implements `segment_sample` (it needs the id, not the pixels)."""

    def __init__(
        self,
        root: str | Path,
        task: str = "semantic",
        values: str = "dataset",
        query_label_ids: Sequence[int] | None = None,
        background_label: int = 0,
        pattern: str = "{id}.png",
        value_offset: int = 0,
        background_value: int = IGNORE_INDEX,
        unknown: str = "error",
    ) -> None:
        if task not in ("semantic", "referring"):
            raise ValueError(f"precomputed task must be semantic or referring, got {task!r}")
        if values not in VALUE_SPACES:
            raise ValueError(f"model.values must be one of {VALUE_SPACES}, got {values!r}")
        if unknown not in UNKNOWN_MODES:
            raise ValueError(f"model.unknown must be one of {UNKNOWN_MODES}, got {unknown!r}")
        if "{id}" not in pattern:
            raise ValueError(f"model.pattern must contain '{{id}}', got {pattern!r}")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"precomputed predictions folder {self.root} does not exist (model.root)")
        if task == "semantic" and values == "dataset" and query_label_ids is None:
            raise ValueError("values=dataset needs the dataset's query label ids (model.dataset)")
        self.task, self.values, self.pattern = task, values, pattern
        self.value_offset, self.background_value, self.unknown = value_offset, background_value, unknown
        self.query_label_ids = list(query_label_ids) if query_label_ids is not None else None
        self.background_label = background_label

    def path(self, sample_id: str) -> Path:
        return self.root / self.pattern.format(id=sample_id)

    def lookup(self, n_queries: int) -> np.ndarray:
        """65,536-entry table (any 8- or 16-bit value): stored value → query index, BACKGROUND, or −2 (unknown)."""
        lut = np.full(65536, -2, dtype=np.int64)
        if self.values == "query":
            lut[:n_queries] = np.arange(n_queries)
            lut[self.background_value] = BACKGROUND
        else:
            if len(self.query_label_ids) != n_queries:
                raise ValueError(f"{n_queries} queries but {len(self.query_label_ids)} query label ids")
            lut[self.background_label] = BACKGROUND
            lut[np.asarray(self.query_label_ids)] = np.arange(n_queries)
        return lut

    def segment_sample(self, sample: Sample) -> Prediction:
        path = self.path(sample.id)
        stored = read_prediction_png(path, sample.image.shape[:2])
        if self.task == "referring":
            fg = stored > 0
            labels = np.where(fg, 0, BACKGROUND).astype(np.int64)
            return Prediction(labels=labels, masks=fg[None].astype(np.float32), scores=np.ones(1, np.float32),
                              kept=[0], trace=[{"step": 1, "source": str(path), "time": {}}])
        values = stored.astype(np.int64)
        if self.value_offset:
            shifted = values + self.value_offset
            values = np.where(stored == IGNORE_INDEX, IGNORE_INDEX, shifted)
        top = 255 if stored.dtype == np.uint8 else 65535
        if values.min() < 0 or values.max() > top:
            raise ValueError(f"{path}: value_offset={self.value_offset} moves values outside 0..{top}")
        labels = self.lookup(len(sample.queries))[values]
        bad = labels == -2
        if bad.any():
            if self.unknown == "error":
                raise ValueError(
                    f"{path} holds values {sorted(np.unique(values[bad]).tolist())[:10]} that are no class of this "
                    f"dataset ({self.values} ids; {int(bad.sum())} pixels); set model.unknown=background to count "
                    "them as background, or fix model.values / model.value_offset"
                )
            labels[bad] = BACKGROUND
        k = len(sample.queries)
        masks = (labels[None] == np.arange(k)[:, None, None]).astype(np.float32)
        kept = [i for i in range(k) if masks[i].any()]
        scores = np.array([1.0 if i in kept else 0.0 for i in range(k)], np.float32)
        return Prediction(labels=labels, masks=masks, scores=scores, kept=kept,
                          trace=[{"step": 1, "source": str(path), "time": {}}])

    def segment(self, image: np.ndarray, queries: list[str]) -> Prediction:
        raise TypeError("model=precomputed reads predictions by sample id: call segment_sample(sample)")


def build_precomputed(cfg: dict[str, Any], postprocess: Any, pool: Any) -> Precomputed:
    """From config; `values=dataset` builds the dataset adapter (cfg['dataset']) for its label ids."""
    if postprocess is not None:
        raise ValueError("model=precomputed scores finished predictions: use postprocess=none")
    if not cfg.get("root"):
        raise ValueError("model=precomputed needs model.root=<folder of prediction PNGs>")
    dataset_cfg = cfg.get("dataset") or {}
    task = str(cfg.get("task") or dataset_cfg.get("task") or "semantic")
    ids, bg = None, 0
    if task == "semantic" and cfg.get("values", "dataset") == "dataset":
        from carbench.data import build_dataset

        ds = build_dataset(dataset_cfg)
        ids, bg = list(ds.query_label_ids), int(ds.background_label)
    return Precomputed(
        cfg["root"], task=task, values=cfg.get("values", "dataset"), query_label_ids=ids, background_label=bg,
        pattern=cfg.get("pattern", "{id}.png"), value_offset=int(cfg.get("value_offset", 0)),
        background_value=int(cfg.get("background_value", IGNORE_INDEX)), unknown=cfg.get("unknown", "error"),
    )
