"""Dense-CRF post-processing (docs/method.md §1.5) and the final label assembly (§1.7)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from carbench.models.labels import assemble_semantic_labels, merge_referring
from carbench.models.postprocess import CRFParams, DenseCRF, crf_binary, crf_semantic
from carbench.models.postprocess.crf import crf_image
from carbench.types import BACKGROUND

H, W = 60, 80


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture()
def image(rng) -> np.ndarray:
    """Mildly noisy gray background with a green rectangle of a clearly distinct colour."""
    img = (rng.random((H, W, 3)) * 20 + 100).astype(np.uint8)
    img[15:45, 20:60] = (30, 200, 40)
    return img


@pytest.fixture()
def rect() -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[15:45, 20:60] = True
    return m


# ---------------------------------------------------------------------------- crf_semantic


@pytest.mark.parametrize("caffe_wrap", [True, False])
def test_crf_keeps_a_confident_map(image, rect, caffe_wrap):
    maps = np.where(rect, 0.95, 0.05)[None].astype(np.float32)
    out = crf_semantic(image, maps, CRFParams(caffe_wrap=caffe_wrap))
    assert out.shape == (1, H, W) and out.dtype == np.bool_
    assert iou(out[0], rect) > 0.9


@pytest.mark.parametrize("caffe_wrap", [True, False])
def test_crf_snaps_a_shifted_soft_map_to_the_object(image, rect, caffe_wrap):
    """A 3-px-misaligned, blurry proposal (as upsampled CAMs are) is pulled onto the colour edge."""
    shifted = np.zeros((H, W), np.float32)
    shifted[18:48, 23:63] = 1
    soft = cv2.GaussianBlur(shifted, (0, 0), 4) * 0.9
    assert iou(soft > 0.5, rect) < 0.8
    out = crf_semantic(image, soft[None], CRFParams(caffe_wrap=caffe_wrap))
    assert iou(out[0], rect) > 0.9


def test_masks_are_exclusive_and_exactly_k_even_if_a_class_wins_nothing(image, rect):
    """Quirk D fix: the last query gets no pixel, yet K masks come back (the last one empty)."""
    left = np.zeros((H, W), np.float32)
    left[:, :40] = 0.9
    maps = np.stack([np.where(rect, 0.9, 0.05), left, np.full((H, W), 0.01)]).astype(np.float32)
    out = crf_semantic(image, maps, CRFParams())
    assert out.shape == (3, H, W) and out.dtype == np.bool_
    assert out.sum(0).max() <= 1  # mutually exclusive
    assert out[0].any() and out[1].any()
    assert not out[2].any()
    # Background (channel 0) keeps pixels claimed by no query: right of the image, off the rectangle.
    assert not out.any(0)[~rect & (np.arange(W) >= 60)[None]].any()


def test_single_query_all_zero_map_gives_empty_mask(image):
    out = crf_semantic(image, np.zeros((1, H, W), np.float32), CRFParams())
    assert out.shape == (1, H, W) and not out.any()


def test_bg_factor_shifts_the_balance(image):
    """bg = (1 − max)^bf: a larger exponent shrinks the background probability, so more foreground."""
    maps = np.full((1, H, W), 0.4, np.float32)  # bg 0.6 beats 0.4 with bf = 1 …
    assert not crf_semantic(image, maps, CRFParams(bg_factor=1.0)).any()
    assert crf_semantic(image, maps, CRFParams(bg_factor=3.0)).all()  # … 0.216 loses with bf = 3


def test_dense_crf_object_matches_the_functions(image, rect):
    maps = np.where(rect, 0.8, 0.1)[None].astype(np.float32)
    params = CRFParams(iterations=5)
    post = DenseCRF(params)
    np.testing.assert_array_equal(post(image, maps), crf_semantic(image, maps, params))
    np.testing.assert_array_equal(post.binary(image, maps[0]), crf_binary(image, maps[0], params))
    assert DenseCRF().params == CRFParams()


def test_postprocess_config_keys_are_crf_params():
    """conf/postprocess/crf.yaml goes through the factory into CRFParams with the official defaults."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from carbench.models.factory import build_postprocess

    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "postprocess" / "crf.yaml")
    built = build_postprocess(cfg)
    assert isinstance(built, DenseCRF) and built.params == CRFParams()
    built = build_postprocess({"name": "crf", "caffe_wrap": False, "iterations": 3})
    assert built.params == CRFParams(iterations=3, caffe_wrap=False)


def test_crf_input_validation(image, rect):
    good = rect[None].astype(np.float32)
    with pytest.raises(ValueError, match="K×H×W"):
        crf_semantic(image, good[0], CRFParams())
    with pytest.raises(ValueError, match="K ≥ 1"):
        crf_semantic(image, good[:0], CRFParams())
    with pytest.raises(ValueError, match="match the image"):
        crf_semantic(image, good[:, :-1], CRFParams())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        crf_semantic(image, good * 2, CRFParams())
    with pytest.raises(ValueError, match="uint8"):
        crf_semantic(image.astype(np.float32), good, CRFParams())
    with pytest.raises(ValueError, match="iterations"):
        CRFParams(iterations=0)


# ---------------------------------------------------------------------------- crf_binary, quirk C


@pytest.mark.parametrize("caffe_wrap", [True, False])
def test_crf_binary_on_a_confident_map(image, rect, caffe_wrap):
    prob = np.where(rect, 0.9, 0.1).astype(np.float32)
    out = crf_binary(image, prob, CRFParams(caffe_wrap=caffe_wrap))
    assert out.shape == (H, W) and out.dtype == np.bool_
    assert iou(out, rect) > 0.9
    with pytest.raises(ValueError, match="H×W"):
        crf_binary(image, prob[None], CRFParams())


def test_caffe_wrap_image_is_bgr_minus_mean_wrapped_to_uint8():
    img = np.array([[[0, 0, 0], [255, 255, 255], [200, 120, 110]]], np.uint8)  # RGB
    wrapped = crf_image(img, caffe_wrap=True)
    assert wrapped.dtype == np.uint8 and wrapped.flags.c_contiguous
    # BGR − (104.008, 116.669, 122.675), truncated toward zero, modulo 256.
    expected = [[[152, 140, 134], [150, 138, 132], [5, 3, 77]]]
    np.testing.assert_array_equal(wrapped, expected)
    raw = crf_image(img, caffe_wrap=False)
    np.testing.assert_array_equal(raw, img)


def test_caffe_wrap_on_and_off_both_give_k_exclusive_bool_masks(rng):
    """A dark image (where the wrap turns dark pixels bright): both modes run and give K bool masks."""
    img = (rng.random((H, W, 3)) * 40).astype(np.uint8)
    img[:, 40:] += 100
    maps = rng.random((2, H, W)).astype(np.float32)
    a = crf_semantic(img, maps, CRFParams(caffe_wrap=True))
    b = crf_semantic(img, maps, CRFParams(caffe_wrap=False))
    for out in (a, b):
        assert out.shape == (2, H, W) and out.dtype == np.bool_ and out.sum(0).max() <= 1


# ---------------------------------------------------------------------------- labels


def test_semantic_labels_higher_score_paints_last():
    masks = np.zeros((3, 4, 4), bool)
    masks[0, :, :3] = True  # overlaps query 1 on columns 1-2
    masks[1, :, 1:] = True
    masks[2, 0, 0] = True  # dropped query (score 0) paints nothing
    labels = assemble_semantic_labels(masks, np.array([0.9, 0.5, 0.0]))
    assert labels.dtype == np.int64 and labels.shape == (4, 4)
    np.testing.assert_array_equal(labels[0], [0, 0, 0, 1])
    labels = assemble_semantic_labels(masks, np.array([0.3, 0.5, 0.0]))
    np.testing.assert_array_equal(labels[0], [0, 1, 1, 1])


def test_semantic_labels_background_threshold_and_ties():
    masks = np.zeros((2, 2, 3), np.float32)
    masks[0, 0] = [0.5, 0.51, 1.0]  # > 0.5 strictly
    masks[1, 0, 2] = 1.0
    labels = assemble_semantic_labels(masks, np.array([0.4, 0.4]))
    np.testing.assert_array_equal(labels, [[BACKGROUND, 0, 1], [BACKGROUND] * 3])  # tie: later index wins
    assert (assemble_semantic_labels(masks, np.zeros(2)) == BACKGROUND).all()
    with pytest.raises(ValueError, match="scores"):
        assemble_semantic_labels(masks, np.ones(3))


def test_merge_referring_is_score_weighted_mean():
    masks = np.zeros((2, 10, 10), np.float32)
    masks[0, :, :6] = 1
    masks[1, :, 4:] = 1
    out = merge_referring(masks, np.array([0.75, 0.25]))
    expected = np.zeros((10, 10), bool)
    expected[:, :6] = True  # only where mask 0 (weight 0.75 ≥ 0.5) is on
    np.testing.assert_array_equal(out, expected)
    # equal weights → exactly 0.5 counts as foreground (≥): the union here
    np.testing.assert_array_equal(merge_referring(masks, np.array([1.0, 1.0])), masks.any(0))


def test_merge_referring_small_result_falls_back_to_union():
    masks = np.zeros((2, 20, 20), np.float32)
    masks[0, :4, :5] = 1  # 20 px = 5 % of 400 → "≤ 5 %" triggers the fallback
    masks[1, 10:, 10:] = 0.3  # low-score, soft
    out = merge_referring(masks, np.array([0.9, 0.1]))
    np.testing.assert_array_equal(out, masks.any(0))
    masks[0, :4, :6] = 1  # 24 px > 5 % → weighted mean kept
    expected = np.zeros((20, 20), bool)
    expected[:4, :6] = True
    np.testing.assert_array_equal(merge_referring(masks, np.array([0.9, 0.1])), expected)
    # all scores zero → union as well
    np.testing.assert_array_equal(merge_referring(masks, np.zeros(2)), masks.any(0))
