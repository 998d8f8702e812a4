"""Finding an open_clip model's weights and loading them: local file, offline cache, or download.

The weights a preset names are an open_clip pretrained tag (looked up in the Hugging Face and
`~/.cache/clip` caches without touching the network, then downloaded unless offline), a local
checkpoint path, or `None` (a seeded random init, for timing and tests). Missing weights fail at
start with `PretrainedWeightsError`, naming the preset, the tag and every place looked at. Files
are always read through `checkpoint_io.read_checkpoint`, never by open_clip's own loader.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import open_clip
import torch

from carbench.models.backbones.checkpoint_io import CHECKPOINT_SUFFIXES, read_checkpoint
from carbench.models.presets import PRESETS, BackbonePreset

__all__ = ["OFFLINE_ENV_VARS", "PretrainedWeightsError", "build_open_clip", "cached_tag_file", "is_offline"]

#: Either variable set to a true value turns downloads off (a missing file is then an error at start).
OFFLINE_ENV_VARS = ("HF_HUB_OFFLINE", "CARBENCH_OFFLINE")


class PretrainedWeightsError(FileNotFoundError):
    """The weights a preset asks for are not available (offline, not cached, bad path)."""


@contextlib.contextmanager
def _quiet_random_init() -> Iterator[None]:
    """Silence open_clip's "initialized randomly" warning when weights are loaded right after."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _presets_of_arch(arch: str) -> list[str]:
    return sorted(n for n, p in PRESETS.items() if p.arch == arch)


def _load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], preset: BackbonePreset, source: str) -> None:
    """open_clip's `load_checkpoint` massaging (3rd-party key conversion, position-embedding resize),
    applied to a state dict that was read safely; strict, so a wrong architecture is an error."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import resize_pos_embed, resize_text_pos_embed

    state = convert_state_dict(model, dict(state))
    if "logit_scale" in state and model.logit_scale.ndim != state["logit_scale"].ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    state.pop("text.transformer.embeddings.position_ids", None)
    for key in ("input_resolution", "context_length", "vocab_size"):  # OpenAI TorchScript extras, as open_clip
        state.pop(key, None)
    try:
        resize_pos_embed(state, model)
        resize_text_pos_embed(state, model)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, ValueError) as err:  # missing/unexpected keys or shape mismatch
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()] or [type(err).__name__]
        detail = "; ".join(lines[1:3] if len(lines) > 1 else lines)[:400].rstrip(".")  # torch: header, then mismatches
        raise ValueError(
            f"preset {preset.name!r}: checkpoint {source!r} does not fit architecture {preset.arch}: {detail}. "
            f"Use a checkpoint of {preset.arch}, or choose the preset of the checkpoint's architecture "
            f"(presets of {preset.arch}: {', '.join(_presets_of_arch(preset.arch))}; all presets are in "
            "src/carbench/models/presets.py)."
        ) from err


def _create_with_weights(preset: BackbonePreset, checkpoint: Path, preprocess: dict | None = None):
    """Build `preset.arch` and load `checkpoint` into it through `read_checkpoint` (never open_clip's loader)."""
    state = read_checkpoint(checkpoint)
    with _quiet_random_init():
        model = open_clip.create_model(preset.arch, pretrained=None, force_preprocess_cfg=preprocess or {})
    _load_weights(model, state, preset, str(checkpoint))
    return model


def _is_path(pretrained: str) -> bool:
    return os.sep in pretrained or pretrained.endswith(CHECKPOINT_SUFFIXES) or pretrained.startswith("~")


def cached_tag_file(arch: str, tag: str, cache_dir: str | None) -> tuple[str | None, list[str]]:
    """Find an open_clip tag's checkpoint in the local caches without touching the network.

    Returns (path or None, the places looked at), so an error can say where it looked.
    """
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    looked: list[str] = []
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.constants import HF_HUB_CACHE

        repo_id, filename = os.path.split(hub)  # open_clip's own convention: "org/repo/[file]"
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for name in names:
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
            looked.append(f"{cache_dir or HF_HUB_CACHE} (hf-hub {repo_id}/{name})")
            if isinstance(found, str) and os.path.isfile(found):
                return found, looked
    url = cfg.get("url", "")
    if url:
        local = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        looked.append(str(local))
        if local.is_file():
            return str(local), looked
    return None, looked


def is_offline() -> bool:
    """True when `HF_HUB_OFFLINE` or `CARBENCH_OFFLINE` is set to a true value: no downloads."""
    return any(os.environ.get(var, "0") not in ("0", "", "false", "False") for var in OFFLINE_ENV_VARS)


def build_open_clip(preset: BackbonePreset, pretrained: str | None, cache_dir: str | None, seed: int):
    """An open_clip `CLIP` of `preset.arch` with the weights `pretrained` names (see the module docstring)."""
    arch = preset.arch
    if pretrained is None:
        torch.manual_seed(seed)
        return open_clip.create_model(arch, pretrained=None)
    if _is_path(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            what = "is a directory, not a checkpoint file" if path.is_dir() else "does not exist"
            raise PretrainedWeightsError(
                f"preset {preset.name!r}: checkpoint file {str(path)!r} {what}. Point "
                f"model.{{proposal,classifier}}_pretrained at an open_clip checkpoint of {arch} "
                "(state dict, .bin/.pt/.safetensors), or use an open_clip pretrained tag."
            )
        return _create_with_weights(preset, path)
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if pretrained not in tags:
        raise ValueError(
            f"preset {preset.name!r}: open_clip has no pretrained tag {pretrained!r} for {arch}; "
            f"valid tags: {', '.join(tags) or '(none)'}"
        )
    tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    preprocess = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
    found, looked = cached_tag_file(arch, pretrained, cache_dir)
    if found:
        return _create_with_weights(preset, Path(found), preprocess)
    hint = (
        f"Fetch it on a machine with internet: python -c \"import open_clip; "
        f"open_clip.create_model('{arch}', pretrained='{pretrained}')\" (fills the Hugging Face cache; "
        f"copy ~/.cache/huggingface over), or download the checkpoint and set "
        f"model.<proposal|classifier>_pretrained=/path/to/file."
    )
    if is_offline():
        raise PretrainedWeightsError(
            f"preset {preset.name!r} needs open_clip weights {arch}/{pretrained}, which are not cached, "
            f"and downloads are off (HF_HUB_OFFLINE/CARBENCH_OFFLINE). Looked in: {'; '.join(looked)}. {hint}"
        )
    try:  # download only; the file is then read by read_checkpoint like any other
        downloaded = open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir)
        if not downloaded:
            raise FileNotFoundError(f"open_clip returned no file for {arch}/{pretrained}")
    except Exception as err:  # network errors come in many types (requests, urllib, hf_hub)
        raise PretrainedWeightsError(
            f"preset {preset.name!r} needs open_clip weights {arch}/{pretrained}: not cached and the "
            f"download failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
            f"Looked in: {'; '.join(looked)}. {hint}"
        ) from err
    return _create_with_weights(preset, Path(downloaded), preprocess)
