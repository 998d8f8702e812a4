"""Stage 3 of the toy recipe (carbench.toy.train_classifier): targets, loss, query sets, reproducibility."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from recipe_helpers import export_sha256

from carbench.models.backbones.registry import load_clip
from carbench.toy import train_classifier as tc
from carbench.toy.model import TOY_WEIGHTS, ToyWeightsError, load_toy_clip
from carbench.toy.runs import toy_config
from carbench.toy.scenes import CLASS_NAMES


def _label() -> np.ndarray:
    label = np.zeros((10, 10), np.uint8)
    label[:, :4] = 2  # square
    label[:, 4:6] = 5  # ring
    return label


def test_targets_name_the_classes_under_the_mask():
    label = _label()
    on_square = np.zeros_like(label, bool)
    on_square[:, :4] = True
    half = np.zeros_like(label, bool)
    half[:, 2:6] = True  # 20 square + 20 ring pixels
    on_bg = np.zeros_like(label, bool)
    on_bg[:, 7:] = True
    empty = np.zeros_like(label, bool)
    t = tc.proposal_targets(label, np.stack([on_square, half, on_bg, empty]), alive=[2, 5, 7], min_object=0.2)
    np.testing.assert_allclose(t[0], [1, 0, 0])
    np.testing.assert_allclose(t[1], [0.5, 0.5, 0])
    np.testing.assert_allclose(t[2], [1 / 3] * 3)  # background: the step cannot name it
    np.testing.assert_allclose(t[3], [1 / 3] * 3)
    np.testing.assert_allclose(t.sum(1), 1, rtol=1e-6)


def test_targets_spread_classes_that_are_not_alive_and_respect_min_object():
    label = _label()
    half = np.zeros_like(label, bool)
    half[:, 2:6] = True
    t = tc.proposal_targets(label, half[None], alive=[2, 7], min_object=0.2)  # ring (5) not alive
    np.testing.assert_allclose(t[0], [0.5 + 0.25, 0.25])
    mostly_bg = np.zeros_like(label, bool)
    mostly_bg[:, 3:] = True  # 10 square pixels, 20 ring, 40 background: objects 3/7 of the mask
    assert np.allclose(tc.proposal_targets(label, mostly_bg[None], [2, 5], min_object=0.5)[0], 0.5)
    assert tc.proposal_targets(label, mostly_bg[None], [2, 5], min_object=0.4)[0][1] == pytest.approx(2 / 3)


def test_loss_is_the_cross_entropy_over_the_alive_queries_only():
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(2, 5, 8), dim=-1)
    alive = torch.zeros(3, 5, dtype=torch.bool)
    alive[:, [0, 2, 3]] = True
    target = torch.zeros(3, 5)
    target[:, 2] = 1.0
    got = tc.classifier_loss(emb, text, torch.tensor(10.0), alive, target)
    sub = (10.0 * torch.einsum("bd,tcd->tbc", emb, text[:, [0, 2, 3]])).log_softmax(-1)[..., 1]
    assert got.item() == pytest.approx(-sub.mean().item(), rel=1e-6)
    other = alive.clone()
    other[:, 4] = True  # one more alive query changes the softmax, hence the loss
    assert tc.classifier_loss(emb, text, torch.tensor(10.0), other, target).item() != pytest.approx(got.item())


def test_query_sets_are_step_one_everything_then_present_and_a_superset():
    sets = tc.query_sets([2, 5], np.random.default_rng(0))
    assert sets[0] == (list(range(1, len(CLASS_NAMES) + 1)), 1)
    assert sets[1] == ([2, 5], 2)
    alive, step = sets[2]
    assert step == 2 and {2, 5} < set(alive) and 1 <= len(alive) - 2 <= 3
    assert tc.query_sets([2, 5], np.random.default_rng(0)) == sets  # seeded
    assert tc.query_sets([], np.random.default_rng(0)) == [sets[0]]


TINY = ["--init", str(TOY_WEIGHTS), "--scenes", "2", "--steps", "3", "--batch", "4", "--warmup", "1"]


def _run(tmp: Path, name: str, *extra: str) -> str:
    return export_sha256(tc.main, TINY, tmp, name, *extra)


def _moved(weights: Path) -> set[str]:
    """The state-dict keys whose tensors differ between the stage-2 init and `weights`."""
    init = load_toy_clip(TOY_WEIGHTS)[0].state_dict()
    trained = load_toy_clip(weights)[0].state_dict()
    return {k for k in init if not torch.equal(init[k], trained[k])}


def test_two_runs_export_the_same_file_resume_matches_and_training_moves_the_weights(tmp_path):
    first = _run(tmp_path, "a")
    assert _run(tmp_path, "b") == first
    _run(tmp_path, "c", "--minutes", "0")  # stops (checkpoint + export) after step 1
    assert _run(tmp_path, "c", "--resume") == first
    assert _run(tmp_path, "d", "--lr", "1e-3") != first
    # only the image tower (and the logit scale) train: the text tower stays the proposer's, bit for bit
    # (the sha256 alone cannot show this: the export's metadata differs from the init's anyway)
    moved = _moved(tmp_path / "a" / "w.safetensors")
    assert moved and all(k.startswith("visual.") or k == "logit_scale" for k in moved), sorted(moved)[:5]
    backbone = load_clip("toy_classifier", pretrained=str(tmp_path / "a" / "w.safetensors"))
    assert backbone.preset.name == "toy_classifier"


def test_train_text_trains_the_text_tower_too(tmp_path):
    _run(tmp_path, "t", "--train-text")
    moved = _moved(tmp_path / "t" / "w.safetensors")
    assert any(k.startswith("visual.") for k in moved)
    assert {k for k in moved if k.startswith(("transformer.", "token_embedding", "text_projection"))}, sorted(moved)


def test_export_without_a_checkpoint_fails_and_a_missing_file_names_the_fix(tmp_path, capsys):
    assert tc.main(["--export", "--out", str(tmp_path / "none"), "--weights", str(tmp_path / "w.safetensors")]) == 1
    assert "make toy-model" in capsys.readouterr().err
    with pytest.raises(ToyWeightsError, match="make toy-model"):
        load_clip("toy_classifier", pretrained=str(tmp_path / "missing.safetensors"))


def test_proposal_file_is_named_by_what_shapes_the_proposals_not_by_theta():
    """A re-tuned θ (or template list) reuses stage 3's proposals; a re-tuned η, λ or prompt list does not."""
    base = tc.proposal_setting(toy_config([]).model)
    for same in ("model.confidence_threshold=0.3", "model.max_steps=1", "model.templates=['a {}.']"):
        assert tc.proposal_setting(toy_config([same]).model) == base, same
    for other in ("model.mask_threshold=0.3", "model.clipes_threshold=0.4", "model.visual_prompts=[blur]",
                  "model.affinity_blocks=2"):
        assert tc.proposal_setting(toy_config([other]).model) != base, other
