"""The serial solver: one sweep forward in time, backpropagation through time backward.

The ground truth every parallel solver is tested against. It uses the cells' fused whole-sequence
kernels where a cell has them (the GRU cells: layer after layer; one GEMM per time step and layer on
fixed row blocks), which compute bitwise the same states as stepping all layers together with the
step API; any other cell of the step protocol (:mod:`mgritnn.cells.base`) is stepped one time point
at a time through :meth:`~mgritnn.cells.base.Cell.step` and its VJP.

The adjoint keeps its scale in a power-of-two exponent (``SolveStats.exponent``): where exploding
gradients would overflow the dtype, the returned cotangents and gradients are 2^-exponent times
the true ones, their direction exact to round-off (:meth:`SerialSolver.adjoint`).
"""
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..cells.base import FusedSequence, Workspace, adjoint_shift, has, scale_pow2, tree_map
from .base import SolveStats, Solver, one_rank, register, step_sizes


class _Sweep(NamedTuple):
    """What the adjoint of a fused sweep needs: the raw inputs x (T, *X0) and the cell's
    whole-sequence cache."""
    x: np.ndarray
    seq: object


class _Steps(NamedTuple):
    """What the stepwise adjoint needs: raw inputs x (T, *X0), projected inputs xp (T, *X), step
    sizes (T,) or (T, B), trajectory u (T + 1, *S) and the steps' caches (stacked over the T steps)."""
    x: np.ndarray
    xp: np.ndarray
    dt: np.ndarray
    u: np.ndarray
    cache: object


def step_through(cell, w, xp, u0, dt, cache=False):
    """The trajectory of a cell stepped one time point at a time (:meth:`Cell.step`).

    Parameters
    ----------
    cell : Cell
    w : the cell's weights
    xp : ndarray, shape (T, *X)
        Projected inputs (:meth:`Cell.project_inputs`).
    u0 : ndarray, shape S
    dt : ndarray, shape (T,) or (T, B)
    cache : bool
        Also keep the steps' caches.

    Returns
    -------
    u : ndarray, shape (T + 1, *S)
    caches : the steps' caches stacked over the T steps, or None (without ``cache``, or T = 0)
    """
    T = xp.shape[0]
    u = np.empty((T + 1,) + u0.shape, u0.dtype)
    u[0] = u0
    caches = []
    for t in range(T):
        out = cell.step(w, xp[t:t + 1], u[t:t + 1], dt[t:t + 1], cache=cache)
        if cache:
            out, c = out
            caches.append(c)
        u[t + 1] = out[0]
    if not cache:
        return u, None
    return u, (_stack(caches) if T else None)


def _stack(parts):
    """One cache or cotangent nest from a list of nests of one step each (stacked over the steps)."""
    return tree_map(lambda *a: np.concatenate(a), parts[0], *parts[1:])


@dataclass(frozen=True)
class SerialConfig:
    """Options of the serial solver: none (its config, so that every registered solver has one)."""

    def make_solver(self, comm=None, state=None):
        """A :class:`SerialSolver` (``comm``: None or one rank; ``state``: an empty one)."""
        one_rank("serial", comm)
        return SerialSolver(self, state=state)


@register(config=SerialConfig)
class SerialSolver(Solver):
    """Sequential sweep over time; exact (no iteration). Runs any cell of the step protocol (the
    whole-sequence sweeps of :class:`~mgritnn.cells.base.FusedSequence` where the cell has them).

    An instance reuses its work arrays between calls (:class:`~mgritnn.cells.Workspace`): the
    ``state`` of a forward solve is valid until the next forward solve of the same instance. It
    remembers nothing between solves (its :class:`~mgritnn.solvers.base.SolverState` is empty).
    """

    name = "serial"

    def __init__(self, config=None, state=None):
        self.config = config or SerialConfig()
        super().__init__(state)
        self.ws = Workspace()

    def forward(self, cell, w, x, h0, dt=1.0, keep=True, T=None, keys=None):
        """Serial sweep.

        Parameters
        ----------
        cell : Cell
        w : the cell's weights (GRUWeights for the GRU cells)
        x : ndarray, shape (T, *X0)
            Raw inputs (the GRU: (T, B, I)); the cell projects them (:meth:`Cell.project_inputs`).
        h0 : ndarray, shape S (the GRU: (L, B, H))
        dt : float or ndarray, shape (T,) or (T, B)
            Step sizes (:func:`~mgritnn.solvers.base.step_sizes`; 0: a padded step, the identity).
        keep : bool
            Keep what the adjoint needs.

        Returns
        -------
        h_last : ndarray, shape S
        state : what :meth:`adjoint` needs, or None
        stats : SolveStats
        """
        self.check(cell)
        xp = cell.project_inputs(w, x, ws=self.ws)
        if not has(cell, FusedSequence):
            return self._step_forward(cell, w, x, xp, h0, dt, keep)
        seq = cell.sequence_forward(w, xp, h0, dt, keep=keep, ws=self.ws)
        h_last = cell.join_layers([hs[-1] for hs in seq.hs])
        return h_last, (_Sweep(x, seq) if keep else None), SolveStats(step_evals=xp.shape[0])

    def adjoint(self, cell, w, state, lam_last, grads, lam_first=None):
        """Backpropagation through time, with the adjoint's scale kept in a power-of-two exponent.

        Parameters
        ----------
        cell : Cell
        w : the cell's weights
        state : from :meth:`forward` with ``keep``
        lam_last : ndarray, shape S
            Adjoint at the last point.
        grads : the cell's gradient NamedTuple
            Accumulated into, in place (what it holds on entry is scaled with the rest: see
            ``stats.exponent``).
        lam_first : ndarray, shape S, optional
            Receives the adjoint at point 0.

        Returns
        -------
        dxp : ndarray, shape (T, *X)
            Cotangent of the projected inputs.
        stats : SolveStats
            ``stats.exponent`` E: ``dxp``, ``lam_first`` and all of ``grads`` are 2^-E times the
            true ones. E > 0 only where the adjoint grows beyond 2^s (s =
            :func:`~mgritnn.cells.adjoint_shift`, 64 for float32; exploding gradients), which
            keeps the gradient's direction exact to round-off where its norm exceeds the dtype's
            range; otherwise E = 0 and the results are bit for bit those of the unscaled sweep.
            A cell whose fused sweep does not scale (``scaled_sequence`` false: the
            ``implicit-newton`` cell) always reports 0.
        """
        if isinstance(state, _Steps):
            lam0, dxp, stats = self._step_adjoint(cell, w, state, lam_last, grads)
        elif getattr(cell, "scaled_sequence", False):
            lam0, dxp, e = cell.sequence_vjp(w, state.seq, lam_last, grads, ws=self.ws,
                                             scaled=True)
            stats = SolveStats(step_evals=dxp.shape[0], exponent=e)
        else:
            lam0, dxp = cell.sequence_vjp(w, state.seq, lam_last, grads, ws=self.ws)
            stats = SolveStats(step_evals=dxp.shape[0])
        if lam_first is not None:
            lam_first[...] = lam0
        cell.project_inputs_vjp(w, state.x, dxp, grads)
        return dxp, stats

    # -- any cell of the step protocol ---------------------------------------------------------

    @staticmethod
    def _step_forward(cell, w, x, xp, u0, dt, keep):
        T = xp.shape[0]
        dtv = step_sizes(dt, T, u0.dtype)
        u, caches = step_through(cell, w, xp, u0, dtv, cache=keep)
        state = _Steps(x, xp, dtv, u, caches) if keep else None
        return u[-1].copy(), state, SolveStats(step_evals=T)

    @staticmethod
    def _step_adjoint(cell, w, state, lam_last, grads):
        """BPTT one step at a time; the parameter gradients from all steps' cotangents at once, in
        time order (as MGRIT's final sweep does).

        The adjoint's scale is kept apart as in the fused sweeps, with one exponent for the whole
        state (a cell of the protocol has no row structure known here): before each step, an
        adjoint whose largest entry exceeds 2^s (s = :func:`~mgritnn.cells.adjoint_shift`) is
        multiplied by 2^-s; at the end the steps' cotangents are brought to the final exponent E
        (exact unless a value underflows), ``grads`` is multiplied by 2^-E, and the gradients
        are accumulated.

        Returns
        -------
        lam0 : ndarray, shape S
        dx : ndarray, shape (T, *X)
        stats : SolveStats
            With the exponent E (``lam0``, ``dx`` and ``grads`` at scale 2^-E).
        """
        _, xp, dtv, u, cache = state
        T = xp.shape[0]
        lam = lam_last[None]
        dx, cots = np.empty_like(xp), [None] * T
        shift = adjoint_shift(u.dtype)
        thr = np.ldexp(1.0, shift)
        e, ex = 0, np.zeros(T, np.int64)
        for t in range(T - 1, -1, -1):
            m = np.max(np.abs(lam)) if lam.size else 0.0
            if thr < m < np.inf:
                lam = np.ldexp(lam, -shift)
                e += shift
            ex[t] = e
            cots[t] = []
            lam, dx[t:t + 1] = cell.step_vjp(w, xp[t:t + 1], u[t:t + 1], dtv[t:t + 1], lam,
                                             cache=tree_map(lambda a: a[t:t + 1], cache),
                                             cotangents=cots[t])
        if e:                           # every step's cotangents at the final exponent e
            for t in range(T):
                k = int(ex[t]) - e
                if k:
                    np.ldexp(dx[t], k, out=dx[t])
                    cots[t] = tree_map(lambda a: np.ldexp(a, k), cots[t])
            scale_pow2(grads, -e)
        if T:
            cell.accumulate_grads(grads, cache, _stack(cots))
        return lam[0], dx, SolveStats(step_evals=T, exponent=e)
