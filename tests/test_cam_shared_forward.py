"""The shared-forward Grad-CAM and `propose_batch` against independent per-query autograd.

The reference here never touches the proposer's code: it runs the real last block (open_clip's own
forward), hooks its ln_1 output and calls one backward per query, as pytorch-grad-cam does.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from carbench.models.backbones.registry import load_clip
from carbench.models.proposals import clip_es
from carbench.models.proposals.clip_es import (
    ClipESProposer,
    _attention_backward_sums,
    _attention_parts,
    last_block_grad_cams,
)


def hooked_gradcam(bb, x: torch.Tensor, text: torch.Tensor, n_fg: int) -> torch.Tensor:
    """Raw Grad-CAM maps [n_fg, h, w] (before min-max): one full forward + backward per query."""
    tokens, grid = bb.embed(x)
    with torch.no_grad():
        x_in, _ = bb.run_blocks(tokens, 0, len(bb.blocks) - 1)
    store = {}

    def hook(_m, _i, out):
        out.retain_grad()
        store["act"] = out

    handle = bb.blocks[-1].ln_1.register_forward_hook(hook)
    cams = []
    try:
        for i in range(n_fg):
            with torch.enable_grad():
                out = bb.blocks[-1](x_in.detach().requires_grad_(True))
                img = F.normalize(bb.patch_mean_embedding(out), dim=-1)
                (bb.logit_scale * img @ text.T).softmax(-1)[0, i].backward()
            act, grad = store["act"][0, 1:].detach(), store["act"].grad[0, 1:]
            cams.append(F.relu((grad.mean(0) * act).sum(-1)).view(grid))
    finally:
        handle.remove()
    return torch.stack(cams)


def last_block_inputs(bb, x: torch.Tensor):
    """(a_in, x_in, grid) for the proposer's function under test."""
    with torch.no_grad():
        tokens, grid = bb.embed(x)
        x_in, _ = bb.run_blocks(tokens, 0, len(bb.blocks) - 1)
        return bb.blocks[-1].ln_1(x_in), x_in, grid


def assert_close_maps(ours: torch.Tensor, ref: torch.Tensor) -> None:
    """Equal within 1e-4 of the reference's scale (raw CAM values are not normalised)."""
    assert ours.shape == ref.shape
    scale = float(ref.abs().max())
    assert scale > 0, "the reference CAMs are all zero: the comparison would prove nothing"
    np.testing.assert_allclose(ours.numpy() / scale, ref.numpy() / scale, atol=1e-4)


def random_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    img = (rng.random((h, w, 3)) * 200 + 20).astype(np.uint8)
    img[h // 4 : h // 2, w // 3 : 2 * w // 3] = (200, 40, 30)
    return img


@pytest.mark.parametrize("with_background", [True, False])
@pytest.mark.parametrize("chunk", [2, 32])
def test_shared_forward_equals_per_query_autograd(tiny_backbone, scene, with_background, chunk):
    texts = ["cat", "red box", "dog", "tree", "a car"]
    bg = ["sky", "ground"] if with_background else []
    prop = ClipESProposer(tiny_backbone, refine=False, query_chunk=chunk)
    text = prop.text_matrix(texts, bg)
    x = prop.cam_input(scene)
    a_in, x_in, grid = last_block_inputs(tiny_backbone, x)
    ours = last_block_grad_cams(tiny_backbone, a_in, x_in, text, len(texts), grid, chunk)
    assert_close_maps(ours, hooked_gradcam(tiny_backbone, x, text, len(texts)))


def test_attention_token_sums_equal_autograd(tiny_backbone):
    """The closed form of Σ_{t≥1} ∂/∂a against autograd, for arbitrary cotangents (CLS row included)."""
    gen = torch.Generator().manual_seed(3)
    attn = tiny_backbone.blocks[-1].attn
    n, c, k = 13, attn.embed_dim, 4
    a = torch.randn(n, c, generator=gen)
    g_out = torch.randn(k, n, c, generator=gen)
    ref = []
    for g in g_out:
        leaf = a.clone().requires_grad_(True)
        with torch.enable_grad():
            out = attn(leaf[None], leaf[None], leaf[None], need_weights=False)[0][0]
            (grad,) = torch.autograd.grad(out, leaf, g)
        ref.append(grad[1:].sum(0))
    ref = torch.stack(ref)
    ours = _attention_backward_sums(attn, _attention_parts(attn, a), g_out)
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), atol=1e-4 * float(ref.abs().max()))


def test_shared_forward_has_no_per_sample_fallback(tiny_backbone, scene):
    """torch warns when a batched backward falls back to a per-sample loop; that would defeat the point."""
    prop = ClipESProposer(tiny_backbone, refine=False, query_chunk=4)
    x = prop.cam_input(scene)
    a_in, x_in, grid = last_block_inputs(tiny_backbone, x)
    text = prop.text_matrix(["a", "b", "c", "d", "e"], ["sky"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        last_block_grad_cams(tiny_backbone, a_in, x_in, text, 5, grid, 4)


def count_attention_calls(bb, prop: ClipESProposer, image: np.ndarray, texts: list[str]) -> int:
    calls = []
    handle = bb.blocks[-1].attn.register_forward_hook(lambda *_: calls.append(1))
    real = clip_es.head_averaged_attention  # the shared path runs the attention head by head, not via forward
    clip_es.head_averaged_attention = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        prop.propose_texts(image, texts, ["sky"])
    finally:
        handle.remove()
        clip_es.head_averaged_attention = real
    return len(calls)


def test_query_chunk_one_keeps_the_per_query_structure(tiny_backbone, scene):
    """`query_chunk=1` (model.impl=reference) runs the last block once per query; the fast path once."""
    texts = ["a", "b", "c", "d"]
    per_query = ClipESProposer(tiny_backbone, refine=False, query_chunk=1)
    shared = ClipESProposer(tiny_backbone, refine=False, query_chunk=3)
    assert count_attention_calls(tiny_backbone, per_query, scene, texts) == 4
    assert count_attention_calls(tiny_backbone, shared, scene, texts) == 1
    np.testing.assert_allclose(shared.propose_texts(scene, texts, ["sky"]),
                               per_query.propose_texts(scene, texts, ["sky"]), atol=1e-4)


def test_empty_cam_redo_uses_foreground_texts_only(tiny_backbone, scene, monkeypatch):
    """A query whose CAM is empty with background words is recomputed without them (official rule)."""
    texts, bg = ["cat", "red box", "dog"], ["sky"]
    prop = ClipESProposer(tiny_backbone, refine=False)
    with_bg = prop.propose_texts(scene, texts, bg)
    fg_only = prop.propose_texts(scene, texts, ())
    real = clip_es.last_block_grad_cams

    def empty_first_with_background(bb, a_in, x_in, text, n_fg, grid, chunk):
        cams = real(bb, a_in, x_in, text, n_fg, grid, chunk)
        if len(text) > n_fg:  # the pass with background words: pretend query 0's CAM is empty
            cams[0] = 0
        return cams

    monkeypatch.setattr(clip_es, "last_block_grad_cams", empty_first_with_background)
    redone = prop.propose_texts(scene, texts, bg)
    np.testing.assert_allclose(redone[0], fg_only[0], atol=1e-6)
    np.testing.assert_allclose(redone[1:], with_bg[1:], atol=1e-6)
    assert np.abs(with_bg[0] - fg_only[0]).max() > 1e-3  # the two texts give different maps here


def test_propose_batch_equals_single_calls(tiny_backbone, monkeypatch):
    rng = np.random.default_rng(7)
    images = [random_image(rng, 75, 100), random_image(rng, 60, 90), random_image(rng, 70, 99)]
    queries = [["cat", "red box"], ["dog", "tree", "car"], ["sky blue", "cat"]]
    steps = [1, 2, 1]
    bg = ["ground", "wall"]
    prop = ClipESProposer(tiny_backbone, query_chunk=2)
    batch_sizes = []
    real = prop._features
    monkeypatch.setattr(prop, "_features", lambda x: batch_sizes.append(len(x)) or real(x))
    batched = prop.propose_batch(images, queries, bg, steps)
    assert sorted(batch_sizes) == [1, 2]  # 75×100 and 70×99 both become 80×112 at patch 16
    for img, q, step, got in zip(images, queries, steps, batched, strict=True):
        want = prop.propose(img, q, bg, step)
        assert got.shape == want.shape == (len(q), *img.shape[:2])
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_propose_batch_rejects_mismatched_inputs(tiny_backbone, scene):
    prop = ClipESProposer(tiny_backbone)
    with pytest.raises(ValueError, match="one query list and one step per image"):
        prop.propose_batch([scene, scene], [["a"]], [], [1, 1])
    with pytest.raises(ValueError, match="image 1 has no queries"):
        prop.propose_batch([scene, scene], [["a"], []], [], [1, 1])


@pytest.mark.parametrize("chunk", [0, 2.5, True])
def test_query_chunk_must_be_a_positive_int(tiny_backbone, chunk):
    with pytest.raises(ValueError, match="query_chunk must be an int ≥ 1"):
        ClipESProposer(tiny_backbone, query_chunk=chunk)


@pytest.fixture(scope="module")
def vitb16():
    """The real ViT-B/16 architecture (QuickGELU, 12 blocks, width 768) with random weights."""
    torch.manual_seed(0)
    return load_clip("vitb16_random")


def test_shared_forward_on_vitb16_architecture(vitb16):
    rng = np.random.default_rng(1)
    image = random_image(rng, 45, 60)  # a 3×4 patch grid keeps this cheap
    texts = ["cat", "dog", "person", "boat", "tree"]
    prop = ClipESProposer(vitb16, refine=False, query_chunk=2)
    text = prop.text_matrix(texts, ["sky", "wall"])
    x = prop.cam_input(image)
    a_in, x_in, grid = last_block_inputs(vitb16, x)
    ours = last_block_grad_cams(vitb16, a_in, x_in, text, len(texts), grid, 2)
    assert_close_maps(ours, hooked_gradcam(vitb16, x, text, len(texts)))
    # Whole proposer path, without the refinement: with random weights the attention is near uniform,
    # so the refined maps span ~1e-4 before min-max and float32 rounding would dominate the comparison.
    shared = ClipESProposer(vitb16, refine=False, query_chunk=3).propose_texts(image, texts, ["sky"])
    per_query = ClipESProposer(vitb16, refine=False, query_chunk=1).propose_texts(image, texts, ["sky"])
    np.testing.assert_allclose(shared, per_query, atol=1e-4)


def test_bench_cam_reports_every_path(tmp_path):
    """benchmarks/bench_cam.py on the tiny CLIP: every path timed, the JSON written, the paths agree."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cam.py"
    spec = importlib.util.spec_from_file_location("bench_cam", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "cam.json"
    report = bench.main(["--preset", "tiny_random", "--size", "100", "75", "--queries", "3", "--batch", "2",
                         "--repeats", "1", "--query-chunk", "2", "--out", str(out)])
    assert set(report["cam"]) == {"replicated", "shared_autograd", "shared", "per_query"}
    assert report["cam"]["per_query"]["query_chunk"] == 1
    for r in report["cam"].values():
        assert r["propose_s"] > 0 and r["grad_s"] > 0
        assert r["max_abs_diff_gradcam_vs_per_query"] < 1e-4
    assert report["propose_batch"]["max_abs_diff_batched_vs_single"] < 1e-4
    assert json.loads(out.read_text())["queries"] == 3
