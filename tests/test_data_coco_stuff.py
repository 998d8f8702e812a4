"""COCO-Stuff-171: raw stuffthingmaps → *_labelTrainIds.png converter, the adapter, an evaluate.py run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dataset_helpers import evaluate_fixture
from PIL import Image

from carbench.data import build_dataset
from carbench.data.coco_stuff import COCO_STUFF_CLASSES
from carbench.data.convert_coco_stuff import convert_split, raw_to_train_ids
from carbench.data.fixtures_more import write_coco_stuff_fixture


@pytest.fixture(scope="module")
def stuff_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stuff")
    write_coco_stuff_fixture(root)
    assert convert_split(root, "val", expected=3) == 3
    return root


def test_raw_values_map_through_the_mmseg_table() -> None:
    # raw = COCO id − 1: 0 person → 0, 12 stop sign (raw 11 is an unused id) → 11, 89 toothbrush → 79,
    # 91 banner → 80, 95 building-other (banner, blanket, branch, bridge come first) → 84, 181 wood → 170
    raw = np.array([[0, 12, 89, 91], [95, 181, 255, 2]], dtype=np.uint8)
    assert raw_to_train_ids(raw).tolist() == [[0, 11, 79, 80], [84, 170, 255, 2]]
    assert COCO_STUFF_CLASSES[84] == "building-other" and COCO_STUFF_CLASSES[170] == "wood"
    with pytest.raises(ValueError, match=r"raw values \[11, 90\]"):
        raw_to_train_ids(np.array([[11, 90]], dtype=np.uint8), "x")


def test_converter_output_and_idempotence(stuff_root) -> None:
    ann = stuff_root / "annotations" / "val2017"
    lab = np.array(Image.open(ann / "000000000139_labelTrainIds.png"))
    # background 255 stays 255; stop sign rect → 11; raw 95 rect → 84; person rect → 0
    assert lab[0, 0] == 255 and lab[5, 5] == 11 and lab[10, 25] == 84 and lab[20, 8] == 0
    lab = np.array(Image.open(ann / "000000000285_labelTrainIds.png"))
    assert lab[0, 0] == 170 and lab[10, 5] == 79 and lab[30, 20] == 255
    before = (ann / "000000000632_labelTrainIds.png").read_bytes()
    assert convert_split(stuff_root, "val", expected=3) == 3
    assert (ann / "000000000632_labelTrainIds.png").read_bytes() == before
    with pytest.raises(RuntimeError, match="expected 5000 images"):
        convert_split(stuff_root, "val")


def test_adapter(stuff_root) -> None:
    ds = build_dataset({"name": "coco_stuff171", "root": str(stuff_root)})
    assert (ds.num_classes, ds.background_label, len(ds)) == (171, 255, 3)
    assert ds.queries[84] == "building other" and ds.class_names[84] == "building-other"
    t = ds[2].target  # 000000000632: background raw 91 → 80, backpack raw 26 → 24, car raw 2 → 2
    assert t[0, 0] == 80 and t[20, 20] == 24 and t[20, 50] == 2


def test_evaluate_coco_stuff171_in_process(tmp_path, stuff_root) -> None:
    res = evaluate_fixture("coco_stuff171", stuff_root, tmp_path / "run", "postprocess=none")
    assert res["num_images"]["evaluated"] == 2 and res["num_images"]["split_size"] == 3
    assert len(res["per_class_iou"]) == 171 and len(res["config"]["model"]["two_pass"]["stuff_queries"]) == 91
    assert res["metric_rule"]["pred_ignore"] == "miss"
