"""DEER and quasi-DEER: Newton's method over the whole sequence (Lim et al., ICLR 2024).

The recurrence h_{t+1} = Phi(h_t, x_t) of one layer is the root of a system of T equations in the
T unknown states. Newton's method on that system linearizes every step at the current trajectory
h^(k) and solves the linear recurrence

.. math::

    h^{(k+1)}_{t+1} = J_t h^{(k+1)}_t + b_t, \\qquad J_t = \\partial\\Phi/\\partial h (h^{(k)}_t),
    \\qquad b_t = \\Phi(h^{(k)}_t) - J_t h^{(k)}_t,

by a parallel scan (:func:`mgritnn.solvers.scan.linear_recurrence`: chunks on threads, blocks on MPI
ranks). Evaluating Phi and J at all T points is one batched call (:meth:`Cell.layer_step` with
``fused=True``): the sequential dependence is only in the scan. The solver uses only the layer-wise
operations of the step protocol (:mod:`mgritnn.cells.base`), so it runs on any cell that has them
(the GRU cells; the scalar test equation as one layer of rows of one unknown). quasi-DEER keeps only diag(J_t),
so a scan costs O(T B H) instead of O(T B H^3) (Gonzalez et al. 2024).

Choices of this implementation (``docs/algorithms.md`` §5):

* Layers are solved one after another: layer l's recurrence takes the converged trajectory of layer
  l - 1 as its input (exactly the stack's equations; each layer's Newton system has H unknowns per
  point).
* Exact termination: after k iterations the first k points equal the serial sweep (up to rounding),
  whatever the Jacobian used, so at most T iterations solve any sequence.
* Stopping: ``max |h^(k+1) - h^(k)| / (atol + rtol |h^(k+1)|) <= 1`` over all elements (one allreduce
  per iteration), or ``max_iter``.
* Damping: J is replaced by J / (1 + damping). The fixed point is unchanged; damping = 0 is Newton,
  large damping tends to the Jacobi (Picard) iteration h_{t+1} = Phi(h_t^(k)), which cannot diverge
  (its error front still moves one point per iteration). A fixed stand-in for ELK's trust region
  (Gonzalez et al. 2024) at the cost of a plain scan.
* ELK / quasi-ELK (``trust_region=True``): Levenberg-Marquardt on the merit
  phi(h) = 1/2 sum_t |h_t - Phi(h_{t-1})|^2 instead: every iteration solves the damped problem
  min_d 1/2 |r + J_r d|^2 + lambda/2 |d|^2 exactly (its block-tridiagonal normal equations, by a
  partitioned elimination over chunks and ranks, :mod:`mgritnn.solvers.elk`; ELK computes the same
  minimizer as a Kalman smoother), keeps the step when phi decreases as predicted (ratio > 1e-4)
  and adapts lambda by Nielsen's rule (:meth:`DEERSolver._solve_layer_lm`). The merit never grows,
  so nothing diverges; but the exact-termination front of Newton is lost (the damped step at t
  depends on later residuals), and where phi has a near-stationary point (J_r nearly singular:
  expansive Jacobians along the iterate) the iteration can stall: then it reports
  non-convergence and falls back like DEER.
* Divergence (the error grew by ``divergence`` over its smallest value, or a non-finite iterate) and
  non-convergence are reported in the statistics; with ``fallback=True`` (default) the solver then
  runs the serial sweep (pipelined over the ranks) and says so (``SolveStats.fallback``).
* Gradient: the adjoint recurrence mu_t = J_t^T mu_{t+1} + (cotangent from the layer above) with
  the **full** Jacobian at the converged trajectory (also for quasi-DEER, so the gradient is that
  of the computed trajectory, not biased by the diagonal approximation), then one batched pass
  forms every step's pre-activation cotangents and the parameter gradients. DEER
  (``adjoint="dense"``): one reverse scan with the dense Jacobians (O(T B H^2) memory, O(H^3) per
  step). quasi-DEER (``adjoint="quasi"``, its default): no dense Jacobian at all, diagonal-
  preconditioned iterations mu^(k+1)_t = D_t mu^(k+1)_{t+1} + d_t + (J_t^T - D_t) mu^(k)_{t+1},
  the correction an exact VJP at all points at once (the GRU: one GEMM), one diagonal reverse
  scan each (:mod:`mgritnn.solvers.qadjoint`); O(T B H) memory, exact at convergence (and after
  T + 1 iterations: the same front as the forward), the iterations and a fallback to the serial
  reverse sweep reported in the adjoint's statistics.
* Time blocks: rank r owns steps [T r / P, T (r + 1) / P). Results agree with the serial solver to
  the tolerance, and between rank counts to round-off (the scan's summaries round differently).

References
----------
Y. H. Lim, Q. Zhu, J. Selfridge, M. F. Kasim, "Parallelizing non-linear sequential models over the
sequence length", ICLR 2024 (DEER).
X. Gonzalez, A. Warrington, J. T. H. Smith, S. W. Linderman, "Towards scalable and stable
parallelization of nonlinear RNNs", NeurIPS 2024 (quasi-DEER, ELK).
"""
import time
from dataclasses import dataclass, field, fields
from typing import NamedTuple

import numba
import numpy as np
from numba import prange

from ..config import DIVERGED, JIT_PAR, NONFINITE, NOT_CONVERGED, OK
from ..errors import ConfigError
from ..cells.base import (DiagonalNewton, FusedSequence, LayerNewton, Workspace, has, missing,
                          scale_pow2, work_array)
from ..options import check_bool, check_choices, check_int, check_real
from .base import SolveStats, TimeParallelSolver, deprecated_comm, register, step_sizes
from .elk import lm_step, model_residual
from .pipeline import can_sweep_scaled, pipelined_scaled_adjoint
from .qadjoint import change, has_own_form, off_diagonal_vjp
from .scan import linear_recurrence
from .serial import step_through

#: Default tolerances (atol, rtol) per dtype.
DEFAULT_TOLERANCES = {np.dtype(np.float64): (1e-6, 1e-4), np.dtype(np.float32): (1e-4, 1e-3)}
_INITS = ("zero", "input", "warm")
_ADJOINTS = ("auto", "dense", "quasi")


@dataclass(frozen=True)
class DEERConfig:
    """Options of the DEER / quasi-DEER solver (validated on construction).

    Parameters
    ----------
    quasi : bool
        quasi-DEER: the diagonal of each step's Jacobian in the Newton iteration (the gradient
        is still exact: see ``adjoint``).
    atol, rtol : float or None
        Stop when every element's update is within ``atol + rtol |h|`` (``numpy.allclose``'s
        test of the new iterate against the old: a max-norm over all elements, ``atol``
        absolute and ``rtol`` relative to each element's own size, the same meaning as the
        Newton cell's ``atol``; MGRIT's tolerances bound a 2-norm and are named ``atol_l2``,
        ``rtol_l2``). None: 1e-6 / 1e-4 in float64, 1e-4 / 1e-3 in float32.
    max_iter : int
        Newton iterations per layer at most.
    damping : float
        lambda >= 0: the iteration uses J / (1 + lambda) (0: Newton; large: Picard).
    trust_region : bool
        ELK (quasi-ELK with quasi): Levenberg-Marquardt steps with the damping adapted from the
        merit 1/2 sum_t |h_t - Phi(h_{t-1})|^2 (a step is kept when the merit decreases), each
        step an exact parallel solve (:func:`mgritnn.solvers.elk.lm_step`); instead of the fixed
        damping (Gonzalez et al. 2024).
    lm_lambda : float
        ELK: the Levenberg-Marquardt lambda > 0 at the start of every layer's solve (relative to
        the unit diagonal of the residual's Jacobian: 1e-3 is nearly Newton, 1 a strong damping).
    initial_guess : {"zero", "input", "warm"}
        Initial trajectory: zeros; h_{t+1} = Phi(0, x_t); or each sample's converged trajectory of
        the previous solve that saw it (keyed by the ``keys`` the trainer passes; zeros otherwise;
        memory: T L H values per sample of the data set).
    fallback : bool
        Run the serial sweep when the iteration did not converge (reported in the statistics).
    divergence : float
        Declare divergence when the error exceeds its smallest value so far by this factor.
    chunks : int or None
        Time chunks per rank of the parallel scan (None: chosen from the shape).
    adjoint : {"auto", "dense", "quasi"}
        How the gradient solves the adjoint recurrence mu_t = J_t^T mu_{t+1} + d_t: "dense",
        one reverse scan with the full transposed Jacobians, kept by the forward (O(T B H^2)
        memory, O(H^3) per step); "quasi", diagonal-preconditioned iterations whose correction
        is the exact VJP at every point at once, one diagonal scan each
        (:mod:`mgritnn.solvers.qadjoint`; O(T B H) memory), to ``atol`` (relative to the
        adjoint's largest entry) and ``rtol`` per element, at most ``adjoint_max_iter``
        iterations, the ``fallback`` as the forward's (the serial reverse sweep); "auto": quasi
        for quasi-DEER, dense for DEER.
    adjoint_max_iter : int or None
        Iterations of the "quasi" adjoint per layer at most (None: ``max_iter``).
    max_memory : float
        Bytes per rank allowed for what the Newton iterations and the gradient keep (dense
        Jacobians: T B H^2 per layer; the quasi adjoint: about (6 L + 12) T B H values); beyond
        it a ConfigError suggests quasi-DEER or fewer steps per rank.
    comm : mpi4py communicator, optional
        Deprecated (a ``DeprecationWarning``): the ranks that share the time axis, which now go
        to ``make_solver(config, comm)``; kept for older callers (not compared, not shown).
    """
    quasi: bool = field(default=False, metadata={"flag": False})   # (--solver quasi-deer)
    atol: float = None
    rtol: float = None
    max_iter: int = 50
    damping: float = 0.0
    trust_region: bool = False
    lm_lambda: float = 1e-3
    initial_guess: str = field(default="zero", metadata={"flag": {"choices": _INITS}})
    fallback: bool = True
    divergence: float = 1e4
    chunks: int = None
    adjoint: str = field(default="auto", metadata={"flag": {"choices": _ADJOINTS}})
    adjoint_max_iter: int = None
    max_memory: float = 8e9
    comm: object = field(default=None, compare=False, repr=False, metadata={"option": False})

    def __post_init__(self):
        name = "quasi-DEER" if self.quasi else "DEER"
        check_bool(f"{name} quasi", self.quasi)
        check_bool(f"{name} trust_region", self.trust_region)
        check_int(f"{name} max_iter", self.max_iter, least=1)
        check_real(f"{name} atol", self.atol, low=0, none=True)
        check_real(f"{name} rtol", self.rtol, low=0, none=True)
        if self.atol == 0 and self.rtol == 0:
            raise ConfigError(f"{name} atol and rtol cannot both be 0 (nothing could converge): "
                              "give atol > 0")
        check_real(f"{name} damping", self.damping, low=0)
        check_real(f"{name} lm_lambda", self.lm_lambda, low=0, low_open=True,
                   hint="the initial Levenberg-Marquardt damping of trust_region, e.g. 1e-3")
        self._check_trust_region(name)
        check_choices(name, self)
        check_bool(f"{name} fallback", self.fallback)
        check_real(f"{name} divergence", self.divergence, low=1, low_open=True)
        check_int(f"{name} chunks", self.chunks, least=1, none=True)
        check_int(f"{name} adjoint_max_iter", self.adjoint_max_iter, least=1, none=True)
        check_real(f"{name} max_memory", self.max_memory, low=0, low_open=True,
                   hint="bytes of Jacobians per rank")
        deprecated_comm("DEERConfig", self.comm)

    def _check_trust_region(self, name):
        """The options of the fixed damping and of the trust region exclude each other."""
        default = {f.name: f.default for f in fields(self)}
        if self.trust_region:
            for opt, why in (("damping", "DEER's fixed damping J / (1 + damping)"),
                             ("divergence", "the update's growth test of undamped DEER")):
                if getattr(self, opt) != default[opt]:
                    raise ConfigError(f"{name} {opt} ({why}) does not apply with trust_region "
                                      f"(ELK adapts its damping and never lets the merit grow): "
                                      f"leave {opt} at {default[opt]:g}, set lm_lambda for the "
                                      "initial damping")
        elif self.lm_lambda != default["lm_lambda"]:
            raise ConfigError(f"{name} lm_lambda applies with trust_region only: set "
                              "trust_region=True (--trust-region) or leave lm_lambda at its default")

    def tolerances(self, dtype):
        """(atol, rtol) for ``dtype``: the given values, or the defaults of that dtype."""
        atol, rtol = DEFAULT_TOLERANCES[np.dtype(dtype)]
        return (atol if self.atol is None else self.atol), (rtol if self.rtol is None else self.rtol)

    def adjoint_kind(self):
        """"dense" or "quasi": how the gradient solves the adjoint (``adjoint`` with "auto"
        resolved)."""
        if self.adjoint == "auto":
            return "quasi" if self.quasi else "dense"
        return self.adjoint

    def make_solver(self, comm=None, state=None):
        """A :class:`DEERSolver` of this config over the ranks of ``comm`` (None: the
        deprecated ``self.comm``, else MPI's world under an MPI launcher, else one process),
        remembering ``state`` (a :class:`~mgritnn.solvers.base.SolverState`)."""
        return DEERSolver(self, comm, state)


def quasi_deer_config(**options):
    """A :class:`DEERConfig` with ``quasi=True`` (the options of ``solver="quasi-deer"``)."""
    return DEERConfig(**dict(options, quasi=True))


# ------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------

@numba.njit(**JIT_PAR)
def _offset_dense(J, h, F, scale, b):
    """J *= scale (unless 1) and b = F - J h per row: J (T, B, H, H), h, F, b (T, B, H)."""
    T, B, H = h.shape
    for q in prange(T * B):
        t = q // B
        r = q - t * B
        for i in range(H):
            acc = F[t, r, i]
            for j in range(H):
                if scale != 1:
                    J[t, r, i, j] *= scale
                acc -= J[t, r, i, j] * h[t, r, j]
            b[t, r, i] = acc


@numba.njit(**JIT_PAR)
def _offset_diag(J, h, F, scale, b):
    """J *= scale (unless 1) and b = F - J h elementwise: J, h, F, b (T, B, H)."""
    T, B, H = h.shape
    for q in prange(T * B):
        t = q // B
        r = q - t * B
        for i in range(H):
            if scale != 1:
                J[t, r, i] *= scale
            b[t, r, i] = F[t, r, i] - J[t, r, i] * h[t, r, i]


@numba.njit(**JIT_PAR)
def _update(new, old, atol, rtol, err, change):
    """err[t] = max over (b, i) of |new - old| / (atol + rtol |new|) (inf if new is not finite) and
    change[t] = max |new - old|; then old = new. new, old (T, B, H); err, change (T,) float64.
    With atol = 0, an unchanged 0 is converged and an element that became exactly 0 is measured
    against rtol |old| (a finite error: not converged yet, never "non-finite")."""
    T, B, H = new.shape
    for t in prange(T):
        e = 0.0
        c = 0.0
        for r in range(B):
            for i in range(H):
                v = new[t, r, i]
                d = abs(v - old[t, r, i])
                c = max(c, d)
                if d != 0:
                    scale = atol + rtol * abs(v)
                    d = d / (scale if scale > 0 else rtol * abs(old[t, r, i]))
                if not d <= e:             # also catches NaN
                    e = d if (d == d and abs(v) < np.inf) else np.inf
                old[t, r, i] = v
        err[t] = e
        change[t] = c


class _DEERState(NamedTuple):
    """What the adjoint needs: per layer the trajectory hs (T_loc + 1, B, H) (point lo first), its
    linearization (LayerStep with the dense Jacobian (T_loc, B, H, H), or for the quasi adjoint
    its diagonal (T_loc, B, H), or None where the adjoint makes the diagonal itself: the GRU),
    the layer inputs; the step sizes; the raw inputs x (T_loc, *X0)
    of this rank's steps."""
    hs: list
    lin: list
    xin: list
    dt: np.ndarray
    x: np.ndarray


# ------------------------------------------------------------------------------------------------
# The solver
# ------------------------------------------------------------------------------------------------

@register(config=DEERConfig)
class DEERSolver(TimeParallelSolver):
    """DEER / quasi-DEER forward and adjoint over the ranks of ``comm`` (module docstring).

    Parameters
    ----------
    config : DEERConfig, optional
    comm : mpi4py communicator, optional
        The time ranks (None: the config's deprecated ``comm``, else MPI's world under an MPI
        launcher, else one process).
    state : SolverState, optional
        What it remembers (:class:`~mgritnn.solvers.base.SolverState`): ``warm``, key (T, sample
        index) -> that sample's local trajectory per layer (L, T_loc, H).

    A cell must have the layer-wise Newton steps (:class:`~mgritnn.cells.base.LayerNewton`);
    quasi-DEER uses the one-pass diagonal linearization of
    :class:`~mgritnn.cells.base.DiagonalNewton` where the cell has it, and the fallback sweep
    the whole-sequence sweeps of :class:`~mgritnn.cells.base.FusedSequence`.
    """

    name = "deer"
    requires = (LayerNewton,)
    remembers = frozenset({"warm"})
    #: Methods of :class:`~mgritnn.cells.base.LayerNewton` that a cell of one layer may leave to
    #: :class:`~mgritnn.cells.base.Cell` (its one-layer defaults, or the input rows of the
    #: layers above the first, which it has none of): checked when the weights say L > 1.
    one_layer_defaults = ("num_layers", "layer_states", "join_layers", "layer_inputs",
                          "layer_input_vjp")

    def __init__(self, config=None, comm=None, state=None):
        self.config = config or DEERConfig()
        super().__init__(self.config.comm if comm is None else comm, state)
        #: The quasi adjoint's work arrays, reused between solves of one shape (what an adjoint
        #: returns from it, the cotangent of the inputs, is overwritten by the next adjoint).
        self.ws = Workspace()

    def supports(self, cell):
        """What ``cell`` lacks of :class:`~mgritnn.cells.base.LayerNewton` (those of
        :attr:`one_layer_defaults` are checked by :meth:`forward` for a stack of layers)."""
        lacks = [n for n in missing(cell, LayerNewton) if n not in self.one_layer_defaults]
        return [f"LayerNewton ({', '.join(lacks)})"] if lacks else []

    def _check_layers(self, cell, L):
        """A stack of L > 1 layers needs the layer-to-layer maps (ConfigError otherwise)."""
        lacks = [n for n in missing(cell, LayerNewton) if n in self.one_layer_defaults[3:]]
        if L > 1 and lacks:
            raise ConfigError(f"solver {self.name!r} cannot run {L} layers of the "
                              f"{getattr(cell, 'name', type(cell).__name__)!r} cell: it lacks "
                              f"LayerNewton ({', '.join(lacks)}). Use --solver serial or mgrit, "
                              "or one layer")

    def local_steps(self, T):
        """Steps [T r / P, T (r + 1) / P) of rank r."""
        return T * self.rank // self.size, T * (self.rank + 1) // self.size

    # -- communication (through the time-communication service ``self.tc``) ---------------------

    def _max(self, *x):
        """The maxima of the numbers ``x`` over the ranks (one allreduce), as floats."""
        return [float(e) for e in self.tc.allreduce(np.array(x, np.float64), op="max")]

    # -- forward -------------------------------------------------------------------------------

    def forward(self, cell, w, x, h0, dt=1.0, keep=True, T=None, keys=None):
        """DEER forward solve of this rank's steps.

        Parameters
        ----------
        cell : Cell
            Any cell with the layer-wise operations of the step protocol.
        w : the cell's weights (GRUWeights for the GRU cells)
        x : ndarray, shape (T_loc, *X0)
            Raw inputs of this rank's steps ``local_steps(T)`` (the GRU: (T_loc, B, I)), projected
            here once (:meth:`Cell.project_inputs`).
        h0 : ndarray, shape S (the GRU: (L, B, H))
            Initial state (read on rank 0).
        dt : float or ndarray, shape (T,) or (T, B)
            Step sizes of the whole sequence (:func:`~mgritnn.solvers.base.step_sizes`; 0: a
            padded step, whose Jacobian is the identity).
        keep : bool
            Linearize at the converged trajectory for :meth:`adjoint`.
        T : int, optional
            Steps of the whole sequence (default: ``T_loc`` on one rank).
        keys : ndarray of int, shape (B,), optional
            Sample names for ``initial_guess="warm"``.

        Returns
        -------
        h_last : ndarray, shape S, on the last rank, else None
        state : _DEERState or None
        stats : SolveStats
            ``iterations`` summed over the layers, ``history`` the scaled update norm of every
            iteration (layers one after another), ``residual`` the largest absolute change in
            the last iteration of any layer, ``fallback`` whether the serial sweep ran (then the
            result is exact and ``status`` says why it ran). Without fallback, a layer that did not
            converge passes its last iterate on and ``status`` reports it.
        """
        self.check(cell)
        cfg = self.config
        t0 = time.perf_counter()
        wait0 = self.tc.wait_time
        T = x.shape[0] if T is None else int(T)
        lo, hi = self.local_steps(T)
        if T < self.size:
            raise ConfigError(f"DEER needs at least one step per rank: {T} steps on {self.size} ranks")
        if x.shape[0] != hi - lo:
            raise ValueError(f"x holds {x.shape[0]} steps, but this rank owns steps [{lo}, {hi})")
        ax0 = cell.project_inputs(w, x)
        L, dtype = cell.num_layers(w), w.dtype
        self._check_layers(cell, L)
        h0s = [a[0] for a in cell.layer_states(h0[None])]      # per layer (B, H)
        B, H = max((a.shape for a in h0s), key=lambda s: s[1])
        dense_bytes = (hi - lo) * B * H * H * dtype.itemsize
        adj = cfg.adjoint_kind()
        if ((keep and adj == "dense") or not cfg.quasi) and dense_bytes > cfg.max_memory:
            raise ConfigError(
                f"DEER needs {dense_bytes / 1e9:.1f} GB per rank for the dense Jacobians of {hi - lo} "
                f"steps x batch {B} x hidden {H}^2, over max_memory {cfg.max_memory / 1e9:.1f} GB: "
                "use more ranks, a smaller batch, quasi-deer (O(T B H) memory, also for training: "
                "adjoint='quasi'), or raise max_memory")
        diag_bytes = (6 * L + 12) * (hi - lo) * B * H * dtype.itemsize
        if keep and adj == "quasi" and diag_bytes > cfg.max_memory:
            raise ConfigError(
                f"DEER's quasi adjoint needs about {diag_bytes / 1e9:.1f} GB per rank ({hi - lo} "
                f"steps x batch {B} x hidden {H} x (6 L + 12) values), over max_memory "
                f"{cfg.max_memory / 1e9:.1f} GB: use more ranks, a smaller batch, or raise "
                "max_memory")
        dtv = step_sizes(dt, T, dtype, lo, hi)
        atol, rtol = cfg.tolerances(dtype)
        warm = cfg.initial_guess == "warm" and keys is not None
        wkeys = [(T, int(k)) for k in keys] if warm else None

        stats = SolveStats(message="converged")
        hs_all, xin, axs, x_l = [], [], [], None
        for l in range(L):
            ax = ax0 if l == 0 else cell.layer_inputs(w, l, x_l)
            guess = None
            if warm:
                guess = np.zeros((hi - lo,) + h0s[l].shape, dtype)
                for b, key in enumerate(wkeys):
                    if key in self.state.warm:
                        guess[:, b] = self.state.warm[key][l]
            hs = self._start(cell, w, l, ax, h0s[l], dtv, guess)
            solve = self._solve_layer_lm if cfg.trust_region else self._solve_layer
            status, iters, hist, resid, evals = solve(cell, w, l, ax, h0s[l], dtv, atol, rtol, hs,
                                                      T)
            stats.iterations += iters
            stats.history += hist
            stats.residual = max(stats.residual, resid)
            stats.step_evals += evals * (hi - lo)
            if status != OK and stats.status == OK:   # report the first layer that failed
                stats.status = status
                stats.message = {NOT_CONVERGED: f"layer {l}: not converged in {cfg.max_iter} iterations",
                                 DIVERGED: f"layer {l}: diverged (the update grew {cfg.divergence:g}x)",
                                 NONFINITE: f"layer {l}: non-finite iterate"}[status]
            if status != OK and self.falls_back:
                break
            hs_all.append(hs)                         # without fallback: the last iterate
            xin.append(x_l)
            axs.append(ax)
            x_l = hs[1:]
        if stats.status != OK and self.falls_back:
            stats.fallback = True
            stats.message += "; ran the serial sweep instead"
            hs_all = self._serial_sweep(cell, w, ax0, h0, dtv)
            stats.step_evals += hi - lo
            xin = [None] + [hs[1:] for hs in hs_all[:-1]]
            axs = [ax0] + [cell.layer_inputs(w, l, xl) for l, xl in enumerate(xin) if l > 0]
        if warm and (stats.status == OK or stats.fallback):
            for b, key in enumerate(wkeys):
                self.state.warm[key] = np.stack([hs[1:, b] for hs in hs_all])
        state = None
        if keep:
            lin = []
            # the quasi adjoint: O(T B H); the GRU's makes the diagonal itself
            jac = "dense" if adj == "dense" else (None if has_own_form(cell) else "diag")
            for l in range(L):
                lin.append(cell.layer_step(w, l, axs[l], np.ascontiguousarray(hs_all[l][:-1]), dtv,
                                           jacobian=jac, fused=True))
            stats.step_evals += hi - lo
            state = _DEERState(hs_all, lin, xin, dtv, x)
        h_last = None
        if self.is_last:
            h_last = cell.join_layers([hs[-1] for hs in hs_all])
        stats.wait_time = self.tc.wait_time - wait0
        stats.seconds = time.perf_counter() - t0
        return h_last, state, stats

    def _start(self, cell, w, l, ax, h0, dtv, guess):
        """The initial trajectory hs (T_loc + 1, B, H) of layer l (point lo first)."""
        cfg = self.config
        n = ax.shape[0]
        B, H = h0.shape
        dtype = w.dtype
        hs = np.zeros((n + 1, B, H), dtype)
        if self.rank == 0:
            hs[0] = h0
        if cfg.initial_guess == "input":
            hs[1:] = cell.layer_step(w, l, ax, np.zeros((n, B, H), dtype), dtv, fused=True).h_new
        elif guess is not None:
            hs[1:] = guess
        if cfg.initial_guess != "zero" and n:
            start = np.empty((B, H), dtype)
            self.tc.shift(hs[-1], start, "deer-start", l)
            if self.rank > 0:
                hs[0] = start
        return hs

    def _solve_layer(self, cell, w, l, ax, h0, dtv, atol, rtol, hs, T):
        """Newton iterations of one layer on the trajectory hs (T_loc + 1, B, H), in place.
        Returns (status, iterations, history, last largest absolute update, step evaluations
        per step)."""
        cfg = self.config
        n = ax.shape[0]
        B, H = h0.shape
        dtype = w.dtype
        kind = "diag" if cfg.quasi else "dense"
        scale = dtype.type(1.0 / (1.0 + cfg.damping))
        b = np.empty((n, B, H), dtype)
        new = np.empty((n, B, H), dtype)
        err = np.empty(n, np.float64)
        change = np.empty(n, np.float64)
        history, best, status, resid = [], np.inf, NOT_CONVERGED, 0.0
        k = 0
        # quasi-DEER on a theta-family cell: one pass makes J and b (no gates kept), into arrays
        # reused by every iteration
        one_pass = cfg.quasi and has(cell, DiagonalNewton)
        J = np.empty((n, B, H), dtype) if one_pass else None
        while k < cfg.max_iter:
            k += 1
            h_lin = np.ascontiguousarray(hs[:-1])
            if one_pass:
                cell.layer_newton_diag(w, l, ax, h_lin, dtv, scale, J, b)
            else:
                step = cell.layer_step(w, l, ax, h_lin, dtv, jacobian=kind, fused=True)
                J = step.J
                (_offset_diag if cfg.quasi else _offset_dense)(J, h_lin, step.h_new, scale, b)
                step = None
            with np.errstate(over="ignore", invalid="ignore"):    # NaN/inf: status NONFINITE
                _, start = linear_recurrence(J, b, h0, out=new, chunks=cfg.chunks, comm=self.tc)
            if not one_pass:
                J = None                   # free this Jacobian before the next one is made
            _update(new, hs[1:], atol, rtol, err, change)
            if self.rank > 0:
                hs[0] = start
            e, resid = self._max(err.max(initial=0.0), change.max(initial=0.0))
            history.append(e)
            if not np.isfinite(e):
                status = NONFINITE
                break
            if e <= 1.0:
                status = OK
                break
            best = min(best, e)
            if e > cfg.divergence * best:
                status = DIVERGED
                break
        return status, k, history, resid, k

    def _merit(self, res):
        """1/2 sum of res^2 over all ranks (float64)."""
        local = 0.5 * float(np.sum(np.square(res, dtype=np.float64)))
        return float(self.tc.allreduce(np.array([local]))[0])

    def _solve_layer_lm(self, cell, w, l, ax, h0, dtv, atol, rtol, hs, T):
        """ELK / quasi-ELK: Levenberg-Marquardt iterations of one layer on the trajectory hs
        (T_loc + 1, B, H), in place; returns as :meth:`_solve_layer` (``history``: per iteration
        the larger of the scaled update and the scaled residual of the trial point).

        Every iteration solves the damped problem of the merit phi = 1/2 sum_t |r_t|^2,
        r_t = h_t - Phi(h_{t-1}), exactly (:func:`~mgritnn.solvers.elk.lm_step`; the dense or
        the diagonal Jacobian), and evaluates phi at the trial point. The trial is kept when
        rho = (phi - phi_trial) / (phi - |r + J_r d|^2 / 2) > 1e-4; then lambda *= max(1/3,
        1 - (2 rho - 1)^3), nu = 2, else lambda *= nu, nu *= 2 (Nielsen's rule; lambda at most
        1e16). Converged when the update of a trial is within ``atol + rtol |h|`` elementwise
        (DEER's test) and so is its residual (it is then kept whatever rho).
        """
        cfg = self.config
        n, (B, H), dtype = ax.shape[0], h0.shape, w.dtype
        kind = "diag" if cfg.quasi else "dense"
        lam, nu = cfg.lm_lambda, 2.0
        err_d, err_r = np.empty(n, np.float64), np.empty(n, np.float64)
        change, scratch = np.empty(n, np.float64), np.empty(n, np.float64)
        trial = np.empty_like(hs)
        d = np.empty((n, B, H), dtype)
        start = np.empty((B, H), dtype)
        history, status, resid, evals, k = [], NOT_CONVERGED, 0.0, 0, 0
        J = res = None
        phi = np.nan
        while k < cfg.max_iter:
            if J is None:                  # linearize at the current trajectory
                step = cell.layer_step(w, l, ax, np.ascontiguousarray(hs[:-1]), dtv,
                                       jacobian=kind, fused=True)
                J, res, step = step.J, hs[1:] - step.h_new, None
                phi, evals = self._merit(res), evals + 1
                if not np.isfinite(phi):
                    status = NONFINITE
                    break
            k += 1
            lm_step(J, res, lam, out=d, chunks=cfg.chunks, comm=self.tc, T=T)
            pred = phi - self._merit(model_residual(J, d, res, comm=self.tc))
            trial[1:] = hs[1:] + d
            trial[0] = hs[0]
            self.tc.shift(trial[-1], start, "deer-start", l)
            if self.rank > 0:
                trial[0] = start
            new = cell.layer_step(w, l, ax, np.ascontiguousarray(trial[:-1]), dtv,
                                  fused=True).h_new
            evals += 1
            phi_new = self._merit(trial[1:] - new)
            _update(trial[1:].copy(), hs[1:].copy(), atol, rtol, err_d, change)
            _update(trial[1:].copy(), new, atol, rtol, err_r, scratch)
            e_d, e_r, resid = self._max(err_d.max(initial=0.0), err_r.max(initial=0.0),
                                        change.max(initial=0.0))
            history.append(max(e_d, e_r))
            rho = (phi - phi_new) / pred if pred > 0 and np.isfinite(phi_new) else -np.inf
            converged = e_d <= 1.0 and e_r <= 1.0
            if converged or rho > 1e-4:
                hs[...] = trial
                J = res = None
                if converged:
                    status = OK
                    break
                lam, nu = lam * max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3), 2.0
            else:
                lam, nu = min(lam * nu, 1e16), nu * 2.0
        return status, k, history, resid, evals

    def _serial_sweep(self, cell, w, ax0, h0, dtv):
        """The serial sweep of the whole stack, pipelined over the ranks (the fallback): the
        cell's fused sweep, or step by step."""
        start = h0.copy()
        self.tc.recv_prev(start, "deer-sweep")
        if has(cell, FusedSequence):
            hs_all = cell.sequence_forward(w, ax0, start, dtv, keep=False).hs
        else:
            hs_all = cell.layer_states(step_through(cell, w, ax0, start, dtv)[0])
        hs_all = [np.ascontiguousarray(hs) for hs in hs_all]
        self.tc.send_next(cell.join_layers([hs[-1] for hs in hs_all]), "deer-sweep")
        return hs_all

    # -- adjoint -------------------------------------------------------------------------------

    def adjoint(self, cell, w, state, lam_last, grads, lam_first=None):
        """Adjoint of the converged trajectory, one layer after another from the top, then one
        batched pass for the parameter gradients of this rank's steps.

        Each layer's adjoint recurrence mu_t = J_t^T mu_{t+1} + d_t is solved by one reverse scan
        with the full transposed Jacobians the forward kept (``adjoint="dense"``, DEER's
        default), or without any dense Jacobian by diagonal-preconditioned iterations
        (``adjoint="quasi"``, quasi-DEER's default; :meth:`_adjoint_layer_quasi`). Where those do
        not converge within ``adjoint_max_iter`` (or give NaN/inf) and the solver falls back
        (the config's ``fallback``, or within :meth:`falling_back`), the serial reverse sweep
        runs instead, pipelined over the ranks (:meth:`_serial_adjoint`; also where the dense
        scan overflows: an exploding adjoint, kept at a power-of-two scale), and ``stats.fallback``
        says so; without the fallback the last iterate's gradient is returned and ``stats.status``
        reports the failure (the model's ``strict`` raises for NaN/inf and divergence).

        Parameters
        ----------
        cell : Cell
        w : the cell's weights
        state : _DEERState
            From :meth:`forward` with ``keep``.
        lam_last : ndarray, shape S
            The adjoint at the last point (read on the last rank only).
        grads : the cell's gradient NamedTuple
            The parameter gradients of this rank's steps, the input projection's included, are
            added to it.
        lam_first : None
            The adjoint at point 0 is not supported yet: a ConfigError.

        Returns
        -------
        dxp : ndarray, shape (T_loc, *X)
            The cotangent of the projected inputs (the GRU: dax0 (T_loc, B, 3H)).
        stats : SolveStats
            ``iterations`` (the quasi adjoint's, summed over the layers; 0 for the dense scan),
            ``history`` (the scaled change of each iteration), ``status``/``message``,
            ``fallback``, ``step_evals`` (one per step for the dense scan and the parameter
            pass; the quasi iterations in layer steps, as the forward counts them), ``exponent``
            (nonzero only where the fallback sweep kept an exploding adjoint's scale: the GRU
            cells on any number of ranks, other cells on one).
        """
        if lam_first is not None:
            raise ConfigError(f"solver {self.name!r} does not give the adjoint at the first point "
                              "(lam_first), which a model with a learned initial state needs: "
                              "use the serial or the mgrit solver")
        if state is None:
            raise ValueError("the forward solve did not keep its state (keep=False, or it failed "
                             "without fallback): nothing to differentiate")
        t0 = time.perf_counter()
        wait0 = self.tc.wait_time
        cfg = self.config
        L = cell.num_layers(w)
        dtype = w.dtype
        atol, rtol = cfg.tolerances(dtype)
        stats = SolveStats(message="converged")
        lam_l = None if lam_last is None else [a[0] for a in cell.layer_states(lam_last[None])]
        dxin = None                                   # cotangent at points lo+1 .. hi from above
        cot = [None] * L
        for l in range(L - 1, -1, -1):
            lin = state.lin[l]
            n, B, H = lin.h_new.shape
            terminal = np.zeros((B, H), dtype)
            # mu at points lo .. hi-1: mu_t = J_t^T mu_{t+1} + d_t, d_t the cotangent at point t
            d = np.zeros((n, B, H), dtype)
            if dxin is not None and n:
                d[1:] = dxin[:-1]
                recv = np.zeros((B, H), dtype)
                self.tc.shift(dxin[-1], recv, "deer-cotangent", l)
                if self.rank > 0:
                    d[0] = recv
            if self.is_last:
                terminal[...] = lam_l[l] if lam_l is not None else 0
                if dxin is not None and n:
                    terminal += dxin[-1]
            dense = lin.J is not None and lin.J.ndim == 4
            if dense:                                  # the dense reverse scan
                mu = np.empty((n, B, H), dtype)
                with np.errstate(over="ignore", invalid="ignore"):   # checked below
                    _, after = linear_recurrence(lin.J, d, terminal, out=mu, reverse=True,
                                                 chunks=cfg.chunks, comm=self.tc)
                nu = np.empty((n, B, H), dtype)        # adjoint of each step's new state
                nu[:-1] = mu[1:]
                if n:
                    nu[-1] = after
                stats.step_evals += n
            else:
                status, iters, hist, resid, nu, op = self._adjoint_layer_quasi(
                    cell, w, l, lin, state.dt, d, terminal, atol, rtol)
                stats.iterations += iters
                stats.history += hist
                stats.residual = max(stats.residual, resid)
                stats.step_evals += iters * n
                if status != OK and stats.status == OK:
                    stats.status = status
                    cap = cfg.adjoint_max_iter or cfg.max_iter
                    stats.message = "adjoint " + {
                        NOT_CONVERGED: f"layer {l}: not converged in {cap} iterations",
                        DIVERGED: f"layer {l}: diverged (the change grew {cfg.divergence:g}x)",
                        NONFINITE: f"layer {l}: non-finite iterate"}[status]
                if status != OK and self.falls_back:
                    break
            if dense:
                _, cot[l] = cell.layer_step_vjp(w, l, nu, lin, state.dt, need_lam=False)
            else:
                cot[l], op = op.cotangents(nu), None
            if l > 0:
                dxin = cell.layer_input_vjp(w, l, cot[l])
        if dense and stats.status == OK and not self._finite(cot):
            stats.status = NONFINITE           # the scan overflowed: an exploding adjoint
            stats.message = "adjoint: the dense scan gave NaN/inf"
        if stats.status != OK and self.falls_back:
            dxp, sstats = self._serial_adjoint(cell, w, state, lam_last, grads)
            stats.fallback = True
            stats.exponent = sstats.exponent
            stats.step_evals += sstats.step_evals
            stats.message += "; ran the serial reverse sweep instead"
            if sstats.status != OK:                    # the sweep overflowed too: say so
                stats.fallback = False
                stats.status = sstats.status
                stats.message += f" ({sstats.message})"
        else:
            cell.accumulate_grads(grads, cell.layers_cache(state.xin, state.lin), cot)
            cell.project_inputs_vjp(w, state.x, cot[0][0], grads)
            stats.step_evals += cot[0][0].shape[0]
            dxp = cot[0][0]
        if stats.status == OK and stats.iterations == 0 and not stats.history:
            stats.message = "exact"
        if not dense and stats.status == OK and not self._finite(dxp, grads):
            stats.status = NONFINITE                   # e.g. a parameter gradient's sum overflowed
            stats.message = "the gradient is not finite (NaN/inf)"
        stats.wait_time = self.tc.wait_time - wait0
        stats.seconds = time.perf_counter() - t0
        return dxp, stats

    def _adjoint_layer_quasi(self, cell, w, l, lin, dt, d, terminal, atol, rtol):
        """The adjoint of layer l by diagonal-preconditioned iterations (module
        :mod:`mgritnn.solvers.qadjoint`): mu^(k+1)_t = D_t mu^(k+1)_{t+1} + d_t
        + (J_t^T - D_t) nu^(k)_t, one diagonal reverse scan each, from nu^(0) = 0.

        Stops when every element's change, scaled by ``atol S + rtol |mu|`` (S the largest
        |mu| of the previous iterate over all ranks: the adjoint's scale is the loss's, so the
        absolute tolerance is taken relative to it; one allreduce per iteration), is e <= 1 and
        so is the error estimate e rho / (1 - rho), rho = e_k / e_(k-1) (at most 0.99) the
        observed contraction (a slowly contracting iteration, trained weights, is stopped by
        the estimate, not by a small change); after
        ``adjoint_max_iter`` iterations (``max_iter`` if None), when the change grew by
        ``divergence`` over its smallest value, or at a non-finite iterate.

        Parameters
        ----------
        lin : LayerStep
            The converged step of the layer, ``J`` its diagonal (n, B, H) or None (the GRU's
            form, :class:`~mgritnn.cells.base.OffDiagonalVJP`, makes it).
        dt : ndarray, shape (n,) or (n, B)
        d : ndarray, shape (n, B, H)
            The cotangents reaching points lo .. hi - 1 from the layer above.
        terminal : ndarray, shape (B, H)
            The adjoint at the last point of the sequence (read on the last rank).
        atol, rtol : float

        Returns
        -------
        status : int
        iterations : int
        history : list of float
            The scaled change of every iteration.
        resid : float
            The largest absolute change of the last iteration.
        nu : ndarray, shape (n, B, H)
            The adjoint of each step's new state (points lo + 1 .. hi), the last iterate.
        op : the correction operator (:func:`~mgritnn.solvers.qadjoint.off_diagonal_vjp`)
            Its ``cotangents`` give the
            layer's step cotangents.
        """
        cfg = self.config
        n, B, H = d.shape
        dtype = d.dtype
        cap = cfg.adjoint_max_iter or cfg.max_iter
        ws = self.ws
        op = off_diagonal_vjp(cell, w, l, lin, dt, ws)
        D = op.D
        buf = work_array(ws, "qadj-buf", (n + 1, B, H), dtype)
        buf[...] = 0
        mu, nu = buf[:n], buf[1:]                      # points lo .. hi - 1 and lo + 1 .. hi
        new = work_array(ws, "qadj-new", (n, B, H), dtype)
        b = work_array(ws, "qadj-b", (n, B, H), dtype)
        err, delta, size = (np.empty(n, np.float64) for _ in range(3))
        history, best, status, resid, scale, prev = [], np.inf, NOT_CONVERGED, 0.0, 0.0, np.inf
        k = 0
        while k < cap:
            k += 1
            if k == 1:
                b[...] = d                             # nu^(0) = 0: no correction
            else:
                op.apply(nu, d, b)
            with np.errstate(over="ignore", invalid="ignore"):   # a non-finite iterate stops
                _, after = linear_recurrence(D, b, terminal, out=new, reverse=True,
                                             chunks=cfg.chunks, comm=self.tc)
            change(new, mu, atol * scale, rtol, err, delta, size)     # mu = new
            buf[n] = after
            e, resid, scale = self._max(err.max(initial=0.0), delta.max(initial=0.0),
                                        size.max(initial=0.0))
            if not np.isfinite(scale):                 # NaN or inf in the iterate
                history.append(np.inf)
                status = NONFINITE
                break
            if k == 1 or not np.isfinite(e):
                # from an all-zero iterate (nu^(0) = 0; inf only where atol S is 0): the change
                # is the iterate itself, 1 / (atol + rtol) relative to its own largest entry
                history.append(1.0 / (atol + rtol) if scale > 0 else 0.0)
                prev = np.inf
                continue
            history.append(e)
            # the error left is about the change times rate / (1 - rate) for a linear iteration
            # contracting at that rate (the last two changes' ratio, at most 0.99): stop when
            # that estimate, not only the change, is within the tolerance
            rate = min(e / prev, 0.99) if 0 < prev < np.inf else 0.0
            if e * max(1.0, rate / (1.0 - rate)) <= 1.0:
                status = OK
                break
            prev = e
            best = min(best, e)
            if e > cfg.divergence * best:
                status = DIVERGED
                break
        return status, k, history, resid, np.ascontiguousarray(nu), op

    def _finite(self, *arrays):
        """Whether every array (nests of tuples of arrays, None skipped) is finite on every rank
        (one allreduce)."""
        def ok(a):
            if a is None:
                return True
            if isinstance(a, (tuple, list)):
                return all(ok(b) for b in a)
            return bool(np.all(np.isfinite(a)))
        return self._max(float(not ok(list(arrays))))[0] == 0

    def _serial_adjoint(self, cell, w, state, lam_last, grads):
        """The fallback of the quasi adjoint and of an overflowing dense scan: backpropagation through time of this rank's steps
        from its first point of the converged trajectory, pipelined from the last rank to the
        first, with the adjoint's scale kept in a power-of-two exponent where it would outgrow the
        dtype (``stats.exponent``, the same on every rank).

        The GRU cells (:func:`~mgritnn.solvers.pipeline.can_sweep_scaled`): MGRIT's exact
        fallback, :func:`~mgritnn.solvers.pipeline.pipelined_scaled_adjoint`. Other cells: the
        serial solver's forward and scaled adjoint of the rank's steps, the adjoint passed
        between the ranks at its true scale (one rank: the serial solver's exponent; several: an
        overflow is reported as NaN/inf).

        Returns
        -------
        dxp : ndarray, shape (T_loc, *X)
        stats : SolveStats
            ``status`` NONFINITE where the result (or ``grads``) is not finite.
        """
        start = cell.join_layers([np.ascontiguousarray(hs[0]) for hs in state.hs])
        if can_sweep_scaled(cell):
            dxp, E, evals = pipelined_scaled_adjoint(self.tc, cell, w, state.x,
                                                     cell.project_inputs(w, state.x), start,
                                                     state.dt, lam_last, grads)
            stats = SolveStats(step_evals=evals, exponent=E)
            lam0 = None
        else:
            from .serial import SerialSolver
            ser = SerialSolver()
            _, sstate, _ = ser.forward(cell, w, state.x, start, state.dt)
            lam = np.zeros_like(start) if lam_last is None else np.array(lam_last, start.dtype)
            self.tc.recv_prev(lam, "deer-sweep", reverse=True)
            lam0 = np.empty_like(start)
            dxp, stats = ser.adjoint(cell, w, sstate, lam, grads, lam_first=lam0)
            if stats.exponent and self.size > 1:       # one scale over the ranks: the true one
                E = stats.exponent
                with np.errstate(over="ignore"):
                    np.ldexp(lam0, E, out=lam0)
                    dxp = np.ldexp(dxp, E).astype(dxp.dtype)
                    scale_pow2(grads, E)
                stats.exponent = 0
            self.tc.send_next(lam0, "deer-sweep", reverse=True)
            stats.step_evals += dxp.shape[0]         # its forward sweep
        if not self._finite(dxp, grads, lam0):
            stats.status, stats.message = NONFINITE, "the serial reverse sweep gave NaN/inf"
        return dxp, stats


@register(config=DEERConfig, fixed={"quasi": True})
class QuasiDEERSolver(DEERSolver):
    """quasi-DEER: DEER with the diagonal of each step's Jacobian (see :class:`DEERConfig`)."""

    name = "quasi-deer"

    def __init__(self, config=None, comm=None, state=None):
        super().__init__(config or DEERConfig(quasi=True), comm, state)


__all__ = ["DEERConfig", "DEERSolver", "QuasiDEERSolver", "DEFAULT_TOLERANCES", "quasi_deer_config"]
