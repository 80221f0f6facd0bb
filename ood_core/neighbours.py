"""Exact nearest-neighbour search on feature banks: the k-th neighbour's distance and the top-k inner products.

Shared by the distance detectors (KNN, NNGuide) and anything else that needs exact neighbours: blocked matrix
products with a bounded memory budget, exact re-ranking of candidates, and faiss as an optional backend.
"""
from __future__ import annotations

import contextlib
import queue
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def faiss_available() -> bool:
    """Whether faiss (optional, backend="faiss") can be imported; numpy is the default and the fallback."""
    try:
        import faiss  # noqa: F401
    except Exception:
        return False
    return True


# bytes of the (query chunk x bank) float32 blocks the numpy path holds at once (one per worker thread)
BLOCK_BYTES = 256 * 2**20


def _query_chunk(n_bank: int, chunk: int, budget: int = BLOCK_BYTES) -> int:
    """Rows per query chunk: at most `chunk`, and small enough that chunk x n_bank floats fit `budget` bytes."""
    return int(max(1, min(chunk, budget // max(1, 4 * n_bank))))


def _faiss_or_none(backend: str):
    """The faiss module for backend="faiss" (imported lazily: measured slower than numpy here), None for "numpy"."""
    if backend not in ("numpy", "faiss"):
        raise ValueError(f"backend must be 'numpy' or 'faiss', got {backend!r}")
    if backend == "numpy":
        return None
    try:
        import faiss
    except Exception as e:
        raise ImportError(f"backend='faiss' needs faiss ({e}); use backend='numpy'") from None
    return faiss


# the m largest entries of a score row are found through strided tiles of TILE columns (see _top_columns)
TILE = 16
# float32 scores only pick candidates; the final values are recomputed in float64 for the candidates ranked
# within EXTRA_CANDIDATES of the k-th, so float32 rounding (|q|^2 + |b|^2 - 2 q.b cancels for near neighbours)
# changes the result only if it moved a neighbour by more than EXTRA_CANDIDATES ranks
EXTRA_CANDIDATES = 8


def _top_columns(block: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of the m largest entries of each row of `block`, unsorted, (b, m) each; exact.

    Tile j holds the columns j, j + n_tiles, j + 2 n_tiles, ...: a column-wise maximum over the TILE strided
    slices (one fast pass) gives every tile's maximum, and the m tiles with the largest maxima hold the m
    largest entries. Only those m * TILE entries are then searched: far cheaper than argpartition of the row.
    """
    b, n = block.shape
    n_tiles = n // TILE
    if n_tiles < 4 * m:
        cols = np.argpartition(block, n - m, axis=1)[:, n - m:]
        return cols, np.take_along_axis(block, cols, axis=1)
    tile_max = block[:, :TILE * n_tiles].reshape(b, TILE, n_tiles).max(axis=1)
    tiles = np.argpartition(tile_max, n_tiles - m, axis=1)[:, n_tiles - m:]
    cols = (tiles[:, :, None] + n_tiles * np.arange(TILE)).reshape(b, m * TILE)
    if n > TILE * n_tiles:  # the few columns past the last whole tile are always candidates
        rest = np.broadcast_to(np.arange(TILE * n_tiles, n), (b, n - TILE * n_tiles))
        cols = np.concatenate([cols, rest], axis=1)
    vals = np.take_along_axis(block, cols, axis=1)
    best = np.argpartition(vals, vals.shape[1] - m, axis=1)[:, vals.shape[1] - m:]
    return np.take_along_axis(cols, best, axis=1), np.take_along_axis(vals, best, axis=1)


def _exact_sq_distances(queries: np.ndarray, bank: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """|q_i - b_idx[i, j]|^2 in float64, (n, j), gathered in pieces of at most 16 MiB."""
    out = np.empty(idx.shape)
    step = max(1, (16 * 2**20) // (8 * max(1, idx.shape[1]) * bank.shape[1]))
    for i in range(0, len(queries), step):
        diff = bank[idx[i:i + step]].astype(np.float64) - queries[i:i + step, None, :].astype(np.float64)
        out[i:i + step] = np.einsum("nmd,nmd->nm", diff, diff)
    return out


def _exact_inner_products(queries: np.ndarray, bank: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """q_i . b_idx[i, j] in float64, (n, j), gathered in pieces of at most 16 MiB."""
    out = np.empty(idx.shape)
    step = max(1, (16 * 2**20) // (8 * max(1, idx.shape[1]) * bank.shape[1]))
    for i in range(0, len(queries), step):
        out[i:i + step] = np.einsum("nmd,nd->nm", bank[idx[i:i + step]].astype(np.float64),
                                    queries[i:i + step].astype(np.float64))
    return out


def _check_search(queries, bank, k):
    bank = np.ascontiguousarray(bank, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if bank.ndim != 2 or len(bank) == 0:
        raise ValueError("the neighbour bank is empty")
    if queries.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise ValueError(f"queries of shape {queries.shape} do not match a bank of dimension {bank.shape[1]}")
    return queries, bank, int(max(1, min(k, len(bank))))


def _blas_one_thread():
    """A context in which BLAS runs single-threaded (threadpoolctl, a scikit-learn dependency), or a no-op."""
    try:
        from threadpoolctl import threadpool_limits
    except Exception:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _for_each_block(lhs: np.ndarray, rhs: np.ndarray, chunk: int, finish) -> None:
    """finish(block, i) for every block = lhs[i:i+rows] @ rhs.T, computed without a full n x bank matrix.

    One worker thread per core takes whole query chunks: a single-threaded GEMM into its own reused buffer,
    then the selection (numpy releases the GIL in both). No BLAS barrier or spinning BLAS threads compete
    with the selection; the blocks alive at once total at most BLOCK_BYTES.
    """
    from .linalg import workers as n_workers

    workers = n_workers()  # one per core this request may use
    # several chunks per worker: a worker that finishes early (or was not scheduled) takes the next one
    step = min(_query_chunk(len(rhs), chunk, BLOCK_BYTES // workers), max(256, -(-len(lhs) // (4 * workers))))
    starts = list(range(0, len(lhs), step))
    workers = min(workers, len(starts))
    free: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(workers):
        free.put(np.empty((min(step, len(lhs)), len(rhs)), dtype=np.float32))

    def run(i: int) -> None:
        buffer = free.get()
        try:
            rows = min(step, len(lhs) - i)
            finish(np.matmul(lhs[i:i + rows], rhs.T, out=buffer[:rows]), i)
        finally:
            free.put(buffer)

    if workers == 1:
        for i in starts:
            run(i)
        return
    with _blas_one_thread(), ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(run, starts))


def kth_neighbour_distance(queries: np.ndarray, bank: np.ndarray, k: int, chunk: int = 2048,
                           backend: str = "numpy") -> np.ndarray:
    """Euclidean distance from each query to its k-th nearest row of `bank`: exact (float64 at the k-th rank).

    Candidates come from float32 scores, by numpy (default): one GEMM per query chunk on augmented rows,
    [q, -1/2].[b, |b|^2] = q.b - |b|^2/2 (larger = nearer, no element-wise pass over the block; plain q.b
    when every bank row has the same norm), or by backend="faiss": an exact IndexFlatL2 (about three times
    numpy's CPU time with the faiss-cpu wheel here). The candidates ranked within EXTRA_CANDIDATES of the
    k-th get their distances recomputed in float64.
    """
    queries, bank, k = _check_search(queries, bank, k)
    if len(queries) == 0:
        return np.zeros(0)
    m = min(k + EXTRA_CANDIDATES, len(bank))
    lo = max(0, k - 1 - EXTRA_CANDIDATES)  # the float64 window: float32 ranks lo .. m-1
    out = np.empty(len(queries))

    def finish_ranked(order_idx: np.ndarray, i: int) -> None:  # order_idx: candidates, nearest first
        d2 = _exact_sq_distances(queries[i:i + len(order_idx)], bank, order_idx[:, lo:m])
        out[i:i + len(order_idx)] = np.sqrt(np.partition(d2, k - 1 - lo, axis=1)[:, k - 1 - lo])

    faiss = _faiss_or_none(backend)
    if faiss is not None:
        index = faiss.IndexFlatL2(bank.shape[1])
        index.add(bank)
        finish_ranked(index.search(queries, m)[1], 0)
        return out
    bank_sq = (bank * bank).sum(axis=1)
    if np.ptp(bank_sq) <= 1e-6 * bank_sq.max():
        lhs, rhs = queries, bank  # rows of (near) equal norm, e.g. L2-normalised: q.b alone ranks them
    else:
        d = bank.shape[1]
        lhs = np.empty((len(queries), d + 1), dtype=np.float32)
        lhs[:, :d], lhs[:, d] = queries, -0.5
        rhs = np.empty((len(bank), d + 1), dtype=np.float32)
        rhs[:, :d], rhs[:, d] = bank, bank_sq

    def finish(block: np.ndarray, i: int) -> None:
        cols, vals = _top_columns(block, m)
        finish_ranked(np.take_along_axis(cols, np.argsort(-vals, axis=1), axis=1), i)

    _for_each_block(lhs, rhs, chunk, finish)
    return out


def top_k_inner_products(queries: np.ndarray, bank: np.ndarray, k: int, chunk: int = 2048,
                         backend: str = "numpy") -> np.ndarray:
    """The k largest inner products <q, b_i> of each query with the rows of `bank`, (n, k) unsorted; exact.

    The k + EXTRA_CANDIDATES largest by float32 (numpy blocks as in kth_neighbour_distance, or a faiss
    IndexFlatIP) are recomputed in float64 and the k largest kept.
    """
    queries, bank, k = _check_search(queries, bank, k)
    if len(queries) == 0:
        return np.zeros((0, k))
    m = min(k + EXTRA_CANDIDATES, len(bank))
    out = np.empty((len(queries), k))

    def finish_idx(idx: np.ndarray, i: int) -> None:
        ip = _exact_inner_products(queries[i:i + len(idx)], bank, idx)
        out[i:i + len(idx)] = np.partition(ip, m - k, axis=1)[:, m - k:]

    faiss = _faiss_or_none(backend)
    if faiss is not None:
        index = faiss.IndexFlatIP(bank.shape[1])
        index.add(bank)
        finish_idx(index.search(queries, m)[1], 0)
        return out
    _for_each_block(queries, bank, chunk, lambda block, i: finish_idx(_top_columns(block, m)[0], i))
    return out
