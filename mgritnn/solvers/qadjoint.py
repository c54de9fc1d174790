"""quasi-DEER's adjoint without dense Jacobians: diagonal-preconditioned iterations on the linear
adjoint recurrence (issue 25, item 2).

The adjoint of one layer, at its points lo .. hi - 1 of a rank's block, is the linear recurrence

.. math::

    \\mu_t = J_t^T \\mu_{t+1} + d_t \\quad (t = n - 1, \\dots, 0), \\qquad \\mu_n = \\text{terminal},

with J_t the step's Jacobian at the converged trajectory and d_t the cotangent reaching point t
from the layer above. With D_t = diag(J_t) (quasi-DEER's diagonal) and nu_t = mu_{t+1} (the adjoint
of step t's new state), every iteration solves

.. math::

    \\mu^{k+1}_t = D_t \\mu^{k+1}_{t+1} + d_t + (J_t^T - D_t) \\nu^{k}_t

by one diagonal reverse scan (:func:`~mgritnn.solvers.scan.linear_recurrence`, O(T B H), over the
ranks); the correction (J_t^T - D_t) nu_t uses the exact transposed Jacobian at every point at
once, as a vector-Jacobian product, never as a matrix. This is Newton's method (quasi-DEER) on
the linear system with the diagonal as the approximate inverse, a preconditioned Richardson
iteration. Its fixed point is the exact adjoint, and it has DEER's front: after k iterations the
last k points are exact (the error operator is strictly block triangular), so n + 1 iterations
reproduce the sequential reverse sweep bitwise on one rank.

The correction, per cell (:class:`TransposedOffDiagonal`):

* the GRU cells (:class:`~mgritnn.cells.gru.GRUCell`): dh'/dh = diag(d) + diag(a_r) W_r +
  diag(a_z) W_z + diag(a_n) W_n (W_r, W_z, W_n the blocks of W_h), and the coefficients
  a = [a_r, a_z, a_n] are exactly the pre-activation cotangent ``dah`` of the unit adjoint
  (:meth:`~mgritnn.cells.gru.GRUCell.layer_gate_vjp` with lam = 1, computed once per layer). The
  direct term d is diagonal, so J_t - D_t = sum_g diag(a_g) W_g^off with W_g^off the block with
  its diagonal zeroed, and the correction is one GEMM over all points and rows:
  ``(a o [nu, nu, nu]) @ W_h^off``, (n B, 3H) x (3H, H);
* any other cell of :class:`~mgritnn.cells.base.LayerNewton`: its batched step VJP
  (``layer_step_vjp`` with ``need_lam``) minus D_t nu_t.

Memory: O(n B H) (the coefficients 3 n B H, the iterates and scratch about 6 n B H), against
O(n B H^2) for the dense Jacobians of the direct reverse scan.
"""
import numba
import numpy as np
from numba import prange

from ..config import JIT_PAR


@numba.njit(**JIT_PAR)
def _times_coeffs(C, nu, V):
    """V[t, b, g H + i] = C[t, b, g H + i] nu[t, b, i] for g = 0, 1, 2: C, V (n, B, 3H), nu (n, B, H)."""
    n, B, H = nu.shape
    for t in prange(n):
        for r in range(B):
            for g in range(3):
                for i in range(H):
                    V[t, r, g * H + i] = C[t, r, g * H + i] * nu[t, r, i]


@numba.njit(**JIT_PAR)
def _add(d, U, b):
    """b = d + U: all (n, B, H)."""
    n, B, H = d.shape
    for t in prange(n):
        for r in range(B):
            for i in range(H):
                b[t, r, i] = d[t, r, i] + U[t, r, i]


@numba.njit(**JIT_PAR)
def _add_minus_diag(d, v, D, nu, b):
    """b = d + v - D nu: all (n, B, H)."""
    n, B, H = d.shape
    for t in prange(n):
        for r in range(B):
            for i in range(H):
                b[t, r, i] = d[t, r, i] + (v[t, r, i] - D[t, r, i] * nu[t, r, i])


def off_diagonal_blocks(Wh):
    """W_h (3H, H) with the diagonal of each of its three H x H blocks zeroed (a C-contiguous
    copy, the same dtype)."""
    H = Wh.shape[1]
    W = np.array(Wh, order="C", copy=True)
    idx = np.arange(H)
    for g in range(3):
        W[g * H + idx, idx] = 0
    return W


def gru_fast_path(cell):
    """Whether the GEMM form of the correction applies: a GRU cell of the theta family (its
    ``layer_gate_vjp`` linear in the adjoint, its direct term diagonal)."""
    from ..cells.gru import GRUCell
    return isinstance(cell, GRUCell) and hasattr(cell, "layer_gate_vjp")


class TransposedOffDiagonal:
    """The correction r_t = (J_t^T - D_t) nu_t of one layer at all of a rank's n steps at once.

    Parameters
    ----------
    cell : Cell with :class:`~mgritnn.cells.base.LayerNewton`
    w : the cell's weights
    l : int
        The layer.
    lin : LayerStep
        The layer's step at the converged trajectory, with ``J`` its diagonal (n, B, H).
    dt : ndarray, shape (n,) or (n, B)
        Step sizes.

    Notes
    -----
    :meth:`apply` writes b = d + r (the right-hand side of the next diagonal scan). The GRU's
    form (module docstring) keeps the coefficients (n, B, 3H) and three scratch arrays; the
    generic form calls the cell's batched VJP (one pass over all points, its own temporaries).
    """

    def __init__(self, cell, w, l, lin, dt):
        self.cell, self.w, self.l, self.lin, self.dt = cell, w, l, lin, dt
        n, B, H = lin.h_new.shape
        self.fast = gru_fast_path(cell)
        if self.fast:
            ones = np.ones((n, B, H), lin.h_new.dtype)
            self.C = cell.layer_gate_vjp(ones, lin.h_gate, dt, lin.G, lin.N)[1]
            self.Woff = off_diagonal_blocks(w.Wh[l])
            self.V = np.empty((n, B, 3 * H), lin.h_new.dtype)
            self.U = np.empty((n, B, H), lin.h_new.dtype)

    def apply(self, nu, d, b):
        """b = d + (J_t^T - D_t) nu_t for every step t.

        Parameters
        ----------
        nu : ndarray, shape (n, B, H), C-contiguous
            The adjoint of each step's new state (the previous iterate's).
        d : ndarray, shape (n, B, H)
            The cotangents reaching the points from above.
        b : ndarray, shape (n, B, H)
            Receives the sum.
        """
        if self.fast:
            n, B, H = nu.shape
            _times_coeffs(self.C, nu, self.V)
            np.dot(self.V.reshape(n * B, 3 * H), self.Woff, out=self.U.reshape(n * B, H))
            _add(d, self.U, b)
        else:
            v, _ = self.cell.layer_step_vjp(self.w, self.l, nu, self.lin, self.dt, need_lam=True)
            _add_minus_diag(d, v, self.lin.J, nu, b)


__all__ = ["TransposedOffDiagonal", "off_diagonal_blocks", "gru_fast_path"]
