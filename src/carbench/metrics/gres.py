"""Generalized referring segmentation (GRES / gRefCOCO) metrics as ReLA defines them: gIoU, cIoU, N-acc, T-acc.

Per sample (one expression) with binary prediction P and ground truth G (G empty for a no-target
expression), I = |P ∧ G|, U = |P ∨ G|:

* a **no-target** sample contributes IoU 1 to gIoU when P is empty (a true "nothing here") and IoU 0
  otherwise; it adds I = 0 and U = |P| to the cIoU sums (nothing when P is empty);
* a **target** sample contributes I / U to gIoU and its I, U to the cIoU sums; an empty P is a missed
  target (IoU 0);
* ``gIoU`` = mean per-sample IoU over *all* samples; ``cIoU`` = ΣI / ΣU over all samples;
* ``N-acc`` = share of no-target samples predicted empty; ``T-acc`` = share of target samples predicted
  non-empty; ``prec@X`` = share of *target* samples with IoU ≥ X (ReLA counts precision only there).

All states are sums (``dist_reduce_fx="sum"``), so shards merge exactly. `apply_no_target_rule` is
the switch that lets a method which never answers "nothing" (CaR) produce empty predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

from carbench.metrics.referring import DEFAULT_THRESHOLDS, _as_mask_tensor, check_thresholds

__all__ = ["GRESMetric", "apply_no_target_rule"]

NO_TARGET_RULES = ("never", "min_score", "min_area")


def apply_no_target_rule(mask: np.ndarray, score: float, rule: str, threshold: float) -> np.ndarray:
    """Return `mask`, or an all-False mask of its shape when the rule says "no target".

    Args:
        mask: H×W bool prediction for one expression.
        score: the method's confidence in its answer (CaR: the final score of the best kept query).
        rule: ``never`` (keep every prediction), ``min_score`` (empty if ``score < threshold``) or
            ``min_area`` (empty if the mask covers less than ``threshold`` of the image).
        threshold: in [0, 1].
    """
    if rule not in NO_TARGET_RULES:
        raise ValueError(f"unknown no-target rule {rule!r}; valid: {', '.join(NO_TARGET_RULES)}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"no-target threshold must lie in [0, 1], got {threshold}")
    mask = np.asarray(mask, dtype=bool)
    if rule == "min_score" and score < threshold:
        return np.zeros_like(mask)
    if rule == "min_area" and (mask.mean() if mask.size else 0.0) < threshold:
        return np.zeros_like(mask)
    return mask


class GRESMetric(Metric):
    """gIoU, cIoU, N-acc, T-acc and prec@X over GRES samples (one sample = one expression).

    `update(preds, target)` takes one H×W pair or N×H×W batches (bool or 0/1); a sample whose target
    is all False is a no-target sample. `compute()` returns percentages (NaN where a denominator is
    0) plus the sample counts.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    intersection: torch.Tensor
    union: torch.Tensor
    iou_sum: torch.Tensor
    num_samples: torch.Tensor
    num_targeted: torch.Tensor
    nt_correct: torch.Tensor
    nt_total: torch.Tensor
    t_found: torch.Tensor
    hits: torch.Tensor

    def __init__(self, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.thresholds = check_thresholds(thresholds)
        for name in ("intersection", "union", "num_samples", "num_targeted", "nt_correct", "nt_total", "t_found"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("iou_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("hits", default=torch.zeros(len(self.thresholds), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, preds: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> None:
        """Add one sample (H×W) or a batch (N×H×W)."""
        device = self.intersection.device
        p = _as_mask_tensor(preds, "preds", device)
        g = _as_mask_tensor(target, "target", device)
        if p.shape != g.shape:
            raise ValueError(f"preds and target shapes differ: preds {tuple(p.shape)} vs target {tuple(g.shape)}")
        self.update_counts(
            (p & g).sum(dim=(1, 2), dtype=torch.int64),
            (p | g).sum(dim=(1, 2), dtype=torch.int64),
            p.sum(dim=(1, 2), dtype=torch.int64),
            g.sum(dim=(1, 2), dtype=torch.int64),
        )

    def update_counts(self, inter: Any, union: Any, pred_area: Any, target_area: Any) -> None:
        """Add samples from their pixel counts (I, U, |P|, |G|), e.g. replayed from a progress log."""
        device = self.intersection.device
        i, u, pa, ga = (torch.as_tensor(x, dtype=torch.int64, device=device).reshape(-1)
                        for x in (inter, union, pred_area, target_area))
        if not (i.shape == u.shape == pa.shape == ga.shape):
            raise ValueError("I, U, |P| and |G| must have the same number of samples")
        if bool(((i < 0) | (i > pa) | (i > ga) | (u != pa + ga - i)).any()):
            raise ValueError(f"inconsistent counts: need 0 ≤ I ≤ min(|P|, |G|) and U = |P| + |G| − I; got "
                             f"I={i.tolist()}, U={u.tolist()}, |P|={pa.tolist()}, |G|={ga.tolist()}")
        no_target = ga == 0
        empty_pred = pa == 0
        iou = torch.where(
            no_target,
            empty_pred.to(torch.float64),
            i.to(torch.float64) / u.clamp(min=1).to(torch.float64),
        )
        th = torch.tensor(self.thresholds, dtype=torch.float64, device=device)
        self.intersection += i.sum()
        self.union += u.sum()
        self.iou_sum += iou.sum()
        self.num_samples += i.numel()
        self.num_targeted += (~no_target).sum()
        self.nt_total += no_target.sum()
        self.nt_correct += (no_target & empty_pred).sum()
        self.t_found += (~no_target & ~empty_pred).sum()
        self.hits += ((iou[:, None] >= th[None, :]) & ~no_target[:, None]).sum(dim=0)
        self._computed = None
        self._update_count += 1

    def compute(self) -> dict[str, Any]:
        """Percent scores over every sample seen (and every shard, after distributed sync)."""
        n, nt, t, u = int(self.num_samples), int(self.nt_total), int(self.num_targeted), int(self.union)
        out: dict[str, Any] = {
            "gIoU": float(self.iou_sum) / n * 100 if n else float("nan"),
            "cIoU": int(self.intersection) / u * 100 if u else float("nan"),
            "N-acc": int(self.nt_correct) / nt * 100 if nt else float("nan"),
            "T-acc": int(self.t_found) / t * 100 if t else float("nan"),
        }
        for x, h in zip(self.thresholds, self.hits.tolist(), strict=True):
            out[f"prec@{x:g}"] = h / t * 100 if t else float("nan")
        out.update(num_samples=n, num_no_target=nt, num_targeted=t)
        return out
