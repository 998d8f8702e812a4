"""`build_reco(cfg, postprocess, pool)`: conf/model/reco.yaml → a `ReCo` segmenter.

Only translates config into constructor arguments (every part is built by its own class and
passed in). Keys nobody reads are an error, except CaR's settings that dataset configs set for
every model (`SHARED_KEYS`), which ReCo does not use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from carbench.models.presets import get_preset
from carbench.models.recurrent import PostProcess
from carbench.reco.archive import open_archive
from carbench.reco.index import (
    EmbeddingIndex,
    StaleIndexError,
    build_index,
    default_index_dir,
    open_index,
    remove_index,
)
from carbench.reco.references import ReferenceStore
from carbench.reco.segmenter import ReCo

RECO_KEYS = {
    "name", "archive", "index", "retrieval_clip", "retrieval_clip_pretrained", "retrieval_templates", "k",
    "dense_backbone", "dense_checkpoint", "dense_ref_size", "text_clip", "text_clip_pretrained", "templates",
    "text_attention", "dense_clip_inference", "temperature", "context_elimination", "context_categories",
    "background_queries", "knn_block", "knn_backend", "batch_size", "cache_dir", "amp",
}
#: CaR's knobs the dataset configs set under `model.` for whichever model runs; ReCo ignores them.
SHARED_KEYS = {
    "proposal", "classifier", "mask_threshold", "confidence_threshold", "clipes_threshold", "visual_prompts",
    "affinity_blocks", "double_softmax", "two_pass", "mask_rule", "referring_min_area", "clean",
}


def imagenet80_or(templates: list[str] | str) -> list[str]:
    if templates == "imagenet80":
        from carbench.models.protocols import imagenet_templates

        return imagenet_templates()
    if isinstance(templates, str):
        raise ValueError(f"model.retrieval_templates={templates!r}: give a list of templates or 'imagenet80'")
    return list(templates)


def dense_backbone(cfg: dict[str, Any], pool, retrieval):
    """`dense_backbone`: auto (toy CLIP tokens for the toy preset, else DINO ViT-S/16), clip_tokens:PRESET,
    or timm:NAME."""
    from carbench.reco.dense import TIMM_DEFAULT, TimmDense, ToyClipDense

    spec = str(cfg.get("dense_backbone", "auto"))
    if spec == "auto":
        spec = f"clip_tokens:{retrieval.preset.name}" if retrieval.preset.builder == "toy" else f"timm:{TIMM_DEFAULT}"
    kind, _, name = spec.partition(":")
    ref = cfg.get("dense_ref_size")
    if kind == "clip_tokens" and name:
        get_preset(name)
        return ToyClipDense(pool.get(name, None), ref)
    if kind == "timm" and name:
        return TimmDense(name, cfg.get("dense_checkpoint"), pool.device, cfg.get("cache_dir"), ref or 224)
    raise ValueError(f"model.dense_backbone={spec!r}: use auto, timm:NAME (e.g. timm:{TIMM_DEFAULT}) "
                     "or clip_tokens:PRESET (e.g. clip_tokens:toy)")


PAPER_RETRIEVAL_CLIP = "vitl14_336"  # the authors retrieve with ViT-L/14@336px


def resolve_auto(cfg: dict[str, Any]) -> dict[str, Any]:
    """`auto` settings: the toy world's own parts when the dataset runs the toy CLIP (model.proposal=toy),
    else the paper's (ViT-L/14@336 retrieval, 80 ImageNet templates, the proposal CLIP as dense CLIP)."""
    cfg = dict(cfg)
    proposal = cfg.get("proposal") or "vitb16"
    toy = get_preset(proposal).builder == "toy"
    if cfg.get("retrieval_clip", "auto") == "auto":
        cfg["retrieval_clip"] = proposal if toy else PAPER_RETRIEVAL_CLIP
    if cfg.get("text_clip", "auto") == "auto":
        cfg["text_clip"] = proposal
    if cfg.get("retrieval_templates", "auto") == "auto":
        cfg["retrieval_templates"] = list(cfg.get("templates") or ["{}"]) if toy else "imagenet80"
    if cfg.get("archive", "auto") == "auto":
        if not toy:
            raise ValueError("model=reco needs an archive to retrieve from: set model.archive=/path/to/ImageNet/train "
                             "(the paper's archive: a folder of images or a file list) and build its index "
                             "(python -m carbench.reco.index ARCHIVE --preset vitl14_336)")
        cfg["archive"] = "toy"
    return cfg


def toy_index(archive, retrieval, index_dir: Path) -> EmbeddingIndex:
    """The index of carbench's own synthetic archive, built on first use and again once it is stale
    (another retrieval CLIP, retrained toy weights, another archive size): carbench wrote that
    index, so it may replace it; an index of a user's archive is only ever refused (`open_index`).
    An interrupted build is started over rather than resumed: it may be of other weights, and the
    toy archive is quick to encode."""
    want = (index_dir, retrieval.preset.name, archive, retrieval.weights_sha256())
    try:
        return open_index(*want)
    except FileNotFoundError:
        pass
    except (StaleIndexError, RuntimeError):  # stale, or an unfinished build
        remove_index(index_dir)
    build_index(archive, retrieval, index_dir, progress=False)
    return open_index(*want)


def build_reco(cfg: dict[str, Any], postprocess: PostProcess | None, pool) -> ReCo:
    unknown = sorted(set(cfg) - RECO_KEYS - SHARED_KEYS)
    if unknown:
        raise ValueError(f"unknown model=reco key(s) {unknown}; valid: {', '.join(sorted(RECO_KEYS))}")
    from carbench.models.baselines.dense_clip import DenseClip

    cfg = resolve_auto(cfg)
    preset = cfg["retrieval_clip"]
    get_preset(preset)
    archive = open_archive(cfg["archive"])
    index_dir = Path(cfg["index"]) if cfg.get("index") else default_index_dir(archive.spec, preset)
    retrieval = pool.get(preset, cfg.get("retrieval_clip_pretrained"))
    if archive.spec.startswith("toy"):
        index = toy_index(archive, retrieval, index_dir)
    else:
        index = open_index(index_dir, preset, archive, retrieval.weights_sha256())
    text_clip = None
    if cfg.get("text_attention", True) or cfg.get("dense_clip_inference", True):
        name = cfg["text_clip"]
        get_preset(name)
        text_clip = DenseClip(pool.get(name, cfg.get("text_clip_pretrained")), templates=cfg.get("templates") or ["{}"],
                              attention="maskclip", amp=str(cfg.get("amp", "auto")))
    dense = dense_backbone(cfg, pool, retrieval)
    background = list(cfg.get("background_queries") or [])
    context = cfg.get("context_categories")
    context = background if context is None else list(context)
    temperature = float(cfg.get("temperature", 10.0))
    store = ReferenceStore(
        index, archive, retrieval, imagenet80_or(cfg["retrieval_templates"]), dense,
        k=int(cfg.get("k", 50)),
        text_clip=text_clip if cfg.get("text_attention", True) else None,
        temperature=temperature,
        context_categories=context if cfg.get("context_elimination", True) else (),
        knn_block=int(cfg.get("knn_block", 65536)), knn_backend=str(cfg.get("knn_backend", "auto")),
        batch=int(cfg.get("batch_size", 16)),
    )
    return ReCo(store, dense, text_clip if cfg.get("dense_clip_inference", True) else None,
                dense_clip_inference=bool(cfg.get("dense_clip_inference", True)), temperature=temperature,
                background_queries=background, postprocess=postprocess)
