"""`build_segmenter(model_cfg, postprocess_cfg)`: the one place config turns into a model.

A new model is one builder registered here plus one yaml in conf/model/.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from carbench.models.classifier import MaskClassifier
from carbench.models.clip import ClipBackbone, load_clip
from carbench.models.presets import get_preset
from carbench.models.proposals.clip_es import ClipESProposer
from carbench.models.recurrent import CaR, PostProcess
from carbench.types import Segmenter

CAM_TYPES = {"clip_es": True, "gradcam": False}  # name → CLIP-ES refinement on/off


def _plain(cfg: Mapping | DictConfig | None) -> dict[str, Any]:
    if cfg is None:
        return {}
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def build_postprocess(cfg: Mapping | DictConfig | None) -> PostProcess | None:
    cfg = _plain(cfg)
    name = cfg.pop("name", "none")
    if name == "none":
        return None
    if name == "crf":
        from carbench.models.postprocess.crf import CRFParams, DenseCRF

        return DenseCRF(CRFParams(**cfg))
    raise ValueError(f"unknown postprocess {name!r}; valid: crf, none")


class BackbonePool:
    """Loads each (preset, weights) once, so proposal and classifier share a model when they can."""

    def __init__(self, device: torch.device, seed: int = 0, cache_dir: str | None = None) -> None:
        self.device, self.seed, self.cache_dir = device, seed, cache_dir
        self._loaded: dict[tuple[str, str | None], ClipBackbone] = {}

    def get(self, preset: str, pretrained: str | None) -> ClipBackbone:
        key = (preset, pretrained)
        if key not in self._loaded:
            self._loaded[key] = load_clip(preset, self.device, pretrained, self.cache_dir, self.seed)
        return self._loaded[key]


IMPLS = ("fast", "reference")


def build_car(cfg: dict[str, Any], postprocess: PostProcess | None, pool: BackbonePool) -> CaR:
    """CaR from config. `impl=reference` rebuilds the official code's structure (text re-encoded at
    every call, images re-encoded per template, one backward per query, no step reuse) — same
    outputs, used as the baseline of the speed benchmark and the equivalence tests."""
    impl = cfg.get("impl", "fast")
    if impl not in IMPLS:
        raise ValueError(f"unknown model.impl {impl!r}; valid: {', '.join(IMPLS)}")
    ref = impl == "reference"
    cam = cfg.get("cam", "clip_es")
    if cam not in CAM_TYPES:
        raise ValueError(f"unknown model.cam {cam!r}; valid: {', '.join(CAM_TYPES)}")
    for key in ("proposal", "classifier"):  # config errors before any weights are loaded
        get_preset(cfg[key])
    proposer = ClipESProposer(
        pool.get(cfg["proposal"], cfg.get("proposal_pretrained")),
        background_queries=cfg.get("background_queries") or (),
        clipes_threshold=cfg.get("clipes_threshold", 0.4),
        refine=CAM_TYPES[cam],
        cam_template=cfg.get("cam_template", "a clean origami {}."),
        affinity_blocks=cfg.get("affinity_blocks", 8),
        query_chunk=1 if ref else cfg.get("query_chunk", 32),
    )
    classifier = MaskClassifier(
        pool.get(cfg["classifier"], cfg.get("classifier_pretrained")),
        templates=cfg.get("templates") or ["a clean origami {}."],
        double_softmax=cfg.get("double_softmax", True),
        skip_last_block=cfg.get("classifier_skip_last_block", True),
        center_crop=cfg.get("classifier_center_crop", True),
        encode_per_template=ref,
    )
    for bb in (proposer.backbone, classifier.backbone):
        bb.cache_text = not ref
    return CaR(
        proposer,
        classifier,
        mask_threshold=cfg.get("mask_threshold", 0.4),
        confidence_threshold=cfg.get("confidence_threshold", 0.6),
        visual_prompts=cfg.get("visual_prompts", ("circle", "blur")),
        postprocess=postprocess,
        max_steps=cfg.get("max_steps"),
        cam_text_quirk=cfg.get("cam_text_quirk", True),
        prompt_kwargs={"gray_bgr_quirk": cfg.get("gray_bgr_quirk", True)},
        reuse_unchanged_step=not ref,
        amp=str(cfg.get("amp", "auto")),
    )


MODELS: dict[str, Callable[[dict[str, Any], PostProcess | None, BackbonePool], Segmenter]] = {"car": build_car}


def build_segmenter(
    model_cfg: Mapping | DictConfig,
    postprocess_cfg: Mapping | DictConfig | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> Segmenter:
    cfg = _plain(model_cfg)
    name = cfg.get("name", "car")
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    pool = BackbonePool(torch.device(device), seed=seed, cache_dir=cfg.get("cache_dir"))
    return MODELS[name](cfg, build_postprocess(postprocess_cfg), pool)
