"""model=precomputed: score saved label / mask PNGs with carbench's own pipeline and metric."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from carbench.data.voc_format import write_palette_png
from carbench.models.precomputed import Precomputed
from carbench.types import BACKGROUND, IGNORE_INDEX, Sample

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def sample(h: int = 4, w: int = 5, sid: str = "img1") -> Sample:
    return Sample(id=sid, image=np.zeros((h, w, 3), np.uint8), target=np.zeros((h, w), np.int64),
                  queries=["cat", "dog", "car"])


def write_png(path: Path, values: np.ndarray, mode: str = "P") -> None:
    if mode == "P":
        write_palette_png(path, values.astype(np.uint8))
    else:
        Image.fromarray(values.astype(np.uint8), mode=mode).save(path)


def test_dataset_ids_map_back_to_queries(tmp_path):
    values = np.array([[0, 1, 2, 3, 0]] * 4)  # VOC21-style: 0 = background, k = query k−1
    write_png(tmp_path / "img1.png", values)
    pre = Precomputed(tmp_path, values="dataset", query_label_ids=[1, 2, 3], background_label=0)
    pred = pre.segment_sample(sample())
    assert pred.labels[0].tolist() == [BACKGROUND, 0, 1, 2, BACKGROUND]
    assert pred.kept == [0, 1, 2] and pred.masks.shape == (3, 4, 5) and pred.masks[1, 0, 2] == 1


def test_voc20_style_ids_and_mmseg_offset(tmp_path):
    # VOC20 metric ids: classes 0..K−1, 255 = no class = background. An mmseg format_only dump is +1.
    write_png(tmp_path / "img1.png", np.array([[1, 2, 3, 255, 1]] * 4), mode="L")
    pre = Precomputed(tmp_path, values="dataset", query_label_ids=[0, 1, 2], background_label=IGNORE_INDEX,
                      value_offset=-1)
    assert pre.segment_sample(sample()).labels[0].tolist() == [0, 1, 2, BACKGROUND, 0]


def test_query_values_and_unknown_handling(tmp_path):
    write_png(tmp_path / "img1.png", np.array([[0, 2, 7, 9, 9]] * 4))
    with pytest.raises(ValueError, match=r"values \[7\]"):
        Precomputed(tmp_path, values="query", background_value=9).segment_sample(sample())
    pred = Precomputed(tmp_path, values="query", background_value=9, unknown="background").segment_sample(sample())
    assert pred.labels[0].tolist() == [0, 2, BACKGROUND, BACKGROUND, BACKGROUND]


def test_bad_files_are_errors_naming_the_file(tmp_path):
    pre = Precomputed(tmp_path, values="query")
    with pytest.raises(FileNotFoundError, match="img1.png"):
        pre.segment_sample(sample())
    write_png(tmp_path / "img1.png", np.zeros((3, 5)))
    with pytest.raises(ValueError, match="3×5 but the image is 4×5"):
        pre.segment_sample(sample())
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "img1.png")
    with pytest.raises(ValueError, match="mode 'RGB'"):
        pre.segment_sample(sample())
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Precomputed(tmp_path / "nowhere")
    with pytest.raises(TypeError, match="segment_sample"):
        pre.segment(np.zeros((4, 5, 3), np.uint8), ["cat"])


def test_referring_masks(tmp_path):
    write_png(tmp_path / "ref7.png", np.array([[0, 255, 255, 0, 0]] * 4), mode="L")
    pred = Precomputed(tmp_path, task="referring").segment_sample(
        Sample(id="ref7", image=np.zeros((4, 5, 3), np.uint8), target=np.zeros((4, 5), bool), queries=["the cat"])
    )
    assert pred.labels[0].tolist() == [BACKGROUND, 0, 0, BACKGROUND, BACKGROUND]
    assert pred.masks.shape == (1, 4, 5) and pred.kept == [0]


def _run(tmp_path: Path, name: str, *overrides: str) -> dict:
    from carbench.engine.evaluate import run_evaluation

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[
            "dataset=voc_fixture", f"dataset.root={tmp_path / 'voc'}", "limit=2", "device=cpu", "num_workers=0",
            *overrides,
        ])
    return run_evaluation(cfg, tmp_path / name)


@pytest.mark.parametrize("variant", ["voc21", "voc20"])
def test_saved_run_scores_identically(tmp_path, variant):
    first = _run(tmp_path, "first", "model=dense_clip", "model.backbone=tiny_random", "postprocess=none",
                 "save_predictions=true", f"dataset.variant={variant}")
    again = _run(tmp_path, "again", "model=precomputed", f"model.root={tmp_path / 'first' / 'predictions'}",
                 "postprocess=none", f"dataset.variant={variant}")
    assert again["metrics"]["mIoU"] == first["metrics"]["mIoU"]
    assert torch.equal(torch.tensor(again["confusion"]), torch.tensor(first["confusion"]))
    assert first["confusion"] != [[0] * len(first["confusion"])] * len(first["confusion"])


def test_precomputed_refuses_a_postprocess(tmp_path):
    with pytest.raises(ValueError, match="postprocess=none"):
        _run(tmp_path, "x", "model=precomputed", f"model.root={tmp_path}")
