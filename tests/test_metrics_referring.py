"""ReferringIoU on the §12 fixture (docs/datasets.md), edge cases and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from carbench.metrics import ReferringIoU


def pair_with(i: int, u: int, shape: tuple[int, int] = (10, 20)) -> tuple[np.ndarray, np.ndarray]:
    """(pred, target) masks with exactly |P∧G| = i and |P∨G| = u pixels.

    pred covers flat pixels [0, i + x), target covers [x, u): they overlap on [x, i + x).
    """
    assert 0 <= i <= u <= shape[0] * shape[1]
    x = (u - i) // 2
    pred = np.zeros(shape[0] * shape[1], dtype=bool)
    target = np.zeros_like(pred)
    pred[: i + x] = True
    target[x:u] = True
    p, t = pred.reshape(shape), target.reshape(shape)
    assert (p & t).sum() == i and (p | t).sum() == u
    return p, t


FIXTURE = [(50, 100), (0, 50), (90, 100)]


def fixture_metric() -> ReferringIoU:
    m = ReferringIoU()
    for i, u in FIXTURE:
        m.update(*pair_with(i, u))
    return m


def test_fixture_values() -> None:
    res = fixture_metric().compute()
    # oIoU = (50+0+90)/(100+50+100) = 140/250;  mIoU = (0.5 + 0 + 0.9)/3
    assert res["oIoU"] == pytest.approx(56.00, abs=1e-9)
    assert res["mIoU"] == pytest.approx(140 / 3, abs=1e-9)
    assert round(res["mIoU"], 2) == 46.67
    # IoUs 0.5, 0, 0.9 with ≥: 0.5 counts at 0.5, 0.9 counts at 0.9.
    assert res["prec@0.5"] == pytest.approx(200 / 3)
    assert res["prec@0.6"] == pytest.approx(100 / 3)
    assert res["prec@0.7"] == pytest.approx(100 / 3)
    assert res["prec@0.8"] == pytest.approx(100 / 3)
    assert res["prec@0.9"] == pytest.approx(100 / 3)
    assert round(res["prec@0.5"], 2) == 66.67 and round(res["prec@0.9"], 2) == 33.33
    assert res["num_samples"] == 3


def test_batched_update_equals_sample_updates() -> None:
    pairs = [pair_with(i, u) for i, u in FIXTURE]
    batched = ReferringIoU()
    batched.update(np.stack([p for p, _ in pairs]), torch.as_tensor(np.stack([t for _, t in pairs])))
    assert batched.compute() == fixture_metric().compute()


@pytest.mark.parametrize("t", [0.5, 0.6, 0.7, 0.8, 0.9])
@pytest.mark.parametrize("denominator", [10, 100, 1000])
def test_iou_exactly_at_threshold_counts(t: float, denominator: int) -> None:
    m = ReferringIoU()
    m.update(*pair_with(round(t * denominator), denominator, shape=(40, 25)))
    res = m.compute()
    assert res[f"prec@{t:g}"] == 100.0
    assert all(res[f"prec@{x:g}"] == 0.0 for x in m.thresholds if x > t)


def test_empty_union_sample_is_iou_zero_and_counted() -> None:
    m = fixture_metric()
    empty = np.zeros((10, 20), dtype=bool)
    m.update(empty, empty)
    res = m.compute()
    assert res["num_samples"] == 4
    assert res["mIoU"] == pytest.approx(140 / 4)  # (0.5 + 0 + 0.9 + 0) / 4
    assert res["oIoU"] == pytest.approx(56.0)  # adds nothing to ΣI or ΣU
    assert res["prec@0.5"] == pytest.approx(50.0)


def test_zero_one_integer_masks_accepted_and_other_values_refused() -> None:
    p, t = pair_with(50, 100)
    m = ReferringIoU()
    m.update(p.astype(np.uint8), torch.as_tensor(t, dtype=torch.float32))
    assert m.compute()["mIoU"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="binary"):
        m.update(p.astype(np.float32) * 0.7, t)


def test_shape_mismatch_raises() -> None:
    m = ReferringIoU()
    with pytest.raises(ValueError, match=r"\(1, 4, 5\).*\(1, 5, 4\)"):
        m.update(np.zeros((4, 5), dtype=bool), np.zeros((5, 4), dtype=bool))


def test_custom_thresholds_and_validation() -> None:
    m = ReferringIoU(thresholds=(0.25, 1.0))
    m.update(*pair_with(25, 100))
    res = m.compute()
    assert res["prec@0.25"] == 100.0 and res["prec@1"] == 0.0
    with pytest.raises(ValueError):
        ReferringIoU(thresholds=(0.0,))
    with pytest.raises(ValueError):
        ReferringIoU(thresholds=())


def test_merge_two_halves_equals_one_pass() -> None:
    left, right = ReferringIoU(), ReferringIoU()
    left.update(*pair_with(*FIXTURE[0]))
    for i, u in FIXTURE[1:]:
        right.update(*pair_with(i, u))
    left.merge_state(right)
    assert left.compute() == fixture_metric().compute()


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_no_samples_gives_nan() -> None:
    res = ReferringIoU().compute()
    assert res["num_samples"] == 0 and math.isnan(res["mIoU"]) and math.isnan(res["oIoU"])


@st.composite
def masks(draw):
    """Random (pred, target) bool masks of one random N×H×W shape."""
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    size = shape[0] * shape[1] * shape[2]
    pred = np.array(draw(st.lists(st.booleans(), min_size=size, max_size=size))).reshape(shape)
    target = np.array(draw(st.lists(st.booleans(), min_size=size, max_size=size))).reshape(shape)
    return pred, target


@settings(max_examples=50, deadline=None)
@given(masks())
def test_property_ranges_and_reference(data) -> None:
    pred, target = data
    m = ReferringIoU()
    m.update(pred, target)
    res = m.compute()
    inter = (pred & target).sum(axis=(1, 2))
    union = (pred | target).sum(axis=(1, 2))
    ious = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    assert 0.0 <= res["mIoU"] <= 100.0
    assert res["mIoU"] == pytest.approx(ious.mean() * 100)
    if union.sum() > 0:
        assert 0.0 <= res["oIoU"] <= 100.0
        assert res["oIoU"] == pytest.approx(inter.sum() / union.sum() * 100)
    for t in m.thresholds:
        assert res[f"prec@{t:g}"] == pytest.approx((ious >= t).mean() * 100)


@settings(max_examples=30, deadline=None)
@given(masks())
def test_property_perfect_prediction_is_100(data) -> None:
    _, target = data
    target[:, 0, 0] = True  # every sample non-empty
    m = ReferringIoU()
    m.update(target.copy(), target)
    res = m.compute()
    assert res["mIoU"] == pytest.approx(100.0) and res["oIoU"] == pytest.approx(100.0)
    assert all(res[f"prec@{t:g}"] == 100.0 for t in m.thresholds)
