"""The fully implicit GRU cell ``implicit-newton``: backward Euler, one Newton solve per batch row.

One step of size :math:`\\Delta t` of :math:`dh/dt = f(h) = (1 - z(h)) \\odot (n(h) - h)` with the
gates at the **new** state (``docs/algorithms.md`` §1c): the new state :math:`y = h'`
is the root of

.. math::

    G(y) = y - h - \\Delta t\\, (1 - z(y)) \\odot (n(y) - y) = 0 .

No gate arithmetic is duplicated here. With the classic step (forward Euler, :math:`\\theta = 0`)
:math:`\\Phi_c(y) = y + \\Delta t\\, f(y)` and its Jacobian :math:`J_c = \\partial\\Phi_c/\\partial y`,
both from the kernels of :mod:`mgritnn.cells.gru`,

.. math::

    G(y) = 2 y - \\Phi_c(y) - h, \\qquad J_G(y) = 2 I - J_c(y) = I - \\Delta t\\, \\partial f/\\partial y .

Newton per batch row from the linearly implicit step (the ``implicit`` cell, §1b) as initial guess:
:math:`y \\leftarrow y - J_G(y)^{-1} G(y) / (1 + \\mathrm{damping})` until
:math:`\\|G(y)\\|_\\infty \\le` ``atol`` or ``max_iter`` updates; a row that converged is left alone
(so a row's result never depends on the other rows). Rows that do not converge are counted in the
cell's :class:`NewtonStats` and reported by a ``RuntimeWarning``, never silently accepted.

Derivatives by the implicit function theorem (:math:`\\partial G/\\partial h = -I`):

.. math::

    \\frac{\\partial h'}{\\partial h} = J_G(y)^{-1}, \\qquad J_G(y)^T \\mu = \\lambda', \\qquad
    \\lambda = \\mu, \\qquad \\partial L/\\partial\\theta \\mathrel{+}= \\Delta t\\,
    (\\partial f/\\partial\\theta)^T \\mu \\text{ at } (y, x),

and :math:`\\Delta t (\\partial f/\\partial\\theta)^T \\mu` is exactly the classic step's
pre-activation VJP at :math:`(\\mu, y)`, so the gradient kernels of the classic cell are reused, with
the gates and the weight gradient :math:`dW_h = dA_h^T y` at the new state.

References
----------
G. E. Moon, E. C. Cyr, "Parallel training of GRU networks with a multi-grid solver for long
sequences", ICLR 2022 (implicit GRU).
"""
import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..options import check_int, check_real, renamed
from .base import LayerStep, work_array
from .gru import CELLS, GRUCell, GRUStack, SequenceCache, dt_rows, as_dt

#: Default Newton tolerance on the max-norm of G per batch row, by dtype.
DEFAULT_TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}


@renamed("Newton", tol="atol")
@dataclass(frozen=True)
class NewtonConfig:
    """Options of the Newton solve of :class:`NewtonGRUCell` (validated; frozen).

    Attributes
    ----------
    atol : float or None
        Stop a row when :math:`\\|G(y)\\|_\\infty \\le` ``atol`` (absolute, per batch row and state).
        None: 1e-10 in float64, 1e-5 in float32 (:data:`DEFAULT_TOL`). G carries the rounding of
        :math:`\\Delta t\\, f`, about :math:`\\Delta t` times the machine epsilon, so in float32 a
        step size of a few hundred cannot reach 1e-5: such rows are counted as not converged.
        A max-norm, the same meaning as DEER's ``atol`` (a bound on every element); MGRIT's
        tolerance of a 2-norm is ``atol_l2``. Old name: ``tol``.
    max_iter : int
        Largest number of Newton updates per row (>= 1).
    damping : float
        Damped Newton, :math:`y \\leftarrow y - \\delta / (1 + \\mathrm{damping})` with
        :math:`J_G \\delta = G`: the root is unchanged, 0 is Newton (quadratic convergence), larger
        values take shorter steps (linear convergence; more robust far from the root).
    """
    atol: float = None
    max_iter: int = 8
    damping: float = 0.0

    def __post_init__(self):
        check_real("Newton atol", self.atol, low=0, low_open=True, none=True,
                   hint="None: 1e-10 in float64, 1e-5 in float32")
        check_int("Newton max_iter", self.max_iter, least=1)
        check_real("Newton damping", self.damping, low=0, hint="0 = plain Newton")

    def tolerance(self, dtype):
        """The tolerance in force for arrays of ``dtype``, as a scalar of that dtype."""
        dtype = np.dtype(dtype)
        return dtype.type(DEFAULT_TOL[dtype] if self.atol is None else self.atol)


class NewtonStats:
    """Cumulative counters of the Newton solves of one :class:`NewtonGRUCell` (mutable).

    Attributes
    ----------
    solves : int
        Row solves: states times batch rows, summed over all forward steps.
    iterations : int
        Newton updates, summed over the row solves (``iterations / solves`` is the mean per row).
    unconverged : int
        Row solves whose final :math:`\\|G\\|_\\infty` exceeded the tolerance (or was not finite)
        after ``max_iter`` updates, or whose Newton matrix was singular.
    max_residual : float
        Largest final :math:`\\|G\\|_\\infty` of any row solve (inf if one was not finite).
    """

    _FIELDS = ("solves", "iterations", "unconverged", "max_residual")

    def __init__(self):
        self.reset()

    def reset(self):
        """Set every counter to zero."""
        self.solves = 0
        self.iterations = 0
        self.unconverged = 0
        self.max_residual = 0.0

    def as_dict(self):
        """The counters as a dict (JSON-able)."""
        return {k: getattr(self, k) for k in self._FIELDS}

    def __repr__(self):
        return "NewtonStats(" + ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items()) + ")"


def _solve(A, b):
    """Solve A[i] x[i] = b[i] for a stack: A (n, H, H), b (n, H) or (n, H, m). A singular matrix
    gives NaN in its solution (the others are solved); returns (x, ok (n,) bool)."""
    vec = b.ndim == 2
    rhs = b[..., None] if vec else b
    try:
        x = np.linalg.solve(A, rhs)
        ok = np.ones(len(A), bool)
    except np.linalg.LinAlgError:
        x = np.empty(np.broadcast_shapes(rhs.shape, A.shape[:-1] + rhs.shape[-1:]), A.dtype)
        ok = np.ones(len(A), bool)
        for i in range(len(A)):
            try:
                x[i] = np.linalg.solve(A[i], rhs[i])
            except np.linalg.LinAlgError:
                x[i] = np.nan
                ok[i] = False
    return (x[..., 0] if vec else x), ok


class NewtonGRUCell(GRUStack):
    """The fully implicit (backward Euler) GRU cell, solved by Newton per batch row.

    A GRU stack (:class:`~mgritnn.cells.gru.GRUStack`: the step protocol, the input projections and
    the gradients) whose layer step is solved by Newton with two theta-family cells it holds: the
    classic cell :attr:`explicit` (the residual, the gates and the Jacobian at the iterate, and the
    gate VJP of the adjoint) and the linearly implicit cell :attr:`linear` (the initial guess).
    Every solver uses it as any other cell; the states the gates were evaluated at
    (``LayerStep.h_gate``, ``GRUCache.h``) are the **new** states. See the module docstring for
    the equations. Capabilities (:mod:`mgritnn.cells.base`):
    :class:`~mgritnn.cells.base.LayerNewton` and :class:`~mgritnn.cells.base.FusedSequence` (a
    loop over :meth:`layer_step`); not the compiled :class:`~mgritnn.cells.base.FusedChains` nor
    :class:`~mgritnn.cells.base.DiagonalNewton` (the theta family's kernels), so MGRIT advances it
    through :meth:`step` / :meth:`step_vjp`.

    Parameters
    ----------
    config : NewtonConfig, optional

    Attributes
    ----------
    name : str
        ``"implicit-newton"``.
    config : NewtonConfig
    stats : NewtonStats
        Cumulative counters of this instance's Newton solves (``stats.reset()`` to restart).
        ``get_cell("implicit-newton")`` hands out a new instance every time, so every model has
        its own; MGRIT's coarse levels use the model's cell (:meth:`coarse_cell`), so its counters
        include them.
    explicit, linear : GRUCell
        The classic and the linearly implicit cells the Newton solve is made of.

    Notes
    -----
    Forward (per batch row): :math:`G(y) = 2y - \\Phi_c(y) - h`, :math:`J_G = 2I - J_c(y)`,
    :math:`y_0` the linearly implicit step, :math:`y_{k+1} = y_k - J_G(y_k)^{-1} G(y_k) / (1 + d)`
    until :math:`\\|G(y_k)\\|_\\infty \\le` atol or k = max_iter. Adjoint:
    :math:`J_G(h')^T \\mu = \\lambda'`, :math:`\\lambda = \\mu`, pre-activation cotangents the
    classic gate VJP at :math:`(\\mu, h')`, :math:`dW_h \\mathrel{+}= dA_h^T h'`. A dense
    (K, B, H, H) Newton matrix and one LU solve (LAPACK, ``numpy.linalg.solve``) per row and update:
    O(H^3) per row, meant for correctness and small H, not speed. See ``docs/algorithms.md`` §1c.

    References
    ----------
    G. E. Moon, E. C. Cyr, "Parallel training of GRU networks with a multi-grid solver for long
    sequences", ICLR 2022.
    """

    name = "implicit-newton"

    def __init__(self, config=None):
        self.explicit = GRUCell("classic", 0.0)     # Phi_c: residual, gates, Jacobian at the iterate
        self.linear = GRUCell("implicit", 1.0)      # the initial guess
        self.config = NewtonConfig() if config is None else config
        if not isinstance(self.config, NewtonConfig):
            raise ConfigError(f"config must be a NewtonConfig, got {type(config).__name__}")
        self.stats = NewtonStats()

    def __repr__(self):
        return f"NewtonGRUCell({self.config!r})"

    def coarse_cell(self):
        """MGRIT's coarse cell: this fully implicit cell itself, with the coarse step size."""
        return self

    def instance(self):
        """A new cell with this one's config and its own counters."""
        return NewtonGRUCell(self.config)

    def _newton_matrices(self, w, l, y, dt, G, N):
        """J_G = 2 I - J_c of each row at the gates G, N of y: y, N (n, B, H), G (n, B, 3H),
        dt (n,) or (n, B); returns (n, B, H, H) (the identity for a row with dt 0)."""
        H = y.shape[2]
        J = self.explicit.layer_jacobian(w, l, y, dt, G, N, "dense")
        J *= -1
        idx = np.arange(H)
        J[:, :, idx, idx] += 2
        return J

    # -- one layer, K states ---------------------------------------------------------------------

    def layer_step(self, w, l, ax, h, dt, jacobian=None, fused=False):
        """One backward-Euler step of layer ``l`` for K independent states, and optionally its Jacobian.

        Parameters as :meth:`GRUCell.layer_step` (``h`` the old states (K, B, H), ``ax`` the layer's
        input projection (K, B, 3H), ``dt`` (K,) or (K, B)); ``jacobian`` returns
        :math:`\\partial h'/\\partial h = J_G(h')^{-1}` per state and row, (K, B, H, H) dense or its
        diagonal (K, B, H); ``fused`` is passed to the classic and linearly implicit evaluations.

        Returns
        -------
        LayerStep
            ``h_new`` (K, B, H) the new states; ``h_gate`` (K, B, H) the same values (the gates
            were evaluated there); ``G`` (K, B, 3H) = [r, z, W_h^n h' + b_h^n] and ``N`` (K, B, H)
            the gates at h'; ``J`` as requested.

        Notes
        -----
        Every row is counted in :attr:`stats`; rows above the tolerance after ``max_iter`` updates
        also raise a ``RuntimeWarning`` (shown once per place under Python's default filters).
        """
        if jacobian not in (None, "dense", "diag"):
            raise ConfigError(f"jacobian must be None, 'dense' or 'diag', got {jacobian!r}")
        K, B, H = h.shape
        dtype = h.dtype
        dt = dt_rows(dt, K, B, dtype)
        cfg = self.config
        tol = cfg.tolerance(dtype)
        scale = dtype.type(1.0 / (1.0 + cfg.damping))
        y = self.linear.layer_step(w, l, ax, h, dt, fused=fused).h_new
        live = np.ones((K, B), bool)          # rows still iterating
        iters = 0
        for k in range(cfg.max_iter + 1):
            s = self.explicit.layer_step(w, l, ax, y, dt, fused=fused)
            res = 2 * y - s.h_new - h         # G(y)
            rnorm = np.max(np.abs(res), axis=2)
            live &= rnorm > tol               # NaN: stops (and counts as not converged)
            if k == cfg.max_iter or not live.any():
                break
            ks, bs = np.nonzero(live)
            JG = self._newton_matrices(w, l, y[ks, bs][:, None], dt[ks, bs][:, None],
                                       s.G[ks, bs][:, None],
                                       s.N[ks, bs][:, None])[:, 0]
            delta, ok = _solve(JG, res[ks, bs])
            y[ks[ok], bs[ok]] -= scale * delta[ok]
            live[ks[~ok], bs[~ok]] = False    # singular Newton matrix: stop the row
            iters += int(np.count_nonzero(ok))
        bad = ~(rnorm <= tol)
        self._count(K * B, iters, rnorm, bad, tol)
        J = None
        if jacobian is not None:
            inv, _ = _solve(self._newton_matrices(w, l, y, dt, s.G, s.N).reshape(-1, H, H),
                            np.broadcast_to(np.eye(H, dtype=dtype), (K * B, H, H)))
            inv = inv.reshape(K, B, H, H)
            J = inv if jacobian == "dense" else np.ascontiguousarray(np.diagonal(inv, 0, 2, 3))
        return LayerStep(y.copy(), y, s.G, s.N, J)

    def _count(self, rows, iters, rnorm, bad, tol):
        st = self.stats
        st.solves += rows
        st.iterations += iters
        nbad = int(np.count_nonzero(bad))
        st.unconverged += nbad
        if rnorm.size:
            worst = float(np.max(rnorm)) if np.all(np.isfinite(rnorm)) else float("inf")
            st.max_residual = max(st.max_residual, worst)
        if nbad:
            warnings.warn(f"implicit-newton: some rows did not reach |G|_inf <= {float(tol):g} within "
                          f"max_iter={self.config.max_iter} Newton updates (counted in the cell's "
                          "stats.unconverged); raise max_iter or damping, or use a smaller dt",
                          RuntimeWarning, stacklevel=3)

    def layer_step_vjp(self, w, l, lam, lin, dt, need_lam=True):
        """VJP of :meth:`layer_step` for K states, by the implicit function theorem.

        Parameters
        ----------
        w : GRUWeights
        l : int
        lam : ndarray, shape (K, B, H), C-contiguous
            Adjoint of the new states.
        lin : LayerStep
            The forward step: ``h_gate`` (K, B, H) the new states, ``G`` (K, B, 3H) and ``N``
            (K, B, H) the gates there.
        dt : ndarray, shape (K,) or (K, B)
        need_lam : bool
            Return the adjoint of the old states (the transposed solve is needed either way).

        Returns
        -------
        lam_old : ndarray, shape (K, B, H), or None
            :math:`\\mu` with :math:`J_G(h')^T \\mu = \\lambda`, which is
            :math:`(\\partial h'/\\partial h)^T \\lambda`.
        cot : tuple (dax, dah) of ndarray, shape (K, B, 3H)
            Cotangents of the pre-activations ``W_x x + b_x`` and ``W_h h' + b_h``: the classic
            gate VJP at :math:`(\\mu, h')`.
        """
        K, B, H = lin.h_gate.shape
        dt = dt_rows(dt, K, B, lin.h_gate.dtype)
        JG = self._newton_matrices(w, l, lin.h_gate, dt, lin.G, lin.N)
        mu, _ = _solve(JG.reshape(-1, H, H).transpose(0, 2, 1), lam.reshape(-1, H))
        mu = np.ascontiguousarray(mu.reshape(K, B, H), dtype=lin.h_gate.dtype)
        pad = dt == 0
        if pad.any():              # padded steps: J_G = I, the adjoint passes unchanged (exactly)
            mu[pad] = lam[pad]
        cot = self.explicit.layer_gate_vjp(mu, lin.h_gate, dt, lin.G, lin.N)
        return (mu if need_lam else None), cot

    # -- whole sequence (serial solver): a loop over the step API --------------------------------

    def sequence_forward(self, w, ax0, h0, dt=1.0, keep=True, ws=None):
        """Serial sweep over a whole sequence, layer after layer, one :meth:`layer_step` per step.

        Parameters and returns as :meth:`GRUCell.sequence_forward` (the gates are kept at the new
        states).
        """
        T, B = ax0.shape[0], ax0.shape[1]
        L, H = w.num_layers, w.hidden_size
        dtype = w.dtype
        dtv = as_dt(dt, T, dtype, B)
        res = SequenceCache([], [], [], dtv)
        x_l = None
        for l in range(L):
            ax = (np.ascontiguousarray(ax0) if l == 0 else
                  self.layer_inputs(w, l, x_l, work_array(ws, ("ax", l), (T, B, 3 * H), dtype)))
            hs = work_array(ws, ("hs", l), (T + 1, B, H), dtype)
            hs[0] = h0[l]
            if keep:
                G = work_array(ws, ("G", l, True), (T, B, 3 * H), dtype)
                N = work_array(ws, ("N", l, True), (T, B, H), dtype)
            for t in range(T):
                s = self.layer_step(w, l, ax[t:t + 1], hs[t:t + 1], dtv[t:t + 1])
                hs[t + 1] = s.h_new[0]
                if keep:
                    G[t] = s.G[0]
                    N[t] = s.N[0]
            res.hs.append(hs)
            if keep:
                res.G.append(G)
                res.N.append(N)
            x_l = hs[1:]
        return res

    def sequence_vjp(self, w, seq, lam_last, grads, ws=None):
        """Backpropagation through time over a whole sequence (after ``sequence_forward(keep=True)``).

        Parameters and returns as :meth:`GRUCell.sequence_vjp`; the recurrent weights' gradient
        uses the new states ``hs[l][1:]``, where this cell's gates are evaluated.
        """
        L = w.num_layers
        hs0 = seq.hs[0]
        T, B, H = hs0.shape[0] - 1, hs0.shape[1], hs0.shape[2]
        dtype = hs0.dtype
        lam0 = np.empty((L, B, H), dtype)
        dxin = None
        for l in range(L - 1, -1, -1):
            dax = work_array(ws, ("dax", l), (T, B, 3 * H), dtype)
            dah = work_array(ws, ("dah", l), (T, B, 3 * H), dtype)
            hs = seq.hs[l]
            lam = np.array(lam_last[l], dtype=dtype)
            for t in range(T - 1, -1, -1):
                if dxin is not None:
                    lam += dxin[t]
                lin = LayerStep(None, hs[t + 1:t + 2], seq.G[l][t:t + 1], seq.N[l][t:t + 1], None)
                lam_old, (da, dh) = self.layer_step_vjp(w, l, lam[None], lin, seq.dt[t:t + 1])
                dax[t], dah[t] = da[0], dh[0]
                lam = lam_old[0]
            lam0[l] = lam
            xin = seq.hs[l - 1][1:] if l > 0 else None
            self.accumulate_layer_grads(grads, l, dax, dah, xin, hs[1:])
            if l > 0:
                dxin = self.layer_input_vjp(w, l, (dax, dah),
                                            work_array(ws, ("dxin", l), (T, B, H), dtype))
        return lam0, dax


CELLS["implicit-newton"] = NewtonGRUCell()

__all__ = ["DEFAULT_TOL", "NewtonConfig", "NewtonGRUCell", "NewtonStats"]
