"""SemanticIoU against hand-computed values, torchmetrics and a direct re-implementation of mmseg's rule.

The fixture is the one specified in docs/datasets.md §12: it separates the mmseg /
torchmetrics rule, CaR's present-in-GT rule and per-image averaging, which agree on full datasets
and so would hide a wrong implementation there.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchmetrics.classification import MulticlassJaccardIndex

from carbench.metrics import SemanticIoU

IGN = 255
C = 4

# Image A                      Image B
#   GT          pred             GT            pred
#   0 0   1 1   0 1 1 1          1 1 0 0       1 1 0 2
#   0 255 1 255 2 3 1 3          1 1 0 255     0 1 0 3
# Class 2 is predicted (twice) but never in GT → IoU 0, counted by mmseg.
# Class 3 is predicted only on 255 pixels → never counted → union 0 → excluded (NaN).
GT_A = np.array([[0, 0, 1, 1], [0, IGN, 1, IGN]], dtype=np.int64)
PR_A = np.array([[0, 1, 1, 1], [2, 3, 1, 3]], dtype=np.int64)
GT_B = np.array([[1, 1, 0, 0], [1, 1, 0, IGN]], dtype=np.int64)
PR_B = np.array([[1, 1, 0, 2], [0, 1, 0, 3]], dtype=np.int64)

# Hand count of valid pixels (row = GT, col = pred, last col = pred "no class"):
#   A: (0,0)×1 (0,1)×1 (0,2)×1 (1,1)×3      B: (0,0)×2 (0,2)×1 (1,0)×1 (1,1)×3
EXPECTED_CONFUSION = [
    [3, 1, 2, 0, 0],
    [1, 6, 0, 0, 0],
    [0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0],
]
# class 0: I=3, GT=6, pred=4 → U=7 → 3/7;  class 1: I=6, GT=7, pred=7 → U=8 → 3/4
# class 2: I=0, GT=0, pred=2 → U=2 → 0;    class 3: U=0 → NaN (excluded)
# mmseg mIoU   = (3/7 + 3/4 + 0) / 3 = 11/28 = 39.2857…%
# present mIoU = (3/7 + 3/4) / 2     = 33/56 = 58.9286…%
# aAcc = 9/13 = 69.2308…%;  mAcc = (3/6 + 6/7) / 2 = 19/28 = 67.8571…%
# per-image: A = (1/3 + 3/4 + 0)/3 = 13/36, B = (2/4 + 3/4 + 0)/3 = 15/36 → mean 7/18 = 38.888…%
EXPECTED_MIOU = 11 / 28 * 100
EXPECTED_PRESENT = 33 / 56 * 100
EXPECTED_PER_IMAGE = 7 / 18 * 100


def mmseg_miou(pairs: list[tuple[np.ndarray, np.ndarray]], num_classes: int, ignore: int = IGN) -> float:
    """Direct numpy transcription of mmseg IoUMetric: per-image histograms, dataset sums, nanmean.

    Predictions outside [0, C) fall out of the histograms, as they do in mmseg's `torch.histc`.
    """

    def hist(v: np.ndarray) -> np.ndarray:
        v = v[(v >= 0) & (v < num_classes)]
        return np.bincount(v, minlength=num_classes).astype(np.float64)

    ti = np.zeros(num_classes)
    tp = np.zeros(num_classes)
    tg = np.zeros(num_classes)
    for pred, gt in pairs:
        keep = gt != ignore
        p, g = pred[keep], gt[keep]
        ti += hist(p[p == g])
        tp += hist(p)
        tg += hist(g)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = ti / (tp + tg - ti)
    return float(np.nanmean(iou)) * 100 if not np.all(np.isnan(iou)) else float("nan")


def torchmetrics_miou(pairs: list[tuple[np.ndarray, np.ndarray]], num_classes: int) -> float:
    tm = MulticlassJaccardIndex(num_classes=num_classes, average="macro", ignore_index=IGN)
    for pred, gt in pairs:
        tm.update(torch.as_tensor(pred), torch.as_tensor(gt))
    return float(tm.compute()) * 100


def fixture_metric(**kwargs) -> SemanticIoU:
    m = SemanticIoU(num_classes=C, **kwargs)
    m.update(PR_A, GT_A)
    m.update(PR_B, GT_B)
    return m


def test_fixture_hand_computed_confusion_and_scores() -> None:
    res = fixture_metric().compute()
    assert res["confusion"].dtype == torch.int64
    assert res["confusion"].tolist() == EXPECTED_CONFUSION
    assert res["mIoU"] == pytest.approx(EXPECTED_MIOU, abs=1e-9)
    assert res["aAcc"] == pytest.approx(9 / 13 * 100, abs=1e-9)
    assert res["mAcc"] == pytest.approx(19 / 28 * 100, abs=1e-9)
    iou = res["per_class_iou"]
    assert iou[:3] == pytest.approx([3 / 7 * 100, 75.0, 0.0])
    assert math.isnan(iou[3])
    acc = res["per_class_acc"]
    assert acc[:2] == pytest.approx([50.0, 6 / 7 * 100])
    assert math.isnan(acc[2]) and math.isnan(acc[3])


def test_fixture_equals_torchmetrics_macro_and_mmseg_reimplementation() -> None:
    pairs = [(PR_A, GT_A), (PR_B, GT_B)]
    ours = fixture_metric().compute()["mIoU"]
    assert torchmetrics_miou(pairs, C) == pytest.approx(EXPECTED_MIOU, abs=1e-4)
    assert mmseg_miou(pairs, C) == pytest.approx(EXPECTED_MIOU, abs=1e-9)
    assert ours == pytest.approx(torchmetrics_miou(pairs, C), abs=1e-4)
    assert ours == pytest.approx(mmseg_miou(pairs, C), abs=1e-9)


def test_fixture_per_image_averaging_differs() -> None:
    per_image = []
    for pred, gt in [(PR_A, GT_A), (PR_B, GT_B)]:
        m = SemanticIoU(num_classes=C)
        m.update(pred, gt)
        per_image.append(m.compute()["mIoU"])
    assert np.mean(per_image) == pytest.approx(EXPECTED_PER_IMAGE, abs=1e-9)
    assert abs(np.mean(per_image) - fixture_metric().compute()["mIoU"]) > 0.1


def test_fixture_present_reduction_excludes_false_positive_only_class() -> None:
    res = fixture_metric(reduction="present").compute()
    assert res["mIoU"] == pytest.approx(EXPECTED_PRESENT, abs=1e-9)
    assert math.isnan(res["per_class_iou"][2]) and math.isnan(res["per_class_iou"][3])
    # Same state, same accuracies: only the IoU averaging differs.
    assert res["aAcc"] == pytest.approx(9 / 13 * 100)
    assert res["confusion"].tolist() == EXPECTED_CONFUSION


def test_batched_update_equals_per_image_updates() -> None:
    m = SemanticIoU(num_classes=C)
    m.update(np.stack([PR_A, PR_B]), torch.as_tensor(np.stack([GT_A, GT_B]).astype(np.uint8)))
    assert m.compute()["confusion"].tolist() == EXPECTED_CONFUSION


# GT 0 0 0 1, pred 0 255 1 1: one class-0 pixel predicted "no class".
MISS_GT = np.array([[0, 0, 0, 1]])
MISS_PR = np.array([[0, IGN, 1, 1]])


def test_pred_ignore_miss_counts_no_class_as_a_miss() -> None:
    m = SemanticIoU(num_classes=2, pred_ignore="miss")
    m.update(MISS_PR, MISS_GT)
    res = m.compute()
    assert res["confusion"].tolist() == [[1, 1, 1], [0, 1, 0]]
    # class 0: I=1, GT=3, pred=1 → U=3;  class 1: I=1, GT=1, pred=2 → U=2
    assert res["per_class_iou"] == pytest.approx([100 / 3, 50.0])
    assert res["mIoU"] == pytest.approx((1 / 3 + 1 / 2) / 2 * 100)
    assert res["aAcc"] == pytest.approx(50.0)  # 2 correct of 4 valid pixels
    assert res["mIoU"] == pytest.approx(mmseg_miou([(MISS_PR, MISS_GT)], 2))


def test_pred_ignore_drop_removes_no_class_pixels() -> None:
    m = SemanticIoU(num_classes=2, pred_ignore="drop")
    m.update(MISS_PR, MISS_GT)
    res = m.compute()
    # The raw state is identical; only the reduction drops the last column.
    assert res["confusion"].tolist() == [[1, 1, 1], [0, 1, 0]]
    # class 0: I=1, GT=2, pred=1 → U=2;  class 1: I=1, GT=1, pred=2 → U=2
    assert res["per_class_iou"] == pytest.approx([50.0, 50.0])
    assert res["mIoU"] == pytest.approx(50.0)
    assert res["aAcc"] == pytest.approx(200 / 3)  # 2 correct of 3 remaining pixels


def test_out_of_range_target_names_values() -> None:
    m = SemanticIoU(num_classes=3)
    with pytest.raises(ValueError, match=r"target.*\[-1, 7\]"):
        m.update(np.zeros((2, 2), dtype=np.int64), np.array([[0, 7], [-1, 255]]))


def test_out_of_range_pred_names_values() -> None:
    m = SemanticIoU(num_classes=3)
    with pytest.raises(ValueError, match=r"preds.*\[3, 9\]"):
        m.update(np.array([[0, 3], [9, 1]]), np.zeros((2, 2), dtype=np.int64))
    # An out-of-range prediction on an ignored GT pixel is never scored, so it is not an error.
    m.update(np.array([[0, 9]]), np.array([[0, IGN]]))
    assert m.compute()["confusion"].sum() == 1


def test_shape_mismatch_names_both_shapes() -> None:
    m = SemanticIoU(num_classes=3)
    with pytest.raises(ValueError, match=r"\(1, 2, 4\).*\(1, 2, 3\)"):
        m.update(np.zeros((2, 4), dtype=np.int64), np.zeros((2, 3), dtype=np.int64))


def test_float_labels_are_refused() -> None:
    m = SemanticIoU(num_classes=3)
    with pytest.raises(TypeError, match="integer"):
        m.update(np.zeros((2, 2), dtype=np.float32), np.zeros((2, 2), dtype=np.int64))


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="mmseg.*present"):
        SemanticIoU(num_classes=3, reduction="micro")
    with pytest.raises(ValueError, match="miss.*drop"):
        SemanticIoU(num_classes=3, pred_ignore="zero")
    with pytest.raises(ValueError, match="ignore_index"):
        SemanticIoU(num_classes=3, ignore_index=0)
    with pytest.raises(ValueError, match="class_names"):
        SemanticIoU(num_classes=3, class_names=["a", "b"])


def test_merge_two_halves_equals_one_pass() -> None:
    whole = fixture_metric()
    left, right = SemanticIoU(num_classes=C), SemanticIoU(num_classes=C)
    left.update(PR_A, GT_A)
    right.update(PR_B, GT_B)
    # What distributed sync does (dist_reduce_fx="sum") is a sum of the states.
    assert torch.equal(left.confusion + right.confusion, whole.confusion)
    left.merge_state(right)
    merged = left.compute()
    expected = whole.compute()
    assert torch.equal(merged["confusion"], expected["confusion"])
    assert merged["mIoU"] == expected["mIoU"]


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_no_update_gives_nan_not_zero() -> None:
    res = SemanticIoU(num_classes=3).compute()
    assert math.isnan(res["mIoU"]) and math.isnan(res["aAcc"])


@st.composite
def label_maps(draw, allow_no_class: bool = False):
    """N×H×W (pred, target) with at least one scored pixel; preds may include 255 if allowed."""
    c = draw(st.integers(2, 6))
    n, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    size = n * h * w
    tvals = st.one_of(st.integers(0, c - 1), st.just(IGN))
    target = np.array(draw(st.lists(tvals, min_size=size, max_size=size)), dtype=np.int64).reshape(n, h, w)
    pvals = st.one_of(st.integers(0, c - 1), st.just(IGN)) if allow_no_class else st.integers(0, c - 1)
    pred = np.array(draw(st.lists(pvals, min_size=size, max_size=size)), dtype=np.int64).reshape(n, h, w)
    target.flat[draw(st.integers(0, size - 1))] = draw(st.integers(0, c - 1))  # ≥ 1 scored pixel
    return c, pred, target


@settings(max_examples=40, deadline=None)
@given(label_maps())
def test_property_matches_torchmetrics_macro(data) -> None:
    c, pred, target = data
    m = SemanticIoU(num_classes=c)
    for p, t in zip(pred, target, strict=True):
        m.update(p, t)
    res = m.compute()
    assert 0.0 <= res["mIoU"] <= 100.0
    assert 0.0 <= res["aAcc"] <= 100.0
    assert res["mIoU"] == pytest.approx(torchmetrics_miou(list(zip(pred, target, strict=True)), c), abs=1e-4)


@settings(max_examples=40, deadline=None)
@given(label_maps(allow_no_class=True))
def test_property_matches_mmseg_with_no_class_preds(data) -> None:
    c, pred, target = data
    m = SemanticIoU(num_classes=c)
    m.update(pred, target)
    res = m.compute()
    assert 0.0 <= res["mIoU"] <= 100.0
    assert res["mIoU"] == pytest.approx(mmseg_miou(list(zip(pred, target, strict=True)), c), abs=1e-9)
    present = SemanticIoU(num_classes=c, reduction="present")
    present.update(pred, target)
    # Dropping false-positive-only classes (IoU 0) can only raise the mean.
    assert present.compute()["mIoU"] >= res["mIoU"] - 1e-9


@settings(max_examples=30, deadline=None)
@given(label_maps())
def test_property_perfect_prediction_is_100(data) -> None:
    c, _, target = data
    pred = np.where(target == IGN, 0, target)
    for reduction in ("mmseg", "present"):
        m = SemanticIoU(num_classes=c, reduction=reduction)
        m.update(pred, target)
        res = m.compute()
        assert res["mIoU"] == pytest.approx(100.0)
        assert res["aAcc"] == pytest.approx(100.0)
        assert res["mAcc"] == pytest.approx(100.0)
