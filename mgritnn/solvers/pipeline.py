"""Backpropagation through time over the time ranks, pipelined, with the adjoint's scale kept apart.

The exact fallback of a time-parallel adjoint (MGRIT's; see ``docs/gradient-quality.md`` §6):
each rank recomputes the forward sweep of its own time slice from the slice's first state (all
ranks at once), then the adjoint runs from the last rank to the first, each rank sweeping its
slice with :meth:`~mgritnn.cells.base.FusedSequence.sequence_vjp` (``scaled=True``) as soon as
its right neighbour has sent the adjoint at their common point. The adjoint travels with its
power-of-two exponent, so a sequence whose adjoint outgrows the dtype's range (exploding gradients;
float32 at T = 16384 on trained weights) gives the gradient's exact direction, as the serial sweep
does; the ranks then bring their gradients to the largest exponent of any rank (the first rank's,
as the adjoint grows backward in time).

On one process this is the serial solver's sweep, bit for bit. On several, each step's arithmetic
is the serial sweep's (the slice's trajectory is recomputed from its first state with the serial
kernel), and only the order of the parameter gradients' sum over the ranks differs.
"""
import numpy as np

from ..cells.base import FusedSequence, has, scale_pow2

__all__ = ["can_sweep_scaled", "pipelined_scaled_adjoint"]


def can_sweep_scaled(cell):
    """Whether :func:`pipelined_scaled_adjoint` serves ``cell``: whole-sequence kernels
    (:class:`~mgritnn.cells.base.FusedSequence`) whose adjoint keeps its scale apart
    (``scaled_sequence``: the GRU cells of the theta family)."""
    return has(cell, FusedSequence) and bool(getattr(cell, "scaled_sequence", False))


def pipelined_scaled_adjoint(tc, cell, w, x, ax0, u0, dt, lam_last, grads, lam_first=None):
    """The exact adjoint of one rank's time slice, pipelined over the ranks of ``tc`` (collective).

    Parameters
    ----------
    tc : :class:`~mgritnn.distributed.timecomm.TimeComm`
        The time ranks, in time order (rank r holds the r-th slice).
    cell : a cell with :func:`can_sweep_scaled`
    w : the cell's weights
    x : ndarray, shape (n, *X0)
        This rank's raw inputs (for :meth:`~mgritnn.cells.base.Cell.project_inputs_vjp`).
    ax0 : ndarray, shape (n, *X)
        Their projection (the GRU: (n, B, 3H)).
    u0 : ndarray, shape S
        The state at the slice's first point (the GRU: (L, B, H)): the forward solve's value
        there (exact after a converged or fallback forward).
    dt : float or ndarray, shape (n,) or (n, B)
        The slice's step sizes.
    lam_last : ndarray, shape S, or None
        The adjoint at the sequence's last point (the last rank only).
    grads : the cell's gradient NamedTuple
        Accumulated into, in place (zero on entry, or scaled with the rest).
    lam_first : ndarray, shape S, optional
        Receives the adjoint at the sequence's first point (the first rank only).

    Returns
    -------
    dax0 : ndarray, shape (n, *X)
        Cotangent of the projected inputs.
    exponent : int
        E, the same on every rank: ``dax0``, ``lam_first`` and ``grads`` are 2^-E times the true
        ones (0 unless the adjoint outgrew 2^:func:`~mgritnn.cells.base.adjoint_shift`).
    evals : int
        Step evaluations of this rank: its slice's forward and adjoint steps (2 n).
    """
    n = ax0.shape[0]
    seq = cell.sequence_forward(w, ax0, u0, dt, keep=True)
    lam = np.zeros_like(u0) if lam_last is None else np.array(lam_last, u0.dtype)
    exp_in = np.zeros(1, np.int64)
    tc.recv_prev(lam, "adjoint-sweep", 0, reverse=True)
    tc.recv_prev(exp_in, "adjoint-sweep", 1, reverse=True)
    lam0, dax0, e = cell.sequence_vjp(w, seq, lam, grads, scaled=True)
    cell.project_inputs_vjp(w, x, dax0, grads)
    mine = int(exp_in[0]) + int(e)
    tc.send_next(lam0, "adjoint-sweep", 0, reverse=True)
    tc.send_next(np.array([mine], np.int64), "adjoint-sweep", 1, reverse=True)
    top = int(tc.allreduce(np.array([mine], np.float64), op="max")[0]) if tc.size > 1 else mine
    if top != mine:               # this rank's results at the common exponent (exact but for
        k = mine - top            # values that fall below the smallest normal number)
        scale_pow2(grads, k)
        dax0 = np.ldexp(dax0, k).astype(dax0.dtype)
        lam0 = np.ldexp(lam0, k).astype(lam0.dtype)
    if lam_first is not None and tc.rank == 0:
        lam_first[...] = lam0
    return dax0, top, 2 * n
