"""The serial solver: one sweep forward in time, backpropagation through time backward.

The ground truth every parallel solver is tested against. It uses the cells' fused whole-sequence
kernels (layer after layer; one GEMM per time step and layer on fixed row blocks), which compute
bitwise the same states as stepping all layers together with the step API.
"""
from ..cells import Workspace
from .base import SolveStats, Solver, register


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
        seq = cell.sequence_forward(w, ax0, h0, dt, keep=keep, ws=self.ws)
        h_last = h0.copy()
        for l, hs in enumerate(seq.hs):
            h_last[l] = hs[-1]
        return h_last, (seq if keep else None), SolveStats(step_evals=ax0.shape[0])

    def adjoint(self, cell, w, state, lam_last, grads):
        """Backpropagation through time; accumulates into ``grads`` and returns ``(dax0, stats)``."""
        _, dax0 = cell.sequence_vjp(w, state, lam_last, grads, ws=self.ws)
        return dax0, SolveStats(step_evals=dax0.shape[0])
