"""Speed of the CAM stage (CLIP-ES proposals): the old replicated last block against the shared forward.

One VOC-size image (500×375 → a 32×24 patch grid, 769 tokens) through `ClipESProposer.propose` on
the real ViT-B/16 architecture with random weights, the 20 VOC queries and the official configs'
23 background words (conf/bg_queries/released.yaml), texts encoded beforehand (not timed). Four
ways to get the per-query gradients:
- `replicated`: what this proposer did before the shared forward: the last block run once on a
  batch that copies its input per query (`query_chunk` copies at a time), one backward. It lives
  only here, as `replicated_grad_cams`, to keep the before/after figure reproducible;
- `shared_autograd`: one forward of the last block and every query's full gradient at ln_1 by
  autograd with batched one-hot cotangents (`autograd_grad_cams`, also local): what the closed
  form for the attention's token sums saves on top of sharing the forward;
- `shared`: the current fast path (one forward, batched cotangents, closed-form attention sums);
- `per_query`: `query_chunk=1`, the official structure (`model.impl=reference`).
Then `propose_batch` on 4 images of that size at batch 1 and 4 against 4 `propose` calls.
Prints a table (wall and process-CPU seconds, the max difference of the raw Grad-CAM maps and of
the final proposals against the per-query structure) and writes the figures to JSON (`--out`).

    python benchmarks/bench_cam.py [--threads 1] [--repeats 2] [--queries 20] [--device cpu] [--out cam.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import types
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from carbench.models.backbones.registry import load_clip
from carbench.models.proposals.clip_es import ClipESProposer, minmax

ROOT = Path(__file__).resolve().parents[1]


def replicated_grad_cams(self: ClipESProposer, a_in, x_in, text, n_fg: int, grid):
    """The pre-shared-forward path: replicate the last block's input per query, one backward per chunk."""
    bb = self.backbone
    block = bb.blocks[-1]
    cams = []
    for start in range(0, n_fg, self.query_chunk):
        idx = torch.arange(start, min(start + self.query_chunk, n_fg), device=a_in.device)
        a = a_in.expand(len(idx), -1, -1).clone().requires_grad_(True)
        x = x_in.expand(len(idx), -1, -1)
        with torch.enable_grad():
            y = x + block.ls_1(block.attn(a, a, a, need_weights=False)[0])
            y = y + block.ls_2(block.mlp(block.ln_2(y)))
            img = F.normalize(bb.patch_mean_embedding(y).float(), dim=-1)
            probs = (bb.logit_scale * img @ text.T).softmax(-1)
            (grad,) = torch.autograd.grad(probs[torch.arange(len(idx)), idx].sum(), a)
        alpha = grad[:, 1:].float().mean(1, keepdim=True)
        cams.append(F.relu((alpha * a.detach()[:, 1:].float()).sum(-1)).view(len(idx), *grid))
    return torch.cat(cams, 0)


def autograd_grad_cams(self: ClipESProposer, a_in, x_in, text, n_fg: int, grid):
    """One forward of the last block, every query's full [N, C] gradient at ln_1 by autograd with a
    batch of one-hot cotangents (no closed form for the attention): the plain shared-forward route."""
    bb = self.backbone
    block = bb.blocks[-1]
    a = a_in.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        y = x_in + block.ls_1(block.attn(a, a, a, need_weights=False)[0])
        y = y + block.ls_2(block.mlp(block.ln_2(y)))
        img = F.normalize(bb.patch_mean_embedding(y).float(), dim=-1)
        probs = (bb.logit_scale * img @ text.T).softmax(-1)[0, :n_fg]
    cams = []
    for start in range(0, n_fg, self.query_chunk):
        m = min(self.query_chunk, n_fg - start)
        onehot = torch.zeros(m, n_fg, dtype=probs.dtype)
        onehot[:, start : start + m] = torch.eye(m, dtype=probs.dtype)
        (grad,) = torch.autograd.grad(probs, a, onehot.to(probs.device), retain_graph=True, is_grads_batched=True)
        alpha = grad[:, 0, 1:].float().mean(1)  # [m, C]
        cams.append(F.relu(a_in[0, 1:].float() @ alpha.T).T.reshape(m, *grid))
    return torch.cat(cams, 0)


def timed_grad_cams(prop: ClipESProposer, clock: list[tuple[float, float]], last: list[torch.Tensor]) -> None:
    """Wrap the proposer's gradient step so its own share of `propose` is measured ((wall, CPU)
    seconds in `clock`) and its raw CAMs kept (`last`) for the before/after comparison."""
    inner = prop._grad_cams

    def wrapped(a_in, x_in, text, n_fg, grid):
        t0, c0 = time.perf_counter(), time.process_time()
        out = inner(a_in, x_in, text, n_fg, grid)
        clock.append((time.perf_counter() - t0, time.process_time() - c0))
        last[:] = [out.detach().cpu()]
        return out

    prop._grad_cams = wrapped


def scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random colour field with two boxes (content does not change the cost)."""
    coarse = rng.random((h // 25 + 2, w // 25 + 2, 3)).astype(np.float32)
    img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC) * 200 + 20
    img[h // 5 : h // 2, w // 4 : w // 2] = (210, 40, 30)
    img[h // 2 : 4 * h // 5, 3 * w // 5 : 9 * w // 10] = (30, 60, 200)
    return img.clip(0, 255).astype(np.uint8)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn, repeats: int, device: str, warm_up: bool = True) -> tuple[float, float, object]:
    """Median wall and process-CPU seconds of `repeats` calls (after one untimed warm-up call unless
    told) and the last result. On a shared machine the CPU time is the steadier of the two."""
    out = fn() if warm_up else None
    wall, cpu = [], []
    for _ in range(repeats):
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        sync(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu), out


LOCAL_PATHS = {"replicated": replicated_grad_cams, "shared_autograd": autograd_grad_cams}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--repeats", type=int, default=2, help="timed calls per figure (median), after a warm-up")
    ap.add_argument("--queries", type=int, default=20, help="foreground queries (the first K VOC names)")
    ap.add_argument("--query-chunk", type=int, default=32, help="queries per batched backward (replicated, shared)")
    ap.add_argument("--batch", type=int, default=4, help="images for the propose_batch comparison")
    ap.add_argument("--size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    ap.add_argument("--preset", default="vitb16_random")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-per-query", action="store_true", help="do not time the query_chunk=1 structure")
    ap.add_argument("--out", type=Path, help="write the figures to this JSON file")
    args = ap.parse_args(argv)
    if args.threads < 1:
        sys.exit(f"--threads must be ≥ 1, got {args.threads}")
    if args.batch < 1 or args.repeats < 1:
        sys.exit(f"--batch and --repeats must be ≥ 1, got {args.batch} and {args.repeats}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    queries = list(OmegaConf.load(ROOT / "conf/dataset/voc.yaml").dataset.queries)
    if not 1 <= args.queries <= len(queries):
        sys.exit(f"--queries must be in 1..{len(queries)} (the VOC names), got {args.queries}")
    queries = queries[: args.queries]
    background = list(OmegaConf.load(ROOT / "conf/bg_queries/released.yaml").model.background_queries)
    bb = load_clip(args.preset, args.device)
    w, h = args.size
    rng = np.random.default_rng(0)
    images = [scene(rng, h, w) for _ in range(args.batch)]
    load_before = os.getloadavg()

    results: dict[str, dict] = {}
    maps, raw = {}, {}
    paths = (("replicated", args.query_chunk), ("shared_autograd", args.query_chunk), ("shared", args.query_chunk),
             ("per_query", 1))
    for name, chunk in paths:
        if name == "per_query" and args.skip_per_query:
            continue
        prop = ClipESProposer(bb, query_chunk=chunk)
        prop.warm(queries, background)
        if name in LOCAL_PATHS:
            prop._grad_cams = types.MethodType(LOCAL_PATHS[name], prop)
        clock: list[tuple[float, float]] = []
        last: list[torch.Tensor] = []
        timed_grad_cams(prop, clock, last)
        prop.propose(images[0], queries, background, 1)  # warm-up
        clock.clear()
        secs, cpu, maps[name] = time_call(lambda p=prop: p.propose(images[0], queries, background, 1),
                                          args.repeats, args.device, warm_up=False)
        raw[name] = minmax(last[0])
        results[name] = {"propose_s": secs, "propose_cpu_s": cpu, "grad_s": sum(c[0] for c in clock) / args.repeats,
                         "grad_cpu_s": sum(c[1] for c in clock) / args.repeats, "query_chunk": chunk}
    ref_name = "per_query" if "per_query" in maps else "replicated"
    for name in results:
        results[name][f"max_abs_diff_maps_vs_{ref_name}"] = float(np.abs(maps[name] - maps[ref_name]).max())
        results[name][f"max_abs_diff_gradcam_vs_{ref_name}"] = float((raw[name] - raw[ref_name]).abs().max())

    prop = ClipESProposer(bb, query_chunk=args.query_chunk)
    prop.warm(queries, background)
    qs, steps = [queries] * args.batch, [1] * args.batch
    # already warm from the runs above: no extra warm-up call
    single_s, single_cpu, single = time_call(lambda: [prop.propose(im, queries, background, 1) for im in images],
                                             args.repeats, args.device, warm_up=False)
    b1_s, b1_cpu, _ = time_call(lambda: [prop.propose_batch([im], [queries], background, [1])[0] for im in images],
                                args.repeats, args.device, warm_up=False)
    bn_s, bn_cpu, batched = time_call(lambda: prop.propose_batch(images, qs, background, steps), args.repeats, args.device)
    batch = {
        "images": args.batch,
        "single_calls_ms_per_img": 1e3 * single_s / args.batch,
        "batch1_ms_per_img": 1e3 * b1_s / args.batch,
        f"batch{args.batch}_ms_per_img": 1e3 * bn_s / args.batch,
        "single_calls_cpu_ms_per_img": 1e3 * single_cpu / args.batch,
        "batch1_cpu_ms_per_img": 1e3 * b1_cpu / args.batch,
        f"batch{args.batch}_cpu_ms_per_img": 1e3 * bn_cpu / args.batch,
        "max_abs_diff_batched_vs_single": float(max(np.abs(a - b).max() for a, b in zip(batched, single, strict=True))),
    }
    report = {
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "preset": args.preset,
        "image_size_wh": [w, h],
        "queries": len(queries),
        "background_words": len(background),
        "repeats": args.repeats,
        "cam": results,
        "speedup_propose_shared_vs_replicated": results["replicated"]["propose_s"] / results["shared"]["propose_s"],
        "speedup_propose_cpu_shared_vs_replicated": results["replicated"]["propose_cpu_s"]
        / results["shared"]["propose_cpu_s"],
        "speedup_grad_shared_vs_replicated": results["replicated"]["grad_s"] / results["shared"]["grad_s"],
        "speedup_grad_cpu_shared_vs_replicated": results["replicated"]["grad_cpu_s"] / results["shared"]["grad_cpu_s"],
        "propose_batch": batch,
    }
    print(f"CAM stage, {args.preset}, {w}×{h}, {len(queries)} queries + {len(background)} background words, "
          f"{args.device}, {torch.get_num_threads()} thread(s), load {load_before[0]:.1f} → {os.getloadavg()[0]:.1f}")
    print(f"{'path':<16}{'chunk':>6}{'propose s':>11}{'(cpu s)':>9}{'gradients s':>13}{'(cpu s)':>9}"
          f"{'max |Δ| CAM':>13}{'max |Δ| maps':>14}")
    for name, r in results.items():
        print(f"{name:<16}{r['query_chunk']:>6}{r['propose_s']:>11.3f}{r['propose_cpu_s']:>9.3f}{r['grad_s']:>13.3f}"
              f"{r['grad_cpu_s']:>9.3f}{r[f'max_abs_diff_gradcam_vs_{ref_name}']:>13.1e}"
              f"{r[f'max_abs_diff_maps_vs_{ref_name}']:>14.1e}")
    print(f"shared vs replicated: propose ×{report['speedup_propose_shared_vs_replicated']:.2f} wall, "
          f"×{report['speedup_propose_cpu_shared_vs_replicated']:.2f} cpu; "
          f"gradients ×{report['speedup_grad_shared_vs_replicated']:.2f} wall, "
          f"×{report['speedup_grad_cpu_shared_vs_replicated']:.2f} cpu")
    print(f"propose_batch, {args.batch} images: single calls {batch['single_calls_ms_per_img']:.0f} ms/img, "
          f"batch 1 {batch['batch1_ms_per_img']:.0f} ms/img, batch {args.batch} "
          f"{batch[f'batch{args.batch}_ms_per_img']:.0f} ms/img (cpu {batch['single_calls_cpu_ms_per_img']:.0f} / "
          f"{batch['batch1_cpu_ms_per_img']:.0f} / {batch[f'batch{args.batch}_cpu_ms_per_img']:.0f}; "
          f"max |Δ| {batch['max_abs_diff_batched_vs_single']:.1e})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
