"""The CLIP wrapper reaches open_clip's ViT exactly: same tokens, same embeddings, clear load errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from carbench.models.clip import PretrainedWeightsError, _block_forward, load_clip, resolve_device
from carbench.models.presets import PRESETS, get_preset


def test_block_forward_with_attention_equals_open_clip_block(tiny_backbone):
    x = torch.randn(2, 17, tiny_backbone.visual.transformer.width)
    ref = tiny_backbone.blocks[1](x)
    out, attn = _block_forward(tiny_backbone.blocks[1], x, need_attn=True)
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
