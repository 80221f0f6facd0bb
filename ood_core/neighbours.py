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
    """The rows of x divided by their L2 norms, float32 (n, D). Computed by cache-sized blocks of rows in the chunk
    workers: each row's norm and quotient are the same bits as from one call on the whole array, without its two
    full-size temporaries (at 50,000 x 2048: 0.30 against 0.47 s on one thread)."""
    from . import linalg

    x = np.asarray(x, dtype=np.float32)
    out = np.empty_like(x)
    step = linalg.block_rows(x.shape[1])

    def chunk(sl):
        for i in range(sl.start, sl.stop, step):
            rows = x[i:min(sl.stop, i + step)]
            np.divide(rows, np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12), out=out[i:i + len(rows)])

    for _ in linalg.map_chunks(chunk, linalg.row_chunks(len(x), x.shape[1])):
        pass
    return out


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


class Search:
    """One exact search that a blocked pass of inner products q.b serves (see `shared_search`).

    `m` candidates per query are picked from each float32 block (`pick`); `finish` recomputes what the search
    returns from those candidates in float64. Several searches of the same queries against the same bank share
    the blocks: the matrix product, the dominant cost, is then paid once for all of them.
    """

    m: int = 1

    def prepare(self, n_bank: int) -> None:
        """Fix the candidate count for a bank of n_bank rows (called once before a pass)."""

    def pick(self, block: np.ndarray, overwrite: bool = False):
        """What `finish` needs of this search's candidates in `block`: their column indices (b, m), with their
        float32 values where it needs them; `overwrite`: the block is not needed afterwards and may be scratch."""
        raise NotImplementedError

    def finish(self, queries: np.ndarray, picked) -> np.ndarray:
        """The search's result for `queries` (the block's rows) from what `pick` gave."""
        raise NotImplementedError


class KthDistance(Search):
    """The Euclidean distance to the k-th nearest bank row, exact in float64.

    The block's values rank the bank rows: q.b for banks whose rows have (near) equal norms (e.g. L2-normalised),
    or q.b - |b|^2/2 from the augmented rows of kth_neighbour_distance (`augmented`). Only the candidates whose
    float32 value lies within twice its rounding bound of the k-th value get their distances recomputed in float64:
    every candidate above that window is surely nearer than the k-th neighbour and every one below surely farther,
    so the k-th of the recomputed ones, offset by the count above, is the exact k-th neighbour.
    """

    def __init__(self, k: int, bank: np.ndarray, augmented: bool = False):
        self.k, self.bank, self.augmented = int(k), bank, augmented
        sq = np.einsum("nd,nd->n", bank, bank, dtype=np.float64)  # one pass over the bank, whatever is asked after
        self.b_max = float(np.sqrt(sq.max())) if len(sq) else 0.0
        # rows of (near) equal norms (e.g. L2-normalised): q.b alone ranks them, no augmented rows needed
        self.equal_norms = bool(len(sq)) and float(np.ptp(sq)) <= 1e-6 * float(sq.max())
        # float32 products of length D (+1): |error| <= gamma (sum |a_i b_i|), gamma = (D + 1) u / (1 - (D + 1) u)
        d = bank.shape[1] + 2
        self.gamma = d * 2.0 ** -24 / (1 - d * 2.0 ** -24)
        # ranking by q.b alone ignores the norms' spread, |b|^2 / 2 at most
        self.spread = 0.0 if augmented or not len(sq) else float(np.ptp(sq)) / 2

    def prepare(self, n_bank: int) -> None:
        self.k = int(max(1, min(self.k, n_bank)))
        self.m = min(self.k + EXTRA_CANDIDATES, n_bank)

    def pick(self, block: np.ndarray, overwrite: bool = False) -> tuple[np.ndarray, np.ndarray]:
        cols, vals = _top_columns(block, self.m)
        order = np.argsort(-vals, axis=1)
        return np.take_along_axis(cols, order, axis=1), np.take_along_axis(vals, order, axis=1)

    def finish(self, queries: np.ndarray, picked) -> np.ndarray:
        if len(queries) == 0:
            return np.zeros(0)
        idx, vals = picked
        q_norm = np.sqrt(np.einsum("nd,nd->n", queries, queries, dtype=np.float64))
        bound = self.gamma * (q_norm * self.b_max + (self.b_max ** 2 if self.augmented else 0.0)) + self.spread
        tol = 2.0 * (2.0 * bound)[:, None]  # two values' errors, and a factor 2 to spare
        vk = vals[:, self.k - 1:self.k].astype(np.float64)
        lo = int((vals > vk + tol).sum(axis=1).min())  # ranks before lo: surely nearer, for every row
        hi = int((vals >= vk - tol).sum(axis=1).max())  # ranks from hi on: surely farther
        d2 = _exact_sq_distances(queries, self.bank, idx[:, lo:max(hi, self.k)])
        return np.sqrt(np.partition(d2, self.k - 1 - lo, axis=1)[:, self.k - 1 - lo])


class TopInnerProducts(Search):
    """The k largest inner products q.b_i with the rows of `bank`, (n, k) unsorted, exact in float64.

    `scale` (one weight per bank row) lets the search ride on a pass over another bank: when
    bank_i = scale_i * base_i, the candidates are picked from the blocks of q.base scaled column by column, and
    only their products with `bank` are recomputed (NNGuide's confidence-weighted bank over KNN's normalised one).
    """

    def __init__(self, k: int, bank: np.ndarray, scale: np.ndarray | None = None):
        self.k, self.bank = int(k), bank
        self.scale = None if scale is None else np.asarray(scale, dtype=np.float32)

    def prepare(self, n_bank: int) -> None:
        self.k = int(max(1, min(self.k, n_bank)))
        self.m = min(self.k + EXTRA_CANDIDATES, n_bank)

    def pick(self, block: np.ndarray, overwrite: bool = False) -> np.ndarray:
        if self.scale is not None:
            block = np.multiply(block, self.scale, out=block if overwrite else None)
        return _top_columns(block, self.m)[0]

    def finish(self, queries: np.ndarray, idx: np.ndarray) -> np.ndarray:
        ip = _exact_inner_products(queries, self.bank, idx)
        return np.partition(ip, self.m - self.k, axis=1)[:, self.m - self.k:]


def _kth_from_ranked(queries: np.ndarray, bank: np.ndarray, order_idx: np.ndarray, k: int) -> np.ndarray:
    """The float64 distance to the k-th nearest among candidates `order_idx` (nearest first by float32): only the
    ranks within EXTRA_CANDIDATES of the k-th are recomputed."""
    m = order_idx.shape[1]
    lo = max(0, k - 1 - EXTRA_CANDIDATES)
    d2 = _exact_sq_distances(queries, bank, order_idx[:, lo:m])
    return np.sqrt(np.partition(d2, k - 1 - lo, axis=1)[:, k - 1 - lo])


def shared_search(queries: np.ndarray, bank: np.ndarray, searches: list[Search], chunk: int = 2048) -> list:
    """Every search's result for `queries` from ONE blocked pass of float32 products queries . bank^T.

    Each block (a chunk of queries against the whole bank, never the full matrix) is offered to every search in
    turn, so k-NN distances, confidence-weighted top-k products, ... of the same queries against the same bank
    cost one matrix product. A search's result is the same as from a pass of its own.
    """
    queries, bank, _ = _check_search(queries, bank, 1)
    for s in searches:
        s.prepare(len(bank))
    if len(queries) == 0:
        return [s.finish(queries, np.zeros((0, s.m), dtype=np.int64)) for s in searches]
    parts: list[list] = [[] for _ in searches]

    def finish(block: np.ndarray, i: int) -> None:
        q = queries[i:i + len(block)]
        for j, s in enumerate(searches):
            parts[j].append((i, s.finish(q, s.pick(block, overwrite=j == len(searches) - 1))))

    _for_each_block(queries, bank, chunk, finish)
    return [np.concatenate([r for _, r in sorted(p, key=lambda t: t[0])]) for p in parts]


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
    faiss = _faiss_or_none(backend)
    if faiss is not None:
        index = faiss.IndexFlatL2(bank.shape[1])
        index.add(bank)
        return _kth_from_ranked(queries, bank, index.search(queries, min(k + EXTRA_CANDIDATES, len(bank)))[1], k)
    search = KthDistance(k, bank)
    if search.equal_norms:
        return shared_search(queries, bank, [search], chunk)[0]
    d = bank.shape[1]
    lhs = np.empty((len(queries), d + 1), dtype=np.float32)
    lhs[:, :d], lhs[:, d] = queries, -0.5
    rhs = np.empty((len(bank), d + 1), dtype=np.float32)
    rhs[:, :d], rhs[:, d] = bank, (bank * bank).sum(axis=1)
    search.augmented, search.spread = True, 0.0  # ranked by q.b - |b|^2 / 2 now: the norms' spread is in the value
    search.prepare(len(bank))
    out = np.empty(len(queries))

    def finish(block: np.ndarray, i: int) -> None:
        out[i:i + len(block)] = search.finish(queries[i:i + len(block)], search.pick(block))

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
    faiss = _faiss_or_none(backend)
    if faiss is not None:
        search = TopInnerProducts(k, bank)
        search.prepare(len(bank))
        index = faiss.IndexFlatIP(bank.shape[1])
        index.add(bank)
        return search.finish(queries, index.search(queries, search.m)[1])
    return shared_search(queries, bank, [TopInnerProducts(k, bank)], chunk)[0]
