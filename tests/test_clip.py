"""The CLIP wrapper reaches open_clip's ViT exactly: same tokens, same embeddings, clear load errors;
backbone kinds come from one builder table that user code can extend."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import carbench.models.clip as compat
from carbench.models import presets as presets_mod
from carbench.models.backbones import registry
from carbench.models.backbones.device import autocast, resolve_device
from carbench.models.backbones.registry import BuiltClip, load_clip, register_backbone
from carbench.models.backbones.vit import ClipBackbone, block_forward
from carbench.models.backbones.weights import PretrainedWeightsError
from carbench.models.presets import PRESETS, BackbonePreset, get_preset, register_preset


def test_block_forward_with_attention_equals_open_clip_block(tiny_backbone):
    x = torch.randn(2, 17, tiny_backbone.visual.transformer.width)
    ref = tiny_backbone.blocks[1](x)
    out, attn = block_forward(tiny_backbone.blocks[1], x, need_attn=True)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert attn.shape == (2, 17, 17)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 17), rtol=1e-5, atol=1e-5)  # rows are distributions


def test_token_path_reproduces_encode_image_at_native_size(tiny_backbone):
    bb = tiny_backbone
    img = (np.random.default_rng(1).random((224, 224, 3)) * 255).astype(np.uint8)
    x = bb.to_input(img)
    ours = bb.encode_images(x, skip_last_block=False)
    ref = torch.nn.functional.normalize(bb.model.encode_image(x), dim=-1)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    # quirk B really skips a block
    assert not torch.allclose(bb.encode_images(x, skip_last_block=True), ref, atol=1e-3)


def test_native_resolution_input_rounds_up_to_patch_multiple_and_interpolates_positions(tiny_backbone):
    bb = tiny_backbone
    x = bb.to_input(np.zeros((75, 100, 3), np.uint8))
    assert x.shape == (1, 3, 80, 112)  # ceil(75/16)*16, ceil(100/16)*16
    tokens, grid = bb.embed(x)
    assert grid == (5, 7) and tokens.shape == (1, 1 + 35, bb.visual.transformer.width)
    pos = bb._pos_embed(*bb.visual.grid_size)
    assert pos is bb.visual.positional_embedding  # native grid: untouched
    pos57 = bb._pos_embed(5, 7)
    torch.testing.assert_close(pos57[0], bb.visual.positional_embedding[0])  # CLS position kept


def test_text_cache_encodes_each_string_once_and_averages_templates(tiny_backbone):
    bb = tiny_backbone
    before = bb.text_encodes
    e1 = bb.encode_text(["cat", "dog"], ["a {}.", "the {}."])
    mid = bb.text_encodes
    e2 = bb.encode_text(["cat", "dog"], ["a {}.", "the {}."])
    assert mid - before <= 4 and bb.text_encodes == mid  # second call: all cached
    torch.testing.assert_close(e1, e2)
    assert e1.shape[:2] == (2, 2)
    avg = bb.encode_text_averaged(["cat"], ["a {}.", "the {}."])
    torch.testing.assert_close(avg.norm(dim=-1), torch.ones(1))


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ValueError, match="valid presets: .*vitb16.*vitl14"):
        get_preset("vitb17")


def test_required_presets_exist():
    assert {"vitb16", "vitl14", "vitb32", "vitl14_336", "tiny_random"} <= set(PRESETS)
    assert PRESETS["vitb16"].arch.endswith("quickgelu")  # OpenAI weights need QuickGELU


def test_missing_tag_offline_names_preset_tag_and_where_it_looked(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedWeightsError) as err:
        load_clip("vitb16", cache_dir=str(tmp_path))
    msg = str(err.value)
    assert "'vitb16'" in msg and "openai" in msg and str(tmp_path) in msg
    assert "pretrained=" in msg  # tells how to point at a local file


def test_missing_checkpoint_path_is_a_clear_error(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="does not exist"):
        load_clip("tiny_random", pretrained=str(tmp_path / "nope.pt"))


def test_local_checkpoint_round_trip_and_wrong_architecture(tmp_path, tiny_backbone):
    sd = {k: v.clone() for k, v in tiny_backbone.model.state_dict().items()}
    good = tmp_path / "tiny.pt"
    torch.save(sd, good)
    loaded = load_clip("tiny_random", pretrained=str(good), seed=123)
    for k, v in loaded.model.state_dict().items():
        torch.testing.assert_close(v, sd[k])
    bad = dict(sd)
    bad["visual.proj"] = torch.zeros(3, 3)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not fit architecture"):
        load_clip("tiny_random", pretrained=str(tmp_path / "bad.pt"))


def test_unknown_tag_lists_valid_tags():
    with pytest.raises(ValueError, match="valid tags: .*openai"):
        load_clip("vitb16", pretrained="not_a_tag")


def test_cuda_requested_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_text_longer_than_context_is_truncated_with_a_warning(tiny_backbone):
    long = "the small red " + "very " * 100 + "big dog on the left"
    with pytest.warns(UserWarning, match="truncated"):
        emb = tiny_backbone.encode_strings([long])
    assert emb.shape[0] == 1 and torch.isfinite(emb).all()


def test_non_ascii_expression_encodes(tiny_backbone):
    emb = tiny_backbone.encode_strings(["le chien à gauche — 左边的狗", "café"])
    assert emb.shape[0] == 2 and torch.isfinite(emb).all()
    assert not torch.allclose(emb[0], emb[1])


def test_token_path_reproduces_encode_image_for_the_avg_pooled_toy_clip():
    bb = load_clip("toy")
    assert bb.visual.pool_type == "avg"
    img = (np.random.default_rng(2).random((96, 96, 3)) * 255).astype(np.uint8)
    x = bb.to_input(img)
    ref = torch.nn.functional.normalize(bb.model.encode_image(x), dim=-1)
    torch.testing.assert_close(bb.encode_images(x, skip_last_block=False), ref, rtol=1e-4, atol=1e-5)


def test_a_backbone_kind_registered_from_outside_is_what_load_clip_builds(monkeypatch, tiny_backbone):
    monkeypatch.setattr(registry, "BACKBONE_BUILDERS", dict(registry.BACKBONE_BUILDERS))
    monkeypatch.setattr(presets_mod, "PRESETS", dict(presets_mod.PRESETS))
    calls = []

    @register_backbone("user_kind")
    def build(preset, pretrained, cache_dir, seed):
        calls.append((preset.name, pretrained, seed))
        return BuiltClip(tiny_backbone.model, tiny_backbone.tokenizer, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))

    register_preset(BackbonePreset("user_vit", "carbench-tiny", "mine.safetensors", 224, builder="user_kind"))
    bb = load_clip("user_vit", seed=7)
    assert calls == [("user_vit", "mine.safetensors", 7)]
    assert isinstance(bb, ClipBackbone) and bb.model is tiny_backbone.model and bb.preset.name == "user_vit"
    torch.testing.assert_close(bb.mean.flatten(), torch.full((3,), 0.5))
    load_clip("user_vit", pretrained="other.pt")
    assert calls[-1][1] == "other.pt"  # the override reaches the builder
    with pytest.raises(ValueError, match="'user_kind' is already registered"):
        register_backbone("user_kind")(build)
    with pytest.raises(ValueError, match="'user_vit' already exists"):
        register_preset(BackbonePreset("user_vit", "carbench-tiny", None, 224))


def test_builtin_kinds_are_registered_and_an_unknown_kind_names_the_registered_ones(monkeypatch):
    assert {"open_clip", "toy", "ovseg"} <= set(registry.BACKBONE_BUILDERS)
    assert {p.builder for p in PRESETS.values()} <= set(registry.BACKBONE_BUILDERS)
    monkeypatch.setattr(presets_mod, "PRESETS", dict(presets_mod.PRESETS))
    register_preset(BackbonePreset("orphan", "carbench-tiny", None, 224, builder="nobody"))
    with pytest.raises(ValueError, match=r"'orphan' names backbone kind 'nobody'.*registered kinds: .*open_clip.*"
                                         r"register_backbone"):
        load_clip("orphan")


def test_ovseg_kind_carries_mask_prompt_tokens_onto_the_backbone():
    bb = load_clip("ovseg_tiny_random")
    grid = bb.visual.grid_size[0] * bb.visual.grid_size[1]
    assert bb.mask_embedding is not None and bb.mask_embedding.shape[1:] == (grid, bb.visual.transformer.width)
    assert load_clip("tiny_random").mask_embedding is None


def test_autocast_is_a_no_op_on_cpu_and_rejects_unknown_amp():
    with autocast(torch.device("cpu"), "bf16"):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.float32  # CPU runs stay fp32 whatever model.amp says
    with pytest.raises(ValueError, match=r"'fp8'.*set model\.amp to one of: auto, none, bf16, fp16"):
        autocast(torch.device("cpu"), "fp8")


def test_compatibility_alias_reexports_the_owning_modules_names():
    assert compat.load_clip is load_clip and compat.ClipBackbone is ClipBackbone
    assert compat.PretrainedWeightsError is PretrainedWeightsError and compat.resolve_device is resolve_device
