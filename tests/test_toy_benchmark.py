"""CI gate: the bundled toy benchmark keeps its golden numbers and the paper's shapes.

Re-runs the fixed val subset recorded in conf/reported/toy.yaml (rows `ci_subset`,
`ci_no_recurrence`, `ci_gradcam`) exactly as `python -m carbench.toy.golden` measured them and
applies `gate_failures`: CaR must stay within tolerance of its golden mIoU (either way), beat one
step by 10 and not trail plain Grad-CAM by more than 1 — except for the shape rules the golden file
records the shipped weights as not meeting yet (`known_shape_failures`): those are reported, not
demanded, until a model meets them. A broken Grad-CAM, an inverted threshold, a loop that
never drops a query or a CLIP-ES refinement that no longer refines all show up here, which
random-weight tests cannot catch.
"""

from __future__ import annotations

import pytest
import yaml

from carbench.models.proposals import clip_es
from carbench.toy.golden import (
    CI_SUBSET,
    GOLDEN_FILE,
    ORACLE,
    ROWS,
    classifier_sha256,
    gate_failures,
    measure,
    new_failures,
    weights_sha256,
)

CI_ROWS = ["ci_subset", "ci_no_recurrence", "ci_gradcam"]


@pytest.fixture(scope="module")
def golden() -> dict:
    assert GOLDEN_FILE.is_file(), f"{GOLDEN_FILE} missing: run `python -m carbench.toy.golden`"
    return yaml.safe_load(GOLDEN_FILE.read_text())


@pytest.fixture()
def fresh_data(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CARBENCH_DATASETS", str(tmp_path / "datasets"))  # generated fresh from the seed


def test_golden_file_matches_the_shipped_weights(golden):
    assert (golden["weights_sha256"], golden["classifier_sha256"]) == (weights_sha256(), classifier_sha256()), (
        "the toy weights changed since the golden numbers were measured: rerun `python -m carbench.toy.golden`"
    )
    assert set(ROWS) - {ORACLE} <= set(golden["rows"]) and ORACLE in golden
    assert all(golden["rows"][r]["images"] == CI_SUBSET for r in CI_ROWS)


def test_golden_file_records_exactly_the_shapes_its_rows_break(golden):
    assert sorted(gate_failures(golden["rows"], golden)) == sorted(golden["known_shape_failures"])
    assert new_failures(golden["rows"], golden) == {}


def _rows(car: float, one: float, cam: float, exact: float = 0.7) -> dict:
    return {
        "ci_subset": {"mIoU": car, "query_set_accuracy": exact},
        "ci_no_recurrence": {"mIoU": one, "query_set_accuracy": 0.0},
        "ci_gradcam": {"mIoU": cam, "query_set_accuracy": exact},
    }


@pytest.mark.parametrize(
    ("rows", "rule"),
    [
        (_rows(50.0, 20.0, 45.0), None),
        (_rows(48.5, 20.0, 45.0), None),  # within golden 50 ± tolerance 2
        (_rows(47.0, 20.0, 45.0), "golden"),  # a drop
        (_rows(52.5, 20.0, 45.0), "golden"),  # a rise: the deterministic pipeline changed
        (_rows(50.0, 20.0, 45.0, exact=0.55), "kept_set"),
        (_rows(50.0, 40.5, 45.0), "recurrence"),
        (_rows(50.0, 20.0, 51.5), "clip_es"),
    ],
)
def test_gate_rules_on_hand_made_numbers(rows, rule):
    golden = {"tolerance_mIoU": 2.0, "rows": _rows(50.0, 20.0, 45.0)}
    bad = gate_failures(rows, golden)
    assert list(bad) == ([] if rule is None else [rule]), bad


def test_known_shape_failures_are_tolerated_but_nothing_else():
    golden = {"tolerance_mIoU": 2.0, "rows": _rows(30.0, 15.0, 33.0), "known_shape_failures": ["clip_es"]}
    assert new_failures(_rows(30.0, 15.0, 33.0), golden) == {}
    assert list(new_failures(_rows(30.0, 21.0, 33.0), golden)) == ["recurrence"]  # a newly broken shape
    assert list(gate_failures(_rows(30.0, 15.0, 33.0), {**golden, "known_shape_failures": []})) == ["clip_es"]


def test_toy_val_subset_passes_the_gate(golden, fresh_data):
    rows = measure(CI_ROWS, threads=None)
    assert all(rows[r]["images"] == CI_SUBSET for r in CI_ROWS)
    assert new_failures(rows, golden) == {}, rows


def test_gate_fails_without_the_clip_es_refinement(golden, fresh_data, monkeypatch):
    """Monkeypatch the refinement away (CLIP-ES proposals become plain Grad-CAM): the gate must fail."""
    original = clip_es.ClipESProposer.__init__

    def no_refinement(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.refine = False

    monkeypatch.setattr(clip_es.ClipESProposer, "__init__", no_refinement)
    rows = measure(["ci_subset"], threads=None)
    rows["ci_no_recurrence"] = golden["rows"]["ci_no_recurrence"]
    rows["ci_gradcam"] = golden["rows"]["ci_gradcam"]
    bad = new_failures(rows, golden)
    assert bad, f"the gate passed with the CLIP-ES refinement removed: {rows['ci_subset']}"


@pytest.mark.parametrize("argv,said", [(["--seeds", "1", "-2"], "--seeds must be dataset.seed values ≥ 0"),
                                       (["--threads", "0"], "--threads must be ≥ 1")])
def test_golden_refuses_a_bad_seed_or_thread_count_before_measuring(argv, said, monkeypatch, capsys):
    from carbench.toy import golden as golden_mod

    monkeypatch.setattr(golden_mod, "measure", lambda *a, **k: pytest.fail("measured before checking its arguments"))
    with pytest.raises(SystemExit) as stop:
        golden_mod.main(argv)
    assert stop.value.code == 2 and said in capsys.readouterr().err
