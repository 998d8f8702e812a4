"""Mask classifier: template ensemble with the official double softmax, diagonal scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from carbench.models.classifier import MaskClassifier


def test_scores_are_the_diagonal_of_a_row_stochastic_matrix(tiny_backbone, scene):
    clf = MaskClassifier(tiny_backbone, templates=["a {}.", "the {}."])
    imgs = [scene, scene[:, ::-1].copy(), scene // 2]
    p = clf.score_matrix(imgs, ["cat", "dog", "car"])
    assert p.shape == (3, 3)
    torch.testing.assert_close(p.sum(-1), torch.ones(3))
    np.testing.assert_allclose(clf.score(imgs, ["cat", "dog", "car"]), p.diagonal().numpy(), rtol=1e-6)


def test_double_softmax_is_softmax_of_template_summed_probs(tiny_backbone, scene):
    templates = ["a {}.", "the {}.", "a photo of a {}."]
    q = ["cat", "dog"]
    single = MaskClassifier(tiny_backbone, templates=templates, double_softmax=False).score_matrix([scene, scene], q)
    double = MaskClassifier(tiny_backbone, templates=templates, double_softmax=True).score_matrix([scene, scene], q)
    torch.testing.assert_close(double, (single * len(templates)).softmax(-1))


def test_one_query_scores_one(tiny_backbone, scene):
    clf = MaskClassifier(tiny_backbone, templates=["{}"], double_softmax=False)
    assert clf.score([scene], ["anything"])[0] == pytest.approx(1.0)


def test_text_is_encoded_once_across_calls(tiny_backbone, scene):
    clf = MaskClassifier(tiny_backbone, templates=["x {} y.", "z {} w."])
    clf.score([scene, scene], ["q1", "q2"])
    n = tiny_backbone.text_encodes
    clf.score([scene], ["q2"])
    assert tiny_backbone.text_encodes == n


def test_center_crop_cuts_the_border_like_clip(tiny_backbone):
    clf = MaskClassifier(tiny_backbone)
    wide = np.zeros((100, 300, 3), np.uint8)
    wide[:, :40] = 255  # only at the far left: cropped away by the centre crop
    x = clf.preprocess([wide])
    assert x.shape == (1, 3, 224, 224)
    assert torch.allclose(x, clf.preprocess([np.zeros_like(wide)]))


def test_bad_templates_are_rejected(tiny_backbone):
    with pytest.raises(ValueError, match="exactly one"):
        MaskClassifier(tiny_backbone, templates=["no slot"])
    with pytest.raises(ValueError, match="at least one template"):
        MaskClassifier(tiny_backbone, templates=[])
