"""Property-based tests (hypothesis) for the metric accumulators and the visual prompts.

Complements the properties already in test_metrics_semantic.py / test_metrics_referring.py (agreement
with torchmetrics / mmseg / a per-sample reference, perfect prediction = 100) and test_prompts.py
(shape, dtype, no mutation, order independence, untouched inside, red-only outlines). Here: state
shape / dtype / conservation, order and partition invariance (the resume and torchrun paths rebuild
a state from pieces), input-dtype invariance, empty and full masks, and that a refused update leaves
the state untouched.
"""

from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carbench.metrics import ReferringIoU, SemanticIoU
from carbench.models.prompts import (
    PROMPT_ORDER,
    RED,
    _centre_and_half_sizes,
    apply_visual_prompts,
    prompt_images,
)

IGN = 255
pytestmark = pytest.mark.filterwarnings("ignore:The ``compute`` method of metric:UserWarning")
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------------ semantic


@st.composite
def semantic_batches(draw, max_n: int = 4):
    """(C, preds N×H×W, targets N×H×W): values in [0, C) ∪ {255}; preds never 255 on valid GT unless drawn so."""
    c = draw(st.integers(1, 6))
    n, h, w = draw(st.integers(1, max_n)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    values = st.one_of(st.integers(0, c - 1), st.just(IGN))
    target = draw(hnp.arrays(np.int64, (n, h, w), elements=values))
    pred = draw(hnp.arrays(np.int64, (n, h, w), elements=values))
    return c, pred, target


@SETTINGS
@given(semantic_batches(), st.sampled_from(["miss", "drop"]))
def test_semantic_state_shape_dtype_and_pixel_conservation(data, pred_ignore) -> None:
    c, pred, target = data
    m = SemanticIoU(num_classes=c, pred_ignore=pred_ignore)
    m.update(pred, target)
    conf = m.confusion
    assert conf.shape == (c, c + 1) and conf.dtype == torch.int64 and int(conf.min()) >= 0
    valid = target != IGN
    assert int(conf.sum()) == int(valid.sum())  # every scored pixel counted exactly once
    assert int(conf[:, c].sum()) == int((valid & (pred == IGN)).sum())  # "no class" column
    for k in range(c):  # row k = GT class k
        assert int(conf[k].sum()) == int((target == k).sum())
    res = m.compute()
    assert len(res["per_class_iou"]) == c and len(res["per_class_acc"]) == c
    for v in [res["mIoU"], res["aAcc"], res["mAcc"], *res["per_class_iou"], *res["per_class_acc"]]:
        assert math.isnan(v) or 0.0 <= v <= 100.0
    if not valid.any():
        assert math.isnan(res["mIoU"]) and math.isnan(res["aAcc"])  # nothing scored: NaN, never 0


@SETTINGS
@given(semantic_batches(max_n=5), st.randoms(use_true_random=False), st.integers(1, 4))
def test_semantic_order_and_partition_invariance(data, rnd, parts) -> None:
    c, pred, target = data
    whole = SemanticIoU(num_classes=c)
    whole.update(pred, target)
    order = list(range(len(pred)))
    rnd.shuffle(order)
    shards = [SemanticIoU(num_classes=c) for _ in range(parts)]
    for j, i in enumerate(order):  # images in any order, spread over any number of shards …
        shards[j % parts].update(pred[i], target[i])
    merged = SemanticIoU(num_classes=c)
    for s in shards:  # … merged like torchrun's sum reduction
        merged.merge_state(s)
    assert torch.equal(merged.confusion, whole.confusion)
    a, b = merged.compute(), whole.compute()
    np.testing.assert_array_equal(a["per_class_iou"], b["per_class_iou"])
    assert a["mIoU"] == b["mIoU"] or (math.isnan(a["mIoU"]) and math.isnan(b["mIoU"]))


@SETTINGS
@given(semantic_batches(), st.sampled_from([np.uint8, np.int16, np.int32, np.int64, "torch"]))
def test_semantic_integer_dtype_does_not_matter(data, dtype) -> None:
    c, pred, target = data
    ref = SemanticIoU(num_classes=c)
    ref.update(pred, target)
    m = SemanticIoU(num_classes=c)
    if dtype == "torch":
        m.update(torch.from_numpy(pred), torch.from_numpy(target).to(torch.int32))
    else:
        m.update(pred.astype(dtype), target.astype(dtype))
    assert torch.equal(m.confusion, ref.confusion)


@SETTINGS
@given(semantic_batches(), st.data())
def test_semantic_refused_update_leaves_the_state_untouched(data, draw) -> None:
    c, pred, target = data
    m = SemanticIoU(num_classes=c)
    m.update(pred, target)
    before = m.confusion.clone()
    bad_pred, bad_target = pred.copy(), target.copy()
    idx = draw.draw(st.integers(0, pred.size - 1))
    bad_value = draw.draw(st.one_of(st.integers(c, 254), st.integers(-5, -1)))
    which = draw.draw(st.sampled_from(["pred", "target", "float", "shape"]))
    if which == "pred":
        bad_target.flat[idx] = 0  # scored, so the bad prediction counts
        bad_pred.flat[idx] = bad_value
    elif which == "target":
        bad_target.flat[idx] = bad_value
    with pytest.raises((ValueError, TypeError)):
        if which == "float":
            m.update(bad_pred.astype(np.float32), bad_target)
        elif which == "shape":
            m.update(bad_pred[..., :0] if bad_pred.shape[-1] > 1 else bad_pred[:, :0], bad_target)
        else:
            m.update(bad_pred, bad_target)
    assert torch.equal(m.confusion, before)


@SETTINGS
@given(st.integers(1, 6), st.integers(1, 5), st.integers(1, 5), st.data())
def test_semantic_empty_and_full_maps(c, h, w, draw) -> None:
    k = draw.draw(st.integers(0, c - 1))
    # all-ignore GT: nothing changes, whatever is predicted
    m = SemanticIoU(num_classes=c)
    m.update(np.full((h, w), k), np.full((h, w), IGN))
    assert int(m.confusion.sum()) == 0 and math.isnan(m.compute()["mIoU"])
    # one class everywhere, predicted everywhere: that class 100, every other class NaN (never seen)
    m.update(np.full((h, w), k), np.full((h, w), k))
    res = m.compute()
    assert res["mIoU"] == 100.0 and res["aAcc"] == 100.0
    assert [i for i, v in enumerate(res["per_class_iou"]) if not math.isnan(v)] == [k]
    # "no class" predicted everywhere: a miss under the mmseg rule, nothing under CaR's drop rule
    miss, drop = SemanticIoU(num_classes=c), SemanticIoU(num_classes=c, pred_ignore="drop")
    for mm in (miss, drop):
        mm.update(np.full((h, w), IGN), np.full((h, w), k))
    assert miss.compute()["mIoU"] == 0.0 and miss.compute()["aAcc"] == 0.0
    assert math.isnan(drop.compute()["mIoU"])


# ------------------------------------------------------------------------------------------------ referring


@st.composite
def mask_batches(draw, max_n: int = 4):
    shape = (draw(st.integers(1, max_n)), draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    return draw(hnp.arrays(np.bool_, shape)), draw(hnp.arrays(np.bool_, shape))


@SETTINGS
@given(mask_batches(max_n=5), st.randoms(use_true_random=False), st.integers(1, 3))
def test_referring_order_partition_and_dtype_invariance(data, rnd, parts) -> None:
    pred, target = data
    whole = ReferringIoU()
    whole.update(pred, target)
    order = list(range(len(pred)))
    rnd.shuffle(order)
    shards = [ReferringIoU() for _ in range(parts)]
    for j, i in enumerate(order):
        p, t = pred[i], target[i]
        if j % 2:  # 0/1 integers and torch tensors are the same masks
            p, t = torch.from_numpy(p.astype(np.uint8)), t.astype(np.int64)
        shards[j % parts].update(p, t)
    merged = ReferringIoU()
    for s in shards:
        merged.merge_state(s)
    a, b = merged.compute(), whole.compute()
    assert a["num_samples"] == b["num_samples"] == len(pred)
    for key in b:
        if isinstance(b[key], float) and math.isnan(b[key]):
            assert math.isnan(a[key]), key
        else:
            assert a[key] == pytest.approx(b[key], abs=1e-9), key
    # ranges, and prec@X can only fall as X rises
    assert 0.0 <= b["mIoU"] <= 100.0 and (math.isnan(b["oIoU"]) or 0.0 <= b["oIoU"] <= 100.0)
    precs = [b[f"prec@{t:g}"] for t in whole.thresholds]
    assert all(0.0 <= x <= 100.0 for x in precs) and precs == sorted(precs, reverse=True)


@SETTINGS
@given(st.integers(1, 4), st.integers(1, 6), st.integers(1, 6))
def test_referring_empty_and_full_masks(n, h, w) -> None:
    empty, full = np.zeros((n, h, w), bool), np.ones((n, h, w), bool)
    m = ReferringIoU()
    m.update(empty, empty)  # nothing to find, nothing predicted: IoU 0 by definition, still counted
    r = m.compute()
    assert r["num_samples"] == n and r["mIoU"] == 0.0 and math.isnan(r["oIoU"])
    m = ReferringIoU()
    m.update(full, full)
    r = m.compute()
    assert r["mIoU"] == 100.0 and r["oIoU"] == 100.0 and r["prec@0.9"] == 100.0
    m = ReferringIoU()
    m.update(empty, full)  # missed everything
    r = m.compute()
    assert r["mIoU"] == 0.0 and r["oIoU"] == 0.0 and r["prec@0.5"] == 0.0


@SETTINGS
@given(mask_batches(), st.floats(0.01, 0.99))
def test_referring_refused_soft_mask_leaves_the_state_untouched(data, soft) -> None:
    pred, target = data
    m = ReferringIoU()
    m.update(pred, target)
    before = {k: v for k, v in m.compute().items()}
    bad = pred.astype(np.float32)
    bad.flat[0] = soft
    with pytest.raises(ValueError, match="binary"):
        m.update(bad, target)
    after = m.compute()
    assert after["num_samples"] == before["num_samples"] and after["mIoU"] == pytest.approx(before["mIoU"])


# ------------------------------------------------------------------------------------------------ prompts


def _image(rng_seed: int, h: int, w: int, high: int = 256) -> np.ndarray:
    return np.random.default_rng(rng_seed).integers(0, high, (h, w, 3), dtype=np.uint8)


_hw = st.tuples(st.integers(3, 18), st.integers(3, 18))
_masks = _hw.flatmap(
    lambda hw: st.one_of(hnp.arrays(np.bool_, hw), st.just(np.zeros(hw, bool)), st.just(np.ones(hw, bool)))
)


@SETTINGS
@given(_hw, st.integers(1, 4), st.floats(0.0, 1.0), st.data())
def test_prompt_images_shapes_dtypes_copies_and_binarisation(hw, k, eta, data) -> None:
    h, w = hw
    img = _image(data.draw(st.integers(0, 999)), h, w)
    soft = data.draw(hnp.arrays(np.float32, (k, h, w), elements=st.floats(0.0, 1.0, width=32)))
    soft[0] = 0.0  # always one empty proposal
    if k > 1:
        soft[1] = 1.0  # and one full one
    prompts = data.draw(st.lists(st.sampled_from(PROMPT_ORDER), min_size=1, max_size=3))
    out = prompt_images(img, soft, prompts, eta, blur_kernel=3)
    assert len(out) == k
    for o, s in zip(out, soft, strict=True):
        assert o.shape == img.shape and o.dtype == np.uint8
        assert not np.shares_memory(o, img)  # prompting one proposal can never change another's image
        if float(s.sum()) <= 1.0:
            np.testing.assert_array_equal(o, img)  # (near-)empty proposal: the unprompted image
        else:
            np.testing.assert_array_equal(o, apply_visual_prompts(img, s > eta, prompts, blur_kernel=3))


@SETTINGS
@given(_masks, st.integers(0, 999))
def test_gray_outside_is_gray_and_blur_fixes_a_constant_image(mask, seed) -> None:
    img = _image(seed, *mask.shape)
    for quirk in (True, False):
        out = apply_visual_prompts(img, mask, ["gray"], gray_bgr_quirk=quirk)
        outside = out[~mask]
        assert (outside[:, 0] == outside[:, 1]).all() and (outside[:, 1] == outside[:, 2]).all()
        np.testing.assert_array_equal(out[mask], img[mask])
    flat = np.broadcast_to(img[:1, :1], img.shape).copy()
    np.testing.assert_array_equal(apply_visual_prompts(flat, mask, ["blur"], blur_kernel=5), flat)


@SETTINGS
@given(_masks, st.integers(0, 999))
def test_rectangle_outline_lies_on_its_four_sides(mask, seed) -> None:
    img = _image(seed, *mask.shape, high=200)  # no pure red in the input
    out = apply_visual_prompts(img, mask, ["rectangle"])
    changed = (out != img).any(-1)
    if not mask.any():
        assert not changed.any()
        return
    (cx, cy), (ax, ay) = _centre_and_half_sizes(mask)
    ys, xs = np.nonzero(changed)
    on_side = ((xs == cx - ax) | (xs == cx + ax)) & (cy - ay <= ys) & (ys <= cy + ay)
    on_side |= ((ys == cy - ay) | (ys == cy + ay)) & (cx - ax <= xs) & (xs <= cx + ax)
    assert on_side.all() and (out[changed] == RED).all()
    assert changed.any()  # the centroid of a non-empty mask is in the image, so something is drawn


@SETTINGS
@given(_masks, st.sampled_from([np.uint8, np.float32, np.int64, np.float64]), st.integers(0, 99))
def test_non_bool_masks_are_refused_whatever_their_values(mask, dtype, seed) -> None:
    img = _image(seed, *mask.shape)
    with pytest.raises(ValueError, match=f"mask must be bool.*{np.dtype(dtype).name}"):
        apply_visual_prompts(img, mask.astype(dtype), ["circle"])
