"""Cost of CaR against the vocabulary size K (ADE-847 and PC-459 run 847 and 459 queries) and at 2048×1024.

Each measurement runs in its own process (so peak RSS is that configuration's alone): the tiny random
CLIP presets (shape of the pipeline, not of ViT-B/L's weights), one image of noise plus flat shapes,
K queries taken from the ADE-847 class list, θ = 0 so that every query survives (the worst case: two
full steps over all K), the dense CRF on. Prints and writes, per configuration: seconds per image,
peak RSS, RSS growth over the loaded model, and the size of the K×H×W float32 mask stack that the
`Prediction` contract itself holds (a lower bound no chunking inside the model can remove).

    python benchmarks/bench_vocab.py                       # K = 20, 150, 459, 847 at 512×384, + 2048×1024 with K = 19
    python benchmarks/bench_vocab.py --ks 20 150 --size 256 192 --out /tmp/vocab.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(k: int, width: int, height: int, crf: bool) -> dict:
    """One configuration, in this process: build the tiny CaR, segment one image, report cost."""
    from carbench.data.ade import ADE847_CLASSES
    from carbench.models.factory import build_segmenter

    torch.set_num_threads(1)
    cfg = OmegaConf.merge(OmegaConf.load(ROOT / "conf/model/car.yaml"), OmegaConf.load(ROOT / "conf/dataset/ade847.yaml").model)
    cfg.proposal = cfg.classifier = "tiny_random"
    cfg.confidence_threshold = 0.0
    cfg.postprocess_workers = 0
    cfg.pop("two_pass")
    post = OmegaConf.load(ROOT / ("conf/postprocess/crf.yaml" if crf else "conf/postprocess/none.yaml"))
    seg = build_segmenter(OmegaConf.to_container(cfg, resolve=True), post, device="cpu")
    queries = [q for q in ADE847_CLASSES if q not in set(cfg.background_queries)][:k]
    rng = np.random.default_rng(0)
    image = rng.integers(60, 160, size=(height, width, 3), dtype=np.uint8)
    image[height // 4: height // 2, width // 4: width // 2] = (220, 40, 40)
    seg.segment(image[:64, :64].copy(), queries[:2])  # warm-up: allocator, lazy init
    before = rss_mb()
    t0 = time.perf_counter()
    pred = seg.segment(image, queries)
    seconds = time.perf_counter() - t0
    peak = rss_mb()
    stages: dict[str, float] = {}
    for step in pred.trace:
        for name, v in step.get("time", {}).items():
            stages[name] = round(stages.get(name, 0.0) + v, 2)
    return {"K": k, "H": height, "W": width, "crf": crf, "s_per_image": round(seconds, 2), "stage_s": stages,
            "peak_rss_mb": round(peak, 1), "rss_growth_mb": round(peak - before, 1),
            "steps": len(pred.trace), "kept": len(pred.kept),
            "mask_stack_mb": round(k * height * width * 4 / 2**20, 1)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ks", type=int, nargs="+", default=[20, 150, 459, 847])
    p.add_argument("--size", type=int, nargs=2, default=[512, 384], metavar=("W", "H"))
    p.add_argument("--big", type=int, nargs=3, default=[2048, 1024, 19], metavar=("W", "H", "K"),
                   help="the Cityscapes-size run (W H K); --big 0 0 0 skips it")
    p.add_argument("--no-crf", action="store_true", help="postprocess=none (isolates the CLIP stages)")
    p.add_argument("--one", type=int, nargs=3, metavar=("K", "W", "H"), help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.one[2], not args.no_crf)))
        return
    runs = [(k, *args.size) for k in args.ks]
    if args.big[0]:
        runs.append((args.big[2], args.big[0], args.big[1]))
    rows = []
    for k, w, h in runs:
        cmd = [sys.executable, __file__, "--one", str(k), str(w), str(h)] + (["--no-crf"] if args.no_crf else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"K={k} {w}×{h} failed:\n{proc.stderr[-3000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"K={row['K']:4d} {w}×{h}: {row['s_per_image']:8.2f} s/img  peak RSS {row['peak_rss_mb']:8.1f} MB  "
              f"growth {row['rss_growth_mb']:8.1f} MB  K×H×W float32 {row['mask_stack_mb']:8.1f} MB  "
              f"steps {row['steps']}  stages {row['stage_s']}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
