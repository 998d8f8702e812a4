"""The component seams: CLIP-ES / dense proposers and the CLIP scorer honour the Proposer / MaskScorer
contracts, and the loop only talks to them through those (per-call background, templates, step reuse)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from carbench.models.baselines.dense_clip import DenseClip
from carbench.models.classifier import MaskClassifier
from carbench.models.components import KeyedProposer, MaskScorer, Proposer, WarmsScorerText, WarmsText
from carbench.models.proposals.clip_es import ClipESProposer
from carbench.models.proposals.dense import DenseProposer
from carbench.models.recurrent import CaR


def dense(backbone, attention: str = "sclip") -> DenseProposer:
    return DenseProposer(backbone, templates=["a {}."], attention=attention, keep_residual=True, logit_scale=None,
                         amp="none")


def test_library_parts_satisfy_the_protocols(tiny_backbone):
    for part in (ClipESProposer(tiny_backbone), dense(tiny_backbone)):
        assert isinstance(part, Proposer) and isinstance(part, WarmsText) and isinstance(part, KeyedProposer)
    clf = MaskClassifier(tiny_backbone)
    assert isinstance(clf, MaskScorer) and isinstance(clf, WarmsScorerText)


@pytest.mark.parametrize("attention", ["maskclip", "sclip"])
def test_dense_proposer_is_softmax_over_fg_and_bg_then_minmax_per_query(tiny_backbone, scene, attention):
    prop = dense(tiny_backbone, attention)
    maps = prop.propose(scene, ["red box", "tree"], ["sky"], 1)
    assert maps.shape == (2, *scene.shape[:2]) and maps.dtype == np.float32
    sim = DenseClip(tiny_backbone, templates=["a {}."], attention=attention).dense_similarity(
        scene, ["red box", "tree", "sky"])
    probs = (tiny_backbone.logit_scale * sim).softmax(0)[:2].numpy()
    lo, hi = probs.min((1, 2), keepdims=True), probs.max((1, 2), keepdims=True)
    np.testing.assert_allclose(maps, (probs - lo) / (hi - lo + 1e-15), atol=1e-5)
    assert np.allclose(maps.max((1, 2)), 1.0) and np.allclose(maps.min((1, 2)), 0.0)
    # the background words compete: without them the maps change
    assert np.abs(prop.propose(scene, ["red box", "tree"], [], 1) - maps).max() > 1e-4


def test_dense_proposer_ignores_the_step_and_says_so(tiny_backbone, scene):
    prop = dense(tiny_backbone)
    np.testing.assert_array_equal(prop.propose(scene, ["a", "b"], ["sky"], 1), prop.propose(scene, ["a", "b"], ["sky"], 4))
    assert prop.proposal_key(["a", "b"], ["sky"], 1) == prop.proposal_key(["a", "b"], ["sky"], 2)
    assert prop.proposal_key(["a"], ["sky"], 1) != prop.proposal_key(["a", "b"], ["sky"], 1)


def test_dense_proposer_bad_settings_name_the_key(tiny_backbone):
    with pytest.raises(ValueError, match="model.proposer.attention"):
        DenseProposer(tiny_backbone, ["a {}."], "glow", True, None, "none")
    with pytest.raises(ValueError, match="model.proposer.templates"):
        DenseProposer(tiny_backbone, [], "sclip", True, None, "none")


def test_scorer_templates_per_call_equal_a_scorer_built_with_them(tiny_backbone, scene):
    own = MaskClassifier(tiny_backbone, templates=["a {}."])
    other = MaskClassifier(tiny_backbone, templates=["the {} here.", "one {}."])
    imgs, queries = [scene, scene[::-1].copy()], ["cat", "dog"]
    np.testing.assert_allclose(own.score(imgs, queries, ["the {} here.", "one {}."]), other.score(imgs, queries),
                               rtol=1e-6)
    assert own.templates == ["a {}."]  # nothing was changed on the scorer
    assert np.abs(own.score(imgs, queries) - other.score(imgs, queries)).max() > 1e-6
    with pytest.raises(ValueError, match="slot"):
        own.score(imgs, queries, ["no slot"])


class CountingProposer:
    """Query k owns column band k; counts calls. With `key`, says its output ignores the step."""

    def __init__(self, keyed: bool) -> None:
        self.calls = 0
        if keyed:
            self.proposal_key = lambda queries, background, step: (tuple(queries), tuple(background))

    def propose(self, image, queries, background, step):
        self.calls += 1
        maps = np.zeros((len(queries), 8, 12), np.float32)
        for k in range(len(queries)):
            maps[k, :, 4 * k : 4 * k + 4] = 0.9
        return maps


class ConstScorer:
    def score(self, prompted, queries, templates=None):
        return np.full(len(queries), 0.9, np.float32)


@pytest.mark.parametrize(("keyed", "calls"), [(True, 1), (False, 2)])
def test_loop_reuses_a_step_only_when_the_proposer_says_it_is_unchanged(keyed, calls):
    prop = CountingProposer(keyed)
    car = CaR(prop, ConstScorer(), mask_threshold=0.4, confidence_threshold=0.5)
    pred = car.segment(np.zeros((8, 12, 3), np.uint8), ["a", "b"])
    assert len(pred.trace) == 2 and prop.calls == calls  # every query survives: step 2 = step 1


def test_loop_autocast_follows_the_given_device_not_a_component():
    car = CaR(CountingProposer(True), ConstScorer(), device="cpu")
    assert car.device == torch.device("cpu")
    assert car.autocast().__class__.__name__ == "nullcontext"
