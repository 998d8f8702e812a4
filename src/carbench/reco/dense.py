"""Dense backbones for ReCo's co-segmentation and inference: image → grid of feature vectors.

- `TimmDense`: a self-supervised ViT through timm, by default DINO ViT-S/16
  (`vit_small_patch16_224.dino`, one of the backbones the ReCo paper compares). Weights come from a
  local file (`checkpoint=`, safetensors or a plain state dict, never unpickled objects) or the
  Hugging Face cache timm uses (`timm/<name>`, file `model.safetensors`). Offline with neither,
  it fails naming the file and every place it looked; online, timm downloads it.
- `ToyClipDense`: the toy world's stand-in. The toy benchmark ships no self-supervised ViT, so the
  patch tokens of the toy CLIP's last block (after `ln_post`, before the projection) play that
  role; they were trained only contrastively on toy scenes (see the package docstring).

Both return L2-normalisable features [B, h, w, C] for reference images (resized and centre-cropped
to `ref_size`, as the authors' retrieval loader does) and [h, w, C] for a test image at its native
resolution snapped to the patch grid.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from carbench.models.backbones.weights import is_offline  # the one reading of the offline flags
from carbench.reco.index import clip_input

TIMM_DEFAULT = "vit_small_patch16_224.dino"
WEIGHTS_FILE = "model.safetensors"


class DenseBackbone(Protocol):
    name: str
    patch_size: int
    ref_size: int

    def reference_features(self, images: list[np.ndarray]) -> torch.Tensor: ...  # [B, h, w, C]

    def image_features(self, image: np.ndarray) -> torch.Tensor: ...  # [h, w, C]


def _snap(image: np.ndarray, patch: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Native-resolution input, bicubically resized to the next multiple of the patch size."""
    h, w = image.shape[:2]
    size = (math.ceil(h / patch) * patch, math.ceil(w / patch) * patch)
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].float().to(mean.device) / 255.0
    if size != (h, w):
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp_(0, 1)
    return (x - mean) / std


def find_timm_weights(name: str, cache_dir: str | None = None) -> tuple[Path | None, list[str]]:
    """The cached `model.safetensors` of timm model `name` (HF repo timm/<name>), and where we looked."""
    repo = f"timm/{name}"
    looked = []
    try:
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:
        return None, ["huggingface_hub is not installed"]
    for cdir in [cache_dir, HF_HUB_CACHE] if cache_dir else [HF_HUB_CACHE]:
        looked.append(f"{cdir}/models--{repo.replace('/', '--')}/snapshots/*/{WEIGHTS_FILE}")
        hit = try_to_load_from_cache(repo, WEIGHTS_FILE, cache_dir=cdir)
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit), looked
    return None, looked


class TimmDense:
    """Patch tokens of the last block (after the final norm) of a timm ViT."""

    def __init__(self, name: str = TIMM_DEFAULT, checkpoint: str | None = None, device: str | torch.device = "cpu",
                 cache_dir: str | None = None, ref_size: int = 224) -> None:
        try:
            import timm
        except ImportError as err:
            raise ImportError("model.dense_backbone=timm:… needs timm; pip install timm (pyproject lists it)") from err
        from carbench.models.backbones.checkpoint_io import read_checkpoint

        self.name, self.ref_size, self.device = f"timm:{name}", ref_size, torch.device(device)
        if name not in timm.list_models(pretrained=True) and name not in timm.list_models():
            raise ValueError(f"model.dense_backbone: timm has no model {name!r}; e.g. {TIMM_DEFAULT}, "
                             "vit_base_patch16_224.dino")
        model = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True)
        if checkpoint is not None:
            path = Path(checkpoint).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"model.dense_checkpoint={checkpoint}: no such file; give the path of the "
                                        f"{name} weights (safetensors or state dict)")
            state = read_checkpoint(path)
        else:
            path, looked = find_timm_weights(name, cache_dir)
            if path is None and is_offline():
                raise FileNotFoundError(
                    f"dense backbone {name}: weights file {WEIGHTS_FILE} of Hugging Face repo timm/{name} not found "
                    f"offline; looked in: {'; '.join(looked)}. Fill the cache on a machine with internet "
                    f"(python -c \"import timm; timm.create_model('{name}', pretrained=True)\") and copy "
                    "~/.cache/huggingface, or set model.dense_checkpoint=/path/to/model.safetensors")
            if path is None:
                model = timm.create_model(name, pretrained=True, num_classes=0, dynamic_img_size=True)
                state = None
            else:
                state = read_checkpoint(path)
        if state is not None:
            missing, unexpected = model.load_state_dict(state, strict=False)
            bad = [k for k in missing if not k.startswith("head")]
            if bad:
                raise ValueError(f"dense backbone {name}: checkpoint {path} lacks {len(bad)} weights, e.g. {bad[:3]}; "
                                 "is it the right model?")
        self.model = model.to(self.device).eval().requires_grad_(False)
        cfg = model.pretrained_cfg
        self.mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), device=self.device).view(1, 3, 1, 1)
        ps = model.patch_embed.patch_size
        self.patch_size = int(ps[0] if isinstance(ps, tuple) else ps)

    @torch.no_grad()
    def _grid(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.model.forward_features(x)[:, self.model.num_prefix_tokens:]
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        return tokens.reshape(x.shape[0], h, w, -1).float()

    def reference_features(self, images: list[np.ndarray]) -> torch.Tensor:
        return self._grid(clip_input(images, self.ref_size, self.mean, self.std))

    def image_features(self, image: np.ndarray) -> torch.Tensor:
        return self._grid(_snap(image, self.patch_size, self.mean, self.std))[0]


class ToyClipDense:
    """The toy CLIP's last-block patch tokens after ln_post (the toy world's stand-in for DINO)."""

    def __init__(self, backbone, ref_size: int | None = None) -> None:
        self.backbone = backbone
        self.name = f"clip_tokens:{backbone.preset.name}"
        self.patch_size = backbone.patch_size
        self.ref_size = ref_size or backbone.preset.image_size

    @torch.no_grad()
    def _grid(self, x: torch.Tensor) -> torch.Tensor:
        bb = self.backbone
        tokens, (gh, gw) = bb.embed(x)
        tokens, _ = bb.run_blocks(tokens)
        return bb.visual.ln_post(tokens[:, 1:]).reshape(x.shape[0], gh, gw, -1).float()

    def reference_features(self, images: list[np.ndarray]) -> torch.Tensor:
        bb = self.backbone
        return self._grid(clip_input(images, self.ref_size, bb.mean, bb.std))

    def image_features(self, image: np.ndarray) -> torch.Tensor:
        return self._grid(self.backbone.to_input(image))[0]
