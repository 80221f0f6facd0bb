"""Dense linear algebra shared by the Gaussian and subspace detectors, in bounded memory.

Features arrive as float32 (n, D) arrays; the detectors need, in float64: class means, scatter matrices
sum_i (h_i - m_i)(h_i - m_i)' and, at scoring time, Cholesky-whitened coordinates z = L^-1 (h - c) of every
query. Everything here walks the rows in chunks of at most CHUNK_BYTES of float64, so a 50,000 x 2048 train
set never gets a float64 copy (800 MB) or a centred copy, and uses the symmetric or triangular BLAS routine
for each product: `a.T @ a` of a chunk runs as syrk (n D^2 flops, not 2 n D^2) and the whitening as a
triangular product with L^-1, trmm (n D^2), formed once at fit (a triangular solve per chunk, trsm, costs the
same flops but ran 1.4-2x slower in the chunk workers). The triangular routines are called through scipy's C
function pointers, which release the GIL, so the chunk workers run them at once (_native_routine). Why float64 and
not float32: these matrices are inverted or eigendecomposed, which multiplies a relative error by the condition
number (1e3..1e9 for penultimate features); float32 whitening alone was measured at 3e-7..6e-6 relative error on
Mahalanobis distances of 512-d features (condition numbers 2e3..2e5), above the 1e-6 the detectors promise.
"""
from __future__ import annotations

import collections
import contextlib
import contextvars
import ctypes
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
from scipy.linalg import blas, eigh, lapack

# bytes of float64 rows one chunk holds (the queries' float64 copy, the whitened rows: two of these per worker)
CHUNK_BYTES = 32 * 2**20
# a large input is cut into at least this many chunks (if each keeps MIN_VALUES values), so every core gets work;
# the cut depends on the data's shape alone, never on the machine, so sums come out the same everywhere
MIN_CHUNKS, MIN_VALUES = 8, 2**19


def chunk_rows(dim: int, budget: int | None = None) -> int:
    """Rows per chunk: as many float64 rows of `dim` values as fit `budget` bytes (CHUNK_BYTES), at least 64."""
    budget = CHUNK_BYTES if budget is None else budget
    return int(max(64, budget // (8 * max(1, dim))))


def row_chunks(n: int, dim: int, chunk: int | None = None) -> list[slice]:
    """Slices covering rows 0..n-1: at most chunk_rows(dim) rows each (or `chunk`), and at least MIN_CHUNKS of
    them when that leaves each MIN_VALUES values or more (smaller pieces cost more in calls than they gain)."""
    step = int(chunk or min(chunk_rows(dim), max(MIN_VALUES // max(1, dim), -(-n // MIN_CHUNKS))))
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


_controller = None


def one_blas_thread():
    """A context in which BLAS runs single-threaded (threadpoolctl, a scikit-learn dependency), or a no-op."""
    global _controller
    try:
        if _controller is None:
            from threadpoolctl import ThreadpoolController

            _controller = ThreadpoolController()
        return _controller.limit(limits=1, user_api="blas")
    except Exception:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return contextlib.nullcontext()


# --- BLAS and LAPACK calls that release the GIL ---------------------------------------------------------
# scipy.linalg.blas and scipy.linalg.lapack (f2py wrappers) hold the GIL for the whole call, so two chunk workers
# calling them run one after the other: dtrmm on 4 chunks of 2,048 x 2,048 took 0.56-0.62 s in 2 workers against
# 0.61-0.82 s serially. scipy.linalg.cython_blas / cython_lapack export the same routines of the same library as C
# function pointers (PyCapsules), and ctypes releases the GIL around a foreign call: the same bits, 0.34 s in 2
# workers (1.6-1.75x). The f2py routines remain the fallback when a pointer cannot be had.

_native: dict = {}


def _native_routine(name: str):
    """The C function pointer of scipy's BLAS/LAPACK routine `name` (one of _ROUTINES) as a ctypes function, or
    None."""
    if name not in _native:
        try:
            from scipy.linalg import cython_blas, cython_lapack

            library, n_args = _ROUTINES[name]
            capsule = (cython_lapack if library == "lapack" else cython_blas).__pyx_capi__[name]
            # private prototypes of the C API calls (not ctypes.pythonapi's shared ones, which others may configure)
            get_name = ctypes.PYFUNCTYPE(ctypes.c_char_p, ctypes.py_object)(("PyCapsule_GetName", ctypes.pythonapi))
            get_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
                ("PyCapsule_GetPointer", ctypes.pythonapi))
            pointer = get_pointer(capsule, get_name(capsule))
            # every argument by reference, as Fortran takes them: characters, integers, scalars and arrays alike
            _native[name] = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * n_args)(pointer)
        except Exception:  # pragma: no cover - scipy without the Cython BLAS/LAPACK
            _native[name] = None
    return _native[name]


# the routines used, with their library and argument count (every argument a pointer, as Fortran takes them)
_ROUTINES = {"dtrmm": ("blas", 11), "strmm": ("blas", 11), "dpotrf": ("lapack", 5), "dtrtri": ("lapack", 6)}


def _ref(value, kind=ctypes.c_int):
    """A by-reference argument (the ctypes object lives as long as the call's argument list)."""
    return ctypes.byref(kind(value))


def triangular_product(tri: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """rows <- rows @ tri' in place, i.e. tri @ each row, for a lower-triangular, Fortran-ordered tri (D, D) and
    C-ordered rows (n, D) of the same float dtype (BLAS trmm on rows' transpose, a Fortran (D, n) matrix).
    Returns rows."""
    n, d = rows.shape
    if tri.shape != (d, d) or tri.dtype != rows.dtype or not tri.flags.f_contiguous or not rows.flags.c_contiguous:
        raise ValueError("triangular_product: tri must be a Fortran-ordered (D, D) and rows a C-ordered (n, D) "
                         "array of the same dtype")
    double = rows.dtype == np.float64
    routine = _native_routine("dtrmm" if double else "strmm")
    if n == 0:
        return rows
    if routine is None:  # the f2py routine (GIL held), in place on the Fortran-ordered transpose
        return (blas.dtrmm if double else blas.strmm)(1.0, tri, rows.T, lower=1, overwrite_b=1).T
    alpha = _ref(1.0, ctypes.c_double if double else ctypes.c_float)
    side, uplo, trans, diag = (ctypes.c_char_p(c) for c in (b"L", b"L", b"N", b"N"))
    routine(side, uplo, trans, diag, _ref(d), _ref(n), alpha, tri.ctypes.data, _ref(d), rows.ctypes.data, _ref(d))
    return rows


def _lapack_in_place(name: str, a: np.ndarray, *chars: bytes) -> int:
    """LAPACK ?potrf / ?trtri (`chars`: uplo[, diag]) on the Fortran-ordered float64 square `a`, in place; info."""
    routine = _native_routine(name)
    if routine is None:  # the f2py routine (GIL held), on a copy
        out, info = getattr(lapack, name)(a, lower=int(chars[0] == b"L"))
        a[...] = out
        return int(info)
    info = ctypes.c_int(0)
    d = len(a)
    routine(*(ctypes.c_char_p(c) for c in chars), _ref(d), a.ctypes.data, _ref(d), ctypes.byref(info))
    return int(info.value)


def workers() -> int:
    """Worker threads for chunked work: the cores this process may use, at most 8, and no more than a request may
    use on a shared server (serving.request_threads: OOD_EXPLORER_THREADS, 1 in shared mode)."""
    from . import serving

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        allowed = serving.request_threads()
    except ValueError:  # a malformed OOD_EXPLORER_THREADS: the server refuses it at start; here, every core
        allowed = cores
    return max(1, min(cores, allowed, 8))


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_local = threading.local()  # .in_worker: this thread is one of the pool's


def _shared_pool() -> ThreadPoolExecutor:
    """One pool of worker threads for the process, made once: starting threads per call cost milliseconds."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ood-core-chunks")
    return _pool


def map_chunks(fn: Callable[[slice], object], slices: list[slice]):
    """fn(slice) for every slice, in order: at most one chunk per core at a time (workers()), each on
    single-threaded BLAS, in a pool of threads shared by the process.

    Whole chunks per thread instead of threaded BLAS inside every product: no barrier per call, no spinning BLAS
    threads, and small products (a chunk times a K x D head) do not pay for threads at all. Results are
    yielded in slice order, so sums over them do not depend on the number of threads. Called from inside a
    chunk (nested), it runs serially in that thread.
    """
    n_workers = min(workers(), len(slices))
    with one_blas_thread():
        if n_workers <= 1 or getattr(_local, "in_worker", False):
            for sl in slices:
                yield fn(sl)
            return
        gate = threading.Semaphore(n_workers)  # this call's share of the shared pool

        def run(sl):
            with gate:
                _local.in_worker = True
                try:
                    return fn(sl)
                finally:
                    _local.in_worker = False

        # a window of 2 chunks per worker in flight, consumed in order: finished results wait for the earlier
        # ones, and a result can be large (a D x D scatter), so the window bounds the memory they hold
        pending = iter(slices)
        window = collections.deque(_shared_pool().submit(run, sl) for sl in itertools.islice(pending, 2 * n_workers))
        try:
            while window:
                result = window.popleft().result()
                nxt = next(pending, None)
                if nxt is not None:
                    window.append(_shared_pool().submit(run, nxt))
                yield result
        finally:
            for f in window:
                f.cancel()


# Factorisations (Cholesky, eigendecompositions) run on one BLAS thread, whatever their size: threaded LAPACK gains
# little on them (a 2048-d Cholesky takes ~0.1 s on one core; the tridiagonal reduction of ?syevr is memory-bound)
# and loses badly on a loaded machine: with two BLAS threads on two busy cores a 2048-d Cholesky was measured at
# 3.5-4 s against 0.5 s on one thread, and ?syevr's top 64 of 2048 at 7-62 s against 1.6-1.9 s.


# --- float64 rows in cache-sized blocks ------------------------------------------------------------------
# The row-wise detectors (fDBD, NCI, ViM's residual) do a few flops per value: a cast to float64, a skinny product,
# a row norm. A chunk's fresh float64 copy (megabytes) costs more in page faults and memory traffic than those
# flops: casting 10,000 x 512 float32 rows into a new array took 8.0 ms, into a reused one 2.9 ms, and in blocks
# that stay in a core's L2 cache 1.9 ms. So these walk their chunk in blocks of BLOCK_BYTES, cast into a buffer
# that each thread keeps from call to call. The blocks depend only on the chunk, itself fixed by the data's shape,
# so the scores stay the same on any number of threads. (Against one product over the whole chunk a row can differ in
# its last bits: BLAS may sum a short block in another order. Measured: at most 1e-12 of the largest score.)
BLOCK_BYTES = 2**19
_buffers = threading.local()  # .free: this thread's idle float64 buffers


def block_rows(dim: int) -> int:
    """Rows per block: as many float64 rows of `dim` values as fit BLOCK_BYTES, at least 8."""
    return int(max(8, BLOCK_BYTES // (8 * max(1, dim))))


def float64_blocks(x: np.ndarray, centre: np.ndarray | None = None):
    """(start, stop, rows) for consecutive blocks of x's rows: rows = x[start:stop] (minus centre), float64,
    in a buffer of this thread that the next block overwrites (copy what must outlive the step)."""
    n, dim = x.shape
    step = block_rows(dim)
    free = _buffers.__dict__.setdefault("free", [])
    buf = free.pop() if free else np.empty(step * dim)  # nested walks in one thread each take their own
    if buf.size < step * dim:
        buf = np.empty(step * dim)
    try:
        for start in range(0, n, step):
            stop = min(n, start + step)
            rows = buf[:(stop - start) * dim].reshape(stop - start, dim)
            np.copyto(rows, x[start:stop])
            if centre is not None:  # in place: a mixed float32 - float64 subtraction ran 1.4x slower than both
                rows -= centre
            yield start, stop, rows
    finally:
        free.append(buf)


# --- work shared between the detectors of one evaluation ------------------------------------------------

_memo: contextvars.ContextVar[dict | None] = contextvars.ContextVar("ood_core_shared_work", default=None)


@contextlib.contextmanager
def sharing():
    """Within this context (one evaluation of many detectors on one experiment), statistics that several detectors
    compute from the same arrays -- the tied covariance of the ID features, its Cholesky whitening, the whitened
    distances of a split's queries -- are computed once (`shared`) and handed to each. Outside it nothing is kept.
    The numbers are those of computing each alone: the same function of the same arrays."""
    token = _memo.set({}) if _memo.get() is None else None
    try:
        yield
    finally:
        if token is not None:
            _memo.reset(token)


def shared(kind: str, arrays: tuple, params: tuple, compute: Callable[[], object]):
    """compute(), or its value from earlier in the same `sharing()` context for the same arrays (by identity: the
    memo keeps them alive, so an id is never reused within it) and parameters. Values are shared: never mutate them."""
    memo = _memo.get()
    if memo is None:
        return compute()
    key = (kind, tuple(id(a) for a in arrays), params)
    hit = memo.get(key)
    if hit is None:
        hit = memo[key] = (arrays, compute())
    return hit[1]


def class_means(x: np.ndarray, labels: np.ndarray, chunk: int | None = None):
    """(classes, means (K, D) float64, counts (K,)) of the rows of x per label, accumulated in float64 by chunks."""
    labels = np.asarray(labels)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    k = len(classes)

    def chunk_sums(sl):
        xb = x[sl]
        if k == 1:
            return xb.sum(axis=0, dtype=np.float64)[None, :]
        yb = inverse[sl]
        if k <= 64:  # one small float64 product with the one-hot labels: one pass, no sorting or gathering
            onehot = (yb[None, :] == np.arange(k)[:, None]).astype(np.float64)
            return onehot @ np.asarray(xb, dtype=np.float64)
        order = np.argsort(yb, kind="stable")
        present, starts = np.unique(yb[order], return_index=True)
        part = np.zeros((k, x.shape[1]))
        part[present] = np.add.reduceat(np.asarray(xb, dtype=np.float64)[order], starts, axis=0)
        return part

    sums = np.zeros((k, x.shape[1]))
    for part in map_chunks(chunk_sums, row_chunks(len(x), x.shape[1], chunk)):
        sums += part
    return classes, sums / counts[:, None], counts


def feature_mean(x: np.ndarray) -> np.ndarray:
    """The mean row of x, float64 (D,), read-only: class_means with one class, computed once for every detector that
    asks for it within a `sharing()` context (fDBD, NCI and DICE all centre on the mean ID train feature)."""
    def compute():
        mean = class_means(x, np.zeros(len(x), dtype=np.int64))[1][0]
        mean.flags.writeable = False
        return mean

    return shared("feature_mean", (x,), (), compute)


def scatter(x: np.ndarray, centres: np.ndarray, index: np.ndarray | None = None, chunk: int | None = None) -> np.ndarray:
    """sum_i (x_i - centres[index_i])(x_i - centres[index_i])' in float64, (D, D); one centre when index is None.

    Each chunk is centred in float64 and multiplied by itself (`a.T @ a`, which numpy runs as syrk). numpy's
    product, not scipy.linalg.blas.dsyrk, which would skip numpy's mirroring of every chunk's triangle: in the two
    chunk workers at once scipy's BLAS ran it about 2x slower (50,000 x 2048: 4.2-4.4 s against 2.3-2.6 s).
    """
    centres = np.atleast_2d(np.asarray(centres, dtype=np.float64))

    def chunk_scatter(sl):
        c = np.subtract(x[sl], centres[0] if index is None else centres[index[sl]], dtype=np.float64)
        return c.T @ c

    out = np.zeros((x.shape[1], x.shape[1]))
    for part in map_chunks(chunk_scatter, row_chunks(len(x), x.shape[1], chunk)):
        out += part
    return out


def column_sq_deviations(x: np.ndarray, centre: np.ndarray, chunk: int | None = None) -> np.ndarray:
    """sum_i (x_ij - centre_j)^2 per column j, float64, by chunks (the diagonal of scatter(x, centre))."""
    def chunk_sq(sl):
        c = np.subtract(x[sl], centre, dtype=np.float64)
        return np.einsum("nd,nd->d", c, c)

    out = np.zeros(x.shape[1])
    for part in map_chunks(chunk_sq, row_chunks(len(x), x.shape[1], chunk)):
        out += part
    return out


def add_ridge(cov: np.ndarray, shrink: float) -> np.ndarray:
    """cov + shrink * (mean variance) * I, in place: the small ridge the Gaussian detectors add for stability."""
    ridge = shrink * max(np.trace(cov) / len(cov), 1e-12)
    cov.flat[::len(cov) + 1] += ridge
    return cov


def cholesky(cov: np.ndarray, what: str = "covariance of the ID features") -> np.ndarray:
    """Lower Cholesky factor L of cov = L L'; a clear LinAlgError when cov is not positive definite.

    LAPACK potrf on a Fortran-ordered copy of cov's transpose, which is a plain copy of its memory; its upper factor
    U = L' is returned transposed, C-ordered. np.linalg.cholesky's own copies cost it 2-3x potrf's time at
    2048-d (0.20 against 0.08 s, one thread), and this potrf releases the GIL (see _native_routine).
    """
    cov = np.asarray(cov, dtype=np.float64)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"{what}: expected a square matrix, got shape {cov.shape}")
    upper = np.array(cov.T, order="F")  # cov's lower triangle is upper's upper one
    with one_blas_thread():
        info = _lapack_in_place("dpotrf", upper, b"U")
    if info != 0 or not np.all(np.isfinite(np.diagonal(upper))):
        raise np.linalg.LinAlgError(f"{what} is singular")
    return np.tril(upper.T)  # C-ordered; the strictly upper part of upper.T is cov's, cleared here


def triangular_inverse(chol: np.ndarray) -> np.ndarray:
    """L^-1 of a lower-triangular L, Fortran-ordered for whiten (LAPACK trtri: D^3 / 3 flops, once per fit).

    Inverts L' (upper) in a Fortran-ordered copy, a plain copy of memory when L is C-ordered (as cholesky returns
    it), and returns the transposed result in Fortran order."""
    upper = np.asfortranarray(np.triu(np.asarray(chol, dtype=np.float64).T))
    with one_blas_thread():
        info = _lapack_in_place("dtrtri", upper, b"U", b"N")
    if info != 0 or not np.all(np.isfinite(np.diagonal(upper))):
        raise np.linalg.LinAlgError("the Cholesky factor is singular")
    return np.asfortranarray(upper.T)


def whiten(inverse: np.ndarray, x: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """z = L^-1 (x - centre) for one chunk of rows, float64 (n, D): a triangular product with L^-1 (trmm).

    `inverse` (triangular_inverse) must be Fortran-ordered (Whitened stores it so). The rows are centred in float64
    first, so that no float32 rounding of x - centre enters.
    """
    c = np.array(x, dtype=np.float64, order="C")  # a fresh C-ordered array, centred and multiplied in place
    c -= centre  # (not one mixed float32 - float64 subtraction, which ran 1.4x slower than the cast and this)
    return triangular_product(inverse, c)


class Whitened:
    """Squared Mahalanobis distances to K centres under one covariance Sigma = L L', via z = L^-1 (h - origin).

    d_k(h) = |z - m_k|^2 with m_k = L^-1 (mu_k - origin), expanded as |z|^2 - 2 z.m_k + |m_k|^2 in float64
    (the origin, the centres' weighted mean, keeps |z| and |m_k| of the size of the distances themselves).
    """

    def __init__(self, means: np.ndarray, cov: np.ndarray, origin: np.ndarray | None = None,
                 what: str = "covariance of the ID features"):
        self.means = np.atleast_2d(np.asarray(means, dtype=np.float64))
        self.origin = self.means.mean(axis=0) if origin is None else np.asarray(origin, dtype=np.float64)
        chol = cholesky(cov, what)
        self.log_det_ = float(2.0 * np.log(np.diagonal(chol)).sum())  # log det Sigma = 2 sum log L_ii
        self.inverse = triangular_inverse(chol)  # L^-1, lower, Fortran-ordered: what whiten multiplies by
        self.white_means = whiten(self.inverse, self.means, self.origin)  # (K, D)
        self.white_sq = np.einsum("kd,kd->k", self.white_means, self.white_means)

    def sq_distances(self, x: np.ndarray, chunk: int | None = None) -> np.ndarray:
        """(n, K) squared Mahalanobis distances of the rows of x to every centre, chunk by chunk (computed once per
        query array within a `sharing()` context: Mahalanobis and RMD whiten the same queries alike)."""
        return shared("sq_distances", (self, x), (chunk,), lambda: self._sq_distances(x, chunk))

    def _sq_distances(self, x: np.ndarray, chunk: int | None) -> np.ndarray:
        out = np.empty((len(x), len(self.means)))

        def chunk_sq(sl):
            out[sl] = self.chunk_sq_distances(x[sl])

        for _ in map_chunks(chunk_sq, row_chunks(len(x), x.shape[1], chunk)):
            pass
        return out

    def chunk_sq_distances(self, x: np.ndarray) -> np.ndarray:
        """sq_distances of one chunk of rows, in the calling thread."""
        z = whiten(self.inverse, x, self.origin)
        d = np.vecdot(z, z)[:, None] - 2.0 * (z @ self.white_means.T) + self.white_sq[None, :]
        return np.maximum(d, 0.0)

    def log_det(self) -> float:
        """log det Sigma = 2 sum log L_ii."""
        return self.log_det_


def residual_basis(sym: np.ndarray, count: int) -> tuple[np.ndarray, bool]:
    """What residual_norms needs to measure the part of a vector outside the span of the eigenvectors of the
    `count` largest eigenvalues of a symmetric matrix: (V, False) with those eigenvectors (D, count), largest
    first, or (V, True) with the other D - count eigenvectors, whichever makes residual_norms cheaper.

    Only the `count` leading eigenvectors are computed when they are few (LAPACK ?syevr on that subset, far
    cheaper than a full eigendecomposition); otherwise the full decomposition, whose complement is then used.
    """
    d = len(sym)
    count = int(min(max(count, 0), d))
    if count == 0:
        return np.eye(d), True
    with one_blas_thread():
        if count < d - count:  # through the leading subspace: 2 n D count flops, against 2 n D (d - count)
            _, vec = eigh(sym, subset_by_index=[d - count, d - 1], driver="evr", check_finite=False)
            return np.ascontiguousarray(vec[:, ::-1]), False
        val, vec = np.linalg.eigh(sym)
    return np.ascontiguousarray(vec[:, np.argsort(val)[::-1][count:]]), True


# residual_norms: below this share of |c|^2 the squared residual is taken from the residual vector itself
THIN_RESIDUAL = 1e-3


def residual_norms(x: np.ndarray, origin: np.ndarray, basis: np.ndarray, complement: bool = False,
                   chunk: int | None = None) -> np.ndarray:
    """|| (I - V V') (x - origin) || per row, V = basis (D, d) with orthonormal columns: the part outside span(V);
    with complement=True, `basis` spans that outside part itself and the norm is || basis' (x - origin) ||.

    Through the leading basis the squared residual is |c|^2 - |V'c|^2 (2 n D d flops). Its rounding error is of
    order eps D |c|^2, so where the residual keeps at least THIN_RESIDUAL of |c|^2 it is below eps D / THIN_RESIDUAL
    relative (2e-10 at D = 2048); rows with a thinner residual are recomputed from the residual vector itself,
    c - (c V) V', whose norm carries an error of order eps |c| (2 n D d flops more). Through the complement:
    2 n D (D - d) flops (residual_basis says which basis is cheaper).
    """
    out = np.empty(len(x))

    def chunk_norms(sl):
        res = out[sl]
        p = np.empty((block_rows(x.shape[1]), basis.shape[1]))
        for start, stop, c in float64_blocks(x[sl], origin):
            pb = np.matmul(c, basis, out=p[:stop - start])
            if complement:
                np.vecdot(pb, pb, out=res[start:stop])
                continue
            sq = np.vecdot(c, c)
            r2 = sq - np.vecdot(pb, pb)
            thin = r2 < THIN_RESIDUAL * sq
            if thin.any():
                ct = c[thin]
                ct -= pb[thin] @ basis.T
                r2[thin] = np.einsum("nd,nd->n", ct, ct)
            res[start:stop] = r2
        np.sqrt(res, out=res)

    for _ in map_chunks(chunk_norms, row_chunks(len(x), x.shape[1], chunk)):
        pass
    return out
