"""QuerySetDiagnostics on hand-made kept sets: every figure checked against a count done by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from carbench.metrics.query_set import QuerySetDiagnostics


def _three_images() -> QuerySetDiagnostics:
    m = QuerySetDiagnostics(max_steps=4)
    # image A: GT {1, 2}; step 1 keeps {1, 2, 5}, step 2 keeps {1, 2} (exact), stops.
    m.update([{1, 2, 5}, {1, 2}], {1, 2})
    # image B: GT {3}; step 1 keeps {3, 4}, step 2 {4} (drops the present one), step 3 {4}.
    m.update([{3, 4}, {4}, {4}], {3})
    # image C: GT {0, 6}; one step keeps {6}.
    m.update([{6}], {0, 6})
    return m


def test_per_step_rows_counted_by_hand() -> None:
    out = _three_images().compute()
    s1, s2, s3 = out["per_step"]
    # step 1: A tk2 wk1 wd0, B tk1 wk1 wd0, C tk1 wk0 wd1 → tk4 wk2 wd1, exact 0/3
    assert (s1["step"], s1["images"]) == (1, 3)
    assert s1["precision"] == pytest.approx(4 / 6)
    assert s1["recall"] == pytest.approx(4 / 5)
    assert (s1["wrongly_kept"], s1["wrongly_dropped"], s1["exact"]) == (2, 1, 0.0)
    # step 2: A exact (tk2), B {4} vs {3}: wk1 wd1, C carried {6}: tk1 wd1 → tk3 wk1 wd2, exact 1/3
    assert s2["precision"] == pytest.approx(3 / 4)
    assert s2["recall"] == pytest.approx(3 / 5)
    assert (s2["wrongly_kept"], s2["wrongly_dropped"]) == (1, 2)
    assert s2["exact"] == pytest.approx(1 / 3)
    # step 3 equals step 2 (A and C carried forward, B unchanged)
    assert {k: v for k, v in s3.items() if k != "step"} == {k: v for k, v in s2.items() if k != "step"}
    assert len(out["per_step"]) == 3  # no row for step 4: no image ran that far


def test_final_row_defaults_to_last_step_and_honours_explicit_final() -> None:
    out = _three_images().compute()["final"]
    assert out["step"] is None and out["images"] == 3
    assert (out["precision"], out["recall"], out["exact"]) == (pytest.approx(3 / 4), pytest.approx(3 / 5), pytest.approx(1 / 3))
    m = QuerySetDiagnostics(max_steps=2)
    # a run cut by max_steps=1 outputs the step's input set (all queries), not what it kept
    m.update([{1}], {1}, final={1, 2, 3})
    f = m.compute()
    assert f["per_step"][0]["exact"] == 1.0
    assert f["final"]["exact"] == 0.0 and f["final"]["wrongly_kept"] == 2 and f["final"]["precision"] == pytest.approx(1 / 3)


def test_oracle_sets_score_perfectly_and_numpy_ids_are_accepted() -> None:
    m = QuerySetDiagnostics()
    m.update([np.array([2, 7])], {np.int64(2), np.int64(7)})
    f = m.compute()["final"]
    assert (f["precision"], f["recall"], f["exact"], f["wrongly_kept"], f["wrongly_dropped"]) == (1.0, 1.0, 1.0, 0, 0)


def test_undefined_ratios_are_nan_not_zero() -> None:
    m = QuerySetDiagnostics()
    assert math.isnan(m.compute()["final"]["exact"]) and m.compute()["per_step"] == []
    m.update([set()], set())  # nothing kept, nothing present
    f = m.compute()["final"]
    assert math.isnan(f["precision"]) and math.isnan(f["recall"]) and f["exact"] == 1.0


def test_merge_state_equals_one_instance_over_all_images() -> None:
    whole = _three_images()
    a, b = QuerySetDiagnostics(max_steps=4), QuerySetDiagnostics(max_steps=4)
    a.update([{1, 2, 5}, {1, 2}], {1, 2})
    b.update([{3, 4}, {4}, {4}], {3})
    b.update([{6}], {0, 6})
    a.merge_state(b)
    assert a.compute() == whole.compute()


def test_reset_clears_every_count() -> None:
    m = _three_images()
    m.reset()
    m.update([{1}], {1})
    assert m.compute()["final"]["images"] == 1 and len(m.compute()["per_step"]) == 1


@pytest.mark.parametrize(
    ("kept", "present", "err", "words"),
    [
        ([], {1}, ValueError, "at least one step"),
        ([{1}] * 5, {1}, ValueError, "max_steps"),
        ("12", {1}, TypeError, "kept_per_step"),
        ([{1.5}], {1}, TypeError, "kept_per_step[0]"),
        ([{1}], {-1}, ValueError, "present"),
        ([{True}], {1}, TypeError, "kept_per_step[0]"),
        ([{1}], 3, TypeError, "present"),
    ],
)
def test_bad_inputs_name_the_argument(kept, present, err, words) -> None:
    m = QuerySetDiagnostics(max_steps=4)
    with pytest.raises(err, match=words.replace("[", r"\[").replace("]", r"\]")):
        m.update(kept, present)
    assert m.compute()["per_step"] == []  # a refused image leaves no trace


@pytest.mark.parametrize("bad", [0, -2, 1.0, True])
def test_bad_max_steps(bad) -> None:
    with pytest.raises(ValueError, match="max_steps"):
        QuerySetDiagnostics(max_steps=bad)
