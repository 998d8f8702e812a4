"""GPU throughput of the CaR pipeline in one run (`make bench-gpu`), sized to finish in 8 minutes.

On VOC-size fixture images (500×375, carbench.data.fixtures) with random-init ViT-B/16 proposals and
a ViT-L/14 classifier, 20 VOC queries and the 15 templates, θ = 0 (every query survives step 1 and
step 2 confirms it, so every configuration does the same work — as in bench_car.py), it measures:

  1. batch sweep, CLIP work only (no post-processing): ms/img per stage and end to end at each
     `--batches` size through `CaR.segment_batch` (the engine's `model.batch_images`), GPU peak
     memory and GPU utilisation (nvidia-smi sampled every 100 ms in a subprocess);
  2. the FLOPs of one image's CLIP work (torch's FlopCounterMode) against `--peak-tflops`: the FLOP
     bound in ms/img and the TFLOP/s reached at the best batch;
  3. the dense CRF in the calling process (ms/img);
  4. end to end with the CRF in the post-processing pool, pipelined like the engine, at batch 1 and
     at the best batch of (1), with 1 worker and with `auto` (every free core but one);
  5. bf16 against fp32 at the dataset's own θ (so the filter really drops queries): kept-set
     equality per image, label agreement, and the mIoU of each against the fixture's ground truth.

A time budget (`--budget-s`, default 420 s of the 480 allowed) guards each measurement: one that
would overrun it, judged from the time per image measured so far, is skipped and says so. Every
measurement starts with an untimed warm-up batch (text encoding, kernel selection). Writes
`bench_gpu.json` and `bench_gpu.md` (a markdown table) into `--out`.

    python benchmarks/bench_gpu.py [--device cuda] [--images 16] [--batches 1 2 4 8 16] [--out DIR]
    python benchmarks/bench_gpu.py --device cpu --tiny      # tiny random presets, 2 small images: a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from carbench.models.postprocess.pool import free_cores, resolve_workers

if TYPE_CHECKING:
    import torch

    from carbench.types import Sample

# torch, Hydra and the model code are imported inside the functions that use them: the CRF pool's
# workers are spawned processes that re-run this script's top-level imports, and they need none of it.

ROOT = Path(__file__).resolve().parents[1]
CLIP_STAGES = ("text", "cam", "prompts", "classifier")
STAGES = (*CLIP_STAGES, "postprocess", "postprocess_wait")
BACKGROUND_ID = -1  # Prediction.labels value for "no query" (carbench.types)


class Budget:
    """Wall-clock budget of the whole run; `allows(seconds)` says whether a step still fits."""

    def __init__(self, seconds: float) -> None:
        self.start = time.perf_counter()
        self.deadline = self.start + seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def allows(self, estimate_s: float) -> bool:
        return estimate_s < self.left()


@contextmanager
def gpu_utilisation(device: torch.device) -> Iterator[dict[str, Any]]:
    """Sample `nvidia-smi` utilisation every 100 ms while the block runs; fills mean / max / samples."""
    out: dict[str, Any] = {"mean_pct": None, "max_pct": None, "samples": 0}
    smi = shutil.which("nvidia-smi")
    if device.type != "cuda" or smi is None:
        out["note"] = "not sampled: " + ("CPU run" if device.type != "cuda" else "nvidia-smi not found")
        yield out
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
    index = device.index or 0
    gpu = visible[index] if len(visible) > index and visible[index].strip() else str(index)
    proc = subprocess.Popen([smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100",
                             "-i", gpu], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        yield out
    finally:
        proc.terminate()
        text, _ = proc.communicate(timeout=10)
        values = [int(v) for v in text.split() if v.strip().isdigit()]
        if values:
            out.update(mean_pct=float(np.mean(values)), max_pct=int(max(values)), samples=len(values))


def model_cfg(args, *, amp: str, workers: int, theta: float | None) -> dict:
    """The model section of `dataset=voc model=car` (VOC's own CaR values), on the chosen presets."""
    overrides = ["dataset=voc", "model=car", f"model.proposal={args.proposal}",
                 f"model.classifier={args.classifier}", "model.impl=fast", f"model.amp={amp}",
                 f"model.postprocess_workers={workers}"]
    if theta is not None:
        overrides.append(f"model.confidence_threshold={theta}")
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=overrides).model, resolve=True)


def voc_theta() -> float:
    """θ of `dataset=voc model=car` (what the bf16 / fp32 comparison filters with)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return float(compose("config", overrides=["dataset=voc", "model=car"]).model.confidence_threshold)


def build(args, *, amp: str = "auto", crf: bool = False, workers: int = 0, theta: float | None = 0.0):
    from omegaconf import OmegaConf

    from carbench.models.factory import build_segmenter

    post = OmegaConf.load(ROOT / "conf/postprocess/crf.yaml") if crf else None
    return build_segmenter(model_cfg(args, amp=amp, workers=workers, theta=theta), post, device=args.device,
                           seed=0)


def can_batch(seg) -> bool:
    return hasattr(seg, "segment_batch_deferred")


def run(seg, samples: list[Sample], batch: int, queries: int, device: torch.device):
    """All samples through `seg` in chunks of `batch`, pipelined like the engine (a chunk's
    post-processing is collected after the next chunk's CLIP work); one untimed warm-up chunk first.
    Returns (figures, predictions)."""
    import torch

    def submit(chunk: list[Sample]):
        images, qs = [s.image for s in chunk], [s.queries[:queries] for s in chunk]
        if can_batch(seg):
            return seg.segment_batch_deferred(images, qs)
        return [seg.segment_deferred(im, q) for im, q in zip(images, qs, strict=True)]

    chunks = [samples[i: i + batch] for i in range(0, len(samples), batch)]
    [f() for f in submit(chunks[0])]  # warm-up: text cache, kernel selection, worker start-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    preds, pending = [], []
    with gpu_utilisation(device) as util:
        t0 = time.perf_counter()
        for chunk in chunks:
            finishers = submit(chunk)
            preds += [f() for f in pending]
            pending = finishers
        preds += [f() for f in pending]
        wall = time.perf_counter() - t0
    stage: dict[str, float] = defaultdict(float)
    for p in preds:
        for step in p.trace:
            for k, v in step["time"].items():
                stage[k] += v
    n = len(preds)
    out = {
        "batch": batch, "images": n, "ms_per_image": 1000 * wall / n, "images_per_s": n / wall,
        "stage_ms_per_image": {k: 1000 * stage.get(k, 0.0) / n for k in STAGES},
        "clip_ms_per_image": 1000 * sum(stage.get(k, 0.0) for k in CLIP_STAGES) / n,
        "steps": [len(p.trace) for p in preds], "gpu_util": util,
    }
    if device.type == "cuda":
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out, preds


def count_flops(seg, sample: Sample, queries: int) -> int:
    """FLOPs of one image's CLIP work (forward and backward passes, texts already cached).

    Every aten op is seen through a dispatch mode and priced with torch's own FLOP formulas
    (torch.utils.flop_counter: matrix products, convolutions, attention; elementwise work is free).
    torch's FlopCounterMode itself cannot be used: its module hooks reject the batched
    `autograd.grad` that computes every query's Grad-CAM at once."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            price = flop_registry.get(func._overloadpacket)
            if price is not None:
                self.total += int(price(*args, **(kwargs or {}), out_val=out))
            return out

    with Count() as counter:
        seg.segment(sample.image, sample.queries[:queries])
    return counter.total


def miou(preds, samples: list[Sample], dataset) -> float:
    """mIoU (mmseg rule) of the predictions against the fixture's ground truth."""
    from carbench.metrics.semantic import SemanticIoU

    lut = np.asarray([*dataset.query_label_ids, dataset.background_label], dtype=np.int64)
    metric = SemanticIoU(num_classes=len(dataset.query_label_ids) + 1)
    for p, s in zip(preds, samples, strict=True):
        labels = lut[np.where(p.labels == BACKGROUND_ID, len(lut) - 1, p.labels)]
        metric.update(labels, s.target)
    return float(metric.compute()["mIoU"])


def agreement(low, full, samples, dataset) -> dict[str, Any]:
    """How far the bf16 predictions are from the fp32 ones."""
    same_kept = [a.kept == b.kept for a, b in zip(low, full, strict=True)]
    pix = [float(np.mean(a.labels == b.labels)) for a, b in zip(low, full, strict=True)]
    m_low, m_full = miou(low, samples, dataset), miou(full, samples, dataset)
    return {"kept_set_equal": int(sum(same_kept)), "images": len(same_kept),
            "label_agreement_min": min(pix), "label_agreement_mean": float(np.mean(pix)),
            "miou_bf16": m_low, "miou_fp32": m_full, "miou_diff": m_low - m_full}


def close_pool(seg) -> None:
    """Stop a segmenter's CRF workers now rather than whenever it is garbage-collected."""
    if getattr(seg, "post_pool", None) is not None:
        seg.post_pool.close()


def log(budget: Budget, msg: str) -> None:
    print(f"[{budget.elapsed():6.1f} s] {msg}", file=sys.stderr, flush=True)


def fits(budget: Budget, name: str, estimate_s: float, report: dict) -> bool:
    if budget.allows(estimate_s):
        log(budget, f"{name} …")
        return True
    msg = f"skipped {name}: needs ≈{estimate_s:.0f} s, {max(budget.left(), 0):.0f} s of the budget left"
    print(msg, file=sys.stderr, flush=True)
    report["skipped"].append(msg)
    return False


def markdown(report: dict) -> str:
    rows = ["| measurement | batch | CRF workers | ms/img end to end | CLIP ms/img | "
            + " | ".join(f"{k} ms" for k in STAGES) + " | peak GPU MB | GPU util % mean / max |",
            "|---" * (7 + len(STAGES)) + "|"]
    for name, r in report["runs"].items():
        util = r["gpu_util"]
        u = f"{util['mean_pct']:.0f} / {util['max_pct']}" if util.get("mean_pct") is not None else "-"
        peak = f"{r['peak_mem_mb']:.0f}" if "peak_mem_mb" in r else "-"
        stages = " | ".join(f"{r['stage_ms_per_image'][k]:.1f}" for k in STAGES)
        rows.append(f"| {name} | {r['batch']} | {r.get('workers', '-')} | {r['ms_per_image']:.1f} | "
                    f"{r['clip_ms_per_image']:.1f} | {stages} | {peak} | {u} |")
    lines = [f"# bench_gpu: {report['device_name']}", "",
             f"{report['images']} fixture images {report['size_wh'][0]}×{report['size_wh'][1]}, "
             f"{report['queries']} queries, proposal {report['proposal']}, classifier {report['classifier']}, "
             f"amp {report['amp']}; {report['cores']} free CPU cores.", "", *rows, ""]
    if report.get("crf_in_process_ms_per_image") is not None:
        lines.append(f"Dense CRF in the calling process: {report['crf_in_process_ms_per_image']:.1f} ms/img.")
    if report.get("best_batch") is not None:
        lines.append(f"Best batch (CLIP work): {report['best_batch']}.")
    fl = report.get("flops")
    if fl:
        lines.append(f"FLOPs per image (CLIP work, counted by torch): {fl['per_image_gflop']:.4g} GFLOP; at "
                     f"{fl['peak_tflops']:.0f} TFLOP/s that is a bound of {fl['flop_bound_ms_per_image']:.3g} ms/img; "
                     f"reached {fl['achieved_tflops_best_batch']:.3g} TFLOP/s at the best batch.")
    agree = report.get("bf16_vs_fp32")
    if agree:
        lines.append(f"bf16 vs fp32 (θ = {agree['theta']}): kept sets equal on {agree['kept_set_equal']}/"
                     f"{agree['images']} images, label agreement mean {agree['label_agreement_mean']:.4f} "
                     f"(min {agree['label_agreement_min']:.4f}), mIoU bf16 {agree['miou_bf16']:.2f} vs fp32 "
                     f"{agree['miou_fp32']:.2f} (diff {agree['miou_diff']:+.2f}).")
    lines += [f"- {s}" for s in report["skipped"] + report["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--proposal", default="vitb16_random")
    ap.add_argument("--classifier", default="vitl14_random")
    ap.add_argument("--size", type=int, nargs=2, default=[500, 375], metavar=("W", "H"))
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop measurements that would overrun this")
    ap.add_argument("--tiny", action="store_true", help="tiny random presets, 2 images of 64×48, 4 queries")
    ap.add_argument("--out", default="bench_gpu_out", help="folder for bench_gpu.json and bench_gpu.md")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="the GPU's dense bf16 peak, for the FLOP bound (989: H100 SXM and H200)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    args = ap.parse_args(argv)
    import torch

    from carbench.data.fixtures import write_voc_fixture
    from carbench.data.voc import VOCSegmentation

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.tiny:
        args.proposal = args.classifier = "tiny_random"
        args.images, args.size, args.queries, args.batches = 2, [64, 48], 4, [1, 2]
    if args.images < 1 or min(args.batches) < 1:
        raise SystemExit("--images and every --batches value must be ≥ 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device; run with --device cpu --tiny for a smoke run")
    budget = Budget(args.budget_s)
    torch.manual_seed(0)
    auto = resolve_workers("auto", "cuda")  # what model.postprocess_workers=auto gives a GPU run on this machine
    report: dict[str, Any] = {
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "images": args.images, "size_wh": list(args.size), "queries": args.queries,
        "proposal": args.proposal, "classifier": args.classifier, "amp": "auto (bf16 on CUDA, fp32 on CPU)",
        "cores": free_cores(),
        "runs": {}, "skipped": [], "notes": [], "best_batch": None, "crf_in_process_ms_per_image": None,
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        ds = VOCSegmentation(str(write_voc_fixture(Path(tmp), num_val=args.images, seed=0, sizes=[tuple(args.size)])))
        samples = [ds[i] for i in range(args.images)]

    # 1. batch sweep of the CLIP work
    log(budget, "fixture written; building the model")
    t0 = time.perf_counter()
    seg = build(args)
    build_s = time.perf_counter() - t0  # every later estimate that builds a model adds this
    report["build_s"] = build_s
    if not can_batch(seg):
        note = "CaR.segment_batch is not available: batch sizes > 1 skipped"
        print(note, file=sys.stderr)
        report["notes"].append(note)
    per_image_s = None
    for b in sorted(set(args.batches)):
        if b > 1 and not can_batch(seg):
            continue
        if b > args.images:
            report["skipped"].append(f"batch {b} > --images {args.images}")
            continue
        if per_image_s is not None and not fits(budget, f"batch {b}", per_image_s * (args.images + b), report):
            break
        try:
            r, preds = run(seg, samples, b, args.queries, device)
        except torch.cuda.OutOfMemoryError:
            report["skipped"].append(f"batch {b}: out of GPU memory")
            torch.cuda.empty_cache()
            break
        report["runs"][f"clip b{b}"] = r
        per_image_s = min(per_image_s or 1e9, r["ms_per_image"] / 1000)
        log(budget, f"clip b{b}: {r['ms_per_image']:.1f} ms/img")
    clip_runs = [r for k, r in report["runs"].items() if k.startswith("clip")]
    best = min(clip_runs, key=lambda r: r["ms_per_image"])["batch"] if clip_runs else 1
    report["best_batch"] = best
    # 2. FLOPs of one image
    flops = 0
    if per_image_s is not None and fits(budget, "FLOP count", 5 * per_image_s + 5, report):
        try:
            flops = count_flops(seg, samples[0], args.queries)
        except Exception as exc:  # noqa: BLE001 - a counting failure must not cost the rest of the GPU run
            flops = 0
            report["notes"].append(f"FLOP count failed: {type(exc).__name__}: {exc}")
    if per_image_s is not None and flops:
        best_clip_s = min(r["clip_ms_per_image"] for r in clip_runs) / 1000
        report["flops"] = {"per_image_gflop": flops / 1e9, "peak_tflops": args.peak_tflops,
                           "flop_bound_ms_per_image": 1000 * flops / (args.peak_tflops * 1e12),
                           "achieved_tflops_best_batch": flops / best_clip_s / 1e12}
    del seg

    # 3. the CRF alone, in the calling process, on two images
    if per_image_s is not None and fits(budget, "CRF in process", build_s + 2 * (per_image_s + 5), report):
        r, _ = run(build(args, crf=True, workers=0), samples[:2], 1, args.queries, device)
        report["crf_in_process_ms_per_image"] = r["stage_ms_per_image"]["postprocess"]
    crf_s = (report["crf_in_process_ms_per_image"] or 1000) / 1000

    # 4. end to end with the CRF pool (one model per worker count, built only if a run of it fits)
    for workers in sorted({1, auto}):
        seg = None
        for b in sorted({1, best}):
            name = f"end to end b{b} w{workers}"
            estimate = (args.images + b) * max(per_image_s or 0, crf_s / workers) + (build_s if seg is None else 0)
            if not fits(budget, name, estimate + 5, report):
                continue
            seg = seg or build(args, crf=True, workers=workers)
            r, _ = run(seg, samples, b, args.queries, device)
            r["workers"] = workers
            report["runs"][name] = r
            log(budget, f"{name}: {r['ms_per_image']:.1f} ms/img")
        if seg is not None:
            close_pool(seg)

    # 5. bf16 vs fp32 at the dataset's θ (CRF in process: few queries survive, and no worker start-up)
    theta = voc_theta()
    if device.type != "cuda":
        report["notes"].append("bf16 autocast applies on CUDA only: on CPU both runs are fp32")
    if fits(budget, "bf16 vs fp32", 2 * ((args.images + best) * ((per_image_s or 0) + crf_s) + build_s), report):
        preds = {}
        for amp in ("bf16", "none"):
            _, preds[amp] = run(build(args, amp=amp, crf=True, workers=0, theta=theta), samples, best,
                                args.queries, device)
        report["bf16_vs_fp32"] = {"theta": theta, **agreement(preds["bf16"], preds["none"], samples, ds)}
    report["wall_s"] = budget.elapsed()
    (out_dir / "bench_gpu.json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    (out_dir / "bench_gpu.md").write_text(table)
    print(table)
    print(f"figures written to {out_dir}/bench_gpu.json and bench_gpu.md")
    return report


if __name__ == "__main__":
    main()
