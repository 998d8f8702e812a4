"""Run post-processing (the dense CRF) in a worker process, so image i's CRF overlaps image i+1's CLIP work.

pydensecrf holds the GIL for its whole inference (measured: a Python loop started beside it in a
thread finishes only after the CRF), so a thread cannot overlap it — a process can. The worker is
started with "spawn" (never fork a process that holds torch/CUDA state) and imports only numpy and
the post-processor's own module; the image and maps travel by pickle (a few MB per VOC image).
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np

PostProcess = Callable[[np.ndarray, np.ndarray], np.ndarray]


def timed_call(post: PostProcess, image: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, float]:
    """`post(image, maps)` as float32 and its compute time in seconds (measured where it runs)."""
    t0 = time.perf_counter()
    out = np.asarray(post(image, maps), dtype=np.float32)
    return out, time.perf_counter() - t0


class PostprocessPool:
    """A lazily started pool of `workers` processes running one post-processor.

    Args:
        post: a picklable callable (image, K×H×W maps) → K×H×W masks, e.g. `DenseCRF`.
        workers: number of worker processes (≥ 1).
    """

    def __init__(self, post: PostProcess, workers: int = 1) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"model.postprocess_workers must be an integer ≥ 1 here, got {workers!r}")
        self.post = post
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def submit(self, image: np.ndarray, maps: np.ndarray) -> Future:
        """Start post-processing in a worker; the future's result is (masks float32, compute seconds)."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"))
        return self._pool.submit(timed_call, self.post, image, maps)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __del__(self) -> None:  # a dropped segmenter must not leave worker processes behind
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
