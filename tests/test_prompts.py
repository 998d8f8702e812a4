"""Visual prompts (docs/method.md §1.4): each prompt touches only the pixels it should."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from carbench.models.prompts import PROMPT_ORDER, apply_visual_prompts, prompt_images, validate_prompts

RED = np.array([255, 0, 0], np.uint8)


@pytest.fixture()
def image(rng) -> np.ndarray:
    """Colourful noise with no pure-red pixel, so any (255, 0, 0) pixel was drawn by a prompt."""
    img = (rng.random((48, 64, 3)) * 200 + 20).astype(np.uint8)
    img[..., 0] = np.minimum(img[..., 0], 200)
    return img


@pytest.fixture()
def blob() -> np.ndarray:
    """An off-centre, non-rectangular mask (rectangle plus a disc) away from the borders."""
    m = np.zeros((48, 64), np.uint8)
    m[12:30, 18:40] = 1
    cv2.circle(m, (40, 30), 7, 1, -1)
    return m.astype(bool)


def changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a != b).any(-1)


# ---------------------------------------------------------------------------- validate_prompts


def test_validate_prompts_sorts_into_official_order_and_dedups():
    assert validate_prompts(["circle", "blur", "circle"]) == ("blur", "circle")
    assert validate_prompts(["contour", "gray", "rectangle", "black"]) == (
        "gray",
        "black",
        "rectangle",
        "contour",
    )
    assert validate_prompts(list(reversed(PROMPT_ORDER))) == PROMPT_ORDER
    assert validate_prompts("circle") == ("circle",)


def test_unknown_prompt_error_lists_valid_names():
    with pytest.raises(ValueError) as err:
        validate_prompts(["circle", "crop"])
    msg = str(err.value)
    assert "crop" in msg
    for name in PROMPT_ORDER:
        assert name in msg


def test_empty_prompt_list_rejected():
    with pytest.raises(ValueError, match="at least one"):
        validate_prompts([])


# ---------------------------------------------------------------------------- region prompts


@pytest.mark.parametrize("prompt", ["blur", "gray", "black"])
def test_region_prompts_keep_inside_and_change_outside(image, blob, prompt):
    out = apply_visual_prompts(image, blob, [prompt])
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[blob], image[blob])
    diff = changed(out, image)
    assert diff[~blob].mean() > 0.5  # most of the noisy background is altered


def test_blur_outside_equals_opencv_blur(image, blob):
    out = apply_visual_prompts(image, blob, ["blur"], blur_kernel=7)
    np.testing.assert_array_equal(out[~blob], cv2.GaussianBlur(image, (7, 7), 0)[~blob])


def test_gray_outside_is_gray_and_black_outside_is_zero(image, blob):
    g = apply_visual_prompts(image, blob, ["gray"])
    assert (g[~blob] == g[~blob][:, :1]).all()  # three equal channels
    b = apply_visual_prompts(image, blob, ["black"])
    assert (b[~blob] == 0).all()


def test_gray_quirk_flag_swaps_channel_weights(image, blob):
    quirk = apply_visual_prompts(image, blob, ["gray"], gray_bgr_quirk=True)
    right = apply_visual_prompts(image, blob, ["gray"], gray_bgr_quirk=False)
    assert changed(quirk, right).any()
    np.testing.assert_array_equal(quirk[blob], right[blob])
    np.testing.assert_array_equal(quirk[~blob][:, 0], cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[~blob])
    np.testing.assert_array_equal(right[~blob][:, 0], cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[~blob])
    # Under the quirk the R channel gets the blue weight 0.114 instead of 0.299.
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    none = np.zeros((4, 4), bool)
    assert apply_visual_prompts(red, none, ["gray"])[0, 0, 0] == 29  # 0.114 · 255
    assert apply_visual_prompts(red, none, ["gray"], gray_bgr_quirk=False)[0, 0, 0] == 76  # 0.299 · 255


# ---------------------------------------------------------------------------- outline prompts


def _only_red_added(image: np.ndarray, out: np.ndarray) -> np.ndarray:
    diff = changed(out, image)
    assert diff.any(), "the outline drew nothing"
    assert (out[diff] == RED).all(), "every changed pixel must be pure red"
    return diff


def _geometry(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Centre as the default (official) rule computes it: the truncated centroid."""
    ys, xs = np.nonzero(mask)
    cx, cy = int(xs.mean()), int(ys.mean())
    return cx, cy, (xs.max() - xs.min() + 1) // 2, (ys.max() - ys.min() + 1) // 2


def test_circle_is_red_ellipse_around_centroid(image, blob):
    out = apply_visual_prompts(image, blob, ["circle"])
    diff = _only_red_added(image, out)
    cx, cy, ax, ay = _geometry(blob)
    ys, xs = np.nonzero(diff)
    assert np.abs(xs - cx).max() == ax and np.abs(ys - cy).max() == ay  # touches its semi-axes
    # Every drawn pixel lies near the ellipse (x/ax)² + (y/ay)² = 1.
    r = np.sqrt(((xs - cx) / ax) ** 2 + ((ys - cy) / ay) ** 2)
    assert np.all(np.abs(r - 1) < 0.15)


def test_rectangle_is_red_box_around_centroid(image, blob):
    out = apply_visual_prompts(image, blob, ["rectangle"])
    diff = _only_red_added(image, out)
    cx, cy, ax, ay = _geometry(blob)
    expected = np.zeros_like(blob)
    expected[cy - ay : cy + ay + 1, cx - ax : cx + ax + 1] = True
    expected[cy - ay + 1 : cy + ay, cx - ax + 1 : cx + ax] = False  # 1-px outline only
    np.testing.assert_array_equal(diff, expected)


def test_contour_traces_the_outer_boundary_and_fills_holes(image, blob):
    holed = blob.copy()
    holed[18:24, 24:30] = False  # a hole well inside
    out = apply_visual_prompts(image, holed, ["contour"])
    diff = _only_red_added(image, out)
    assert not diff[~blob].any()  # drawn on the mask's own border pixels only
    inner = cv2.erode(blob.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert not diff[inner].any()  # hence nothing around the (filled) hole either
    np.testing.assert_array_equal(out, apply_visual_prompts(image, blob, ["contour"]))


def test_thickness_and_colour_are_honoured(image, blob):
    thin = changed(apply_visual_prompts(image, blob, ["rectangle"]), image).sum()
    thick_img = apply_visual_prompts(image, blob, ["rectangle"], thickness=3, color=(0, 0, 255))
    diff = changed(thick_img, image)
    assert diff.sum() > 2 * thin
    assert (thick_img[diff] == (0, 0, 255)).all()


# ---------------------------------------------------------------------------- combination rules


def test_application_order_ignores_input_list_order(image, blob):
    a = apply_visual_prompts(image, blob, ["circle", "blur"])
    b = apply_visual_prompts(image, blob, ["blur", "circle"])
    np.testing.assert_array_equal(a, b)
    # and the outline is drawn after the blur, so it stays pure red
    diff = changed(a, apply_visual_prompts(image, blob, ["blur"]))
    assert diff.any() and (a[diff] == RED).all()


def test_input_is_never_mutated(image, blob):
    img0, m0 = image.copy(), blob.copy()
    out = apply_visual_prompts(image, blob, list(PROMPT_ORDER))
    np.testing.assert_array_equal(image, img0)
    np.testing.assert_array_equal(blob, m0)
    assert out is not image and not np.shares_memory(out, image)
    full = np.ones_like(blob)
    same = apply_visual_prompts(image, full, ["black"])
    assert not np.shares_memory(same, image)


def test_empty_mask_outlines_draw_nothing_regions_cover_everything(image):
    empty = np.zeros(image.shape[:2], bool)
    for p in ("circle", "rectangle", "contour"):
        np.testing.assert_array_equal(apply_visual_prompts(image, empty, [p]), image)
    assert (apply_visual_prompts(image, empty, ["black"]) == 0).all()
    np.testing.assert_array_equal(
        apply_visual_prompts(image, empty, ["blur"]), cv2.GaussianBlur(image, (15, 15), 0)
    )


def test_input_validation_reports_shapes(image, blob):
    with pytest.raises(ValueError, match=r"\(48, 64\).*\(10, 10\)"):
        apply_visual_prompts(image, np.zeros((10, 10), bool), ["black"])
    with pytest.raises(ValueError, match="H×W×3 uint8"):
        apply_visual_prompts(image[..., 0], blob, ["black"])
    with pytest.raises(ValueError, match="H×W×3 uint8"):
        apply_visual_prompts(image.astype(np.float32), blob, ["black"])
    with pytest.raises(ValueError, match="bool"):
        apply_visual_prompts(image, blob.astype(np.float32), ["black"])
    with pytest.raises(ValueError, match="odd"):
        apply_visual_prompts(image, blob, ["blur"], blur_kernel=4)


# ---------------------------------------------------------------------------- prompt_images


def test_prompt_images_binarises_strictly_above_eta(image):
    soft = np.zeros((1, *image.shape[:2]), np.float32)
    soft[0, 10:20, 10:20] = 0.5  # exactly η: must count as outside
    soft[0, 30:40, 30:40] = 0.51
    (out,) = prompt_images(image, soft, ["black"], eta=0.5)
    assert (out[10:20, 10:20] == 0).all()
    np.testing.assert_array_equal(out[30:40, 30:40], image[30:40, 30:40])
    (out_low,) = prompt_images(image, soft, ["black"], eta=0.4)
    np.testing.assert_array_equal(out_low[10:20, 10:20], image[10:20, 10:20])


def test_prompt_images_small_soft_sum_gives_unprompted_copy(image):
    soft = np.zeros((3, *image.shape[:2]), np.float32)
    soft[0, 5, 5] = 1.0  # sums to exactly 1, although the pixel is above η
    soft[1, 5, 5:7] = 0.6  # sums to 1.2 → prompted
    soft[2] = 0.001  # 3.07 in total but nothing above η → prompted with an empty mask
    outs = prompt_images(image, soft, ["black"], eta=0.5)
    assert len(outs) == 3
    np.testing.assert_array_equal(outs[0], image)
    assert not np.shares_memory(outs[0], image)
    np.testing.assert_array_equal(outs[1][5, 5:7], image[5, 5:7])
    assert (outs[1].sum(-1) == 0).sum() == image.shape[0] * image.shape[1] - 2
    assert (outs[2] == 0).all()


def test_prompt_images_forwards_kwargs_and_checks_args(image, blob):
    soft = blob[None].astype(np.float32)
    (a,) = prompt_images(image, soft, ["gray"], 0.5, gray_bgr_quirk=False)
    np.testing.assert_array_equal(a, apply_visual_prompts(image, blob, ["gray"], gray_bgr_quirk=False))
    for eta in (-0.1, 1.5):
        with pytest.raises(ValueError, match="eta"):
            prompt_images(image, soft, ["gray"], eta)
    with pytest.raises(ValueError, match="K×H×W"):
        prompt_images(image, soft[0], ["gray"], 0.5)
    with pytest.raises(ValueError, match="unknown"):
        prompt_images(image, soft, ["glow"], 0.5)
    assert prompt_images(image, soft[:0], ["gray"], 0.5) == []


# ---------------------------------------------------------------------------- properties

_masks = st.tuples(st.integers(4, 20), st.integers(4, 20)).flatmap(
    lambda hw: st.one_of(
        hnp.arrays(np.bool_, hw),
        st.just(np.zeros(hw, bool)),
        st.just(np.ones(hw, bool)),
    )
)
_subsets = st.lists(st.sampled_from(PROMPT_ORDER), min_size=1, max_size=6)
_settings = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_settings
@given(mask=_masks, prompts=_subsets, seed=st.integers(0, 2**16), quirk=st.booleans())
def test_property_shape_dtype_no_mutation_and_order(mask, prompts, seed, quirk):
    img = np.random.default_rng(seed).integers(0, 256, (*mask.shape, 3), dtype=np.uint8)
    img0 = img.copy()
    out = apply_visual_prompts(img, mask, prompts, gray_bgr_quirk=quirk, blur_kernel=3)
    assert out.shape == img.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(img, img0)
    np.testing.assert_array_equal(
        out, apply_visual_prompts(img, mask, prompts[::-1], gray_bgr_quirk=quirk, blur_kernel=3)
    )
    if not mask.any() and set(prompts) <= {"circle", "rectangle", "contour"}:
        np.testing.assert_array_equal(out, img)


@_settings
@given(
    mask=_masks,
    prompts=st.lists(st.sampled_from(["blur", "gray", "black"]), min_size=1),
    seed=st.integers(0, 99),
)
def test_property_region_prompts_never_touch_the_inside(mask, prompts, seed):
    img = np.random.default_rng(seed).integers(0, 256, (*mask.shape, 3), dtype=np.uint8)
    out = apply_visual_prompts(img, mask, prompts, blur_kernel=5)
    np.testing.assert_array_equal(out[mask], img[mask])
    if mask.all():
        np.testing.assert_array_equal(out, img)  # e.g. black on a full mask is the identity
    if "black" in prompts:
        assert (out[~mask] == 0).all()


@_settings
@given(mask=_masks, prompt=st.sampled_from(["circle", "rectangle", "contour"]), seed=st.integers(0, 99))
def test_property_outlines_only_add_red(mask, prompt, seed):
    img = np.random.default_rng(seed).integers(0, 200, (*mask.shape, 3), dtype=np.uint8)  # no pure red
    out = apply_visual_prompts(img, mask, [prompt])
    diff = changed(out, img)
    assert (out[diff] == RED).all()
    if prompt == "contour":
        assert not diff[~mask].any()
        assert diff.any() == mask.any()
