"""Speed benchmark of the CaR loop: `fast` (default) vs `reference` (the official code's structure).

Runs N images of a VOC-format fixture at VOC resolution (500×375) through the full loop with the
real architectures (ViT-B/16 proposals, ViT-L/14 classifier, random init), 20 VOC queries, the
15 classifier templates and the dense CRF. θ = 0 pins the work: every query survives step 1 and
step 2 confirms it, so both modes do exactly two steps over all queries. Prints per-stage time,
images/s, peak RSS (and CUDA peak), the fast/reference ratio; writes the figures to JSON.

`--batch N` runs the fast mode N images at a time through `CaR.segment_batch` (the engine's
`model.batch_images`); the reference mode always runs one image at a time, like the official code.
Two ratios of images/s are reported: `ratio_as_run` (wall clock of each mode, text encoding
included) and `ratio_steady` (per image once the fast mode's text embeddings are cached: its
one-off text time is left out; the reference mode re-encodes texts at every call, so its time is
its steady state).

    python benchmarks/bench_car.py [--images N] [--ref-images N] [--batch N] [--queries K] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from carbench.data.fixtures import write_voc_fixture
from carbench.data.voc import VOCSegmentation
from carbench.models.factory import build_segmenter

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("text", "cam", "prompts", "classifier", "postprocess", "postprocess_wait")


def model_cfg(impl: str, queries: int, args) -> dict:
    """The model section of `dataset=voc model=car` (VOC's own CaR values) for this mode."""
    overrides = ["dataset=voc", "model=car", f"model.proposal={args.proposal}", f"model.classifier={args.classifier}",
                 "model.confidence_threshold=0.0",  # pin the work: all queries survive, two steps
                 f"model.impl={impl}", f"model.postprocess_workers={args.post_workers}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=overrides).model, resolve=True)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_mode(impl: str, n: int, dataset, args, batch: int = 1) -> dict:
    seg = build_segmenter(model_cfg(impl, args.queries, args), OmegaConf.load(ROOT / "conf/postprocess/crf.yaml"),
                          device=args.device)
    if batch > 1 and not hasattr(seg, "segment_batch_deferred"):
        print(f"  {impl}: this CaR has no segment_batch; running one image at a time", file=sys.stderr)
        batch = 1
    stage = defaultdict(float)
    outputs = []
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()

    def collect(pred) -> None:
        for step in pred.trace:
            for k, v in step["time"].items():
                stage[k] += v
        outputs.append(pred)
        print(f"  {impl}: image {len(outputs)}/{n} done, {len(pred.trace)} steps", file=sys.stderr, flush=True)

    def submit(first: int) -> list:
        chunk = [dataset[i] for i in range(first, min(first + batch, n))]
        if batch > 1:
            return seg.segment_batch_deferred([s.image for s in chunk], [s.queries[: args.queries] for s in chunk])
        return [seg.segment_deferred(s.image, s.queries[: args.queries]) for s in chunk]

    pending: list = []  # pipelined like the engine: a batch's CRF (in workers, if any) overlaps the next one's CLIP
    for first in range(0, n, batch):
        finishers = submit(first)
        for finish in pending:
            collect(finish())
        pending = finishers
    for finish in pending:
        collect(finish())
    wall = time.perf_counter() - t0
    out = {
        "images": n,
        "batch": batch,
        "wall_s": wall,
        "s_per_image": wall / n,
        "images_per_s": n / wall,
        "steady_s_per_image": (wall - stage.get("text", 0.0)) / n,
        "stage_s_per_image": {k: stage.get(k, 0.0) / n for k in STAGES},
        "peak_rss_mb": rss_mb(),
        "steps": [len(p.trace) for p in outputs],
    }
    if args.device.startswith("cuda"):
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out, outputs


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2, help="images in fast mode")
    ap.add_argument("--ref-images", type=int, default=1, help="images in reference mode (it is slow)")
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--proposal", default="vitb16_random")
    ap.add_argument("--classifier", default="vitl14_random")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="bench_results.json")
    ap.add_argument("--post-workers", default="auto",
                    help="fast mode's CRF worker processes (auto: free cores − 1 on CUDA, 0 on CPU); reference always 0")
    ap.add_argument("--batch", type=int, default=1, help="fast mode: images per segment_batch call")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.images < 1 or args.ref_images < 1:
        raise SystemExit("--batch, --images and --ref-images must be ≥ 1")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_voc_fixture(Path(tmp), num_val=max(args.images, args.ref_images), seed=0,
                                 sizes=[(500, 375)] * max(args.images, args.ref_images))
        ds = VOCSegmentation(str(root))
        fast, fast_out = run_mode("fast", args.images, ds, args, args.batch)
        ref, ref_out = run_mode("reference", args.ref_images, ds, args)
    same = all(
        np.array_equal(a.labels, b.labels) and a.kept == b.kept for a, b in zip(fast_out, ref_out, strict=False)
    )
    report = {
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "proposal": args.proposal,
        "classifier": args.classifier,
        "queries": args.queries,
        "fast": fast,
        "reference": ref,
        "ratio_as_run": fast["images_per_s"] / ref["images_per_s"],
        "ratio_steady": ref["s_per_image"] / fast["steady_s_per_image"],
        "speedup_per_stage": {
            k: (ref["stage_s_per_image"][k] / fast["stage_s_per_image"][k]) if fast["stage_s_per_image"][k] else None
            for k in STAGES
        },
        "identical_outputs_on_common_images": same,
        "kept_sets_equal_on_common_images": all(a.kept == b.kept for a, b in zip(fast_out, ref_out, strict=False)),
        "label_agreement_min": min(float(np.mean(a.labels == b.labels)) for a, b in zip(fast_out, ref_out,
                                                                                      strict=False)),
    }
    print(f"\n{'stage':<12}{'fast s/img':>12}{'ref s/img':>12}{'ratio':>8}")
    for k in STAGES:
        f, r = fast["stage_s_per_image"][k], ref["stage_s_per_image"][k]
        print(f"{k:<12}{f:>12.3f}{r:>12.3f}{(r / f if f else float('nan')):>8.1f}")
    print(f"{'total':<12}{fast['s_per_image']:>12.3f}{ref['s_per_image']:>12.3f}{report['ratio_as_run']:>8.1f}")
    print(f"ratio as run {report['ratio_as_run']:.1f}×, steady {report['ratio_steady']:.1f}× "
          f"(fast batch {fast['batch']}: {fast['steady_s_per_image']:.3f} s/img once texts are cached)")
    print(f"images/s fast {fast['images_per_s']:.4f}  reference {ref['images_per_s']:.4f}; "
          f"peak RSS {max(fast['peak_rss_mb'], ref['peak_rss_mb']):.0f} MB; identical outputs: {same}")
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"figures written to {args.out}")
    return report


if __name__ == "__main__":
    main()
