"""protocol=sclip (SCLIP's inference protocol around any segmenter) and protocol=car."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from carbench.models.factory import build_segmenter
from carbench.models.precomputed import Precomputed
from carbench.models.protocols import (
    SclipParams,
    SclipProtocol,
    build_protocol,
    imagenet_templates,
    resize_shape,
    sliding_windows,
    split_synonyms,
)
from carbench.types import BACKGROUND, Prediction

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def test_resize_like_mmseg_keep_ratio():
    assert resize_shape(375, 500, 336, 2048) == (336, 448)  # a VOC image
    assert resize_shape(500, 375, 336, 2048) == (448, 336)
    assert resize_shape(100, 10000, 336, 2048) == (20, 2048)  # the long-side cap wins


def test_sliding_windows_cover_the_image_flush_with_the_border():
    wins = sliding_windows(336, 448, 224, 112)
    assert wins == [(0, 224, 0, 224), (0, 224, 112, 336), (0, 224, 224, 448),
                    (112, 336, 0, 224), (112, 336, 112, 336), (112, 336, 224, 448)]
    assert sliding_windows(100, 150, 224, 112) == [(0, 100, 0, 150)]  # smaller than a crop: one window


def test_synonyms_split_and_owned():
    texts, owner = split_synonyms(["person with clothes,people,human", "cat"], ["sky"], split=True)
    assert texts == ["person with clothes", "people", "human", "cat", "sky"] and owner == [0, 0, 0, 1, 2]
    assert split_synonyms(["a,b"], [], split=False) == (["a,b"], [0])
    with pytest.raises(ValueError, match="two classes"):
        split_synonyms(["cat,kitty", "kitty"], [], split=True)


class ColourDense:
    """Fake dense model: text 'red' matches red pixels, 'blue' blue ones, 'wall' is a flat 0.2."""

    def __init__(self) -> None:
        self.templates_seen: list[object] = []

    def dense_similarity(self, crop: np.ndarray, texts: list[str], templates=None) -> torch.Tensor:
        self.templates_seen.append(templates)
        rgb = torch.from_numpy(crop).float().permute(2, 0, 1) / 255
        table = {"red": rgb[0], "blue": rgb[2], "wall": torch.full(crop.shape[:2], 0.2)}
        return torch.stack([table[t] for t in texts])


def two_halves(h: int = 300, w: int = 500) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2, 0] = 255
    img[:, w // 2 :, 2] = 255
    return img


def test_dense_path_puts_windows_back_where_they_came_from():
    model = ColourDense()
    proto = SclipProtocol(model, SclipParams(background_queries=["wall"]))
    pred = proto.segment(two_halves(), ["red", "blue"])
    assert model.templates_seen and all(t == imagenet_templates() for t in model.templates_seen)
    assert len(model.templates_seen[0]) == 80  # the protocol's templates reach every window call
    assert (pred.labels[:, :240] == 0).all() and (pred.labels[:, 260:] == 1).all()
    assert pred.kept == [0, 1] and pred.trace[0]["windows"] == 8  # 300×500 → 336×560: 2 rows × 4 columns
    # A class under area_threshold of the foreground is dropped to background / the other class.
    img = two_halves()
    img[:, 20:] = (0, 0, 255)  # red now 4 % of the image
    pred = SclipProtocol(ColourDense(), SclipParams(background_queries=["wall"])).segment(img, ["red", "blue"])
    assert not (pred.labels == 0).any()
    # prob_threshold: pixels whose best probability is below it are background (scale 1: p ≈ 0.73).
    params = SclipParams(background_queries=[], logit_scale=1.0, area_threshold=None)
    assert (SclipProtocol(ColourDense(), params).segment(two_halves(), ["red", "blue"]).labels[:, :240] == 0).all()
    params.prob_threshold = 0.8
    assert (SclipProtocol(ColourDense(), params).segment(two_halves(), ["red", "blue"]).labels == BACKGROUND).all()


class ColourSegmenter:
    """Fake non-dense model: per-query masks from colour; records the windows it saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []
        self.templates_seen: list[object] = []

    def text_defaults(self):
        return [], ["{}"]

    def segment(self, image: np.ndarray, queries: list[str], *, background=None, templates=None) -> Prediction:
        self.seen.append(image.shape[:2])
        self.templates_seen.append(templates)
        ch = {"red": 0, "blue": 2}
        masks = np.stack([(image[..., ch[q]] > 128).astype(np.float32) if q in ch else
                          np.zeros(image.shape[:2], np.float32) for q in queries])
        return Prediction(labels=masks.argmax(0), masks=masks, scores=np.ones(len(queries)), kept=[])


def test_mask_path_averages_model_masks_over_windows():
    model = ColourSegmenter()
    pred = SclipProtocol(model, SclipParams(background_queries=[])).segment(two_halves(), ["red", "blue"])
    assert set(model.seen) == {(224, 224)}  # every window is a 224 crop of the 336-short-side image
    assert all(t == imagenet_templates() for t in model.templates_seen)  # the default imagenet80, per call
    assert (pred.labels[:, :240] == 0).all() and (pred.labels[:, 260:] == 1).all()


def test_protocol_refuses_what_it_cannot_do(tmp_path):
    with pytest.raises(ValueError, match="precomputed"):
        SclipProtocol(Precomputed(tmp_path, values="query"))

    class NoText:
        def segment(self, image, queries):  # pragma: no cover - never called
            raise AssertionError

    with pytest.raises(ValueError, match="templates"):
        SclipProtocol(NoText())
    with pytest.raises(ValueError, match="valid: car, sclip"):
        build_protocol({"name": "tcl"}, ColourSegmenter())
    seg = ColourSegmenter()
    assert build_protocol({"name": "car"}, seg) is seg and build_protocol(None, seg) is seg


def test_car_under_sclip_gets_imagenet_templates(scene):
    seg = build_segmenter({"name": "car", "proposal": "tiny_random", "classifier": "tiny_random",
                           "protocol": {"name": "sclip", "short_side": 64, "crop": 48, "stride": 32}}, None)
    assert isinstance(seg, SclipProtocol) and seg.templates == imagenet_templates()
    own = list(seg.inner.classifier.templates)
    calls = []
    real = seg.inner.classifier.score
    seg.inner.classifier.score = lambda p, q, t=None: calls.append(t) or real(p, q, t)
    pred = seg.segment(scene, ["red,crimson", "grey"])
    assert calls and all(t == imagenet_templates() for t in calls)
    assert seg.inner.classifier.templates == own  # passed per call: the scorer is never modified
    assert pred.labels.shape == scene.shape[:2] and pred.masks.shape == (2, *scene.shape[:2])


def test_sclip_protocol_end_to_end(tmp_path):
    from carbench.engine.evaluate import run_evaluation

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[
            "dataset=voc_fixture", f"dataset.root={tmp_path / 'voc'}", "limit=2", "device=cpu", "num_workers=0",
            "model=dense_clip", "model.attention=sclip", "postprocess=none", "protocol=sclip",
        ])
    res = run_evaluation(cfg, tmp_path / "run")
    assert res["num_images"]["evaluated"] == 2 and 0.0 <= res["metrics"]["mIoU"] <= 100.0
    assert res["config"]["model"]["protocol"]["name"] == "sclip"
    assert res["config"]["model"]["protocol"]["prob_threshold"] == 0.1
