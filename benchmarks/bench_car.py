"""Speed benchmark of the CaR loop: `fast` (default) vs `reference` (the official code's structure).

Runs N images of a VOC-format fixture at VOC resolution (500×375) through the full loop with the
real architectures (ViT-B/16 proposals, ViT-L/14 classifier, random init), 20 VOC queries, the
15 classifier templates and the dense CRF. θ = 0 pins the work: every query survives step 1 and
step 2 confirms it, so both modes do exactly two steps over all queries. Prints per-stage time,
images/s, peak RSS (and CUDA peak), the fast/reference ratio; writes the figures to JSON.

    python benchmarks/bench_car.py [--images N] [--ref-images N] [--queries K] [--device cpu|cuda]
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
from omegaconf import OmegaConf

from carbench.data.fixtures import write_voc_fixture
from carbench.data.voc import VOCSegmentation
from carbench.models.factory import build_segmenter

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("text", "cam", "prompts", "classifier", "postprocess", "postprocess_wait")


def model_cfg(impl: str, queries: int, args) -> dict:
    voc = OmegaConf.load(ROOT / "conf/dataset/voc.yaml")
    base = OmegaConf.load(ROOT / "conf/model/car.yaml")
    cfg = OmegaConf.merge(base, voc.model)
    cfg.proposal, cfg.classifier = args.proposal, args.classifier
    cfg.confidence_threshold = 0.0  # pin the work: all queries survive, two steps
    cfg.impl = impl
    cfg.postprocess_workers = int(args.post_workers) if args.post_workers != "auto" else "auto"
    return OmegaConf.to_container(cfg, resolve=True)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_mode(impl: str, n: int, dataset, args) -> dict:
    seg = build_segmenter(model_cfg(impl, args.queries, args), OmegaConf.load(ROOT / "conf/postprocess/crf.yaml"),
                          device=args.device)
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

    pending = None  # pipelined like the engine: image i's CRF (in a worker, if any) overlaps image i+1's CLIP
    for i in range(n):
        s = dataset[i]
        finish = seg.segment_deferred(s.image, s.queries[: args.queries])
        if pending is not None:
            collect(pending())
        pending = finish
    collect(pending())
    wall = time.perf_counter() - t0
    out = {
        "images": n,
        "wall_s": wall,
        "s_per_image": wall / n,
        "images_per_s": n / wall,
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
                    help="fast mode's CRF worker processes (auto: 1 on CUDA, 0 on CPU); reference always 0")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_voc_fixture(Path(tmp), num_val=max(args.images, args.ref_images), seed=0,
                                 sizes=[(500, 375)] * max(args.images, args.ref_images))
        ds = VOCSegmentation(str(root))
        fast, fast_out = run_mode("fast", args.images, ds, args)
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
        "speedup_images_per_s": fast["images_per_s"] / ref["images_per_s"],
        "speedup_per_stage": {
            k: (ref["stage_s_per_image"][k] / fast["stage_s_per_image"][k]) if fast["stage_s_per_image"][k] else None
            for k in STAGES
        },
        "identical_outputs_on_common_images": same,
    }
    print(f"\n{'stage':<12}{'fast s/img':>12}{'ref s/img':>12}{'ratio':>8}")
    for k in STAGES:
        f, r = fast["stage_s_per_image"][k], ref["stage_s_per_image"][k]
        print(f"{k:<12}{f:>12.3f}{r:>12.3f}{(r / f if f else float('nan')):>8.1f}")
    print(f"{'total':<12}{fast['s_per_image']:>12.3f}{ref['s_per_image']:>12.3f}{report['speedup_images_per_s']:>8.1f}")
    print(f"images/s fast {fast['images_per_s']:.4f}  reference {ref['images_per_s']:.4f}; "
          f"peak RSS {max(fast['peak_rss_mb'], ref['peak_rss_mb']):.0f} MB; identical outputs: {same}")
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"figures written to {args.out}")
    return report


if __name__ == "__main__":
    main()
