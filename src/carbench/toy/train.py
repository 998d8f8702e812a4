"""Train the toy CLIP: ``python -m carbench.toy.train [--stage 1|2] [--steps N] [--minutes M] [--resume]``.

The proposer's recipe is two stages (``make toy-model`` runs both, then stage 3, the classifier of
`carbench.toy.train_classifier`; each is resumable):

1. ``--stage 1`` (the defaults below): contrastive pre-training from a random init with aids 1-3,
   exported to ``.cache/toy_stage1/toy_clip_stage1.safetensors``.
2. ``--stage 2``: a short fine-tune of stage 1's weights on the benchmark's world (`TOY_COLORS`:
   each class painted from its own two colours) that adds the two aids reading CaR's own
   proposal path (`carbench.toy.aids`): 2.0 × the Grad-CAM aid (aid 4) and 0.1 × the attention-affinity
   aid (aid 5), on top of stage 1's losses; 300 steps of 24 scenes + 8 prompted crops, at most 24
   (scene, class) CAM replicas per step, lr 3e-4 with 20 warm-up steps, one thread, probes every
   100 steps. Exported to the shipped `TOY_WEIGHTS`, with stage 1's sha256 (`init_sha256`) and the
   world (`colors`) in the file's metadata.
   Why: stage 1 alone classified well (zero-shot 0.91) but its Grad-CAM barely localised (oracle
   queries ≈ 21 mIoU on the first 30 val scenes); asking for the CAM directly is far cheaper than
   hoping a tiny model's gradients line up (oracle 35 after 26 stage-2 steps, 47 after 78). On the
   shape-only world the oracle then stalled near 48: each class's map lit up every object, because
   a flat shape names its class only along its outline. In the by_class world the patches carry
   class evidence (the README's toy section has the measured effect).

Stage 1's recipe (defaults; all seeded, so a run is a deterministic function of its arguments):
- Data: scenes drawn on the fly from the *train* stream of `carbench.toy.scenes` (scene k of the
  run is ``make_scene(scene_rng(seed, "train", k), size, colors=--colors)``, "any" in stage 1;
  the train split on disk in the same colour mode is the first n of them; tune / val / the
  zero-shot probe use other streams). Each step has `--scenes` (96) scenes — 6 % of them
  background-only — and `--prompts` (32) visually prompted crops of them.
- Scene captions name all objects, mostly without colour (25 % with colours, 10 % with the
  background word), in one of CaR's 15 classifier templates or a caption template.
- Prompted crops (localisation aid 1, as CaR's classifier sees proposals): 80 % one object's
  visible mask, randomly dilated / eroded / boxed, with blur, grey or black outside and/or a
  red circle, box or contour (the official prompt types); 20 % a background region, named by
  a background word. Text: a template + the object name (sometimes with its colour).
- Loss: CLIP's symmetric contrastive loss over all images × all texts of the step, with
  multi-positive targets (a text is a positive for every image it describes, e.g. two scenes with
  the same classes) + 0.3 × the same loss for the embedding after block L−1 (so the official
  classifier's "skip the last block" quirk still gets sensible embeddings) + 1.0 × a dense loss
  (localisation aid 2): every patch token of a scene, through ``ln_post`` and ``proj``, is
  classified against the text embeddings of the 8 class names and the background words (one
  random template per step), with the patch's pixel composition as soft target (background
  pixels split between "background" and the scene's texture word) + 3.0 × the same dense loss on the
  last block's *value path* (localisation aid 3, MaskCLIP's read-out: ln_1 → value → out-projection →
  ln_post → proj of each patch). Grad-CAM on the last block's ln_1 output with a spatially averaged
  gradient is, to first order, exactly this read-out scored against the query's text direction;
  without it the CAMs were inverted (higher outside the object: IoU 0.03 with the true classes), and
  with weight 1 the contrastive terms slowly eroded it (probe IoU 0.36 → 0.21 over 450 steps).
- AdamW (lr 1e-3, betas 0.9/0.98, wd 0.1 on matrices), 100 warm-up steps then cosine to 0 over
  `--steps`; learnable logit scale (init 1/0.07, capped at 100 as in CLIP); fp32,
  `torch.set_num_threads(--threads)`; scene generation in one DataLoader worker.
- Every `--eval-every` steps: zero-shot top-1 on 256 fresh single-object scenes ("a photo of a
  {}." over the 8 names) and a quick Grad-CAM IoU probe. Checkpoint to `--out`/ckpt.pt every
  `--ckpt-minutes`; fp16 safetensors + sha256 exported to `--weights` every `--export-minutes`
  and at the end. `--resume` continues from `--out`/ckpt.pt; `--export` only exports it.

Reproducibility: the exported file is a function of the arguments alone (the safetensors header is
written with sorted keys and without wall-clock figures), at a fixed `--threads` (stage 2 pins 1).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path, PosixPath

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from carbench.models.baselines.dense_clip import last_block_attention
from carbench.toy.aids import attention_affinity_loss, attention_probs, gradcam_loss
from carbench.toy.model import (
    BACKGROUND_WORDS,
    TOY_COLORS,
    TOY_MEAN,
    TOY_PATCH,
    TOY_STD,
    TOY_WEIGHTS,
    build_toy_clip,
    load_toy_clip,
    save_toy_weights,
    sha256_of,
)
from carbench.toy.scenes import BACKGROUND_KINDS, CLASS_NAMES, COLOR_MODES, make_scene, scene_rng

#: CaR's 15 classifier templates (docs/method.md §2.3), the raw name, and a caption-style one.
TEMPLATES: list[str] = [
    "a clean origami {}.",
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
    "{}",
    "a {}.",
]
SCENE_TEMPLATES: list[str] = [
    "a photo of {}.",
    "{}.",
    "a picture of {}.",
    "an image of {}.",
    "there is {} in the scene.",
]
BANK_WORDS: list[str] = CLASS_NAMES + BACKGROUND_WORDS  # dense-loss targets
CAM_TEMPLATE = "a clean origami {}."  # CaR's CAM template (conf/model/car.yaml cam_template)
PROBE_STREAM = 7  # np.random.default_rng([seed, 7, i]): zero-shot probe scenes (never trained on)
STEP_STREAM = 100  # np.random.default_rng([seed, 100, step]): per-step choices (prompts, captions)


def _article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _with_template(t: str, noun: str) -> str:
    """Fill a template, fixing the article: "a orange star" → "an orange star"."""
    return re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", t.format(noun))


# ----------------------------------------------------------------------------- batches
def _normalise(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(TOY_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(TOY_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _jitter_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An imperfect proposal: dilated, eroded, boxed or exact."""
    u = rng.random()
    m = mask.astype(np.uint8)
    if u < 0.35:
        k = int(rng.integers(1, 4)) * 2 + 1
        m = cv2.dilate(m, np.ones((k, k), np.uint8))
    elif u < 0.5:
        m2 = cv2.erode(m, np.ones((3, 3), np.uint8))
        m = m2 if m2.any() else m
    elif u < 0.6:
        ys, xs = np.nonzero(m)
        m = np.zeros_like(m)
        m[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = 1
    return m > 0


def visual_prompt(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """CaR-style prompt for training: blur / grey / black outside and/or a red outline.

    Deliberately not `models/prompts.py`: this is an augmentation, not CaR's prompt. It draws one
    random kind per crop (CaR applies a fixed list in the official order), uses a fixed 15×15
    Gaussian and 1-pixel outlines sized for 96-pixel scenes, and has none of the official code's
    quirks (BGR grey, truncated centre); the weights were trained with exactly this, so changing it
    would change the shipped model.
    """
    out = image.copy()
    inside = mask[..., None]
    kind = rng.choice(["blur", "gray", "black", "none"], p=[0.5, 0.15, 0.15, 0.2])
    if kind == "blur":
        out = np.where(inside, out, cv2.GaussianBlur(out, (15, 15), 0))
    elif kind == "gray":
        g = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)[..., None].repeat(3, -1)
        out = np.where(inside, out, g)
    elif kind == "black":
        out = np.where(inside, out, 0).astype(np.uint8)
    outline = rng.choice(["circle", "rectangle", "contour", "none"], p=[0.4, 0.1, 0.1, 0.4])
    if kind == "none" and outline == "none":
        outline = "circle"
    ys, xs = np.nonzero(mask)
    if outline != "none" and len(xs):
        c = (int(round(xs.mean())), int(round(ys.mean())))
        half = ((int(xs.max() - xs.min() + 1)) // 2, (int(ys.max() - ys.min() + 1)) // 2)
        out = np.ascontiguousarray(out)
        if outline == "circle":
            cv2.ellipse(out, c, half, 0, 0, 360, (255, 0, 0), 1)
        elif outline == "rectangle":
            cv2.rectangle(
                out, (c[0] - half[0], c[1] - half[1]), (c[0] + half[0], c[1] + half[1]), (255, 0, 0), 1
            )
        else:
            cs, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(out, cs, -1, (255, 0, 0), 1)
    return out


def _patch_targets(label: np.ndarray, kind: str, patch: int) -> np.ndarray:
    """Soft dense targets [G*G, len(BANK_WORDS)] from a label map."""
    g = label.shape[0] // patch
    onehot = np.eye(len(CLASS_NAMES) + 1, dtype=np.float32)[label]  # [S,S,9]
    frac = onehot.reshape(g, patch, g, patch, -1).mean((1, 3)).reshape(g * g, -1)
    out = np.zeros((g * g, len(BANK_WORDS)), np.float32)
    out[:, : len(CLASS_NAMES)] = frac[:, 1:]
    bg0 = len(CLASS_NAMES)
    out[:, bg0] += 0.5 * frac[:, 0]  # "background"
    out[:, bg0 + 1 + BACKGROUND_KINDS.index(kind)] += 0.5 * frac[:, 0]
    return out


class ToyBatches(Dataset):
    """Item `step` = the whole deterministic batch of that step (generated in a worker)."""

    def __init__(
        self, seed: int, n_scenes: int, n_prompts: int, size: int, cam_replicas: int = 1 << 30, colors: str = "any"
    ) -> None:
        self.seed, self.n_scenes, self.n_prompts, self.size = seed, n_scenes, n_prompts, size
        self.cam_replicas, self.colors = cam_replicas, colors

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, step: int) -> dict:
        rng = np.random.default_rng([self.seed, STEP_STREAM, step])
        images, texts, img_cls, img_attr, txt_cls, txt_req = [], [], [], [], [], []
        scenes = []
        for j in range(self.n_scenes):
            srng = scene_rng(self.seed, "train", step * self.n_scenes + j)
            sc = make_scene(srng, self.size, n_objects=0 if rng.random() < 0.06 else None, colors=self.colors)
            scenes.append(sc)
            attrs = {f"bg:{sc.background}"} | {f"col:{o.name}:{o.color}" for o in sc.objects}
            cls = frozenset(o.name for o in sc.objects)
            if sc.objects:
                with_color = rng.random() < 0.25
                order = rng.permutation(len(sc.objects))
                phrases = [
                    _article(
                        f"{sc.objects[k].color} {sc.objects[k].name}" if with_color else sc.objects[k].name
                    )
                    for k in order
                ]
                body = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
                req = {f"col:{o.name}:{o.color}" for o in sc.objects} if with_color else set()
                if rng.random() < 0.1:
                    body += f" on {sc.background}"
                    req.add(f"bg:{sc.background}")
                text = SCENE_TEMPLATES[int(rng.integers(len(SCENE_TEMPLATES)))].format(body)
            else:
                word = "background" if rng.random() < 0.4 else sc.background
                req = set() if word == "background" else {f"bg:{word}"}
                text = _with_template(TEMPLATES[int(rng.integers(len(TEMPLATES)))], word)
            images.append(sc.image)
            texts.append(text)
            img_cls.append(cls)
            img_attr.append(attrs)
            txt_cls.append(cls)
            txt_req.append(req)
        for _ in range(self.n_prompts):
            sc = scenes[int(rng.integers(len(scenes)))]
            t = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
            if sc.objects and rng.random() < 0.8:
                o = sc.objects[int(rng.integers(len(sc.objects)))]
                mask = _jitter_mask(sc.label == o.class_id, rng)
                if rng.random() < 0.2:
                    text, req = _with_template(t, f"{o.color} {o.name}"), {f"col:{o.name}:{o.color}"}
                else:
                    text, req = _with_template(t, o.name), set()
                cls, attrs = frozenset([o.name]), {f"col:{o.name}:{o.color}", f"bg:{sc.background}"}
            else:
                s = self.size
                cx, cy = rng.uniform(0.2, 0.8, 2) * s
                ax = rng.uniform(0.1, 0.3, 2) * s
                mask = np.zeros((s, s), np.uint8)
                cv2.ellipse(
                    mask,
                    (int(cx), int(cy)),
                    (int(ax[0]), int(ax[1])),
                    float(rng.uniform(0, 180)),
                    0,
                    360,
                    1,
                    -1,
                )
                mask = (mask > 0) & (sc.label == 0)
                if mask.sum() < 16:
                    mask = sc.label == 0
                word = "background" if rng.random() < 0.4 else sc.background
                text, req = _with_template(t, word), (set() if word == "background" else {f"bg:{word}"})
                cls, attrs = frozenset(), {f"bg:{sc.background}"}
            images.append(visual_prompt(sc.image, mask, rng))
            texts.append(text)
            img_cls.append(cls)
            img_attr.append(attrs)
            txt_cls.append(cls)
            txt_req.append(req)
        n = len(images)
        pos = np.zeros((n, n), np.float32)
        for i in range(n):
            for j in range(n):
                pos[i, j] = float(img_cls[i] == txt_cls[j] and txt_req[j] <= img_attr[i])
        dense = np.stack([_patch_targets(sc.label, sc.background, TOY_PATCH) for sc in scenes])
        bank_t = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
        cam = _cam_replicas(scenes, rng, TOY_PATCH, self.cam_replicas)
        return {
            **cam,
            "images": _normalise(np.stack(images)),
            "texts": texts,
            "pos": torch.from_numpy(pos),
            "dense": torch.from_numpy(dense),
            "bank": [_with_template(bank_t, w) for w in BANK_WORDS],
        }


def _cam_replicas(scenes: list, rng: np.random.Generator, patch: int, cap: int) -> dict:
    """What the Grad-CAM aid needs: one replica per (scene, present class) pair.

    Each replica's softmax holds the scene's present classes plus, as in CaR's first step, all
    other classes (half of the steps' replicas) or a random quarter of them (as in later steps,
    after the filter dropped most absent ones); the background words are always in it. The CAM
    texts are the raw class names (CaR's first step) or the CAM template (later steps), one
    choice per step. At most `cap` replicas (a random subset) keep the double backward cheap.
    """
    n_cls = len(CLASS_NAMES)
    scene_idx, cls_idx, in_softmax, coverage = [], [], [], []
    for s, sc in enumerate(scenes):
        if not sc.objects:
            continue
        g = sc.label.shape[0] // patch
        present = sc.class_ids
        for c in present:
            cov = (sc.label == c).reshape(g, patch, g, patch).mean((1, 3)).reshape(-1)
            allowed = np.ones(n_cls + len(BACKGROUND_WORDS), bool)
            if rng.random() >= 0.5:
                allowed[:n_cls] = rng.random(n_cls) < 0.25
                allowed[[k - 1 for k in present]] = True
            scene_idx.append(s)
            cls_idx.append(c - 1)
            in_softmax.append(allowed)
            coverage.append(cov.astype(np.float32))
    segments = np.stack([_segments(sc.label, patch) for sc in scenes])
    pick = np.sort(rng.permutation(len(scene_idx))[:cap]) if len(scene_idx) > cap else np.arange(len(scene_idx))
    scene_idx, cls_idx = [scene_idx[i] for i in pick], [cls_idx[i] for i in pick]
    in_softmax, coverage = [in_softmax[i] for i in pick], [coverage[i] for i in pick]
    return {
        "cam_scene": torch.tensor(scene_idx, dtype=torch.long),
        "cam_class": torch.tensor(cls_idx, dtype=torch.long),
        "cam_softmax": torch.from_numpy(np.stack(in_softmax)),
        "cam_coverage": torch.from_numpy(np.stack(coverage)),
        "cam_raw_names": bool(rng.random() < 0.5),
        "segments": torch.from_numpy(segments),
    }


def _segments(label: np.ndarray, patch: int) -> np.ndarray:
    """Majority label of each patch [G*G] (0 = background)."""
    g = label.shape[0] // patch
    onehot = np.eye(len(CLASS_NAMES) + 1, dtype=np.float32)[label]
    return onehot.reshape(g, patch, g, patch, -1).sum((1, 3)).reshape(g * g, -1).argmax(-1).astype(np.int64)


def _collate(x):
    return x


# ----------------------------------------------------------------------------- model pieces
def image_tokens(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Token states after block L−1 and after block L, each [B, 1+HW, width], and every block's input."""
    v = model.visual
    h = v._embeds(x)
    blocks = v.transformer.resblocks
    inputs = []
    for blk in blocks[:-1]:
        inputs.append(h)
        h = blk(h)
    inputs.append(h)
    return h, blocks[-1](h), inputs


def embed_patches(model, tokens: torch.Tensor) -> torch.Tensor:
    """ln_post + proj of each patch token (CLS dropped) → [B, HW, D] (not normalised)."""
    return model.visual.ln_post(tokens[:, 1:]) @ model.visual.proj


def value_path_patches(model, prev: torch.Tensor) -> torch.Tensor:
    """MaskCLIP's dense read-out of the last block: ln_1 → value projection → out projection of
    each patch token, then ln_post + proj → [B, HW, D] (not normalised).

    The attention part is the library's own MaskCLIP read-out (`dense_clip.last_block_attention`,
    mode "maskclip"), the one `model=dense_clip` and the dense proposer evaluate; it gives the
    same numbers, forward and backward, as the slice-of-weights version this trainer used first.
    Grad-CAM on the last block's ``ln_1`` output with a mean-pooled gradient is, to first order,
    this read-out scored against the query's text direction; training it to classify patches
    (localisation aid 3) is what makes the CAM land on the object instead of its surroundings.
    """
    last = model.visual.transformer.resblocks[-1]
    o = last.ls_1(last_block_attention(last.attn, last.ln_1(prev[:, 1:]), "maskclip"))
    return model.visual.ln_post(o) @ model.visual.proj


def multi_positive_clip_loss(
    img: torch.Tensor, txt: torch.Tensor, pos: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    logits = scale * img @ txt.T
    t_i = pos / pos.sum(1, keepdim=True)
    t_t = pos.T / pos.T.sum(1, keepdim=True)
    li = -(t_i * logits.log_softmax(1)).sum(1).mean()
    lt = -(t_t * logits.T.log_softmax(1)).sum(1).mean()
    return (li + lt) / 2


def encode_unique(model, tokenizer, texts: list[str]) -> tuple[torch.Tensor, list[int]]:
    uniq = list(dict.fromkeys(texts))
    where = {t: i for i, t in enumerate(uniq)}
    emb = F.normalize(model.encode_text(tokenizer(uniq)), dim=-1)
    return emb, [where[t] for t in texts]


def cam_texts(raw_names: bool) -> list[str]:
    """The proposer's CAM texts: the 8 class names (raw in CaR's step 1, else templated), then the
    background words in the CAM template — exactly what `conf/dataset/toy.yaml` makes CaR use."""
    fg = CLASS_NAMES if raw_names else [CAM_TEMPLATE.format(c) for c in CLASS_NAMES]
    return [*fg, *(CAM_TEMPLATE.format(w) for w in BACKGROUND_WORDS)]


def compute_loss(
    model,
    tokenizer,
    batch: dict,
    w_prev: float,
    w_dense: float,
    w_value: float = 0.0,
    w_cam: float = 0.0,
    w_attn: float = 0.0,
    attn_blocks: int = 3,
) -> tuple[torch.Tensor, dict]:
    x = batch["images"]
    n_scenes = batch["dense"].shape[0]
    prev, last, block_inputs = image_tokens(model, x)
    pe_last = embed_patches(model, last)
    img = F.normalize(pe_last.mean(1), dim=-1)  # = open_clip 'avg' pooling (ln_post per token, mean, proj)
    img_prev = F.normalize(embed_patches(model, prev).mean(1), dim=-1)
    n_txt, n_bank = len(batch["texts"]), len(batch["bank"])
    all_texts = batch["texts"] + batch["bank"] + (cam_texts(batch["cam_raw_names"]) if w_cam > 0 else [])
    temb, idx = encode_unique(model, tokenizer, all_texts)
    txt = temb[idx[:n_txt]]
    bank = temb[idx[n_txt : n_txt + n_bank]]
    scale = model.logit_scale.exp().clamp(max=100)
    pos = batch["pos"]
    l_clip = multi_positive_clip_loss(img, txt, pos, scale)
    l_prev = multi_positive_clip_loss(img_prev, txt, pos, scale)
    pd = F.normalize(pe_last[:n_scenes], dim=-1)  # [S, HW, D]
    dl = scale * pd @ bank.T
    l_dense = -(batch["dense"] * dl.log_softmax(-1)).sum(-1).mean()
    loss = l_clip + w_prev * l_prev + w_dense * l_dense
    parts = {"clip": l_clip, "prev": l_prev, "dense": l_dense, "scale": scale}
    if w_value > 0:
        pv = F.normalize(value_path_patches(model, prev[:n_scenes]), dim=-1)
        l_value = -(batch["dense"] * (scale * pv @ bank.T).log_softmax(-1)).sum(-1).mean()
        loss = loss + w_value * l_value
        parts["value"] = l_value
    if w_cam > 0 and len(batch["cam_scene"]):
        texts = temb[idx[n_txt + n_bank :]]
        l_cam = gradcam_loss(
            model,
            prev[batch["cam_scene"]],
            texts,
            batch["cam_softmax"],
            batch["cam_class"],
            batch["cam_coverage"],
        )
        loss = loss + w_cam * l_cam
        parts["cam"] = l_cam
    if w_attn > 0:
        blocks = model.visual.transformer.resblocks
        first = len(blocks) - attn_blocks
        l_attn = sum(
            attention_affinity_loss(attention_probs(blocks[b], block_inputs[b][:n_scenes]), batch["segments"])
            for b in range(first, len(blocks))
        ) / attn_blocks
        loss = loss + w_attn * l_attn
        parts["attn"] = l_attn
    return loss, {k: float(v.detach()) for k, v in parts.items()}


# ----------------------------------------------------------------------------- probes
@torch.no_grad()
def zero_shot_top1(
    model,
    tokenizer,
    seed: int,
    n: int = 256,
    size: int = 96,
    template: str = "a photo of a {}.",
    colors: str = "any",
) -> float:
    """Top-1 of single-object probe scenes classified among the 8 names (pooled embedding)."""
    rngs = [np.random.default_rng([seed, PROBE_STREAM, i]) for i in range(n)]
    scenes = [make_scene(r, size, n_objects=1, colors=colors) for r in rngs]
    x = _normalise(np.stack([s.image for s in scenes]))
    img = F.normalize(model.encode_image(x), dim=-1)
    txt = F.normalize(model.encode_text(tokenizer([template.format(c) for c in CLASS_NAMES])), dim=-1)
    pred = (img @ txt.T).argmax(1).numpy()
    truth = np.array([s.objects[0].class_id - 1 for s in scenes])
    return float((pred == truth).mean())


def gradcam_probe(
    model, tokenizer, seed: int, n: int = 16, size: int = 96, thr: float = 0.4, colors: str = "any"
) -> float:
    """Mean IoU of plain Grad-CAM (softmax over true classes + background words, target = last
    block's ln_1 input, patch-mean embedding, min-max, bilinear up, > thr) with each true class's
    mask, over multi-object probe scenes. A monitoring proxy, not the benchmark.

    Deliberately not the library's proposer (`models/proposals/clip_es.py`, `cam=gradcam`): the
    probe runs on the raw open_clip model while it trains (no frozen `ClipBackbone`), and its value
    is written into the exported weights' metadata, so it must stay the number the shipped file was
    made with. The proposer is what the toy benchmark itself measures.
    """
    model.eval()
    ious = []
    bg = [f"a clean origami {w}." for w in BACKGROUND_WORDS]
    with torch.no_grad():
        tb = F.normalize(model.encode_text(tokenizer(bg)), dim=-1)
        tall = F.normalize(model.encode_text(tokenizer(CLASS_NAMES)), dim=-1)
    v = model.visual
    for i in range(n):
        sc = make_scene(np.random.default_rng([seed, PROBE_STREAM + 1, i]), size, colors=colors)
        tf = tall[[c - 1 for c in sc.class_ids]]
        with torch.no_grad():
            h = v._embeds(_normalise(sc.image[None]))
            for blk in v.transformer.resblocks[:-1]:
                h = blk(h)
        h = h.detach().requires_grad_(True)
        last = v.transformer.resblocks[-1]
        y = last.ln_1(h)
        y.retain_grad()
        # re-run the last block from its ln_1 output (same computation as block(h))
        out = h + last.ls_1(last.attn(y, y, y, need_weights=False)[0])
        out = out + last.ls_2(last.mlp(last.ln_2(out)))
        emb = F.normalize(embed_patches(model, out).mean(1), dim=-1)
        probs = (model.logit_scale.exp().clamp(max=100) * emb @ torch.cat([tf, tb]).T).softmax(-1)[0]
        g = size // TOY_PATCH
        for k, c in enumerate(sc.class_ids):
            if y.grad is not None:
                y.grad = None
            probs[k].backward(retain_graph=True)
            a = y[0, 1:].detach()
            gr = y.grad[0, 1:]
            cam = torch.relu((a * gr.mean(0, keepdim=True)).sum(-1)).view(1, 1, g, g)
            cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-15)
            cam = F.interpolate(cam, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
            pred, gt = cam > thr, sc.label == c
            ious.append((pred & gt).sum() / max(1, (pred | gt).sum()))
    model.train()
    return float(np.mean(ious))


# ----------------------------------------------------------------------------- main
def lr_at(step: int, total: int, base: float, warmup: int = 100) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def _param_groups(model, wd: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in name or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def _save_ckpt(path: Path, model, opt, step: int, args: argparse.Namespace, history: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            "step": step,
            "args": vars(args),
            "history": history,
        },
        tmp,
    )
    tmp.replace(path)


def export(model, args: argparse.Namespace, step: int, history: list) -> str:
    meta = {"step": str(step), "seed": str(args.seed), "size": str(args.size), "stage": str(args.stage)}
    if args.colors != "any":  # absent for the worlds exported before the option existed
        meta["colors"] = args.colors
    if args.init is not None:
        meta["init_sha256"] = sha256_of(args.init)
    if history:  # without the wall-clock minutes, so the file is a function of the recipe alone
        meta["last_eval"] = json.dumps({k: v for k, v in history[-1].items() if k != "minutes"})
    digest = save_toy_weights(model, args.weights, metadata=meta)
    print(f"[export] step {step}: {args.weights} sha256 {digest[:16]}…", flush=True)
    return digest


#: Where stage 1 writes its weights; stage 2 starts from them.
STAGE1_WEIGHTS = Path(".cache/toy_stage1/toy_clip_stage1.safetensors")
#: The committed recipe: each stage's defaults (any flag given on the command line wins).
STAGE_DEFAULTS: dict[int, dict] = {
    1: {"out": Path(".cache/toy_stage1"), "weights": STAGE1_WEIGHTS, "init": None},
    2: {
        "out": Path(".cache/toy_stage2"),
        "weights": TOY_WEIGHTS,
        "init": STAGE1_WEIGHTS,
        "steps": 300,
        "warmup": 20,
        "scenes": 24,
        "prompts": 8,
        "cam_replicas": 24,
        "lr": 3e-4,
        "w_cam": 2.0,
        "w_attn": 0.1,
        "colors": TOY_COLORS,
        "eval_every": 100,
        "threads": 1,  # pinned: the sha256 of the result is only reproducible at a fixed thread count
    },
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m carbench.toy.train", description=__doc__.split("\n")[0])
    p.add_argument(
        "--stage",
        type=int,
        choices=sorted(STAGE_DEFAULTS),
        default=1,
        help="1: contrastive pre-training from a random init; 2: the CaR-path localisation fine-tune of stage 1's "
        "weights (sets the defaults of the flags below, see STAGE_DEFAULTS)",
    )
    p.add_argument("--steps", type=int, default=4000, help="total optimiser steps (cosine schedule length)")
    p.add_argument(
        "--minutes", type=float, default=None, help="stop (checkpoint + export) after this many minutes"
    )
    p.add_argument("--out", type=Path, default=Path(".cache/toy_train"), help="checkpoint directory")
    p.add_argument("--weights", type=Path, default=TOY_WEIGHTS, help="exported fp16 safetensors path")
    p.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt")
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start from these toy weights (fp16 safetensors with their .sha256) instead of a random init",
    )
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps of the learning rate")
    p.add_argument("--export", action="store_true", help="only export OUT/ckpt.pt to --weights and exit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=96)
    p.add_argument(
        "--colors", choices=COLOR_MODES, default="any", help="how objects are coloured (toy/scenes.py COLOR_MODES)"
    )
    p.add_argument("--scenes", type=int, default=96, help="scenes per step")
    p.add_argument("--prompts", type=int, default=32, help="visually prompted crops per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--w-prev", type=float, default=0.3, help="weight of the block L−1 contrastive loss")
    p.add_argument("--w-dense", type=float, default=1.0, help="weight of the dense patch-text loss")
    p.add_argument(
        "--w-value", type=float, default=3.0, help="weight of the dense loss on the last block's value path"
    )
    p.add_argument("--w-cam", type=float, default=0.0, help="weight of the Grad-CAM aid (toy/aids.py)")
    p.add_argument("--cam-replicas", type=int, default=24, help="(scene, class) pairs per step for the Grad-CAM aid")
    p.add_argument("--w-attn", type=float, default=0.0, help="weight of the attention-affinity aid (toy/aids.py)")
    p.add_argument("--attn-blocks", type=int, default=3, help="last N blocks the attention aid trains")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers generating scenes")
    p.add_argument("--eval-every", type=int, default=100, help="probe every N steps and at the end (0: never)")
    p.add_argument("--ckpt-minutes", type=float, default=3.0)
    p.add_argument("--export-minutes", type=float, default=10.0)
    stage = p.parse_known_args(argv)[0].stage
    p.set_defaults(**STAGE_DEFAULTS[stage])
    return p.parse_args(argv)


def main(argv=None) -> int:
    from tqdm import tqdm

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, tokenizer = build_toy_clip(seed=args.seed)
    if args.init is not None:
        model.load_state_dict(load_toy_clip(args.init)[0].state_dict())
        model.train()
    opt = torch.optim.AdamW(_param_groups(model, args.wd), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    ckpt_path = args.out / "ckpt.pt"
    step, history = 0, []
    if args.export and not ckpt_path.is_file():
        print(f"--export: no checkpoint at {ckpt_path}; train first (make toy-model)", file=sys.stderr)
        return 1
    if args.resume and not ckpt_path.is_file():
        print(f"--resume: no checkpoint at {ckpt_path} yet, starting from step 0", flush=True)
    elif args.resume or args.export:
        with torch.serialization.safe_globals([PosixPath]):  # args hold paths; nothing else but tensors/plain data
            ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, history = ck["step"], ck.get("history", [])
        print(f"resumed from {ckpt_path} at step {step}", flush=True)
        if args.export:
            export(model, args, step, history)
            return 0
    n_params = sum(p.numel() for p in model.parameters())
    print(f"toy CLIP: {n_params / 1e6:.2f} M params; args: {vars(args)}", flush=True)
    data = ToyBatches(args.seed, args.scenes, args.prompts, args.size, args.cam_replicas, args.colors)
    loader = DataLoader(
        data,
        batch_size=None,
        sampler=range(step, args.steps),
        num_workers=args.workers,
        collate_fn=_collate,
        prefetch_factor=2 if args.workers else None,
        persistent_workers=False,
    )
    t_start = last_ckpt = last_export = time.time()
    model.train()
    bar = tqdm(
        total=args.steps, initial=step, desc="toy CLIP", dynamic_ncols=True, mininterval=5, file=sys.stdout
    )
    stopped_early = False
    for batch in loader:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        loss, parts = compute_loss(
            model,
            tokenizer,
            batch,
            args.w_prev,
            args.w_dense,
            args.w_value,
            args.w_cam,
            args.w_attn,
            args.attn_blocks,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}", **{k: f"{v:.3f}" for k, v in parts.items()})
        if args.eval_every > 0 and (step % args.eval_every == 0 or step == args.steps):
            model.eval()
            top1 = zero_shot_top1(model, tokenizer, args.seed, size=args.size, colors=args.colors)
            cam = gradcam_probe(model, tokenizer, args.seed, size=args.size, colors=args.colors)
            model.train()
            rec = {
                "step": step,
                "minutes": round((time.time() - t_start) / 60, 2),
                "loss": round(float(loss.detach()), 4),
                **{k: round(v, 4) for k, v in parts.items()},
                "zero_shot_top1": top1,
                "gradcam_iou": round(cam, 4),
            }
            history.append(rec)
            print(f"\n[eval] {json.dumps(rec)}", flush=True)
        now = time.time()
        if now - last_ckpt > args.ckpt_minutes * 60:
            _save_ckpt(ckpt_path, model, opt, step, args, history)
            last_ckpt = now
        if now - last_export > args.export_minutes * 60:
            model.eval()
            export(model, args, step, history)
            model.train()
            last_export = now
        if args.minutes is not None and now - t_start > args.minutes * 60:
            stopped_early = True
            break
    bar.close()
    _save_ckpt(ckpt_path, model, opt, step, args, history)
    model.eval()
    export(model, args, step, history)
    print(
        f"{'stopped (time limit)' if stopped_early else 'finished'} at step {step}/{args.steps} after "
        f"{(time.time() - t_start) / 60:.1f} min; resume with: python -m carbench.toy.train --stage {args.stage} "
        f"--resume --steps {args.steps} --out {args.out}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    raise SystemExit(main())
