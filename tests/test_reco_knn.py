"""ReCo's blocked top-k over a memory-mapped fp16 index equals brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from carbench.reco.knn import topk


def _memmap(tmp_path, data: np.ndarray) -> np.ndarray:
    mm = np.memmap(tmp_path / "emb.f16", dtype=np.float16, mode="w+", shape=data.shape)
    mm[:] = data
    mm.flush()
    return np.memmap(tmp_path / "emb.f16", dtype=np.float16, mode="r", shape=data.shape)


@pytest.mark.parametrize("block", [1, 7, 64, 1000])
@pytest.mark.parametrize("k", [1, 5, 13])
def test_blocked_topk_equals_brute_force(tmp_path, block, k):
    rng = np.random.default_rng(0)
    data = rng.standard_normal((300, 24)).astype(np.float16)
    emb = _memmap(tmp_path, data)
    q = rng.standard_normal((3, 24)).astype(np.float32)
    scores, idx = topk(emb, q, k, block=block, backend="torch")
    full = q @ data.astype(np.float32).T
    want = np.argsort(-full, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_allclose(scores, np.take_along_axis(full, want, 1), rtol=1e-5, atol=1e-5)


def test_k_larger_than_index_returns_every_row_sorted(tmp_path):
    data = np.eye(4, dtype=np.float16) * np.array([[1], [3], [2], [4]], dtype=np.float16)
    emb = _memmap(tmp_path, data)
    scores, idx = topk(emb, torch.ones(1, 4), k=10, block=3, backend="torch")
    assert idx.tolist() == [[3, 1, 2, 0]]
    assert scores.tolist() == [[4.0, 3.0, 2.0, 1.0]]


def test_ties_keep_the_lower_index_first(tmp_path):
    emb = _memmap(tmp_path, np.ones((10, 2), np.float16))
    _, idx = topk(emb, np.ones((1, 2), np.float32), k=4, block=3, backend="torch")
    assert idx.tolist() == [[0, 1, 2, 3]]


def test_dimension_mismatch_names_the_fix(tmp_path):
    emb = _memmap(tmp_path, np.ones((4, 8), np.float16))
    with pytest.raises(ValueError, match="index dimension 8.*another CLIP"):
        topk(emb, np.ones((1, 6), np.float32), k=2)


def test_unknown_backend_is_refused(tmp_path):
    emb = _memmap(tmp_path, np.ones((4, 8), np.float16))
    with pytest.raises(ValueError, match="unknown knn backend 'annoy'"):
        topk(emb, np.ones((1, 8), np.float32), k=2, backend="annoy")
