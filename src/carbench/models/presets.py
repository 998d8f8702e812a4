"""The one table of CLIP backbone presets that `model.proposal` / `model.classifier` name.

A preset pins an open_clip architecture, the default weights (an open_clip pretrained tag, a
local checkpoint path, or `None` for a seeded random init) and the classifier input size, so
`python evaluate.py model.classifier=vitl14` means exactly one thing. How a preset is turned into a
model is its `builder` kind's job (`carbench.models.backbones.registry`). The paper uses OpenAI's
weights, which were trained with QuickGELU: their presets name the `-quickgelu` architectures
so the activation matches the checkpoint (a plain `ViT-B-16` + `openai` silently differs).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackbonePreset:
    name: str
    arch: str  # open_clip model config name
    pretrained: str | None  # open_clip tag, local checkpoint path, or None = random init (seeded)
    image_size: int  # classifier input size (short-side resize + centre crop)
    builder: str = "open_clip"  # a kind in backbones/registry.py: "open_clip", "toy" (our tiny CLIP), "ovseg"
    note: str = ""


PRESETS: dict[str, BackbonePreset] = {
    p.name: p
    for p in [
        # Real CLIPs, OpenAI weights as in the paper (docs/method.md §1.1).
        BackbonePreset("vitb16", "ViT-B-16-quickgelu", "openai", 224, note="paper: proposals, RefCOCO classifier"),
        BackbonePreset("vitb32", "ViT-B-32-quickgelu", "openai", 224),
        BackbonePreset("vitl14", "ViT-L-14-quickgelu", "openai", 224, note="paper: semantic classifier"),
        BackbonePreset("vitl14_336", "ViT-L-14-336-quickgelu", "openai", 336),
        # Same architectures, random init: timing and benchmarks without weights.
        BackbonePreset("vitb16_random", "ViT-B-16-quickgelu", None, 224, note="random init, for timing"),
        BackbonePreset("vitl14_random", "ViT-L-14-quickgelu", None, 224, note="random init, for timing"),
        # Small random-init model with the real open_clip tokenizer: fast tests of the whole path.
        BackbonePreset("tiny_random", "carbench-tiny", None, 224, note="random init, for tests"),
        # The project's own tiny CLIP trained on the toy world (carbench.toy).
        BackbonePreset("toy", "carbench-toy", "bundled", 96, builder="toy", note="trained on toy scenes"),
        BackbonePreset("toy_classifier", "carbench-toy", "bundled-classifier", 96, builder="toy",
                       note="the toy CLIP fine-tuned on CaR's prompted proposals (toy/train_classifier.py)"),
        # OVSeg's mask-adapted CLIP (local file; key mapping in models/baselines/ovseg_checkpoint.py).
        BackbonePreset("ovseg_vitl14", "ViT-L-14-quickgelu", "ovseg_swinbase_vitL14_ft_mpt.pth", 224, builder="ovseg",
                       note="OVSeg mask-adapted CLIP ViT-L/14"),
        BackbonePreset("ovseg_tiny_random", "carbench-tiny", None, 224, builder="ovseg",
                       note="random init + zero mask-prompt tokens, for tests"),
    ]
}


def get_preset(name: str) -> BackbonePreset:
    """Look a preset up by name; an unknown name lists the valid ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown backbone preset {name!r}; valid presets: {', '.join(sorted(PRESETS))} "
            "(set model.proposal / model.classifier to one of them; defined in src/carbench/models/presets.py)"
        ) from None


def register_preset(preset: BackbonePreset) -> BackbonePreset:
    """Add a preset (e.g. one whose `builder` is a kind registered from user code); names are unique."""
    if preset.name in PRESETS:
        raise ValueError(f"backbone preset {preset.name!r} already exists ({PRESETS[preset.name]}); choose another name")
    PRESETS[preset.name] = preset
    return preset
