"""Pascal VOC adapter, palette format, registry and fixture generator, on files in the real VOC layout."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image, ImageFile

from carbench.data import DATASETS, SemanticDataset, VOCSegmentation, build_dataset, register_dataset
from carbench.data.fixtures import DEFAULT_SIZES, TRAIN_ID, fixture_ids, main, write_voc_fixture
from carbench.data.voc import VOC_CLASSES
from carbench.data.voc_format import VOC_PALETTE, read_palette_png, write_palette_png
from carbench.types import IGNORE_INDEX

VAL_IDS = ["2007_000033", "2007_000042", "2007_000051"]
CAR_QUERIES = [
    "aeroplane", "bicycle", "bird avian", "boat", "bottle", "bus", "car", "cat", "chair seat", "cow",
    "diningtable", "dog", "horse", "motorbike", "person with clothes,people,human", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor screen",
]


@pytest.fixture()
def voc(tmp_path: Path) -> Path:
    """A fresh 3-image fixture; returns the VOC2012 folder."""
    return write_voc_fixture(tmp_path / "data")


def raw_label(voc: Path, sid: str) -> np.ndarray:
    """The label exactly as stored (palette indices), read independently of the adapter."""
    im = Image.open(voc / "SegmentationClass" / f"{sid}.png")
    assert im.mode == "P"
    return np.array(im)


# --------------------------------------------------------------------------- fixture + adapter basics


def test_fixture_layout_and_split_filtering(voc: Path) -> None:
    assert voc.parts[-2:] == ("VOCdevkit", "VOC2012")
    assert fixture_ids(3) == VAL_IDS
    assert (voc / "JPEGImages" / f"{TRAIN_ID}.jpg").is_file()  # the train id's files exist …
    ds = VOCSegmentation(voc, split="val")
    assert ds.ids == VAL_IDS  # … but val never lists it, and order is the file's
    assert [s.id for s in ds] == VAL_IDS
    assert VOCSegmentation(voc, split="train").ids == [TRAIN_ID]
    assert len(VOCSegmentation(voc, split="trainval")) == 4


def test_split_order_is_file_order_not_sorted(voc: Path) -> None:
    (voc / "ImageSets/Segmentation/shuffled.txt").write_text("2007_000051\n\n  2007_000033  \n2007_000042\n")
    assert VOCSegmentation(voc, split="shuffled").ids == ["2007_000051", "2007_000033", "2007_000042"]


def test_fixture_content_matches_spec(voc: Path) -> None:
    sizes = []
    for sid, (w, h) in zip(VAL_IDS, DEFAULT_SIZES, strict=True):
        img = Image.open(voc / "JPEGImages" / f"{sid}.jpg")
        assert img.format == "JPEG" and img.mode == "RGB" and img.size == (w, h)
        lab = Image.open(voc / "SegmentationClass" / f"{sid}.png")
        assert lab.mode == "P" and lab.size == (w, h)
        assert np.array_equal(np.array(lab.getpalette(), dtype=np.uint8).reshape(-1, 3), VOC_PALETTE)
        sizes.append(img.size)
    assert len(set(sizes)) == 3
    values = [set(np.unique(raw_label(voc, sid)).tolist()) for sid in VAL_IDS]
    assert values[1] == {0, 255}  # only background + void
    assert all(0 in v for v in values)
    assert all(2 <= len(v - {0, 255}) <= 3 for v in (values[0], values[2]))
    assert 255 in values[0]  # the void band around one object


def test_fixture_objects_are_visually_separable(voc: Path) -> None:
    """Each class region has its own flat colour, far from the background and from other classes."""
    ds = VOCSegmentation(voc)
    for s in ds:
        means = {int(c): s.image[s.target == c].reshape(-1, 3).astype(float).mean(0) for c in np.unique(s.target)}
        means.pop(IGNORE_INDEX, None)
        keys = sorted(means)
        for i, a in enumerate(keys):
            for b in keys[i + 1 :]:
                assert np.linalg.norm(means[a] - means[b]) > 40, (s.id, a, b)


def test_fixture_is_deterministic(tmp_path: Path) -> None:
    a, b, c = (write_voc_fixture(tmp_path / n, seed=s) for n, s in (("a", 0), ("b", 0), ("c", 1)))
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files if f.suffix == ".png")


def test_fixture_cli_with_voc_resolution(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    voc = main([str(tmp_path), "--num-val", "2", "--size", "500x375", "--size", "375x500"])
    assert capsys.readouterr().out.strip() == str(voc)
    ds = VOCSegmentation(voc)
    assert [s.image.shape for s in ds] == [(375, 500, 3), (500, 375, 3)]


# --------------------------------------------------------------------------- variants


def test_voc21_targets(voc: Path) -> None:
    ds = VOCSegmentation(voc, variant="voc21")
    assert ds.name == "voc21" and ds.num_classes == 21 and ds.class_names == list(VOC_CLASSES)
    assert ds.class_names[0] == "background" and ds.background_label == 0 and ds.ignore_index == 255
    assert ds.query_label_ids == list(range(1, 21))
    assert ds.queries == list(VOC_CLASSES[1:])
    for s in ds:
        raw = raw_label(voc, s.id)
        assert s.image.dtype == np.uint8 and s.image.shape == (*raw.shape, 3)
        assert s.target.dtype == np.int64 and s.target.shape == raw.shape
        assert np.array_equal(s.target, raw)  # 255 kept, ids untouched
        assert set(np.unique(s.target).tolist()) <= set(range(21)) | {255}
        assert s.queries == ds.queries
        assert s.meta == {
            "image_path": str(voc / "JPEGImages" / f"{s.id}.jpg"),
            "label_path": str(voc / "SegmentationClass" / f"{s.id}.png"),
            "split": "val",
            "variant": "voc21",
        }
    assert (ds[0].target == 255).any()


def test_voc20_reduce_zero_label_on_pixels(voc: Path) -> None:
    ds = VOCSegmentation(voc, variant="voc20", queries=CAR_QUERIES)
    assert ds.name == "voc20" and ds.num_classes == 20 and ds.class_names == list(VOC_CLASSES[1:])
    assert ds.query_label_ids == list(range(20)) and ds.background_label == IGNORE_INDEX
    assert ds.queries == CAR_QUERIES
    for s in ds:
        raw = raw_label(voc, s.id)
        assert (s.target[raw == 0] == 255).all()  # background → ignore
        assert (s.target[raw == 255] == 255).all()  # void stays void
        fg = (raw > 0) & (raw < 255)
        assert np.array_equal(s.target[fg], raw[fg].astype(np.int64) - 1)  # k → k−1
        assert set(np.unique(s.target).tolist()) <= set(range(20)) | {255}
    assert (ds[2].target < 255).any()


def test_queries_must_be_twenty(voc: Path) -> None:
    with pytest.raises(ValueError, match=r"exactly 20 .*got 21"):
        VOCSegmentation(voc, queries=["background", *CAR_QUERIES])


def test_indexing(voc: Path) -> None:
    ds = VOCSegmentation(voc)
    assert isinstance(ds, SemanticDataset) and len(ds) == 3
    assert ds[-1].id == VAL_IDS[-1]
    with pytest.raises(IndexError):
        ds[3]


# --------------------------------------------------------------------------- palette format


def test_palette_is_the_voc_colour_map() -> None:
    assert VOC_PALETTE.shape == (256, 3) and VOC_PALETTE.dtype == np.uint8
    expected = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 4: (0, 0, 128),
                8: (64, 0, 0), 15: (192, 128, 128), 255: (224, 224, 192)}
    for i, rgb in expected.items():
        assert tuple(VOC_PALETTE[i]) == rgb


def test_write_read_palette_png_roundtrip(tmp_path: Path) -> None:
    label = np.arange(256, dtype=np.int64).reshape(16, 16)
    write_palette_png(tmp_path / "sub" / "x.png", label)
    im = Image.open(tmp_path / "sub" / "x.png")
    assert im.mode == "P"
    assert np.array_equal(read_palette_png(tmp_path / "sub" / "x.png"), label)
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        write_palette_png(tmp_path / "y.png", np.full((2, 2), 256))


def test_label_written_with_plain_pil_roundtrips(voc: Path) -> None:
    """A label saved by PIL directly (as in the devkit) reads back as the exact ids: no RGB/L conversion."""
    sid = VAL_IDS[0]
    h, w = raw_label(voc, sid).shape
    label = np.zeros((h, w), dtype=np.uint8)
    label[2:10, 3:12] = 1  # aeroplane: luminance would be 38 after .convert('L')
    label[12:20, 5:25] = 15  # person
    label[10:12, :] = 255
    im = Image.fromarray(label)
    im.putpalette(VOC_PALETTE.tobytes())
    im.save(voc / "SegmentationClass" / f"{sid}.png")
    assert np.array_equal(VOCSegmentation(voc)[0].target, label.astype(np.int64))


# --------------------------------------------------------------------------- registry


def test_build_dataset_from_dict_and_dictconfig(voc: Path) -> None:
    assert {"voc", "voc_fixture"} <= set(DATASETS)
    ds = build_dataset({"name": "voc", "root": str(voc), "split": "val", "variant": "voc20"})
    assert isinstance(ds, VOCSegmentation) and ds.variant == "voc20" and ds.ids == VAL_IDS
    cfg = OmegaConf.create({"dataset": {"name": "voc", "root": str(voc), "queries": CAR_QUERIES}})
    ds = build_dataset(cfg.dataset)
    assert ds.queries == CAR_QUERIES and type(ds.queries) is list


def test_build_dataset_errors(voc: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'vocc'.*registered datasets: \[.*'voc'"):
        build_dataset({"name": "vocc", "root": str(voc)})
    with pytest.raises(ValueError, match=r"does not take config key\(s\) \['varaint'\].*accepts \['root'"):
        build_dataset({"name": "voc", "root": str(voc), "varaint": "voc20"})
    with pytest.raises(ValueError, match=r"'root'"):
        build_dataset({"name": "voc"})
    with pytest.raises(ValueError, match=r"no 'name'"):
        build_dataset({"root": str(voc)})


def test_register_dataset_rejects_a_second_owner() -> None:
    with pytest.raises(ValueError, match="already registered"):

        @register_dataset("voc")
        def other(root: str) -> SemanticDataset:  # pragma: no cover - never called
            raise AssertionError

    assert DATASETS["voc"] is VOCSegmentation


def test_voc_fixture_dataset_generates_once(tmp_path: Path) -> None:
    root = tmp_path / "cache" / "VOCdevkit" / "VOC2012"
    ds = build_dataset({"name": "voc_fixture", "root": str(root), "num_val": 4, "seed": 0})
    assert ds.name == "voc_fixture_voc21" and ds.ids == fixture_ids(4)
    stamp = (root / "JPEGImages" / "2007_000033.jpg").stat().st_mtime_ns
    build_dataset({"name": "voc_fixture", "root": str(root), "num_val": 4, "seed": 0})
    assert (root / "JPEGImages" / "2007_000033.jpg").stat().st_mtime_ns == stamp  # reused, not rewritten
    assert len(build_dataset({"name": "voc_fixture", "root": str(root), "num_val": 2})) == 2  # regenerated
    real = tmp_path / "real"
    (real / "JPEGImages").mkdir(parents=True)
    with pytest.raises(FileExistsError, match=re.escape(str(real)) + ".*not a carbench fixture"):
        build_dataset({"name": "voc_fixture", "root": str(real)})


# --------------------------------------------------------------------------- construction errors


def test_missing_root_names_path_and_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "VOC2012"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing)) + r".*dataset\.root=.*CARBENCH_DATASETS"
                       r".*VOCdevkit/VOC2012/\{JPEGImages,SegmentationClass,ImageSets/Segmentation\}"
                       r".*datasets/README\.md"):
        VOCSegmentation(missing)


def test_root_at_data_root_suggests_voc2012_folder(voc: Path) -> None:
    data_root = voc.parent.parent
    with pytest.raises(FileNotFoundError, match=re.escape(str(data_root / "JPEGImages")) + r".*"
                       + re.escape(f"set dataset.root={voc}")):
        VOCSegmentation(data_root)


def test_missing_split_lists_existing_splits(voc: Path) -> None:
    split_file = voc / "ImageSets" / "Segmentation" / "test.txt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(split_file)) + r".*\['train', 'trainval', 'val'\]"
                       r".*dataset\.split="):
        VOCSegmentation(voc, split="test")


def test_empty_split_is_an_error(voc: Path) -> None:
    (voc / "ImageSets/Segmentation/empty.txt").write_text("\n \n")
    with pytest.raises(ValueError, match=re.escape(str(voc / "ImageSets/Segmentation/empty.txt")) + ".*no ids"):
        VOCSegmentation(voc, split="empty")


def test_missing_files_all_checked_at_construction(voc: Path) -> None:
    (voc / "JPEGImages" / "2007_000042.jpg").unlink()
    (voc / "SegmentationClass" / "2007_000051.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"(?s)2 file\(s\).*" + re.escape(str(voc / "JPEGImages" / "2007_000042.jpg"))
                       + ".*" + re.escape(str(voc / "SegmentationClass" / "2007_000051.png")) + ".*re-extract"):
        VOCSegmentation(voc)


def test_missing_files_listing_is_capped(voc: Path) -> None:
    (voc / "ImageSets/Segmentation/ghost.txt").write_text("".join(f"2099_{i:06d}\n" for i in range(12)))
    with pytest.raises(FileNotFoundError, match=r"(?s)24 file\(s\).*… and 14 more") as info:
        VOCSegmentation(voc, split="ghost")
    assert str(info.value).count("2099_") == 10


def test_bad_variant(voc: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown VOC variant 'voc19'.*dataset\.variant.*\['voc21', 'voc20'\]"):
        VOCSegmentation(voc, variant="voc19")


# --------------------------------------------------------------------------- per-sample read errors


def _replace_label(voc: Path, sid: str, label: np.ndarray, mode: str = "P") -> Path:
    path = voc / "SegmentationClass" / f"{sid}.png"
    im = Image.fromarray(label.astype(np.uint8))
    if mode == "P":
        im.putpalette(VOC_PALETTE.tobytes())
    im.save(path)
    return path


def test_wrong_size_label(voc: Path) -> None:
    path = _replace_label(voc, VAL_IDS[0], np.zeros((31, 40)))
    with pytest.raises(ValueError, match=re.escape(str(path)) + r".*31×40.*30×40"):
        VOCSegmentation(voc)[0]


def test_out_of_range_label_value(voc: Path) -> None:
    label = raw_label(voc, VAL_IDS[0]).copy()
    label[0, 0] = 30
    path = _replace_label(voc, VAL_IDS[0], label)
    with pytest.raises(ValueError, match=re.escape(str(path)) + r".*\[30\] outside \[0, 21\)"):
        VOCSegmentation(voc)[0]


def test_grayscale_label_where_palette_expected(voc: Path) -> None:
    path = _replace_label(voc, VAL_IDS[0], raw_label(voc, VAL_IDS[0]), mode="L")
    assert Image.open(path).mode == "L"
    with pytest.raises(ValueError, match=re.escape(str(path)) + r".*mode 'L', expected 'P'.*write_palette_png"):
        VOCSegmentation(voc)[0]


@pytest.mark.parametrize("load_truncated", [False, True])
def test_truncated_jpeg(voc: Path, monkeypatch: pytest.MonkeyPatch, load_truncated: bool) -> None:
    path = voc / "JPEGImages" / f"{VAL_IDS[2]}.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)  # some training code sets it
    with pytest.raises(ValueError, match=re.escape(str(path)) + r".*truncated or corrupt"):
        VOCSegmentation(voc)[2]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is load_truncated  # restored


def test_garbage_image_file(voc: Path) -> None:
    path = voc / "JPEGImages" / f"{VAL_IDS[1]}.jpg"
    path.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=re.escape(str(path))):
        VOCSegmentation(voc)[1]
