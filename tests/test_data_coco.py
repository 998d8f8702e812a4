"""COCO-Object: the GroupViT conversion of COCO-Stuff maps, the adapter, and one evaluate.py run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carbench.data import build_dataset
from carbench.data.convert_coco_object import convert_map, convert_split
from carbench.data.fixtures_more import write_coco_stuff_fixture

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", CARBENCH_OFFLINE="1", OMP_NUM_THREADS="1")
TINY = ["model.proposal=tiny_random", "model.classifier=tiny_random", "device=cpu"]


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("coco") / "coco_stuff164k"
    expected = write_coco_stuff_fixture(root)
    convert_split(root, "val", expected=3)
    return root, expected


def test_convert_map_hand_values() -> None:
    # raw 12 = stop sign (COCO id 13; ids 12 is unused so trainId 11) → 12; raw 0 person → 1; raw 89 → 80;
    # raw 26 backpack (trainId 24) → 25; stuff 91/95/181 → 0; unlabeled 255 → 0 (no ignore pixels remain)
    raw = np.array([[12, 0, 89, 26], [91, 95, 181, 255]], dtype=np.uint8)
    assert convert_map(raw).tolist() == [[12, 1, 80, 25], [0, 0, 0, 0]]
    assert convert_map(raw).dtype == np.uint8


@pytest.mark.parametrize("bad", [11, 90, 182, 254])
def test_convert_map_refuses_values_no_stuffthingmap_holds(bad: int) -> None:
    with pytest.raises(ValueError, match=rf"\[{bad}\]"):
        convert_map(np.array([[0, bad]], dtype=np.uint8), "x.png")


def test_converter_output_is_exactly_the_hand_built_maps(coco) -> None:
    root, expected = coco
    out_dir = root / "annotations" / "val2017"
    for sid, exp in expected.items():
        im = Image.open(out_dir / f"{sid}_instanceTrainIds.png")
        assert im.mode == "L"
        np.testing.assert_array_equal(np.array(im), exp)
    # the stop-sign rectangle (12×10 px) and the person one (10×10) in image 139, nothing else but 0
    lab = np.array(Image.open(out_dir / "000000000139_instanceTrainIds.png"))
    assert {int(v): int(c) for v, c in zip(*np.unique(lab, return_counts=True), strict=True)} == {
        0: 40 * 30 - 120 - 100, 1: 100, 12: 120}


def test_converter_is_idempotent_and_checks_the_split_size(coco, capsys) -> None:
    root, _ = coco
    target = root / "annotations" / "val2017" / "000000000285_instanceTrainIds.png"
    before = target.read_bytes()
    assert convert_split(root, "val", expected=3) == 3  # second run: everything already there
    assert "0 converted, 3 already present" in capsys.readouterr().out
    assert target.read_bytes() == before
    with pytest.raises(RuntimeError, match="expected 5000 images"):
        convert_split(root, "val")  # the real val size


def test_prepare_script_is_the_one_command(tmp_path) -> None:
    root = tmp_path / "coco"
    expected = write_coco_stuff_fixture(root, seed=1)
    proc = subprocess.run([sys.executable, str(ROOT / "datasets" / "prepare_coco_object.py"), str(root)],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode != 0 and "expected 5000 images and label maps, found 3 images" in proc.stderr
    proc = subprocess.run([sys.executable, str(ROOT / "datasets" / "prepare_coco_object.py"), str(root),
                           "--expected-count", "3"], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for sid, exp in expected.items():
        got = np.array(Image.open(root / "annotations" / "val2017" / f"{sid}_instanceTrainIds.png"))
        np.testing.assert_array_equal(got, exp)


def test_adapter_lists_images_sorted_with_81_classes(coco) -> None:
    root, expected = coco
    ds = build_dataset({"name": "coco_object", "root": str(root)})
    assert ds.ids == sorted(expected) and ds.num_classes == 81
    assert ds.class_names[12] == "stop sign" and ds.class_names[80] == "toothbrush"
    assert ds.background_label == 0 and ds.query_label_ids == list(range(1, 81))
    s = ds[0]
    assert s.image.shape == (30, 40, 3) and s.target.dtype == np.int64
    np.testing.assert_array_equal(s.target, expected["000000000139"])


def test_missing_label_is_counted_and_points_to_the_converter(tmp_path) -> None:
    root = tmp_path / "coco"
    write_coco_stuff_fixture(root)  # raw maps only: no *_instanceTrainIds.png yet
    with pytest.raises(FileNotFoundError) as err:
        build_dataset({"name": "coco_object", "root": str(root)})
    msg = str(err.value)
    assert "3 of 3 file(s)" in msg and "000000000139_instanceTrainIds.png" in msg
    assert "datasets/prepare_coco_object.py" in msg and "datasets/README.md" in msg


def test_missing_root_names_the_path(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        build_dataset({"name": "coco_object", "root": str(tmp_path / "nowhere")})


def test_evaluate_coco_object_end_to_end(tmp_path, coco) -> None:
    root, _ = coco
    proc = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), f"hydra.run.dir={tmp_path / 'run'}", "dataset=coco_object",
         f"dataset.root={root}", *TINY], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["num_images"] == {"expected": 3, "evaluated": 3, "failed": 0, "split_size": 3}
    assert res["dataset"] == {"name": "coco_object", "split": "val", "num_classes": 81}
    assert len(res["per_class_iou"]) == 81 and 0.0 <= res["metrics"]["mIoU"] <= 100.0
    assert res["queries"][0] == "person with clothes,people,human" and res["queries"][31] == "sknowboard"
    m = res["config"]["model"]
    assert (m["mask_threshold"], m["confidence_threshold"], m["clipes_threshold"]) == (0.5, 0.3, 0.5)
    assert m["visual_prompts"] == ["blur", "gray"] and len(m["templates"]) == 15
