"""The CLIP-ES proposer's attention memory is bounded: no [heads, N, N] or [blocks, N, N] tensor.

At 2048×1024 on ViT-B/16 (N = 8193 tokens) one N×N float32 map is 268 MB; a tensor holding one per
head or per block is 3.2 GB or 2.1 GB. The proposer's attention maps, closed-form Grad-CAM and
affinity refinement therefore work one head, one block and one query at a time. These tests watch
every tensor the proposer's operators produce (a torch dispatch mode) for a stack of N×N maps, and
check each memory-saving rewrite against the plain formula it replaces.
"""

from __future__ import annotations

import copy

import cv2
import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from carbench.models.backbones.vit import AttentionMean, block_forward, head_averaged_attention
from carbench.models.proposals import clip_es
from carbench.models.proposals.clip_es import (
    ClipESProposer,
    _attention_parts,
    affinity,
    box_mask,
    minmax,
    transition,
)


class StackedMapWatch(TorchDispatchMode):
    """Records the shape of every operator output whose last two dims are token×token (N or N−1)
    and that holds more than one such map: a per-head, per-block or per-query stack of N×N maps.
    Also records calls to torch's fused inference attention, which forms all heads' [B, heads, N, N]
    scores inside one operator where no output shows them."""

    FUSED = ("aten._native_multi_head_attention",)

    def __init__(self, n_tokens: int) -> None:
        super().__init__()
        self.sizes = {n_tokens, n_tokens - 1}
        self.stacks: list[tuple[str, tuple[int, ...]]] = []
        self.maps = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if str(func).startswith(self.FUSED):
            self.stacks.append((str(func), ()))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] in self.sizes and t.shape[-2] in self.sizes:
                self.maps += 1
                if t.numel() > t.shape[-1] * t.shape[-2]:
                    self.stacks.append((str(func), tuple(t.shape)))
        return out


def large_scene(h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(5)
    img = (rng.random((h, w, 3)) * 200 + 20).astype(np.uint8)
    img[h // 4 : h // 2, w // 3 : 2 * w // 3] = (200, 40, 30)
    return img


def test_proposer_never_forms_a_stack_of_token_maps(tiny_backbone):
    """Refinement on, every block in the affinity, 6 queries + background, several heads: every N×N
    tensor the proposer's operators produce is a single map (the watch itself is checked to see them)."""
    bb = tiny_backbone
    assert bb.blocks[-1].attn.num_heads > 1, "the tiny preset must have several heads for this test to mean much"
    image = large_scene(160, 224)  # patch 16 on the tiny preset → 10×14 grid, N = 141
    prop = ClipESProposer(bb, affinity_blocks=len(bb.blocks), query_chunk=4)
    texts, bg = ["cat", "red box", "dog", "tree", "car", "sky blue"], ["ground", "wall"]
    prop.text_matrix(texts, bg)  # text embeddings outside the watch: they have nothing to do with N
    n_tokens = 1 + (160 // bb.patch_size) * (224 // bb.patch_size)
    with StackedMapWatch(n_tokens) as watch:
        prop.propose_texts(image, texts, bg)
    assert watch.maps >= len(bb.blocks) * bb.blocks[-1].attn.num_heads, "the watch saw no attention maps"
    assert watch.stacks == [], f"stacked token×token tensors were formed: {watch.stacks[:5]}"


def test_watch_catches_the_unbounded_formulas(tiny_backbone):
    """The watch is not blind: torch's own head-averaged attention and a stack of block maps are caught."""
    attn = copy.deepcopy(tiny_backbone.blocks[-1].attn).requires_grad_(True)  # trainable: torch's generic path
    y = torch.randn(1, 50, attn.embed_dim)
    with StackedMapWatch(50) as watch, torch.enable_grad():
        attn(y, y, y, need_weights=True, average_attn_weights=True)  # forms all heads' weights at once
    assert any(shape[-3] == attn.num_heads for _, shape in watch.stacks)
    with StackedMapWatch(50) as watch:
        torch.stack([torch.rand(1, 50, 50) for _ in range(3)]).mean(0)
    assert (3, 1, 50, 50) in [shape for _, shape in watch.stacks]
    with StackedMapWatch(50) as watch, torch.no_grad():
        tiny_backbone.blocks[-1](y)  # open_clip's own block at inference: torch's fused attention
    assert [name for name, _ in watch.stacks if name.startswith(StackedMapWatch.FUSED)]


def test_block_forward_by_head_equals_open_clip_block(tiny_backbone):
    block = tiny_backbone.blocks[0]
    x = torch.randn(2, 41, block.attn.embed_dim, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        out, attn = block_forward(block, x, need_attn=False, by_head=True)
        torch.testing.assert_close(out, block(x), rtol=1e-6, atol=1e-6)
    assert attn is None


def test_head_averaged_attention_equals_torch(tiny_backbone):
    attn = tiny_backbone.blocks[1].attn
    gen = torch.Generator().manual_seed(1)
    for bsz, n in ((1, 37), (3, 22)):
        y = torch.randn(bsz, n, attn.embed_dim, generator=gen)
        with torch.no_grad():
            ref_out, ref_w = attn(y, y, y, need_weights=True, average_attn_weights=True)
            out, w = head_averaged_attention(attn, y)
        torch.testing.assert_close(out, ref_out, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(w, ref_w, rtol=1e-6, atol=1e-7)


def test_attention_mean_equals_mean_of_stacked_maps():
    gen = torch.Generator().manual_seed(2)
    maps = [torch.softmax(torch.randn(2, 30, 30, generator=gen), -1) for _ in range(5)]
    acc = AttentionMean()
    for m in maps:
        acc.add(m)
    torch.testing.assert_close(acc.mean(), torch.stack(maps).mean(0), rtol=1e-6, atol=1e-7)
    assert acc.count == 5


def test_transition_equals_out_of_place_formula():
    gen = torch.Generator().manual_seed(4)
    mean = torch.softmax(torch.randn(26, 26, generator=gen), -1)
    w = mean[1:, 1:]
    for _ in range(3):
        w = w / w.sum(0, keepdim=True)
        w = w / w.sum(1, keepdim=True)
    s = (w + w.T) / 2
    before = mean.clone()
    assert torch.equal(transition(mean), s @ s)  # the same operations, partly in place: the same bits
    assert torch.equal(mean, before), "transition() must not normalise its input in place"


def test_masked_refine_equals_masking_the_transition():
    """trans @ (mask·cam) against (trans·mask) @ cam: mask entries are 0 or 1, so the products are the
    same (the matrix-vector kernel may still sum them in another order: equal to float rounding)."""
    gen = torch.Generator().manual_seed(6)
    trans = torch.rand(300, 300, generator=gen)
    cam = torch.rand(300, generator=gen)
    mask = torch.rand(300, generator=gen) > 0.5
    ours = trans @ (mask.float() * cam)
    torch.testing.assert_close(ours, (trans * mask[None, :].float()) @ cam, rtol=1e-6, atol=0)
    assert not torch.allclose(ours, trans @ cam, rtol=1e-3), "the mask must matter in this example"


def test_attention_parts_equal_full_probability_formula(tiny_backbone):
    attn = tiny_backbone.blocks[-1].attn
    a = torch.randn(29, attn.embed_dim, generator=torch.Generator().manual_seed(8))
    parts = _attention_parts(attn, a)
    h, n, dh = parts.q.shape
    p = ((parts.q * dh**-0.5) @ parts.k.transpose(-1, -2)).softmax(-1)  # all heads at once
    torch.testing.assert_close(parts.o, p @ parts.v, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(parts.p_cls, p[:, :, 0], rtol=1e-6, atol=1e-7)


def reference_proposals(prop: ClipESProposer, image: np.ndarray, texts: list[str], bg: list[str]) -> np.ndarray:
    """The refinement by the plain formulas: every block's map kept in a list, `affinity` of the list,
    and the box mask applied to the transition matrix's columns."""
    bb = prop.backbone
    L = len(bb.blocks)
    with torch.no_grad():
        tokens, grid = bb.embed(prop.cam_input(image))
        x_in, maps = bb.run_blocks(tokens, 0, L - 1, attn_from=max(0, L - prop.affinity_blocks))
        maps.append(block_forward(bb.blocks[-1], x_in, need_attn=True)[1])
        a_in = bb.blocks[-1].ln_1(x_in)
    cams = minmax(clip_es.last_block_grad_cams(bb, a_in, x_in, prop.text_matrix(texts, bg), len(texts), grid, 8))
    trans = affinity(maps)
    refined = []
    for cam in cams:
        mask = torch.from_numpy(box_mask(cam.numpy(), prop.lam, prop.box_end_quirk)).flatten().float()
        refined.append(((trans * mask[None, :]) @ cam.flatten()).view(grid))
    h, w = image.shape[:2]
    grid_maps = minmax(torch.stack(refined)).numpy()
    return np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) for m in grid_maps]).clip(0, 1)


def test_bounded_proposer_equals_plain_formulas(tiny_backbone, scene):
    """End to end on a small image: the same proposals as the list-of-maps, masked-transition formulas."""
    prop = ClipESProposer(tiny_backbone, query_chunk=8)
    texts, bg = ["cat", "red box", "dog"], ["sky"]
    ref = reference_proposals(prop, scene, texts, bg)
    assert ref.max() > 0.5, "the reference proposals are empty: the comparison would prove nothing"
    np.testing.assert_allclose(prop.propose_texts(scene, texts, bg), ref, atol=1e-5)


def test_backward_chunk_bounds_the_batched_backward():
    vitb16_width = 3072  # ViT-B/16's MLP width
    assert clip_es.backward_chunk(8193, vitb16_width) == 2  # 2048×1024: 0.4 GB of temporaries per query
    assert clip_es.backward_chunk(197, vitb16_width) >= 32  # 224×224: every query of a default chunk at once
    assert clip_es.backward_chunk(10**7, vitb16_width) == 1  # never zero
    assert clip_es.backward_chunk(8193, vitb16_width, budget_bytes=4 << 30) == 10


def test_split_backward_gives_the_same_cams(tiny_backbone, scene, monkeypatch):
    """Queries split over several batched backwards (as a large image forces) give the maps of one backward."""
    prop = ClipESProposer(tiny_backbone, refine=False, query_chunk=5)
    texts, bg = ["cat", "red box", "dog", "tree", "car"], ["sky"]
    whole = prop.propose_texts(scene, texts, bg)
    sizes = []
    real = clip_es._output_cotangents
    monkeypatch.setattr(clip_es, "backward_chunk", lambda n, width: 2)
    monkeypatch.setattr(clip_es, "_output_cotangents", lambda p, a, first, m: sizes.append(m) or real(p, a, first, m))
    split = prop.propose_texts(scene, texts, bg)
    assert sizes == [2, 2, 1]
    np.testing.assert_allclose(split, whole, atol=1e-5)
