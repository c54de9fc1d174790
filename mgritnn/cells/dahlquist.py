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
from .base import Cell, LayerStep, OneLayer


class DahlquistWeights(NamedTuple):
    """The parameter of :class:`DahlquistCell`: ``lam``, a 0-d float array (the rate λ); also the
    shape of its gradient (:meth:`DahlquistCell.zero_grads`)."""
    lam: np.ndarray

    @property
    def dtype(self):
        return self.lam.dtype


class DahlquistCell(OneLayer, Cell):
    """Backward Euler for u' = λu + x (module docstring); its own coarse cell.

    Capabilities: :class:`~mgritnn.cells.base.LayerNewton` (one layer, :class:`OneLayer`: DEER
    solves it), none of the fused ones (the solvers step it through :meth:`step`)."""

    name = "dahlquist"

    def _factor(self, w, u, dt):
        """a = 1 / (1 - λ dt) per state, shaped to broadcast against u (K, *S); dt likewise
        (a scalar, (K,), or (K, S_0) per state and leading state entry, e.g. a batch row)."""
        dtv = np.asarray(dt, u.dtype)
        if dtv.ndim < 2:
            dtv = np.broadcast_to(dtv, (u.shape[0],))
        dtv = dtv.reshape(dtv.shape + (1,) * (u.ndim - dtv.ndim))
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
        ``cotangents`` gets ``[(dx, per-element dλ)]``; ``grads.lam`` (a
        :class:`DahlquistWeights` of gradients) is added to."""
        a, dtv = self._factor(w, u, dt)
        new = cache[0] if cache is not None else self.step(w, x, u, dt)
        dx = a * dtv * lam_next
        dlam = lam_next * dtv * a * new
        if grads is not None:
            np.add(grads.lam, dlam.sum(), out=grads.lam)
        if cotangents is not None:
            cotangents[:] = [(dx, dlam)]
        return a * lam_next, dx

    def accumulate_grads(self, grads, cache, cotangents):
        """``grads.lam`` += the sum of the steps' dλ."""
        np.add(grads.lam, cotangents[0][1].sum(), out=grads.lam)

    def zero_grads(self, w):
        """A zero gradient of λ, as a :class:`DahlquistWeights`."""
        return DahlquistWeights(np.zeros_like(w.lam))

    # -- one layer (DEER): the state's elements are rows of one unknown -------------------------

    def layer_step(self, w, l, x, h, dt, jacobian=None, fused=False):
        """One step of K states seen as one layer of rows of one unknown (see
        :meth:`OneLayer.layer_states`): ``h`` (K, n, 1), ``x`` (K, *X) with n elements per state; the
        Jacobian is the factor a, (K, n, 1, 1) dense or (K, n, 1) diagonal. The :class:`LayerStep`
        keeps ``x`` in ``G``."""
        if jacobian not in (None, "dense", "diag"):
            raise ConfigError(f"jacobian must be None, 'dense' or 'diag', got {jacobian!r}")
        new = self.step(w, x.reshape(h.shape), h, dt)
        J = None
        if jacobian is not None:
            a, _ = self._factor(w, h, dt)
            J = np.ascontiguousarray(np.broadcast_to(a, h.shape))
            J = J[..., None] if jacobian == "dense" else J
        return LayerStep(new, h, x, None, J)

    def layer_step_vjp(self, w, l, lam, lin, dt, need_lam=True):
        """VJP of :meth:`layer_step` at ``lin``: ``(a lam or None, (dx, dλ per element))`` with dx
        shaped like the step's inputs."""
        x, cot = lin.G, []
        lam_old, _ = self.step_vjp(w, x.reshape(lam.shape), lin.h_gate, dt, lam,
                                   cache=(lin.h_new,), cotangents=cot)
        dx, dlam = cot[0]
        return (lam_old if need_lam else None), (dx.reshape(x.shape), dlam)

    def layers_cache(self, xin, lins):
        """The steps' cache ``(u_new,)`` from the one layer's :class:`LayerStep`."""
        return (lins[0].h_new,)
