"""The official-code switches: each behaviour on a hand-computed case, under both switch settings.

Every test states the expected result worked out by hand from the released code's rule (see
docs/method.md §5.2), and checks that the clean setting gives the paper reader's result instead.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from carbench.models.fidelity import FIDELITY_SWITCHES, resolve_fidelity
from carbench.models.postprocess.crf import CRFParams, crf_semantic, one_hot_channels
from carbench.models.prompts import RED, apply_visual_prompts, prompt_images
from carbench.models.proposals.clip_es import ClipESProposer, box_mask
from carbench.models.recurrent import CaR

# ------------------------------------------------------------------ 1. CLIP-ES box end clipping


def test_box_touching_the_right_and_bottom_edges_loses_its_last_column_and_row():
    cam = np.zeros((4, 6), np.float32)
    cam[2:4, 3:6] = 1.0  # one region reaching the last column (5) and the last row (3)
    official = box_mask(cam, 0.4, box_end_quirk=True)
    clean = box_mask(cam, 0.4, box_end_quirk=False)
    expected_clean = np.zeros((4, 6), bool)
    expected_clean[2:4, 3:6] = True
    expected_official = np.zeros((4, 6), bool)
    expected_official[2:3, 3:5] = True  # end clipped to (width − 1, height − 1) and used as exclusive
    np.testing.assert_array_equal(clean, expected_clean)
    np.testing.assert_array_equal(official, expected_official)


def test_box_away_from_the_edges_is_the_same_under_both_settings():
    cam = np.zeros((6, 6), np.float32)
    cam[1:3, 1:4] = 1.0
    np.testing.assert_array_equal(box_mask(cam, 0.4, True), box_mask(cam, 0.4, False))
    assert box_mask(cam, 0.4, True)[1:3, 1:4].all() and box_mask(cam, 0.4, True).sum() == 6


# ------------------------------------------------------------------ 2. circle / rectangle centre

# A 3×3 square at rows/cols 4..6 plus one pixel at (row 9, col 12): 10 pixels,
# centroid x = (9·5 + 12)/10 = 5.7, y = (9·5 + 9)/10 = 5.4; bbox 9 wide (4..12), 6 high (4..9),
# so the half sizes are (4, 3). Official centre int(5.7), int(5.4) = (5, 5); rounded = (6, 5).
CENTROID_MASK = np.zeros((16, 20), bool)
CENTROID_MASK[4:7, 4:7] = True
CENTROID_MASK[9, 12] = True


def _outline(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    box = np.zeros(CENTROID_MASK.shape, bool)
    box[y0 : y1 + 1, x0 : x1 + 1] = True
    box[y0 + 1 : y1, x0 + 1 : x1] = False
    return box


@pytest.mark.parametrize("trunc, corners", [(True, (1, 2, 9, 8)), (False, (2, 2, 10, 8))])
def test_rectangle_centre_truncated_officially_rounded_when_clean(trunc, corners):
    image = np.full((16, 20, 3), 100, np.uint8)
    out = apply_visual_prompts(image, CENTROID_MASK, ["rectangle"], centroid_trunc_quirk=trunc)
    drawn = (out != image).any(-1)
    np.testing.assert_array_equal(drawn, _outline(*corners))
    assert (out[drawn] == RED).all()


def test_circle_moves_by_one_pixel_between_the_two_centre_rules():
    image = np.full((16, 20, 3), 100, np.uint8)
    a = (apply_visual_prompts(image, CENTROID_MASK, ["circle"], centroid_trunc_quirk=True) != image).any(-1)
    b = (apply_visual_prompts(image, CENTROID_MASK, ["circle"], centroid_trunc_quirk=False) != image).any(-1)
    xs_a, xs_b = np.nonzero(a)[1], np.nonzero(b)[1]
    assert (xs_a.min(), xs_a.max()) == (1, 9)  # centre x 5 ± semi-axis 4
    assert (xs_b.min(), xs_b.max()) == (2, 10)  # centre x 6 ± 4


def test_empty_mask_outline_draws_nothing_where_the_official_code_fails():
    """Deliberate departure: the official centroid of an empty mask is int(nan), which raises."""
    image = np.full((8, 8, 3), 100, np.uint8)
    with pytest.warns(RuntimeWarning):
        centre = np.mean(np.zeros(0))  # the official centroid of an empty mask: nan
    with pytest.raises(ValueError):
        int(centre)
    empty = np.zeros((8, 8), bool)
    for prompt in ("circle", "rectangle", "contour"):
        np.testing.assert_array_equal(apply_visual_prompts(image, empty, [prompt]), image)
    soft = np.full((1, 8, 8), 0.1, np.float32)  # sums to 6.4 > 1 but nothing is above η = 0.4
    np.testing.assert_array_equal(prompt_images(image, soft, ["circle"], 0.4)[0], image)


# ------------------------------------------------------------------ 3. uint8 PIL resize of the CAM input


def _unnormalise(bb, x: torch.Tensor) -> np.ndarray:
    return ((x * bb.std + bb.mean) * 255).squeeze(0).permute(1, 2, 0).numpy()


def test_cam_input_official_is_the_pil_bicubic_uint8_image(tiny_backbone, scene):
    official = ClipESProposer(tiny_backbone, pil_resize=True).cam_input(scene)
    clean = ClipESProposer(tiny_backbone, pil_resize=False).cam_input(scene)
    p = tiny_backbone.patch_size
    assert official.shape == clean.shape == (1, 3, -(-75 // p) * p, -(-100 // p) * p)
    pixels = _unnormalise(tiny_backbone, official)
    np.testing.assert_allclose(pixels, np.round(pixels), atol=1e-3)  # quantised to whole 8-bit levels
    size = (official.shape[-1], official.shape[-2])
    pil = np.asarray(Image.fromarray(scene).resize(size, Image.BICUBIC)).astype(np.float32)
    np.testing.assert_allclose(pixels, pil, atol=1e-3)
    assert np.abs(_unnormalise(tiny_backbone, clean) - pil).max() > 0.5  # the float path is not quantised


def test_cam_input_is_the_same_when_no_resize_is_needed(tiny_backbone, rng):
    p = tiny_backbone.patch_size
    image = (rng.random((2 * p, 3 * p, 3)) * 255).astype(np.uint8)
    a = ClipESProposer(tiny_backbone, pil_resize=True).cam_input(image)
    b = ClipESProposer(tiny_backbone, pil_resize=False).cam_input(image)
    assert torch.equal(a, b)


# ------------------------------------------------------------------ 4. fp16 positional embeddings


@pytest.mark.parametrize("grid", [None, (3, 5)])
def test_pos_embed_fp16_rounds_every_entry_even_at_the_native_grid(tiny_backbone, grid):
    bb = tiny_backbone
    gh, gw = grid or bb.visual.grid_size
    try:
        bb.pos_embed_fp16 = False
        full = bb._pos_embed(gh, gw)
        bb.pos_embed_fp16 = True
        half = bb._pos_embed(gh, gw)
    finally:
        bb.pos_embed_fp16 = False
    assert half.dtype == full.dtype == torch.float32
    assert torch.equal(half, full.half().float())  # CLS row included
    assert not torch.equal(half, full)
    assert (half - full).abs().max() <= full.abs().max() * 2**-11  # precision only


# ------------------------------------------------------------------ 5a. quirk D: CRF one-hot channel count


def test_one_hot_channels_counts_up_to_the_last_query_that_wins_a_pixel():
    m = np.zeros((3, 2, 2), bool)
    m[0, 0, 0] = m[2, 1, 1] = True
    assert one_hot_channels(m) == 3  # an empty middle query keeps its (empty) channel
    m[2] = False
    assert one_hot_channels(m) == 1  # the trailing empty queries are dropped
    assert one_hot_channels(np.zeros((2, 2, 2), bool)) == 0


def test_crf_with_a_query_that_wins_no_pixel(rng):
    image = (rng.random((20, 24, 3)) * 255).astype(np.uint8)
    maps = np.zeros((3, 20, 24), np.float32)
    maps[0, :, :12] = 0.9
    maps[1, :, 12:] = 0.9
    maps[2] = 0.05  # weaker than both everywhere: wins nothing
    masks = crf_semantic(image, maps, CRFParams())
    assert masks.shape == (3, 20, 24) and masks[0].any() and masks[1].any() and not masks[2].any()
    assert one_hot_channels(masks) == 2


# ------------------------------------------------------------------ fakes for the loop-level behaviours

H, W = 8, 12
IMAGE = np.zeros((H, W, 3), np.uint8)


class BandProposer:
    """Query k claims columns 4k..4k+3; `empty_steps` lists the (1-based) calls that return all zeros."""

    def __init__(self, names, empty_steps=()):
        self.names, self.empty_steps, self.calls = names, set(empty_steps), 0

    def propose(self, image, texts, background, step):
        self.calls += 1
        maps = np.zeros((len(texts), H, W), np.float32)
        if self.calls not in self.empty_steps:
            for i, t in enumerate(texts):
                k = self.names.index(t)
                maps[i, :, 4 * k : 4 * k + 4] = 0.9
        return maps


class TableClassifier:
    def __init__(self, table):
        self.table = table

    def score(self, prompted, queries, templates=None):
        return np.array([self.table[q] for q in queries], np.float32)


NAMES = ["cat", "dog", "car"]
TABLE = {"cat": 0.9, "dog": 0.1, "car": 0.8}  # dog is dropped at step 1; cat and car are stable


def make(official: bool, empty_steps=(), post=None) -> CaR:
    return CaR(BandProposer(NAMES, empty_steps), TableClassifier(TABLE), mask_threshold=0.4,
               confidence_threshold=0.5, postprocess=post, reuse_unchanged_step=False,
               fallback_unfiltered_quirk=official, crf_one_hot_quirk=official)


def band(k: int) -> np.ndarray:
    m = np.zeros((H, W), np.float32)
    m[:, 4 * k : 4 * k + 4] = 0.9
    return m


# ------------------------------------------------------------------ 5b. all-empty fallback


def test_official_fallback_hands_on_the_previous_stages_unfiltered_maps_in_order():
    pred = make(official=True, empty_steps=[2]).segment(IMAGE, NAMES)
    assert pred.kept == [0, 2] and len(pred.trace) == 2
    # step 1 maps = [cat, dog, car] bands, all handed on; the survivors cat, car take the first two
    np.testing.assert_array_equal(pred.masks[0], band(0))
    np.testing.assert_array_equal(pred.masks[2], band(1))  # car gets dog's map, as in the released code
    assert not pred.masks[1].any()


def test_clean_fallback_keeps_each_survivors_own_previous_map():
    pred = make(official=False, empty_steps=[2]).segment(IMAGE, NAMES)
    assert pred.kept == [0, 2]
    np.testing.assert_array_equal(pred.masks[0], band(0))
    np.testing.assert_array_equal(pred.masks[2], band(2))


@pytest.mark.parametrize("official", [True, False])
def test_all_empty_from_stage_one_falls_back_to_nothing(official):
    pred = make(official, empty_steps=[1, 2, 3]).segment(IMAGE, NAMES)
    assert pred.kept == [0, 2]
    assert not pred.masks.any() and (pred.labels == pred.labels.flat[0]).all()  # nothing drawn


# ------------------------------------------------------------------ 5c. quirk D at the model level


def drop_last_query(image, maps):
    """A post-processor in which the last query wins no pixel (the others keep their bands)."""
    out = maps > 0.5
    out[-1] = False
    return out


@pytest.mark.parametrize("official", [True, False])
def test_trailing_query_that_wins_no_pixel_loses_its_score_only_officially(official):
    pred = make(official, post=drop_last_query).segment(IMAGE, NAMES)
    assert pred.kept == [0, 2] and not pred.masks[2].any()
    assert pred.scores[0] == pytest.approx(0.9)
    assert pred.scores[2] == (0.0 if official else pytest.approx(0.8))


# ------------------------------------------------------------------ model.fidelity


def test_fidelity_sets_defaults_and_an_explicit_switch_wins():
    assert resolve_fidelity({}) == dict.fromkeys(FIDELITY_SWITCHES, True)
    assert resolve_fidelity({"fidelity": "clean"}) == dict.fromkeys(FIDELITY_SWITCHES, False)
    mixed = resolve_fidelity({"fidelity": "clean", "box_end_quirk": True, "crf_one_hot_quirk": None})
    assert mixed["box_end_quirk"] is True and mixed["crf_one_hot_quirk"] is False
    assert resolve_fidelity({"fidelity": "official", "pos_embed_fp16_quirk": False})["pos_embed_fp16_quirk"] is False


@pytest.mark.parametrize(
    "cfg, match",
    [({"fidelity": "paper"}, "model.fidelity 'paper'.*official, clean"),
     ({"box_end_quirk": "yes"}, "model.box_end_quirk must be true, false or null")],
)
def test_bad_fidelity_values_name_the_key(cfg, match):
    with pytest.raises(ValueError, match=match):
        resolve_fidelity(cfg)


@pytest.mark.parametrize("fidelity", ["official", "clean"])
def test_factory_passes_every_switch_through(fidelity):
    from carbench.models.factory import build_segmenter

    cfg = {"proposal": "tiny_random", "classifier": "tiny_random", "fidelity": fidelity}
    car = build_segmenter(cfg, {"name": "crf"})
    on = fidelity == "official"
    assert car.proposer.box_end_quirk is on and car.proposer.pil_resize is on
    assert car.prompt_kwargs["centroid_trunc_quirk"] is on
    assert car.proposer.backbone.pos_embed_fp16 is on and car.classifier.backbone.pos_embed_fp16 is on
    assert car.fallback_unfiltered_quirk is on and car.crf_one_hot_quirk is on
