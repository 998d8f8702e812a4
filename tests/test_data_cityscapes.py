"""Cityscapes: the official labelId → trainId table, the converter, the adapter, an evaluate.py run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dataset_helpers import evaluate_fixture
from PIL import Image

from carbench.data import build_dataset
from carbench.data.cityscapes import CITYSCAPES_CLASSES, label_ids_to_train_ids
from carbench.data.convert_cityscapes import convert_split
from carbench.data.fixtures_bench import write_cityscapes_fixture


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("cityscapes")
    expected = write_cityscapes_fixture(root)
    assert convert_split(root, "val", expected=2) == 2
    return root, expected


def test_label_id_table() -> None:
    ids = np.arange(34, dtype=np.uint8)
    train = label_ids_to_train_ids(ids)
    evaluated = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # cityscapesScripts labels.py
    assert {i: int(t) for i, t in enumerate(train) if t != 255} == evaluated
    assert CITYSCAPES_CLASSES[6] == "traffic light" and CITYSCAPES_CLASSES[18] == "bicycle"
    with pytest.raises(ValueError, match=r"\[34\] that are not Cityscapes label ids"):
        label_ids_to_train_ids(np.array([[34]], dtype=np.uint8))


def test_converter_and_adapter(city) -> None:
    root, expected = city
    out = root / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000294_gtFine_labelTrainIds.png"
    assert Image.open(out).mode == "L"
    ds = build_dataset({"name": "cityscapes", "root": str(root)})
    assert ds.ids == ["frankfurt/frankfurt_000000_000294", "lindau/lindau_000000_000019"]
    for i in range(2):
        np.testing.assert_array_equal(ds[i].target, expected[ds.ids[i]])
    t = ds[0].target  # road background, car, ego vehicle (ignored), person
    assert t[0, 0] == 0 and t[5, 5] == 13 and t[10, 40] == 255 and t[25, 8] == 11
    before = out.read_bytes()
    assert convert_split(root, "val", expected=2) == 2 and out.read_bytes() == before
    with pytest.raises(RuntimeError, match="expected 500 images"):
        convert_split(root, "val")


def test_evaluate_cityscapes_in_process(tmp_path, city) -> None:
    root, _ = city
    res = evaluate_fixture("cityscapes", root, tmp_path / "run")
    assert res["num_images"] == {"expected": 2, "evaluated": 2, "failed": 0, "split_size": 2}
    assert res["dataset"]["name"] == "cityscapes" and len(res["per_class_iou"]) == 19
    assert res["config"]["model"]["two_pass"]["stuff_queries"][0] == "road"
