"""GRU cells: forward and vector-Jacobian-product kernels side by side.

Both cells of this module are one step of size :math:`\\Delta t` of the ODE
:math:`dh/dt = (1 - z) \\odot (n - h)` with the gates at the old state:

.. math::

    a = \\Delta t (1 - z), \\qquad c = \\frac{a}{1 + \\theta a}, \\qquad h' = h + c \\odot (n - h)

* ``classic`` (:math:`\\theta = 0`): forward Euler; at :math:`\\Delta t = 1` exactly ``torch.nn.GRU``,
  :math:`h' = (1 - z) n + z h`.
* ``implicit`` (:math:`\\theta = 1`): the decay term implicit (Moon & Cyr 2022),
  :math:`h' = (h + a n) / (1 + a)`, a convex combination of h and n for every :math:`\\Delta t \\ge 0`.

Gates (PyTorch layout, order r, z, n): :math:`A_x = W_x x + b_x`, :math:`A_h = W_h h + b_h`,
:math:`r = \\sigma(A_x^r + A_h^r)`, :math:`z = \\sigma(A_x^z + A_h^z)`, :math:`n = \\tanh(A_x^n + r A_h^n)`.
In a stack, layer l > 0 takes the new state of layer l - 1 of the same step as its input.

Kernel structure (three layers): drivers in :class:`GRUCell` check, cast and allocate; compiled
kernels ``_layer_*`` take arrays only and write into outputs; ``_block_*`` helpers do
one GEMM on a block of rows and the gate arithmetic of the rows. Every GEMM runs on a fixed block of
the B rows of one state or time point (``config.row_blocks``), so results are bitwise independent of
the number of threads, of how many states are stepped together, and of the number of MPI ranks.

References
----------
K. Cho et al., "Learning phrase representations using RNN encoder-decoder", 2014 (GRU).
G. E. Moon, E. C. Cyr, "Parallel training of GRU networks with a multi-grid solver for long
sequences", ICLR 2022 (implicit GRU).
"""
import math
from typing import NamedTuple

import numba
import numpy as np
from numba import prange

from ..config import JIT, JIT_PAR, resolve_dtype, row_blocks
from ..errors import ConfigError
from .activations import flush_subnormal, sigmoid, tanh
from .base import (CELLS, Cell, LayerStep, Workspace, adjoint_shift, get_cell, scale_pow2,
                   work_array)
from .gru_qadjoint import GRUOffDiagonal


# ----------------------------------------------------------------------------------------------
# Block helpers: rows lo:hi of one state (or time point) of one layer.
#
# Each inner loop runs over the H (or 2H) entries of one row and touches at most four arrays, so
# that the compiler vectorizes it (more arrays exceed its budget of run-time alias checks).
# Gates are kept as G (B, 3H) = [r, z, W_h^n h + b_h^n] (the GEMM's own output, in place) and N (B, H).
# ----------------------------------------------------------------------------------------------

#: Products of at most this many rows with a weight matrix of at most _SMALL_WEIGHT entries run as
#: compiled loops (:func:`_mm_own`) instead of a BLAS call, whose fixed cost dominates a product of
#: one row with a 64 x 192 matrix (0.92 us in OpenBLAS, 0.6 us here, measured on an idle machine);
#: from four rows on, or for larger matrices (1 x 128 by 128 x 384: 4.0 us against 5.4 us),
#: OpenBLAS is faster. Which of the two a product uses depends only on its shapes (rows per state,
#: weight size), never on how many states or time points are stepped together, so results stay
#: bitwise independent of that; MGRIT's chains of such states advance in lockstep
#: (:func:`_stack_chains_lockstep`), their rows in one compiled product.
_SMALL_ROWS = 2
_SMALL_WEIGHT = 3 * 64 * 64


@numba.njit(**JIT)
def _mm(A, W, out, lo, hi):
    """``out[lo:hi] = A[lo:hi] W`` for A (R, K), W (K, M), out (R, M): :func:`_mm_own` for few
    rows of a small W, otherwise one BLAS GEMM (see ``_SMALL_ROWS``)."""
    K, M = W.shape
    if hi - lo > _SMALL_ROWS or K * M > _SMALL_WEIGHT:
        np.dot(A[lo:hi], W, out[lo:hi])
    else:
        _mm_own(A, W, out, lo, hi)


@numba.njit(**JIT)
def _mm_own(A, W, out, lo, hi):
    """``out[lo:hi] = A[lo:hi] W`` in compiled loops. Every row is the sum over k in ascending
    order, four terms at a time (``o += a_k W_k + a_{k+1} W_{k+1} + a_{k+2} W_{k+2} +
    a_{k+3} W_{k+3}``), vectorized over the M columns; rows go in fours that share each load of
    W, with the same arithmetic per row, so a row's result never depends on the rows beside it."""
    K, M = W.shape
    K4 = K - K % 4
    b = lo
    while b + 4 <= hi:
        o0, o1, o2, o3 = out[b], out[b + 1], out[b + 2], out[b + 3]
        for m in range(M):
            o0[m] = 0.0
            o1[m] = 0.0
            o2[m] = 0.0
            o3[m] = 0.0
        for k in range(0, K4, 4):
            a00, a01, a02, a03 = A[b, k], A[b, k + 1], A[b, k + 2], A[b, k + 3]
            a10, a11, a12, a13 = A[b + 1, k], A[b + 1, k + 1], A[b + 1, k + 2], A[b + 1, k + 3]
            a20, a21, a22, a23 = A[b + 2, k], A[b + 2, k + 1], A[b + 2, k + 2], A[b + 2, k + 3]
            a30, a31, a32, a33 = A[b + 3, k], A[b + 3, k + 1], A[b + 3, k + 2], A[b + 3, k + 3]
            for m in range(M):
                w0, w1, w2, w3 = W[k, m], W[k + 1, m], W[k + 2, m], W[k + 3, m]
                o0[m] += a00 * w0 + a01 * w1 + a02 * w2 + a03 * w3
                o1[m] += a10 * w0 + a11 * w1 + a12 * w2 + a13 * w3
                o2[m] += a20 * w0 + a21 * w1 + a22 * w2 + a23 * w3
                o3[m] += a30 * w0 + a31 * w1 + a32 * w2 + a33 * w3
        for k in range(K4, K):
            a0, a1, a2, a3 = A[b, k], A[b + 1, k], A[b + 2, k], A[b + 3, k]
            for m in range(M):
                w0 = W[k, m]
                o0[m] += a0 * w0
                o1[m] += a1 * w0
                o2[m] += a2 * w0
                o3[m] += a3 * w0
        b += 4
    for b in range(b, hi):
        o = out[b]
        for m in range(M):
            o[m] = 0.0
        for k in range(0, K4, 4):
            a0, a1, a2, a3 = A[b, k], A[b, k + 1], A[b, k + 2], A[b, k + 3]
            for m in range(M):
                o[m] += a0 * W[k, m] + a1 * W[k + 1, m] + a2 * W[k + 2, m] + a3 * W[k + 3, m]
        for k in range(K4, K):
            a0 = A[b, k]
            for m in range(M):
                o[m] += a0 * W[k, m]


@numba.njit(**JIT)
def _matched(d, z, theta, one):
    """The update coefficient c and dc/dz of a *matched* coarse cell (theta < 0): the exact
    composition, with the gates and the candidate frozen, of d unit steps of the fine cell with
    theta_f = -theta - 1 (classic: -1, implicit: -2). One unit step keeps q = 1 - c_f of the gap
    n - h, so d steps keep q^d: c = 1 - q^d (d = 1 is the fine step; d = 0 the identity)."""
    af = one - z
    den = one + (-theta - one) * af
    q = one - af / den
    if d == 0:
        return one - one, one - one
    return one - q ** d, -d * q ** (d - one) / (den * den)


@numba.njit(**JIT)
def _block_forward(ax, h, WhT, bh, dt, theta, hnew, G, N, lo, hi):
    """Rows lo:hi: G = h W_h^T (one product), then gates and new state. ax (B, 3H) includes b_x."""
    _mm(h, WhT, G, lo, hi)
    _block_gates(ax, h, bh, dt, theta, hnew, G, N, lo, hi)


@numba.njit(**JIT)
def _block_gates(ax, h, bh, dt, theta, hnew, G, N, lo, hi):
    """Rows lo:hi after the GEMM G = h W_h^T: gates (in place in G, and N) and the new state.
    dt (B,): the step size of each row; a row with dt 0 keeps its state bit for bit."""
    H = h.shape[1]
    one = h.dtype.type(1.0)
    for b in range(lo, hi):
        for j in range(2 * H):
            G[b, j] = sigmoid(G[b, j] + ax[b, j] + bh[j])
        for j in range(2 * H, 3 * H):
            G[b, j] += bh[j]
        for j in range(H):
            N[b, j] = tanh(ax[b, 2 * H + j] + G[b, j] * G[b, 2 * H + j])
        d = dt[b]
        if d == 0:              # a padded step: exactly the identity (no rounding of h + 0 (n - h))
            for j in range(H):
                hnew[b, j] = h[b, j]
            continue
        if theta < 0:           # a matched coarse cell (the branch outside the hot loop)
            for j in range(H):
                c = _matched(d, G[b, H + j], theta, one)[0]
                hnew[b, j] = h[b, j] + c * (N[b, j] - h[b, j])
            continue
        for j in range(H):
            a = d * (one - G[b, H + j])
            c = a / (one + theta * a)
            hnew[b, j] = h[b, j] + c * (N[b, j] - h[b, j])


@numba.njit(**JIT)
def _block_vjp(lam, h, dt, theta, G, N, Wh, dax, dah, lam_out, work, lo, hi):
    """Rows lo:hi: pre-activation cotangents dax, dah (B, 3H), then
    lam_out = lam (1 - c) + dah W_h (one GEMM). ``work`` (B, H) is scratch."""
    H = h.shape[1]
    _block_gate_vjp(lam, h, dt, theta, G, N, dax, dah, work, lo, hi)
    _mm(dah, Wh, lam_out, lo, hi)
    for b in range(lo, hi):
        if dt[b] == 0:          # a padded step: the adjoint passes unchanged
            for j in range(H):
                lam_out[b, j] = lam[b, j]
        else:
            for j in range(H):
                lam_out[b, j] = flush_subnormal(lam_out[b, j] + work[b, j])


@numba.njit(**JIT)
def _block_gate_vjp(lam, h, dt, theta, G, N, dax, dah, work, lo, hi):
    """Rows lo:hi: the pre-activation cotangents dax, dah (B, 3H) of the adjoint ``lam`` of the new
    state, and in ``work`` (B, H) the direct term lam (1 - c) of (dh'/dh)^T lam.

    Cotangents and adjoints below the smallest normal number are flushed to zero (as a CPU's
    FTZ/DAZ modes do): an adjoint that decays backward in time passes through the subnormal range,
    where every operation takes a slow microcode path (measured at R1: the adjoint sweep and the
    parameter-gradient GEMMs 25-40 % slower), while such values are far below any gradient's
    resolution."""
    H = h.shape[1]
    one = h.dtype.type(1.0)
    zero = h.dtype.type(0.0)
    for b in range(lo, hi):
        d = dt[b]
        if d == 0:              # a padded step: no cotangents, the adjoint passes unchanged
            for j in range(3 * H):
                dax[b, j] = zero
                dah[b, j] = zero
            for j in range(H):
                work[b, j] = lam[b, j]
            continue
        if theta < 0:           # a matched coarse cell: dp_n, dp_z and the direct term
            for j in range(H):
                z = G[b, H + j]
                c, dcdz = _matched(d, z, theta, one)
                dax[b, 2 * H + j] = lam[b, j] * c * (one - N[b, j] * N[b, j])
                dax[b, H + j] = lam[b, j] * dcdz * (N[b, j] - h[b, j]) * z * (one - z)
                work[b, j] = lam[b, j] * (one - c)
        else:
            for j in range(H):      # n gate: dp_n = lam c (1 - n^2)
                a = d * (one - G[b, H + j])
                c = a / (one + theta * a)
                dax[b, 2 * H + j] = lam[b, j] * c * (one - N[b, j] * N[b, j])
            for j in range(H):      # z gate: dp_z = -dt lam (n - h) / (1 + theta a)^2 z (1 - z)
                z = G[b, H + j]
                den = one + theta * d * (one - z)
                dax[b, H + j] = -d * lam[b, j] * (N[b, j] - h[b, j]) / (den * den) * z * (one - z)
        for j in range(H):      # r gate: dp_r = dp_n A_h^n r (1 - r)
            r = G[b, j]
            dax[b, j] = dax[b, 2 * H + j] * G[b, 2 * H + j] * r * (one - r)
        for j in range(3 * H):
            dax[b, j] = flush_subnormal(dax[b, j])
        for j in range(2 * H):
            dah[b, j] = dax[b, j]
        for j in range(H):
            dah[b, 2 * H + j] = flush_subnormal(dax[b, 2 * H + j] * G[b, j])
        if theta >= 0:
            for j in range(H):      # direct term of dh'/dh (matched cells: above)
                a = d * (one - G[b, H + j])
                work[b, j] = lam[b, j] * (one - a / (one + theta * a))


@numba.njit(**JIT)
def _row_jacobian_coeffs(h, dt, theta, G, N, b, j):
    """The coefficients of row j of dh'/dh = diag(d) + diag(alpha_r) W_h^r + diag(alpha_z) W_h^z
    + diag(alpha_n) W_h^n for batch row b (the same partial derivatives as :func:`_block_gate_vjp`)."""
    H = h.shape[1]
    one = h.dtype.type(1.0)
    r, z, n = G[b, j], G[b, H + j], N[b, j]
    d = dt[b]
    if theta < 0:
        c, dcdz = _matched(d, z, theta, one)
        dpn = c * (one - n * n)
        return (one - c, dpn * G[b, 2 * H + j] * r * (one - r),
                dcdz * (n - h[b, j]) * z * (one - z), dpn * r)
    a = d * (one - z)
    den = one + theta * a
    c = a / den
    dpn = c * (one - n * n)
    return (one - c, dpn * G[b, 2 * H + j] * r * (one - r),
            -d * (n - h[b, j]) / (den * den) * z * (one - z), dpn * r)


# ----------------------------------------------------------------------------------------------
# Layer kernels: a whole sequence (serial solver) or K independent states (step API).
# ----------------------------------------------------------------------------------------------

@numba.njit(**JIT_PAR)
def _project(x, WT, b, out):
    """out[t] = x[t] WT (+ b if b has entries), one GEMM per t (so each t's result never depends on
    how many t are projected together). x (T, B, I), WT (I, M) contiguous, b (M,) or (0,), out (T, B, M)."""
    T, B = x.shape[0], x.shape[1]
    M = out.shape[2]
    has_bias = b.shape[0] == M
    for t in prange(T):
        _affine_rows(x[t], WT, b, has_bias, out[t])


@numba.njit(**JIT)
def _affine_rows(x, WT, b, has_bias, out):
    """out = x WT (+ b): all B rows of one time point or state, x (B, I), out (B, M)."""
    _mm(x, WT, out, 0, x.shape[0])
    if has_bias:
        for i in range(x.shape[0]):
            for m in range(out.shape[1]):
                out[i, m] += b[m]


@numba.njit(**JIT_PAR)
def _layer_sequence_forward(ax, hs, WhT, bh, dt, theta, G, N, nblk):
    """Serial sweep of one layer: hs[t+1] = step(hs[t], ax[t]) for t = 0..T-1.

    ax (T, B, 3H); hs (T+1, B, H) with hs[0] the initial state; dt (T, B); gates G (T, B, 3H) and
    N (T, B, H) to keep them for the adjoint, or (1, B, .) as work space.

    Batch rows are independent over the whole sweep, so each thread takes a row block through all
    T steps: one parallel region per sweep, not one per step.
    """
    T = ax.shape[0]
    B = hs.shape[1]
    keep = G.shape[0] == T
    for j in prange(nblk):
        lo = j * B // nblk
        hi = (j + 1) * B // nblk
        for t in range(T):
            g = t if keep else 0
            _block_forward(ax[t], hs[t], WhT, bh, dt[t], theta, hs[t + 1], G[g], N[g], lo, hi)


@numba.njit(**JIT_PAR)
def _layer_sequence_vjp(lam_last, dxin, hs, dt, theta, G, N, Wh, dax, dah, lam, work, ex, shift,
                        nblk):
    """Backpropagation through time for one layer, with the adjoint's scale kept apart.

    Parameters
    ----------
    lam_last : ndarray, shape (B, H)
        Adjoint at point T.
    dxin : ndarray, shape (T, B, H) or (0, B, H)
        Cotangent arriving at hs[t+1] from the layer above (none: shape (0, B, H)), at the same
        scale as ``lam_last``.
    hs, dt, theta, G, N, Wh
        Trajectory (T+1, B, H), step sizes (T, B), the cell's theta, gates (T, B, 3H), (T, B, H)
        and recurrent weights (3H, H) of the layer.
    dax, dah : ndarray, shape (T, B, 3H)
        Receive the pre-activation cotangents of every step, step t of row b at scale
        ``2^-ex[t, b]`` (the true ones are ``2^ex[t, b]`` times them).
    lam : ndarray, shape (2, B, H)
        Work space; the adjoint at point 0 ends in lam[T % 2], row b at scale ``2^-ex[0, b]``
        (T > 0).
    work : ndarray, shape (B, H)
        Work space.
    ex : ndarray, shape (T, B), int64
        Receives the exponent of each step's cotangents (0 where no rescaling happened;
        nondecreasing backward in time, so ``ex[0]`` holds each row's largest).
    shift : int
        The scaling's exponent s (:func:`adjoint_shift`): before step t (after adding
        ``dxin[t]``), a row whose largest entry exceeds 2^s in magnitude (and is finite) is
        multiplied by 2^-s, exactly, and s is added to the row's exponent.
    nblk : int
        Row blocks (one parallel region: each thread takes a row block backward through all
        T steps; rows are independent, so each keeps its own exponent).

    Notes
    -----
    Without a rescaling (every ``ex`` 0) every operation is the one of the unscaled sweep: the
    results are bit for bit the same. ``dxin`` is added to a row of exponent e times 2^-e (one
    rounding; entries below the smallest normal number flushed to zero, as the sweep does).
    """
    T = dax.shape[0]
    B, H = hs.shape[1], hs.shape[2]
    has_in = dxin.shape[0] == T
    zero = lam.dtype.type(0.0)
    thr = lam.dtype.type(math.ldexp(1.0, shift))
    down = lam.dtype.type(math.ldexp(1.0, -shift))
    e = np.zeros(B, np.int64)           # each row's exponent
    f = np.ones(B, lam.dtype)           # 2^-e: the scale of dxin in a row's units
    for j in prange(nblk):
        lo = j * B // nblk
        hi = (j + 1) * B // nblk
        for b in range(lo, hi):
            for i in range(H):
                lam[0, b, i] = lam_last[b, i]
        for t in range(T - 1, -1, -1):
            p = (T - 1 - t) % 2
            if has_in:
                for b in range(lo, hi):
                    if e[b] == 0:
                        for i in range(H):
                            lam[p, b, i] += dxin[t, b, i]
                    else:
                        fb = f[b]
                        for i in range(H):
                            lam[p, b, i] += flush_subnormal(dxin[t, b, i] * fb)
            for b in range(lo, hi):
                m = zero
                for i in range(H):
                    m = max(m, abs(lam[p, b, i]))
                if m > thr and not math.isinf(m):
                    for i in range(H):
                        lam[p, b, i] = flush_subnormal(lam[p, b, i] * down)
                    e[b] += shift
                    f[b] = lam.dtype.type(math.ldexp(1.0, -e[b]))
                ex[t, b] = e[b]
            _block_vjp(lam[p], hs[t], dt[t], theta, G[t], N[t], Wh, dax[t], dah[t], lam[1 - p],
                       work, lo, hi)


@numba.njit(**JIT_PAR)
def _rescale_rows(a, ex, E):
    """``a[t, b] *= 2^(ex[t, b] - E)`` for a (T, B, M), ex (T, B) int64 with ex <= E: brings the
    rows of a sweep's cotangents to the common exponent E (exact, except that results below the
    smallest normal number are flushed to zero: they are below 2^-126 (float32) of the largest
    contributions, far under the gradient's round-off)."""
    T, B, M = a.shape
    for t in prange(T):
        for b in range(B):
            s = ex[t, b] - E
            if s != 0:
                fb = a.dtype.type(math.ldexp(1.0, s))
                for m in range(M):
                    a[t, b, m] = flush_subnormal(a[t, b, m] * fb)


@numba.njit(**JIT_PAR)
def _layer_step_forward(ax, h, WhT, bh, dt, theta, hnew, G, N, nblk):
    """One step of K independent states of one layer: all arrays (K, B, .), dt (K, B)."""
    K, B = h.shape[0], h.shape[1]
    for q in prange(K * nblk):
        k = q // nblk
        j = q - k * nblk
        lo = j * B // nblk
        hi = (j + 1) * B // nblk
        _block_forward(ax[k], h[k], WhT, bh, dt[k], theta, hnew[k], G[k], N[k], lo, hi)


@numba.njit(**JIT_PAR)
def _layer_step_vjp(lam, h, dt, theta, G, N, Wh, dax, dah, lam_out, work, nblk):
    """VJP of one step of K independent states of one layer: all arrays (K, B, .), dt (K, B)."""
    K, B = h.shape[0], h.shape[1]
    for q in prange(K * nblk):
        k = q // nblk
        j = q - k * nblk
        lo = j * B // nblk
        hi = (j + 1) * B // nblk
        _block_vjp(lam[k], h[k], dt[k], theta, G[k], N[k], Wh, dax[k], dah[k], lam_out[k],
                   work[k], lo, hi)


@numba.njit(**JIT_PAR)
def _layer_fused_forward(ax, h, WhT, bh, dt, theta, hnew, G, N, group):
    """One step of K independent states of one layer, ``group`` states per GEMM (one GEMM of
    group * B rows, much faster than K GEMMs of B rows when B and H are small; the rounding of a
    state's GEMM may then depend on the grouping, which is fixed by K and ``group``)."""
    K, B, H = h.shape
    ngroups = -(-K // group)
    for q in prange(ngroups):
        k0 = q * group
        k1 = min(K, k0 + group)
        rows = (k1 - k0) * B
        np.dot(h[k0:k1].reshape((rows, H)), WhT, G[k0:k1].reshape((rows, 3 * H)))
        for k in range(k0, k1):
            _block_gates(ax[k], h[k], bh, dt[k], theta, hnew[k], G[k], N[k], 0, B)


@numba.njit(**JIT_PAR)
def _layer_gate_vjp(lam, h, dt, theta, G, N, dax, dah, work):
    """Pre-activation cotangents of K independent steps of one layer (no GEMM): all (K, B, .)."""
    K, B = h.shape[0], h.shape[1]
    for k in prange(K):
        _block_gate_vjp(lam[k], h[k], dt[k], theta, G[k], N[k], dax[k], dah[k], work[k], 0, B)


@numba.njit(**JIT_PAR)
def _layer_jacobian_dense(h, dt, theta, G, N, Wh, J):
    """J[k, b] = dh'/dh (H, H) of K steps of one layer at the gates G, N: J (K, B, H, H)."""
    K, B, H = h.shape
    for q in prange(K * B):
        k = q // B
        b = q - k * B
        for i in range(H):
            d, ar, az, an = _row_jacobian_coeffs(h[k], dt[k], theta, G[k], N[k], b, i)
            for m in range(H):
                J[k, b, i, m] = ar * Wh[i, m] + az * Wh[H + i, m] + an * Wh[2 * H + i, m]
            J[k, b, i, i] += d


@numba.njit(**JIT_PAR)
def _layer_jacobian_diag(h, dt, theta, G, N, Wh, J):
    """J[k, b] = diag(dh'/dh) (H,) of K steps of one layer at the gates G, N: J (K, B, H)."""
    K, B, H = h.shape
    for q in prange(K * B):
        k = q // B
        b = q - k * B
        for i in range(H):
            d, ar, az, an = _row_jacobian_coeffs(h[k], dt[k], theta, G[k], N[k], b, i)
            J[k, b, i] = d + ar * Wh[i, i] + az * Wh[H + i, i] + an * Wh[2 * H + i, i]


# ----------------------------------------------------------------------------------------------
# Stack kernels: whole steps of all L layers of many states, in place, for MGRIT's propagators.
#
# A state is u[i] (L, B, H). Step s of a level maps its old state to its new state with the
# layer-0 projection ax[s] (B, 3H) and the step size dt[s]. A *chain* c advances
# X[rd[c] + i] -> Y[wr[c] + i] for i < lens[c] with step s = starts[c] + i, adding g[s + 1] when
# g has entries. With X = Y, rd = starts, wr = starts + 1 a chain sweeps consecutive points (an
# F-relaxation interval, a coarsest-level sweep); with lens = 1 the chains are independent steps.
# In *residual* mode (res has C entries) the last step of chain c is not stored but compared:
# res[c] = Phi_s(X[..]) + g[s + 1] - Y[wr[c] + lens[c] - 1] (the FAS residual at a C-point).
# Layers and row blocks run in the order of the serial sweep's kernels with the same block
# helpers, so a state's result is bitwise what the serial sweep computes for it.
# ----------------------------------------------------------------------------------------------

@numba.njit(**JIT)
def _stack_step(ax, x, y, dt, WhT, bh, WxT, bx, theta, G, N, Yk, k, axl, nblk):
    """One step of the stack: y (L, B, H) = Phi(x (L, B, H)); gates into G[:, k], N[:, k]
    (L, *, B, .), and the new states of layers 0 .. L-2 (the inputs of the layers above) into
    Yk[:, k] when Yk has entries."""
    L, B = x.shape[0], x.shape[1]
    for l in range(L):
        if l == 0:
            a = ax
        else:
            _affine_rows(y[l - 1], WxT[l - 1], bx[l - 1], True, axl)
            a = axl
        for j in range(nblk):
            _block_forward(a, x[l], WhT[l], bh[l], dt, theta, y[l], G[l, k], N[l, k],
                           j * B // nblk, (j + 1) * B // nblk)
        if l < L - 1 and Yk.shape[1] > 0:
            Yk[l, k] = y[l]


@numba.njit(**JIT)
def _chain_store(y, g, s, Y, w, res, c, last):
    """Where a chain's step result y goes: Y[w] = y (+ g[s + 1]), or in residual mode at the
    chain's last step res[c] = y (+ g[s + 1]) - Y[w]. Returns the array the next step reads."""
    has_g = g.shape[0] > 0
    if last and res.shape[0] > 0:
        r = res[c]
        if has_g:
            r[...] = y + g[s + 1] - Y[w]
        else:
            r[...] = y - Y[w]
    elif has_g:
        Y[w] = y + g[s + 1]


@numba.njit(**JIT_PAR)
def _stack_chains(ax, dt, X, rd, Y, wr, starts, lens, g, res, WhT, bh, WxT, bx, theta, keep, G, N,
                  Yk, nblk, nchunks):
    """Forward chains (see the section comment). With ``keep``, G, N (L, n, B, .) and Yk
    (L-1, n, B, H) receive the gates and layer outputs of every step s at index s (otherwise they
    are not touched). ``nchunks`` blocks of chains run in parallel; results do not depend on it."""
    C = starts.shape[0]
    L, B, H = X.shape[1], X.shape[2], X.shape[3]
    direct = g.shape[0] == 0
    for q in prange(nchunks):
        c0, c1 = q * C // nchunks, (q + 1) * C // nchunks
        if keep:
            Gq, Nq, Yq = G, N, Yk
        else:
            Gq = np.empty((L, 1, B, 3 * H), X.dtype)
            Nq = np.empty((L, 1, B, H), X.dtype)
            Yq = np.empty((max(L - 1, 0), 0, B, H), X.dtype)
        tmp = np.empty((L, B, H), X.dtype)
        axl = np.empty((B, 3 * H), X.dtype)
        for c in range(c0, c1):
            for i in range(lens[c]):
                s = starts[c] + i
                w = wr[c] + i
                last = i == lens[c] - 1 and res.shape[0] > 0
                y = Y[w] if direct and not last else tmp      # no g: write in place
                _stack_step(ax[s], X[rd[c] + i], y, dt[s], WhT, bh, WxT, bx, theta, Gq, Nq, Yq,
                            s if keep else 0, axl, nblk)
                _chain_store(y, g, s, Y, w, res, c, i == lens[c] - 1)


@numba.njit(**JIT)
def _stack_step_vjp(lam, lam_old, h, dt, G, N, kg, Wh, Wx, theta, DAX, DAH, k, lam_l, dxin, work,
                    nblk):
    """VJP of one step of the stack at its linearization (old states h (L, B, H), gates
    G[:, kg], N[:, kg]): lam_old (L, B, H) = (dPhi/du)^T lam; the pre-activation cotangents go to
    DAX[:, k], DAH[:, k] (L, *, B, 3H)."""
    L, B = h.shape[0], h.shape[1]
    for l in range(L - 1, -1, -1):
        if l == L - 1:
            lam_l[...] = lam[l]
        else:
            for b in range(B):
                for m in range(lam_l.shape[1]):
                    lam_l[b, m] = lam[l, b, m] + dxin[b, m]
        for j in range(nblk):
            _block_vjp(lam_l, h[l], dt, theta, G[l, kg], N[l, kg], Wh[l], DAX[l, k], DAH[l, k],
                       lam_old[l], work, j * B // nblk, (j + 1) * B // nblk)
        if l > 0:
            _mm(DAX[l, k], Wx[l - 1], dxin, 0, B)


@numba.njit(**JIT_PAR)
def _stack_chains_vjp(dt, X, rd, Y, wr, starts, lens, g, res, hlin, fidx, G, N, Wh, Wx, theta,
                      keep, DAX, DAH, nblk, nchunks):
    """Adjoint chains: Y[wr + i] = (dPhi_s/du)^T X[rd + i] (+ g[s + 1]) for steps s = starts + i
    (residual mode as the forward), each linearized at hlin[fidx[s]] (L, B, H) with gates
    G[:, fidx[s]], N[:, fidx[s]]; with ``keep`` the cotangents go to DAX, DAH (L, n, B, 3H) at
    index fidx[s]."""
    C = starts.shape[0]
    L, B, H = X.shape[1], X.shape[2], X.shape[3]
    direct = g.shape[0] == 0
    for q in prange(nchunks):
        c0, c1 = q * C // nchunks, (q + 1) * C // nchunks
        if keep:
            Aq, Hq = DAX, DAH
        else:
            Aq = np.empty((L, 1, B, 3 * H), X.dtype)
            Hq = np.empty((L, 1, B, 3 * H), X.dtype)
        tmp = np.empty((L, B, H), X.dtype)
        lam_l = np.empty((B, H), X.dtype)
        dxin = np.empty((B, H), X.dtype)
        work = np.empty((B, H), X.dtype)
        for c in range(c0, c1):
            for i in range(lens[c]):
                s = starts[c] + i
                f = fidx[s]
                w = wr[c] + i
                last = i == lens[c] - 1 and res.shape[0] > 0
                y = Y[w] if direct and not last else tmp
                _stack_step_vjp(X[rd[c] + i], y, hlin[f], dt[s], G, N, f, Wh, Wx, theta, Aq, Hq,
                                f if keep else 0, lam_l, dxin, work, nblk)
                _chain_store(y, g, s, Y, w, res, c, i == lens[c] - 1)


#: Chains that :func:`_stack_chains_lockstep` advances together.
_LOCKSTEP = 4


@numba.njit(**JIT)
def _gather_rows(src, A, R):
    """A[R:R+B] = src (B, K); returns R + B."""
    for b in range(src.shape[0]):
        A[R + b] = src[b]
    return R + src.shape[0]


@numba.njit(**JIT_PAR)
def _stack_chains_lockstep(ax, dt, X, rd, Y, wr, starts, lens, g, res, WhT, bh, WxT, bx, theta,
                           keep, G, N, Yk, nchunks):
    """:func:`_stack_chains` for states of few rows with small weights (those whose products
    :func:`_mm` runs as :func:`_mm_own`): _LOCKSTEP chains advance together, position by
    position, and each layer's products of their rows are one :func:`_mm_own` call, which loads
    the weights once for four rows (0.33 against 0.6 us per row for 64 x 192 here). Every row's
    arithmetic is that of :func:`_stack_chains`, so the results are bitwise the same."""
    C = starts.shape[0]
    L, B, H = X.shape[1], X.shape[2], X.shape[3]
    S = _LOCKSTEP
    direct = g.shape[0] == 0
    for q in prange(nchunks):
        c0, c1 = q * C // nchunks, (q + 1) * C // nchunks
        A = np.empty((S * B, H), X.dtype)
        Pg = np.empty((S * B, 3 * H), X.dtype)          # recurrent products
        Pa = np.empty((S * B, 3 * H), X.dtype)          # input projections (layers above 0)
        tmp = np.empty((S, L, B, H), X.dtype)
        Gw = np.empty((L, S, B, 3 * H), X.dtype)         # gates not kept
        Nw = np.empty((L, S, B, H), X.dtype)
        for c in range(c0, c1, S):
            ce = min(c + S, c1)
            n = 0
            for cc in range(c, ce):
                n = max(n, lens[cc])
            for i in range(n):
                for l in range(L):
                    if l > 0:
                        R = 0
                        for cc in range(c, ce):
                            if i < lens[cc]:
                                last = i == lens[cc] - 1 and res.shape[0] > 0
                                y = Y[wr[cc] + i] if direct and not last else tmp[cc - c]
                                R = _gather_rows(y[l - 1], A, R)
                        _mm_own(A, WxT[l - 1], Pa, 0, R)
                        for r in range(R):
                            for m in range(3 * H):
                                Pa[r, m] += bx[l - 1, m]
                    R = 0
                    for cc in range(c, ce):
                        if i < lens[cc]:
                            R = _gather_rows(X[rd[cc] + i][l], A, R)
                    _mm_own(A, WhT[l], Pg, 0, R)
                    R = 0
                    for cc in range(c, ce):
                        if i < lens[cc]:
                            s = starts[cc] + i
                            last = i == lens[cc] - 1 and res.shape[0] > 0
                            y = Y[wr[cc] + i] if direct and not last else tmp[cc - c]
                            Gd = G[l, s] if keep else Gw[l, cc - c]
                            Nd = N[l, s] if keep else Nw[l, cc - c]
                            for b in range(B):
                                Gd[b] = Pg[R + b]
                            a = ax[s] if l == 0 else Pa[R:R + B]
                            _block_gates(a, X[rd[cc] + i][l], bh[l], dt[s], theta, y[l], Gd, Nd,
                                         0, B)
                            if keep and l < L - 1:
                                Yk[l, s] = y[l]
                            R += B
                for cc in range(c, ce):
                    if i < lens[cc]:
                        last = i == lens[cc] - 1 and res.shape[0] > 0
                        y = Y[wr[cc] + i] if direct and not last else tmp[cc - c]
                        _chain_store(y, g, starts[cc] + i, Y, wr[cc] + i, res, cc,
                                     i == lens[cc] - 1)


@numba.njit(**JIT_PAR)
def _stack_chains_vjp_lockstep(dt, X, rd, Y, wr, starts, lens, g, res, hlin, fidx, G, N, Wh, Wx,
                               theta, keep, DAX, DAH, nchunks):
    """:func:`_stack_chains_vjp` with _LOCKSTEP chains together, as :func:`_stack_chains_lockstep`
    (every row's arithmetic that of :func:`_block_vjp`: bitwise the same results)."""
    C = starts.shape[0]
    L, B, H = X.shape[1], X.shape[2], X.shape[3]
    S = _LOCKSTEP
    direct = g.shape[0] == 0
    for q in prange(nchunks):
        c0, c1 = q * C // nchunks, (q + 1) * C // nchunks
        A = np.empty((S * B, 3 * H), X.dtype)
        P = np.empty((S * B, H), X.dtype)
        tmp = np.empty((S, L, B, H), X.dtype)
        lam_l = np.empty((S, B, H), X.dtype)
        dxin = np.empty((S, B, H), X.dtype)
        work = np.empty((S, B, H), X.dtype)
        Aw = np.empty((L, S, B, 3 * H), X.dtype)         # cotangents not kept
        Hw = np.empty((L, S, B, 3 * H), X.dtype)
        for c in range(c0, c1, S):
            ce = min(c + S, c1)
            n = 0
            for cc in range(c, ce):
                n = max(n, lens[cc])
            for i in range(n):
                for l in range(L - 1, -1, -1):
                    R = 0
                    for cc in range(c, ce):
                        if i < lens[cc]:
                            j = cc - c
                            s = starts[cc] + i
                            f = fidx[s]
                            lam = X[rd[cc] + i]
                            if l == L - 1:
                                lam_l[j] = lam[l]
                            else:
                                for b in range(B):
                                    for m in range(H):
                                        lam_l[j, b, m] = lam[l, b, m] + dxin[j, b, m]
                            dax = DAX[l, f] if keep else Aw[l, j]
                            dah = DAH[l, f] if keep else Hw[l, j]
                            _block_gate_vjp(lam_l[j], hlin[f][l], dt[s], theta, G[l, f], N[l, f],
                                            dax, dah, work[j], 0, B)
                            R = _gather_rows(dah, A, R)
                    _mm_own(A, Wh[l], P, 0, R)
                    R = 0
                    for cc in range(c, ce):
                        if i < lens[cc]:
                            j = cc - c
                            last = i == lens[cc] - 1 and res.shape[0] > 0
                            y = Y[wr[cc] + i] if direct and not last else tmp[j]
                            dts = dt[starts[cc] + i]
                            for b in range(B):
                                if dts[b] == 0:         # a padded step (as _block_vjp)
                                    for m in range(H):
                                        y[l, b, m] = lam_l[j, b, m]
                                else:
                                    for m in range(H):
                                        y[l, b, m] = flush_subnormal(P[R + b, m] + work[j, b, m])
                            R += B
                    if l > 0:
                        R = 0
                        for cc in range(c, ce):
                            if i < lens[cc]:
                                f = fidx[starts[cc] + i]
                                R = _gather_rows(DAX[l, f] if keep else Aw[l, cc - c], A, R)
                        _mm_own(A, Wx[l - 1], P, 0, R)
                        R = 0
                        for cc in range(c, ce):
                            if i < lens[cc]:
                                for b in range(B):
                                    dxin[cc - c, b] = P[R + b]
                                R += B
                for cc in range(c, ce):
                    if i < lens[cc]:
                        last = i == lens[cc] - 1 and res.shape[0] > 0
                        y = Y[wr[cc] + i] if direct and not last else tmp[cc - c]
                        _chain_store(y, g, starts[cc] + i, Y, wr[cc] + i, res, cc,
                                     i == lens[cc] - 1)


@numba.njit(**JIT_PAR)
def _layer_newton_diag(ax, h, WhT, Wh, bh, dt, theta, scale, J, b, group):
    """quasi-DEER's linearization of K independent states of one layer in one pass, without
    keeping the gates: per state and row, f = step(h), J = scale diag(dh'/dh) and b = f - J h.
    The same products (``group`` states per GEMM) and arithmetic as :func:`_layer_fused_forward`
    followed by :func:`_layer_jacobian_diag` and the offset, so bitwise the same J and b."""
    K, B, H = h.shape
    ngroups = -(-K // group)
    for q in prange(ngroups):
        k0 = q * group
        k1 = min(K, k0 + group)
        rows = (k1 - k0) * B
        Gs = np.empty((rows, 3 * H), h.dtype)
        N = np.empty((B, H), h.dtype)
        f = np.empty((B, H), h.dtype)
        np.dot(h[k0:k1].reshape((rows, H)), WhT, Gs)
        for k in range(k0, k1):
            G = Gs[(k - k0) * B:(k - k0 + 1) * B]
            _block_gates(ax[k], h[k], bh, dt[k], theta, f, G, N, 0, B)
            for r in range(B):
                for i in range(H):
                    d, ar, az, an = _row_jacobian_coeffs(h[k], dt[k], theta, G, N, r, i)
                    jd = scale * (d + ar * Wh[i, i] + az * Wh[H + i, i] + an * Wh[2 * H + i, i])
                    J[k, r, i] = jd
                    b[k, r, i] = f[r, i] - jd * h[k, r, i]


@numba.njit(**JIT_PAR)
def _outer_partials(dA, X, partial):
    """partial[c] = dA[rows of chunk c]^T X[rows of chunk c]; dA (R, M), X (R, I), partial (C, M, I)."""
    R = dA.shape[0]
    C = partial.shape[0]
    for c in prange(C):
        lo = c * R // C
        hi = (c + 1) * R // C
        np.dot(dA[lo:hi].T, X[lo:hi], partial[c])


# ----------------------------------------------------------------------------------------------
# Drivers
# ----------------------------------------------------------------------------------------------

#: A weight-gradient reduction over R rows sums GRAD_CHUNKS partial GEMMs of R / GRAD_CHUNKS rows in a
#: fixed order: the result never depends on the number of threads, and 8 chunks keep 1, 2, 4 or 8
#: threads evenly busy. Short reductions use fewer chunks (at least _MIN_CHUNK_ROWS rows each).
GRAD_CHUNKS = 8
#: Rows per GEMM of :meth:`GRUCell.layer_step` with ``fused=True``.
FUSED_ROWS = 2048
_MIN_CHUNK_ROWS = 256


def accumulate_outer(dA, X, out):
    """``out += dA^T X`` summed over all leading axes, in a fixed order.

    Parameters
    ----------
    dA : ndarray, shape (..., M)
    X : ndarray, shape (..., I), same leading shape and dtype as ``dA``
    out : ndarray, shape (M, I), same dtype; accumulated in place
    """
    dA2 = np.ascontiguousarray(dA).reshape(-1, dA.shape[-1])
    X2 = np.ascontiguousarray(X).reshape(-1, X.shape[-1])
    R = dA2.shape[0]
    if R == 0:
        return out
    chunks = max(1, min(GRAD_CHUNKS, R // _MIN_CHUNK_ROWS))
    partial = np.empty((chunks,) + out.shape, dtype=out.dtype)
    _outer_partials(dA2, X2, partial)
    for c in range(chunks):
        out += partial[c]
    return out


def project(x, W, b=None, out=None):
    """Affine map of every row: ``x W^T + b``, one GEMM per time step (the input projection).

    Parameters
    ----------
    x : ndarray, shape (T, B, I), float32 or float64
    W : ndarray, shape (M, I), same dtype
    b : ndarray, shape (M,), same dtype, or None
    out : ndarray, shape (T, B, M), optional

    Returns
    -------
    ndarray, shape (T, B, M), C-contiguous
    """
    return _affine(x, np.ascontiguousarray(W.T), b, out)


def _affine(x, WT, b=None, out=None):
    """``x WT + b`` for x (T, B, I), WT (I, M) C-contiguous: the kernel behind :func:`project`.
    ``out`` (T, B, M), if given, receives the result."""
    x = np.ascontiguousarray(x)
    if out is None:
        out = np.empty(x.shape[:2] + (WT.shape[1],), dtype=x.dtype)
    bias = np.empty(0, x.dtype) if b is None else b
    _project(x, WT, bias, out)
    return out


class GRUWeights(NamedTuple):
    """The weights of an L-layer GRU stack as the kernels use them (views, plus transposed copies).

    Attributes
    ----------
    Wx, Wh : tuple of L ndarrays, shapes (3H, I_l) and (3H, H); I_0 = I, I_l = H above
    bx, bh : tuple of L ndarrays, shape (3H,)
    WxT, WhT : tuple of L C-contiguous transposes, shapes (I_l, 3H) and (H, 3H)
    """
    Wx: tuple
    Wh: tuple
    bx: tuple
    bh: tuple
    WxT: tuple
    WhT: tuple

    @classmethod
    def from_params(cls, params, num_layers):
        """Build from a dict with PyTorch names ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``."""
        get = lambda kind: tuple(params[f"{kind}_l{k}"] for k in range(num_layers))  # noqa: E731
        Wx, Wh, bx, bh = get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")
        return cls(Wx, Wh, bx, bh, tuple(np.ascontiguousarray(w.T) for w in Wx),
                   tuple(np.ascontiguousarray(w.T) for w in Wh))

    def stacked(self):
        """The weights as the stack kernels take them: a :class:`StackedWeights` of arrays with a
        leading layer axis (layer 0's input weights excluded: its projection is given)."""
        L, H = self.num_layers, self.hidden_size
        dt = self.dtype
        above = lambda a, shape: np.stack(a[1:]) if L > 1 else np.empty((0,) + shape, dt)  # noqa: E731
        return StackedWeights(np.stack(self.WhT), np.stack(self.bh), above(self.WxT, (H, 3 * H)),
                              above(self.bx, (3 * H,)), np.stack(self.Wh), above(self.Wx, (3 * H, H)))

    @property
    def num_layers(self):
        return len(self.Wh)

    @property
    def hidden_size(self):
        return self.Wh[0].shape[1]

    @property
    def dtype(self):
        return self.Wh[0].dtype


class GRUGrads(NamedTuple):
    """Parameter gradients of an L-layer GRU stack, shaped like the weights (:class:`GRUWeights`),
    accumulated in place by the cells (a model passes views into its flat gradient buffer).

    Attributes
    ----------
    Wx : tuple of L ndarrays, shapes (3H, I_l); I_0 = I, I_l = H above
        Gradients of the input weights (layer 0's from :meth:`GRUStack.project_inputs_vjp`).
    Wh : tuple of L ndarrays, shape (3H, H)
    bx, bh : tuple of L ndarrays, shape (3H,)
    """
    Wx: tuple
    Wh: tuple
    bx: tuple
    bh: tuple

    @classmethod
    def from_params(cls, params, num_layers):
        """The named arrays of a dict with PyTorch names (``weight_ih_l{k}``, ``weight_hh_l{k}``,
        ``bias_ih_l{k}``, ``bias_hh_l{k}``; e.g. views into a model's flat gradient), not copied."""
        get = lambda kind: tuple(params[f"{kind}_l{k}"] for k in range(num_layers))  # noqa: E731
        return cls(get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"))

    @classmethod
    def zeros_like(cls, w):
        """Zero gradients for the weights ``w`` (a :class:`GRUWeights` or :class:`GRUGrads`)."""
        return cls(*(tuple(np.zeros_like(a) for a in f) for f in (w.Wx, w.Wh, w.bx, w.bh)))


class StackedWeights(NamedTuple):
    """Weights of an L-layer stack with a leading layer axis (:meth:`GRUWeights.stacked`): WhT
    (L, H, 3H), bh (L, 3H), and for layers 1 .. L-1 WxT (L-1, H, 3H), bx (L-1, 3H); Wh (L, 3H, H),
    Wx (L-1, 3H, H)."""
    WhT: np.ndarray
    bh: np.ndarray
    WxT: np.ndarray
    bx: np.ndarray
    Wh: np.ndarray
    Wx: np.ndarray


class GRUCache(NamedTuple):
    """The forward intermediates of n steps (or K states) of an L-layer stack: the one cache type
    of the GRU cells, indexed by layer first.

    Two layouts of the same fields. The step protocol's (:meth:`GRUStack.step` with ``cache``,
    :meth:`GRUStack.layers_cache`, :meth:`GRUCell.chain_step_cache`): lists of per-layer arrays
    whose first axis is the step, so that the solvers can gather, scatter and stack them
    (:func:`~mgritnn.cells.base.tree_map`). The compiled chains' (:meth:`GRUCell.chain_cache`,
    :meth:`empty`): one layer-major C-contiguous array per field, ``h`` None; ``G[l]`` is the same
    view either way.

    Attributes
    ----------
    G : list of L ndarrays (n, B, 3H), or ndarray (L, n, B, 3H)
        The gates [r, z, W_h^n h + b_h^n].
    N : list of L ndarrays (n, B, H), or ndarray (L, n, B, H)
        The candidates n.
    Y : list of L - 1 ndarrays (n, B, H), or ndarray (L - 1, n, B, H)
        The new states of layers 0 .. L-2: ``Y[l - 1]`` is the input of layer l > 0 (layer 0's
        input projection is the step input).
    h : list of L ndarrays (n, B, H), or None
        The states the gates were evaluated at (the old states; the new ones for
        ``implicit-newton``); None in the chains' layout (the trajectory is the solver's).
    """
    G: object
    N: object
    Y: object
    h: object = None

    @classmethod
    def empty(cls, L, n, B, H, dtype):
        """Uninitialized storage in the chains' layout for n steps of L layers of B x H states."""
        return cls(np.empty((L, n, B, 3 * H), dtype), np.empty((L, n, B, H), dtype),
                   np.empty((L - 1, n, B, H), dtype))


def _lockstep(B, H):
    """Whether the stack kernels advance chains in lockstep: states of B rows whose products
    :func:`_mm` runs as compiled loops (the same arithmetic either way)."""
    return B <= _SMALL_ROWS and 3 * H * H <= _SMALL_WEIGHT


def _chunks(C):
    """Blocks of chains a stack kernel runs in parallel (results do not depend on it)."""
    return max(1, min(int(C), 8 * numba.get_num_threads()))


def as_dt(dt, K, dtype, B=None):
    """Step sizes as a C-contiguous array of ``dtype``, checked: one per state (K,), or with ``B``
    one per state and batch row (K, B) (a scalar or a (K,) array is broadcast over the rows).

    Parameters
    ----------
    dt : float or array_like, shape (K,) or (K, B)
        A step size 0 is a padded step: the identity (variable-length sequences).
    K : int
    dtype : numpy dtype
    B : int, optional
        Batch rows per state.

    Returns
    -------
    ndarray, shape (K,) (without ``B``) or (K, B), ``dtype``

    Raises
    ------
    ConfigError
        A step size is not finite or negative, or ``dt`` has neither shape.
    """
    d = np.asarray(dt, dtype=dtype)
    shape = (K,) if B is None else (K, B)
    if B is not None and d.ndim == 1:
        d = d[:, None]
    try:
        d = np.broadcast_to(d, shape)
    except ValueError:
        raise ConfigError(f"step sizes dt must be a scalar or have shape (K,) or (K, B) = "
                          f"{(K,) if B is None else (K, B)}, got {np.shape(dt)}") from None
    if not np.all(np.isfinite(d)) or np.any(d < 0):
        raise ConfigError("step sizes dt must be finite and >= 0")
    return np.ascontiguousarray(d)


def dt_rows(dt, K, B, dtype):
    """Step sizes as the kernels take them, without a copy when they already are in that form
    (the hot paths: MGRIT's prepared arrays); not checked (the drivers and solvers check once,
    :func:`as_dt`, :func:`~mgritnn.solvers.base.step_sizes`).

    Parameters
    ----------
    dt : float or ndarray, shape (K,) or (K, B)
    K, B : int
    dtype : numpy dtype

    Returns
    -------
    ndarray, shape (K, B), ``dtype``, C-contiguous
    """
    d = np.asarray(dt, dtype=dtype)
    if d.shape == (K, B) and d.flags.c_contiguous:
        return d
    if d.ndim == 1:
        d = d[:, None]
    return np.ascontiguousarray(np.broadcast_to(d, (K, B)))


def _affine_grads(dA, X, gW, gb):
    """Gradients of an affine map ``A = X W^T + b`` from its cotangent: ``gW += dA^T X`` and
    ``gb += sum dA`` over all leading axes (dA (..., M), X (..., I), gW (M, I), gb (M,)), in place."""
    accumulate_outer(dA, X, gW)
    np.add(gb, dA.reshape(-1, dA.shape[-1]).sum(axis=0), out=gb)


class GRUStack(Cell):
    """What the GRU cells share: an L-layer stack of one-layer steps, its input projections and
    its parameter gradients (:class:`GRUGrads`), on the step protocol (:mod:`mgritnn.cells.base`).

    A subclass gives the step of one layer, :meth:`layer_step` and :meth:`layer_step_vjp` (the
    theta family :class:`GRUCell`; the fully implicit :class:`~mgritnn.cells.newton.NewtonGRUCell`);
    this class stacks them: layer l > 0 takes the new state of layer l - 1 of the same step as its
    input, through the affine map :meth:`layer_inputs`. A state is (L, B, H); the step input of a
    time point is layer 0's projection ``W_x x + b_x`` (B, 3H) (:meth:`project_inputs`).
    The core of the protocol and :class:`~mgritnn.cells.base.LayerNewton`'s layer structure
    (:meth:`num_layers`, :meth:`layer_states`, :meth:`join_layers`, :meth:`layer_inputs`,
    :meth:`layer_input_vjp`, :meth:`layers_cache`); the subclass's layer step completes
    :class:`~mgritnn.cells.base.LayerNewton`, and it adds the fused capabilities it has. The one
    cache type: :class:`GRUCache`.
    """

    # -- inputs and parameter gradients ---------------------------------------------------------

    def project_inputs(self, w, x, ws=None):
        """Layer 0's input projection of every step, ``A_x = x W_x^T + b_x`` (one GEMM per step
        in one compiled call, before any recurrence; the step inputs of :meth:`step`).

        Parameters
        ----------
        w : GRUWeights
        x : ndarray, shape (T, B, I), the weights' dtype
        ws : Workspace, optional

        Returns
        -------
        ndarray, shape (T, B, 3H), C-contiguous
        """
        if x.ndim != 3 or x.shape[2] != w.Wx[0].shape[1]:
            raise ValueError(f"inputs must have shape (T, B, {w.Wx[0].shape[1]}), got {x.shape}")
        if x.dtype != w.dtype:
            raise TypeError(f"inputs are {x.dtype}, the weights {w.dtype}: cast one of them")
        T, B = x.shape[:2]
        return self.layer_inputs(w, 0, x, work_array(ws, ("ax", 0), (T, B, 3 * w.hidden_size),
                                                     w.dtype))

    def project_inputs_vjp(self, w, x, dxp, grads):
        """Layer 0's input-weight gradients, ``dW_x += dA_x^T x`` (one GEMM over all steps) and
        ``db_x += sum dA_x``, into ``grads`` (:class:`GRUGrads`); x (T, B, I), dxp (T, B, 3H)."""
        _affine_grads(dxp, x, grads.Wx[0], grads.bx[0])

    def zero_grads(self, w):
        """Zero gradients of the stack's weights, a :class:`GRUGrads`."""
        return GRUGrads.zeros_like(w)

    @staticmethod
    def accumulate_layer_grads(grads, l, dax, dah, xin, h):
        """Add the parameter gradients of layer l from its pre-activation cotangents.

        Parameters
        ----------
        grads : GRUGrads
        l : int
        dax, dah : ndarray, shape (..., 3H)
            Cotangents of ``W_x x + b_x`` and ``W_h h + b_h``.
        xin : ndarray, shape (..., H), or None
            The layer's inputs (None for layer 0: its input weights are :meth:`project_inputs_vjp`'s).
        h : ndarray, shape (..., H)
            The states the gates were evaluated at.
        """
        _affine_grads(dah, h, grads.Wh[l], grads.bh[l])
        if l > 0:
            _affine_grads(dax, xin, grads.Wx[l], grads.bx[l])

    @staticmethod
    def accumulate_grads(grads, cache, cotangents):
        """Accumulate parameter gradients from the cotangents of many steps, in their order.

        Parameters
        ----------
        grads : GRUGrads
            Gradients to add to; layer 0's input weights are :meth:`project_inputs_vjp`'s.
        cache : GRUCache
            The steps' forward intermediates (the layers' inputs ``Y`` and gate states ``h``),
            per-layer lists.
        cotangents : list of (dax, dah)
            Per layer, the steps' pre-activation cotangents (K, B, 3H), as from :meth:`step_vjp`.

        Notes
        -----
        With the steps of a whole sequence in time order this sums exactly as :meth:`sequence_vjp`
        does (bit for bit).
        """
        for l, (dax, dah) in enumerate(cotangents):
            GRUStack.accumulate_layer_grads(grads, l, dax, dah, cache.Y[l - 1] if l else None,
                                            cache.h[l])

    # -- layers ----------------------------------------------------------------------------------

    def num_layers(self, w):
        """L (``w.num_layers``)."""
        return w.num_layers

    def layer_states(self, u):
        """Views ``u[:, l]`` (K, B, H) of states u (K, L, B, H)."""
        return [u[:, l] for l in range(u.shape[1])]

    def join_layers(self, layers):
        """A state (L, B, H) from its L layers (B, H) (a new array)."""
        return np.stack(layers)

    def layer_inputs(self, w, l, x_l, out=None):
        """The input projection of layer l, ``x_l W_x^T + b_x`` (one GEMM per step).

        Parameters
        ----------
        w : GRUWeights
        l : int
        x_l : ndarray, shape (T, B, I_l)
            The layer's inputs (the new states of layer l - 1; layer 0: the raw inputs).
        out : ndarray, shape (T, B, 3H), optional

        Returns
        -------
        ndarray, shape (T, B, 3H), C-contiguous
        """
        return _affine(x_l, w.WxT[l], w.bx[l], out)

    def layer_input_vjp(self, w, l, cot, out=None):
        """Cotangent of layer l's inputs from its cotangents ``cot = (dax, dah)``: ``dax W_x``.

        Parameters
        ----------
        w : GRUWeights
        l : int
        cot : tuple (dax, dah) of ndarray, shape (T, B, 3H)
        out : ndarray, shape (T, B, I_l), optional

        Returns
        -------
        ndarray, shape (T, B, I_l)
        """
        return _affine(cot[0], w.Wx[l], None, out)

    def layers_cache(self, xin, lins):
        """The :class:`GRUCache` of steps (per-layer lists, views) from their layers' inputs
        ``xin`` (list of L (T, B, H), None for layer 0) and :class:`LayerStep` s ``lins`` (list
        of L), DEER's per-layer linearizations."""
        return GRUCache([s.G for s in lins], [s.N for s in lins], list(xin[1:]),
                        [s.h_gate for s in lins])

    # -- step API --------------------------------------------------------------------------------

    def step(self, w, ax0, h, dt, out=None, cache=False):
        """Advance K independent states of the stack by one step each.

        Parameters
        ----------
        w : GRUWeights
        ax0 : ndarray, shape (K, B, 3H)
            Layer-0 input projection ``W_x x + b_x`` of each state's input (:meth:`project_inputs`).
        h : ndarray, shape (K, L, B, H), float32 or float64 (the weights' dtype)
            Old states.
        dt : float or ndarray, shape (K,) or (K, B)
            Step size of each state, or of each state and batch row (0: a padded step, the
            identity).
        out : ndarray, shape (K, L, B, H), optional
            Where to write the new states (may not alias ``h``).
        cache : bool
            Also return the :class:`GRUCache` of the step (per-layer lists; what
            :meth:`step_vjp` needs).

        Returns
        -------
        out : ndarray, shape (K, L, B, H)
        cache : GRUCache, only if ``cache`` is true
        """
        K, L, B, H = self._check(w, ax0, h)
        dtv = as_dt(dt, K, h.dtype, B)
        if out is None:
            out = np.empty_like(h)
        c = GRUCache([], [], [], [])
        x_l = None
        for l in range(L):
            ax = np.ascontiguousarray(ax0) if l == 0 else self.layer_inputs(w, l, x_l)
            s = self.layer_step(w, l, ax, np.ascontiguousarray(h[:, l]), dtv)
            out[:, l] = s.h_new
            c.G.append(s.G)
            c.N.append(s.N)
            c.h.append(s.h_gate)
            if l < L - 1:
                c.Y.append(s.h_new)
            x_l = s.h_new
        return (out, c) if cache else out

    def step_vjp(self, w, ax0, h, dt, lam_next, grads=None, cache=None, cotangents=None):
        """Vector-Jacobian product of :meth:`step` for K independent states.

        Parameters
        ----------
        w, ax0, h, dt : as in :meth:`step`
        lam_next : ndarray, shape (K, L, B, H)
            Adjoint at the new states.
        grads : GRUGrads, optional
            Parameter gradients to accumulate the step's contribution into, summed over the K
            states; layer 0's input weights are not touched (their gradient is
            :meth:`project_inputs_vjp`'s, one GEMM over the whole sequence).
        cache : GRUCache, optional
            The forward intermediates (per-layer lists) from ``step(..., cache=True)``; recomputed when not given.
        cotangents : list, optional
            Filled with L entries: entry l is the layer's pre-activation cotangents
            ``(dax, dah)``, each (K, B, 3H), for :meth:`accumulate_grads` later.

        Returns
        -------
        lam : ndarray, shape (K, L, B, H)
            Adjoint at the old states, :math:`(\\partial \\Phi / \\partial h)^T \\lambda'`.
        dax0 : ndarray, shape (K, B, 3H)
            Cotangent of ``ax0``.
        """
        K, L, B, H = self._check(w, ax0, h)
        if lam_next.shape != h.shape or lam_next.dtype != h.dtype:
            raise ValueError(f"lam_next must have shape {h.shape} and dtype {h.dtype}")
        dtv = as_dt(dt, K, h.dtype, B)
        if cache is None:
            _, cache = self.step(w, ax0, h, dtv, cache=True)
        lam = np.empty_like(h)
        dxin = None
        if cotangents is not None:
            cotangents[:] = [None] * L
        for l in range(L - 1, -1, -1):
            lam_l = lam_next[:, l] + dxin if dxin is not None else np.ascontiguousarray(lam_next[:, l])
            lin = LayerStep(None, cache.h[l], cache.G[l], cache.N[l], None)
            lam[:, l], cot = self.layer_step_vjp(w, l, lam_l, lin, dtv)
            if grads is not None:
                self.accumulate_layer_grads(grads, l, cot[0], cot[1],
                                            cache.Y[l - 1] if l else None, cache.h[l])
            if cotangents is not None:
                cotangents[l] = cot
            if l > 0:
                dxin = self.layer_input_vjp(w, l, cot)
        return lam, cot[0]

    def _check(self, w, ax0, h):
        if h.ndim != 4:
            raise ValueError(f"states must have shape (K, L, B, H), got {h.shape}")
        K, L, B, H = h.shape
        if (L, H) != (w.num_layers, w.hidden_size) or h.dtype != w.dtype:
            raise ValueError(f"states {h.shape} {h.dtype} do not fit weights of {w.num_layers} layers, "
                             f"hidden {w.hidden_size}, {w.dtype}")
        if ax0.shape != (K, B, 3 * H) or ax0.dtype != h.dtype:
            raise ValueError(f"ax0 must have shape {(K, B, 3 * H)} and dtype {h.dtype}, got "
                             f"{ax0.shape} {ax0.dtype}")
        return K, L, B, H


class GRUCell(GRUStack):
    """A GRU cell of the :math:`\\theta`-family (see the module docstring): ``classic`` or ``implicit``.

    The step protocol (:class:`GRUStack`) with this module's compiled kernels: one layer's step and
    VJP (:meth:`layer_step`, :meth:`layer_step_vjp`, also the building blocks of the fully implicit
    cell), MGRIT's in-place chains of whole-stack steps (:meth:`advance`, :meth:`advance_vjp`),
    quasi-DEER's one-pass linearization (:meth:`layer_newton_diag`), and the serial solver's fused
    whole-sequence sweeps (:meth:`sequence_forward`, :meth:`sequence_vjp`, ``scaled_sequence``).
    Capabilities (:mod:`mgritnn.cells.base`): every one, :class:`~mgritnn.cells.base.FusedSequence`,
    :class:`~mgritnn.cells.base.FusedChains`, :class:`~mgritnn.cells.base.LayerNewton` and
    :class:`~mgritnn.cells.base.DiagonalNewton`.

    Parameters
    ----------
    name : str
    theta : float
        0 for forward Euler in the decay term (classic), 1 for linearly implicit (implicit);
        negative for the matched coarse cells: h' = n + q^dt (h - n), the exact composition of
        dt unit steps of the fine cell with theta_f = -theta - 1 when the gates and the
        candidate are frozen (q = 1 - c_f, the share of the gap n - h a unit fine step keeps):
        "matched-classic" (-1: q = z), "matched-implicit" (-2: q = 1 / (2 - z)). A coarse cell
        for MGRIT (``coarse_cell``) that follows the fine cell's decay exactly for any step size
        (the implicit cell damps it: q_implicit = 1 / (1 + dt (1 - z)) instead of z^dt).
    """

    def __init__(self, name, theta):
        self.name = name
        self.theta = float(theta)

    def __repr__(self):
        return f"GRUCell({self.name!r}, theta={self.theta})"

    def coarse_cell(self):
        """MGRIT's coarse cell: the linearly implicit GRU, stable for any step size (Moon & Cyr)."""
        return CELLS["implicit"]

    # -- chains of whole-stack steps in place (MGRIT's propagators) ------------------------------

    def chain_weights(self, w):
        """The :class:`StackedWeights` of ``w`` (:meth:`GRUWeights.stacked`)."""
        return w.stacked()

    def chain_cache(self, w, ax, n):
        """An uninitialized :class:`GRUCache` in the chains' layout (:meth:`GRUCache.empty`) for
        n steps of the stack with input rows like ``ax`` (*, B, 3H)."""
        B, H3 = ax.shape[1:]
        return GRUCache.empty(w.num_layers, n, B, H3 // 3, ax.dtype)

    def chain_cotangents(self, w, ax, n):
        """Zeroed pre-activation cotangents ``(DAX, DAH)`` of n steps, each (L, n, B, 3H)."""
        shape = (w.num_layers, n) + ax.shape[1:]
        return np.zeros(shape, ax.dtype), np.zeros(shape, ax.dtype)

    @staticmethod
    def chain_step_cache(cache, u):
        """The :class:`GRUCache` of n steps in the step protocol's layout (per-layer lists of
        views, no copies) from the chains' layout that :meth:`advance` filled and the trajectory
        ``u`` (n + 1, L, B, H) the steps started from.

        The layouts differ because their users do: the compiled chains write each field as one
        layer-major array (L, n, B, .), the solvers gather and scatter caches over a leading step
        axis (:func:`~mgritnn.cells.base.tree_map`), which lists of the layers' (n, B, .) views
        give without a copy; the chains do not store the trajectory, which the solver keeps.
        """
        L = u.shape[1]
        return GRUCache(list(cache.G), list(cache.N), list(cache.Y), [u[:-1, l] for l in range(L)])

    @staticmethod
    def chain_step_cotangents(cot):
        """Per layer ``(dax, dah)`` (n, B, 3H), as :meth:`step_vjp` records them, from the
        ``(DAX, DAH)`` (L, n, B, 3H) of :meth:`chain_cotangents` (views). The compiled VJP chains
        write two layer-major arrays; :meth:`accumulate_grads` and DEER take the layers' pairs."""
        return [(cot[0][l], cot[1][l]) for l in range(len(cot[0]))]

    def advance(self, sw, ax, dt, X, rd, Y, wr, starts, lens, g=None, keep=None, res=None):
        """Chains of steps of the stack, in place: ``Y[wr[c] + i] = Phi_s(X[rd[c] + i]) (+ g[s + 1])``
        for ``i < lens[c]`` with step ``s = starts[c] + i`` (one compiled call; chains in parallel).

        Parameters
        ----------
        sw : StackedWeights
        ax : ndarray, shape (n, B, 3H)
            Layer-0 input projection of every step s.
        dt : ndarray, shape (n,) or (n, B)
            Step size of every step s (and batch row; 0: the identity).
        X, Y : ndarray, shape (*, L, B, H), C-contiguous
            States read and written (the same array for chains of consecutive points: ``wr = rd + 1``).
        rd, wr, starts, lens : ndarray, shape (C,), int64
            Per chain: first state read, first state written, first step, number of steps.
        g : ndarray, shape (n + 1, L, B, H), optional
            Added to the new state of step s (a FAS right-hand side).
        keep : GRUCache, optional
            In the chains' layout (:meth:`chain_cache`): receives the gates and layer outputs of every step s at index s.
        res : ndarray, shape (C, L, B, H), optional
            Residual mode: the last step of chain c is not stored but compared,
            ``res[c] = Phi_s(..) (+ g[s + 1]) - Y[wr[c] + lens[c] - 1]`` (the FAS residual).

        Notes
        -----
        A state's result is bitwise that of the serial sweep's kernels and of :meth:`step`; chains
        must not write a state another chain reads. Chains run in parallel on the threads; states
        of one or two rows with H <= 64 go four chains in lockstep, one compiled product for their
        rows (:func:`_stack_chains_lockstep`), with the same arithmetic per row.
        """
        L, B, H = X.shape[1:]
        dtype = X.dtype
        dt = dt_rows(dt, len(dt), B, dtype)
        if keep is None:
            keep, kept = GRUCache.empty(L, 0, B, H, dtype), False
        else:
            kept = True
        g = np.empty((0, L, B, H), dtype) if g is None else g
        res = np.empty((0, L, B, H), dtype) if res is None else res
        if _lockstep(B, H):
            _stack_chains_lockstep(ax, dt, X, rd, Y, wr, starts, lens, g, res, sw.WhT, sw.bh,
                                   sw.WxT, sw.bx, dtype.type(self.theta), kept, keep.G, keep.N,
                                   keep.Y, _chunks(len(starts)))
        else:
            _stack_chains(ax, dt, X, rd, Y, wr, starts, lens, g, res, sw.WhT, sw.bh, sw.WxT,
                          sw.bx, dtype.type(self.theta), kept, keep.G, keep.N, keep.Y,
                          row_blocks(B, sw.Wh[0].nbytes), _chunks(len(starts)))

    def advance_vjp(self, sw, dt, X, rd, Y, wr, starts, lens, hlin, lin, fidx, g=None, keep=None,
                    res=None):
        """Chains of VJPs of steps of the stack, in place: ``Y[wr[c] + i] =
        (dPhi_s/du)^T X[rd[c] + i] (+ g[s + 1])`` for ``i < lens[c]``, ``s = starts[c] + i``.

        Parameters
        ----------
        sw, dt, X, Y, rd, wr, starts, lens, g, res : as in :meth:`advance` (X, Y hold adjoints)
        hlin : ndarray, shape (m, L, B, H)
            The states the steps are linearized at: step s at ``hlin[fidx[s]]``.
        lin : GRUCache
            Their gates (from :meth:`advance` with ``keep``), at index ``fidx[s]``.
        fidx : ndarray, shape (n,), int64
        keep : tuple (DAX, DAH) of ndarray, shape (L, m, B, 3H), optional
            Receive the pre-activation cotangents of step s at index ``fidx[s]``.
        """
        L, B, H = X.shape[1:]
        dtype = X.dtype
        dt = dt_rows(dt, len(dt), B, dtype)
        if keep is None:
            keep, kept = (np.empty((L, 0, B, 3 * H), dtype),) * 2, False
        else:
            kept = True
        g = np.empty((0, L, B, H), dtype) if g is None else g
        res = np.empty((0, L, B, H), dtype) if res is None else res
        if _lockstep(B, H):
            _stack_chains_vjp_lockstep(dt, X, rd, Y, wr, starts, lens, g, res, hlin, fidx, lin.G,
                                       lin.N, sw.Wh, sw.Wx, dtype.type(self.theta), kept, keep[0],
                                       keep[1], _chunks(len(starts)))
        else:
            _stack_chains_vjp(dt, X, rd, Y, wr, starts, lens, g, res, hlin, fidx, lin.G, lin.N,
                              sw.Wh, sw.Wx, dtype.type(self.theta), kept, keep[0], keep[1],
                              row_blocks(B, sw.Wh[0].nbytes), _chunks(len(starts)))

    # -- one layer, K states (the step API's building block; DEER linearizes with it) -----------

    def layer_step(self, w, l, ax, h, dt, jacobian=None, fused=False):
        """One step of layer ``l`` for K independent states, and optionally its Jacobian.

        Parameters
        ----------
        w : GRUWeights
        l : int
            Layer index.
        ax : ndarray, shape (K, B, 3H), C-contiguous
            The layer's input projection ``W_x x + b_x`` of each state's input.
        h : ndarray, shape (K, B, H), C-contiguous, the weights' dtype
            Old states.
        dt : ndarray, shape (K,) or (K, B), the weights' dtype
            Step sizes per state, or per state and row (finite, >= 0; see :func:`as_dt`); a row
            with step size 0 keeps its state exactly, with the identity as its Jacobian.
        jacobian : {None, "dense", "diag"}
            Also return :math:`\\partial h' / \\partial h` per state and row: (K, B, H, H) dense,
            or its diagonal (K, B, H).
        fused : bool
            One GEMM over many states (much faster for many small states, as DEER evaluates them);
            the default keeps one GEMM per fixed row block of each state, so that results are
            bitwise independent of K.

        Returns
        -------
        LayerStep
            ``G`` (K, B, 3H) = [r, z, W_h^n h + b_h^n], ``N`` (K, B, H) = n, ``h_gate`` = ``h``.
        """
        if jacobian not in (None, "dense", "diag"):
            raise ConfigError(f"jacobian must be None, 'dense' or 'diag', got {jacobian!r}")
        K, B, H = h.shape
        dtype = h.dtype
        dt = dt_rows(dt, K, B, dtype)
        hnew = np.empty_like(h)
        G = np.empty((K, B, 3 * H), dtype)
        N = np.empty((K, B, H), dtype)
        theta = dtype.type(self.theta)
        if fused:
            _layer_fused_forward(ax, h, w.WhT[l], w.bh[l], dt, theta, hnew, G, N,
                                 max(1, FUSED_ROWS // B))
        else:
            _layer_step_forward(ax, h, w.WhT[l], w.bh[l], dt, theta, hnew, G, N,
                                row_blocks(B, w.Wh[l].nbytes))
        J = None if jacobian is None else self.layer_jacobian(w, l, h, dt, G, N, jacobian)
        return LayerStep(hnew, h, G, N, J)

    def layer_jacobian(self, w, l, h, dt, G, N, kind="dense"):
        """:math:`\\partial h' / \\partial h` of this cell's step of layer l for K states and rows,
        at the gates ``G``, ``N`` of the states ``h`` (from :meth:`layer_step`).

        Parameters
        ----------
        w : GRUWeights
        l : int
        h : ndarray, shape (K, B, H)
        dt : ndarray, shape (K,) or (K, B)
        G, N : ndarray, shapes (K, B, 3H), (K, B, H)
        kind : {"dense", "diag"}

        Returns
        -------
        ndarray, shape (K, B, H, H) (dense) or (K, B, H) (its diagonal)
        """
        K, B, H = h.shape
        theta = h.dtype.type(self.theta)
        dt = dt_rows(dt, K, B, h.dtype)
        if kind == "dense":
            J = np.empty((K, B, H, H), h.dtype)
            _layer_jacobian_dense(h, dt, theta, G, N, w.Wh[l], J)
        else:
            J = np.empty((K, B, H), h.dtype)
            _layer_jacobian_diag(h, dt, theta, G, N, w.Wh[l], J)
        return J

    def has_off_diagonal_vjp(self):
        """Whether :meth:`off_diagonal_vjp` applies: the theta family (theta >= 0: classic,
        implicit; not the matched coarse cells)."""
        return self.theta >= 0

    def off_diagonal_vjp(self, w, l, lin, dt, ws=None):
        """quasi-DEER's adjoint correction of layer l in the GRU's form
        (:class:`~mgritnn.cells.gru_qadjoint.GRUOffDiagonal`:
        :class:`~mgritnn.cells.base.OffDiagonalVJP`)."""
        n, B = lin.h_new.shape[:2]
        return GRUOffDiagonal(self.theta, w, l, lin, dt_rows(dt, n, B, lin.h_new.dtype), ws)

    def layer_newton_diag(self, w, l, ax, h, dt, scale, J, b):
        """quasi-DEER's linearization of layer ``l`` at K states, in one pass: ``J = scale
        diag(dh'/dh)`` and ``b = step(h) - J h`` (what :meth:`layer_step` with
        ``jacobian="diag", fused=True`` and the offset give, bit for bit, without the gates).

        Parameters
        ----------
        w : GRUWeights
        l : int
        ax, h, dt : as in :meth:`layer_step`
        scale : float
            Damping factor of the Jacobian (1 / (1 + damping)).
        J, b : ndarray, shape (K, B, H), the weights' dtype
            Receive the scaled diagonal Jacobian and the offset.
        """
        K, B, H = h.shape
        dtype = h.dtype
        dt = dt_rows(dt, K, B, dtype)
        _layer_newton_diag(ax, h, w.WhT[l], w.Wh[l], w.bh[l], dt, dtype.type(self.theta),
                           dtype.type(scale), J, b, max(1, FUSED_ROWS // B))

    def layer_gate_vjp(self, lam, h, dt, G, N):
        """The pre-activation cotangents of K steps of one layer for the adjoint ``lam`` of the new
        states (no GEMM: the adjoint of the old states is not formed).

        Parameters
        ----------
        lam : ndarray, shape (K, B, H), C-contiguous
        h, G, N : ndarray, shapes (K, B, H), (K, B, 3H), (K, B, H)
            The states the gates were evaluated at, and the gates (from :meth:`layer_step`).
        dt : ndarray, shape (K,) or (K, B)

        Returns
        -------
        dax, dah : ndarray, shape (K, B, 3H)
            Cotangents of ``W_x x + b_x`` and ``W_h h + b_h``.
        """
        K, B, H = h.shape
        dtype = h.dtype
        dt = dt_rows(dt, K, B, dtype)
        dax = np.empty((K, B, 3 * H), dtype)
        dah = np.empty((K, B, 3 * H), dtype)
        _layer_gate_vjp(lam, h, dt, dtype.type(self.theta), G, N, dax, dah,
                        np.empty((K, B, H), dtype))
        return dax, dah

    def layer_step_vjp(self, w, l, lam, lin, dt, need_lam=True):
        """VJP of :meth:`layer_step` for K states at its intermediates.

        Parameters
        ----------
        w : GRUWeights
        l : int
        lam : ndarray, shape (K, B, H), C-contiguous
            Adjoint of the new states.
        lin : LayerStep
            The forward step (``h_gate``, ``G``, ``N`` are read).
        dt : ndarray, shape (K,) or (K, B)
        need_lam : bool
            Compute the adjoint of the old states (one GEMM); without it only the pre-activation
            cotangents are formed (what a parameter pass after a DEER adjoint needs).

        Returns
        -------
        lam_old : ndarray, shape (K, B, H), or None
            :math:`(\\partial h' / \\partial h)^T \\lambda`.
        cot : tuple (dax, dah) of ndarray, shape (K, B, 3H)
            Cotangents of the pre-activations ``W_x x + b_x`` and ``W_h h + b_h``.
        """
        if not need_lam:
            return None, self.layer_gate_vjp(lam, lin.h_gate, dt, lin.G, lin.N)
        K, B, H = lin.h_gate.shape
        dtype = lin.h_gate.dtype
        dt = dt_rows(dt, K, B, dtype)
        dax = np.empty((K, B, 3 * H), dtype)
        dah = np.empty((K, B, 3 * H), dtype)
        lam_out = np.empty((K, B, H), dtype)
        _layer_step_vjp(lam, lin.h_gate, dt, dtype.type(self.theta), lin.G, lin.N, w.Wh[l], dax,
                        dah, lam_out, np.empty((K, B, H), dtype), row_blocks(B, w.Wh[l].nbytes))
        return lam_out, (dax, dah)

    # -- fused whole-sequence kernels (serial solver) --------------------------------------------

    def sequence_forward(self, w, ax0, h0, dt=1.0, keep=True, ws=None):
        """Serial sweep over a whole sequence, layer after layer.

        Parameters
        ----------
        w : GRUWeights
        ax0 : ndarray, shape (T, B, 3H)
            Layer-0 input projection of every time step.
        h0 : ndarray, shape (L, B, H)
            Initial state.
        dt : float or ndarray, shape (T,) or (T, B)
            Step sizes per step, or per step and batch row (0: a padded step, the identity).
        keep : bool
            Keep the gates for :meth:`sequence_vjp` (training); otherwise only the states.
        ws : Workspace, optional
            Take the arrays from this workspace (overwriting what an earlier call returned).

        Returns
        -------
        SequenceCache
            ``hs``: list of L arrays (T+1, B, H), the trajectory of each layer; gates if ``keep``.
        """
        T, B = ax0.shape[0], ax0.shape[1]
        L, H = w.num_layers, w.hidden_size
        dtype = w.dtype
        dtv = as_dt(dt, T, dtype, B)
        nblk = row_blocks(B, w.Wh[0].nbytes)
        res = SequenceCache([], [], [], dtv)
        x_l = None
        for l in range(L):
            ax = ax0 if l == 0 else self.layer_inputs(w, l, x_l, work_array(ws, ("ax", l),
                                                                             (T, B, 3 * H), dtype))
            hs = work_array(ws, ("hs", l), (T + 1, B, H), dtype)
            hs[0] = h0[l]
            G = work_array(ws, ("G", l, keep), (T if keep else 1, B, 3 * H), dtype)
            N = work_array(ws, ("N", l, keep), (T if keep else 1, B, H), dtype)
            _layer_sequence_forward(ax, hs, w.WhT[l], w.bh[l], dtv, dtype.type(self.theta), G, N,
                                    nblk)
            res.hs.append(hs)
            if keep:
                res.G.append(G)
                res.N.append(N)
            x_l = hs[1:]
        return res

    #: :meth:`sequence_vjp` keeps the adjoint's scale apart (``scaled=True``).
    scaled_sequence = True

    def sequence_vjp(self, w, seq, lam_last, grads, ws=None, scaled=False):
        """Backpropagation through time over a whole sequence (after
        ``sequence_forward(keep=True)``), with the adjoint's scale kept in a power-of-two exponent,
        so that its direction stays exact where its norm exceeds the dtype's range (exploding
        gradients).

        Parameters
        ----------
        w : GRUWeights
        seq : SequenceCache
        lam_last : ndarray, shape (L, B, H)
            Adjoint at the last point (from the head: nonzero in the top layer only).
        grads : GRUGrads
            Parameter gradients to accumulate into (layer 0's input weights excepted: they are
            :meth:`project_inputs_vjp`'s). With ``scaled``, what they hold on entry is scaled
            like the rest: all of ``grads`` ends as 2^-E times the true sums.
        ws : Workspace, optional
            Take the arrays from this workspace (overwriting what an earlier call returned).
        scaled : bool
            Return the common exponent E, with the adjoint, the cotangents and ``grads`` at scale
            2^-E; otherwise multiply them back by 2^E (inf where the true values overflow, as
            without the scaling).

        Returns
        -------
        lam0 : ndarray, shape (L, B, H)
            Adjoint at the initial state.
        dax0 : ndarray, shape (T, B, 3H)
            Cotangent of the layer-0 input projection.
        E : int
            Only with ``scaled``: the true ``lam0``, ``dax0`` and ``grads`` are 2^E times the
            returned ones. 0 unless the adjoint grew beyond 2^:func:`adjoint_shift` (float32:
            2^64), and then the results are bit for bit those of the unscaled sweep.

        Notes
        -----
        Each row b of a layer's adjoint has its own exponent (rows are independent and swept by
        different threads): whenever its largest entry exceeds 2^s (s = :func:`adjoint_shift`)
        it is multiplied by 2^-s and s is added to the exponent, which step t's cotangents
        carry, ``ex[t, b]``. After the layer's sweep its cotangents are brought to the largest
        exponent, ``dax[t, b] *= 2^(ex[t, b] - max ex)``, exact unless a value falls below the
        smallest normal number, in which case it is negligible against the largest
        contributions: the gradient's direction is exact to round-off. Layers share one exponent
        E: a layer below receives ``dxin`` at the current E and its ``lam_last`` times 2^-E; when
        a layer's sweep raises E, what is already accumulated (``grads``, the upper layers'
        ``lam0``) is multiplied by 2^-(increase).
        """
        L = w.num_layers
        hs0 = seq.hs[0]
        T, B, H = hs0.shape[0] - 1, hs0.shape[1], hs0.shape[2]
        dtype = hs0.dtype
        nblk = row_blocks(B, w.Wh[0].nbytes)
        shift = adjoint_shift(dtype)
        lam0 = np.empty((L, B, H), dtype)
        lam = np.empty((2, B, H), dtype)
        work = np.empty((B, H), dtype)
        dxin = np.empty((0, B, H), dtype)
        E = 0
        for l in range(L - 1, -1, -1):
            dax = work_array(ws, ("dax", l), (T, B, 3 * H), dtype)
            dah = work_array(ws, ("dah", l), (T, B, 3 * H), dtype)
            ex = work_array(ws, ("ex", l), (T, B), np.int64)
            lam_l = np.ascontiguousarray(lam_last[l])
            if E:
                lam_l = np.ldexp(lam_l, -E)
            _layer_sequence_vjp(lam_l, dxin, seq.hs[l], seq.dt, dtype.type(self.theta), seq.G[l],
                                seq.N[l], w.Wh[l], dax, dah, lam, work, ex, shift, nblk)
            lam0[l] = lam[T % 2]
            rise = int(ex[0].max()) if T and B else 0
            if rise:                    # bring the layer to its largest exponent, the rest along
                _rescale_rows(dax, ex, rise)
                _rescale_rows(dah, ex, rise)
                _rescale_rows(lam0[l:l + 1], ex[:1], rise)
                np.ldexp(lam0[l + 1:], -rise, out=lam0[l + 1:])
                scale_pow2(grads, -rise)
                E += rise
            xin = seq.hs[l - 1][1:] if l > 0 else None
            self.accumulate_layer_grads(grads, l, dax, dah, xin, seq.hs[l][:-1])
            if l > 0:
                dxin = self.layer_input_vjp(w, l, (dax, dah),
                                            work_array(ws, ("dxin", l), (T, B, H), dtype))
        if scaled:
            return lam0, dax, E
        if E:
            with np.errstate(over="ignore"):        # inf: the true value is beyond the range
                np.ldexp(lam0, E, out=lam0)
                np.ldexp(dax, E, out=dax)
                scale_pow2(grads, E)
        return lam0, dax


class SequenceCache(NamedTuple):
    """Trajectory (and gates) of a serial sweep, lists over layers: ``hs`` (T+1, B, H),
    ``G`` (T, B, 3H) = [r, z, W_h^n h + b_h^n], ``N`` (T, B, H); ``dt`` (T, B) the step sizes."""
    hs: list
    G: list
    N: list
    dt: np.ndarray


CELLS.update({
    "classic": GRUCell("classic", 0.0),
    "implicit": GRUCell("implicit", 1.0),
    # MGRIT coarse cells: d unit steps of the fine cell composed exactly with frozen gates
    # (h' = n + q^d (h - n)); stable for any d (0 <= q <= 1) and the fine step at d = 1.
    "matched-classic": GRUCell("matched-classic", -1.0),
    "matched-implicit": GRUCell("matched-implicit", -2.0),
})


__all__ = ["CELLS", "GRUCache", "GRUCell", "GRUGrads", "GRUStack", "GRUWeights", "LayerStep",
           "SequenceCache", "StackedWeights", "Workspace", "accumulate_outer", "as_dt",
           "dt_rows", "get_cell", "project", "resolve_dtype"]
