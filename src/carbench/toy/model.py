"""The project's tiny CLIP, trained on the toy world (`carbench.toy.scenes`) and shipped as weights.

Architecture — a real open_clip `CLIP`, so the CaR wrapper reaches it exactly as a real preset:
- open_clip model config ``carbench-toy`` (model_configs/carbench-toy.json), registered with
  ``open_clip.add_model_config`` and built by ``open_clip.create_model("carbench-toy")``.
- Vision: `open_clip.transformer.VisionTransformer`, width 128, 4 batch-first blocks of 4 heads
  (``visual.transformer.resblocks``), CLS token at index 0 of ``positional_embedding``,
  ``class_embedding``, ``ln_post``, ``proj``; image pooling 'avg' (mean of the *patch* tokens after
  ``ln_post``, CLS excluded) — the same embedding CLIP-ES's Grad-CAM reads. Input 96×96, patch 8
  (a 12×12 token grid). The patchify conv ``visual.conv1`` is swapped for a small conv stem (three
  3×3 stride-2 convolutions 3→32→64→128 with GELU; total stride 8 = `TOY_PATCH`), so
  ``visual.conv1(x)`` still maps [B,3,H,W] → [B,128,H/8,W/8]. A plain patch-8 linear patchify
  learned colour instead of shape in our first trained model.
- Text: open_clip's causal text transformer (width 128, 3 layers, context 32) with a word-level
  tokenizer (`ToyTokenizer`): ids 0 = pad, 1 = unknown, 2 = start of text, then the words of
  `VOCAB`, and the end-of-text id last (the highest id) so open_clip's default 'argmax' text
  pooling picks the EOT token. Unknown words map to the unknown id with a warning.
- About 1.6 M parameters (fp16 ≈ 3.3 MB). Normalisation `TOY_MEAN` / `TOY_STD`, also set as
  ``model.visual.image_mean/std`` (open_clip's preprocess attributes).

Training (``python -m carbench.toy.train``, see that module for the full recipe): CLIP's
image-caption contrastive loss on toy scenes (mostly colour-free captions), plus two documented
localisation aids that the evaluation never uses — (1) visually prompted single objects (blur /
grey / black outside a jittered mask, sometimes a red outline, as CaR's classifier sees them)
and background-only regions contrasted against their names / background words; (2) a dense
patch-to-text alignment: each patch token, through the same ``ln_post`` + ``proj`` as the pooled
embedding, is classified against the text embeddings of the class names and background words
with the patch's pixel composition as soft target. The evaluation path (Grad-CAM on the last
block's ``ln_1`` input, softmax over queries + background queries) is untouched.

Background words (`BACKGROUND_WORDS`): "background" plus the five texture kinds of the toy
backgrounds; the model learns them from background-only scenes, background regions and the
background patches of the dense loss, so CaR can put them in its CAM softmax.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import open_clip
import torch
from open_clip.model import CLIP
from torch import nn

from carbench.toy.scenes import BACKGROUND_KINDS, CLASS_NAMES, COLOR_NAMES

__all__ = [
    "TOY_ARCH",
    "TOY_CONFIG_DIR",
    "TOY_WEIGHTS",
    "TOY_MEAN",
    "TOY_STD",
    "TOY_PATCH",
    "TOY_CLASSIFIER_WEIGHTS",
    "BUNDLED_WEIGHTS",
    "TOY_IMAGE_SIZE",
    "BACKGROUND_WORDS",
    "VOCAB",
    "ToyTokenizer",
    "ToyWeightsError",
    "build_toy_clip",
    "load_toy_clip",
    "save_toy_weights",
    "TOY_COLORS",
    "sha256_of",
]

TOY_ARCH = "carbench-toy"
TOY_CONFIG_DIR = Path(__file__).parent / "model_configs"
TOY_WEIGHTS = Path(__file__).parent / "weights" / "toy_clip.safetensors"
#: Stage 3's classifier CLIP (`carbench.toy.train_classifier`): CaR's second CLIP on the toy world.
TOY_CLASSIFIER_WEIGHTS = Path(__file__).parent / "weights" / "toy_classifier.safetensors"
#: The world the shipped CLIPs were fine-tuned for (stages 2-3; `carbench.toy.scenes.COLOR_MODES`):
#: what `dataset=toy`, the demo's toy scenes and the stage-3 trainer use.
TOY_COLORS = "by_class"
#: What a toy preset's `pretrained` names: the shipped files (anything else is a path).
BUNDLED_WEIGHTS: dict[str, Path] = {"bundled": TOY_WEIGHTS, "bundled-classifier": TOY_CLASSIFIER_WEIGHTS}
open_clip.add_model_config(TOY_CONFIG_DIR)

_CFG = json.loads((TOY_CONFIG_DIR / f"{TOY_ARCH}.json").read_text())
#: Image normalisation used in training: x = (rgb/255 − mean) / std (set on model.visual.image_mean/std).
TOY_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
TOY_STD: tuple[float, float, float] = (0.25, 0.25, 0.25)
TOY_PATCH: int = int(_CFG["vision_cfg"]["patch_size"])
TOY_IMAGE_SIZE: int = int(_CFG["vision_cfg"]["image_size"])
CONTEXT_LENGTH: int = int(_CFG["text_cfg"]["context_length"])

#: Words the model learns for "not an object"; CaR's background queries for the toy world.
BACKGROUND_WORDS: list[str] = ["background", *BACKGROUND_KINDS]

#: Template words: the toy captions plus every word of CaR's 15 classifier templates and its
#: CAM template "a clean origami {}." (docs/method.md §2.3).
_TEMPLATE_WORDS = (
    "a an the of photo picture image this is there in scene small medium large clean origami on and "
    "with shape object . ,"
).split()
VOCAB: list[str] = list(dict.fromkeys([*CLASS_NAMES, *COLOR_NAMES, *BACKGROUND_WORDS, *_TEMPLATE_WORDS]))

PAD_ID, UNK_ID, SOT_ID = 0, 1, 2
_FIRST_WORD_ID = 3
VOCAB_SIZE = _FIRST_WORD_ID + len(VOCAB) + 1  # + EOT
EOT_ID = VOCAB_SIZE - 1
if int(_CFG["text_cfg"]["vocab_size"]) != VOCAB_SIZE:
    raise RuntimeError(
        f"{TOY_CONFIG_DIR / (TOY_ARCH + '.json')}: text_cfg.vocab_size is {_CFG['text_cfg']['vocab_size']} "
        f"but the toy vocabulary needs {VOCAB_SIZE}"
    )

_WORD_RE = re.compile(r"[a-z]+|[.,]")


class ToyTokenizer:
    """Word-level tokenizer: `tokenizer(texts) -> LongTensor[N, context_length]`.

    Layout per row: SOT, word ids, EOT, zero padding. EOT is the highest id, so ``argmax`` over
    the ids finds it (open_clip's default text pooling). Lower-cases, keeps letters and '.'/','
    (everything else separates words); an unknown word becomes UNK with a one-time warning;
    overlong texts are truncated to keep the EOT.
    """

    def __init__(self, context_length: int = CONTEXT_LENGTH) -> None:
        self.context_length = context_length
        self.vocab = {w: _FIRST_WORD_ID + i for i, w in enumerate(VOCAB)}
        self.sot_token_id, self.eot_token_id, self.pad_token_id, self.unk_token_id = (
            SOT_ID,
            EOT_ID,
            PAD_ID,
            UNK_ID,
        )
        self.vocab_size = VOCAB_SIZE
        self._warned: set[str] = set()

    def encode(self, text: str) -> list[int]:
        ids = []
        for w in _WORD_RE.findall(text.lower()):
            i = self.vocab.get(w)
            if i is None:
                if w not in self._warned:
                    self._warned.add(w)
                    warnings.warn(
                        f"toy tokenizer: word {w!r} is not in the toy vocabulary (in {text!r}); "
                        "it is encoded as <unk>. Known words: carbench.toy.model.VOCAB",
                        stacklevel=3,
                    )
                i = UNK_ID
            ids.append(i)
        return ids

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.LongTensor:
        if isinstance(texts, str):
            texts = [texts]
        n = context_length or self.context_length
        out = torch.full((len(texts), n), PAD_ID, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [SOT_ID, *self.encode(text)[: n - 2], EOT_ID]
            out[row, : len(ids)] = torch.tensor(ids)
        return out


def _conv_stem(width: int, patch: int) -> nn.Sequential:
    """3×3 stride-2 convolutions up to total stride `patch` (a power of two), GELU between."""
    n = patch.bit_length() - 1
    if 1 << n != patch or n < 1:
        raise ValueError(f"the toy conv stem needs a power-of-two patch size ≥ 2, got {patch}")
    chans = [3] + [max(16, width >> (n - 1 - i)) for i in range(n)]
    chans[-1] = width
    layers: list[nn.Module] = []
    for i in range(n):
        layers.append(nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1))
        if i < n - 1:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class _DropRandomInitNote(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded … initialized randomly" for the toy architecture."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("No pretrained weights loaded" in msg and TOY_ARCH in msg)


@contextlib.contextmanager
def _no_random_init_warning() -> Iterator[None]:
    note = _DropRandomInitNote()
    loggers = [logging.getLogger(), logging.getLogger("open_clip"), logging.getLogger("open_clip.factory")]
    for lg in loggers:
        lg.addFilter(note)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(note)


def build_toy_clip(seed: int | None = 0) -> tuple[CLIP, ToyTokenizer]:
    """The toy CLIP architecture with random weights (seeded) and its tokenizer."""
    if seed is not None:
        torch.manual_seed(seed)
    with _no_random_init_warning():  # random init is the point here; the caller loads the weights it wants
        model = open_clip.create_model(
            TOY_ARCH, pretrained=None, force_preprocess_cfg={"mean": TOY_MEAN, "std": TOY_STD}
        )
    if not isinstance(model, CLIP):
        raise TypeError(f"open_clip built {type(model).__name__} for {TOY_ARCH}, expected CLIP")
    model.visual.conv1 = _conv_stem(model.visual.transformer.width, TOY_PATCH)
    model.visual.image_mean, model.visual.image_std = TOY_MEAN, TOY_STD
    return model, ToyTokenizer()


class ToyWeightsError(FileNotFoundError):
    """The shipped toy weights are missing or do not match their recorded sha256."""


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _canonical_header(blob: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted.

    safetensors writes the metadata from a hash map, so the key order (and with it the file's
    sha256) changes from run to run; sorting makes the bytes a function of the content alone.
    Reordering keeps the header's length, so the tensor offsets stay valid.
    """
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    canon = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    if len(canon) > n:
        raise RuntimeError(f"safetensors header grew from {n} to {len(canon)} bytes when sorted; cannot rewrite it")
    return blob[:8] + canon + b" " * (n - len(canon)) + blob[8 + n :]


def save_toy_weights(
    model: CLIP, path: str | Path = TOY_WEIGHTS, metadata: dict[str, str] | None = None
) -> str:
    """Write fp16 safetensors + `<file>.sha256` (the hex digest, then the file name); return the digest."""
    from safetensors.torch import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(_canonical_header(save(state, metadata={"arch": TOY_ARCH, **(metadata or {})})))
    digest = sha256_of(tmp)
    tmp.replace(path)
    _sha_file(path).write_text(f"{digest}  {path.name}\n")
    return digest


def load_toy_clip(path: str | Path | None = None, verify: bool = True) -> tuple[CLIP, ToyTokenizer]:
    """Build the toy CLIP and load trained weights (default: the shipped `TOY_WEIGHTS`).

    The file's sha256 must equal the one recorded in `<file>.sha256` next to it; a missing file,
    a missing or different digest raises `ToyWeightsError` naming the file and `make toy-model`
    (which retrains and re-exports). Returns the model in eval mode, fp32.
    """
    from safetensors.torch import load_file

    path = Path(path) if path is not None else TOY_WEIGHTS
    fix = "Run `make toy-model` to retrain and export them (python -m carbench.toy.train)."
    if not path.is_file():
        raise ToyWeightsError(f"toy CLIP weights not found: {path}. {fix}")
    if verify:
        sha_path = _sha_file(path)
        if not sha_path.is_file():
            raise ToyWeightsError(f"toy CLIP weights {path}: checksum file {sha_path} is missing. {fix}")
        want = sha_path.read_text().split()[0].strip().lower() if sha_path.read_text().strip() else ""
        got = sha256_of(path)
        if got != want:
            raise ToyWeightsError(
                f"toy CLIP weights {path}: sha256 {got} does not match {want or '(empty)'} recorded in "
                f"{sha_path} (corrupted or partially written file?). {fix}"
            )
    model, tokenizer = build_toy_clip(seed=None)
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ToyWeightsError(
            f"toy CLIP weights {path} do not fit the {TOY_ARCH} architecture "
            f"({str(err).splitlines()[0][:200]}). {fix}"
        ) from err
    return model.eval(), tokenizer


def encode_texts(model: CLIP, tokenizer: Callable, texts: Sequence[str]) -> torch.Tensor:
    """L2-normalised text embeddings [N, D] (helper for training probes and tests)."""
    device = next(model.parameters()).device
    return torch.nn.functional.normalize(model.encode_text(tokenizer(list(texts)).to(device)), dim=-1)
