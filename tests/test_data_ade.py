"""ADE-150 (8-bit PNG, 0 → ignore, k → k−1) and ADE-847 (16-bit TIFF, 65535 ignore): adapters, checker, runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dataset_helpers import ROOT, TINY, evaluate_fixture
from PIL import Image

from carbench.data import build_dataset
from carbench.data.ade import ADE150_CLASSES, ADE847_CLASSES
from carbench.data.check_folder_dataset import check
from carbench.data.convert_labels import write_png_l
from carbench.data.fixtures_bench import write_ade150_fixture, write_ade847_fixture

ENV = dict(os.environ, HF_HUB_OFFLINE="1", CARBENCH_OFFLINE="1", OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def ade150(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("ade") / "ADEChallengeData2016"
    return root, write_ade150_fixture(root)


@pytest.fixture(scope="module")
def ade847(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("ade847") / "ADE20K_2021_17_01"
    return root, write_ade847_fixture(root)


def test_class_tables_match_the_official_lists() -> None:
    assert len(ADE150_CLASSES) == 150 and ADE150_CLASSES[0] == "wall" and ADE150_CLASSES[-1] == "flag"
    assert ADE150_CLASSES[12].startswith("person") and ADE150_CLASSES[149] == "flag"
    assert len(ADE847_CLASSES) == 847 and ADE847_CLASSES[12] == "grass" and ADE847_CLASSES[11].startswith("person")
    assert ADE847_CLASSES[-1] == "adding machine, totalizer, totaliser" and ADE847_CLASSES[2] == "sky"


def test_ade150_shifts_ids_and_ignores_zero(ade150) -> None:
    root, expected = ade150
    ds = build_dataset({"name": "ade150", "root": str(root)})
    assert ds.ids == ["ADE_val_00000001", "ADE_val_00000002"]  # the training image is not listed
    assert (ds.num_classes, ds.background_label, ds.ignore_index) == (150, 255, 255)
    s = ds[0]
    np.testing.assert_array_equal(s.target, expected[s.id])
    # stored 13 (person) → 12, stored 150 (flag) → 149, stored 0 → ignore, stored 1 (wall) → 0
    assert s.target[5, 5] == 12 and s.target[20, 8] == 149 and s.target[10, 25] == 255 and s.target[0, 0] == 0
    assert ds[1].target[0, 0] == 2 and ds[1].target[5, 5] == 20
    assert s.queries[12] == "person, individual, someone, somebody, mortal, soul"


def test_ade150_refuses_foreign_values_and_counts_missing_labels(tmp_path) -> None:
    root = tmp_path / "ADEChallengeData2016"
    write_ade150_fixture(root)
    write_png_l(root / "annotations" / "validation" / "ADE_val_00000002.png", np.full((40, 30), 151, np.uint8))
    ds = build_dataset({"name": "ade150", "root": str(root)})
    with pytest.raises(ValueError, match=r"ADE_val_00000002.png holds values \[151\]"):
        ds[1]
    (root / "annotations" / "validation" / "ADE_val_00000001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"(?s)1 of 2 file\(s\).*ADE_val_00000001.png.*prepare_ade150"):
        build_dataset({"name": "ade150", "root": str(root)})


def test_ade847_reads_16_bit_ids_above_255(ade847) -> None:
    root, expected = ade847
    ds = build_dataset({"name": "ade847", "root": str(root)})
    assert (ds.num_classes, ds.ignore_index, ds.background_label) == (847, 65535, 65535)
    s = ds[0]
    np.testing.assert_array_equal(s.target, expected[s.id])
    assert s.target[5, 5] == 300 and s.target[20, 8] == 846 and s.target[10, 25] == 65535 and s.target[0, 0] == 0
    assert sorted(np.unique(ds[1].target).tolist()) == [12, 255]  # 255 is a class here, not ignore


def test_ade847_refuses_an_8_bit_resave_and_out_of_range_ids(tmp_path) -> None:
    root = tmp_path / "a847"
    write_ade847_fixture(root)
    lab = root / "annotations_detectron2" / "validation" / "ADE_val_00000002.tif"
    Image.fromarray(np.zeros((40, 30), np.uint8), mode="L").save(lab, format="TIFF")
    ds = build_dataset({"name": "ade847", "root": str(root)})
    with pytest.raises(ValueError, match=r"mode 'L'.*16-bit TIFFs"):
        ds[1]
    Image.fromarray(np.full((40, 30), 847, np.uint16)).save(lab, format="TIFF")
    with pytest.raises(ValueError, match=r"holds values \[847\]"):
        ds[1]


def test_checker_counts_and_decodes_every_label(ade150, ade847) -> None:
    assert check("ade150", ade150[0], "validation", expected=2) == 2
    assert check("ade847", ade847[0], "validation", expected=2) == 2
    with pytest.raises(RuntimeError, match="expected 2000 images, found 2"):
        check("ade150", ade150[0], "validation")


def test_prepare_script_names_the_missing_folder(tmp_path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "datasets" / "prepare_ade847.py"), str(tmp_path / "nope")],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode != 0 and "does not exist" in proc.stderr and "datasets/README.md" in proc.stderr


def test_evaluate_ade150_command_line(tmp_path, ade150) -> None:
    root, _ = ade150
    proc = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), f"hydra.run.dir={tmp_path / 'run'}", "dataset=ade150",
         f"dataset.root={root}", "limit=1", *TINY], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["num_images"] == {"expected": 1, "evaluated": 1, "failed": 0, "split_size": 2}
    assert res["dataset"] == {"name": "ade150", "split": "validation", "num_classes": 150}
    assert len(res["per_class_iou"]) == 150 and len(res["queries"]) == 150
    model = res["config"]["model"]
    assert (model["mask_threshold"], model["confidence_threshold"], model["clipes_threshold"]) == (0.6, 0.25, 0.7)
    assert len(model["two_pass"]["stuff_queries"]) == 25 and "house" not in model["background_queries"]
    assert res["metric_rule"]["pred_ignore"] == "drop"
    assert min(map(int, res["steps_histogram"])) >= 4  # two passes of at least two steps each


def test_evaluate_ade847_in_process(tmp_path, ade847) -> None:
    # one template instead of 15: the text tower is the cost here (847 queries × 15 templates); see bench_vocab.py
    res = evaluate_fixture("ade847", ade847[0], tmp_path / "run", "postprocess=none", "model.templates=['{}']",
                           limit=1)
    assert res["num_images"]["evaluated"] == 1 and res["dataset"]["num_classes"] == 847
    assert len(res["per_class_iou"]) == 847 and len(res["config"]["model"]["two_pass"]["stuff_queries"]) == 29
