"""Pascal Context 459: trainval/*.mat → 16-bit TIFF converter, the adapter, an evaluate.py run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dataset_helpers import evaluate_fixture
from PIL import Image

from carbench.data import build_dataset
from carbench.data.context459 import CONTEXT459_CLASSES
from carbench.data.convert_context459 import convert_split, label_map_to_ids
from carbench.data.fixtures_bench import write_context459_fixture


@pytest.fixture(scope="module")
def pc459(tmp_path_factory) -> tuple[Path, Path, dict[str, np.ndarray]]:
    base = tmp_path_factory.mktemp("pc459")
    expected = write_context459_fixture(base)
    voc, out = base / "VOCdevkit" / "VOC2010", base / "pascal_ctx_d2"
    assert convert_split(voc, out, "val", expected=2) == 2
    return voc, out, expected


def test_label_map_shift_and_unlabeled() -> None:
    lm = np.array([[0, 1, 284], [459, 256, 0]])
    assert label_map_to_ids(lm).tolist() == [[65535, 0, 283], [458, 255, 65535]]
    assert label_map_to_ids(lm).dtype == np.uint16
    with pytest.raises(ValueError, match=r"\[460\] are outside 0..459"):
        label_map_to_ids(np.array([[460]]))
    assert CONTEXT459_CLASSES[283] == "person" and CONTEXT459_CLASSES[458] == "wool"


def test_converter_writes_16_bit_tiffs_of_the_val_list(pc459) -> None:
    _, out, expected = pc459
    for sid in ("2008_000002", "2008_000003"):
        im = Image.open(out / "annotations_ctx459" / "validation" / f"{sid}.tif")
        assert im.mode == "I;16"
        np.testing.assert_array_equal(np.array(im).astype(np.int64), expected[sid])
        assert (out / "images" / "validation" / f"{sid}.jpg").is_file()
    assert not (out / "annotations_ctx459" / "validation" / "2008_000007.tif").exists()  # train id


def test_converter_is_idempotent_and_checks_the_split_size(pc459) -> None:
    voc, out, _ = pc459
    tif = out / "annotations_ctx459" / "validation" / "2008_000003.tif"
    before = tif.read_bytes()
    assert convert_split(voc, out, "val", expected=2) == 2
    assert tif.read_bytes() == before
    with pytest.raises(RuntimeError, match="expected 5105 images and label maps, found 2 images and 2"):
        convert_split(voc, out, "val")


def test_converter_names_a_missing_mat(tmp_path) -> None:
    write_context459_fixture(tmp_path)
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    (voc / "trainval" / "2008_000003.mat").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 2 val ids have no trainval/<id>.mat.*2008_000003"):
        convert_split(voc, tmp_path / "out", "val", expected=2)


def test_adapter_targets(pc459) -> None:
    _, out, expected = pc459
    ds = build_dataset({"name": "context459", "root": str(out)})
    assert (ds.name, ds.num_classes, ds.ignore_index, len(ds)) == ("pc459", 459, 65535, 2)
    s = ds[0]
    np.testing.assert_array_equal(s.target, expected["2008_000002"])
    assert s.target[5, 5] == 283 and s.target[10, 25] == 458 and s.target[20, 8] == 0 and s.target[0, 0] == 65535


def test_evaluate_context459_in_process(tmp_path, pc459) -> None:
    _, out, _ = pc459
    res = evaluate_fixture("context459", out, tmp_path / "run", "postprocess=none", "model.templates=['{}']")
    assert res["num_images"] == {"expected": 2, "evaluated": 2, "failed": 0, "split_size": 2}
    assert res["dataset"]["name"] == "pc459" and len(res["per_class_iou"]) == 459
    assert res["config"]["model"]["mask_threshold"] == 0.4 and res["metric_rule"]["pred_ignore"] == "drop"
