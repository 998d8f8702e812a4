"""CI gate (issue 8): the bundled toy benchmark must not drop below its golden numbers.

Re-runs the fixed val subset recorded in conf/reported/toy.yaml (row `ci_subset`) exactly as
`python -m carbench.toy.golden` measured it, and fails when mIoU falls more than the file's
tolerance below the golden value — a broken Grad-CAM, an inverted threshold or a loop that never
drops a query all show up here, which random-weight tests cannot catch.
"""

from __future__ import annotations

import pytest
import yaml

from carbench.toy.golden import CI_SUBSET, GOLDEN_FILE, ROWS, weights_sha256
from carbench.toy.runs import run_toy


@pytest.fixture(scope="module")
def golden() -> dict:
    assert GOLDEN_FILE.is_file(), f"{GOLDEN_FILE} missing: run `python -m carbench.toy.golden`"
    return yaml.safe_load(GOLDEN_FILE.read_text())


def test_golden_file_matches_the_shipped_weights(golden):
    assert golden["weights_sha256"] == weights_sha256(), (
        "the toy weights changed since the golden numbers were measured: rerun `python -m carbench.toy.golden`"
    )
    assert set(ROWS) <= set(golden["rows"])
    assert golden["rows"]["ci_subset"]["images"] == CI_SUBSET


def test_toy_val_subset_does_not_regress(golden, tmp_path, monkeypatch):
    monkeypatch.setenv("CARBENCH_DATASETS", str(tmp_path / "datasets"))  # generated fresh from the seed
    got = run_toy([f"limit={CI_SUBSET}", "num_workers=0", "device=cpu"])
    ref = golden["rows"]["ci_subset"]
    tol = float(golden["tolerance_mIoU"])
    assert got["images"] == CI_SUBSET
    assert got["mIoU"] >= ref["mIoU"] - tol, f"toy val subset mIoU {got['mIoU']} < golden {ref['mIoU']} - {tol}"
    assert got["query_set_accuracy"] >= ref["query_set_accuracy"] - 0.1, got
