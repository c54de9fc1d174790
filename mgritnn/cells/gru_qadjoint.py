"""quasi-DEER's adjoint without dense Jacobians, in the GRU's own form (the cells' side of
:class:`~mgritnn.cells.base.OffDiagonalVJP`; the iteration is
:mod:`mgritnn.solvers.qadjoint`'s).

For the GRU cells of the theta family (classic, implicit), dh'/dh = diag(1 - c) + diag(a_r) W_r +
diag(a_z) W_z + diag(a_n) W_n (W_r, W_z, W_n the blocks of W_h), the coefficients
a = [a_r, a_z, a_n] being the pre-activation cotangent ``dah`` of a unit adjoint (the partial
derivatives of the cell's VJP, computed once per layer in one pass, :func:`_gru_coeffs`). The
direct term is diagonal, so J_t - D_t = sum_g diag(a_g) W_g^off with W_g^off the block with its
diagonal zeroed, and the correction (J_t^T - D_t) nu_t is a GEMM over all points and rows:
``(a o [nu, nu, nu]) @ W_h^off``, (n B, 3H) x (3H, H), in blocks of rows
(:func:`_gru_correction`). The same coefficients give the final pre-activation cotangents
(:meth:`GRUOffDiagonal.cotangents`). Memory: the coefficients (n, B, 4H).
"""
import numba
import numpy as np
from numba import prange

from ..config import JIT_PAR
from .activations import flush_subnormal
from .base import work_array

@numba.njit(**JIT_PAR)
def _gru_coeffs(h, dt, theta, G, N, wdiag, C, D):
    """The GRU's coefficients of every step and row, C (n, B, 4H) = [a_r, a_z, a_n, c_n]:
    dh'/dh = diag(1 - c) + diag(a_r) W_r + diag(a_z) W_z + diag(a_n) W_n, and the
    pre-activation cotangents of an adjoint lam are dah = [a_r, a_z, a_n] lam, dax = [a_r, a_z,
    c_n] lam (the partial derivatives of :func:`mgritnn.cells.gru._block_gate_vjp`, theta >= 0);
    and the diagonal D (n, B, H) = 1 - c + a_r diag(W_r) + a_z diag(W_z) + a_n diag(W_n)
    (``wdiag`` (3, H) the diagonals of the blocks). h (n, B, H) the states the gates
    G (n, B, 3H) = [r, z, W_h^n h + b_h^n], N (n, B, H) were evaluated at; dt (n, B); a row with
    dt 0 (the identity step) gets C = 0, D = 1."""
    n, B, H = h.shape
    one = h.dtype.type(1.0)
    zero = h.dtype.type(0.0)
    for t in prange(n):
        for r in range(B):
            d = dt[t, r]
            if d == 0:
                for j in range(4 * H):
                    C[t, r, j] = zero
                for j in range(H):
                    D[t, r, j] = one
                continue
            for j in range(H):
                rg = G[t, r, j]
                z = G[t, r, H + j]
                nn = N[t, r, j]
                a = d * (one - z)
                den = one + theta * a
                c = a / den
                dpn = c * (one - nn * nn)
                ar = dpn * G[t, r, 2 * H + j] * rg * (one - rg)
                az = -d * (nn - h[t, r, j]) / (den * den) * z * (one - z)
                an = dpn * rg
                C[t, r, j] = ar
                C[t, r, H + j] = az
                C[t, r, 2 * H + j] = an
                C[t, r, 3 * H + j] = dpn
                D[t, r, j] = (one - c) + ar * wdiag[0, j] + az * wdiag[1, j] + an * wdiag[2, j]


#: Rows (points x batch rows) per block of :func:`_gru_correction`: its scratch (rows x 3H) stays
#: in cache between the product with the coefficients and the GEMM (measured, one thread, float32:
#: 40 ms at (n B, H) = (65536, 64) against 60-75 ms for one GEMM over all rows, 10 against 18-25
#: ms at (65536, 32)). A function of nothing but this constant, so results do not depend on the
#: number of threads.
BLOCK_ROWS = 1024


@numba.njit(**JIT_PAR)
def _gru_correction(C, nu, Woff, d, b, rows):
    """b = d + (J^T - D) nu for every point and row (the GRU's form, module docstring): per block
    of ``rows`` rows, V = [a_r, a_z, a_n] o [nu, nu, nu] (rows, 3H) and one GEMM V W_h^off.
    C (n, B, 4H), nu, d, b (n, B, H) C-contiguous, Woff (3H, H)."""
    n, B, H = nu.shape
    N = n * B
    C2 = C.reshape((N, 4 * H))
    nu2 = nu.reshape((N, H))
    d2 = d.reshape((N, H))
    b2 = b.reshape((N, H))
    nb = -(-N // rows)
    for q in prange(nb):
        r0 = q * rows
        r1 = min(N, r0 + rows)
        V = np.empty((r1 - r0, 3 * H), nu.dtype)
        U = np.empty((r1 - r0, H), nu.dtype)
        for i in range(r1 - r0):
            for g in range(3):
                for k in range(H):
                    V[i, g * H + k] = C2[r0 + i, g * H + k] * nu2[r0 + i, k]
        np.dot(V, Woff, U)
        for i in range(r1 - r0):
            for m in range(H):
                b2[r0 + i, m] = d2[r0 + i, m] + U[i, m]


@numba.njit(**JIT_PAR)
def _gru_cotangents(C, nu, dax, dah):
    """The pre-activation cotangents of the adjoint nu (n, B, H) of the new states: dah = [a_r,
    a_z, a_n] nu and dax = [a_r, a_z, c_n] nu (n, B, 3H), subnormal values flushed to zero (as
    the cell's own VJP does)."""
    n, B, H = nu.shape
    for t in prange(n):
        for r in range(B):
            for g in range(3):
                for i in range(H):
                    v = flush_subnormal(C[t, r, g * H + i] * nu[t, r, i])
                    dah[t, r, g * H + i] = v
                    if g < 2:
                        dax[t, r, g * H + i] = v
            for i in range(H):
                dax[t, r, 2 * H + i] = flush_subnormal(C[t, r, 3 * H + i] * nu[t, r, i])


def off_diagonal_blocks(Wh):
    """W_h (3H, H) with the diagonal of each of its three H x H blocks zeroed (a C-contiguous
    copy, the same dtype)."""
    H = Wh.shape[1]
    W = np.array(Wh, order="C", copy=True)
    idx = np.arange(H)
    for g in range(3):
        W[g * H + idx, idx] = 0
    return W


class GRUOffDiagonal:
    """The correction r_t = (J_t^T - D_t) nu_t of one GRU layer at all of a rank's n steps at
    once, and the layer's pre-activation cotangents at the end (module docstring; made by
    :meth:`mgritnn.cells.gru.GRUCell.off_diagonal_vjp`).

    Parameters
    ----------
    theta : float
        The cell's theta (>= 0).
    w : GRUWeights
    l : int
        The layer.
    lin : LayerStep
        The layer's step at the converged trajectory (its gates; ``J`` not needed).
    dt : ndarray, shape (n, B)
        The step size of every step and row (:func:`mgritnn.cells.gru.dt_rows`).
    ws : Workspace, optional
        Take the coefficients, the diagonal and the cotangents from it.

    Attributes
    ----------
    D : ndarray, shape (n, B, H)
        The diagonal of every step's Jacobian (the preconditioner).
    """

    def __init__(self, theta, w, l, lin, dt, ws=None):
        self.l, self.ws = l, ws
        n, B, H = lin.h_new.shape
        dtype = lin.h_new.dtype
        self.C = work_array(ws, "qadj-C", (n, B, 4 * H), dtype)
        self.D = work_array(ws, "qadj-D", (n, B, H), dtype)
        Wh = w.Wh[l]
        wdiag = np.ascontiguousarray(np.stack([np.diagonal(Wh[g * H:(g + 1) * H])
                                               for g in range(3)]))
        _gru_coeffs(lin.h_gate, dt, dtype.type(theta), lin.G, lin.N, wdiag, self.C, self.D)
        self.Woff = off_diagonal_blocks(Wh)

    def apply(self, nu, d, b):
        """b = d + (J_t^T - D_t) nu_t for every step t; nu (C-contiguous), d, b (n, B, H)."""
        _gru_correction(self.C, nu, self.Woff, np.ascontiguousarray(d), b, BLOCK_ROWS)

    def cotangents(self, nu):
        """The layer's step cotangents (dax, dah), (n, B, 3H) each, for the adjoint ``nu``
        (n, B, H) of its new states, from the coefficients (what ``layer_step_vjp(...,
        need_lam=False)`` gives, without a second pass over the gates); frees them."""
        n, B, H = nu.shape
        dax = work_array(self.ws, ("qadj-dax", self.l), (n, B, 3 * H), nu.dtype)
        dah = work_array(self.ws, ("qadj-dah", self.l), (n, B, 3 * H), nu.dtype)
        _gru_cotangents(self.C, nu, dax, dah)
        self.C = None
        return dax, dah


__all__ = ["BLOCK_ROWS", "GRUOffDiagonal", "off_diagonal_blocks"]
