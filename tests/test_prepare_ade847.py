"""The ADE-847 converter on a raw ADE20K_2021_17_01 fixture: values, resize, splits, idempotence, loud checks."""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from carbench.data import build_dataset
from carbench.data.convert_ade847 import (
    convert,
    decode_object_map,
    label_lookup,
    main,
    output_size,
    split_of,
)
from carbench.data.fixtures_ade_full import RELEASE, write_ade_full_fixture
from carbench.data.folder_semantic import read_label_u16


@pytest.fixture()
def release(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    expected = write_ade_full_fixture(tmp_path)
    return tmp_path / RELEASE, expected


def test_label_table_maps_the_847_object_classes_in_label_order() -> None:
    lut = label_lookup()
    assert (lut != 65535).sum() == 847
    assert sorted(lut[lut != 65535].tolist()) == list(range(847))
    assert lut[2978] == 0 and lut[1223] == 268 and lut[3148] == 846  # wall, heater, adding machine
    assert lut[0] == 65535 and lut[5] == 65535


def test_object_class_is_read_from_r_tens_and_g() -> None:
    seg = np.array([[[113, 162, 7], [119, 162, 200], [9, 5, 0]]], dtype=np.uint8)
    assert decode_object_map(seg).tolist() == [[2978, 2978, 5]]
    with pytest.raises(ValueError, match="8-bit RGB object map"):
        decode_object_map(seg[..., 0])


@pytest.mark.parametrize(("hw", "out"), [((520, 600), (512, 591)), ((600, 520), (591, 512)),
                                         ((512, 700), (512, 700)), ((513, 513), (512, 512)), ((30, 40), (30, 40))])
def test_short_side_is_capped_at_512(hw: tuple[int, int], out: tuple[int, int]) -> None:
    assert output_size(*hw) == out


def test_split_comes_from_the_file_name() -> None:
    assert split_of("ADE_val_00000001.jpg") == "validation"
    assert split_of("ADE_train_00000001.jpg") == "training"
    assert split_of("ADE_frame_00000001.jpg") == "training"
    with pytest.raises(ValueError, match="not an ADE20K image name"):
        split_of("foo.png")


def test_converts_validation_to_the_adapter_layout(release: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, expected = release
    assert convert(root, ["validation"], expected=2) == {"validation": 2}
    labels = root / "annotations_detectron2" / "validation"
    small = read_label_u16(labels / "ADE_val_00000001.tif")
    np.testing.assert_array_equal(small, expected["ADE_val_00000001"])
    assert {0, 268, 846, 65535} == set(np.unique(small).tolist())
    large = read_label_u16(labels / "ADE_val_00000002.tif")
    want = cv2.resize(expected["ADE_val_00000002"], (591, 512), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(large, want)
    with Image.open(root / "images_detectron2" / "validation" / "ADE_val_00000002.jpg") as im:
        assert im.size == (591, 512) and im.format == "JPEG"
    assert not (root / "images_detectron2" / "training").exists()  # only the asked split

    ds = build_dataset({"name": "ade847", "root": str(root), "split": "validation"})
    assert len(ds) == 2
    sample = ds[0]
    assert sample.image.shape[:2] == sample.target.shape == (30, 40)
    assert set(np.unique(sample.target).tolist()) == {0, 268, 846, 65535}  # 65,535 = the adapter's ignore


def test_training_split_and_check_only(release: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, expected = release
    assert main([str(root), "--splits", "training", "--expected-count", "1"]) == {"training": 1}
    got = read_label_u16(root / "annotations_detectron2" / "training" / "ADE_train_00000001.tif")
    np.testing.assert_array_equal(got, expected["ADE_train_00000001"])
    assert main([str(root), "--splits", "training", "--expected-count", "1", "--check-only"]) == {"training": 1}


def test_rerun_skips_and_overwrite_rewrites(release: tuple[Path, dict[str, np.ndarray]],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = release
    convert(root, ["validation"], expected=2)
    tif = root / "annotations_detectron2" / "validation" / "ADE_val_00000001.tif"
    tif.write_bytes(b"stale")  # a second run must keep an existing output, not silently redo it
    convert(root, ["validation"], expected=2)
    assert "0 converted, 2 already present" in capsys.readouterr().out
    assert tif.read_bytes() == b"stale"
    convert(root, ["validation"], expected=2, overwrite=True)
    assert read_label_u16(tif).shape == (30, 40)


def test_split_size_is_checked_loudly(release: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = release
    with pytest.raises(RuntimeError, match="expected 2000 images and label maps, found 2 images and 2 maps"):
        convert(root, ["validation"])


def test_missing_inputs_name_the_path(release: tuple[Path, dict[str, np.ndarray]], tmp_path: Path) -> None:
    root, _ = release
    seg = next(root.glob("images/ADE/validation/**/ADE_val_00000001_seg.png"))
    seg.unlink()
    with pytest.raises(FileNotFoundError, match="ADE_val_00000001_seg.png does not exist"):
        convert(root, ["validation"], expected=2)
    empty = tmp_path / "empty" / RELEASE
    empty.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="index_ade20k.pkl does not exist"):
        convert(empty, ["validation"])
    with (empty / "index_ade20k.pkl").open("wb") as f:
        pickle.dump({"filename": []}, f)
    with pytest.raises(ValueError, match="no 'folder' and 'filename' lists"):
        convert(empty, ["validation"])


def test_mismatched_object_map_is_refused(release: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = release
    img = next(root.glob("images/ADE/validation/**/ADE_val_00000001.jpg"))
    shutil.copyfile(next(root.glob("images/ADE/training/**/ADE_train_00000001_seg.png")),
                    img.with_name("ADE_val_00000001_seg.png"))  # 40×30 map next to a 30×40 image
    with pytest.raises(ValueError, match="do not belong together"):
        convert(root, ["validation"], expected=2)


def test_the_prepare_script_is_the_one_command(release: tuple[Path, dict[str, np.ndarray]]) -> None:
    root, _ = release
    script = Path(__file__).resolve().parents[1] / "datasets" / "prepare_ade847.py"
    proc = subprocess.run([sys.executable, str(script), str(root), "--expected-count", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ADE-847 validation: 2 images, 2 label maps" in proc.stdout
    assert len(list((root / "annotations_detectron2" / "validation").glob("*.tif"))) == 2


def test_the_index_is_read_without_running_code_from_it(tmp_path):
    """A pickle that names any callable besides numpy's array rebuilders is refused, with the file named."""
    import os

    from carbench.data.convert_ade847 import IndexUnpickler

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "index_ade20k.pkl"
    path.write_bytes(pickle.dumps({"folder": [], "filename": [Evil()]}))
    with path.open("rb") as f, pytest.raises(pickle.UnpicklingError, match=r"index_ade20k\.pkl names .*system"):
        IndexUnpickler(f).load()
    assert not (tmp_path / "pwned").exists()
    path.write_bytes(pickle.dumps({"a": np.arange(3, dtype=np.int16), "b": np.float32(2.5)}))
    with path.open("rb") as f:
        back = IndexUnpickler(f).load()
    assert back["a"].tolist() == [0, 1, 2] and back["a"].dtype == np.int16 and float(back["b"]) == 2.5
