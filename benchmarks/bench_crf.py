"""CRF throughput against post-processing workers, and what moving one job's arrays costs.

Runs the real dense CRF (conf/postprocess/crf.yaml, pydensecrf) on VOC-size fixture images
(500×375 from carbench.data.fixtures) with K smooth synthetic proposal maps each (default 20, so
the CRF sees 21 labels with its background channel: VOC's shape), the way CaR's pool runs it:
  - workers 0 = in the calling process, one image after another;
  - workers N = `PostprocessPool(crf, N)`: all images submitted at once, then collected
    (the pool is started and warmed on one job first; its start-up time is reported apart);
  - `auto` = what `model.postprocess_workers=auto` gives on a CUDA machine with these cores.
Then the transport cost per job, measured with a post-processor that returns its maps unchanged
(so only the moving is timed): the arrays pickled through a process pool's pipe against
`PostprocessPool`'s shared memory, round trip and time the caller spends in `submit`.

    python benchmarks/bench_crf.py [--images 8] [--workers 0 1 2 auto] [--maps 20] [--out crf.json]

Prints a table and writes the figures to `--out` (JSON). CPU-bound: on an N-core machine more than
N − 1 workers cannot help, so the table says how many cores it ran on.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from PIL import Image

from carbench.data.fixtures import write_voc_fixture
from carbench.data.voc import VOCSegmentation
from carbench.models.postprocess.crf import CRFParams, DenseCRF
from carbench.models.postprocess.pool import PostprocessPool, free_cores, resolve_workers, timed_call

ROOT = Path(__file__).resolve().parents[1]
VOC_SIZE = (500, 375)  # (W, H)


def load_crf() -> DenseCRF:
    """The dense CRF with the repository's settings (conf/postprocess/crf.yaml).

    Built here rather than through models.factory so that the spawned workers, which re-import this
    script as their main module, do not import torch and open_clip for nothing."""
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/postprocess/crf.yaml"))
    if cfg.pop("name") != "crf":
        raise SystemExit("conf/postprocess/crf.yaml no longer describes the dense CRF (name: crf)")
    return DenseCRF(CRFParams(**cfg))


def keep_maps(image: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """A post-processor that does nothing: what is left of a job's time is the transport."""
    return maps


def smooth_maps(rng: np.random.Generator, k: int, h: int, w: int) -> np.ndarray:
    """K×H×W maps in [0, 1] shaped like CAM proposals: a coarse random grid upsampled bilinearly."""
    grid = rng.random((k, max(2, h // 16), max(2, w // 16))).astype(np.float32) ** 3
    up = [np.asarray(Image.fromarray(g, mode="F").resize((w, h), Image.BILINEAR)) for g in grid]
    return np.clip(np.stack(up), 0.0, 1.0).astype(np.float32)


def fixture_jobs(n: int, k: int, size: tuple[int, int], seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """n (image, maps) pairs: fixture images read through the VOC adapter, synthetic smooth maps."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        ds = VOCSegmentation(str(write_voc_fixture(Path(tmp), num_val=n, seed=seed, sizes=[size])))
        images = [ds[i].image for i in range(n)]
    return [(img, smooth_maps(rng, k, *img.shape[:2])) for img in images]


def run_in_process(crf, jobs) -> dict:
    t0 = time.perf_counter()
    compute = [timed_call(crf, image, maps)[1] for image, maps in jobs]
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "images_per_s": len(jobs) / wall, "compute_s_per_image": statistics.mean(compute),
            "startup_s": 0.0}


def run_pool(crf, jobs, workers: int) -> dict:
    pool = PostprocessPool(crf, workers)
    try:
        t0 = time.perf_counter()
        pool.start()
        pool.submit(*jobs[0]).result()  # spawn + imports + one CRF: the pool's start-up, reported apart
        startup = time.perf_counter() - t0
        t0 = time.perf_counter()
        futures = [pool.submit(image, maps) for image, maps in jobs]
        submit = time.perf_counter() - t0
        results = [f.result() for f in futures]
        wall = time.perf_counter() - t0
    finally:
        pool.close()
    return {"wall_s": wall, "images_per_s": len(jobs) / wall,
            "compute_s_per_image": statistics.mean(s for _, s in results),
            "submit_ms_per_image": 1000 * submit / len(jobs), "startup_s": startup}


def transport(jobs, repeats: int) -> dict:
    """ms per job to move (image, maps) to a worker and the result back: pickle vs shared memory."""
    out: dict[str, dict] = {}
    pickled = ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"))
    shared = PostprocessPool(keep_maps, 1)
    try:
        pickled.submit(timed_call, keep_maps, *jobs[0]).result()  # warm both up
        shared.submit(*jobs[0]).result()
        for name, submit in (("pickle", lambda im, m: pickled.submit(timed_call, keep_maps, im, m)),
                             ("shared_memory", shared.submit)):
            rounds, calls = [], []
            for r in range(repeats):
                image, maps = jobs[r % len(jobs)]
                t0 = time.perf_counter()
                fut = submit(image, maps)
                t1 = time.perf_counter()
                res, _ = fut.result()
                rounds.append(time.perf_counter() - t0)
                calls.append(t1 - t0)
                if not np.array_equal(res, maps):
                    raise RuntimeError(f"{name} transport changed the maps")
            out[name] = {"round_trip_ms": 1000 * statistics.median(rounds),
                         "submit_ms": 1000 * statistics.median(calls)}
    finally:
        pickled.shutdown(cancel_futures=True)
        shared.close()
    image, maps = jobs[0]
    out["bytes_per_job"] = int(image.nbytes + 2 * maps.nbytes)  # image + maps in, masks out
    return out


def parse_workers(values: list[str]) -> list[tuple[str, int]]:
    """('0', 0), ('auto', n) …: auto is what model.postprocess_workers=auto resolves to on CUDA here."""
    out = []
    for v in values:
        n = resolve_workers("auto" if v == "auto" else _int(v), "cuda")
        out.append((v, n))
    return out


def _int(v: str) -> int:
    try:
        return int(v)
    except ValueError:
        raise SystemExit(f"--workers takes integers ≥ 0 or 'auto', got {v!r}") from None


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=8, help="images per worker setting")
    ap.add_argument("--maps", type=int, default=20, help="proposal maps per image (the CRF adds a background one)")
    ap.add_argument("--workers", nargs="+", default=["0", "1", "2", "auto"])
    ap.add_argument("--size", type=int, nargs=2, default=list(VOC_SIZE), metavar=("W", "H"))
    ap.add_argument("--transport-repeats", type=int, default=10)
    ap.add_argument("--out", default="bench_crf.json")
    args = ap.parse_args(argv)
    if args.images < 1 or args.maps < 1:
        raise SystemExit("--images and --maps must be ≥ 1")
    settings = parse_workers(args.workers)
    crf = load_crf()
    jobs = fixture_jobs(args.images, args.maps, tuple(args.size))
    rows = {}
    for label, n in settings:
        print(f"workers={label} ({n}) …", file=sys.stderr, flush=True)
        rows[label] = {"workers": n, **(run_in_process(crf, jobs) if n == 0 else run_pool(crf, jobs, n))}
    report = {
        "cores": free_cores(),
        "images": args.images,
        "size_wh": list(args.size),
        "crf_labels": args.maps + 1,
        "throughput": rows,
        "transport": transport(jobs, args.transport_repeats),
    }
    base = rows[settings[0][0]]["images_per_s"]
    print(f"\nCRF on {args.images} images {args.size[0]}×{args.size[1]}, {args.maps + 1} labels, "
          f"{report['cores']} free cores")
    print(f"{'workers':<10}{'images/s':>10}{'× first':>9}{'CRF s/img':>11}{'submit ms':>11}{'start-up s':>12}")
    for label, r in rows.items():
        sub = f"{r['submit_ms_per_image']:.1f}" if "submit_ms_per_image" in r else "-"
        print(f"{label + ' (' + str(r['workers']) + ')':<10}{r['images_per_s']:>10.2f}"
              f"{r['images_per_s'] / base:>9.2f}{r['compute_s_per_image']:>11.3f}{sub:>11}{r['startup_s']:>12.1f}")
    t = report["transport"]
    print(f"\ntransport per job ({t['bytes_per_job'] / 2**20:.1f} MB moved): "
          f"pickle {t['pickle']['round_trip_ms']:.1f} ms round trip ({t['pickle']['submit_ms']:.1f} ms in submit), "
          f"shared memory {t['shared_memory']['round_trip_ms']:.1f} ms "
          f"({t['shared_memory']['submit_ms']:.1f} ms in submit)")
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"figures written to {args.out}")
    return report


if __name__ == "__main__":
    main()
