"""ELK's damped Newton step: the Levenberg-Marquardt step of a recurrence's residual, solved
exactly and in parallel over time (Gonzalez et al., NeurIPS 2024).

For one layer's trajectory h_1 .. h_T (h_0 fixed) the residual is
r_t(h) = h_t - Phi(h_{t-1}, x_t); its Jacobian with respect to the unknowns is block lower
bidiagonal with identity diagonal blocks, (J_r d)_t = d_t - J_t d_{t-1}, J_t = dPhi/dh at
h_{t-1} (d_0 = 0). The step of :func:`lm_step` is the minimizer of the damped linear least-squares
problem

.. math::

    \\min_d \\; \\tfrac12 \\sum_t \\lVert r_t + d_t - J_t d_{t-1} \\rVert^2
    + \\tfrac{\\lambda}{2} \\sum_t \\lVert d_t \\rVert^2 ,

whose normal equations :math:`(J_r^T J_r + \\lambda I) d = -J_r^T r` are block tridiagonal and
symmetric positive definite:

.. math::

    M_{tt} = (1 + \\lambda) I + J_{t+1}^T J_{t+1}, \\quad M_{t,t-1} = -J_t, \\quad
    M_{t,t+1} = -J_{t+1}^T, \\quad g_t = -r_t + J_{t+1}^T r_{t+1}

(J_{T+1} = 0, r_{T+1} = 0). This is ELK's problem: their parallel Kalman smoother (dynamics
d_t = J_t d_{t-1} - r_t with unit process noise, pseudo-observations 0 of every d_t with variance
1/lambda) computes the same minimizer. Here it is solved by a **partitioned block-tridiagonal
elimination** (the Schur complement onto partition boundaries), which is exact (a direct solve,
no iteration) and parallel:

1. The time axis is cut into partitions: chunks of each rank's steps (threads) on every rank.
   Every partition but the last keeps its last unknown as a *separator*; the rest is its interior.
   Each interior is eliminated by the block LDL^T (Cholesky) recursion, the information form of
   the Kalman filter, independently (threads over partition x batch row); for more than one
   partition, a second recursion from the other end and the coupling columns give the interior's
   first and last blocks as affine functions of its two separators.
2. Those summaries are gathered on every rank (one ``Allgather`` per array) and the reduced
   block-tridiagonal system of the separators (one block per partition) is solved by every rank
   alike.
3. Every interior is solved from its now known separators with the stored factors (the RTS
   smoother's backward pass).

quasi-ELK passes diagonal J_t (T, B, H): then every block is a scalar per hidden unit, and the
same kernels run with the B H units as rows of one unknown each: O(T B H) per step. Dense: O(H^3)
per step and row (the factorization), O(H^2) for the substitution.

The step equals the Newton (DEER) step for lambda = 0 (J_r is invertible) and tends to
-J_r^T r / lambda, a gradient step on the merit, for large lambda.
"""
import numba
import numpy as np
from numba import prange

from ..config import JIT, JIT_PAR
from ..distributed import SelfComm, TimeComm
from .scan import default_chunks

#: The messages' MPI tags: the DEER block's, at indices above any layer's (blocking exchanges in
#: one order on every rank, so they never cross).
_TAG_J, _TAG_R, _TAG_D = ("deer-start", 97), ("deer-start", 98), ("deer-start", 99)


# ------------------------------------------------------------------------------------------------
# Small dense helpers (one row of one block): Cholesky, solves, the normal equations' blocks
# ------------------------------------------------------------------------------------------------

@numba.njit(**JIT)
def _chol(A, L):
    """L = the lower Cholesky factor of the SPD (H, H) matrix A (a non-positive pivot gives NaN,
    so a step that lost definiteness in rounding is rejected, never silently wrong)."""
    H = A.shape[0]
    for j in range(H):
        s = A[j, j]
        for k in range(j):
            s -= L[j, k] * L[j, k]
        d = np.sqrt(s) if s > 0 else np.nan
        L[j, j] = d
        for i in range(j + 1, H):
            s = A[i, j]
            for k in range(j):
                s -= L[i, k] * L[j, k]
            L[i, j] = s / d
        for i in range(j):
            L[i, j] = 0.0


@numba.njit(**JIT)
def _chol_solve(L, X):
    """X (H, m) <- (L L^T)^{-1} X in place."""
    H, m = X.shape
    for c in range(m):
        for i in range(H):
            s = X[i, c]
            for k in range(i):
                s -= L[i, k] * X[k, c]
            X[i, c] = s / L[i, i]
        for i in range(H - 1, -1, -1):
            s = X[i, c]
            for k in range(i + 1, H):
                s -= L[k, i] * X[k, c]
            X[i, c] = s / L[i, i]


@numba.njit(**JIT)
def _chol_solve_vec(L, x):
    """x (H,) <- (L L^T)^{-1} x in place."""
    H = x.shape[0]
    for i in range(H):
        s = x[i]
        for k in range(i):
            s -= L[i, k] * x[k]
        x[i] = s / L[i, i]
    for i in range(H - 1, -1, -1):
        s = x[i]
        for k in range(i + 1, H):
            s -= L[k, i] * x[k]
        x[i] = s / L[i, i]


@numba.njit(**JIT)
def _gemv(A, x, y, trans):
    """y (H,) += A x, or A^T x where ``trans`` (A (H, H), x (H,))."""
    H = y.shape[0]
    for i in range(H):
        acc = 0.0
        for k in range(H):
            acc += (A[k, i] if trans else A[i, k]) * x[k]
        y[i] += acc


@numba.njit(**JIT)
def _gemm(A, X, Y, trans, sign):
    """Y (H, m) += sign A X, or sign A^T X where ``trans`` (A (H, H), X (H, m))."""
    H, m = Y.shape
    for i in range(H):
        for j in range(m):
            acc = 0.0
            for k in range(H):
                acc += (A[k, i] if trans else A[i, k]) * X[k, j]
            Y[i, j] += sign * acc


@numba.njit(**JIT)
def _next_J(J, Jnext, t, r):
    """J_{t+1} of row r: J[t + 1, r], or the next rank's first (zero after the last step)."""
    return J[t + 1, r] if t + 1 < J.shape[0] else Jnext[r]


@numba.njit(**JIT)
def _block(J, Jnext, t, r, lam, M):
    """M (H, H) = (1 + lam) I + J_{t+1}^T J_{t+1}, the diagonal block of unknown t."""
    Jn = _next_J(J, Jnext, t, r)
    H = M.shape[0]
    for i in range(H):
        for j in range(H):
            s = 0.0
            for k in range(H):
                s += Jn[k, i] * Jn[k, j]
            M[i, j] = s + (1.0 + lam if i == j else 0.0)


@numba.njit(**JIT)
def _rhs(J, Jnext, res, rnext, t, r, g):
    """g (H,) = -r_t + J_{t+1}^T r_{t+1}, the right-hand side of unknown t."""
    Jn = _next_J(J, Jnext, t, r)
    rn = res[t + 1, r] if t + 1 < res.shape[0] else rnext[r]
    H = g.shape[0]
    for i in range(H):
        s = -res[t, r, i]
        for k in range(H):
            s += Jn[k, i] * rn[k]
        g[i] = s


# ------------------------------------------------------------------------------------------------
# Kernels over (partition, batch row) units
# ------------------------------------------------------------------------------------------------

@numba.njit(**JIT_PAR)
def _factor(J, Jnext, lam, bounds, ends, F, work):
    """Phase 1a: F[t, r] = the Cholesky factor of the interior's Schur complement
    S_t = M_tt - J_t S_{t-1}^{-1} J_t^T, top down over each partition's interior
    [bounds[c], ends[c]). work (Q, 3, H, H)."""
    C, B, H = bounds.shape[0] - 1, J.shape[1], J.shape[2]
    for q in prange(C * B):
        c, r = q // B, q % B
        M = work[q, 0]
        Z = work[q, 1]
        for t in range(bounds[c], ends[c]):
            _block(J, Jnext, t, r, lam, M)
            if t > bounds[c]:
                for i in range(H):         # Z = S_{t-1}^{-1} (-J_t)^T, then M -= (-J_t) Z
                    for j in range(H):
                        Z[i, j] = J[t, r, j, i]
                _chol_solve(F[t - 1, r], Z)
                _gemm(J[t, r], Z, M, False, -1.0)
            _chol(M, F[t, r])


@numba.njit(**JIT_PAR)
def _corners(J, Jnext, res, rnext, lam, bounds, ends, left, F, first, last, work, vec):
    """Phase 1b (several partitions): the first and last blocks of X = M_I^{-1} [g | C_L | C_R]
    of every interior, ``first``/``last`` (C, B, H, 1 + 2H): column 0 the particular solution,
    1..H the response to the left separator (C_L = -J_a in the first row, where ``left[c]``),
    H+1..2H to the right one (C_R = -J_e^T in the last row, e = ends[c] < bounds[c + 1]).
    Top down with the stored factors; bottom up with a second recursion. work (Q, 4, H, H);
    vec (Q, 2, H, 1 + 2H)."""
    C, B, H = bounds.shape[0] - 1, J.shape[1], J.shape[2]
    m = 1 + 2 * H
    for q in prange(C * B):
        c, r = q // B, q % B
        a, e = bounds[c], ends[c]
        right = e < bounds[c + 1]
        first[c, r] = 0.0
        last[c, r] = 0.0
        if e <= a:
            continue
        Y = vec[q, 0]
        P = vec[q, 1]
        g = work[q, 3, 0]
        for d in range(2):                 # 0: top down (stored factors), 1: bottom up
            for s in range(e - a):
                t = a + s if d == 0 else e - 1 - s
                # R_t: the right-hand sides of row t
                _rhs(J, Jnext, res, rnext, t, r, g)
                for i in range(H):
                    Y[i, 0] = g[i]
                    for j in range(1, m):
                        Y[i, j] = 0.0
                    if t == a and left[c]:
                        for j in range(H):
                            Y[i, 1 + j] = -J[a, r, i, j]
                    if t == e - 1 and right:
                        for j in range(H):
                            Y[i, 1 + H + j] = -J[e, r, j, i]
                if s > 0:
                    if d == 0:             # Y += J_t S_{t-1}^{-1} P
                        _chol_solve(F[t - 1, r], P)
                        _gemm(J[t, r], P, Y, False, 1.0)
                    else:                  # Y += J_{t+1}^T S'_{t+1}^{-1} P (S' in work 2)
                        _chol_solve(work[q, 2], P)
                        _gemm(J[t + 1, r], P, Y, True, 1.0)
                if d == 1:                 # S'_t = M_tt - J_{t+1}^T S'_{t+1}^{-1} J_{t+1}
                    M = work[q, 0]
                    Z = work[q, 1]
                    _block(J, Jnext, t, r, lam, M)
                    if s > 0:
                        for i in range(H):
                            for j in range(H):
                                Z[i, j] = J[t + 1, r, i, j]
                        _chol_solve(work[q, 2], Z)
                        _gemm(J[t + 1, r], Z, M, True, -1.0)
                    _chol(M, work[q, 2])
                for i in range(H):
                    for j in range(m):
                        P[i, j] = Y[i, j]
            _chol_solve(F[e - 1, r] if d == 0 else work[q, 2], P)
            out = last[c, r] if d == 0 else first[c, r]
            for i in range(H):
                for j in range(m):
                    out[i, j] = P[i, j]


@numba.njit(**JIT_PAR)
def _substitute(J, Jnext, res, rnext, bounds, ends, F, lefts, rights, out, work):
    """Phase 3: solve every interior with right-hand side g + J_a d_left (first row) +
    J_e^T d_right (last row) by the stored factors, into out[bounds[c]:ends[c]]; the separator
    out[ends[c]] = rights[c] where the partition has one. lefts, rights (C, B, H) (zero where
    there is no separator); work (Q, 2, H)."""
    C, B, H = bounds.shape[0] - 1, J.shape[1], J.shape[2]
    for q in prange(C * B):
        c, r = q // B, q % B
        a, e = bounds[c], ends[c]
        v = work[q, 0]
        for t in range(a, e):
            _rhs(J, Jnext, res, rnext, t, r, out[t, r])
            y = out[t, r]
            if t == a:
                _gemv(J[a, r], lefts[c, r], y, False)
            if t == e - 1 and e < bounds[c + 1]:
                _gemv(J[e, r], rights[c, r], y, True)
            if t > a:                      # y_t += J_t S_{t-1}^{-1} y_{t-1}
                for i in range(H):
                    v[i] = out[t - 1, r, i]
                _chol_solve_vec(F[t - 1, r], v)
                _gemv(J[t, r], v, y, False)
        for t in range(e - 1, a - 1, -1):  # x_t = S_t^{-1} (y_t + J_{t+1}^T x_{t+1})
            y = out[t, r]
            if t < e - 1:
                _gemv(J[t + 1, r], out[t + 1, r], y, True)
            _chol_solve_vec(F[t, r], y)
        if e < bounds[c + 1]:
            for i in range(H):
                out[e, r, i] = rights[c, r, i]


@numba.njit(**JIT_PAR)
def _model_residual(J, d, dprev, res, out):
    """out_t = r_t + d_t - J_t d_{t-1} (d_{-1} = dprev (B, H)): the linearized residual after the
    step d. J (n, B, H, H), d, res, out (n, B, H)."""
    n, B, H = d.shape
    for q in prange(n * B):
        t = q // B
        r = q - t * B
        for i in range(H):
            acc = res[t, r, i] + d[t, r, i]
            for k in range(H):
                acc -= J[t, r, i, k] * (d[t - 1, r, k] if t > 0 else dprev[r, k])
            out[t, r, i] = acc


# ------------------------------------------------------------------------------------------------
# Drivers
# ------------------------------------------------------------------------------------------------

def _as_blocks(J, res):
    """Dense (n, B, H, H) as it is; diagonal (n, B, H) as n x (B H) rows of 1 x 1 blocks."""
    if J.ndim == 4:
        return J, res
    n, B, H = res.shape
    return J.reshape(n, B * H, 1, 1), res.reshape(n, B * H, 1)


def _tc(comm):
    return comm if isinstance(comm, TimeComm) else TimeComm(SelfComm() if comm is None else comm)


def partitions(T, size, batch, chunks=None):
    """Chunks per rank of the LM solve, the same on every rank (a function of the shape only):
    ``chunks`` or :func:`~mgritnn.solvers.scan.default_chunks`, at most the fewest steps of a rank."""
    nmin = max(1, T // size)
    C = default_chunks(nmin, batch) if chunks is None else int(chunks)
    return max(1, min(C, nmin))


def _reduced_solve(Mss, Js, Jns, gs, nonempty, first, last):
    """Solve the separators' block-tridiagonal system (every partition in global order; rows of
    the arrays: partition p, batch row, ...). Returns sep (P - 1, R, H)."""
    P, R, H = gs.shape[0] + 1, gs.shape[1], gs.shape[2]
    t = np.swapaxes
    uf, Vf, Wf = first[..., 0], first[..., 1:1 + H], first[..., 1 + H:]
    ul, Vl, Wl = last[..., 0], last[..., 1:1 + H], last[..., 1 + H:]
    D, z, Cs = [], [], []
    for k in range(P - 1):
        A, h = Mss[k].copy(), gs[k].copy()
        if nonempty[k]:
            A += Js[k] @ Wl[k]
            h += np.einsum("rij,rj->ri", Js[k], ul[k])
            Bk = Js[k] @ Vl[k]
        else:
            Bk = -Js[k]
        if nonempty[k + 1]:
            A += t(Jns[k], 1, 2) @ Vf[k + 1]
            h += np.einsum("rji,rj->ri", Jns[k], uf[k + 1])
            Ck = t(Jns[k], 1, 2) @ Wf[k + 1]
        else:
            Ck = -t(Jns[k], 1, 2)
        if k > 0:                          # eliminate separator k - 1
            X = np.linalg.solve(D[-1], np.concatenate([Cs[-1], z[-1][..., None]], axis=2))
            A = A - Bk @ X[..., :H]
            h = h - (Bk @ X[..., H:])[..., 0]
        D.append(A)
        z.append(h)
        Cs.append(Ck)
    sep = np.empty((P - 1, R, H), gs.dtype)
    for k in range(P - 2, -1, -1):
        rhs = z[k] if k == P - 2 else z[k] - np.einsum("rij,rj->ri", Cs[k], sep[k + 1])
        sep[k] = np.linalg.solve(D[k], rhs[..., None])[..., 0]
    return sep


def lm_step(J, res, lam, out=None, chunks=None, comm=None, T=None):
    """The Levenberg-Marquardt step of a recurrence's residual (module docstring), exactly.

    Parameters
    ----------
    J : ndarray, shape (n, B, H, H) (dense) or (n, B, H) (diagonal), float32 or float64
        J[t] = dPhi/dh at point t of this rank's block (global step lo + t): it couples the
        unknown at point t + 1 to the one at point t (J[0] of rank 0 multiplies the fixed h_0 and
        is not used).
    res : ndarray, shape (n, B, H), same dtype
        The residual r = h_{t+1} - Phi(h_t) of this rank's steps.
    lam : float
        The damping lambda > 0 (0 is allowed when J is well conditioned: Newton).
    out : ndarray, shape (n, B, H), optional
        Receives the step d: out[t] is the change of the state at point t + 1.
    chunks : int, optional
        Partitions per rank (default :func:`partitions`; the same on every rank).
    comm : TimeComm, mpi4py communicator or None
        The ranks sharing the time axis, in time order.
    T : int, optional
        Steps of the whole sequence (default ``n`` on one rank); sets the partitions.

    Returns
    -------
    out : ndarray, shape (n, B, H)
        The minimizer of 1/2 ||r + J_r d||^2 + lam/2 ||d||^2.

    Notes
    -----
    Partitions give the same step to round-off on any number of ranks and chunks (the
    elimination order differs); one partition is the sequential block Cholesky solve.
    """
    tc = _tc(comm)
    n = res.shape[0]
    T = n if T is None else int(T)
    if out is None:
        out = np.empty_like(res)
    Jb, rb = _as_blocks(np.ascontiguousarray(J), np.ascontiguousarray(res))
    ob = out.reshape(rb.shape)
    R, H = rb.shape[1], rb.shape[2]
    dtype = rb.dtype
    # J_{t+1} and r_{t+1} of the last local point live on the next rank
    Jnext = np.zeros((R, H, H), dtype)
    rnext = np.zeros((R, H), dtype)
    tc.shift(Jb[0], Jnext, *_TAG_J, reverse=True)
    tc.shift(rb[0], rnext, *_TAG_R, reverse=True)
    C = partitions(T, tc.size, res.shape[1], chunks)
    bounds = np.array([n * c // C for c in range(C + 1)], np.int64)
    ends = bounds[1:].copy()
    if tc.rank < tc.size - 1:
        ends -= 1                          # every partition keeps its last unknown as separator
    else:
        ends[:-1] -= 1
    Q = C * R
    F = np.empty((n, R, H, H), dtype)
    lam = dtype.type(lam)
    work = np.empty((Q, 4, H, H), dtype)
    _factor(Jb, Jnext, lam, bounds, ends, F, work)
    lefts = np.zeros((C, R, H), dtype)
    rights = np.zeros((C, R, H), dtype)
    if tc.size * C > 1:
        left = np.ones(C, np.bool_)
        left[0] = tc.rank > 0
        m = 1 + 2 * H
        first = np.empty((C, R, H, m), dtype)
        last = np.empty((C, R, H, m), dtype)
        _corners(Jb, Jnext, rb, rnext, lam, bounds, ends, left, F, first, last, work,
                 np.empty((Q, 2, H, m), dtype))
        # the separators' rows (unknown s = ends[c] of every partition that has one)
        sep = np.minimum(ends, n - 1)
        Mss = np.empty((C, R, H, H), dtype)
        gs = np.empty((C, R, H), dtype)
        Jns = np.empty((C, R, H, H), dtype)
        for c, s in enumerate(sep):
            Jns[c] = Jb[s + 1] if s + 1 < n else Jnext
            gs[c] = -rb[s] + np.einsum("rki,rk->ri", Jns[c], rb[s + 1] if s + 1 < n else rnext)
            Mss[c] = np.einsum("rki,rkj->rij", Jns[c], Jns[c]) + (1 + lam) * np.eye(H, dtype=dtype)
        Js = np.ascontiguousarray(Jb[sep])
        nonempty = (ends > bounds[:-1]).astype(np.int8)
        whole = [tc.allgather(a) for a in (Mss, Js, Jns, gs, nonempty, first, last)]
        whole = [a.reshape((tc.size * C,) + a.shape[2:]) for a in whole]
        s = _reduced_solve(*(a[:-1] for a in whole[:4]), *whole[4:])
        p0 = tc.rank * C
        for c in range(C):
            p = p0 + c
            if p > 0:
                lefts[c] = s[p - 1]
            if p < tc.size * C - 1:
                rights[c] = s[p]
    _substitute(Jb, Jnext, rb, rnext, bounds, ends, F, lefts, rights, ob, np.empty((Q, 2, H), dtype))
    return out


def model_residual(J, d, res, comm=None):
    """r + J_r d: the residual the linear model predicts after the step ``d`` (n, B, H), with
    J (n, B, H, H) or (n, B, H) and res (n, B, H) as in :func:`lm_step`; ndarray (n, B, H)."""
    tc = _tc(comm)
    Jb, rb = _as_blocks(np.ascontiguousarray(J), np.ascontiguousarray(res))
    db = np.ascontiguousarray(d).reshape(rb.shape)
    dprev = np.zeros(rb.shape[1:], rb.dtype)
    tc.shift(db[-1], dprev, *_TAG_D)
    out = np.empty_like(rb)
    _model_residual(Jb, db, dprev, rb, out)
    return out.reshape(res.shape)


__all__ = ["lm_step", "model_residual", "partitions"]
