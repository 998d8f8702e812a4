"""Pascal Context: Detail json → 60-class PNGs (converter), PC60 / PC59 adapter, evaluate.py runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from carbench.data import build_dataset
from carbench.data.convert_pascal_context import convert, raw_to_label
from carbench.data.fixtures_more import write_context_fixture
from carbench.engine.evaluate import run_evaluation

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", CARBENCH_OFFLINE="1", OMP_NUM_THREADS="1")
TINY = ["model.proposal=tiny_random", "model.classifier=tiny_random", "device=cpu"]


@pytest.fixture(scope="module")
def voc2010(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("ctx")
    expected = write_context_fixture(root)
    voc = root / "VOCdevkit" / "VOC2010"
    assert convert(voc, expected=3) == {"val": 3}
    return voc, expected


def test_raw_ids_map_to_alphabetical_label_ids() -> None:
    # background, aeroplane, bag, person / pottedplant, tvmonitor, wall, wood
    raw = np.array([[0, 2, 9, 284], [308, 427, 440, 458]])
    assert raw_to_label(raw).tolist() == [[0, 1, 2, 37], [40, 55, 56, 59]]
    with pytest.raises(ValueError, match=r"\[1, 459\]"):
        raw_to_label(np.array([[1, 2, 459]]), "x")


def test_converter_paints_in_json_order_and_writes_sorted_val_split(voc2010) -> None:
    voc, expected = voc2010
    for stem, exp in expected.items():
        im = Image.open(voc / "SegmentationClassContext" / f"{stem}.png")
        assert im.mode == "L"
        np.testing.assert_array_equal(np.array(im), exp)
    lab = np.array(Image.open(voc / "SegmentationClassContext" / "2008_000002.png"))
    # wall band rows 0..11, then person (x 8..19, y 4..25) painted over it, aeroplane at x 24..37, y 14..27
    assert lab[5, 10] == 37 and lab[5, 30] == 56 and lab[20, 30] == 1 and lab[29, 0] == 0
    assert (lab == 56).sum() == 40 * 12 - 12 * 8 and (lab == 37).sum() == 12 * 22 and (lab == 1).sum() == 14 * 14
    split = (voc / "ImageSets" / "SegmentationContext" / "val.txt").read_text().split()
    assert split == ["2008_000002", "2008_000003", "2008_000007"]  # the train image is not in val
    assert not (voc / "SegmentationClassContext" / "2008_000008.png").exists()


def test_converter_is_idempotent_and_checks_counts(voc2010) -> None:
    voc, _ = voc2010
    png = voc / "SegmentationClassContext" / "2008_000003.png"
    before = png.read_bytes()
    assert convert(voc, expected=3) == {"val": 3}
    assert png.read_bytes() == before
    with pytest.raises(RuntimeError, match="lists 3 images, expected 5105"):
        convert(voc)


def test_converter_refuses_a_category_outside_the_60(tmp_path) -> None:
    write_context_fixture(tmp_path, extra_category=1)
    with pytest.raises(ValueError, match=r"2008_000002.jpg: Detail category ids \[1\]"):
        convert(tmp_path / "VOCdevkit" / "VOC2010", expected=3)


def test_prepare_script_names_the_missing_json(tmp_path) -> None:
    (tmp_path / "VOC2010" / "JPEGImages").mkdir(parents=True)
    proc = subprocess.run([sys.executable, str(ROOT / "datasets" / "prepare_pascal_context.py"),
                           str(tmp_path / "VOC2010")], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode != 0
    assert str(tmp_path / "VOC2010" / "trainval_merged.json") in proc.stderr and "datasets/README.md" in proc.stderr


def test_pc60_and_pc59_targets(voc2010) -> None:
    voc, expected = voc2010
    pc60 = build_dataset({"name": "pascal_context", "root": str(voc)})
    pc59 = build_dataset({"name": "pascal_context", "root": str(voc), "variant": "pc59"})
    assert (pc60.num_classes, pc60.background_label, pc60.class_names[59]) == (60, 0, "wood")
    assert (pc59.num_classes, pc59.background_label, pc59.class_names[0]) == (59, 255, "aeroplane")
    assert pc60.query_label_ids[:2] == [1, 2] and pc59.query_label_ids[:2] == [0, 1]
    t60, t59 = pc60[1].target, pc59[1].target  # 2008_000003: wood band + bird on background
    np.testing.assert_array_equal(t60, expected["2008_000003"])
    assert sorted(np.unique(t59).tolist()) == [6, 58, 255]  # bird 7 → 6, wood 59 → 58, background 0 → 255
    assert ((t60 == 0) == (t59 == 255)).all()


def test_split_naming_missing_files_is_counted(tmp_path, voc2010) -> None:
    voc, _ = voc2010
    split = voc / "ImageSets" / "SegmentationContext" / "broken.txt"
    split.write_text("2008_000002\n2009_999998\n2009_999999\n")
    with pytest.raises(FileNotFoundError) as err:
        build_dataset({"name": "pascal_context", "root": str(voc), "split": "broken"})
    msg = str(err.value)
    assert "4 of 6 file(s)" in msg and "2009_999999.jpg" in msg and "prepare_pascal_context.py" in msg
    split.unlink()


def test_unconverted_folder_fails_with_the_readme_pointer(tmp_path) -> None:
    write_context_fixture(tmp_path)  # images + json, no conversion run yet
    with pytest.raises(FileNotFoundError) as err:
        build_dataset({"name": "pascal_context", "root": str(tmp_path / "VOCdevkit" / "VOC2010")})
    assert "SegmentationClassContext" in str(err.value) and "datasets/README.md" in str(err.value)


def test_evaluate_context_two_pass_end_to_end(tmp_path, voc2010) -> None:
    voc, _ = voc2010
    proc = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), f"hydra.run.dir={tmp_path / 'run'}", "dataset=context",
         f"dataset.root={voc}", *TINY], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["num_images"] == {"expected": 3, "evaluated": 3, "failed": 0, "split_size": 3}
    assert res["dataset"]["name"] == "pc60" and len(res["per_class_iou"]) == 60
    assert res["queries"][0] == "airplane" and res["queries"][54] == "monitor"
    tp = res["config"]["model"]["two_pass"]
    assert tp["stuff_visual_prompts"] == ["blur", "gray"] and len(tp["stuff_queries"]) == 21
    assert res["config"]["model"]["confidence_threshold"] == 0.2
    # two passes of at least two steps each per image
    assert min(map(int, res["steps_histogram"])) >= 4 and sum(res["steps_histogram"].values()) == 3


def test_context59_in_process_scores_59_classes(tmp_path, voc2010) -> None:
    voc, _ = voc2010
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["dataset=context59", f"dataset.root={voc}", *TINY, "num_workers=0",
                                           "postprocess=none"])
    res = run_evaluation(cfg, tmp_path / "run59")
    assert res["dataset"]["name"] == "pc59" and res["dataset"]["num_classes"] == 59
    assert "background" not in res["per_class_iou"] and len(res["per_class_iou"]) == 59
    assert res["num_images"]["evaluated"] == 3
    assert res["config"]["model"]["two_pass"]["stuff_bg_factor"] == 1.0  # context59 inherits the two passes
    # CaR's lenient PC59 rule: "no class" predictions are dropped, not counted as misses (dataset config wins)
    assert res["metric_rule"]["pred_ignore"] == "drop"
