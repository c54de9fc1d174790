"""quasi-DEER's adjoint without dense Jacobians: diagonal-preconditioned iterations on the linear
adjoint recurrence (issue 25, item 2).

The adjoint of one layer, at its points lo .. hi - 1 of a rank's block, is the linear recurrence

.. math::

    \\mu_t = J_t^T \\mu_{t+1} + d_t \\quad (t = n - 1, \\dots, 0), \\qquad
    \\mu_n = \\text{terminal},

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

The correction, per cell (:func:`off_diagonal_vjp`):

* a cell with its own form (:class:`~mgritnn.cells.base.OffDiagonalVJP`: the GRU cells of the
  theta family, :mod:`mgritnn.cells.gru_qadjoint`, one GEMM with the off-diagonal W_h over all
  points and rows);
* any other cell of :class:`~mgritnn.cells.base.LayerNewton` (:class:`TransposedOffDiagonal`):
  its batched step VJP (``layer_step_vjp`` with ``need_lam``) minus D_t nu_t.

Memory: O(n B H) (the coefficients 4 n B H, the iterates and scratch about 6 n B H), against
O(n B H^2) for the dense Jacobians of the direct reverse scan.
"""
import numba
import numpy as np
from numba import prange

from ..cells.base import OffDiagonalVJP, has
from ..config import JIT_PAR


@numba.njit(**JIT_PAR)
def _add_minus_diag(d, v, D, nu, b):
    """b = d + v - D nu: all (n, B, H)."""
    n, B, H = d.shape
    for t in prange(n):
        for r in range(B):
            for i in range(H):
                b[t, r, i] = d[t, r, i] + (v[t, r, i] - D[t, r, i] * nu[t, r, i])


@numba.njit(**JIT_PAR)
def change(new, old, atol, rtol, err, delta, size):
    """err[t] = max over (b, i) of |new - old| / (atol + rtol |new|) (0 where unchanged; inf where
    the denominator is 0 and the element changed, or new is not finite), delta[t] = max
    |new - old|, size[t] = max |new| (inf where new is NaN or inf); then old = new.
    new, old (n, B, H);
    err, delta, size (n,) float64."""
    n, B, H = new.shape
    for t in prange(n):
        e = 0.0
        c = 0.0
        m = 0.0
        for r in range(B):
            for i in range(H):
                v = new[t, r, i]
                a = abs(v)
                if not a <= m:
                    m = a if a == a else np.inf       # NaN: inf, which stays the maximum
                dd = abs(v - old[t, r, i])
                c = max(c, dd)
                if dd != 0:
                    sc = atol + rtol * a
                    dd = dd / sc if sc > 0 else np.inf
                if not dd <= e:
                    e = dd if (dd == dd and a < np.inf) else np.inf
                old[t, r, i] = v
        err[t] = e
        delta[t] = c
        size[t] = m


def has_own_form(cell):
    """Whether ``cell`` gives the correction in its own form (:class:`OffDiagonalVJP` and its
    ``has_off_diagonal_vjp()``): then the forward need not form the diagonal (the form makes
    it)."""
    return has(cell, OffDiagonalVJP) and cell.has_off_diagonal_vjp()


def off_diagonal_vjp(cell, w, l, lin, dt, ws=None):
    """The correction operator of layer l (``D``, ``apply(nu, d, b)``, ``cotangents(nu)``): the
    cell's own form where it has one (:func:`has_own_form`), else :class:`TransposedOffDiagonal`."""
    if has_own_form(cell):
        return cell.off_diagonal_vjp(w, l, lin, dt, ws)
    return TransposedOffDiagonal(cell, w, l, lin, dt)


class TransposedOffDiagonal:
    """The correction r_t = (J_t^T - D_t) nu_t of one layer at all of a rank's n steps at once
    by the cell's batched step VJP, and the layer's step cotangents at the end.

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

    Attributes
    ----------
    D : ndarray, shape (n, B, H)
        The diagonal of every step's Jacobian (the preconditioner).
    """

    def __init__(self, cell, w, l, lin, dt):
        self.cell, self.w, self.l, self.lin, self.dt = cell, w, l, lin, dt
        self.D = np.ascontiguousarray(lin.J)

    def apply(self, nu, d, b):
        """b = d + (J_t^T - D_t) nu_t for every step t; nu (C-contiguous), d, b (n, B, H)."""
        v, _ = self.cell.layer_step_vjp(self.w, self.l, nu, self.lin, self.dt, need_lam=True)
        _add_minus_diag(d, v, self.D, nu, b)

    def cotangents(self, nu):
        """The layer's step cotangents for the adjoint ``nu`` (n, B, H) of its new states (what
        ``layer_step_vjp(..., need_lam=False)`` gives)."""
        return self.cell.layer_step_vjp(self.w, self.l, nu, self.lin, self.dt, need_lam=False)[1]


__all__ = ["TransposedOffDiagonal", "change", "has_own_form", "off_diagonal_vjp"]
