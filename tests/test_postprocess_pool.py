"""The CRF in a worker process, overlapped with the next image: same outputs, errors in order,
arrays through shared memory that is always unlinked, and the worker count `auto` resolves to."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from concurrent.futures import CancelledError
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from carbench.data.fixtures import write_voc_fixture
from carbench.engine.evaluate import run_evaluation
from carbench.models.postprocess.crf import DenseCRF
from carbench.models.postprocess.pool import PostprocessPool, resolve_workers

CONF = str(Path(__file__).resolve().parents[1] / "conf")


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    return write_voc_fixture(tmp_path_factory.mktemp("voc"), num_val=4, seed=5)


def _cfg(voc_root: Path, *extra: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[
            "dataset=voc", f"dataset.root={voc_root}", "model.proposal=tiny_random", "model.classifier=tiny_random",
            "device=cpu", "num_workers=0", "postprocess=crf", *extra,
        ])


def test_pool_runs_the_crf_in_another_process_with_identical_output():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)
    maps = rng.random((3, 40, 52)).astype(np.float32)
    crf = DenseCRF()
    pool = PostprocessPool(crf, workers=1)
    try:
        out, seconds = pool.submit(image, maps).result(timeout=120)
        pids = set(pool._pool._processes)  # the worker processes the executor started
    finally:
        pool.close()
    assert np.array_equal(out, crf(image, maps).astype(np.float32))
    assert seconds > 0 and pids and os.getpid() not in pids
    assert _segments(pool) == [] and pool.held_segments() == []  # close() unlinked the recycled segments


def _segments(pool: PostprocessPool) -> list[str]:
    """This pool's shared-memory segments still in /dev/shm (every name starts with its prefix)."""
    return sorted(p.name for p in Path("/dev/shm").glob(f"{pool.prefix}*"))


def _job(rng: np.random.Generator, k: int = 3, h: int = 40, w: int = 52) -> tuple[np.ndarray, np.ndarray]:
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8), rng.random((k, h, w)).astype(np.float32)


def test_only_names_shapes_and_dtypes_are_pickled_to_the_worker():
    """The arrays travel through shared memory: what crosses the pipe is a few hundred bytes, not MBs."""
    rng = np.random.default_rng(1)
    image, maps = _job(rng, k=4, h=120, w=160)  # 300 kB of maps
    pool = PostprocessPool(DenseCRF(), workers=1)
    sent: list[tuple] = []
    try:
        pool.start()
        real_submit = pool._pool.submit

        def spy(fn, *args):
            sent.append(args)
            return real_submit(fn, *args)

        pool._pool.submit = spy
        out, _ = pool.submit(image, maps).result(timeout=120)
    finally:
        pool.close()
    assert np.array_equal(out, DenseCRF()(image, maps).astype(np.float32))
    assert len(sent) == 1 and len(pickle.dumps(sent[0])) < 2000 < maps.nbytes
    assert [spec.shape for spec in sent[0]] == [image.shape, maps.shape, maps.shape]


def test_queued_jobs_come_back_in_order_and_in_full():
    rng = np.random.default_rng(2)
    jobs = [_job(rng, k=k) for k in (2, 3, 5, 1)]
    pool = PostprocessPool(DenseCRF(), workers=1)
    try:
        futures = [pool.submit(image, maps) for image, maps in jobs]  # one worker: three wait in the queue
        outs = [f.result(timeout=120)[0] for f in futures]
    finally:
        pool.close()
    for (image, maps), out in zip(jobs, outs, strict=True):
        assert np.array_equal(out, DenseCRF()(image, maps).astype(np.float32))
    assert _segments(pool) == []


def test_segments_are_recycled_between_jobs_and_unlinked_at_close():
    """Writing into fresh shared pages is the slow part of a transfer, so finished jobs' segments are reused."""
    rng = np.random.default_rng(6)
    pool = PostprocessPool(DenseCRF(), workers=1)
    try:
        first = _job(rng, k=3)
        out1, _ = pool.submit(*first).result(timeout=120)
        held = pool.held_segments()
        assert len(held) == 3 and _segments(pool) == held  # image, maps, result: kept for the next job
        second = _job(rng, k=2, h=30, w=40)  # smaller: fits in the same segments
        out2, _ = pool.submit(*second).result(timeout=120)
        assert pool.held_segments() == held
    finally:
        pool.close()
    assert np.array_equal(out1, DenseCRF()(*first).astype(np.float32))
    assert np.array_equal(out2, DenseCRF()(*second).astype(np.float32))  # nothing left over from job 1
    assert _segments(pool) == []


def test_a_result_of_another_shape_comes_back_whole():
    """A post-processor whose output is not K×H×W still works (its result is pickled back)."""
    rng = np.random.default_rng(3)
    image, maps = _job(rng, k=2, h=6, w=5)
    pool = PostprocessPool(np.append, workers=1)  # flattens: shape (6·5·3 + 2·6·5,)
    try:
        out, _ = pool.submit(image, maps).result(timeout=120)
    finally:
        pool.close()
    assert np.array_equal(out, np.append(image, maps).astype(np.float32))
    assert _segments(pool) == []


def test_a_failing_job_raises_its_error_and_leaves_no_shared_memory():
    rng = np.random.default_rng(4)
    image, _ = _job(rng)
    pool = PostprocessPool(DenseCRF(), workers=1)
    try:
        bad = pool.submit(image, rng.random((3, 30, 30)).astype(np.float32))  # maps not the image's size
        with pytest.raises(ValueError, match="must match the image"):
            bad.result(timeout=120)
        assert _segments(pool) == [] and pool.held_segments() == []  # a failed job's segments are not kept
        image2, maps2 = _job(rng)
        good, _ = pool.submit(image2, maps2).result(timeout=120)  # the pool survives a failed job
        assert np.array_equal(good, DenseCRF()(image2, maps2).astype(np.float32))
    finally:
        pool.close()
    assert _segments(pool) == []


def test_a_full_dev_shm_is_a_clear_error_not_a_crash(monkeypatch):
    import carbench.models.postprocess.pool as pool_mod

    rng = np.random.default_rng(7)
    pool = PostprocessPool(DenseCRF(), workers=1)
    free = iter([3 << 20, 0, 0])  # room for the image's segment, then none for the maps'
    monkeypatch.setattr(pool_mod, "shm_free_bytes", lambda: next(free))
    try:
        with pytest.raises(RuntimeError, match=r"/dev/shm has 0 MiB free.*--shm-size.*postprocess_workers=0"):
            pool.submit(*_job(rng, k=2))
        assert _segments(pool) == [] and pool.held_segments() == []  # the half-built job left nothing
    finally:
        pool.close()


def test_close_with_jobs_pending_cancels_the_queue_and_unlinks_everything():
    rng = np.random.default_rng(5)
    pool = PostprocessPool(DenseCRF(), workers=1)
    futures = [pool.submit(*_job(rng, k=4, h=150, w=200)) for _ in range(4)]
    assert _segments(pool)  # held while the jobs are pending
    pool.close()
    assert _segments(pool) == [] and pool.held_segments() == []
    for f in futures:
        assert f.done()
        if not f.cancelled():  # the running job may finish; the queued ones are cancelled
            assert f.result()[0].shape == (4, 150, 200)
    assert any(f.cancelled() for f in futures)
    with pytest.raises(CancelledError):
        [f.result() for f in futures]


INTERRUPTED = """
import numpy as np
from carbench.models.postprocess.crf import DenseCRF
from carbench.models.postprocess.pool import PostprocessPool

if __name__ == "__main__":
    rng = np.random.default_rng(0)
    pool = PostprocessPool(DenseCRF(), workers=1)
    print(pool.prefix, flush=True)
    for _ in range(3):
        pool.submit(rng.integers(0, 255, (150, 200, 3), dtype=np.uint8), rng.random((4, 150, 200)).astype(np.float32))
    raise KeyboardInterrupt  # the run is interrupted with jobs in flight and nobody calls close()
"""


def test_an_interrupted_process_leaves_no_shared_memory(tmp_path):
    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPTED)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "KeyboardInterrupt" in proc.stderr and "leaked" not in proc.stderr
    prefix = proc.stdout.split()[0]
    assert prefix.startswith("cbpp") and sorted(Path("/dev/shm").glob(f"{prefix}*")) == []


def test_auto_workers_is_every_free_core_but_one_on_cuda_and_none_on_cpu(monkeypatch):
    import carbench.models.postprocess.pool as pool_mod

    monkeypatch.setattr(pool_mod.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert resolve_workers("auto", "cuda") == 7
    assert resolve_workers("auto", "cuda:1") == 7
    assert resolve_workers("auto", "cpu") == 0
    monkeypatch.setattr(pool_mod.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert resolve_workers("auto", "cuda") == 1  # at least one worker, even on a single free core
    assert resolve_workers(3, "cpu") == 3 and resolve_workers(0, "cuda") == 0


@pytest.mark.parametrize("bad", [-1, 1.5, True, "4", "all", None])
def test_a_bad_worker_value_names_the_config_key(bad):
    with pytest.raises(ValueError, match=r"model\.postprocess_workers must be 'auto' or an integer ≥ 0"):
        resolve_workers(bad, "cuda")


def test_overlapped_run_gives_the_same_metrics_and_records(voc_root, tmp_path):
    plain = run_evaluation(_cfg(voc_root, "model.postprocess_workers=0"), tmp_path / "plain")
    piped = run_evaluation(_cfg(voc_root, "model.postprocess_workers=1"), tmp_path / "piped")
    assert piped["confusion"] == plain["confusion"]
    assert piped["metrics"] == plain["metrics"]
    assert piped["per_image"] == plain["per_image"]
    assert "postprocess_wait" in piped["timing"]["stage_total_s"]  # it really went through the worker
    assert "postprocess_wait" not in plain["timing"]["stage_total_s"]


def test_bad_worker_count_is_an_error(voc_root, tmp_path):
    with pytest.raises(ValueError, match="postprocess_workers must be 'auto' or an integer"):
        run_evaluation(_cfg(voc_root, "model.postprocess_workers=-1"), tmp_path / "bad")


def test_a_failure_is_recorded_for_its_own_image_in_order(voc_root, tmp_path, monkeypatch):
    """Image 1 fails while image 0 is still pending: 0 is finished and recorded first, 1 is the failure."""
    from carbench.models.recurrent import CaR

    real = CaR.segment_deferred
    calls = {"n": 0}

    def deferred(self, image, queries):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom on the second image")
        return real(self, image, queries)

    monkeypatch.setattr(CaR, "segment_deferred", deferred)
    res = run_evaluation(_cfg(voc_root, "on_error=skip", "postprocess=none"), tmp_path / "skip")
    ids = (voc_root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()  # evaluation order
    assert res["num_images"] == {"expected": 4, "evaluated": 3, "failed": 1, "split_size": 4}
    assert res["failed_images"][0]["id"] == ids[1] and "boom" in res["failed_images"][0]["error"]
    assert [r["id"] for r in res["per_image"]] == [ids[0], ids[2], ids[3]]
