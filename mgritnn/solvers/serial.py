"""The serial solver: one sweep forward in time, backpropagation through time backward.

The ground truth every parallel solver is tested against. It uses the cells' fused whole-sequence
kernels where a cell has them (the GRU cells: layer after layer; one GEMM per time step and layer on
fixed row blocks), which compute bitwise the same states as stepping all layers together with the
step API; any other cell of the step protocol (:mod:`mgritnn.cells.base`) is stepped one time point
at a time through :meth:`~mgritnn.cells.base.Cell.step` and its VJP.
"""
from typing import NamedTuple

import numpy as np

from ..cells import Workspace
from ..cells.base import tree_map
from .base import SolveStats, Solver, register


class _Steps(NamedTuple):
    """What the stepwise adjoint needs: inputs x (T, *X), step sizes (T,), trajectory u
    (T + 1, *S) and the steps' caches (stacked over the T steps)."""
    x: np.ndarray
    dt: np.ndarray
    u: np.ndarray
    cache: object


def _stack(parts):
    """One cache or cotangent nest from a list of nests of one step each (stacked over the steps)."""
    return tree_map(lambda *a: np.concatenate(a), parts[0], *parts[1:])


@register
class SerialSolver(Solver):
    """Sequential sweep over time; exact (no iteration).

    An instance reuses its work arrays between calls (:class:`~mgritnn.cells.gru.Workspace`): the
    ``state`` of a forward solve is valid until the next forward solve of the same instance.
    """

    name = "serial"

    def __init__(self):
        self.ws = Workspace()

    def forward(self, cell, w, ax0, h0, dt=1.0, keep=True, T=None, keys=None):
        """Serial sweep.

        Parameters
        ----------
        cell : GRUCell
        w : GRUWeights
        ax0 : ndarray, shape (T, B, 3H)
            Layer-0 input projection.
        h0 : ndarray, shape (L, B, H)
        dt : float or ndarray, shape (T,)
        keep : bool
            Keep what the adjoint needs.

        Returns
        -------
        h_last : ndarray, shape (L, B, H)
        state : SequenceCache or None
        stats : SolveStats
        """
        if not hasattr(cell, "sequence_forward"):
            return self._step_forward(cell, w, ax0, h0, dt, keep)
        seq = cell.sequence_forward(w, ax0, h0, dt, keep=keep, ws=self.ws)
        h_last = h0.copy()
        for l, hs in enumerate(seq.hs):
            h_last[l] = hs[-1]
        return h_last, (seq if keep else None), SolveStats(step_evals=ax0.shape[0])

    def adjoint(self, cell, w, state, lam_last, grads):
        """Backpropagation through time; accumulates into ``grads`` and returns ``(dax0, stats)``."""
        if isinstance(state, _Steps):
            return self._step_adjoint(cell, w, state, lam_last, grads)
        _, dax0 = cell.sequence_vjp(w, state, lam_last, grads, ws=self.ws)
        return dax0, SolveStats(step_evals=dax0.shape[0])

    # -- any cell of the step protocol ---------------------------------------------------------

    @staticmethod
    def _step_forward(cell, w, x, u0, dt, keep):
        T = x.shape[0]
        dtv = np.ascontiguousarray(np.broadcast_to(np.asarray(dt, u0.dtype), (T,)))
        u = np.empty((T + 1,) + u0.shape, u0.dtype)
        u[0] = u0
        caches = []
        for t in range(T):
            out, c = cell.step(w, x[t:t + 1], u[t:t + 1], dtv[t:t + 1], cache=True)
            u[t + 1] = out[0]
            caches.append(c)
        state = _Steps(x, dtv, u, _stack(caches) if T else None) if keep else None
        return u[-1].copy(), state, SolveStats(step_evals=T)

    @staticmethod
    def _step_adjoint(cell, w, state, lam_last, grads):
        """BPTT one step at a time; the parameter gradients from all steps' cotangents at once, in
        time order (as MGRIT's final sweep does)."""
        x, dtv, u, cache = state
        T = x.shape[0]
        lam = lam_last[None]
        dx, cots = np.empty_like(x), [None] * T
        for t in range(T - 1, -1, -1):
            cots[t] = []
            lam, dx[t:t + 1] = cell.step_vjp(w, x[t:t + 1], u[t:t + 1], dtv[t:t + 1], lam,
                                             cache=tree_map(lambda a: a[t:t + 1], cache),
                                             cotangents=cots[t])
        if T:
            cell.accumulate_grads(grads, cache, _stack(cots))
        return dx, SolveStats(step_evals=T)
