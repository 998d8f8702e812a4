"""ReCo's retrieval index at scale: build and query time and memory on a synthetic fp16 memmap.

    python benchmarks/bench_reco_index.py                 # 200 000 × 768 (the target size), k = 50
    python benchmarks/bench_reco_index.py --rows 20000    # quicker

Build = what `carbench.reco.index` does after CLIP has encoded a chunk: write the chunk into the
shard memmap, flush, rewrite the progress file; then the rank-0 merge into `embeddings.f16`
(random unit vectors stand in for CLIP embeddings, so the CLIP forward passes are not in these
numbers; they are projected separately from the model's FLOPs). Query = `knn.topk` for 1 and for
80 concepts (a benchmark's classes, all at once). Memory: peak anonymous RSS above the baseline
(the memmap's page-cache pages are not the process's own and are excluded) and peak total RSS.
Results go to stdout and, with --json, to a file; numbers scale linearly to ImageNet's 1.28 M rows.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from carbench.reco.knn import topk

IMAGENET_ROWS = 1_281_167


def _status(field: str) -> int:
    """A /proc/self/status field in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


class PeakAnon:
    """Samples RssAnon every 2 ms on a thread; `.peak - .base` is the extra anonymous memory."""

    def __enter__(self) -> PeakAnon:
        self.base = self.peak = _status("RssAnon")
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, _status("RssAnon"))
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        self._stop = True
        self._t.join()
        self.peak = max(self.peak, _status("RssAnon"))


def build(path: Path, rows: int, dim: int, chunk: int) -> dict[str, float]:
    shard = np.memmap(path / "shard-0-of-1.f16", dtype=np.float16, mode="w+", shape=(rows, dim))
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    gen = 0.0
    for start in range(0, rows, chunk):
        g = time.perf_counter()
        x = rng.standard_normal((min(chunk, rows - start), dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        gen += time.perf_counter() - g
        shard[start:start + len(x)] = x.astype(np.float16)
        shard.flush()
        tmp = path / "progress.json.tmp"
        tmp.write_text(json.dumps({"rows": start + len(x)}))
        os.replace(tmp, path / "progress.json")
    write_s = time.perf_counter() - t0 - gen
    del shard
    t0 = time.perf_counter()
    part = np.memmap(path / "shard-0-of-1.f16", dtype=np.float16, mode="r", shape=(rows, dim))
    final = np.memmap(path / "embeddings.f16", dtype=np.float16, mode="w+", shape=(rows, dim))
    final[0::1] = part
    final.flush()
    del final, part
    return {"write_s": write_s, "merge_s": time.perf_counter() - t0, "file_bytes": rows * dim * 2}


def query(path: Path, rows: int, dim: int, k: int, n_queries: int, block: int, backend: str) -> dict[str, float]:
    emb = np.memmap(path / "embeddings.f16", dtype=np.float16, mode="r", shape=(rows, dim))
    q = torch.nn.functional.normalize(torch.randn(n_queries, dim, generator=torch.Generator().manual_seed(1)), dim=-1)
    topk(emb, q, k, block, backend)  # warm the page cache: the steady state of a run with many concepts
    with PeakAnon() as mem:
        t0 = time.perf_counter()
        topk(emb, q, k, block, backend)
        dt = time.perf_counter() - t0
    return {"seconds": dt, "peak_extra_anon_bytes": mem.peak - mem.base, "peak_rss_bytes": _status("VmHWM")}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--block", type=int, default=65536)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--backend", default="torch")
    p.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp)
        out = {"rows": args.rows, "dim": args.dim, "k": args.k, "block": args.block, "threads": args.threads,
               "backend": args.backend, "build": build(path, args.rows, args.dim, args.chunk)}
        for nq in (1, 80):
            out[f"query_{nq}"] = query(path, args.rows, args.dim, args.k, nq, args.block, args.backend)
    scale = IMAGENET_ROWS / args.rows
    out["imagenet_projection"] = {
        "rows": IMAGENET_ROWS, "file_gb": IMAGENET_ROWS * args.dim * 2 / 1e9,
        "build_write_merge_s": (out["build"]["write_s"] + out["build"]["merge_s"]) * scale,
        "query_1_s": out["query_1"]["seconds"] * scale, "query_80_s": out["query_80"]["seconds"] * scale,
        "peak_extra_anon_mb": out["query_80"]["peak_extra_anon_bytes"] / 2**20,  # block-bound, not index-bound
    }
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
