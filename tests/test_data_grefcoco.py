"""gRefCOCO: multi-target and no-target samples, the switches, and a run through the referring loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dataset_helpers import evaluate_fixture

from carbench.data import build_dataset
from carbench.data.fixtures_bench import write_grefcoco_fixture


@pytest.fixture(scope="module")
def gref(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("gref")
    return root, write_grefcoco_fixture(root)


def test_val_samples_with_one_several_and_no_target(gref) -> None:
    root, expected = gref
    ds = build_dataset({"name": "grefcoco", "root": str(root)})
    assert ds.ids == list(expected)  # the testA and train refs are not in val
    for i, sid in enumerate(ds.ids):
        s = ds[i]
        assert s.target.dtype == bool and int(s.target.sum()) == expected[sid]["area"]
        assert s.meta["no_target"] == expected[sid]["no_target"] == ds.is_no_target(i)
    assert ds[0].queries == ["the left person"]  # CaR's cleaning: lower-case
    two = ds[2]
    assert two.meta["num_targets"] == 2 and two.target[5, 5] and two.target[10, 25]  # both people
    assert ds[3].meta["ann_ids"] == [] and not ds[3].target.any()


def test_first_target_rule_reproduces_the_released_loader(gref) -> None:
    root, _ = gref
    ds = build_dataset({"name": "grefcoco", "root": str(root), "multi_target": "first"})
    assert int(ds[2].target.sum()) == 100 and not ds[2].target[10, 25]


def test_switch_values_are_checked(gref) -> None:
    root, _ = gref
    with pytest.raises(ValueError, match="unknown dataset.no_target_rule 'floor'"):
        build_dataset({"name": "grefcoco", "root": str(root), "no_target_rule": "floor"})
    with pytest.raises(ValueError, match=r"no_target_threshold must lie in \[0, 1\]"):
        build_dataset({"name": "grefcoco", "root": str(root), "no_target_threshold": 2})
    with pytest.raises(ValueError, match="does not take config key"):
        build_dataset({"name": "grefcoco", "root": str(root), "no_taget_rule": "never"})


def test_inconsistent_no_target_flag_is_an_error(tmp_path) -> None:
    import json

    write_grefcoco_fixture(tmp_path)
    f = tmp_path / "grefcoco" / "grefs(unc).json"
    refs = json.loads(f.read_text())
    refs[2]["no_target"] = False  # ann_id is still [-1]
    f.write_text(json.dumps(refs))
    with pytest.raises(ValueError, match=r"ref 3: no_target=False but ann_id=\[-1\]"):
        build_dataset({"name": "grefcoco", "root": str(tmp_path)})


def test_missing_annotation_file_names_it(tmp_path) -> None:
    (tmp_path / "grefcoco").mkdir()
    with pytest.raises(FileNotFoundError, match=r"grefs\(unc\).json, which is missing.*gRefCOCO \(GRES\)"):
        build_dataset({"name": "grefcoco", "root": str(tmp_path)})


def test_runs_through_the_referring_loop(tmp_path, gref) -> None:
    root, _ = gref
    res = evaluate_fixture("grefcoco", root, tmp_path / "run", "postprocess=none", limit=4)
    assert res["num_images"]["evaluated"] == 4 and res["dataset"]["name"] == "grefcoco"
    assert res["config"]["model"]["clipes_threshold"] == 0.3 and res["config"]["dataset"]["no_target_rule"] == "never"
    assert np.isfinite(res["metrics"]["mIoU"])
