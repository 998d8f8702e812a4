"""GRES metrics (ReLA's gIoU, cIoU, N-acc, T-acc) on hand-computed cases, merging, and the no-target switch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from carbench.metrics.gres import GRESMetric, apply_no_target_rule


def _pair(h: int, w: int, pred_px: int, gt_px: int, overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat masks on an h×w grid with the given areas and overlap (pred first, GT after pred − overlap)."""
    p, g = np.zeros(h * w, bool), np.zeros(h * w, bool)
    p[:pred_px] = True
    g[pred_px - overlap: pred_px - overlap + gt_px] = True
    return p.reshape(h, w), g.reshape(h, w)


# samples: (|P|, |G|, I) on a 10×10 grid
#  a: target, I=50, U=100 → IoU 0.5          b: target, empty prediction → IoU 0 (missed)
#  c: target, I=90, U=100 → IoU 0.9          d: no target, empty prediction → IoU 1, adds nothing to ΣI/ΣU
#  e: no target, predicts 20 px → IoU 0, adds U = 20
CASES = [(75, 75, 50), (0, 40, 0), (95, 95, 90), (0, 0, 0), (20, 0, 0)]


def _fill(metric: GRESMetric, cases=CASES) -> GRESMetric:
    for pa, ga, i in cases:
        metric.update(*_pair(10, 10, pa, ga, i))
    return metric


def test_hand_computed_values() -> None:
    out = _fill(GRESMetric()).compute()
    # gIoU = (0.5 + 0 + 0.9 + 1 + 0) / 5 = 48 %; cIoU = (50 + 0 + 90) / (100 + 40 + 100 + 0 + 20) = 140 / 260
    assert out["gIoU"] == pytest.approx(48.0)
    assert out["cIoU"] == pytest.approx(140 / 260 * 100)
    assert out["N-acc"] == pytest.approx(50.0)  # d right, e wrong
    assert out["T-acc"] == pytest.approx(200 / 3)  # a and c found something, b did not
    # prec only over the 3 targeted samples: IoU ≥ 0.5 for a (exactly 0.5) and c; ≥ 0.9 for c (exactly 0.9)
    assert out["prec@0.5"] == pytest.approx(200 / 3) and out["prec@0.9"] == pytest.approx(100 / 3)
    assert out["prec@0.6"] == pytest.approx(100 / 3)
    assert (out["num_samples"], out["num_no_target"], out["num_targeted"]) == (5, 2, 3)


def test_no_target_sample_with_empty_prediction_scores_one() -> None:
    m = GRESMetric()
    m.update(np.zeros((4, 4), bool), np.zeros((4, 4), bool))
    out = m.compute()
    assert out["gIoU"] == 100.0 and out["N-acc"] == 100.0
    assert math.isnan(out["cIoU"]) and math.isnan(out["T-acc"]) and math.isnan(out["prec@0.5"])


def test_states_merge_exactly_across_shards() -> None:
    whole = _fill(GRESMetric()).compute()
    a, b = _fill(GRESMetric(), CASES[:2]), _fill(GRESMetric(), CASES[2:])
    a.merge_state(b)
    assert a.compute() == whole
    for name in ("intersection", "union", "hits", "nt_correct"):  # sums, so torch.distributed can reduce them
        assert a._reductions[name] is torch.sum or a._reductions[name].__name__ in ("dim_zero_sum", "sum")


def test_batch_update_equals_sample_updates() -> None:
    ps, gs = zip(*(_pair(10, 10, pa, ga, i) for pa, ga, i in CASES), strict=True)
    m = GRESMetric()
    m.update(np.stack(ps), np.stack(gs))
    assert m.compute() == _fill(GRESMetric()).compute()


def test_inconsistent_counts_and_soft_masks_are_refused() -> None:
    with pytest.raises(ValueError, match="inconsistent counts"):
        GRESMetric().update_counts([5], [4], [5], [5])
    with pytest.raises(ValueError, match="binary mask"):
        GRESMetric().update(np.full((2, 2), 0.5), np.zeros((2, 2)))


def test_no_target_rule() -> None:
    mask = np.zeros((10, 10), bool)
    mask[:2] = True  # 20 % of the image
    assert apply_no_target_rule(mask, 0.1, "never", 0.9).sum() == 20
    assert apply_no_target_rule(mask, 0.1, "min_score", 0.2).sum() == 0
    assert apply_no_target_rule(mask, 0.3, "min_score", 0.2).sum() == 20
    assert apply_no_target_rule(mask, 1.0, "min_area", 0.25).sum() == 0
    assert apply_no_target_rule(mask, 1.0, "min_area", 0.15).sum() == 20
    with pytest.raises(ValueError, match="unknown no-target rule 'floor'"):
        apply_no_target_rule(mask, 1.0, "floor", 0.1)
