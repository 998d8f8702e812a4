"""Pascal Context's two-pass scheme: split, background words, painting order, and the built models."""

from __future__ import annotations

import numpy as np
import pytest

from carbench.models.two_pass import TwoPassCaR, build_two_pass
from carbench.types import BACKGROUND, Prediction

H, W = 4, 6


class FakeCaR:
    """Returns fixed masks/scores for the queries it is given and records what it was asked."""

    def __init__(self, masks: dict[str, np.ndarray], scores: dict[str, float]) -> None:
        self.masks, self.scores = masks, scores
        self.background_queries = ["generic"]
        self.calls: list[tuple[list[str], list[str]]] = []

    def text_defaults(self):
        return list(self.background_queries), None

    def segment(self, image, queries, *, background=None, templates=None):
        self.calls.append((list(queries), list(self.background_queries if background is None else background)))
        s = np.array([self.scores[q] for q in queries], np.float32)
        return Prediction(labels=np.zeros((H, W), np.int64), masks=np.stack([self.masks[q] for q in queries]),
                          scores=s, kept=[k for k in range(len(queries)) if s[k] > 0],
                          trace=[{"step": 1, "time": {"cam": 0.0}}, {"step": 2, "time": {"cam": 0.0}}])


def rect(rows: slice, cols: slice) -> np.ndarray:
    m = np.zeros((H, W), np.float32)
    m[rows, cols] = 1
    return m


def fakes() -> tuple[FakeCaR, FakeCaR]:
    thing = FakeCaR({"cat": rect(slice(None), slice(0, 2)), "dog": rect(slice(None), slice(1, 3)),
                     "cow": rect(slice(None), slice(5, 6))}, {"cat": 0.9, "dog": 0.5, "cow": 0.0})
    stuff = FakeCaR({"grass": rect(slice(2, 4), slice(None)), "sky": rect(slice(0, 3), slice(None))},
                    {"grass": 0.7, "sky": 0.8})
    return thing, stuff


def test_stuff_painted_first_things_on_top_in_score_order() -> None:
    thing, stuff = fakes()
    model = TwoPassCaR(thing, stuff, ["grass", "sky"])  # config order differs from query order
    queries = ["cat", "sky", "dog", "grass", "cow"]
    pred = model.segment(np.zeros((H, W, 3), np.uint8), queries)
    # stuff: grass (.7) then sky (.8) → sky wins row 2; things: dog (.5) then cat (.9) → cat wins column 1;
    # cow has score 0 (dropped) and paints nothing, so column 5 keeps the stuff labels.
    sky, grass, cat, dog = 1, 3, 0, 2
    expected = np.array([[cat, cat, dog, sky, sky, sky]] * 3 + [[cat, cat, dog, grass, grass, grass]])
    np.testing.assert_array_equal(pred.labels, expected)
    assert pred.kept == [0, 1, 2, 3]  # query indices, cow dropped
    assert pred.scores.tolist() == pytest.approx([0.9, 0.8, 0.5, 0.7, 0.0])
    np.testing.assert_array_equal(pred.masks[3], stuff.masks["grass"])
    assert [s["pass"] for s in pred.trace] == ["stuff", "stuff", "thing", "thing"]


def test_stuff_pass_uses_the_thing_queries_as_background() -> None:
    thing, stuff = fakes()
    TwoPassCaR(thing, stuff, ["grass", "sky"]).segment(np.zeros((H, W, 3), np.uint8),
                                                       ["cat", "sky", "dog", "grass", "cow"])
    assert stuff.calls == [(["grass", "sky"], ["cat", "dog", "cow"])]
    assert thing.calls == [(["cat", "dog", "cow"], ["generic"])]  # things keep the generic words


def test_unknown_stuff_query_is_an_error() -> None:
    thing, stuff = fakes()
    with pytest.raises(ValueError, match=r"\['mud'\] are not among"):
        TwoPassCaR(thing, stuff, ["grass", "mud"]).segment(np.zeros((H, W, 3), np.uint8), ["cat", "grass"])


def test_only_things_runs_one_pass() -> None:
    thing, stuff = fakes()
    pred = TwoPassCaR(thing, stuff, []).segment(np.zeros((H, W, 3), np.uint8), ["cat"])
    assert stuff.calls == [] and (pred.labels[:, :2] == 0).all() and (pred.labels[:, 2:] == BACKGROUND).all()


def test_build_shares_backbones_and_sets_stuff_prompts_and_crf() -> None:
    model_cfg = {
        "name": "car", "proposal": "tiny_random", "classifier": "tiny_random", "visual_prompts": ["blur", "circle"],
        "background_queries": ["sky", "road"], "mask_threshold": 0.6, "confidence_threshold": 0.2,
        "two_pass": {"stuff_queries": ["sky"], "stuff_visual_prompts": ["blur", "gray"], "stuff_bg_factor": 2.0},
    }
    post = {"name": "crf", "bg_factor": 1.0}
    model = build_two_pass(model_cfg, post, device="cpu")
    t, s = model.thing, model.stuff
    assert t.proposer.backbone is s.proposer.backbone and t.classifier.backbone is s.classifier.backbone
    assert list(t.prompts) == ["blur", "circle"] and list(s.prompts) == ["blur", "gray"]
    assert t.postprocess.params.bg_factor == 1.0 and s.postprocess.params.bg_factor == 2.0
    assert t.background_queries == ["sky", "road"] and (t.eta, s.eta, t.theta) == (0.6, 0.6, 0.2)
    pred = model.segment((np.random.default_rng(0).random((32, 48, 3)) * 255).astype(np.uint8), ["cat", "sky"])
    assert pred.labels.shape == (32, 48) and set(np.unique(pred.labels)) <= {BACKGROUND, 0, 1}
    assert s.background_queries == []  # the thing queries are passed per call, never stored


@pytest.mark.parametrize(("tp", "match"), [
    ({"stuff_queries": []}, "must list the stuff"),
    ({"stuff_queries": ["sky"], "stuff_prompt": ["gray"]}, "unknown model.two_pass key"),
])
def test_build_rejects_bad_two_pass_blocks(tp, match) -> None:
    with pytest.raises(ValueError, match=match):
        build_two_pass({"name": "car", "proposal": "tiny_random", "classifier": "tiny_random", "two_pass": tp},
                       None)
