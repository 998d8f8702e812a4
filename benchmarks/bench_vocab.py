"""Cost of CaR against the vocabulary size K (ADE-847 and PC-459 run 847 and 459 queries) and at 2048×1024.

Each measurement runs in its own process (so peak RSS is that configuration's alone): the tiny random
CLIP presets (shape of the pipeline, not of ViT-B/L's weights), one image of noise plus flat shapes,
K queries taken from the ADE-847 class list, θ = 0 so that every query survives (the worst case: two
full steps over all K), the dense CRF on. Prints and writes, per configuration: seconds per image,
peak RSS, RSS growth over the loaded model, and the size of the K×H×W float32 mask stack that the
`Prediction` contract itself holds (a lower bound no chunking inside the model can remove). With the CRF
on, its memory dominates: pydensecrf keeps about 73 bytes per (K + 1) channel × pixel (unary, Q, the two
kernels' lattice buffers), so the worst case (θ = 0, all K survive) grows linearly in K·H·W. Ends with a
line fit of time and memory against K.

    python benchmarks/bench_vocab.py                       # K = 20, 150, 459, 847 at 512×384, + 2048×1024 with K = 19
    python benchmarks/bench_vocab.py --ks 20 150 --size 256 192 --out /tmp/vocab.json
    python benchmarks/bench_vocab.py --ks --proposal vitb16_random   # 2048×1024, K = 19, ViT-B/16-shaped CAM
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
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(k: int, width: int, height: int, crf: bool, proposal: str = "tiny_random",
            classifier: str = "tiny_random") -> dict:
    """One configuration, in this process: build CaR on the given presets, segment one image, report cost."""
    from carbench.data.ade import ADE847_CLASSES
    from carbench.models.factory import build_segmenter

    torch.set_num_threads(1)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        composed = compose("config", overrides=[  # ADE-847's own CaR settings, on the presets asked for
            "dataset=ade847", "model=car", f"model.proposal={proposal}", f"model.classifier={classifier}",
            "model.confidence_threshold=0.0", "model.postprocess_workers=0"])
    cfg = OmegaConf.to_container(composed.model, resolve=True)
    cfg.pop("two_pass")  # one pass over all K queries: the cost this table is about
    post = OmegaConf.load(ROOT / ("conf/postprocess/crf.yaml" if crf else "conf/postprocess/none.yaml"))
    seg = build_segmenter(cfg, post, device="cpu")
    queries = [q for q in ADE847_CLASSES if q not in set(cfg["background_queries"])][:k]
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
    return {"K": k, "H": height, "W": width, "crf": crf, "proposal": proposal, "classifier": classifier,
            "s_per_image": round(seconds, 2), "stage_s": stages,
            "peak_rss_mb": round(peak, 1), "rss_growth_mb": round(peak - before, 1),
            "steps": len(pred.trace), "kept": len(pred.kept),
            "mask_stack_mb": round(k * height * width * 4 / 2**20, 1)}


def fit_growth(rows: list[dict], key: str) -> dict:
    """Least-squares line `key` = a + b·K over rows of one image size, and the log-log slope (1 = linear in K)."""
    k = np.array([r["K"] for r in rows], float)
    y = np.array([r[key] for r in rows], float)
    b, a = np.polyfit(k, y, 1)
    slope = float(np.polyfit(np.log(k), np.log(np.maximum(y, 1e-9)), 1)[0])
    return {"per_query": round(float(b), 4), "intercept": round(float(a), 2), "loglog_slope": round(slope, 2)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ks", type=int, nargs="*", default=[20, 150, 459, 847])
    p.add_argument("--size", type=int, nargs=2, default=[512, 384], metavar=("W", "H"))
    p.add_argument("--big", type=int, nargs=3, default=[2048, 1024, 19], metavar=("W", "H", "K"),
                   help="the Cityscapes-size run (W H K); --big 0 0 0 skips it")
    p.add_argument("--no-crf", action="store_true", help="postprocess=none (isolates the CLIP stages)")
    p.add_argument("--proposal", default="tiny_random", help="proposal preset (e.g. vitb16_random: ViT-B/16 shape)")
    p.add_argument("--classifier", default="tiny_random", help="classifier preset")
    p.add_argument("--one", type=int, nargs=3, metavar=("K", "W", "H"), help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.one[2], not args.no_crf, args.proposal,
                                 args.classifier)))
        return
    runs = [(k, *args.size) for k in args.ks]
    if args.big[0]:
        runs.append((args.big[2], args.big[0], args.big[1]))
    rows = []
    for k, w, h in runs:
        cmd = [sys.executable, __file__, "--one", str(k), str(w), str(h), "--proposal", args.proposal,
               "--classifier", args.classifier] + (["--no-crf"] if args.no_crf else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"K={k} {w}×{h} failed:\n{proc.stderr[-3000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"K={row['K']:4d} {w}×{h}: {row['s_per_image']:8.2f} s/img  peak RSS {row['peak_rss_mb']:8.1f} MB  "
              f"growth {row['rss_growth_mb']:8.1f} MB  K×H×W float32 {row['mask_stack_mb']:8.1f} MB  "
              f"steps {row['steps']}  stages {row['stage_s']}", flush=True)
    table = [r for r in rows if (r["W"], r["H"]) == tuple(args.size)]
    if len({r["K"] for r in table}) >= 2:
        for key, unit in (("s_per_image", "s"), ("rss_growth_mb", "MB")):
            f = fit_growth(table, key)
            print(f"{key} ≈ {f['intercept']} + {f['per_query']}·K {unit} (log-log slope {f['loglog_slope']})")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
