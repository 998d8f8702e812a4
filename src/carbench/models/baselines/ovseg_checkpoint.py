"""OVSeg's mask-adapted CLIP ViT-L/14 → an open_clip model (+ its mask-prompt tokens).

OVSeg (Liang et al., CVPR 2023) releases its mask-adapted CLIP inside the detectron2 checkpoint
of the whole model, `ovseg_swinbase_vitL14_ft_mpt.pth` (facebookresearch/ov-seg, GETTING_STARTED:
Google Drive, md5 526080…): `{"model": {...}}` where the CLIP lives under the prefix
`clip_adapter.clip_model.` in OpenAI CLIP's own key layout, next to the MaskFormer keys
(`backbone.*`, `sem_seg_head.*`) and `clip_adapter.non_object_embedding`. The fine-tuned CLIP
also carries `visual.mask_embedding` [depth=3, grid², width]: OVSeg's *mask prompt tuning*
tokens, which replace the patch tokens of the blank (masked-out) area of a masked region.

The open_clip ViT-L-14-quickgelu architecture uses the same key names as OpenAI CLIP, so the
mapping is: unwrap the container, keep the `clip_adapter.clip_model.` keys without the prefix
(or a plain CLIP state dict, with an optional DDP `module.` prefix, as OVSeg's CLIP fine-tuning
writes), drop OpenAI's non-tensor metadata keys, take `visual.mask_embedding` out, and load the
rest strictly: every open_clip parameter must be present with its exact shape, and no CLIP key
may be left over. Anything else is an error naming the keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import open_clip
import torch

from carbench.models.backbones.checkpoint_io import safe_torch_load
from carbench.models.checkpoints import CheckpointError, resolve_checkpoint

OVSEG_CLIP_PREFIX = "clip_adapter.clip_model."
MASK_EMBEDDING_KEY = "visual.mask_embedding"
OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
OVSEG_PUBLISHED = (
    "facebookresearch/ov-seg GETTING_STARTED.md (ovseg_swinbase_vitL14_ft_mpt.pth, Google Drive id "
    "1cn-ohxgXDrDfkzC1QdO-fi8IjbjXmgKy)"
)
#: OVSeg's mask-prompt depth (MODEL.CLIP_ADAPTER.MASK_PROMPT_DEPTH in its configs).
OVSEG_MASK_PROMPT_DEPTH = 3


class OVSegCheckpointError(CheckpointError):
    """An OVSeg checkpoint is missing or does not map onto the open_clip architecture."""


def split_ovseg_state_dict(raw: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, str]:
    """(CLIP state dict in OpenAI key layout, mask-prompt tokens or None, source format name)."""
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
        raw = raw["model"]  # detectron2 checkpoint
    elif isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]  # OVSeg's open_clip fine-tuning checkpoint
    if not isinstance(raw, dict):
        raise OVSegCheckpointError(f"not a state dict (got {type(raw).__name__})")
    if any(k.startswith(OVSEG_CLIP_PREFIX) for k in raw):
        fmt = "ovseg-detectron2"
        sd = {k[len(OVSEG_CLIP_PREFIX):]: v for k, v in raw.items() if k.startswith(OVSEG_CLIP_PREFIX)}
    else:
        fmt = "clip"
        sd = {k.removeprefix("module."): v for k, v in raw.items()}
    for key in OPENAI_METADATA_KEYS:
        sd.pop(key, None)
    mask_embedding = sd.pop(MASK_EMBEDDING_KEY, None)
    return sd, mask_embedding, fmt


def openai_to_open_clip(sd: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Map OpenAI-layout CLIP keys onto `model` (open_clip `CLIP`), checking names and shapes."""
    target = model.state_dict()
    missing = sorted(set(target) - set(sd))
    unexpected = sorted(set(sd) - set(target))
    wrong = sorted(k for k in set(sd) & set(target) if tuple(sd[k].shape) != tuple(target[k].shape))
    if missing or unexpected or wrong:
        parts = []
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)):
            if keys:
                shown = ", ".join(keys[:8]) + (f" … (+{len(keys) - 8})" if len(keys) > 8 else "")
                parts.append(f"{name}: {shown}")
        raise OVSegCheckpointError("CLIP keys do not fit the open_clip architecture — " + "; ".join(parts))
    return {k: sd[k].to(target[k].dtype) for k in target}


def check_mask_embedding(mask_embedding: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """Mask-prompt tokens must be [depth, grid², width] of the ViT they belong to."""
    visual = model.visual
    grid = visual.grid_size[0] * visual.grid_size[1]
    width = visual.class_embedding.shape[-1]
    if mask_embedding.ndim != 3 or tuple(mask_embedding.shape[1:]) not in ((grid, width), (1, width)):
        raise OVSegCheckpointError(
            f"{MASK_EMBEDDING_KEY} has shape {tuple(mask_embedding.shape)}, expected [depth, {grid} or 1, {width}]"
        )
    return mask_embedding.float()


def load_ovseg_clip(arch: str, pretrained: str | None, seed: int = 0,
                    what: str = "OVSeg CLIP") -> tuple[torch.nn.Module, torch.Tensor | None]:
    """open_clip `arch` with OVSeg's weights (`pretrained` = file name or path), and its mask tokens.

    `pretrained=None` gives a seeded random model with zero mask tokens (OVSeg's initial value) —
    only the test presets use that.
    """
    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None)
    if pretrained is None:
        v = model.visual
        tokens = torch.zeros(OVSEG_MASK_PROMPT_DEPTH, v.grid_size[0] * v.grid_size[1], v.class_embedding.shape[-1])
        return model, tokens
    path: Path = resolve_checkpoint(pretrained, what, OVSEG_PUBLISHED, OVSegCheckpointError)
    raw = safe_torch_load(path)  # weights_only, never a full unpickle; clear errors for bad files
    try:
        sd, mask_embedding, _ = split_ovseg_state_dict(raw)
        model.load_state_dict(openai_to_open_clip(sd, model), strict=True)
        if mask_embedding is not None:
            mask_embedding = check_mask_embedding(mask_embedding, model)
    except OVSegCheckpointError as err:
        raise OVSegCheckpointError(f"{what}: checkpoint {path} does not fit {arch}: {err}") from None
    return model, mask_embedding
