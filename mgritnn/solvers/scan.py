"""Linear recurrences solved in parallel over time: a chunked scan on threads and MPI ranks.

DEER (``deer.py``) reduces a nonlinear recurrence to a sequence of linear ones,

.. math::

    h_{t+1} = A_t h_t + b_t \\quad (t = 0, \\dots, n-1), \\qquad\\text{or, in reverse,}\\qquad
    \\mu_t = A_t^T \\mu_{t+1} + b_t \\quad (t = n-1, \\dots, 0),

for every batch row independently, with A_t a dense (H, H) matrix or a diagonal (H,). The pairs
(A, b) compose associatively, :math:`(A_2, b_2) \\circ (A_1, b_1) = (A_2 A_1, A_2 b_1 + b_2)`, which
this module uses in three phases:

1. **Chunk summaries** (threads over chunk x block of batch rows): each time chunk is swept from a zero
   start, giving its particular solution y_c, and its propagator P_c, the product of its A_t (an
   O(H^3) matrix product per step when dense, O(H) when diagonal). A chunk whose start is already
   known (the first chunk of the sequence) is swept from that start and gets P_c = 0.
2. **Scan over chunk boundaries**: the rank composes its chunks' summaries into one; the ranks
   exchange their summaries (one ``Allgather``) and each composes those before it into its start
   value; then the chunk starts follow from s_{c+1} = P_c s_c + y_c (matrix-vector products only).
3. **Fix-up** (threads over chunk x block of batch rows): every chunk whose start was unknown is swept again
   from its true start (O(H^2) per step dense). Finally each rank passes its last value to the
   next rank (one message), so that neighbouring blocks share the boundary point bit for bit.

Batch rows are independent and give threads work by themselves, so a rank needs more than one
chunk only when it has fewer rows than threads. The chunking depends on the shape only (never on
the number of threads), so results are bitwise independent of the number of threads; between
different numbers of ranks or chunks they agree to round-off (the association of the products
differs). One chunk on one rank is exactly the sequential recurrence.
"""
import numba
import numpy as np
from numba import prange
from numba.extending import overload

from ..config import JIT, JIT_PAR
from ..distributed import SelfComm, TimeComm
from ..errors import ConfigError

#: Default threads' worth of parallel units a rank aims at: a rank uses ceil(DEFAULT_UNITS / B)
#: chunks (at least 1), so small batches still keep several threads busy.
DEFAULT_UNITS = 8


def default_chunks(n, batch):
    """Chunks of a rank's ``n`` steps for ``batch`` independent rows (a function of the shape only)."""
    return max(1, min(n, -(-DEFAULT_UNITS // max(1, batch))))


# ------------------------------------------------------------------------------------------------
# Kernels: one chunk [c0, c1) of the batch rows [r0, r1). ``rev`` sweeps backward with A_t^T.
# At every step the block's rows are taken one after another, so memory is read in long
# contiguous runs (one row per step would stride through A by B H^2 values and wait on memory).
# ------------------------------------------------------------------------------------------------

@numba.njit(**JIT)
def _sweep_dense(A, b, start, out, r0, r1, c0, c1, rev):
    """Sweep steps c0..c1-1 of rows r0..r1-1 from ``start`` (B, H); out[t] receives the value after
    step t (h_{t+1} forward, mu_t in reverse)."""
    H = b.shape[2]
    for s in range(c1 - c0):
        t = c1 - 1 - s if rev else c0 + s
        p = t + 1 if rev else t - 1          # where the previous value is (s > 0)
        for r in range(r0, r1):
            for i in range(H):
                out[t, r, i] = b[t, r, i]
            if rev:                    # out[t] = A_t^T prev + b_t
                for i in range(H):
                    v = start[r, i] if s == 0 else out[p, r, i]
                    for j in range(H):
                        out[t, r, j] += A[t, r, i, j] * v
            else:                      # out[t] = A_t prev + b_t
                for i in range(H):
                    acc = out[t, r, i]
                    if s == 0:
                        for j in range(H):
                            acc += A[t, r, i, j] * start[r, j]
                    else:
                        for j in range(H):
                            acc += A[t, r, i, j] * out[p, r, j]
                    out[t, r, i] = acc


@numba.njit(**JIT)
def _sweep_diag(A, b, start, out, r0, r1, c0, c1, rev):
    """As :func:`_sweep_dense` with diagonal A (T, B, H)."""
    H = b.shape[2]
    for s in range(c1 - c0):
        t = c1 - 1 - s if rev else c0 + s
        p = t + 1 if rev else t - 1
        for r in range(r0, r1):
            if s == 0:
                for i in range(H):
                    out[t, r, i] = A[t, r, i] * start[r, i] + b[t, r, i]
            else:
                for i in range(H):
                    out[t, r, i] = A[t, r, i] * out[p, r, i] + b[t, r, i]


@numba.njit(**JIT)
def _product_dense(A, P, work, r0, r1, c0, c1, rev):
    """P[r] (H, H) = A_{c1-1} ... A_{c0} (forward) or A_{c0}^T ... A_{c1-1}^T (reverse) of each row
    r in [r0, r1); P (B, H, H), work (H, H)."""
    H = P.shape[1]
    for r in range(r0, r1):
        for i in range(H):
            for j in range(H):
                P[r, i, j] = 1.0 if i == j else 0.0
    for s in range(c1 - c0):
        t = c1 - 1 - s if rev else c0 + s
        for r in range(r0, r1):
            for i in range(H):
                for k in range(H):
                    work[i, k] = 0.0
            if rev:                    # work = A_t^T P
                for i in range(H):
                    for j in range(H):
                        a = A[t, r, i, j]
                        for k in range(H):
                            work[j, k] += a * P[r, i, k]
            else:                      # work = A_t P
                for i in range(H):
                    for j in range(H):
                        a = A[t, r, i, j]
                        for k in range(H):
                            work[i, k] += a * P[r, j, k]
            for i in range(H):
                for k in range(H):
                    P[r, i, k] = work[i, k]


@numba.njit(**JIT)
def _product_diag(A, P, work, r0, r1, c0, c1, rev):
    """P[r] (H,) = the product of the diagonals A_t, t in [c0, c1), of each row r in [r0, r1);
    P (B, H) (``work`` unused)."""
    H = P.shape[1]
    for r in range(r0, r1):
        for i in range(H):
            P[r, i] = 1.0
    for t in range(c0, c1):
        for r in range(r0, r1):
            for i in range(H):
                P[r, i] *= A[t, r, i]


def _sweep(A, b, start, out, r0, r1, c0, c1, rev):
    """Sweep of one chunk and row block, dense or diagonal by the rank of A (chosen at compile time
    inside compiled code by the overload below; this body runs only under NUMBA_DISABLE_JIT=1)."""
    (_sweep_dense if A.ndim == 4 else _sweep_diag)(A, b, start, out, r0, r1, c0, c1, rev)


def _product(A, P, work, r0, r1, c0, c1, rev):
    """Propagators of one chunk and row block, dense or diagonal by the rank of A (as ``_sweep``)."""
    (_product_dense if A.ndim == 4 else _product_diag)(A, P, work, r0, r1, c0, c1, rev)


@overload(_sweep, jit_options=JIT)
def _sweep_impl(A, b, start, out, r0, r1, c0, c1, rev):
    return _sweep_dense.py_func if A.ndim == 4 else _sweep_diag.py_func


@overload(_product, jit_options=JIT)
def _product_impl(A, P, work, r0, r1, c0, c1, rev):
    return _product_dense.py_func if A.ndim == 4 else _product_diag.py_func


@numba.njit(**JIT_PAR)
def _summaries(A, b, start, out, bounds, rows, known, need_P, P, work, rev):
    """Phase 1 over (chunk, row block) units: the known chunk is swept from ``start`` (B, H); the
    others from zero, with their propagators P (C, B, H, H) or (C, B, H) where ``need_P``."""
    C = bounds.shape[0] - 1
    R = rows.shape[0] - 1
    zero = np.zeros(start.shape, b.dtype)
    for q in prange(C * R):
        c = q // R
        k = q - c * R
        c0, c1 = bounds[c], bounds[c + 1]
        s0 = start if c == known else zero
        _sweep(A, b, s0, out, rows[k], rows[k + 1], c0, c1, rev)
        if need_P[c] and c != known:
            _product(A, P[c], work[q % work.shape[0]], rows[k], rows[k + 1], c0, c1, rev)


@numba.njit(**JIT_PAR)
def _fixup(A, b, starts, out, bounds, rows, known, rev):
    """Phase 3: sweep every chunk but the known one again from its true start starts[c] (B, H)."""
    C = bounds.shape[0] - 1
    R = rows.shape[0] - 1
    for q in prange(C * R):
        c = q // R
        k = q - c * R
        if c == known:
            continue
        _sweep(A, b, starts[c], out, rows[k], rows[k + 1], bounds[c], bounds[c + 1], rev)


def _apply(P, s, y):
    """P s + y for a stack of rows: P (B, H, H) or (B, H), s and y (B, H)."""
    if P.ndim == 3:
        return np.einsum("bij,bj->bi", P, s) + y
    return P * s + y


def _compose(P2, y2, P1, y1):
    """(P2, y2) o (P1, y1) = (P2 P1, P2 y1 + y2), batched over rows."""
    P = np.matmul(P2, P1) if P2.ndim == 3 else P2 * P1
    return P, _apply(P2, y1, y2)


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------

def linear_recurrence(A, b, h0, out=None, reverse=False, chunks=None, comm=None):
    """Solve a linear recurrence over this rank's block of steps, in parallel over time.

    Forward (``reverse=False``): :math:`h_{t+1} = A_t h_t + b_t` for the rank's steps t = 0..n-1
    (global steps lo..hi-1), from ``h0`` at point 0 of the whole sequence (read on rank 0).
    Reverse: :math:`\\mu_t = A_t^T \\mu_{t+1} + b_t` for t = n-1..0, from ``h0`` as the value at the
    last point of the whole sequence (read on the last rank).

    Parameters
    ----------
    A : ndarray, shape (n, B, H, H) (dense) or (n, B, H) (diagonal), float32 or float64
        C-contiguous.
    b : ndarray, shape (n, B, H), same dtype
    h0 : ndarray, shape (B, H), same dtype
        The boundary value (initial state forward, terminal adjoint in reverse).
    out : ndarray, shape (n, B, H), optional
        Receives the solution: out[t] = h_{t+1} forward, out[t] = mu_t in reverse.
    reverse : bool
    chunks : int, optional
        Time chunks of this rank (default :func:`default_chunks`: from the shape only).
    comm : TimeComm, mpi4py communicator or None
        The ranks sharing the time axis, in time order (None: this process alone).

    Returns
    -------
    out : ndarray, shape (n, B, H)
    boundary : ndarray, shape (B, H)
        The value entering this rank's block: h at its first point (forward) or mu at the point
        after its last step (reverse); ``h0`` itself on the rank that owns the boundary.

    Notes
    -----
    See the module docstring for the three phases. Cost per step and row: O(H^2) to sweep plus
    O(H^3) for the propagators of chunks whose start is unknown (dense); O(H) diagonal.
    """
    dense = A.ndim == 4
    if b.ndim != 3 or A.shape[:3] != b.shape or (dense and A.shape[3] != b.shape[2]) \
            or not A.ndim in (3, 4):
        raise ValueError(f"A must have shape (n, B, H, H) or (n, B, H) and b (n, B, H); got "
                         f"A {A.shape}, b {b.shape}")
    n, B, H = b.shape
    if h0.shape != (B, H) or A.dtype != b.dtype or h0.dtype != b.dtype:
        raise ValueError(f"h0 must have shape {(B, H)} and the dtype of A and b ({b.dtype}); got "
                         f"{h0.shape} {h0.dtype}, A {A.dtype}")
    if out is None:
        out = np.empty_like(b)
    # the caller's service itself when given one, so that its waiting time is counted there
    tc = comm if isinstance(comm, TimeComm) else TimeComm(SelfComm() if comm is None else comm)
    size, rank = tc.size, tc.rank
    C = default_chunks(n, B) if chunks is None else int(chunks)
    if C < 1:
        raise ConfigError(f"chunks must be >= 1, got {chunks!r}")
    C = min(C, max(n, 1))
    bounds = np.array([n * c // C for c in range(C + 1)], np.int64)
    owns_boundary = rank == (size - 1 if reverse else 0)
    known = (C - 1 if reverse else 0) if owns_boundary else -1
    # chunks in the order the recurrence runs through them
    order = list(range(C - 1, -1, -1)) if reverse else list(range(C))
    # a propagator is needed unless nothing after the chunk needs its end value
    need_P = np.ones(C, np.bool_)
    if rank == (0 if reverse else size - 1):
        need_P[order[-1]] = False
    pshape = (C, B, H, H) if dense else (C, B, H)
    P = np.zeros(pshape, b.dtype)
    # Row blocks only group the independent rows for threads: results do not depend on them.
    R = max(1, min(B, numba.get_num_threads()))
    rows = np.array([B * k // R for k in range(R + 1)], np.int64)
    work = np.empty((C * R, H, H) if dense else (1, 1, 1), b.dtype)
    A = np.ascontiguousarray(A)
    b = np.ascontiguousarray(b)
    start = np.ascontiguousarray(h0)
    if n:
        _summaries(A, b, start, out, bounds, rows, known, need_P, P, work, reverse)

    def end_of(c):
        return out[bounds[c]] if reverse else out[bounds[c + 1] - 1]

    # The rank's summary: its chunks composed in the order of the recurrence.
    Pr = np.zeros((B, H, H) if dense else (B, H), b.dtype)
    yr = np.zeros((B, H), b.dtype)
    if n:
        c = order[0]
        Pr, yr = (P[c].copy(), end_of(c).copy())
        for c in order[1:]:
            Pr, yr = _compose(P[c], end_of(c), Pr, yr)
    # Exchange: every rank composes the summaries of the ranks before it (in recurrence order).
    if size == 1:
        boundary = h0.copy()
    else:
        allP, ally = tc.allgather(Pr), tc.allgather(yr)
        ranks = range(size - 1, rank, -1) if reverse else range(rank)
        boundary = h0.copy()
        for q in ranks:
            boundary = _apply(allP[q], boundary, ally[q])
    # Chunk starts, then the fix-up sweep from them.
    if n and not (C == 1 and known == 0):
        starts = np.empty((C, B, H), b.dtype)
        s = boundary
        for c in order:
            starts[c] = s
            s = _apply(P[c], s, end_of(c)) if c != known else end_of(c).copy()
        _fixup(A, b, starts, out, bounds, rows, known, reverse)
    if size > 1 and n:
        # The composed summaries round differently from the neighbour's own sweep: take the
        # neighbour's value, so that neighbouring blocks share their boundary point bitwise.
        recv = np.empty((B, H), b.dtype)
        tc.shift(out[0] if reverse else out[-1], recv, "scan-boundary", reverse=reverse)
        if not owns_boundary:
            boundary = recv
    return out, boundary


__all__ = ["linear_recurrence", "default_chunks", "DEFAULT_UNITS"]
