"""The CaR loop: drops queries scored ≤ θ, stops when the set is stable, never empties, honours max_steps."""

from __future__ import annotations

import numpy as np
import pytest

from carbench.models.recurrent import CaR
from carbench.types import BACKGROUND

H, W = 12, 16


class FakeProposer:
    """Query k claims a vertical band of the image; records the queries, background and step of each call."""

    def __init__(self, names):
        self.names = names
        self.calls: list[list[str]] = []
        self.backgrounds: list[list[str]] = []
        self.steps: list[int] = []

    def propose(self, image, queries, background, step):
        self.calls.append(list(queries))
        self.backgrounds.append(list(background))
        self.steps.append(step)
        maps = np.zeros((len(queries), H, W), np.float32)
        for i, q in enumerate(queries):
            k = self.names.index(q)
            maps[i, :, 4 * k : 4 * k + 4] = 0.9
        return maps


class FakeClassifier:
    """Scores from a table, optionally depending on how many queries are alive."""

    def __init__(self, table):
        self.table = table
        self.calls: list[list[str]] = []
        self.templates: list[object] = []

    def score(self, prompted, queries, templates=None):
        self.calls.append(list(queries))
        self.templates.append(templates)
        n = len(queries)
        return np.array([self.table[q](n) if callable(self.table[q]) else self.table[q] for q in queries], np.float32)


def make(table, names=("cat", "dog", "car", "bus"), **kw):
    prop, clf = FakeProposer(list(names)), FakeClassifier(table)
    return CaR(prop, clf, mask_threshold=0.4, confidence_threshold=0.5, **kw), prop, clf


IMAGE = np.zeros((H, W, 3), np.uint8)


def test_drops_queries_below_theta_and_stops_when_stable():
    car, prop, clf = make({"cat": 0.9, "dog": 0.1, "car": 0.7, "bus": 0.5})  # 0.5 is not > θ: dropped
    pred = car.segment(IMAGE, ["cat", "dog", "car", "bus"])
    assert pred.kept == [0, 2]
    assert [t["alive"] for t in pred.trace] == [[0, 1, 2, 3], [0, 2]]  # 2 steps: the second confirms
    assert clf.calls[1] == ["cat", "car"]
    assert np.all(pred.scores[[1, 3]] == 0) and np.all(pred.masks[[1, 3]] == 0)
    assert set(np.unique(pred.labels)) == {0, 2, BACKGROUND}
    assert np.all(pred.labels[:, 4:8] == BACKGROUND)  # dog's band is not painted


def test_recurrence_continues_until_the_count_is_stable():
    # car only falls below θ once dog is gone (scores depend on how many queries are alive)
    table = {"cat": 0.9, "dog": 0.1, "car": lambda n: 0.8 if n > 3 else 0.2, "bus": 0.9}
    car, _, _ = make(table)
    pred = car.segment(IMAGE, ["cat", "dog", "car", "bus"])
    assert [t["alive"] for t in pred.trace] == [[0, 1, 2, 3], [0, 2, 3], [0, 3]]
    assert pred.kept == [0, 3]


def test_never_empty_keeps_the_best_query():
    car, _, _ = make({"cat": 0.2, "dog": 0.3, "car": 0.1, "bus": 0.05})
    pred = car.segment(IMAGE, ["cat", "dog", "car", "bus"])
    assert pred.kept == [1]


def test_max_steps_one_is_no_recurrence():
    car, _, _ = make({"cat": 0.9, "dog": 0.1, "car": 0.7, "bus": 0.5}, max_steps=1)
    pred = car.segment(IMAGE, ["cat", "dog", "car", "bus"])
    assert len(pred.trace) == 1 and pred.kept == [0, 1, 2, 3]
    assert set(np.unique(pred.labels)) == {0, 1, 2, 3}


def test_loop_passes_raw_queries_steps_and_background_per_call():
    car, prop, clf = make({"cat": 0.9, "dog": 0.1, "car": 0.9, "bus": 0.9}, background_queries=["sky"])
    car.segment(IMAGE, ["cat", "dog", "car", "bus"])
    assert prop.calls == [["cat", "dog", "car", "bus"], ["cat", "car", "bus"]] and prop.steps == [1, 2]
    assert prop.backgrounds == [["sky"], ["sky"]] and clf.templates == [None, None]
    car.segment(IMAGE, ["cat", "dog"], background=["road", "grass"], templates=["a {}."])
    assert prop.backgrounds[-1] == ["road", "grass"] and clf.templates[-1] == ["a {}."]
    assert car.background_queries == ["sky"]  # a per-call override changes nothing in the model
    car.segment(IMAGE, ["cat", "dog"])
    assert prop.backgrounds[-1] == ["sky"] and clf.templates[-1] is None


def test_background_query_equal_to_a_query_is_an_error():
    car, _, _ = make({"cat": 0.9, "dog": 0.9})
    with pytest.raises(ValueError, match="cat"):
        car.segment(IMAGE, ["cat", "dog"], background=["cat"])


@pytest.mark.parametrize(
    "queries, match",
    [([], "empty"), (["cat", "cat"], "duplicate"), (["cat", "  "], "non-empty")],
)
def test_bad_query_lists(queries, match):
    car, _, _ = make({"cat": 0.9})
    with pytest.raises(ValueError, match=match):
        car.segment(IMAGE, queries)


@pytest.mark.parametrize("kw", [{"mask_threshold": 1.2}, {"confidence_threshold": -0.1}, {"max_steps": 0}])
def test_bad_hyperparameters(kw):
    with pytest.raises(ValueError):
        CaR(FakeProposer(["cat"]), FakeClassifier({}), **kw)


def test_unknown_prompt_type():
    with pytest.raises(ValueError, match="circle"):
        CaR(FakeProposer(["cat"]), FakeClassifier({}), visual_prompts=["sparkle"])


def test_same_config_and_seed_give_bit_identical_outputs_on_cpu(scene):
    from carbench.models.factory import build_segmenter

    cfg = {"proposal": "tiny_random", "classifier": "tiny_random", "background_queries": ["sky"],
           "templates": ["a {}.", "the {}."], "confidence_threshold": 0.3}
    a = build_segmenter(cfg, {"name": "crf"}, seed=0).segment(scene, ["red box", "tree", "dog"])
    b = build_segmenter(cfg, {"name": "crf"}, seed=0).segment(scene, ["red box", "tree", "dog"])
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.masks, b.masks)
    assert np.array_equal(a.scores, b.scores) and a.kept == b.kept
