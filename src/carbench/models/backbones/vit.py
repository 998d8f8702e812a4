"""`ClipBackbone`: a frozen open_clip ViT plus the token-level access CaR's stages need.

Beyond `encode_image`, CaR needs native-resolution input with bilinearly interpolated positional
embeddings, per-block head-averaged attention maps, the input of the last block (for Grad-CAM), and
text embeddings cached per exact string with template averaging. open_clip >= 2.24 runs its
transformers batch-first ([B, tokens, width]); the CLS token is token 0. How the model was built
and where its weights came from is `registry.load_clip`'s business, not this module's.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

from carbench.models.presets import BackbonePreset

__all__ = ["AttentionMean", "ClipBackbone", "block_forward", "head_averaged_attention", "is_packed_attention"]


def is_packed_attention(attn: object) -> bool:
    """True for the batch-first, packed nn.MultiheadAttention without extra key/value biases that open_clip's
    ResidualAttentionBlock uses: the one layout the head-by-head attention and the closed-form backward handle."""
    return (
        isinstance(attn, torch.nn.MultiheadAttention)
        and attn.batch_first
        and attn._qkv_same_embed_dim
        and attn.bias_k is None
        and not attn.add_zero_attn
    )


def block_forward(block: torch.nn.Module, x: torch.Tensor, need_attn: bool, by_head: bool = False):
    """One residual block, optionally returning its head-averaged attention map [B, N, N].

    open_clip's block calls attention with need_weights=False; we re-run the same sub-modules in
    the same order to get the weights (`head_averaged_attention`). Equality with `block(x)` is a
    unit test. `by_head=True` runs the attention one head at a time even without the map: torch's
    inference path forms all heads' [B, heads, N, N] scores at once (3.2 GB at N = 8193, 12 heads).
    """
    if not need_attn and not by_head:
        return block(x), None
    if not isinstance(block, ResidualAttentionBlock) or hasattr(block, "ln_1_kv"):
        raise NotImplementedError(
            f"attention maps are implemented for open_clip ResidualAttentionBlock, got {type(block).__name__}"
        )
    out, attn = head_averaged_attention(block.attn, block.ln_1(x), need_weights=need_attn)
    x = x + block.ls_1(out)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, attn


def head_averaged_attention(
    attn: torch.nn.MultiheadAttention, y: torch.Tensor, need_weights: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Self-attention output [B, N, C] and head-averaged weights [B, N, N] of `attn` on tokens y [B, N, C]
    (None for `need_weights=False`).

    The operations of torch's inference path for nn.MultiheadAttention (need_weights=True,
    average_attn_weights=True), in its order, except that the weights are formed one head at a time
    and summed into the average as they go. torch forms all heads' [B, heads, N, N] scores at once
    (3.2 GB for a 2048×1024 image on ViT-B/16: N = 8193, 12 heads; twice that on its autograd
    path), where this keeps three [N, N] maps alive (0.8 GB). Output and average equal torch's to
    float rounding (bit for bit on one image in our checks; a unit test compares them).
    """
    if not is_packed_attention(attn):
        raise NotImplementedError(
            f"head-averaged attention maps need a batch-first, packed nn.MultiheadAttention without extra "
            f"key/value biases (open_clip's ResidualAttentionBlock), got {type(attn).__name__}"
        )
    bsz, n, c = y.shape
    heads = attn.num_heads
    dh = c // heads
    qkv = F.linear(y, attn.in_proj_weight, attn.in_proj_bias)  # batch-first, as torch's inference path
    q, k, v = qkv.view(bsz, n, 3, heads, dh).permute(2, 0, 3, 1, 4)  # each [B, heads, N, dh]
    q = q * math.sqrt(1.0 / float(dh))
    out = torch.empty_like(q)
    avg = q.new_empty(bsz, n, n) if need_weights else None
    for b in range(bsz):
        for h in range(heads):
            w = (q[b, h] @ k[b, h].transpose(-2, -1)).softmax(-1)  # [N, N]: one head's weights
            out[b, h] = w @ v[b, h]
            if avg is not None and h == 0:
                avg[b].copy_(w)
            elif avg is not None:
                avg[b].add_(w)
            del w
        if avg is not None:
            avg[b].div_(heads)  # torch averages heads as their sum divided by their number
    out = F.linear(out.transpose(1, 2).reshape(bsz, n, c), attn.out_proj.weight, attn.out_proj.bias)
    return out, avg


class AttentionMean:
    """Running mean of head-averaged attention maps [B, N, N] over blocks, in float32.

    CLIP-ES's affinity uses the mean of the last blocks' maps; keeping each map until the end would
    hold one N×N per block (8 × 268 MB at 2048×1024 on ViT-B/16), the running sum holds one.
    Summing in block order then dividing is the stacked maps' mean up to float rounding (torch's
    reduction over a stacked dimension may add in another order).
    """

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, attn: torch.Tensor) -> None:
        """Fold one block's map into the sum (the map itself can be freed afterwards)."""
        if self.total is None:
            self.total = attn.float().clone()
        else:
            self.total.add_(attn.float())
        self.count += 1

    def mean(self) -> torch.Tensor:
        """The mean map [B, N, N] (computed in place: the sum is not kept)."""
        if self.total is None:
            raise ValueError("AttentionMean.mean(): no attention map was added")
        total, self.total = self.total, None
        return total.div_(self.count)


class ClipBackbone:
    """A frozen open_clip CLIP plus the token-level access CaR's stages need."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Callable,
        preset: BackbonePreset,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        device: torch.device,
    ) -> None:
        visual = model.visual
        if not isinstance(visual, VisionTransformer):
            raise TypeError(f"preset {preset.name!r}: CaR needs a ViT image tower, got {type(visual).__name__}")
        self.model = model
        self.visual = visual
        self.tokenizer = tokenizer
        self.preset = preset
        self.device = device
        mean = mean or open_clip.OPENAI_DATASET_MEAN
        std = std or open_clip.OPENAI_DATASET_STD
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        ps = visual.patch_size
        self.patch_size: int = ps[0] if isinstance(ps, tuple) else int(ps)
        self.blocks = list(visual.transformer.resblocks)
        self.logit_scale = float(model.logit_scale.exp().item())
        self._text_cache: dict[str, torch.Tensor] = {}
        self._warned: set[str] = set()
        self.cache_text = True  # False = the official structure: re-encode every string on every call
        self.pos_embed_fp16 = False  # True = round the positional table to fp16 as the official code does
        self.text_encodes = 0  # number of strings actually run through the text tower (for tests/bench)
        self.text_chunk = 256  # strings per text-tower batch: bounds memory for large vocabularies
        self.mask_embedding: torch.Tensor | None = None  # OVSeg mask-prompt tokens [depth, grid², width]
        self._weights_sha256: str | None = None

    def weights_sha256(self) -> str:
        """sha256 of the model's parameters and buffers: each one's name, shape and float32 bytes, in
        state-dict order.

        What identifies the weights' content whichever file, tag or builder they came from, and on
        whichever device they sit, so that a ReCo index (carbench.reco.index) records the CLIP its
        embeddings came from and is refused by another one. Computed once: the backbone is frozen.
        """
        if self._weights_sha256 is None:
            h = hashlib.sha256()
            for name, tensor in self.model.state_dict().items():
                h.update(f"{name}|{tuple(tensor.shape)}|".encode())
                h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._weights_sha256 = h.hexdigest()
        return self._weights_sha256

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_strings(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised embeddings [N, D] of exact strings, each computed once per backbone."""
        if not self.cache_text:
            self.text_encodes += len(texts)
            return self._encode_chunked(texts)
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            emb = self._encode_chunked(missing)
            self.text_encodes += len(missing)
            for t, e in zip(missing, emb, strict=True):
                self._text_cache[t] = e
        return torch.stack([self._text_cache[t] for t in texts])

    def _encode_chunked(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalised embeddings [N, D], run through the text tower `text_chunk` strings at a time.

        A large vocabulary times the templates (847 queries × 15 = 12,705 strings) in one batch would
        hold every layer's activations for all of them at once; chunks bound that, and each string's
        embedding does not depend on the others in its batch, so the output is the same.
        """
        if self.text_chunk < 1:
            raise ValueError(f"text_chunk must be ≥ 1 (strings per text-tower batch), got {self.text_chunk}")
        parts = [
            F.normalize(self.model.encode_text(self.tokenize(texts[i:i + self.text_chunk])).float(), dim=-1)
            for i in range(0, max(len(texts), 1), self.text_chunk)  # an empty list still makes one call, as before
        ]
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids [N, context]; a text that fills the whole context was cut: say so, once per text."""
        tokens = self.tokenizer(list(texts))
        full = tokens[:, -1] != 0  # open_clip pads with 0 and puts EOT last when it truncates
        for text in (t for t, f in zip(texts, full.tolist(), strict=True) if f and t not in self._warned):
            self._warned.add(text)
            shown = repr(text[:60]) + ("…" if len(text) > 60 else "")
            warnings.warn(
                f"text {shown} fills the {tokens.shape[1]}-token text context of preset "
                f"{self.preset.name!r} and is truncated there; shorten it if its end matters",
                stacklevel=3,
            )
        return tokens.to(self.device)

    def encode_text(self, queries: Sequence[str], templates: Sequence[str] | None = None) -> torch.Tensor:
        """Per-template embeddings [T, K, D] (T = 1 and the raw query when `templates` is empty)."""
        templates = list(templates) if templates else ["{}"]
        flat = [t.format(q) for t in templates for q in queries]
        return self.encode_strings(flat).view(len(templates), len(queries), -1)

    def encode_text_averaged(self, queries: Sequence[str], templates: Sequence[str] | None = None) -> torch.Tensor:
        """Template-ensembled embeddings [K, D]: mean of normalised embeddings, renormalised (CLIP's recipe)."""
        return F.normalize(self.encode_text(queries, templates).mean(0), dim=-1)

    # ----------------------------------------------------------------- image
    def to_input(self, image: np.ndarray, size: tuple[int, int] | None = None) -> torch.Tensor:
        """uint8 H×W×3 → normalised [1,3,H',W'] with H', W' multiples of the patch size (bicubic).

        Default size = ceil(H/p)·p × ceil(W/p)·p of the native image, as CLIP-ES/CaR do.
        """
        h, w = image.shape[:2]
        p = self.patch_size
        size = size or (math.ceil(h / p) * p, math.ceil(w / p) * p)
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp_(0, 1)
        return (x - self.mean) / self.std

    def _pos_embed(self, gh: int, gw: int) -> torch.Tensor:
        """Positional embeddings for a gh×gw grid: bilinear interpolation of the patch part, CLS kept.

        `pos_embed_fp16` (set by the model factory): the official code always re-interpolates the
        table (even to the native grid) and stores the result, CLS row included, in fp16; on an fp32
        run that rounds every entry to half precision. Precision only (docs/method.md §5.2).
        """
        pos = self.visual.positional_embedding
        g0h, g0w = self.visual.grid_size
        if (gh, gw) != (g0h, g0w):
            cls, patch = pos[:1], pos[1:]
            patch = patch.reshape(1, g0h, g0w, -1).permute(0, 3, 1, 2)
            patch = F.interpolate(patch.float(), size=(gh, gw), mode="bilinear", align_corners=False)
            patch = patch.permute(0, 2, 3, 1).reshape(gh * gw, -1).to(pos.dtype)
            pos = torch.cat([cls, patch], 0)
        if self.pos_embed_fp16:
            pos = pos.half().to(self.visual.positional_embedding.dtype)
        return pos

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patchify + CLS + positional embedding + ln_pre → tokens [B, 1+h·w, width] and the grid."""
        v = self.visual
        feats = v.conv1(x)
        gh, gw = feats.shape[-2:]
        feats = feats.reshape(feats.shape[0], feats.shape[1], -1).permute(0, 2, 1)
        cls = v.class_embedding.to(feats.dtype).expand(feats.shape[0], 1, -1)
        tokens = torch.cat([cls, feats], 1) + self._pos_embed(gh, gw).to(feats.dtype)
        return v.ln_pre(tokens), (int(gh), int(gw))

    def run_blocks(
        self,
        tokens: torch.Tensor,
        start: int = 0,
        stop: int | None = None,
        attn_from: int | None = None,
        attn_mean: AttentionMean | None = None,
        by_head: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run blocks[start:stop]; collect head-averaged attention maps of blocks with index ≥ attn_from.

        The maps are returned as a list, or, when `attn_mean` is given, folded into it instead (the
        list is then empty), so that only one N×N map per image is alive at a time. `by_head=True`
        computes every block's attention one head at a time (see `block_forward`).
        """
        maps = []
        stop = len(self.blocks) if stop is None else stop
        for i in range(start, stop):
            need = attn_from is not None and i >= attn_from
            tokens, attn = block_forward(self.blocks[i], tokens, need, by_head)
            if need and attn_mean is not None:
                attn_mean.add(attn)
            elif need:
                maps.append(attn)
            del attn
        return tokens, maps

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """ln_post + projection of already-pooled tokens [..., width] → [..., D]."""
        x = self.visual.ln_post(pooled)
        return x @ self.visual.proj if self.visual.proj is not None else x

    def patch_mean_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        """CLIP-ES's image embedding for the CAM: mean of ln_post(patch tokens), CLS excluded, projected."""
        x = self.visual.ln_post(tokens[:, 1:]).mean(1)
        return x @ self.visual.proj if self.visual.proj is not None else x

    def pooled_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        """The model's own global embedding, as open_clip computes it: CLS for OpenAI CLIP, or the
        mean of ln_post(patch tokens) for 'avg'-pooled models (such as the toy CLIP)."""
        if self.visual.pool_type == "avg":
            return self.patch_mean_embedding(tokens)
        return self.project(tokens[:, 0])

    @torch.no_grad()
    def encode_images(self, batch: torch.Tensor, skip_last_block: bool = False) -> torch.Tensor:
        """Normalised image embeddings [B, D] of a preprocessed batch.

        `skip_last_block=True` reproduces the official classifier (quirk B): the embedding is taken
        after block L−1, never running the last block.
        """
        return self.image_embeddings(batch, skip_last_block)

    def image_embeddings(self, batch: torch.Tensor, skip_last_block: bool = False) -> torch.Tensor:
        """`encode_images` with autograd left on: what a trainer of the classifier differentiates
        (the toy recipe's stage 3), so training and scoring share one code path."""
        tokens, _ = self.embed(batch)
        stop = len(self.blocks) - 1 if skip_last_block else None
        tokens, _ = self.run_blocks(tokens, 0, stop)
        return F.normalize(self.pooled_embedding(tokens).float(), dim=-1)
