"""Referring-segmentation metrics: per-expression binary masks → mIoU, oIoU (cIoU), prec@X.

Definitions follow LAVT / CaR / GL-CLIP / ReLA (docs/datasets.md §11):

* per sample: I = |P ∧ G|, U = |P ∨ G|, IoU = I / U, and IoU = 0 when U = 0 (CRIS instead divides by
  U + 1e-6, which gives the same 0 here but differs slightly elsewhere);
* ``mIoU`` (CaR's "mIoU", LAVT's "Mean IoU", ReLA's gIoU) = mean of per-sample IoU — what the CaR
  paper reports;
* ``oIoU`` a.k.a. cIoU = ΣI / ΣU over all samples — dominated by large objects;
* ``prec@X`` = share of samples with IoU **≥** X (LAVT / CaR / ReLA; CRIS uses >).

Every state is a sum (`dist_reduce_fx="sum"`), so data-parallel shards and `merge_state` combine
exactly; per-sample IoUs are not kept, only their sum and the threshold hit counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)


def check_thresholds(thresholds: Sequence[float]) -> tuple[float, ...]:
    """The prec@X thresholds as floats, or a ValueError: each must lie in (0, 1] and there must be one."""
    ts = tuple(float(t) for t in thresholds)
    if not ts or any(not 0.0 < t <= 1.0 for t in ts):
        raise ValueError(f"thresholds must be a non-empty sequence of values in (0, 1], got {ts}")
    return ts


def _as_mask_tensor(x: np.ndarray | torch.Tensor, name: str, device: torch.device) -> torch.Tensor:
    """Bool or 0/1 mask(s) → bool tensor N×H×W. Other values raise (no silent thresholding)."""
    if isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, torch.Tensor):
        t = x
    else:
        raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")
    if t.ndim == 2:
        t = t.unsqueeze(0)
    elif t.ndim != 3:
        raise ValueError(f"{name} must be H×W or N×H×W, got shape {tuple(t.shape)}")
    if t.dtype != torch.bool:
        bad = (t != 0) & (t != 1)
        if bool(bad.any()):
            values = torch.unique(t[bad]).tolist()[:10]
            raise ValueError(
                f"{name} must be a binary mask (bool or 0/1); found values {values}. "
                "Threshold soft masks before scoring."
            )
        t = t != 0
    return t.to(device)


class ReferringIoU(Metric):
    """Referring-segmentation scores accumulated over samples (one sample = one expression).

    Args:
        thresholds: IoU thresholds X for ``prec@X`` (each in (0, 1]); default 0.5 … 0.9.
        **kwargs: forwarded to `torchmetrics.Metric`.

    `update(preds, target)` takes one H×W mask pair or a batch N×H×W (bool or 0/1 values).
    `compute()` returns ``mIoU``, ``oIoU`` and ``prec@X`` (percent, floats; NaN with no samples) and
    ``num_samples`` (int).

    The threshold test uses IoU = I / U in float64 and ``>=``: IEEE division is correctly rounded and
    rounding is monotone, so an exact ratio equal to X (50/100 at 0.5, 9/10 at 0.9) rounds to the same
    double as the literal X and counts, which float32 or a ``>`` test would not guarantee.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    intersection: torch.Tensor
    union: torch.Tensor
    iou_sum: torch.Tensor
    num_samples: torch.Tensor
    hits: torch.Tensor

    def __init__(self, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.thresholds = check_thresholds(thresholds)
        self.add_state("intersection", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("union", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("iou_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_samples", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("hits", default=torch.zeros(len(self.thresholds), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> None:
        """Add one sample (H×W) or a batch of samples (N×H×W)."""
        device = self.intersection.device
        p = _as_mask_tensor(preds, "preds", device)
        g = _as_mask_tensor(target, "target", device)
        if p.shape != g.shape:
            raise ValueError(
                f"preds and target shapes differ: preds {tuple(p.shape)} vs target {tuple(g.shape)}"
            )
        self.update_counts((p & g).sum(dim=(1, 2), dtype=torch.int64), (p | g).sum(dim=(1, 2), dtype=torch.int64))

    def update_counts(self, inter: torch.Tensor | int, union: torch.Tensor | int) -> None:
        """Add samples given only their pixel counts I and U (scalars or 1-D), e.g. from a run's progress log.

        `update` goes through here, so a resumed run that replays logged (I, U) pairs ends in the same
        state, bit for bit, as one that saw the masks.
        """
        device = self.intersection.device
        inter = torch.as_tensor(inter, dtype=torch.int64, device=device).reshape(-1)
        union = torch.as_tensor(union, dtype=torch.int64, device=device).reshape(-1)
        if inter.shape != union.shape or bool((inter < 0).any()) or bool((inter > union).any()):
            raise ValueError(f"need 0 ≤ I ≤ U elementwise with equal shapes, got I={inter.tolist()}, U={union.tolist()}")
        iou = torch.where(
            union > 0,
            inter.to(torch.float64) / union.clamp(min=1).to(torch.float64),
            torch.zeros((), dtype=torch.float64, device=device),
        )
        th = torch.tensor(self.thresholds, dtype=torch.float64, device=device)
        self.intersection += inter.sum()
        self.union += union.sum()
        self.iou_sum += iou.sum()
        self.num_samples += iou.numel()
        self.hits += (iou[:, None] >= th[None, :]).sum(dim=0)
        # torchmetrics wraps only `update`: keep its bookkeeping right when this is called directly
        self._computed = None
        self._update_count += 1

    def compute(self) -> dict[str, Any]:
        """Percent scores over every sample seen (and every shard, after distributed sync)."""
        n = int(self.num_samples)
        u = int(self.union)
        out: dict[str, Any] = {
            "mIoU": float(self.iou_sum) / n * 100 if n else float("nan"),
            "oIoU": int(self.intersection) / u * 100 if u else float("nan"),
        }
        for t, h in zip(self.thresholds, self.hits.tolist(), strict=True):
            out[f"prec@{t:g}"] = h / n * 100 if n else float("nan")
        out["num_samples"] = n
        return out
