"""ReCo's seed-pixel co-segmentation on hand-made features where the shared object is known."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from carbench.reco.coseg import context_weights, cosegment, seed_scores


def _scene(n: int = 5, h: int = 4, w: int = 4, c: int = 64, seed: int = 0):
    """n images of h×w random (near-orthogonal) features; one shared object vector at a different
    pixel in each image. Returns feats, the object vector and its positions."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, h, w, c, generator=g)
    obj = torch.randn(c, generator=g)
    where = [(i % h, (2 * i + 1) % w) for i in range(n)]
    for i, (y, x) in enumerate(where):
        feats[i, y, x] = obj * (1 + 0.5 * i) + 0.05 * torch.randn(c, generator=g)  # norms differ on purpose
    return feats, obj, where


def test_the_seed_of_every_image_is_the_shared_object():
    feats, obj, where = _scene()
    res = cosegment(feats)
    assert [(y, x) for _, y, x in res.seeds] == where
    assert float(res.reference @ F.normalize(obj, dim=0)) > 0.99
    assert abs(float(res.reference.norm()) - 1) < 1e-5


def test_context_weights_move_the_seed_from_shared_context_to_the_object():
    feats, obj, where = _scene(seed=1)
    g = torch.Generator().manual_seed(2)
    sky = torch.randn(feats.shape[-1], generator=g)
    sky_at = [((y + 2) % 4, (x + 1) % 4) for y, x in where]
    for i, (y, x) in enumerate(sky_at):  # a second shared thing, a bit more consistent than the object
        feats[i, y, x] = sky + 0.01 * torch.randn(feats.shape[-1], generator=g)
    plain = cosegment(feats)
    assert [(y, x) for _, y, x in plain.seeds] == sky_at
    weights = context_weights(feats, sky[None])
    assert weights.shape == feats.shape[:3]
    guided = cosegment(feats, weights)
    assert [(y, x) for _, y, x in guided.seeds] == where
    assert float(guided.reference @ F.normalize(obj, dim=0)) > 0.99


def test_row_blocks_do_not_change_the_scores():
    feats, _, _ = _scene(n=3, h=5, w=3)
    flat = feats.reshape(3, 15, -1)
    w = torch.rand(3, 15, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(seed_scores(flat, w, row_block=4), seed_scores(flat, w, row_block=1000))


def test_bad_weights_are_refused():
    feats, _, _ = _scene(n=2)
    try:
        cosegment(feats, torch.full((2, 4, 4), 1.5))
    except ValueError as err:
        assert "[0, 1]" in str(err)
    else:
        raise AssertionError("weights above 1 were accepted")
