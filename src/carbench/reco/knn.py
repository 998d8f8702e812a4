"""Exact inner-product top-k over a memory-mapped fp16 embedding matrix, one block at a time.

An ImageNet-sized index (1.28 M × 768 fp16 ≈ 2 GB) must not be loaded per query: the matrix stays
a `np.memmap` and is read in row blocks of `block` rows (converted to fp32 only block by block),
each block's top-k merged into a running top-k. Peak extra memory is one fp32 block plus the
Q × block score matrix, whatever the index size. With `backend="faiss"` (or "auto" when faiss is
installed) each block is searched by `faiss.knn` instead of a torch matmul; the result is the same
exact search.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

BACKENDS = ("auto", "torch", "faiss")


def _faiss():
    try:
        import faiss  # type: ignore[import-not-found]
    except ImportError:
        return None
    return faiss


def _block_scores_torch(queries: torch.Tensor, block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():  # a read-only memmap: torch warns about writes, and we never write
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        rows = torch.from_numpy(np.ascontiguousarray(block))  # a view of the memmap pages, no copy
    scores = queries @ rows.float().T  # [Q, B]; fp16 → fp32 in torch (about 1.7× numpy's astype)
    s, i = scores.topk(min(k, scores.shape[1]), dim=1)
    return s.numpy(), i.numpy()


def _block_scores_faiss(faiss, queries: np.ndarray, block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    base = np.ascontiguousarray(block, dtype=np.float32)
    d, i = faiss.knn(queries, base, min(k, len(base)), metric=faiss.METRIC_INNER_PRODUCT)
    return d, i


def topk(
    embeddings: np.ndarray, queries: np.ndarray | torch.Tensor, k: int, block: int = 65536, backend: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows of `embeddings` [N, D] by inner product with each query [Q, D] → (scores, indices) [Q, k'].

    k' = min(k, N). Rows are sorted by descending score; ties keep the lower index first.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown knn backend {backend!r}; valid: {', '.join(BACKENDS)}")
    faiss = _faiss() if backend in ("auto", "faiss") else None
    if backend == "faiss" and faiss is None:
        raise ImportError("knn backend 'faiss' was asked for but faiss is not installed; pip install faiss-cpu "
                          "(or faiss-gpu), or use backend=torch")
    if embeddings.ndim != 2:
        raise ValueError(f"index embeddings must be N×D, got shape {embeddings.shape}")
    q = queries.detach().cpu().float().numpy() if isinstance(queries, torch.Tensor) else np.asarray(queries, np.float32)
    q = np.ascontiguousarray(q.reshape(-1, q.shape[-1]))
    n, d = embeddings.shape
    if q.shape[1] != d:
        raise ValueError(f"query dimension {q.shape[1]} does not match the index dimension {d}: the index was "
                         "built with another CLIP; rebuild it or use the CLIP it was built with")
    if k < 1 or block < 1:
        raise ValueError(f"k and block must be ≥ 1, got k={k} block={block}")
    k = min(k, n)
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    qt = torch.from_numpy(q)
    for start in range(0, n, block):
        chunk = embeddings[start:start + block]
        if faiss is not None:
            s, i = _block_scores_faiss(faiss, q, chunk, k)
        else:
            s, i = _block_scores_torch(qt, chunk, k)
        cand_s = np.concatenate([best_s, s.astype(np.float32)], axis=1)
        cand_i = np.concatenate([best_i, i.astype(np.int64) + start], axis=1)
        # stable sort on (-score, index): deterministic order for equal scores
        order = np.lexsort((cand_i, -cand_s), axis=1)[:, :k] if cand_s.shape[1] else None
        if order is not None:
            best_s = np.take_along_axis(cand_s, order, 1)
            best_i = np.take_along_axis(cand_i, order, 1)
    return best_s, best_i
