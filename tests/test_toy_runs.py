"""carbench.toy.runs: the query-set accuracy the toy benchmark reports (kept queries == classes in the GT)."""

from __future__ import annotations

import numpy as np
import pytest

from carbench.data import build_dataset
from carbench.toy.runs import query_set_accuracy, toy_config


def test_query_set_accuracy_counts_exact_matches_only(tmp_path, monkeypatch):
    monkeypatch.setenv("CARBENCH_DATASETS", str(tmp_path))
    cfg = toy_config(["dataset.split=tune", "dataset.n=3"])
    ds = build_dataset(cfg.dataset)
    names = dict(zip(ds.query_label_ids, ds.queries, strict=True))
    present = [sorted(int(v) for v in np.unique(ds[i].target) if v not in (0, 255)) for i in range(3)]
    per_image = [
        {"id": ds.ids[0], "kept": [names[c] for c in present[0]]},  # exact
        {"id": ds.ids[1], "kept": [names[c] for c in present[1]][:-1]},  # one class missing
        {"id": ds.ids[2], "kept": [names[c] for c in present[2]] + [q for q in ds.queries  # one extra
                                                                   if q not in {names[c] for c in present[2]}][:1]},
    ]
    assert all(present)  # every toy scene has at least one object
    assert query_set_accuracy({"per_image": per_image}, cfg) == pytest.approx(1 / 3)
    assert query_set_accuracy({"per_image": per_image[:1]}, cfg) == 1.0


def test_query_set_accuracy_needs_evaluated_images(tmp_path, monkeypatch):
    monkeypatch.setenv("CARBENCH_DATASETS", str(tmp_path))
    with pytest.raises(ValueError, match="no evaluated images"):
        query_set_accuracy({"per_image": []}, toy_config(["dataset.split=tune", "dataset.n=2"]))
