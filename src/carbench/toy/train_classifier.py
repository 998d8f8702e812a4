"""Stage 3 of the toy recipe: the classifier CLIP, fine-tuned on CaR's own prompted proposals.

``python -m carbench.toy.train_classifier [--scenes N] [--steps N] [--resume] [--export]``

Why a third stage. After stage 2 the toy CLIP's masks of the right classes were worth ≈ 48 mIoU
(the oracle), but CaR kept the exact ground-truth class set on only ≈ 23 % of val images: the
model labelled its *own* prompted proposals badly, because stages 1-2 only ever showed it
prompted crops of clean object masks. The paper's CaR uses two CLIPs (ViT-B/16 proposes,
ViT-L/14 classifies); the toy does the same: the proposer stays the stage-2 model (preset `toy`)
and the classifier (preset `toy_classifier`) is the stage-2 model fine-tuned here.

The data is exactly what the classifier sees in a CaR run on the toy world:
- scenes from the *train* stream of `carbench.toy.scenes` (never tune or val), in the
  benchmark's colour mode (`--colors`, default `TOY_COLORS`);
- for each scene, the proposer's maps for three query sets: all classes at step 1 (what the
  loop starts with), the present classes at step 2 (a perfect filter's next step), and the
  present classes plus one to three absent ones at step 2 (an imperfect filter);
- each map binarised at η and visually prompted exactly as the run does (the toy config's
  η, prompts and prompt options, through `prompt_images`), then preprocessed by the classifier's
  own transform.

The target of a prompted proposal is a distribution over the step's alive queries: the share of
each alive class among the object pixels under the mask, when objects make up at least
`--min-object` of it; otherwise (a mask on the background, or on a class no longer alive) the
uniform distribution, so the query scores 1/K and the filter can drop it. The loss is the
cross-entropy of each template's softmax over the alive queries (what the double softmax sums)
against that target. Only the image tower and the logit scale train; the text tower stays the
stage-2 one, so the classifier's texts mean what the proposer's do. `--train-text` trains it too
(measured in the README's toy section: no gain, so not the recipe).

The committed recipe is the defaults: 4,000 scenes (56,042 proposals), 1,200 steps of 64
proposals, AdamW lr 6e-4 (30 warm-up steps, then cosine), weight decay 0.05, 2 threads; about
26 minutes on 2 idle cores (7 of proposals, 19 of training). With 1,000 scenes and 600 steps the
classifier over-fitted its proposals: on train scenes it kept 94 % of the present classes whose
step-1 mask lay mostly on their own object, on val scenes 72 %; with 4,000 it keeps 82 % on val.

Deterministic on CPU at a fixed `--threads` (default 2): the proposals, the sampling and the
export are functions of the arguments, and the export is byte-reproducible (see
`save_toy_weights`). Resumable: `--resume` continues from `--out`/ckpt.pt (the proposal set is
rebuilt from its seeds, or read back from the `--out`/proposals-*.pt file named after the proposer's
sha256, the seed, the scene count, the colour mode and a hash of the model settings that shape the
proposals, so a re-tuned η, λ or prompt list builds new proposals and a re-tuned θ does not).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from carbench.models.backbones.vit import ClipBackbone
from carbench.models.factory import build_segmenter
from carbench.models.prompts import prompt_images
from carbench.toy.model import (
    TOY_CLASSIFIER_WEIGHTS,
    TOY_COLORS,
    TOY_MEAN,
    TOY_STD,
    TOY_WEIGHTS,
    build_toy_clip,
    encode_texts,
    load_toy_clip,
    save_toy_weights,
    sha256_of,
)
from carbench.toy.runs import toy_config
from carbench.toy.scenes import CLASS_NAMES, COLOR_MODES, make_scene, scene_rng
from carbench.toy.train import lr_at

STEP_STREAM = 300  # np.random.default_rng([seed, 300, step]): which proposals a training step sees
SET_STREAM = 301  # np.random.default_rng([seed, 301, scene]): the extra absent queries of a scene


def proposal_targets(label: np.ndarray, masks: np.ndarray, alive: list[int], min_object: float) -> np.ndarray:
    """Target distributions [n, K] over the alive class ids (1-based) for binary masks [n, H, W].

    Share of each alive class among the object pixels under the mask; the uniform distribution when
    objects cover less than `min_object` of the mask (or the mask is empty); object pixels of classes
    that are not alive spread uniformly too (the step cannot name them).
    """
    k = len(alive)
    out = np.full((len(masks), k), 1.0 / k, dtype=np.float32)
    for i, m in enumerate(masks):
        area = int(m.sum())
        if area == 0:
            continue
        counts = np.bincount(label[m].ravel(), minlength=len(CLASS_NAMES) + 1).astype(np.float64)
        objects = counts[1:].sum()
        if objects < min_object * area:
            continue
        named = np.array([counts[c] for c in alive]) / objects
        out[i] = named + (1.0 - named.sum()) / k
    return out


def query_sets(present: list[int], rng: np.random.Generator) -> list[tuple[list[int], int]]:
    """(alive class ids, step) of the three CaR steps a scene contributes (see module docstring)."""
    every = list(range(1, len(CLASS_NAMES) + 1))
    absent = [c for c in every if c not in present]
    sets = [(every, 1)]
    if present:
        sets.append((sorted(present), 2))
        extra = rng.choice(absent, size=min(len(absent), int(rng.integers(1, 4))), replace=False)
        sets.append((sorted([*present, *map(int, extra)]), 2))
    return sets


def build_proposals(
    seg, seed: int, n_scenes: int, size: int, min_object: float, colors: str = "any"
) -> dict[str, torch.Tensor]:
    """Prompted proposals of `n_scenes` train scenes, preprocessed, with their alive masks and targets."""
    from tqdm import tqdm

    images, alive_rows, targets = [], [], []
    n_cls = len(CLASS_NAMES)
    for s in tqdm(range(n_scenes), desc="proposals", dynamic_ncols=True, mininterval=5, file=sys.stdout):
        scene = make_scene(scene_rng(seed, "train", s), size, colors=colors)
        present = sorted({int(v) for v in np.unique(scene.label)} - {0})
        for alive, step in query_sets(present, np.random.default_rng([seed, SET_STREAM, s])):
            names = [CLASS_NAMES[c - 1] for c in alive]
            maps = seg.proposer.propose(scene.image, names, seg.background_queries, step)
            prompted = prompt_images(scene.image, maps, seg.prompts, seg.eta, **seg.prompt_kwargs)
            images.append(seg.classifier.preprocess(prompted).half())
            target = proposal_targets(scene.label, maps > seg.eta, alive, min_object)
            row = np.zeros((len(alive), n_cls), dtype=np.float32)
            row[:, [c - 1 for c in alive]] = target
            targets.append(torch.from_numpy(row))
            on = torch.zeros(len(alive), n_cls, dtype=torch.bool)
            on[:, [c - 1 for c in alive]] = True
            alive_rows.append(on)
    return {"images": torch.cat(images), "alive": torch.cat(alive_rows), "target": torch.cat(targets)}


def classifier_loss(emb: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, alive: torch.Tensor,
                    target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each template's softmax over the alive queries against the target.

    emb [B, D], text [T, C, D] (all classes), alive [B, C] bool, target [B, C] (zero off alive).
    """
    logits = scale * torch.einsum("bd,tcd->tbc", emb, text)
    logp = logits.masked_fill(~alive, float("-inf")).log_softmax(-1)
    return -(target * logp.masked_fill(~alive, 0.0)).sum(-1).mean()


#: Model keys that act only after the prompted proposals exist (the filter, the loop, the scorer's
#: texts, the engine), so a change to them leaves stage 3's data as it was.
AFTER_PROPOSALS = ("confidence_threshold", "max_steps", "oracle_queries", "batch_images", "postprocess_workers",
                   "templates", "double_softmax")


def proposal_setting(model_cfg) -> str:
    """A short hash of the model config minus `AFTER_PROPOSALS`: names the proposal file it built."""
    kept = OmegaConf.masked_copy(model_cfg, [k for k in model_cfg if k not in AFTER_PROPOSALS])
    return hashlib.sha256(OmegaConf.to_yaml(kept).encode()).hexdigest()[:12]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m carbench.toy.train_classifier", description=__doc__.split("\n")[0])
    p.add_argument("--init", type=Path, default=TOY_WEIGHTS, help="stage-2 weights to start from (the proposer's)")
    p.add_argument("--weights", type=Path, default=TOY_CLASSIFIER_WEIGHTS, help="exported fp16 safetensors path")
    p.add_argument("--out", type=Path, default=Path(".cache/toy_stage3"), help="checkpoint directory")
    p.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt")
    p.add_argument("--export", action="store_true", help="only export OUT/ckpt.pt to --weights and exit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--colors", choices=COLOR_MODES, default=TOY_COLORS,
                   help="how objects are coloured (toy/scenes.py COLOR_MODES); the proposer's world")
    p.add_argument("--scenes", type=int, default=4000, help="train scenes whose proposals make the data")
    p.add_argument("--min-object", type=float, default=0.2,
                   help="objects must cover this share of a mask for it to name a class (else: uniform target)")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch", type=int, default=64, help="prompted proposals per step")
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--wd", type=float, default=0.05)
    p.add_argument("--train-text", action="store_true",
                   help="train the text tower too (default: frozen, the proposer's)")
    p.add_argument("--threads", type=int, default=2, help="pinned: the sha256 is reproducible at a fixed count")
    p.add_argument("--minutes", type=float, default=None, help="stop (checkpoint + export) after this many minutes")
    p.add_argument("--ckpt-minutes", type=float, default=3.0)
    return p.parse_args(argv)


def _segmenter(init: Path):
    """The toy CaR run's own proposer (the weights `init`), prompts and classifier transform (as
    `python evaluate.py` builds them), and the model config they came from."""
    # the stage-2 model scores here; only its transform is used
    cfg = toy_config([f"model.proposal_pretrained={init}", "model.classifier=toy", f"model.classifier_pretrained={init}"])
    return build_segmenter(cfg.model, None, device="cpu", seed=0), cfg.model


def _save_ckpt(path: Path, model, opt, step: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, tmp)
    tmp.replace(path)


def export(model, args: argparse.Namespace, step: int) -> str:
    meta = {"stage": "3", "step": str(step), "seed": str(args.seed), "scenes": str(args.scenes),
            "init_sha256": sha256_of(args.init)}
    if args.colors != "any":  # absent for the world exported before the option existed
        meta["colors"] = args.colors
    digest = save_toy_weights(model, args.weights, metadata=meta)
    print(f"[export] step {step}: {args.weights} sha256 {digest[:16]}…", flush=True)
    return digest


def main(argv=None) -> int:
    from tqdm import tqdm

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, tokenizer = build_toy_clip(seed=args.seed)
    model.load_state_dict(load_toy_clip(args.init)[0].state_dict())
    for p in model.parameters():
        p.requires_grad_(False)
    # --train-text: the classifier's own text tower trains too, as the paper's second CLIP has its own
    trained = list(model.parameters()) if args.train_text else [*model.visual.parameters(), model.logit_scale]
    for p in trained:
        p.requires_grad_(True)
    opt = torch.optim.AdamW([{"params": [p for p in trained if p.ndim >= 2], "weight_decay": args.wd},
                             {"params": [p for p in trained if p.ndim < 2], "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    ckpt_path, step = args.out / "ckpt.pt", 0
    if (args.resume or args.export) and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step = int(ck["step"])
        print(f"resumed from {ckpt_path} at step {step}", flush=True)
    elif args.export:
        print(f"--export: no checkpoint at {ckpt_path}; train first (make toy-model)", file=sys.stderr)
        return 1
    elif args.resume:
        print(f"--resume: no checkpoint at {ckpt_path} yet, starting from step 0", flush=True)
    if args.export:
        export(model.eval(), args, step)
        return 0

    seg, model_cfg = _segmenter(args.init)
    # keyed by everything the proposals depend on (the proposer's weights and the model settings up
    # to the prompting: η, λ, prompts, CAM…), so a retrained proposer or a re-tuned η never reuses
    # stale ones, while a re-tuned θ reuses them
    setting = proposal_setting(model_cfg)
    data_path = args.out / (f"proposals-{sha256_of(args.init)[:12]}-seed{args.seed}-n{args.scenes}-size{args.size}"
                            f"-min{args.min_object}-{args.colors}-cfg{setting}.pt")
    if data_path.is_file():
        data = torch.load(data_path, map_location="cpu", weights_only=True)
    else:
        data = build_proposals(seg, args.seed, args.scenes, args.size, args.min_object, args.colors)
        data_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(data, data_path.with_name(data_path.name + ".tmp"))
        data_path.with_name(data_path.name + ".tmp").replace(data_path)
    n = len(data["images"])
    print(f"{n} prompted proposals from {args.scenes} scenes", flush=True)

    def class_texts() -> torch.Tensor:  # [T, C, D]
        return torch.stack([encode_texts(model, tokenizer, [t.format(c) for c in CLASS_NAMES])
                            for t in seg.classifier.templates])

    if not args.train_text:
        with torch.no_grad():
            frozen_text = class_texts()
    ref = seg.classifier.backbone  # the same code path, wrapped around the weights being trained
    backbone = ClipBackbone(model, tokenizer, ref.preset, mean=TOY_MEAN, std=TOY_STD, device=torch.device("cpu"))
    skip = seg.classifier.skip_last_block

    model.train()
    t0 = last_ckpt = time.time()
    bar = tqdm(total=args.steps, initial=step, desc="toy classifier", dynamic_ncols=True, mininterval=5,
               file=sys.stdout)
    while step < args.steps:
        idx = torch.from_numpy(np.random.default_rng([args.seed, STEP_STREAM, step]).choice(n, args.batch,
                                                                                               replace=False))
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        emb = backbone.image_embeddings(data["images"][idx].float(), skip)
        text = class_texts() if args.train_text else frozen_text
        loss = classifier_loss(emb, text, model.logit_scale.exp().clamp(max=100), data["alive"][idx],
                               data["target"][idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        if time.time() - last_ckpt > args.ckpt_minutes * 60:
            _save_ckpt(ckpt_path, model, opt, step)
            last_ckpt = time.time()
        if args.minutes is not None and time.time() - t0 > args.minutes * 60:
            print(f"\nstopped (time limit) at step {step}/{args.steps}; rerun with --resume to continue", flush=True)
            break
    bar.close()
    _save_ckpt(ckpt_path, model, opt, step)
    export(model.eval(), args, step)
    print(f"finished {step} steps in {(time.time() - t0) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
