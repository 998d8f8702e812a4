"""RefCOCO / RefCOCO+ / RefCOCOg adapter on a REFER-format fixture: splits, GT decoding, texts, errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from carbench.data import build_dataset
from carbench.data.fixtures_more import write_refer_fixture
from carbench.data.refer_format import clean_expression, decode_ann_mask, select_refs


@pytest.fixture(scope="module")
def refer(tmp_path_factory) -> Path:
    return write_refer_fixture(tmp_path_factory.mktemp("refer"))


def ds(root: Path, name: str = "refcoco", **kw):
    return build_dataset({"name": name, "root": str(root), **kw})


@pytest.mark.parametrize(
    ("name", "split_by", "split", "ids"),
    [
        ("refcoco", "unc", "val", ["ref10_sent100", "ref10_sent101", "ref11_sent102"]),
        ("refcoco", "unc", "testA", ["ref12_sent103", "ref12_sent104"]),
        ("refcoco", "unc", "testB", ["ref13_sent105"]),
        ("refcoco+", "unc", "val", ["ref10_sent100", "ref10_sent101", "ref11_sent102"]),
        ("refcocog", "umd", "val", ["ref10_sent100", "ref10_sent101", "ref11_sent102"]),
        ("refcocog", "umd", "test", ["ref12_sent103", "ref12_sent104", "ref13_sent105"]),
        ("refcocog", "google", "val", ["ref10_sent100", "ref10_sent101", "ref11_sent102", "ref12_sent103",
                                       "ref12_sent104"]),
    ],
)
def test_one_sample_per_expression_per_split(refer, name, split_by, split, ids) -> None:
    d = ds(refer, name, split_by=split_by, split=split)
    assert d.ids == ids and len(d) == len(ids)  # the 'train' ref (ref 14) never appears


def test_ref_mode_groups_expressions(refer) -> None:
    d = ds(refer, mode="ref")
    assert d.ids == ["ref10", "ref11"]
    s = d[0]
    assert s.queries == ["the man on the left", "guy in redblue"] and s.meta["sent_ids"] == [100, 101]


def test_texts_are_cleaned_like_the_official_code(refer) -> None:
    assert clean_expression('Guy "in" Red/Blue') == "guy in redblue"
    assert ds(refer)[1].queries == ["guy in redblue"]
    assert ds(refer, clean=False)[1].queries == ['Guy "in" red/blue']
    assert ds(refer, text="sent", clean=False)[0].queries == ["the man on the left"]


def test_gt_masks_decode_like_refer(refer) -> None:
    d = ds(refer)
    s0, s2 = d[0], d[2]
    assert s0.target.dtype == bool and s0.target.shape == (30, 40) and s0.image.shape == (30, 40, 3)
    # ann 101: polygon rect (2,2)-(12,10) → rows 2..9, cols 2..11
    expected = np.zeros((30, 40), bool)
    expected[2:10, 2:12] = True
    np.testing.assert_array_equal(s0.target, expected)
    # ann 102: squares (0,0)-(10,10) and (5,5)-(15,15); their 5×5 overlap is background under "== 1"
    assert s2.target.sum() == 150 and not s2.target[7, 7] and s2.target[2, 2] and s2.target[12, 12]
    union = ds(refer, mask_rule="union")[2].target
    assert union.sum() == 175 and union[7, 7]
    assert s0.meta["ref_id"] == 10 and s0.meta["ann_id"] == 101 and s0.meta["image_id"] == 9


def test_decode_rle_and_polygon_agree() -> None:
    from pycocotools import mask as mask_utils

    m = np.zeros((6, 7), np.uint8)
    m[1:4, 2:6] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode("ascii")  # as stored in json
    np.testing.assert_array_equal(decode_ann_mask(rle, 6, 7), m.astype(bool))
    np.testing.assert_array_equal(decode_ann_mask([[2, 1, 6, 1, 6, 4, 2, 4]], 6, 7), m.astype(bool))


def test_split_rule_matches_refer_gets_refids() -> None:
    refs = [{"split": s} for s in ("train", "val", "testA", "testB", "testAB", "test")]
    assert [r["split"] for r in select_refs(refs, "testA")] == ["testA", "testAB"]
    assert [r["split"] for r in select_refs(refs, "test")] == ["testA", "testB", "testAB", "test"]
    assert [r["split"] for r in select_refs(refs, "val")] == ["val"]


@pytest.mark.parametrize(("kw", "match"), [
    ({"split": "test"}, r"unc has splits \['train', 'val', 'testA', 'testB'\]"),
    ({"split_by": "umd", "split": "testA"}, "umd has splits"),
    ({"split_by": "abc"}, "unknown split_by"),
    ({"mode": "sentence"}, "dataset.mode"),
    ({"task": "semantic"}, "must be 'referring'"),
])
def test_bad_config_values_fail_at_construction(refer, kw, match) -> None:
    with pytest.raises(ValueError, match=match):
        ds(refer, **kw)


def test_missing_partition_file_names_the_path(refer) -> None:
    with pytest.raises(FileNotFoundError) as err:
        ds(refer, "refcoco+", split_by="google")
    assert str(refer / "refcoco+" / "refs(google).p") in str(err.value) and "datasets/README.md" in str(err.value)


def test_missing_images_are_counted(tmp_path) -> None:
    root = write_refer_fixture(tmp_path)
    (root / "images/mscoco/images/train2014/COCO_train2014_000000000009.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"(?s)1 of 1 file\(s\).*COCO_train2014_000000000009.jpg"):
        ds(root)


def test_a_ref_without_its_annotation_is_an_error(tmp_path) -> None:
    root = write_refer_fixture(tmp_path)
    refs = pickle.loads((root / "refcoco" / "refs(unc).p").read_bytes())
    refs[0]["ann_id"] = 999
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs))
    with pytest.raises(ValueError, match="ref 10 names ann 999"):
        ds(root)
