"""One table of backbone builders (kind → function) and `load_clip`, the one place a CLIP is built.

A preset's `builder` field names its kind: "open_clip" (any open_clip architecture, weights by tag
or file), "toy" (the project's own tiny CLIP) or "ovseg" (OVSeg's mask-adapted CLIP read from its
detectron2 checkpoint). A new kind is one decorated function; user code can add one without
touching this package:

    from carbench.models.backbones.registry import BuiltClip, register_backbone
    from carbench.models.presets import BackbonePreset, register_preset

    @register_backbone("mine")
    def build_mine(preset, pretrained, cache_dir, seed) -> BuiltClip: ...

    register_preset(BackbonePreset("my_vit", "ViT-B-16", None, 224, builder="mine"))

after which `model.proposal=my_vit` loads through it (import the module before the run, e.g.
from a Hydra `_target_` package or a wrapper script).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch

from carbench.models.backbones.vit import ClipBackbone
from carbench.models.backbones.weights import build_open_clip
from carbench.models.presets import BackbonePreset, get_preset

__all__ = ["BACKBONE_BUILDERS", "BackboneBuilder", "BuiltClip", "load_clip", "register_backbone"]

# The presets' own small architectures (carbench-tiny) are open_clip model configs shipped here.
open_clip.add_model_config(Path(__file__).resolve().parents[1] / "model_configs")


@dataclass
class BuiltClip:
    """What a builder returns: the open_clip model, its tokenizer and input normalisation, and
    (OVSeg only) the mask-prompt tokens [depth, grid², width] that `ClipBackbone` carries."""

    model: torch.nn.Module
    tokenizer: Callable
    mean: Sequence[float] | None = None  # None = OpenAI CLIP's statistics
    std: Sequence[float] | None = None
    mask_embedding: torch.Tensor | None = None


#: (preset, weights = a tag, a path, "bundled" or None, cache_dir, seed) → BuiltClip
BackboneBuilder = Callable[[BackbonePreset, "str | None", "str | None", int], BuiltClip]

BACKBONE_BUILDERS: dict[str, BackboneBuilder] = {}


def register_backbone(kind: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Decorator: make `fn` the builder of presets whose `builder` is `kind`; a kind is registered once."""

    def decorate(fn: BackboneBuilder) -> BackboneBuilder:
        if kind in BACKBONE_BUILDERS:
            raise ValueError(
                f"backbone kind {kind!r} is already registered (by {BACKBONE_BUILDERS[kind].__module__}."
                f"{BACKBONE_BUILDERS[kind].__qualname__}); choose another name"
            )
        BACKBONE_BUILDERS[kind] = fn
        return fn

    return decorate


@register_backbone("open_clip")
def _open_clip(preset: BackbonePreset, pretrained: str | None, cache_dir: str | None, seed: int) -> BuiltClip:
    model = build_open_clip(preset, pretrained, cache_dir, seed)
    return BuiltClip(model, open_clip.get_tokenizer(preset.arch), model.visual.image_mean, model.visual.image_std)


@register_backbone("toy")
def _toy(preset: BackbonePreset, pretrained: str | None, cache_dir: str | None, seed: int) -> BuiltClip:
    from carbench.toy.model import (  # only toy runs pay for it
        BUNDLED_WEIGHTS,
        TOY_MEAN,
        TOY_STD,
        load_toy_clip,
    )

    model, tokenizer = load_toy_clip(BUNDLED_WEIGHTS.get(pretrained or "bundled", pretrained))
    return BuiltClip(model, tokenizer, TOY_MEAN, TOY_STD)


@register_backbone("ovseg")
def _ovseg(preset: BackbonePreset, pretrained: str | None, cache_dir: str | None, seed: int) -> BuiltClip:
    # the detectron2 key mapping is only imported by OVSeg runs
    from carbench.models.baselines.ovseg_checkpoint import load_ovseg_clip

    model, mask_embedding = load_ovseg_clip(preset.arch, pretrained, seed, what=f"preset {preset.name!r}")
    return BuiltClip(model, open_clip.get_tokenizer(preset.arch), model.visual.image_mean, model.visual.image_std,
                     mask_embedding)


def load_clip(
    preset_name: str,
    device: str | torch.device = "cpu",
    pretrained: str | None = None,
    cache_dir: str | None = None,
    seed: int = 0,
) -> ClipBackbone:
    """Build the CLIP a preset names, frozen and in eval mode. `pretrained` overrides the preset's weights."""
    preset = get_preset(preset_name)
    builder = BACKBONE_BUILDERS.get(preset.builder)
    if builder is None:
        raise ValueError(
            f"preset {preset.name!r} names backbone kind {preset.builder!r}, which no builder is registered for; "
            f"registered kinds: {', '.join(sorted(BACKBONE_BUILDERS))} (add one with "
            "carbench.models.backbones.registry.register_backbone)"
        )
    built = builder(preset, pretrained if pretrained is not None else preset.pretrained, cache_dir, seed)
    device = torch.device(device) if isinstance(device, str) else device
    model = built.model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    backbone = ClipBackbone(model, built.tokenizer, preset, mean=built.mean, std=built.std, device=device)
    if built.mask_embedding is not None:
        backbone.mask_embedding = built.mask_embedding.to(device)
    return backbone
