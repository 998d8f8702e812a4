"""The CRF in a worker process, overlapped with the next image: same outputs, errors in order."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from carbench.data.fixtures import write_voc_fixture
from carbench.engine.evaluate import run_evaluation
from carbench.models.postprocess.crf import DenseCRF
from carbench.models.postprocess.pool import PostprocessPool

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
