"""Large vocabularies (ADE-847, PC-459): bounded memory with unchanged outputs, and prediction files for ids > 255.

Memory is checked with tracemalloc (NumPy reports its buffers to it): the peak of an operation must stay
below the size of the K×H×W float64 stack the old code made, which no chunking bug could hide.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from carbench.engine.evaluators import Outputs, SemanticEvaluator
from carbench.engine.prediction_png import needs_16bit, read_prediction_png, write_prediction_png
from carbench.models import labels as labels_mod
from carbench.models.labels import merge_referring
from carbench.models.postprocess import crf
from carbench.models.precomputed import Precomputed
from carbench.types import BACKGROUND, Prediction, Sample


def peak_bytes(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def whole_stack_unary(maps: np.ndarray, bg_factor: float) -> np.ndarray:
    """The CRF unary as the whole-stack float64 formula defines it (the reference the chunked code must equal)."""
    fg = np.clip(maps.astype(np.float64), 0, 1)
    probs = np.concatenate([(1 - fg.max(0, keepdims=True)) ** bg_factor, fg], 0)
    return (-np.log(np.clip(probs, crf.PROB_CLIP, None))).reshape(len(probs), -1).astype(np.float32)


@pytest.mark.parametrize("bg_factor", [1.0, 0.7])
def test_crf_unary_equals_the_float64_formula_bit_for_bit(rng: np.random.Generator, bg_factor: float) -> None:
    maps = (rng.random((5, 17, 23)) ** 3).astype(np.float32)
    maps[2] = 0.0
    maps[3, :4] = 1.0
    got = crf._unary(maps, (17, 23), bg_factor, "maps")
    np.testing.assert_array_equal(got, whole_stack_unary(maps, bg_factor))
    assert got.dtype == np.float32


def test_crf_input_never_holds_a_float64_stack(rng: np.random.Generator) -> None:
    k, h, w = 40, 64, 80
    maps = rng.random((k, h, w), dtype=np.float32)
    peak = peak_bytes(lambda: crf._unary(maps, (h, w), 1.0, "maps"))
    assert peak < k * h * w * 8 * 0.75  # float32 unary (K+1)·H·W·4 + a few H×W planes, far below float64


def test_crf_input_errors_name_the_channel(rng: np.random.Generator) -> None:
    maps = rng.random((3, 4, 5), dtype=np.float32)
    maps[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"contains NaN \(channel 1\)"):
        crf._unary(maps, (4, 5), 1.0, "maps")
    maps[1, 0, 0] = 1.5
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*channel 1"):
        crf._unary(maps, (4, 5), 1.0, "maps")


def test_referring_merge_in_bands_equals_the_dense_sum(rng: np.random.Generator,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    masks = rng.random((6, 37, 29)).astype(np.float32)
    scores = rng.random(6) + 0.1
    fg = np.tensordot(scores, masks.astype(np.float64), axes=1) / scores.sum() >= 0.5
    monkeypatch.setattr(labels_mod, "_BAND_ELEMENTS", 6 * 29 * 4)  # 4 rows a band: 10 bands, the last short
    np.testing.assert_array_equal(merge_referring(masks, scores, min_area_frac=0.0), fg)


def test_referring_merge_never_holds_a_float64_stack(rng: np.random.Generator,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    k, h, w = 30, 96, 96
    masks = rng.random((k, h, w), dtype=np.float32) > 0.5
    monkeypatch.setattr(labels_mod, "_BAND_ELEMENTS", k * w * 8)
    peak = peak_bytes(lambda: merge_referring(masks, np.ones(k)))
    assert peak < k * h * w * 8 * 0.5


def test_text_tower_runs_in_chunks_with_the_same_embeddings(tiny_backbone) -> None:
    bb = tiny_backbone
    texts = [f"a photo of thing number {i}" for i in range(11)]
    old_cache, old_chunk = bb.cache_text, bb.text_chunk
    sizes: list[int] = []
    real = bb.model.encode_text
    try:
        bb.cache_text = False
        bb.text_chunk = 1000
        whole = bb.encode_strings(texts)
        bb.text_chunk = 4
        bb.model.encode_text = lambda tokens, *a, **k: (sizes.append(len(tokens)), real(tokens, *a, **k))[1]
        chunked = bb.encode_strings(texts)
        bb.cache_text = True  # the cached path chunks the strings it has not seen yet
        bb._text_cache.clear()
        cached = bb.encode_strings(texts + texts[:2])
    finally:
        bb.model.encode_text = real
        bb.cache_text, bb.text_chunk = old_cache, old_chunk
    assert sizes == [4, 4, 3, 4, 4, 3]
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)
    torch.testing.assert_close(cached[:11], whole, rtol=0, atol=1e-6)
    bb.text_chunk = 0
    try:
        with pytest.raises(ValueError, match="text_chunk must be ≥ 1"):
            bb.encode_strings(["never seen before, so it must be encoded"])
    finally:
        bb.text_chunk = old_chunk


def test_prediction_png_round_trip_in_both_formats(tmp_path: Path) -> None:
    wide = np.array([[0, 255, 256], [846, 65535, 300]], dtype=np.int64)
    write_prediction_png(tmp_path / "w.png", wide, sixteen_bit=True)
    np.testing.assert_array_equal(read_prediction_png(tmp_path / "w.png"), wide)
    narrow = np.array([[0, 20, 255]], dtype=np.int64)
    write_prediction_png(tmp_path / "n.png", narrow, sixteen_bit=False)
    np.testing.assert_array_equal(read_prediction_png(tmp_path / "n.png"), narrow)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 255\], got min 846, max 846"):
        write_prediction_png(tmp_path / "x.png", wide[1:, :1], sixteen_bit=False)  # never wrapped to 78
    with pytest.raises(ValueError, match="hold ids in"):
        write_prediction_png(tmp_path / "x.png", np.array([[70000]]), sixteen_bit=True)
    assert not needs_16bit(255) and needs_16bit(256) and needs_16bit(65535)


def test_evaluator_saves_ade847_ids_losslessly_and_precomputed_scores_them_back(tmp_path: Path) -> None:
    # an ADE-847-like label space: 847 classes, ignore/background 65,535
    ds = SimpleNamespace(name="big", num_classes=847, ignore_index=65535, class_names=[f"c{i}" for i in range(847)],
                         queries=[f"q{i}" for i in range(847)], query_label_ids=list(range(847)),
                         background_label=65535)
    ev = SemanticEvaluator(ds, reduction="mmseg", pred_ignore="miss", outputs=Outputs(tmp_path, save_predictions=True))
    assert ev.sixteen_bit
    labels = np.array([[0, 300, 846], [BACKGROUND, 255, 300]], dtype=np.int64)  # query indices
    masks = np.stack([(labels == k) for k in range(847)]).astype(np.float32)
    pred = Prediction(labels=labels, masks=masks, scores=np.ones(847, np.float32), kept=[0, 255, 300, 846],
                      trace=[])
    target = np.array([[0, 300, 846], [65535, 255, 299]], dtype=np.int64)
    sample = Sample("s1", np.zeros((2, 3, 3), np.uint8), target, list(ds.queries))
    ev.process(sample, pred)
    saved = read_prediction_png(tmp_path / "predictions" / "s1.png")
    np.testing.assert_array_equal(saved, [[0, 300, 846], [65535, 255, 300]])
    back = Precomputed(tmp_path / "predictions", values="dataset", query_label_ids=ds.query_label_ids,
                       background_label=65535).segment_sample(sample)
    np.testing.assert_array_equal(back.labels, labels)


def test_evaluator_keeps_palette_pngs_for_small_label_spaces(tmp_path: Path) -> None:
    ds = SimpleNamespace(name="voc20ish", num_classes=3, ignore_index=255, class_names=["a", "b", "c"],
                         queries=["a", "b", "c"], query_label_ids=[0, 1, 2], background_label=255)
    ev = SemanticEvaluator(ds, reduction="mmseg", pred_ignore="miss", outputs=Outputs(tmp_path, save_predictions=True))
    assert not ev.sixteen_bit
    labels = np.array([[0, 2, BACKGROUND]], dtype=np.int64)
    pred = Prediction(labels=labels, masks=np.zeros((3, 1, 3), np.float32), scores=np.ones(3, np.float32),
                      kept=[0, 2], trace=[])
    ev.process(Sample("s", np.zeros((1, 3, 3), np.uint8), np.array([[0, 2, 255]]), list(ds.queries)), pred)
    with Image.open(tmp_path / "predictions" / "s.png") as im:
        assert im.mode == "P"
    np.testing.assert_array_equal(read_prediction_png(tmp_path / "predictions" / "s.png"), [[0, 2, 255]])


def test_bench_vocab_fit_recovers_a_known_line() -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_vocab.py"
    spec = importlib.util.spec_from_file_location("bench_vocab", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = [{"K": k, "s": 3.0 + 0.5 * k} for k in (20, 150, 459, 847)]
    fit = mod.fit_growth(rows, "s")
    assert fit["per_query"] == 0.5 and fit["intercept"] == 3.0
    quadratic = mod.fit_growth([{"K": k, "s": k * k} for k in (20, 150, 459)], "s")
    assert quadratic["loglog_slope"] == 2.0
