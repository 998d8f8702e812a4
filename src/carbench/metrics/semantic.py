"""Dataset-level semantic segmentation metrics (mIoU, aAcc, mAcc, per-class IoU).

Why a class of our own rather than `torchmetrics.classification.MulticlassJaccardIndex`:

* We need two *reductions* from one state. The community rule (mmseg `IoUMetric`, used unchanged by
  SCLIP / NACLIP / ClearCLIP / ProxyCLIP) averages over every class whose union is non-zero, so a
  class that is only ever predicted (never in GT) counts with IoU 0. That is exactly torchmetrics'
  `MulticlassJaccardIndex(average="macro", ignore_index=255)` accumulated over the dataset. CaR's own
  `evaluate.py` (detectron2-style) instead averages only over classes *present in GT*
  (confusion row sum > 0). Both agree on full VOC / Context val, where every class occurs, but
  differ on subsets, `limit=N` runs and test fixtures, so the harness reports both.
* Models may predict "no class" (the `ignore_index` value), e.g. VOC20 where the model's background
  has no class id. torchmetrics raises on such predictions; mmseg silently lets them fall out of its
  histogram (a miss). We keep them in an extra confusion column so both that rule and CaR's lenient
  rule (drop them) can be computed from the same state.

The state is one int64 confusion matrix with `dist_reduce_fx="sum"`, so `torchrun` sharding is
reduced by torchmetrics' own distributed sync and two instances merge with `merge_state`.
See docs/datasets.md §2.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

REDUCTIONS: tuple[str, ...] = ("mmseg", "present")
PRED_IGNORE_MODES: tuple[str, ...] = ("miss", "drop")


def _as_label_tensor(x: np.ndarray | torch.Tensor, name: str, device: torch.device) -> torch.Tensor:
    """Integer label map(s) → int64 tensor of shape N×H×W on `device`.

    Floats and bools are refused: a float map is almost always un-argmaxed logits or a resized label
    map with interpolated ids, and a silent cast would corrupt the score.
    """
    if isinstance(x, np.ndarray):
        if x.dtype == np.bool_ or not np.issubdtype(x.dtype, np.integer):
            raise TypeError(f"{name} must be an integer label map, got numpy dtype {x.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64))
    elif isinstance(x, torch.Tensor):
        if x.dtype == torch.bool or x.is_floating_point() or x.is_complex():
            raise TypeError(f"{name} must be an integer label map, got torch dtype {x.dtype}")
        t = x.to(torch.int64)
    else:
        raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")
    if t.ndim == 2:
        t = t.unsqueeze(0)
    elif t.ndim != 3:
        raise ValueError(f"{name} must be H×W or N×H×W, got shape {tuple(t.shape)}")
    return t.to(device)


class SemanticIoU(Metric):
    """Dataset-level mIoU over a C×(C+1) confusion matrix (rows = GT class, columns = predicted class).

    Column C (the last one) counts valid-GT pixels whose prediction is `ignore_index`, i.e. the model
    said "no class" (VOC20 / PC59 background). Pixels whose *GT* is `ignore_index` are never counted.

    Args:
        num_classes: C, the number of scored classes (ids 0..C−1).
        ignore_index: GT value that is not scored; as a prediction it means "no class". Must lie
            outside [0, C) so it cannot be confused with a class id (255 in every benchmark here).
        reduction: how per-class IoUs are averaged into mIoU.
            * ``"mmseg"`` (default, community rule): IoU_c = I_c / U_c over the whole dataset; classes
              with U_c = 0 (never in GT and never predicted on a valid pixel) are NaN and excluded; a
              class predicted but never in GT has IoU 0 and counts. Identical to mmseg `IoUMetric`
              and to torchmetrics `MulticlassJaccardIndex(average="macro", ignore_index=255)`.
            * ``"present"`` (CaR's `evaluate.py`, detectron2-style): mean only over classes present
              in GT (row sum > 0); false-positive-only classes are excluded.
        pred_ignore: how predictions equal to `ignore_index` on valid-GT pixels are counted.
            * ``"miss"`` (default, what mmseg does with out-of-range predictions): the pixel counts in
              its GT class's union (and in the aAcc / per-class accuracy denominators) but in no
              predicted class — a plain miss.
            * ``"drop"``: such pixels are removed entirely, as if their GT were ignore. This is CaR's
              lenient rule for VOC20 / PC59, whose code drops row *and column* 0 (background) of a
              21/60-class confusion matrix, so a foreground pixel called background is not counted.
        class_names: optional names of the C classes, kept as `self.class_names` for reports.
        **kwargs: forwarded to `torchmetrics.Metric` (e.g. `sync_on_compute`, `compute_on_cpu`).

    `compute()` returns a dict: ``mIoU``, ``aAcc``, ``mAcc`` (floats, ×100, NaN when nothing was
    scored), ``per_class_iou`` / ``per_class_acc`` (lists of C floats ×100, NaN for classes the
    reduction excludes) and ``confusion`` (the C×(C+1) int64 tensor, a copy).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    confusion: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        reduction: str = "mmseg",
        class_names: list[str] | None = None,
        pred_ignore: str = "miss",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(
                f"ignore_index={ignore_index} lies inside the class range [0, {num_classes}); "
                "it must be outside so that a 'no class' prediction is not a class id"
            )
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}")
        if pred_ignore not in PRED_IGNORE_MODES:
            raise ValueError(f"unknown pred_ignore {pred_ignore!r}; valid: {', '.join(PRED_IGNORE_MODES)}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}")
        self.num_classes = num_classes
        self.ignore_index = int(ignore_index)
        self.reduction = reduction
        self.pred_ignore = pred_ignore
        self.class_names = list(class_names) if class_names is not None else None
        self.add_state(
            "confusion",
            default=torch.zeros(num_classes, num_classes + 1, dtype=torch.int64),
            dist_reduce_fx="sum",
        )

    def _check_values(self, t: torch.Tensor, valid: torch.Tensor, name: str) -> None:
        """Raise if `t` has values outside [0, C) ∪ {ignore_index} where `valid`, naming them."""
        c = self.num_classes
        bad = valid & ((t < 0) | (t >= c)) & (t != self.ignore_index)
        if bool(bad.any()):
            values = torch.unique(t[bad]).tolist()
            shown = values[:20] + (["…"] if len(values) > 20 else [])
            raise ValueError(
                f"{name} has values {shown} outside [0, {c}) that are not ignore_index={self.ignore_index}"
            )

    def update(self, preds: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> None:
        """Add one H×W label map (or a batch N×H×W) and its GT to the confusion matrix.

        Pixels whose target is `ignore_index` are dropped before anything else, so whatever the model
        predicts there (checked or not) never counts — as in mmseg.
        """
        device = self.confusion.device
        p = _as_label_tensor(preds, "preds", device)
        g = _as_label_tensor(target, "target", device)
        if p.shape != g.shape:
            raise ValueError(
                f"preds and target shapes differ: preds {tuple(p.shape)} vs target {tuple(g.shape)}"
            )
        c = self.num_classes
        everywhere = torch.ones_like(g, dtype=torch.bool)
        self._check_values(g, everywhere, "target")
        valid = g != self.ignore_index
        # Predictions on ignored GT pixels are irrelevant to the score, so only validate the scored ones.
        self._check_values(p, valid, "preds")
        g = g[valid]
        p = p[valid]
        col = torch.where(p == self.ignore_index, torch.full_like(p, c), p)
        counts = torch.bincount(g * (c + 1) + col, minlength=c * (c + 1))
        self.confusion += counts.reshape(c, c + 1)

    def compute(self) -> dict[str, Any]:
        """Reduce the confusion matrix with the configured `reduction` and `pred_ignore` rules."""
        out = scores_from_confusion(self.confusion, self.reduction, self.pred_ignore)
        out["confusion"] = self.confusion.detach().clone()
        return out


def scores_from_confusion(confusion: torch.Tensor, reduction: str = "mmseg", pred_ignore: str = "miss") -> dict[str, Any]:
    """mIoU / aAcc / mAcc / per-class scores (×100) of a C×(C+1) confusion matrix.

    A plain function so one accumulated state can be reported under several rules.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}")
    cm = confusion.detach().to("cpu", torch.float64)
    c = cm.shape[0]
    if pred_ignore == "drop":
        cm = cm[:, :c]
    inter = torch.diagonal(cm[:, :c])
    gt = cm.sum(dim=1)  # includes the "no class" column under pred_ignore="miss"
    pred = cm[:, :c].sum(dim=0)
    union = gt + pred - inter
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    iou = torch.where(union > 0, inter / union.clamp(min=1), nan)
    acc = torch.where(gt > 0, inter / gt.clamp(min=1), nan)
    if reduction == "present":
        iou = torch.where(gt > 0, iou, nan)
    total = gt.sum()
    a_acc = float(inter.sum() / total) * 100 if total > 0 else float("nan")
    return {
        "mIoU": _nanmean(iou) * 100,
        "aAcc": a_acc,
        "mAcc": _nanmean(acc) * 100,
        "per_class_iou": (iou * 100).tolist(),
        "per_class_acc": (acc * 100).tolist(),
    }


def _nanmean(x: torch.Tensor) -> float:
    """Mean of the non-NaN entries; NaN (not a warning or 0) when there are none."""
    keep = ~torch.isnan(x)
    return float(x[keep].mean()) if bool(keep.any()) else float("nan")
