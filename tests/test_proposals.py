"""CLIP-ES / Grad-CAM proposals: the batched gradient equals per-query hooks, the refinement pieces behave."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from carbench.models.proposals.clip_es import ClipESProposer, affinity, box_mask, minmax


def reference_gradcam(bb, x, texts, bg):
    """Grad-CAM the way pytorch-grad-cam does it: hooks on the last block's ln_1, one backward per query.

    x: the normalised CAM input [1, 3, H', W'] (the proposer's `cam_input`).
    """
    tokens, grid = bb.embed(x)
    store = {}

    def hook(_m, _i, out):
        out.retain_grad()
        store["act"] = out

    h = bb.blocks[-1].ln_1.register_forward_hook(hook)
    text = torch.cat([bb.encode_strings(texts), bb.encode_strings([f"a clean origami {b}." for b in bg])])
    cams = []
    try:
        for i in range(len(texts)):
            with torch.enable_grad():
                t = tokens.detach()
                t, _ = bb.run_blocks(t, 0, len(bb.blocks) - 1)
                t = t.detach().requires_grad_(True)
                out = bb.blocks[-1](t)
                img = F.normalize(bb.patch_mean_embedding(out), dim=-1)
                prob = (bb.logit_scale * img @ text.T).softmax(-1)[0, i]
                prob.backward()
            act, grad = store["act"][0, 1:].detach(), store["act"].grad[0, 1:]
            cam = F.relu((grad.mean(0) * act).sum(-1)).view(grid)
            cams.append(cam)
    finally:
        h.remove()
    return minmax(torch.stack(cams))


def test_batched_gradcam_equals_per_query_hook_reference(tiny_backbone, scene):
    texts, bg = ["cat", "red box", "dog"], ["sky", "ground"]
    prop = ClipESProposer(tiny_backbone, refine=False)
    ours = prop.propose_texts(scene, texts, bg)
    ref = reference_gradcam(tiny_backbone, prop.cam_input(scene), texts, bg).numpy()
    h, w = scene.shape[:2]
    import cv2

    ref_up = np.stack([cv2.resize(m.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) for m in ref])
    assert ours.shape == (3, h, w) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref_up.clip(0, 1), atol=1e-4)


def test_query_chunking_does_not_change_maps(tiny_backbone, scene):
    a = ClipESProposer(tiny_backbone, query_chunk=32).propose_texts(scene, ["a", "b", "c"], ["sky"])
    b = ClipESProposer(tiny_backbone, query_chunk=1).propose_texts(scene, ["a", "b", "c"], ["sky"])
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_clip_es_maps_in_unit_range_and_differ_from_plain_gradcam(tiny_backbone, scene):
    es = ClipESProposer(tiny_backbone, refine=True).propose_texts(scene, ["red box", "tree"], ["sky"])
    gc = ClipESProposer(tiny_backbone, refine=False).propose_texts(scene, ["red box", "tree"], ["sky"])
    assert es.min() >= 0 and es.max() <= 1 and es.max() > 0.99
    assert np.abs(es - gc).max() > 1e-3


def test_box_mask_covers_bounding_boxes_of_confident_regions():
    cam = np.zeros((10, 12), np.float32)
    cam[2:4, 1:3] = 1.0  # region A
    cam[6:9, 8:11] = 0.8  # region B
    cam[5, 5] = 0.2  # below λ·max
    m = box_mask(cam, 0.4)
    expect = np.zeros_like(m)
    expect[2:4, 1:3] = True
    expect[6:9, 8:11] = True
    np.testing.assert_array_equal(m, expect)
    # nothing above λ·max → λ is lowered until something survives
    flat = np.full((4, 4), 0.5, np.float32)
    assert box_mask(flat, 1.0, box_end_quirk=False).all()
    assert box_mask(flat, 1.0).sum() == 9  # official: the grid-wide box loses its last row and column
    assert not box_mask(np.zeros((4, 4), np.float32), 0.4).any()


def test_affinity_is_symmetric_nonnegative_square_of_sinkhorn():
    g = torch.Generator().manual_seed(0)
    maps = [torch.softmax(torch.randn(1, 10, 10, generator=g), -1) for _ in range(3)]
    a = affinity(maps)
    assert a.shape == (9, 9)
    torch.testing.assert_close(a, a.T)
    assert (a >= 0).all()
    # rebuild: symmetrised doubly-normalised matrix, squared
    w = torch.stack([m[0] for m in maps]).mean(0)[1:, 1:]
    for _ in range(3):
        w = w / w.sum(0, keepdim=True)
        w = w / w.sum(1, keepdim=True)
    s = (w + w.T) / 2
    torch.testing.assert_close(a, s @ s)


def test_proposer_rejects_bad_lambda_and_empty_queries(tiny_backbone, scene):
    with pytest.raises(ValueError, match="clipes_threshold"):
        ClipESProposer(tiny_backbone, clipes_threshold=1.5)
    with pytest.raises(ValueError, match="at least one query"):
        ClipESProposer(tiny_backbone).propose(scene, [], [], 1)


def test_cam_text_quirk_raw_query_at_step_one_then_template(tiny_backbone, scene):
    """Quirk A lives in the proposer: step 1 shows the raw text, later steps the CAM template."""
    prop = ClipESProposer(tiny_backbone, cam_template="a photo of a {}.")
    assert prop.cam_texts(["cat"], 1) == ["cat"] and prop.cam_texts(["cat"], 2) == ["a photo of a cat."]
    np.testing.assert_array_equal(prop.propose(scene, ["cat", "dog"], ["sky"], 1),
                                  prop.propose_texts(scene, ["cat", "dog"], ["sky"]))
    np.testing.assert_array_equal(prop.propose(scene, ["cat", "dog"], ["sky"], 3),
                                  prop.propose_texts(scene, ["a photo of a cat.", "a photo of a dog."], ["sky"]))
    assert prop.proposal_key(["cat"], ["sky"], 2) == prop.proposal_key(["cat"], ["sky"], 3)
    assert prop.proposal_key(["cat"], ["sky"], 1) != prop.proposal_key(["cat"], ["sky"], 2)
    clean = ClipESProposer(tiny_backbone, cam_template="a photo of a {}.", cam_text_quirk=False)
    assert clean.cam_texts(["cat"], 1) == ["a photo of a cat."]
    assert clean.proposal_key(["cat"], [], 1) == clean.proposal_key(["cat"], [], 2)


def test_background_words_are_per_call_and_change_the_maps(tiny_backbone, scene):
    prop = ClipESProposer(tiny_backbone, refine=False)
    with_bg = prop.propose(scene, ["red box", "tree"], ["sky", "grass"], 2)
    without = prop.propose(scene, ["red box", "tree"], [], 2)
    assert np.abs(with_bg - without).max() > 1e-4
    np.testing.assert_array_equal(prop.propose(scene, ["red box", "tree"], ["sky", "grass"], 2), with_bg)
