"""A researcher's own proposer, scorer and visual prompt plug into CaR by config alone."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from carbench.engine.config_check import ConfigKeyError, check_keys
from carbench.models.build import build_model
from carbench.models.prompts import PROMPTS, apply_visual_prompts, validate_prompts
from carbench.models.proposals.clip_es import ClipESProposer
from carbench.models.proposals.dense import DenseProposer

CONF = Path(__file__).resolve().parents[1] / "conf"
TINY = ["dataset=voc_fixture", "model.proposal=tiny_random", "model.classifier=tiny_random", "postprocess=none"]


@pytest.fixture()
def plugin(monkeypatch):
    """The user's module, imported fresh; afterwards the prompt registry is as before, so a prompt
    registered here never leaks into other tests (e.g. ones asserting that an unknown prompt is refused)."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # the user's package is importable
    registry_before = dict(PROMPTS)
    sys.modules.pop("plugin_components", None)
    import plugin_components

    plugin_components.CALLS.clear()
    plugin_components.SPARKLES.clear()
    yield plugin_components
    PROMPTS.clear()
    PROMPTS.update(registry_before)
    sys.modules.pop("plugin_components", None)


def compose_cfg(*overrides: str):
    from omegaconf import OmegaConf

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, *overrides])
    check_keys(OmegaConf.to_container(cfg, resolve=True))
    return cfg


def image() -> np.ndarray:
    return (np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8)


def test_user_proposer_by_target_runs_inside_the_recurrence(plugin):
    cfg = compose_cfg("model/proposer=custom", "model.proposer._target_=plugin_components.BoxProposer",
                      "+model.proposer.margin=3")
    model = build_model(cfg, "cpu")
    assert isinstance(model.proposer, plugin.BoxProposer) and model.proposer.margin == 3
    assert model.proposer.backbone is model.classifier.backbone  # the pooled CLIP, shared with the scorer
    pred = model.segment(image(), ["cat", "dog", "bus"])
    assert plugin.CALLS[0] == (["cat", "dog", "bus"], ["ground", "sky", "wall", "road"], 1)
    assert [c[2] for c in plugin.CALLS] == list(range(1, len(plugin.CALLS) + 1))
    assert pred.masks.shape == (3, 40, 48)


def test_user_proposer_with_a_key_it_does_not_take_is_an_error_naming_both(plugin):
    cfg = compose_cfg("model/proposer=custom", "model.proposer._target_=plugin_components.BoxProposer",
                      "+model.proposer.margin=3", "+model.proposer.margn=2")
    with pytest.raises(ValueError, match=r"\['margn'\].*valid: backbone, margin"):
        build_model(cfg, "cpu")


def test_unimportable_target_names_the_key(plugin):
    cfg = compose_cfg("model/proposer=custom", "model.proposer._target_=nopkg_xyz.Proposer")
    with pytest.raises(ValueError, match=r"model.proposer._target_='nopkg_xyz.Proposer' cannot be imported"):
        build_model(cfg, "cpu")


def test_user_prompt_registered_outside_the_package_is_named_in_config(plugin):
    cfg = compose_cfg("model.prompt_modules=[plugin_components]", "model.visual_prompts=[sparkle,blur]",
                      "model.confidence_threshold=0.0")
    model = build_model(cfg, "cpu")
    assert model.prompts == ("blur", "sparkle")  # the registered order, not the config's
    model.segment(image(), ["cat", "dog"])
    assert plugin.SPARKLES  # the classifier saw sparkled images
    mask = np.zeros((40, 48), bool)
    mask[5:20, 5:20] = True
    img = image()
    out = apply_visual_prompts(img, mask, ["sparkle"])
    np.testing.assert_array_equal(out[mask], 255 - img[mask])
    np.testing.assert_array_equal(out[~mask], img[~mask])
    assert validate_prompts(["rectangle", "sparkle", "circle"]) == ("circle", "sparkle", "rectangle")


def test_unknown_prompt_module_and_prompt_are_errors(plugin):
    with pytest.raises(ValueError, match="prompt_modules: cannot import 'nopkg_xyz'"):
        build_model(compose_cfg("model.prompt_modules=[nopkg_xyz]"), "cpu")
    with pytest.raises(ValueError, match=r"unknown visual prompt\(s\) \['glitter'\].*prompt_modules"):
        build_model(compose_cfg("model.visual_prompts=[glitter]"), "cpu")
    with pytest.raises(ValueError, match="already registered"):
        from carbench.models.prompts import register_prompt

        register_prompt("sparkle", 9)(lambda out, mask, ctx: out)
    assert "sparkle" in PROMPTS


@pytest.mark.parametrize(("choice", "cls", "attr"), [
    ("clip_es", ClipESProposer, ("refine", True)), ("gradcam", ClipESProposer, ("refine", False)),
    ("dense_maskclip", DenseProposer, None), ("dense_sclip", DenseProposer, None),
])
def test_proposer_group_choices_build_their_class(choice, cls, attr):
    model = build_model(compose_cfg(f"model/proposer={choice}"), "cpu")
    assert type(model.proposer) is cls
    if attr:
        assert getattr(model.proposer, attr[0]) is attr[1]
    else:
        assert model.proposer.dense.attention == choice.removeprefix("dense_")


def test_cam_alias_switches_clip_es_and_refuses_other_proposers():
    assert build_model(compose_cfg("model.cam=gradcam"), "cpu").proposer.refine is False
    with pytest.raises(ValueError, match="model.cam=gradcam switches the CLIP-ES proposer"):
        build_model(compose_cfg("model.cam=gradcam", "model/proposer=dense_sclip"), "cpu")


def test_strict_keys_inside_component_nodes():
    with pytest.raises(ConfigKeyError, match=r"model.proposer.refine.*valid keys under model.proposer: _target_, "
                                             r"attention"):
        compose_cfg("model/proposer=dense_sclip", "+model.proposer.refine=false")
    with pytest.raises(ConfigKeyError, match=r"model.confidance_threshold'; did you mean "
                                             r"'model.confidence_threshold'.*valid keys under model: .*clipes_thr"):
        compose_cfg("+model.confidance_threshold=0.9")
    compose_cfg("model/proposer=custom", "model.proposer._target_=x.Y", "+model.proposer.anything=1")  # user class



def test_user_target_over_the_default_node_points_at_the_bare_node(plugin):
    cfg = compose_cfg("model.proposer._target_=plugin_components.BoxProposer", "+model.proposer.margin=1")
    with pytest.raises(ValueError, match=r"'clipes_threshold'.*model/proposer=custom"):
        build_model(cfg, "cpu")


def test_user_scorer_by_target(plugin):
    cfg = compose_cfg("model/scorer=custom", "model.scorer._target_=plugin_components.LengthScorer")
    model = build_model(cfg, "cpu")
    pred = model.segment(image(), ["a", "longer query"])
    assert pred.kept == [1]  # the long query scores 0.9 > θ = 0.6, the short one 0.1
