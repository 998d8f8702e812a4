"""`model.batch_images`: images run through CaR together, each along its own recurrence, with the
outputs of the unbatched run; the engine batches, resumes and attributes failures per image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from carbench.data.fixtures import write_voc_fixture
from carbench.engine import evaluate as engine
from carbench.engine.loop import check_batchable
from carbench.engine.progress import PROGRESS_FILE
from carbench.models.build import build_model
from carbench.models.classifier import MaskClassifier
from carbench.models.components import BatchProposer, BatchScorer
from carbench.models.recurrent import CaR
from carbench.toy.model import TOY_COLORS
from carbench.toy.scenes import CLASS_NAMES, make_scene, scene_rng
from carbench.types import Prediction

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
NAMES = list(CLASS_NAMES)  # the toy world's eight shapes


def toy_car(*overrides: str) -> CaR:
    """The bundled default: CaR with the shipped toy CLIP (its recurrences differ in length per image),
    no post-processing unless `overrides` choose one."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=["device=cpu", "postprocess=none", *overrides])
    car = build_model(cfg)
    assert isinstance(car, CaR)
    return car


class BatchingProposer:
    """Wraps a proposer with a `propose_batch` that records each call's images, queries and steps."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.batches: list[tuple[int, list[int]]] = []  # (images in the call, their steps)
        self.single_steps: list[int] = []

    def propose(self, image, queries, background, step):
        self.single_steps.append(step)
        return self.inner.propose(image, queries, background, step)

    def propose_batch(self, images, queries, background, steps):
        self.batches.append((len(images), list(steps)))
        return [self.inner.propose(im, q, background, s) for im, q, s in zip(images, queries, steps, strict=True)]


def images_of_three_sizes() -> list[np.ndarray]:
    """Toy scenes of 96, 80 and 112 px in the benchmark's world (with the queries of the test below,
    the shipped toy CLIPs need 3, 2 and 2 steps on them)."""
    picks = [(12, 96), (0, 80), (3, 112)]
    return [make_scene(scene_rng(0, "val", i), size, colors=TOY_COLORS).image for i, size in picks]


def assert_same_prediction(a: Prediction, b: Prediction, atol: float = 1e-4) -> None:
    assert a.kept == b.kept
    assert [t["alive"] for t in a.trace] == [t["alive"] for t in b.trace]
    assert [t["kept"] for t in a.trace] == [t["kept"] for t in b.trace]
    for sa, sb in zip(a.trace, b.trace, strict=True):
        np.testing.assert_allclose(sa["maps"], sb["maps"], atol=atol)
    np.testing.assert_allclose(a.masks, b.masks, atol=atol)
    np.testing.assert_allclose(a.scores, b.scores, atol=atol)
    np.testing.assert_array_equal(a.labels, b.labels)


@pytest.mark.parametrize("batch_proposer", [False, True])
def test_batch_of_three_equals_each_image_alone(batch_proposer):
    car = toy_car()
    assert isinstance(car.classifier, BatchScorer)
    if batch_proposer:
        car.proposer = BatchingProposer(car.proposer)
    images = images_of_three_sizes()
    queries = [NAMES, NAMES[:6], NAMES[::-1]]
    alone = [car.segment(im, q) for im, q in zip(images, queries, strict=True)]
    together = car.segment_batch(images, queries)
    assert len(together) == 3
    for a, b in zip(together, alone, strict=True):
        assert_same_prediction(a, b)
    assert len({len(p.trace) for p in alone}) > 1  # the images really ran recurrences of different lengths
    if batch_proposer:
        assert car.proposer.batches[0] == (3, [1, 1, 1])  # step 1 of all three images in one call


def test_deferred_batch_with_a_crf_pool_equals_batch():
    """The CRF jobs of a whole batch go to the worker pool; each image's result equals the in-process one."""
    car = toy_car("postprocess=crf", "model.postprocess_workers=1")
    assert car.post_pool is not None
    images, queries = images_of_three_sizes()[:2], [NAMES[:5], NAMES[3:]]
    try:
        finishes = car.segment_batch_deferred(images, queries)
        assert len(finishes) == 2
        for finish, pred in zip(finishes, car.segment_batch(images, queries), strict=True):
            assert_same_prediction(finish(), pred, atol=0)
    finally:
        car.post_pool.close()


H, W = 12, 16


class CountingProposer:
    """Query k claims a vertical band; records the batch sizes and steps of the calls it gets."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.batches: list[list[int]] = []  # steps of each propose_batch call
        self.singles: list[tuple[list[str], int]] = []

    def propose(self, image, queries, background, step):
        self.singles.append((list(queries), step))
        return self._maps(queries)

    def propose_batch(self, images, queries, background, steps):
        self.batches.append(list(steps))
        return [self._maps(q) for q in queries]

    def _maps(self, queries):
        maps = np.zeros((len(queries), H, W), np.float32)
        for i, q in enumerate(queries):
            k = self.names.index(q)
            maps[i, :, 4 * k : 4 * k + 4] = 0.9
        return maps


class TableScorer:
    """Scores from a table (a number, or a function of how many queries are alive); records batch sizes."""

    def __init__(self, table) -> None:
        self.table = table
        self.batch_sizes: list[int] = []

    def score(self, prompted, queries, templates=None):
        n = len(queries)
        return np.array([self.table[q](n) if callable(self.table[q]) else self.table[q] for q in queries], np.float32)

    def score_batch(self, prompted, queries, templates=None):
        self.batch_sizes.append(len(queries))
        return [self.score(p, q, templates) for p, q in zip(prompted, queries, strict=True)]


def test_an_image_that_converges_leaves_the_batch():
    names = ["cat", "dog", "car", "bus"]
    prop = CountingProposer(names)
    # image A (cat, car): both kept at steps 1 and 2 → stops after step 2.
    # image B (all four): dog dropped at step 1; bus only passes with 4 alive → dropped at step 2; stops after 3.
    clf = TableScorer({"cat": 0.9, "dog": 0.1, "car": 0.7, "bus": lambda n: 0.9 if n == 4 else 0.2})
    assert isinstance(prop, BatchProposer) and isinstance(clf, BatchScorer)
    car = CaR(prop, clf, mask_threshold=0.4, confidence_threshold=0.5)
    image = np.zeros((H, W, 3), np.uint8)
    a, b = car.segment_batch([image, image], [["cat", "car"], names])
    assert (len(a.trace), len(b.trace)) == (2, 3)
    assert a.kept == [0, 1] and b.kept == [0, 2]
    assert prop.batches == [[1, 1], [2, 2]]  # steps 1 and 2 together ...
    assert prop.singles == [(["cat", "car"], 3)]  # ... step 3 only for image B, alone
    assert clf.batch_sizes == [2, 2]
    # and each equals its own unbatched run
    assert_same_prediction(a, car.segment(image, ["cat", "car"]), atol=0)
    assert_same_prediction(b, car.segment(image, names), atol=0)


@pytest.mark.parametrize("double_softmax", [True, False])
def test_score_batch_equals_score_per_image(tiny_backbone, double_softmax):
    rng = np.random.default_rng(1)
    clf = MaskClassifier(tiny_backbone, templates=["a photo of a {}.", "a {}."], double_softmax=double_softmax,
                         batch_size=4)  # chunks of 4 straddle the images' crops
    crops = [[(rng.random((40 + 8 * i, 50, 3)) * 255).astype(np.uint8) for i in range(n)] for n in (3, 1, 5)]
    queries = [["cat", "dog", "car"], ["bus"], ["cat", "dog", "car", "bus", "cow"]]
    together = clf.score_batch(crops, queries)
    for got, p, q in zip(together, crops, queries, strict=True):
        np.testing.assert_allclose(got, clf.score(p, q), atol=1e-5)
    assert together[1][0] == pytest.approx(1.0)  # the softmax stays within an image: one query scores 1
    with pytest.raises(ValueError, match="image 1 of the batch: 2 prompted images for 1 queries"):
        clf.score_batch([crops[0], crops[0][:2]], [queries[0], ["bus"]])


# --- the engine ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    return write_voc_fixture(tmp_path_factory.mktemp("voc"), num_val=5, seed=3, sizes=[(96, 72), (80, 100), (64, 64), (96, 96), (72, 64)])


def make_cfg(voc_root: Path, *extra: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[
            "dataset=voc", f"dataset.root={voc_root}", "model.proposal=tiny_random", "model.classifier=tiny_random",
            "device=cpu", "num_workers=0", "threads=1", "postprocess=none", "model.confidence_threshold=0.1", *extra,
        ])


def records(run_dir: Path) -> list[dict]:
    """The run's per-image records without their timings (which differ between any two runs)."""
    lines = (Path(run_dir) / PROGRESS_FILE).read_text().splitlines()[1:]
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in lines]


def test_evaluate_with_batch_images_gives_the_same_records_and_resumes(tmp_path, voc_root, monkeypatch):
    one = engine.run_evaluation(make_cfg(voc_root), tmp_path / "one")
    two = engine.run_evaluation(make_cfg(voc_root, "model.batch_images=2"), tmp_path / "two")
    assert two["metrics"] == pytest.approx(one["metrics"], abs=1e-6)
    assert records(tmp_path / "two") == records(tmp_path / "one")

    real = CaR.segment_batch_deferred
    calls = {"n": 0}

    def interrupted_second_batch(self, images, queries):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("interrupted")
        return real(self, images, queries)

    monkeypatch.setattr(CaR, "segment_batch_deferred", interrupted_second_batch)
    run = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        engine.run_evaluation(make_cfg(voc_root, "model.batch_images=2"), run)
    assert [r["index"] for r in records(run)] == [0, 1]  # the first batch was finished before stopping
    monkeypatch.undo()
    resumed = engine.run_evaluation(make_cfg(voc_root, "model.batch_images=2", "resume=true"), run)
    assert resumed["metrics"] == pytest.approx(one["metrics"], abs=1e-6)
    assert resumed["confusion"] == one["confusion"]
    assert records(run) == records(tmp_path / "one")


def test_oracle_queries_batched_give_the_same_records(tmp_path, voc_root):
    """model.oracle_queries: each image of a batch is asked about its own GT classes."""
    engine.run_evaluation(make_cfg(voc_root, "model.oracle_queries=true"), tmp_path / "one")
    engine.run_evaluation(make_cfg(voc_root, "model.oracle_queries=true", "model.batch_images=3"), tmp_path / "three")
    assert records(tmp_path / "three") == records(tmp_path / "one")
    assert len({tuple(r["kept"]) for r in records(tmp_path / "one")}) > 1  # the images' query lists differ


def test_a_failing_image_does_not_take_down_its_batch(tmp_path, voc_root, monkeypatch):
    """Index 1 is the only 80-wide image; the batch holding it fails, is rerun one by one, and only it fails."""
    real = CaR._clip_stage

    def fails_on_80_wide(self, images, queries, background, templates):
        if any(im.shape[1] == 80 for im in images):
            raise RuntimeError("synthetic failure")
        return real(self, images, queries, background, templates)

    engine.run_evaluation(make_cfg(voc_root), tmp_path / "one")
    monkeypatch.setattr(CaR, "_clip_stage", fails_on_80_wide)
    res = engine.run_evaluation(make_cfg(voc_root, "model.batch_images=3", "on_error=skip"), tmp_path / "skip")
    got = records(tmp_path / "skip")
    assert [(r["index"], r["status"]) for r in got] == [(0, "ok"), (1, "failed"), (2, "ok"), (3, "ok"), (4, "ok")]
    assert "synthetic failure" in got[1]["error"]
    ok_one = [r for r in records(tmp_path / "one") if r["index"] != 1]
    assert [r for r in got if r["status"] == "ok"] == ok_one
    assert res["num_images"]["failed"] == 1


@pytest.mark.parametrize("value", ["0", "-2", "1.5", "true", "two"])
def test_bad_batch_images_are_refused(tmp_path, voc_root, value):
    with pytest.raises(ValueError, match="model.batch_images must be an integer ≥ 1"):
        engine.run_evaluation(make_cfg(voc_root, f"model.batch_images={value}"), tmp_path / "bad")


def test_a_model_without_batching_is_refused_by_name():
    class OneAtATime:
        def segment(self, image, queries):
            raise AssertionError("never called")

    cfg = OmegaConf.create({"model": {"name": "mine"}, "dataset": {"task": "semantic"}})
    with pytest.raises(ValueError, match=r"model.batch_images=4 .* model=mine .* set model.batch_images=1"):
        check_batchable(4, OneAtATime(), cfg)
    check_batchable(1, OneAtATime(), cfg)  # one at a time is always fine
