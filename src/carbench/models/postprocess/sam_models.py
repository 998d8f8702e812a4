"""SAM / HQ-SAM model presets, checkpoint resolution and the automatic mask generator.

Shared by the SAM refinement of CaR (`postprocess=sam`, docs/method.md §1.6) and the OVSeg-style
baseline (class-agnostic SAM proposals). Like CLIP presets (`models/presets.py`), a SAM preset
names an architecture and the checkpoint file it needs; the file is found at an explicit path or
by name in the checkpoint folders, and a missing file is an error that names the file, every place
looked at, and where the file is published — never a silent random init.

Two packages provide the architectures (both pip-installable, no weights inside):
- `segment-anything` (Meta): presets `sam_vit_h|l|b`;
- `segment-anything-hq` (SysCV HQ-SAM, the paper's choice: `sam_hq_vit_h.pth`): `hq_vit_h|l|b`.
`tiny_random` / `hq_tiny_random` are seeded random-init SAMs with a 2-block, 64-px image encoder,
built from the same modeling classes, so the real mask-generator code runs in tests in seconds.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from carbench.models.checkpoints import CheckpointError, resolve_checkpoint

SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
HQ_URL = "https://github.com/SysCV/sam-hq#model-checkpoints (Google Drive / huggingface.co/lkeab/hq-sam)"


@dataclass(frozen=True)
class SamPreset:
    name: str
    package: str  # "segment_anything" | "segment_anything_hq"
    variant: str  # key of the package's sam_model_registry, or "tiny"
    checkpoint: str | None  # file name of the published checkpoint; None = seeded random init
    published: str = ""  # where the checkpoint can be downloaded


SAM_PRESETS: dict[str, SamPreset] = {
    p.name: p
    for p in [
        SamPreset("sam_vit_h", "segment_anything", "vit_h", "sam_vit_h_4b8939.pth", SAM_URL + "sam_vit_h_4b8939.pth"),
        SamPreset("sam_vit_l", "segment_anything", "vit_l", "sam_vit_l_0b3195.pth", SAM_URL + "sam_vit_l_0b3195.pth"),
        SamPreset("sam_vit_b", "segment_anything", "vit_b", "sam_vit_b_01ec64.pth", SAM_URL + "sam_vit_b_01ec64.pth"),
        # HQ-SAM ViT-H: the checkpoint of the paper's CaR+SAM rows (docs/method.md §1.6).
        SamPreset("hq_vit_h", "segment_anything_hq", "vit_h", "sam_hq_vit_h.pth", HQ_URL),
        SamPreset("hq_vit_l", "segment_anything_hq", "vit_l", "sam_hq_vit_l.pth", HQ_URL),
        SamPreset("hq_vit_b", "segment_anything_hq", "vit_b", "sam_hq_vit_b.pth", HQ_URL),
        SamPreset("tiny_random", "segment_anything", "tiny", None, "random init, for tests"),
        SamPreset("hq_tiny_random", "segment_anything_hq", "tiny", None, "random init, for tests"),
    ]
}

PIP_NAMES = {"segment_anything": "segment-anything", "segment_anything_hq": "segment-anything-hq"}


class SamCheckpointError(CheckpointError):
    """A SAM checkpoint is missing, or does not fit the preset's architecture."""


def get_sam_preset(name: str) -> SamPreset:
    try:
        return SAM_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown SAM preset {name!r}; valid: {', '.join(SAM_PRESETS)}") from None


def import_sam_package(package: str) -> Any:
    """Import `segment_anything` or `segment_anything_hq`, or say exactly what to pip install."""
    try:
        with warnings.catch_warnings():  # segment_anything_hq imports deprecated timm paths at import time
            warnings.simplefilter("ignore")
            if package == "segment_anything_hq":
                import segment_anything_hq as mod
            else:
                import segment_anything as mod
    except ImportError as err:
        raise ImportError(
            f"SAM refinement needs the {package!r} package: pip install {PIP_NAMES[package]} ({err})"
        ) from err
    return mod


def _tiny_sam(package: str, seed: int) -> torch.nn.Module:
    """A seeded random SAM (64-px input, 2-block ViT, 32-d prompts) from the package's own classes."""
    mod = import_sam_package(package)
    m = mod.modeling
    torch.manual_seed(seed)
    img, patch, dim, prompt = 64, 16, 32, 32
    encoder = m.ImageEncoderViT(
        depth=2, embed_dim=dim, img_size=img, mlp_ratio=2, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=2, patch_size=patch, qkv_bias=True, use_rel_pos=True, global_attn_indexes=[1],
        window_size=2, out_chans=prompt,
    )
    grid = img // patch
    prompt_encoder = m.PromptEncoder(
        embed_dim=prompt, image_embedding_size=(grid, grid), input_image_size=(img, img), mask_in_chans=4
    )
    transformer = m.TwoWayTransformer(depth=1, embedding_dim=prompt, mlp_dim=64, num_heads=2)
    common = {"num_multimask_outputs": 3, "transformer": transformer, "transformer_dim": prompt,
              "iou_head_depth": 2, "iou_head_hidden_dim": 32}
    if package == "segment_anything_hq":
        decoder = m.MaskDecoderHQ(vit_dim=dim, **common)
    else:
        decoder = m.MaskDecoder(**common)
    return m.Sam(image_encoder=encoder, prompt_encoder=prompt_encoder, mask_decoder=decoder).eval()


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (weights_only: a checkpoint never runs code on load)."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    if not isinstance(sd, dict):
        raise SamCheckpointError(f"{path} does not hold a state dict (got {type(sd).__name__})")
    return sd


def build_sam(preset_name: str, checkpoint: str | None = None, device: str | torch.device = "cpu",
              seed: int = 0) -> torch.nn.Module:
    """The SAM a preset names, with its weights loaded strictly (a wrong variant is an error)."""
    preset = get_sam_preset(preset_name)
    if preset.variant == "tiny":
        if checkpoint is not None:
            raise ValueError(f"SAM preset {preset.name!r} is a random-init test model; it takes no checkpoint")
        return _tiny_sam(preset.package, seed).to(device)
    path = resolve_checkpoint(
        checkpoint or str(preset.checkpoint), f"SAM preset {preset.name!r}", preset.published, SamCheckpointError
    )
    mod = import_sam_package(preset.package)
    sam = mod.sam_model_registry[preset.variant](checkpoint=None)
    sd = load_state_dict_file(path)
    try:
        sam.load_state_dict(sd, strict=True)
    except RuntimeError as err:
        hq_keys = any(k.startswith("mask_decoder.hf_token") for k in sd)
        hint = ""
        if hq_keys and preset.package == "segment_anything":
            hint = f" It is an HQ-SAM checkpoint: use preset hq_{preset.variant}."
        elif not hq_keys and preset.package == "segment_anything_hq":
            hint = f" It is a plain SAM checkpoint: use preset sam_{preset.variant}."
        raise SamCheckpointError(
            f"checkpoint {path} does not fit SAM preset {preset.name!r}.{hint} "
            f"{str(err).splitlines()[0][:300]}"
        ) from err
    return sam.eval().to(device)


@dataclass
class AutoMaskParams:
    """SamAutomaticMaskGenerator settings; defaults are CaR's official VOC config (docs/method.md §1.6)."""

    points_per_side: int = 64  # configs/voc.yaml (the class default is 32)
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    min_mask_region_area: int = 0


class AutoMasker:
    """Class-agnostic masks of an image: SAM's automatic mask generator → bool N×H×W (largest first)."""

    def __init__(self, sam: torch.nn.Module, package: str, params: AutoMaskParams | None = None) -> None:
        self.params = params or AutoMaskParams()
        mod = import_sam_package(package)
        p = self.params
        self.generator = mod.SamAutomaticMaskGenerator(
            model=sam, points_per_side=p.points_per_side, points_per_batch=p.points_per_batch,
            pred_iou_thresh=p.pred_iou_thresh, stability_score_thresh=p.stability_score_thresh,
            box_nms_thresh=p.box_nms_thresh, crop_n_layers=p.crop_n_layers,
            min_mask_region_area=p.min_mask_region_area, output_mode="binary_mask",
        )

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> np.ndarray:
        records = self.generator.generate(np.ascontiguousarray(image))
        h, w = image.shape[:2]
        if not records:
            return np.zeros((0, h, w), dtype=bool)
        records = sorted(records, key=lambda r: -int(r["area"]))
        return np.stack([np.asarray(r["segmentation"], dtype=bool) for r in records])


MaskSource = Callable[[np.ndarray], np.ndarray]  # image → bool N×H×W class-agnostic masks


def build_auto_masker(preset: str, checkpoint: str | None, device: str | torch.device, seed: int,
                      params: AutoMaskParams) -> AutoMasker:
    sam = build_sam(preset, checkpoint, device, seed)
    return AutoMasker(sam, get_sam_preset(preset).package, params)
