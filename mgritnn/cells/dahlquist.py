"""The scalar test equation u' = λu + x (Dahlquist) by backward Euler: a cell that is not a GRU.

MGRIT's theory is written for this equation: with the fine propagator
:math:`\\phi = 1 / (1 - \\lambda \\Delta t)` and the coarse one
:math:`\\psi = 1 / (1 - \\lambda m \\Delta t)` (coarsening factor m), two-level MGRIT with
F-relaxation reduces the error at the C-points by at most
:math:`|\\phi^m - \\psi| (1 - |\\psi|^{N_c - 1}) / (1 - |\\psi|) \\le |\\phi^m - \\psi| / (1 - |\\psi|)`
per iteration, and FCF-relaxation by :math:`|\\phi|^m` times that (Dobrev et al. 2017). It lets
the tests check the solvers against closed forms and the theory, and shows how to put any
time-stepper on the solvers (the step protocol of :mod:`mgritnn.cells.base`).

One step of K states: :math:`u' = a (u + \\Delta t\\, x)` with :math:`a = 1 / (1 - \\lambda \\Delta t)`.
States and inputs have any shape S (e.g. (B,) samples); λ is one real parameter.

References
----------
V. A. Dobrev, Tz. Kolev, N. A. Petersson, J. B. Schroder, "Two-level convergence theory for
multigrid reduction in time (MGRIT)", SIAM J. Sci. Comput. 39(5), 2017.
"""
from typing import NamedTuple

import numpy as np

from ..errors import ConfigError
from .base import Cell


class DahlquistWeights(NamedTuple):
    """The parameter of :class:`DahlquistCell`: ``lam``, a 0-d float array (the rate λ)."""
    lam: np.ndarray

    @property
    def dtype(self):
        return self.lam.dtype


class DahlquistCell(Cell):
    """Backward Euler for u' = λu + x (module docstring); its own coarse cell."""

    name = "dahlquist"

    def _factor(self, w, u, dt):
        """a = 1 / (1 - λ dt) per state, shaped to broadcast against u (K, *S); dt likewise."""
        dtv = np.broadcast_to(np.asarray(dt, u.dtype), (u.shape[0],))
        dtv = dtv.reshape((-1,) + (1,) * (u.ndim - 1))
        denom = 1 - w.lam * dtv
        if np.any(denom == 0):
            raise ConfigError("1 - lam dt is 0 for a step: backward Euler is singular there; "
                              "choose lam <= 0 or a step size other than 1/lam")
        return (1 / denom).astype(u.dtype), dtv

    def step(self, w, x, u, dt, out=None, cache=False):
        """u_new = (u + dt x) / (1 - λ dt) for K states (see :meth:`Cell.step`); the cache is
        ``(u_new,)``."""
        a, dtv = self._factor(w, u, dt)
        new = a * (u + dtv * x)
        if out is not None:
            out[...] = new
            new = out
        return (new, (new.copy(),)) if cache else new

    def step_vjp(self, w, x, u, dt, lam_next, grads=None, cache=None, cotangents=None):
        """λ_old = a λ', dx = a dt λ', and dλ = Σ λ' dt a u_new (see :meth:`Cell.step_vjp`);
        ``cotangents`` gets ``[(dx, per-element dλ)]``; ``grads["lam"]`` is added to."""
        a, dtv = self._factor(w, u, dt)
        new = cache[0] if cache is not None else self.step(w, x, u, dt)
        dx = a * dtv * lam_next
        dlam = lam_next * dtv * a * new
        if grads is not None:
            grads["lam"] += dlam.sum()
        if cotangents is not None:
            cotangents[:] = [(dx, dlam)]
        return a * lam_next, dx

    def accumulate_grads(self, grads, cache, cotangents):
        """``grads["lam"]`` += the sum of the steps' dλ."""
        grads["lam"] += cotangents[0][1].sum()
