"""Baselines: dense CLIP (MaskCLIP / SCLIP), CLIP-ES one step, OVSeg-style + OVSeg checkpoint mapping,
and an end-to-end fixture run of every model through `run_evaluation`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from carbench.models.backbones.registry import load_clip
from carbench.models.baselines.dense_clip import DenseClip, last_block_attention
from carbench.models.baselines.ovseg import OVSegStyle, encode_with_mask_prompt, region_crops
from carbench.models.baselines.ovseg_checkpoint import OVSEG_CLIP_PREFIX, OVSegCheckpointError
from carbench.models.checkpoints import CHECKPOINT_DIRS_ENV
from carbench.models.factory import build_segmenter
from carbench.types import BACKGROUND

CONF = str(Path(__file__).resolve().parents[1] / "conf")
TINY = {"proposal": "tiny_random", "classifier": "tiny_random"}


# ------------------------------------------------------------------------------------------- dense CLIP
def _qkv(attn, y):
    b, n, c = y.shape
    h = attn.num_heads
    q, k, v = (F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1))
    return [t.reshape(b, n, h, c // h).transpose(1, 2) for t in (q, k, v)], (b, n, c, h)


def test_last_block_attention_modes(tiny_backbone):
    attn = tiny_backbone.blocks[-1].attn
    y = torch.randn(1, 7, 64)
    with torch.no_grad():
        ref = attn(y, y, y, need_weights=False)[0]  # torch's own attention
        assert torch.allclose(last_block_attention(attn, y, "vanilla"), ref, atol=1e-5)
        (q, k, v), (b, n, c, h) = _qkv(attn, y)
        merge = lambda t: attn.out_proj(t.transpose(1, 2).reshape(b, n, c))  # noqa: E731
        assert torch.allclose(last_block_attention(attn, y, "maskclip"), merge(v), atol=1e-6)
        s = (c // h) ** -0.5
        csa = (q @ q.transpose(-1, -2) * s).softmax(-1) + (k @ k.transpose(-1, -2) * s).softmax(-1)
        assert torch.allclose(last_block_attention(attn, y, "sclip"), merge(csa @ v), atol=1e-5)
    with pytest.raises(ValueError, match="valid: maskclip"):
        last_block_attention(attn, y, "clearclip")


def test_dense_clip_prediction_contract(tiny_backbone, scene):
    model = DenseClip(tiny_backbone, background_queries=["sky"], attention="sclip")
    pred = model.segment(scene, ["cat", "dog"])
    assert pred.labels.shape == scene.shape[:2] and set(np.unique(pred.labels)) <= {BACKGROUND, 0, 1}
    assert pred.masks.shape == (2, *scene.shape[:2]) and pred.masks.min() >= 0 and pred.masks.max() <= 1
    assert pred.kept == sorted({int(v) for v in np.unique(pred.labels) if v >= 0})
    sim = model.dense_similarity(scene, ["cat", "dog", "sky"])
    assert sim.shape == (3, *scene.shape[:2]) and sim.abs().max() <= 1 + 1e-5  # cosines
    # Every pixel where the background query wins is background.
    probs = (model.logit_scale * sim).softmax(0).numpy()
    assert np.array_equal(pred.labels == BACKGROUND, probs.argmax(0) == 2)
    all_bg = DenseClip(tiny_backbone, prob_threshold=1.0).segment(scene, ["cat", "dog"])
    assert (all_bg.labels == BACKGROUND).all() and all_bg.kept == []
    with pytest.raises(ValueError, match="also class queries"):
        DenseClip(tiny_backbone, background_queries=["cat"]).segment(scene, ["cat"])


def test_dense_clip_reads_a_bare_string_as_one_template_and_refuses_one_as_background(tiny_backbone, scene):
    assert DenseClip(tiny_backbone, templates="a photo of a {}.").templates == ["a photo of a {}."]
    assert DenseClip(tiny_backbone, templates=()).templates == ["{}"]  # no template: the query itself
    with pytest.raises(ValueError, match=r"model\.background_queries must be a list of strings, got the string 'sky'"):
        DenseClip(tiny_backbone, background_queries="sky")
    with pytest.raises(ValueError, match=r"background queries must be a list of strings, got the string 'sky'"):
        DenseClip(tiny_backbone).segment(scene, ["cat"], background="sky")


def test_dense_clip_with_crf_repaints_exclusive_masks(scene):
    model = build_segmenter({"name": "dense_clip", "backbone": "tiny_random"}, {"name": "crf", "iterations": 2})
    pred = model.segment(scene, ["cat", "dog", "car"])
    assert set(np.unique(pred.masks)) <= {0.0, 1.0} and (pred.masks.sum(0) <= 1).all()  # CRF: exclusive
    for k in range(3):
        assert np.array_equal(pred.labels == k, pred.masks[k] > 0.5) or pred.scores[k] == 0


# ---------------------------------------------------------------------------------------------- CLIP-ES
def test_clip_es_is_car_with_one_step(scene):
    model = build_segmenter({"name": "clip_es", **TINY, "background_queries": ["sky"]}, None)
    pred = model.segment(scene, ["red", "blue", "green"])
    assert len(pred.trace) == 1 and pred.kept == [0, 1, 2]  # no query dropped, ever
    with pytest.raises(ValueError, match="max_steps=1"):
        build_segmenter({"name": "clip_es", **TINY, "max_steps": 3}, None)


# ------------------------------------------------------------------------------------- OVSeg checkpoint
def _openai_block(prefix: str, w: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    shapes = {
        "attn.in_proj_weight": (3 * w, w), "attn.in_proj_bias": (3 * w,), "attn.out_proj.weight": (w, w),
        "attn.out_proj.bias": (w,), "ln_1.weight": (w,), "ln_1.bias": (w,), "mlp.c_fc.weight": (4 * w, w),
        "mlp.c_fc.bias": (4 * w,), "mlp.c_proj.weight": (w, 4 * w), "mlp.c_proj.bias": (w,),
        "ln_2.weight": (w,), "ln_2.bias": (w,),
    }
    return {f"{prefix}.{k}": torch.randn(s, generator=g) for k, s in shapes.items()}


def synthetic_ovseg_checkpoint(path: Path, drop: str | None = None, extra: str | None = None,
                               fmt: str = "detectron2") -> dict[str, torch.Tensor]:
    """OVSeg's checkpoint layout (OpenAI CLIP key names under clip_adapter.clip_model.) for carbench-tiny."""
    g = torch.Generator().manual_seed(1)
    w, emb, grid, vocab, ctx = 64, 64, 14, 49408, 77
    clip = {
        "visual.conv1.weight": torch.randn(w, 3, 16, 16, generator=g),
        "visual.class_embedding": torch.randn(w, generator=g),
        "visual.positional_embedding": torch.randn(grid * grid + 1, w, generator=g),
        "visual.ln_pre.weight": torch.rand(w, generator=g), "visual.ln_pre.bias": torch.randn(w, generator=g),
        "visual.ln_post.weight": torch.rand(w, generator=g), "visual.ln_post.bias": torch.randn(w, generator=g),
        "visual.proj": torch.randn(w, emb, generator=g),
        "visual.mask_embedding": torch.randn(3, grid * grid, w, generator=g),
        "token_embedding.weight": torch.randn(vocab, w, generator=g),
        "positional_embedding": torch.randn(ctx, w, generator=g),
        "ln_final.weight": torch.rand(w, generator=g), "ln_final.bias": torch.randn(w, generator=g),
        "text_projection": torch.randn(w, emb, generator=g), "logit_scale": torch.tensor(4.6052),
    }
    for i in range(3):
        clip.update(_openai_block(f"visual.transformer.resblocks.{i}", w, g))
    for i in range(2):
        clip.update(_openai_block(f"transformer.resblocks.{i}", w, g))
    if drop:
        clip.pop(drop)
    if extra:
        clip[extra] = torch.zeros(1)
    if fmt == "detectron2":
        model = {OVSEG_CLIP_PREFIX + k: v for k, v in clip.items()}
        model["clip_adapter.non_object_embedding"] = torch.randn(1, emb, generator=g)
        model["backbone.patch_embed.proj.weight"] = torch.randn(8, 3, 4, 4, generator=g)  # MaskFormer keys: ignored
        model["sem_seg_head.predictor.class_embed.weight"] = torch.randn(4, 8, generator=g)
        torch.save({"model": model, "iteration": 120000}, path)
    else:  # OVSeg's open_clip fine-tuning output: DDP prefix inside "state_dict"
        torch.save({"state_dict": {"module." + k: v for k, v in clip.items()}, "epoch": 5}, path)
    return clip


@pytest.mark.parametrize("fmt", ["detectron2", "clip"])
def test_ovseg_checkpoint_maps_into_open_clip(tmp_path, fmt):
    path = tmp_path / "ovseg_tiny.pth"
    ref = synthetic_ovseg_checkpoint(path, fmt=fmt)
    bb = load_clip("ovseg_tiny_random", pretrained=str(path))
    sd = bb.model.state_dict()
    for key in ("visual.conv1.weight", "visual.transformer.resblocks.2.mlp.c_fc.weight", "visual.proj",
                "transformer.resblocks.1.attn.in_proj_weight", "token_embedding.weight", "text_projection"):
        assert torch.equal(sd[key], ref[key]), key
    assert torch.equal(bb.mask_embedding, ref["visual.mask_embedding"])
    # The loaded tower computes what the OpenAI layout means: CLS → ln_post → proj.
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        tokens, _ = bb.embed(x)
        tokens, _ = bb.run_blocks(tokens)
        manual = F.layer_norm(tokens[:, 0], (64,), ref["visual.ln_post.weight"], ref["visual.ln_post.bias"]) @ ref[
            "visual.proj"]
    assert torch.allclose(bb.encode_images(x), F.normalize(manual, dim=-1), atol=1e-5)


def test_ovseg_checkpoint_key_errors(tmp_path):
    path = tmp_path / "bad.pth"
    synthetic_ovseg_checkpoint(path, drop="visual.ln_post.bias")
    with pytest.raises(OVSegCheckpointError, match=r"missing: visual\.ln_post\.bias"):
        load_clip("ovseg_tiny_random", pretrained=str(path))
    synthetic_ovseg_checkpoint(path, extra="visual.transformer.resblocks.9.ln_1.weight")
    with pytest.raises(OVSegCheckpointError, match=r"unexpected: visual\.transformer\.resblocks\.9"):
        load_clip("ovseg_tiny_random", pretrained=str(path))


def test_ovseg_vitl14_without_file_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv(CHECKPOINT_DIRS_ENV, str(tmp_path))
    with pytest.raises(OVSegCheckpointError) as err:
        load_clip("ovseg_vitl14")
    msg = str(err.value)
    assert "ovseg_swinbase_vitL14_ft_mpt.pth" in msg and str(tmp_path) in msg and "ov-seg" in msg


# ----------------------------------------------------------------------------------------- OVSeg-style
def test_mask_prompt_replaces_only_fully_masked_patches(tmp_path):
    path = tmp_path / "ovseg_tiny.pth"
    synthetic_ovseg_checkpoint(path)
    bb = load_clip("ovseg_tiny_random", pretrained=str(path))
    x = torch.randn(1, 3, 224, 224)
    partly = torch.ones(1, 1, 224, 224)
    partly[..., :15, :16] = 0  # patch (0, 0) keeps one row of mask pixels → kept (ceil of the mean)
    fully = torch.ones(1, 1, 224, 224)
    fully[..., :16, :16] = 0  # patch (0, 0) entirely outside the mask → mask-prompt token
    plain = bb.encode_images(x)
    assert torch.allclose(encode_with_mask_prompt(bb, x, partly, bb.mask_embedding), plain, atol=1e-5)
    assert not torch.allclose(encode_with_mask_prompt(bb, x, fully, bb.mask_embedding), plain, atol=1e-3)


def test_region_crops_fill_outside_with_mean(scene):
    mask = np.zeros(scene.shape[:2], bool)
    mask[20:50, 30:70] = True
    mask[20:30, 30:40] = False  # the box's top-left corner lies outside the mask
    crops, masks = region_crops(scene, mask[None], (0.25, 0.5, 0.75))
    assert crops.shape == (1, 3, 224, 224) and masks.shape == (1, 1, 224, 224)
    assert torch.allclose(crops[0, :, 10, 10], torch.tensor([0.25, 0.5, 0.75]), atol=1e-3)  # filled corner
    assert masks[0, 0, 10, 10] == 0 and masks[0, 0, 112, 112] == 1
    red = torch.tensor([220, 30, 30]) / 255.0
    assert torch.allclose(crops[0, :, 112, 112], red, atol=2e-2)  # inside: the image's red rectangle


def test_ovseg_style_paints_proposals_and_leaves_uncovered_background(scene):
    left = np.zeros(scene.shape[:2], bool)
    left[:, :40] = True
    bb = load_clip("ovseg_tiny_random")
    model = OVSegStyle(bb, masker=lambda image: left[None], mask_prompt=True)
    pred = model.segment(scene, ["cat", "dog"])
    assert (pred.labels[:, 40:] == BACKGROUND).all()  # no proposal there
    assert len(np.unique(pred.labels[:, :40])) == 1 and pred.labels[0, 0] in (0, 1)  # one proposal, one class
    assert pred.trace[0]["proposals"] == 1
    with pytest.raises(ValueError, match="mask-prompt tokens"):
        OVSegStyle(load_clip("tiny_random"), masker=lambda image: left[None], mask_prompt=True)


# ---------------------------------------------------------------------------------------------- e2e runs
def run(tmp_path: Path, *overrides: str) -> dict:
    from carbench.engine.evaluate import run_evaluation

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[
            "dataset=voc_fixture", f"dataset.root={tmp_path / 'voc'}", "limit=2", "device=cpu", "num_workers=0",
            *overrides,
        ])
    return run_evaluation(cfg, tmp_path / "run")


SAM_TINY = ["model.sam.preset=tiny_random", "model.sam.generator.points_per_side=6",
            "model.sam.generator.pred_iou_thresh=0", "model.sam.generator.stability_score_thresh=0"]


@pytest.mark.parametrize("overrides", [
    ["model=dense_clip", "postprocess=none"],
    ["model=dense_clip", "model.attention=sclip"],
    ["model=clip_es"],
    ["model=ovseg", "model.clip=ovseg_tiny_random", "postprocess=none", *SAM_TINY],
    ["postprocess=sam", "postprocess.preset=tiny_random", "postprocess.generator.points_per_side=6",
     "postprocess.generator.pred_iou_thresh=0", "postprocess.generator.stability_score_thresh=0"],
], ids=["dense_clip", "dense_clip_sclip_crf", "clip_es", "ovseg", "car_sam"])
def test_fixture_run_of_each_model(tmp_path, overrides):
    res = run(tmp_path, *overrides)
    assert res["num_images"]["evaluated"] == 2 and res["num_images"]["failed"] == 0
    assert 0.0 <= res["metrics"]["mIoU"] <= 100.0
    assert res["config"]["model"]["protocol"] == {"name": "car"}
    if "model=clip_es" in overrides:
        assert res["steps_histogram"] == {1: 2}
