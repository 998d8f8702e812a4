"""open_clip loading and the ViT access CaR needs.

`load_clip(preset)` is the one place a CLIP is built: it resolves the preset's weights (an
open_clip tag found in the local cache or downloaded, a local checkpoint, the bundled toy model,
or a seeded random init) and fails at start, naming where it looked, when they are missing.

`ClipBackbone` wraps the model with what CaR needs beyond `encode_image`: native-resolution input
with bilinearly interpolated positional embeddings, per-block head-averaged attention maps, the
input of the last block (for Grad-CAM), and cached text embeddings with template averaging.
open_clip >= 2.24 runs its transformers batch-first ([B, tokens, width]); the CLS token is token 0.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

from carbench.models.presets import BackbonePreset, get_preset

_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(_CONFIG_DIR)

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


class PretrainedWeightsError(FileNotFoundError):
    """The weights a preset asks for are not available (offline, not cached, bad path)."""


class UnsafeCheckpointError(ValueError):
    """A checkpoint that cannot be read as plain tensors without running code from it: refused.

    Pickle can run arbitrary code while loading, and TorchScript archives carry code. carbench reads
    `.safetensors` files, and other files only with `torch.load(weights_only=True)` — never with a
    fallback to a full unpickle (open_clip's own loader retries without `weights_only` on a TypeError,
    which `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1` turns into code execution).
    """


_CONVERT_HINT = (
    "If you trust the file, convert it once on a trusted machine to a plain state dict, e.g. "
    "python -c \"import torch, safetensors.torch as st; sd = torch.load('IN', weights_only=False); "
    "sd = sd.get('state_dict', sd); st.save_file({k: v.contiguous() for k, v in sd.items()}, 'OUT.safetensors')\" "
    "and point model.<proposal|classifier>_pretrained at OUT.safetensors."
)


def _is_torchscript_archive(path: Path) -> bool:
    """TorchScript zips hold compiled code next to the weights (`constants.pkl`, `code/`)."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _first_sentence(err: BaseException, limit: int = 200) -> str:
    """`Type: first sentence` of an exception, without terminal colour codes (torch adds some)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    reason = re.search(r"WeightsUnpickler error: ([^\n]*)", text)  # torch hides the real reason further down
    text = reason.group(1) if reason else text
    first = re.split(r"(?<=[.!?])\s", text.splitlines()[0] if text else "", maxsplit=1)[0].rstrip(".")
    return f"{type(err).__name__}: {first[:limit]}"


def safe_torch_load(path: str | os.PathLike[str]) -> object:
    """`torch.load(path, weights_only=True)` on CPU with clear errors, and never a retry without it.

    A file that only a full unpickle could read (pickled objects or code, TorchScript) raises
    `UnsafeCheckpointError`; a truncated file or one that is not a PyTorch checkpoint raises `ValueError`.
    """
    path = Path(path)
    name = str(path)
    if _is_torchscript_archive(path):
        raise UnsafeCheckpointError(
            f"checkpoint {name!r} is a TorchScript archive (e.g. OpenAI's original ViT-*.pt), which carries "
            "code; carbench does not load it. Use the open_clip Hugging Face weights of the same model "
            "(pretrained tag, e.g. 'openai', cached under ~/.cache/huggingface) or a state-dict file. "
            + _CONVERT_HINT.replace("torch.load('IN', weights_only=False)", "torch.jit.load('IN').state_dict()")
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(name, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError) as err:  # not a zip / truncated zip / I/O
        raise ValueError(
            f"checkpoint {name!r} cannot be read ({_first_sentence(err)}); it "
            "is truncated or not a PyTorch checkpoint: download it again."
        ) from err
    except Exception as err:  # UnpicklingError, and whatever a crafted stream makes the restricted unpickler raise
        raise UnsafeCheckpointError(
            f"checkpoint {name!r} refused: it cannot be loaded as plain tensors with torch.load(weights_only=True) "
            f"({_first_sentence(err)}). Unpickling it fully could run code from "
            f"the file, which carbench never does. {_CONVERT_HINT}"
        ) from err


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict stored in a checkpoint file, read without ever executing code from the file.

    `.safetensors` is read by safetensors; anything else by `safe_torch_load` (weights_only=True,
    no fallback). A ``{"state_dict": ...}`` wrapper and a DataParallel ``module.`` prefix are undone,
    as open_clip does; anything but a non-empty name → tensor mapping is a `ValueError`.
    """
    path = Path(path)
    name = str(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: object = load_file(name, device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(
                f"checkpoint {name!r} is not a readable safetensors file ({err}); it is truncated or not a "
                "checkpoint: download it again."
            ) from err
    else:
        obj = safe_torch_load(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise ValueError(
            f"checkpoint {name!r} holds a {type(obj).__name__}, not a state dict (name → tensor); save "
            "model.state_dict() and point model.<proposal|classifier>_pretrained at that file."
        )
    not_tensors = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(
            f"checkpoint {name!r} is not a model state dict: entries {not_tensors[:5]} are not tensors (a training "
            "checkpoint?). Save model.state_dict() (or its 'model' entry) and point "
            "model.<proposal|classifier>_pretrained at that file."
        )
    if all(str(k).startswith("module.") for k in obj):
        obj = {str(k)[len("module."):]: v for k, v in obj.items()}
    return {str(k): v for k, v in obj.items()}


@contextlib.contextmanager
def _quiet_random_init() -> Iterator[None]:
    """Silence open_clip's "initialized randomly" warning when weights are loaded right after."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _presets_of_arch(arch: str) -> list[str]:
    from carbench.models.presets import PRESETS

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


def _cached_tag_file(arch: str, tag: str, cache_dir: str | None) -> tuple[str | None, list[str]]:
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


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False") or os.environ.get(
        "CARBENCH_OFFLINE", "0"
    ) not in ("0", "", "false", "False")


def _build_open_clip(preset: BackbonePreset, pretrained: str | None, cache_dir: str | None, seed: int):
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
    found, looked = _cached_tag_file(arch, pretrained, cache_dir)
    if found:
        return _create_with_weights(preset, Path(found), preprocess)
    hint = (
        f"Fetch it on a machine with internet: python -c \"import open_clip; "
        f"open_clip.create_model('{arch}', pretrained='{pretrained}')\" (fills the Hugging Face cache; "
        f"copy ~/.cache/huggingface over), or download the checkpoint and set "
        f"model.<proposal|classifier>_pretrained=/path/to/file."
    )
    if _offline():
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


DEVICE_HINT = "use device=auto (CUDA if available, else CPU), device=cpu, device=cuda or device=cuda:N"


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn `device=auto|cpu|cuda[:i]` into a torch device; asking for CUDA without one is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ValueError(f"device={device!r} is not a device name; {DEVICE_HINT}") from err
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r}: carbench runs on CPU or CUDA only; {DEVICE_HINT}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device={str(device)!r} was asked for but CUDA is not available here; use device=cpu or auto"
            )
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise RuntimeError(
                f"device={str(device)!r} was asked for but this machine has {n} CUDA device(s) "
                f"({'cuda:0' if n == 1 else f'cuda:0 … cuda:{n - 1}'}); use one of them, or device=cuda / auto"
            )
    return dev


def load_clip(
    preset_name: str,
    device: str | torch.device = "cpu",
    pretrained: str | None = None,
    cache_dir: str | None = None,
    seed: int = 0,
) -> ClipBackbone:
    """Build the CLIP a preset names. `pretrained` overrides the preset's default weights."""
    preset = get_preset(preset_name)
    weights = pretrained if pretrained is not None else preset.pretrained
    if preset.builder == "toy":
        from carbench.toy.model import TOY_MEAN, TOY_STD, load_toy_clip

        model, tokenizer = load_toy_clip(None if weights in (None, "bundled") else weights)
        mean, std = TOY_MEAN, TOY_STD
    elif preset.builder == "ovseg":  # OVSeg's detectron2 checkpoint mapped into open_clip
        from carbench.models.baselines.ovseg_checkpoint import load_ovseg_clip

        model, mask_embedding = load_ovseg_clip(preset.arch, weights, seed, what=f"preset {preset.name!r}")
        tokenizer = open_clip.get_tokenizer(preset.arch)
        mean, std = model.visual.image_mean, model.visual.image_std
    else:
        model = _build_open_clip(preset, weights, cache_dir, seed)
        tokenizer = open_clip.get_tokenizer(preset.arch)
        mean, std = model.visual.image_mean, model.visual.image_std
    device = torch.device(device) if isinstance(device, str) else device
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    backbone = ClipBackbone(model, tokenizer, preset, mean=mean, std=std, device=device)
    if preset.builder == "ovseg" and mask_embedding is not None:
        backbone.mask_embedding = mask_embedding.to(device)
    return backbone


def _block_forward(block: torch.nn.Module, x: torch.Tensor, need_attn: bool):
    """One residual block, optionally returning its head-averaged attention map [B, N, N].

    open_clip's block calls attention with need_weights=False; we re-run the same sub-modules in
    the same order to get the weights. Equality with `block(x)` is a unit test.
    """
    if not need_attn:
        return block(x), None
    if not isinstance(block, ResidualAttentionBlock) or hasattr(block, "ln_1_kv"):
        raise NotImplementedError(
            f"attention maps are implemented for open_clip ResidualAttentionBlock, got {type(block).__name__}"
        )
    y = block.ln_1(x)
    out, attn = block.attn(y, y, y, need_weights=True, average_attn_weights=True)
    x = x + block.ls_1(out)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, attn


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
        self.mask_embedding: torch.Tensor | None = None  # OVSeg mask-prompt tokens [depth, grid², width]

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_strings(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised embeddings [N, D] of exact strings, each computed once per backbone."""
        if not self.cache_text:
            self.text_encodes += len(texts)
            return F.normalize(self.model.encode_text(self.tokenize(texts)).float(), dim=-1)
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            tokens = self.tokenize(missing)
            emb = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
            self.text_encodes += len(missing)
            for t, e in zip(missing, emb, strict=True):
                self._text_cache[t] = e
        return torch.stack([self._text_cache[t] for t in texts])

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
        self, tokens: torch.Tensor, start: int = 0, stop: int | None = None, attn_from: int | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run blocks[start:stop]; collect head-averaged attention maps of blocks with index ≥ attn_from."""
        maps = []
        stop = len(self.blocks) if stop is None else stop
        for i in range(start, stop):
            need = attn_from is not None and i >= attn_from
            tokens, attn = _block_forward(self.blocks[i], tokens, need)
            if need:
                maps.append(attn)
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
        tokens, _ = self.embed(batch)
        stop = len(self.blocks) - 1 if skip_last_block else None
        tokens, _ = self.run_blocks(tokens, 0, stop)
        return F.normalize(self.pooled_embedding(tokens).float(), dim=-1)
