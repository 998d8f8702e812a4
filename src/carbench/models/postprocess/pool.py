"""Run post-processing (the dense CRF) in worker processes, so image i's CRF overlaps later images' CLIP work.

pydensecrf holds the GIL for its whole inference (measured: a Python loop started beside it in a
thread finishes only after the CRF), so a thread cannot overlap it — a process can. Workers are
started with "spawn" (never fork a process that holds torch/CUDA state) and import only numpy,
the post-processor's own module and whatever the main script imports at its top level (spawn
re-runs those imports: evaluate.py and the benchmarks keep torch out of them, so a worker starts in
about a second); the post-processor itself is pickled once per worker (its initializer), not once
per job.

Arrays travel through POSIX shared memory, not through the pipe: for each job the caller copies
the image and the maps into two segments and hands a third over for the result, and only their
names, shapes and dtypes are pickled. The worker maps them, runs the post-processor and writes its
K×H×W result into the third segment (a result of another shape — no built-in post-processor
returns one — comes back pickled). Segments are recycled: writing into fresh shared pages costs
page faults (measured on a VOC job, 21×375×500 float32: ≈ 40 ms into a fresh segment against
≈ 3 ms into a reused one), so a finished job's segments go back to a small free list and the
workers keep their mappings open. The caller owns every segment: a failed or cancelled job's
segments are unlinked at once, `close()` unlinks the rest, and an interpreter that exits without
calling it (Ctrl-C) closes every open pool on the way out, so nothing is left in /dev/shm.
A new segment is only created when /dev/shm has room for it (a container's default is 64 MB, two
VOC jobs' worth; writing past it would kill the process with SIGBUS): otherwise `submit` raises an
error that says how to make room.
"""

from __future__ import annotations

import atexit
import itertools
import multiprocessing as mp
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any

import numpy as np

PostProcess = Callable[[np.ndarray, np.ndarray], np.ndarray]

_NAMES = itertools.count()  # pool prefixes: unique within this process, so segment names never repeat
_OPEN_POOLS: weakref.WeakSet[PostprocessPool] = weakref.WeakSet()
MIN_SEGMENT = 1 << 20  # segments are sized in whole MiB so that images of slightly different sizes share them
WORKER_MAPPINGS = 64  # how many segments a worker keeps mapped (least recently used ones are closed)


def resolve_workers(value: Any, device: Any) -> int:
    """`model.postprocess_workers` as a worker count.

    "auto" = every free core but one on CUDA (that one drives the GPU), at least 1: the CRF is CPU
    work that must keep pace with a GPU producing maps for many images a second. On CPU "auto" is 0:
    the CLIP work already uses every core, and a worker would only add start-up cost and copies.
    An integer ≥ 0 is taken as given (0 = post-process in the calling process).

    Args:
        value: the config value ("auto" or an int).
        device: the CLIP device, a `torch.device` or a string such as "cuda:0" or "cpu".
    """
    if value == "auto":
        return max(1, free_cores() - 1) if device_type(device) == "cuda" else 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"model.postprocess_workers must be 'auto' or an integer ≥ 0, got {value!r}; "
            "set model.postprocess_workers=auto (or 0 to post-process in the main process)"
        )
    return value


def free_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it, else all cores)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def shm_free_bytes() -> int | None:
    """Free bytes in /dev/shm, or None where the system has no such folder (then the OS decides)."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def device_type(device: Any) -> str:
    """"cuda" / "cpu" / … from a `torch.device` or a device string, without importing torch here."""
    return str(getattr(device, "type", device)).split(":")[0]


def timed_call(post: PostProcess, image: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, float]:
    """`post(image, maps)` as float32 and its compute time in seconds (measured where it runs)."""
    t0 = time.perf_counter()
    out = np.asarray(post(image, maps), dtype=np.float32)
    return out, time.perf_counter() - t0


@dataclass(frozen=True)
class SharedSpec:
    """What is pickled for one array: the segment's name, the array's shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str


def view(seg: shared_memory.SharedMemory, spec: SharedSpec) -> np.ndarray:
    """The array that `spec` describes, backed by `seg`'s memory (no copy)."""
    return np.ndarray(spec.shape, dtype=np.dtype(spec.dtype), buffer=seg.buf)


def release(seg: shared_memory.SharedMemory) -> None:
    """Close and unlink a segment this process created (a second call is harmless)."""
    try:
        seg.close()
    except BufferError:  # a view still exists somewhere; unlinking still frees the name
        pass
    try:
        seg.unlink()
    except FileNotFoundError:
        pass


_WORKER_POST: PostProcess | None = None  # set once per worker process by `_init_worker`
_WORKER_SEGS: OrderedDict[str, shared_memory.SharedMemory] = OrderedDict()  # the worker's open mappings


def _init_worker(post: PostProcess) -> None:
    global _WORKER_POST
    _WORKER_POST = post


def _attach(name: str) -> shared_memory.SharedMemory:
    """The caller's segment `name`, mapped once per worker and kept (segments are recycled)."""
    seg = _WORKER_SEGS.pop(name, None) or shared_memory.SharedMemory(name=name)
    _WORKER_SEGS[name] = seg
    while len(_WORKER_SEGS) > WORKER_MAPPINGS:
        _WORKER_SEGS.popitem(last=False)[1].close()  # close only: the caller owns (and unlinks) every segment
    return seg


def _run_job(image: SharedSpec, maps: SharedSpec, out: SharedSpec) -> tuple[np.ndarray | None, float]:
    """Worker side of one job: (None, seconds) when the result was written to `out`'s segment."""
    if _WORKER_POST is None:
        raise RuntimeError("post-processing worker started without its post-processor (use PostprocessPool)")
    arrays = [view(_attach(s.name), s) for s in (image, maps, out)]
    result, seconds = timed_call(_WORKER_POST, arrays[0], arrays[1])
    if result.shape == out.shape:
        arrays[2][...] = result
        return None, seconds
    return result, seconds  # an unexpected shape comes back by pickle


class PostprocessPool:
    """A lazily started pool of `workers` processes running one post-processor.

    `submit` copies the arrays into shared memory and returns at once; the future's result is
    (masks float32, compute seconds in the worker). Jobs queue without bound, so the caller (the
    GPU loop) never waits for the CRF before it needs a result.

    Args:
        post: a picklable callable (image, K×H×W maps) → K×H×W masks, e.g. `DenseCRF`.
        workers: number of worker processes (≥ 1).
    """

    def __init__(self, post: PostProcess, workers: int = 1) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"model.postprocess_workers must be an integer ≥ 1 here, got {workers!r}")
        self.post = post
        self.workers = workers
        self.prefix = f"cbpp{os.getpid()}_{next(_NAMES)}_"  # every segment of this pool starts with it
        self.keep_free = 3 * (workers + 2)  # recycled segments kept: three per job in flight, plus slack
        self._pool: ProcessPoolExecutor | None = None
        self._live: dict[int, list[shared_memory.SharedMemory]] = {}  # job id → its segments
        self._free: list[shared_memory.SharedMemory] = []  # finished jobs' segments, ready for reuse
        self._lock = threading.Lock()
        self._jobs = itertools.count()
        self._segment_ids = itertools.count()

    def start(self) -> None:
        """Start the worker processes now (otherwise the first `submit` does; benchmarks warm up with it)."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                             initializer=_init_worker, initargs=(self.post,))
            _OPEN_POOLS.add(self)

    def _segment(self, nbytes: int) -> shared_memory.SharedMemory:
        """A free segment of at least `nbytes` (the smallest that fits), or a new one."""
        with self._lock:
            fits = [seg for seg in self._free if seg.size >= nbytes]
            if fits:
                seg = min(fits, key=lambda s: s.size)
                self._free.remove(seg)
                return seg
        size = -(-max(nbytes, 1) // MIN_SEGMENT) * MIN_SEGMENT
        free = shm_free_bytes()
        if free is not None and free < size:
            raise RuntimeError(
                f"/dev/shm has {free / 2**20:.0f} MiB free but a post-processing job needs a {size / 2**20:.0f} MiB "
                "segment; give it more room (docker run --shm-size=2g, or remount /dev/shm larger), or set "
                "model.postprocess_workers=0 to post-process in the main process"
            )
        return shared_memory.SharedMemory(name=f"{self.prefix}{next(self._segment_ids)}", create=True, size=size)

    def submit(self, image: np.ndarray, maps: np.ndarray) -> Future:
        """Start post-processing (image H×W×3, maps K×H×W) in a worker; returns without waiting."""
        self.start()
        assert self._pool is not None
        job = next(self._jobs)
        segs: list[shared_memory.SharedMemory] = []
        with self._lock:
            self._live[job] = segs
        try:
            specs = []
            for arr, dtype, copy in ((image, None, True), (maps, None, True), (maps, np.float32, False)):
                arr = np.asarray(arr)
                dt = np.dtype(dtype or arr.dtype)
                seg = self._segment(arr.size * dt.itemsize)
                segs.append(seg)
                spec = SharedSpec(seg.name, tuple(int(n) for n in arr.shape), dt.str)
                if copy:
                    view(seg, spec)[...] = arr
                specs.append(spec)
            inner = self._pool.submit(_run_job, *specs)
        except BaseException:
            self._end_job(job, recycle=False)
            raise
        outer: Future = Future()
        inner.add_done_callback(lambda f: self._finish(f, outer, job, segs[2], specs[2]))
        return outer

    def _finish(self, inner: Future, outer: Future, job: int, out_seg, out_spec: SharedSpec) -> None:
        """Done callback: copy the result out of shared memory, give back the job's segments, then
        resolve `outer` (a caller holding a result never sees its job's segments still in use)."""
        outcome: tuple[np.ndarray, float] | None = None
        error: BaseException | None = None
        try:
            if not inner.cancelled():
                error = inner.exception()
                if error is None:
                    result, seconds = inner.result()
                    outcome = (view(out_seg, out_spec).copy() if result is None else result, seconds)
        except BaseException as exc:  # noqa: BLE001 - a callback's error would otherwise vanish
            error = exc
        finally:
            self._end_job(job, recycle=outcome is not None)  # a failed job's segments are not reused
        if error is not None:
            outer.set_exception(error)
        elif outcome is None:
            outer.cancel()
        else:
            outer.set_result(outcome)

    def _end_job(self, job: int, recycle: bool) -> None:
        """Put a job's segments on the free list (up to `keep_free`), unlinking the rest."""
        with self._lock:
            segs = self._live.pop(job, [])
            closed = self._pool is None
            while recycle and not closed and segs and len(self._free) < self.keep_free:
                self._free.append(segs.pop())
        for seg in segs:
            release(seg)

    def held_segments(self) -> list[str]:
        """Names of the shared-memory segments this pool holds (jobs in flight + free list)."""
        with self._lock:
            return sorted(seg.name for segs in [*self._live.values(), self._free] for seg in segs)

    def close(self) -> None:
        """Stop the workers (cancelling queued jobs) and unlink every segment still held."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            jobs, free, self._free = list(self._live), self._free, []
        for job in jobs:
            self._end_job(job, recycle=False)
        for seg in free:
            release(seg)
        _OPEN_POOLS.discard(self)

    def __del__(self) -> None:  # a dropped segmenter must not leave worker processes or segments behind
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


@atexit.register
def _close_open_pools() -> None:
    """An interpreter leaving with pools open (Ctrl-C, an error) still unlinks their segments."""
    for pool in list(_OPEN_POOLS):
        pool.close()
