"""SAM refinement (docs/method.md §1.6): matching on hand-made masks, a tiny random SAM, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from carbench.models.checkpoints import CHECKPOINT_DIRS_ENV
from carbench.models.postprocess.sam import (
    MATCHING_PRESETS,
    SamMatchParams,
    SamRefine,
    iom_scores,
    match_mask,
    refine_masks,
)
from carbench.models.postprocess.sam_models import (
    AutoMaskParams,
    SamCheckpointError,
    build_auto_masker,
    build_sam,
)

H = W = 10


def box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


M = box(2, 6, 2, 6)  # 16 px: the CaR mask
S_SUPER = box(2, 7, 2, 6)  # 20 px ⊃ M: I = 16, I/|M| = 1, I/|S| = 0.8
S_FRAG = box(3, 4, 3, 5)  # 2 px inside M: I/|M| = 0.125, I/|S| = 1
S_FAR = box(8, 10, 8, 10)  # disjoint
S_PART = box(4, 10, 0, 10)  # 60 px; I = 2 rows × 4 = 8: I/|M| = 0.5, I/|S| = 8/60


def test_iom_hand_computed():
    sams = np.stack([S_SUPER, S_FRAG, S_FAR, S_PART])
    np.testing.assert_allclose(iom_scores(M, sams, 0.05), [1.0, 1.0, 0.0, 0.5])
    # A fragment covering < min_pred of M scores only I/|M| (it cannot match by being inside M).
    np.testing.assert_allclose(iom_scores(M, sams, 0.2), [1.0, 0.125, 0.0, 0.5])


def test_paper_thresholds_replace_by_matched_union():
    new, info = match_mask(M, np.stack([S_SUPER, S_FRAG, S_FAR]), SamMatchParams())  # 0.7 / 0.7
    assert info["matched"] == [0, 1]
    assert info["iou"] == pytest.approx(16 / 20)
    assert info["replaced"] and np.array_equal(new, S_SUPER)  # union of S_SUPER and S_FRAG = S_SUPER


def test_official_iou_threshold_keeps_the_crf_mask():
    params = SamMatchParams(matching="official_voc")
    assert (params.iom_threshold, params.iou_threshold) == (0.6, 0.9)
    new, info = match_mask(M, np.stack([S_SUPER, S_FRAG]), params)
    assert info["iou"] == pytest.approx(0.8) and not info["replaced"]
    assert np.array_equal(new, M)


def test_no_match_takes_the_best_one_and_iou_decides():
    new, info = match_mask(M, np.stack([S_FAR, S_PART]), SamMatchParams())
    assert info["matched"] == [1]  # IoM 0.5 < 0.7 for both → argmax
    assert info["iou"] == pytest.approx(8 / (16 + 60 - 8))
    assert not info["replaced"] and np.array_equal(new, M)
    new, info = match_mask(M, np.stack([S_FAR, S_PART]), SamMatchParams(replace="always"))  # demo behaviour
    assert info["replaced"] and np.array_equal(new, S_PART)


def test_explicit_thresholds_override_the_preset():
    p = SamMatchParams(matching="official_context", iou_threshold=0.75)
    assert (p.iom_threshold, p.iou_threshold) == (MATCHING_PRESETS["official_context"][0], 0.75)
    _, info = match_mask(M, np.stack([S_SUPER]), p)
    assert info["replaced"]  # 0.8 > 0.75


def test_empty_masks_and_no_sam_masks_are_left_alone():
    masks = np.stack([M, np.zeros((H, W), bool)])
    out, infos = refine_masks(masks, np.zeros((0, H, W), bool), SamMatchParams())
    assert np.array_equal(out, masks) and not any(i["replaced"] for i in infos)
    out, infos = refine_masks(masks, np.stack([S_SUPER]), SamMatchParams())
    assert np.array_equal(out[0], S_SUPER) and not out[1].any() and infos[1]["matched"] == []


@pytest.mark.parametrize("kw", [{"matching": "nope"}, {"replace": "sometimes"}, {"iom_threshold": 1.5}])
def test_bad_params_are_errors(kw):
    with pytest.raises(ValueError):
        SamMatchParams(**kw)


def test_refine_binarises_without_crf_and_calls_the_masker_once():
    calls = []

    def masker(image):
        calls.append(image.shape)
        return np.stack([S_SUPER])

    maps = np.stack([M * 0.9, M * 0.3]).astype(np.float32)  # second map never exceeds 0.5 → empty
    refine = SamRefine(masker, base=None)
    out = refine(np.zeros((H, W, 3), np.uint8), maps)
    assert calls == [(H, W, 3)]
    assert np.array_equal(out[0], S_SUPER) and not out[1].any()
    assert refine.last["num_sam_masks"] == 1 and refine.last["per_mask"][0]["replaced"]


@pytest.fixture(scope="module")
def generator_params() -> AutoMaskParams:
    # Random weights predict low IoU/stability: the thresholds are off so masks come through.
    return AutoMaskParams(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.9)


@pytest.mark.parametrize("preset", ["tiny_random", "hq_tiny_random"])
def test_tiny_random_sam_runs_the_real_mask_generator(preset, generator_params, scene):
    masker = build_auto_masker(preset, None, "cpu", 0, generator_params)
    masks = masker(scene)
    assert masks.dtype == bool and masks.ndim == 3 and masks.shape[1:] == scene.shape[:2]
    assert len(masks) >= 1 and masks.reshape(len(masks), -1).any(1).all()
    areas = masks.reshape(len(masks), -1).sum(1)
    assert (np.diff(areas) <= 0).all()  # largest first
    again = build_auto_masker(preset, None, "cpu", 0, generator_params)(scene)
    assert np.array_equal(masks, again)  # seeded: same SAM, same masks


def test_sam_refine_with_tiny_sam_after_crf(generator_params, scene):
    from carbench.models.factory import build_postprocess

    post = build_postprocess({
        "name": "sam", "preset": "tiny_random", "generator": vars(generator_params),
        "match": {"matching": "paper", "replace": "always"}, "crf": {"iterations": 2},
    })
    maps = np.zeros((2, *scene.shape[:2]), np.float32)
    maps[0, 20:50, 30:70] = 0.9  # the red rectangle
    out = post(scene, maps)
    assert out.shape == maps.shape and out.dtype == bool
    assert not out[1].any()  # a query with an empty CRF mask stays empty
    assert post.last["num_sam_masks"] >= 1 and post.last["per_mask"][0]["replaced"]  # replace=always
    assert out[0].any()


def test_missing_checkpoint_names_file_places_and_source(tmp_path, monkeypatch):
    monkeypatch.setenv(CHECKPOINT_DIRS_ENV, str(tmp_path))
    with pytest.raises(SamCheckpointError) as err:
        build_sam("hq_vit_h")
    msg = str(err.value)
    assert "sam_hq_vit_h.pth" in msg and str(tmp_path / "sam_hq_vit_h.pth") in msg and "SysCV/sam-hq" in msg
    with pytest.raises(SamCheckpointError, match="sam_vit_b_01ec64.pth.*dl.fbaipublicfiles.com"):
        build_sam("sam_vit_b")


def test_hq_checkpoint_given_to_plain_sam_says_which_preset(tmp_path, monkeypatch):
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save({"mask_decoder.hf_token.weight": torch.zeros(1, 256)}, path)
    monkeypatch.setenv(CHECKPOINT_DIRS_ENV, str(tmp_path))  # found by its published name
    with pytest.raises(SamCheckpointError, match="HQ-SAM checkpoint: use preset hq_vit_b"):
        build_sam("sam_vit_b")


def test_unknown_sam_preset_lists_valid_ones():
    with pytest.raises(ValueError, match="hq_vit_h"):
        build_sam("vit_huge")
