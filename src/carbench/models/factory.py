"""`build_segmenter(model_cfg, postprocess_cfg)`: a model section of the config turns into a model.

A new model is one builder registered here plus one yaml in conf/model/. Runs go through
`models.build.build_model`, which adds what depends on the rest of the config (referring wrapper,
two passes). CaR's proposer and scorer come from their `_target_` nodes (models/car_config.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from carbench.models.backbones.registry import load_clip
from carbench.models.backbones.vit import ClipBackbone
from carbench.models.car_config import COMPONENTS, build_component, complete_model_cfg
from carbench.models.fidelity import resolve_fidelity
from carbench.models.postprocess.pool import resolve_workers
from carbench.models.presets import get_preset
from carbench.models.prompts import import_prompt_modules
from carbench.models.recurrent import CaR, PostProcess
from carbench.types import Segmenter

CAM_TYPES = {"clip_es": True, "gradcam": False}  # model.cam alias: name → CLIP-ES refinement on/off
CLIP_ES_TARGET = "carbench.models.proposals.clip_es.ClipESProposer"


def _plain(cfg: Mapping | DictConfig | None) -> dict[str, Any]:
    if cfg is None:
        return {}
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    # a dict may hold config nodes whose relative interpolations (`${..proposal}`) must resolve
    # against THIS dict's values (the demo overrides keys of cfg.model), so re-root it first
    return OmegaConf.to_container(OmegaConf.create(dict(cfg)), resolve=True)  # type: ignore[return-value]


def build_postprocess(
    cfg: Mapping | DictConfig | None, device: torch.device | str = "cpu", seed: int = 0
) -> PostProcess | None:
    cfg = _plain(cfg)
    name = cfg.pop("name", "none")
    if name == "none":
        return None
    if name == "crf":
        from carbench.models.postprocess.crf import CRFParams, DenseCRF

        return DenseCRF(CRFParams(**cfg))
    if name == "sam":
        return build_sam_refine(cfg, device, seed)
    raise ValueError(f"unknown postprocess {name!r}; valid: crf, none, sam")


def build_sam_refine(cfg: dict[str, Any], device: torch.device | str, seed: int) -> PostProcess:
    """CRF (`crf:` sub-config, null = binarise at 0.5) then SAM matching (docs/method.md §1.6)."""
    from carbench.models.postprocess.sam import SamMatchParams, SamRefine
    from carbench.models.postprocess.sam_models import AutoMaskParams, build_auto_masker

    crf = cfg.pop("crf", None)
    base = build_postprocess({"name": "crf", **crf}) if crf is not None else None
    match = SamMatchParams(**cfg.pop("match", {}))
    masker = build_auto_masker(cfg.pop("preset", "hq_vit_h"), cfg.pop("checkpoint", None), device, seed,
                               AutoMaskParams(**cfg.pop("generator", {})))
    if cfg:
        raise ValueError(f"unknown postprocess=sam keys {sorted(cfg)}; valid: preset, checkpoint, generator, match, crf")
    return SamRefine(masker, base, match)


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

    def loaded(self) -> list[ClipBackbone]:
        """Every backbone loaded so far (the builder sets run-wide switches on each)."""
        return list(self._loaded.values())


IMPLS = ("fast", "reference")


def build_car(cfg: dict[str, Any], postprocess: PostProcess | None, pool: BackbonePool) -> CaR:
    """CaR from config: the proposer and scorer from their `_target_` nodes (models/car_config.py),
    the recurrence's own settings from the model section.

    `impl=reference` rebuilds the official code's structure (text re-encoded at every call, images
    re-encoded per template, one backward per query, no step reuse) — same outputs, used as the
    baseline of the speed benchmark and the equivalence tests."""
    cfg = complete_model_cfg(cfg, str(cfg.get("name", "car")))
    if cfg["impl"] not in IMPLS:
        raise ValueError(f"unknown model.impl {cfg['impl']!r}; valid: {', '.join(IMPLS)}")
    ref = cfg["impl"] == "reference"
    apply_cam_alias(cfg)
    for role in COMPONENTS:  # config errors before any weights are loaded
        backbone = cfg[role].get("backbone")
        if backbone is not None:
            get_preset(backbone)
    import_prompt_modules(cfg["prompt_modules"])  # a user's prompts register themselves on import
    quirks = resolve_fidelity(cfg)  # model.fidelity + the per-behaviour switches (models/fidelity.py)
    offered_proposer = {"box_end_quirk": quirks["box_end_quirk"], "pil_resize": quirks["cam_pil_resize_quirk"],
                        "amp": str(cfg["amp"]), **({"query_chunk": 1} if ref else {})}
    proposer = build_component(cfg["proposer"], "proposer", pool, offered_proposer)
    classifier = build_component(cfg["scorer"], "scorer", pool, {"encode_per_template": ref, "amp": str(cfg["amp"])})
    for bb in pool.loaded():
        bb.cache_text = not ref
        bb.pos_embed_fp16 = quirks["pos_embed_fp16_quirk"]
    return CaR(
        proposer,
        classifier,
        mask_threshold=cfg["mask_threshold"],
        confidence_threshold=cfg["confidence_threshold"],
        visual_prompts=cfg["visual_prompts"],
        postprocess=postprocess,
        max_steps=cfg["max_steps"],
        background_queries=cfg["background_queries"] or (),
        device=pool.device,
        prompt_kwargs={
            "gray_bgr_quirk": cfg["gray_bgr_quirk"],
            "centroid_trunc_quirk": quirks["centroid_trunc_quirk"],
        },
        reuse_unchanged_step=not ref,
        amp=str(cfg["amp"]),
        postprocess_workers=0 if ref else resolve_workers(cfg["postprocess_workers"], pool.device),
        fallback_unfiltered_quirk=quirks["fallback_unfiltered_quirk"],
        crf_one_hot_quirk=quirks["crf_one_hot_quirk"],
    )


def apply_cam_alias(cfg: dict[str, Any]) -> None:
    """`model.cam=clip_es|gradcam`, kept for old commands, sets the CLIP-ES proposer's refinement."""
    cam = cfg.get("cam")
    if cam is None:
        return
    if cam not in CAM_TYPES:
        raise ValueError(f"unknown model.cam {cam!r}; valid: {', '.join(CAM_TYPES)} "
                         "(or choose the proposer itself: model/proposer=clip_es|gradcam|dense_maskclip|dense_sclip)")
    if cfg["proposer"].get("_target_") != CLIP_ES_TARGET:
        raise ValueError(f"model.cam={cam} switches the CLIP-ES proposer, but model.proposer is "
                         f"{cfg['proposer'].get('_target_')}; drop model.cam and use model/proposer=…")
    cfg["proposer"]["refine"] = CAM_TYPES[cam]


def build_dense_clip(cfg: dict[str, Any], postprocess: PostProcess | None, pool: BackbonePool) -> Segmenter:
    """MaskCLIP / SCLIP-style dense patch classification (models/baselines/dense_clip.py)."""
    from carbench.models.baselines.dense_clip import DenseClip

    get_preset(cfg["backbone"])
    return DenseClip(
        pool.get(cfg["backbone"], cfg.get("backbone_pretrained")),
        templates=cfg.get("templates", ["a clean origami {}."]),
        background_queries=cfg.get("background_queries") or (),
        attention=cfg.get("attention", "maskclip"),
        keep_residual=cfg.get("keep_residual", True),
        logit_scale=cfg.get("logit_scale"),
        prob_threshold=cfg.get("prob_threshold", 0.0),
        amp=str(cfg.get("amp", "auto")),
        postprocess=postprocess,
    )


def build_ovseg(cfg: dict[str, Any], postprocess: PostProcess | None, pool: BackbonePool) -> Segmenter:
    """SAM proposals + (mask-adapted) CLIP region classification (models/baselines/ovseg.py)."""
    from carbench.models.baselines.ovseg import OVSegStyle
    from carbench.models.postprocess.sam_models import AutoMaskParams, build_auto_masker

    get_preset(cfg["clip"])
    backbone = pool.get(cfg["clip"], cfg.get("clip_pretrained"))
    sam = dict(cfg.get("sam") or {})
    masker = build_auto_masker(sam.get("preset", "sam_vit_h"), sam.get("checkpoint"), pool.device, pool.seed,
                               AutoMaskParams(**(sam.get("generator") or {})))
    return OVSegStyle(
        backbone,
        masker,
        templates=cfg.get("templates", ["a clean origami {}."]),
        background_queries=cfg.get("background_queries") or (),
        mask_prompt=cfg.get("mask_prompt", True),
        expand_ratio=cfg.get("expand_ratio", 1.0),
        logit_scale=cfg.get("logit_scale"),
        prob_threshold=cfg.get("prob_threshold", 0.0),
        amp=str(cfg.get("amp", "auto")),
        postprocess=postprocess,
    )


def _clip_es(cfg: dict[str, Any], postprocess: PostProcess | None, pool: BackbonePool) -> Segmenter:
    from carbench.models.baselines.clip_es import clip_es_config

    return build_car(clip_es_config(cfg), postprocess, pool)


def _precomputed(cfg: dict[str, Any], postprocess: PostProcess | None, pool: BackbonePool) -> Segmenter:
    from carbench.models.precomputed import build_precomputed

    return build_precomputed(cfg, postprocess, pool)


def _reco(cfg: dict[str, Any], postprocess: PostProcess | None, pool: BackbonePool) -> Segmenter:
    from carbench.reco.build import build_reco

    return build_reco(cfg, postprocess, pool)


MODELS: dict[str, Callable[[dict[str, Any], PostProcess | None, BackbonePool], Segmenter]] = {
    "car": build_car,
    "clip_es": _clip_es,
    "dense_clip": build_dense_clip,
    "ovseg": build_ovseg,
    "precomputed": _precomputed,
    "reco": _reco,
}


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
    from carbench.models.protocols import build_protocol

    protocol = cfg.pop("protocol", None)  # conf/protocol/*.yaml put it here (model.protocol)
    pool = BackbonePool(torch.device(device), seed=seed, cache_dir=cfg.get("cache_dir"))
    segmenter = MODELS[name](cfg, build_postprocess(postprocess_cfg, pool.device, seed), pool)
    return build_protocol(protocol, segmenter)
