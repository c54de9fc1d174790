"""MGRIT: multigrid reduction in time, forward and adjoint, distributed over MPI ranks.

The forward solve finds the trajectory u_0 .. u_N of u_{n+1} = Phi(u_n; x_n) (for the GRU all
layers in one state); the adjoint solve finds lambda_n = (dPhi/du at u_n)^T lambda_{n+1} backward in
time. Both use one generic FAS engine (:class:`_FAS`) with XBraid's semantics, over a *propagator*
that advances K states of one level by one step each through the step protocol
(:mod:`mgritnn.cells.base`; nothing here knows which cell it advances):

* levels: level l holds the multiples of m_l = cf_1 ... cf_l and N (``distributed.partition``);
  a level-l step spans m_l fine steps (the last one possibly fewer) with step size m_l dt, or
  with per-step (T,) or per-step-and-row (T, B) step sizes the sum of those it spans, per batch
  row (a padded step has size 0, so a coarse step across a sequence's end covers its real part);
* F-relaxation steps through the F-points of all local intervals at once: for a cell with compiled
  chains (:class:`~mgritnn.cells.base.FusedChains`: the GRU cells, the ODENet's layer) one call (:meth:`Cell.advance`) sweeps every
  interval in place, intervals in parallel on the threads (for the GRU's states of one or two rows,
  four intervals in lockstep so that their rows share each load of the weights); C-relaxation
  steps all local C-points at once from the values before the sweep; FCF = F, C, F. The coarsest
  sweep, the residuals and the final sweep are one such call each. A cell without compiled chains
  (``implicit-newton``, the test equation) is advanced position by position through
  :meth:`Cell.step` / :meth:`Cell.step_vjp`, with the same results;
* FAS: residual at the C-points r_c = Phi_l(u_{c-1}) + g_c - u_c, injection v = u(C-points),
  coarse right-hand side g_k = r_{c_k} + v_k - Phi_{l+1}(v_{k-1}), correction u(c_k) += w_k - v_k
  after F-relaxing level l+1 (XBraid's interpolation);
* the coarsest level is solved sequentially, pipelined across ranks;
* the residual 2-norm at the level-0 C-points is measured once per cycle (one allreduce);
* a final sweep visits every level-0 step once (F-relaxation plus the step into each C-point): it
  brings the F-points up to date, measures the final residual, and records what comes next (the
  forward keeps the gates of every step for the adjoint, the adjoint accumulates the parameter
  gradients), so no step is evaluated twice for those.

The coarse propagator is the implicit cell (stable for any step size; the fully implicit
``implicit-newton`` cell when that is the fine cell); the adjoint's coarse step is
the VJP of the coarse implicit step linearized at the fine forward state at the start of its
interval. With one level MGRIT is the serial sweep (bit for bit); with enough iterations or a tiny
``atol_l2`` it equals the serial sweep and BPTT to round-off.

Tolerances: MGRIT measures the 2-norm of the level-0 C-point residual over all ranks, so its
tolerances say so (``atol_l2``, ``rtol_l2``, and ``rms_tol`` for its root mean square); ``atol`` and
``rtol`` elsewhere (DEER, the Newton cell) bound every element, the max-norm. The old names
``atol``, ``rtol`` and ``tol`` are still taken, with a deprecation warning.

References
----------
R. D. Falgout, S. Friedhoff, Tz. V. Kolev, S. P. MacLachlan, J. B. Schroder, "Parallel time
integration with multigrid", SIAM J. Sci. Comput. 36(6), 2014.
G. E. Moon, E. C. Cyr, "Parallel training of GRU networks with a multi-grid solver for long
sequences", ICLR 2022.
"""
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ..cells.base import CELLS, FusedChains, get_cell, has, tree_map
from ..config import DIVERGED, NONFINITE, NOT_CONVERGED, OK
from ..distributed import level_strides, local_grid, rank_bounds
from ..errors import ConfigError
from ..options import (check_bool, check_choice, check_choices, check_int, check_real,
                       freeze, int_list, renamed, set_frozen, str_list, upgrade)
from .base import (SolveStats, TimeParallelSolver, deprecated_comm, register, residual_grew,
                   step_sizes)
from .pipeline import can_sweep_scaled, pipelined_scaled_adjoint

_RELAX = ("FCF", "F")


def _coarse_cell_names():
    """The choices of ``coarse_cell``: the registered cells and "matched"."""
    return sorted(CELLS) + ["matched"]


@renamed("MGRIT", fwd_iters="max_iter", bwd_iters="adjoint_max_iter", tol="atol_l2",
         atol="atol_l2", rtol="rtol_l2")
@dataclass(frozen=True)
class MGRITConfig:
    """Options of the MGRIT solver (validated; frozen).

    Attributes
    ----------
    levels : int or None
        Number of levels (1 = the serial sweep); None (on the command line: 0) chooses as many as
        keep at least ``min_coarse`` intervals (and at least one per rank) on the coarsest level,
        up to ``max_levels`` (and up to ``len(cf) + 1`` with a list of ``cf``).
    min_coarse : int
        With automatic levels: the coarsest level keeps at least this many intervals.
    max_levels : int
        With automatic levels: at most this many levels.
    cf : int or tuple of int
        Coarsening factor, or one per level transition.
    relax : str or tuple of str
        "FCF" or "F", for every level or one per level (the first entry is the fine level).
    cycle : {"V", "F"}
        V-cycles, or F-cycles (each coarse level visited again on the way up).
    skip_first_down : bool
        Cycle 0 only injects the initial guess, solves the coarsest level and interpolates up.
    max_iter : int
        Maximum number of cycles of the forward solve (the skipped cycle counts). Old name:
        ``fwd_iters``.
    adjoint_max_iter : int
        Maximum number of cycles of the adjoint solve. Old name: ``bwd_iters``.
    atol_l2 : float
        Stop when the 2-norm of the level-0 C-point residual (all of its entries, over all
        ranks) is <= atol_l2 (the adjoint: <= atol_l2 max |lambda_N|, relative to its terminal
        value's size). Old names: ``atol``, ``tol`` (the 2-norm grows with the number of
        entries, unlike DEER's and the Newton cell's ``atol``, which bound every entry).
    rtol_l2 : float
        Stop when that 2-norm is <= rtol_l2 times the first one measured (0: off). Old name:
        ``rtol`` (unlike DEER's ``rtol``, which is relative to each entry's own size).
    rms_tol : float
        Stop when the root mean square of the level-0 C-point residual is <= ``rms_tol`` times
        the solution's scale (the forward: 1, the GRU's states are bounded by 1; the adjoint:
        max |lambda_N|, the loss's scale): one tolerance for any sequence length, batch, width
        and loss scale, and for warm starts, whose first residual is already small (0: off).
        The gradient error follows it (``docs/gradient-quality.md``); the solver's
        :attr:`MGRITSolver.tol_scale` multiplies it (the training preset's controller).
    stall : float
        Give up early (status "not converged", ``SolveStats.stalled``) when a cycle reduced the
        residual by less than this factor (e.g. 0.9: less than 10 %), or when the rate has
        stopped improving (no better than 0.9 x the cycle before's) and at that rate the
        tolerance would need more than twice the cycles left: further cycles would be spent
        for nothing (0: off, every cycle up to ``max_iter`` runs).
    fallback : bool
        A solve that ends without meeting its tolerance (not converged within ``max_iter``,
        stalled, diverged or NaN/inf) is redone as the serial sweep over the same ranks
        (pipelined, one level: exact; ``SolveStats.fallback``; its step evaluations counted
        with the failed attempt's). So a training step never takes an unconverged gradient.
        Leave it off with the fixed cycle counts of the ``paper`` and ``fast`` presets, which
        are not meant to meet a tolerance.
    initial_guess : {"zero", "warm"}
        "warm": start each sample from its own level-0 C-point states of the previous forward solve
        that saw it (keyed by the sample indices the caller passes as ``keys``; the trainer passes
        the data set's indices), doing the full down-leg from the first cycle. Samples seen for the
        first time start from zero; a batch of only such samples is solved as with "zero" (the
        first down-leg skipped if ``skip_first_down``). Memory: N/cf states per sample on each
        rank's slice.
    coarse_input : {"sample", "mean"}
        Input of a coarse step: x at its first fine step, or the mean over its fine steps (over
        each batch row's real steps only, when padded steps of step size 0 are among them).
    coarse_cell : str or None
        Cell of the coarse levels. None (default): the implicit GRU (stable for any step size), or
        the fine cell itself when it is ``implicit-newton`` (``docs/algorithms.md`` §2). ``"matched"``:
        the matched coarse cell of a classic or implicit fine cell (``matched-classic``,
        ``matched-implicit``: the fine steps a coarse step spans composed exactly with frozen
        gates; ``docs/gradient-quality.md``).
    divergence : float
        Stop with status "diverged" when the residual exceeds this factor times the smaller of the
        first residual and the norm of an all-ones residual (GRU states are bounded by 1 in
        magnitude, so a larger residual means an unstable propagator).
    comm : mpi4py communicator or None
        Deprecated (a ``DeprecationWarning``): the time communicator, which now goes to
        ``make_solver(config, comm)``; kept for older callers (not compared, not shown).
    """
    levels: int = field(default=3, metadata={"flag": {"none_as": 0}})
    min_coarse: int = 2
    max_levels: int = 12
    cf: object = field(default=4, metadata={"flag": {"type": int_list}})
    relax: object = field(default="FCF", metadata={"flag": {"type": str_list}})
    cycle: str = field(default="V", metadata={"flag": {"choices": ("V", "F")}})
    skip_first_down: bool = True
    max_iter: int = 2
    adjoint_max_iter: int = 1
    atol_l2: float = 1e-9
    rtol_l2: float = 0.0
    rms_tol: float = 0.0
    stall: float = 0.0
    fallback: bool = False
    initial_guess: str = field(default="zero", metadata={"flag": {"choices": ("zero", "warm")}})
    coarse_input: str = field(default="sample", metadata={"flag": {"choices": ("sample", "mean")}})
    coarse_cell: str = field(default=None, metadata={"flag": {"choices": _coarse_cell_names}})
    divergence: float = 1e4
    comm: object = field(default=None, compare=False, repr=False, metadata={"option": False})

    def __post_init__(self):
        for name in ("cf", "relax"):            # a list is kept as a tuple (hashable)
            set_frozen(self, name, freeze(getattr(self, name)))
        check_int("MGRIT levels", self.levels, least=1, none=True)
        check_int("MGRIT min_coarse", self.min_coarse, least=1)
        check_int("MGRIT max_levels", self.max_levels, least=1)
        check_int("MGRIT max_iter", self.max_iter, least=1)
        check_int("MGRIT adjoint_max_iter", self.adjoint_max_iter, least=1)
        for c in (self.cf if isinstance(self.cf, (tuple, list)) else (self.cf,)):
            check_int("MGRIT cf", c, least=2)
        for r in (self.relax if isinstance(self.relax, (tuple, list)) else (self.relax,)):
            check_choice("MGRIT relax", r, _RELAX)
        self._check_list_lengths()
        check_choices("MGRIT", self)
        check_bool("MGRIT skip_first_down", self.skip_first_down)
        if self.coarse_cell not in (None, "matched"):
            get_cell(self.coarse_cell)
        check_real("MGRIT atol_l2", self.atol_l2, low=0)
        check_real("MGRIT rtol_l2", self.rtol_l2, low=0)
        check_real("MGRIT rms_tol", self.rms_tol, low=0)
        check_real("MGRIT stall", self.stall, low=0, high=1)
        check_bool("MGRIT fallback", self.fallback)
        if self.fallback and not (self.rms_tol or self.rtol_l2 or self.atol_l2):
            raise ConfigError("MGRIT fallback needs a tolerance to meet (rms_tol, rtol_l2 or "
                              "atol_l2 > 0): with none, every solve would end in the serial "
                              "sweep")
        check_real("MGRIT divergence", self.divergence, low=1, low_open=True)
        deprecated_comm("MGRITConfig", self.comm)

    def _check_list_lengths(self):
        """A ``cf`` or ``relax`` list with more entries than there are levels to use them is an
        error (the extra entries would be ignored without a word).

        * ``levels`` given: ``cf`` has at most ``levels - 1`` entries (one per level transition),
          ``relax`` at most ``levels`` (one per level; the coarsest level is solved exactly, so
          its entry, accepted for a list of one entry per level, is not used);
        * ``levels=None`` (automatic): :meth:`cfs` adds levels while the coarsest keeps
          ``min_coarse`` intervals, up to ``max_levels``, taking the ``cf`` entries in order (it
          raises when it needs one more than the list has); so ``cf`` has at most
          ``max_levels - 1`` entries, and ``relax`` at most ``max_levels`` (``len(cf) + 1`` with a
          ``cf`` list). A sequence too short for that many levels uses the first entries only.

        A shorter list is fine: a missing ``cf`` entry is an error when the level needs it
        (:meth:`cfs`), a missing ``relax`` entry repeats the last one. An empty list is an error.
        """
        lists = {k: v for k, v in (("cf", self.cf), ("relax", self.relax))
                 if isinstance(v, (tuple, list))}
        for name, v in lists.items():
            if not v:
                raise ConfigError(f"MGRIT {name} is an empty list: give one value, or one per "
                                  f"level")
        if self.levels is not None:
            L = self.levels
            most = {"cf": (L - 1, f"--levels {L} has {L - 1} level transition(s), one cf each"),
                    "relax": (L, f"--levels {L} has {L} level(s), one relax each")}
        else:
            M = self.max_levels
            top = M if "cf" not in lists else min(M, len(self.cf) + 1)
            bound = f"max_levels {M}" + (f" and the {len(self.cf)} cf entries" if "cf" in lists
                                         else "")
            most = {"cf": (M - 1, f"automatic levels stop at max_levels {M}, which has "
                                  f"{M - 1} level transitions, one cf each"),
                    "relax": (top, f"automatic levels stop at {top} levels ({bound}), one relax "
                                   "each")}
        for name, v in lists.items():
            n, why = most[name]
            if len(v) > n:
                levels = len(v) + 1 if name == "cf" else len(v)
                give = f"at most {n} entries" if n else "a single value"
                raise ConfigError(f"MGRIT {name} has {len(v)} entr{'y' if len(v) == 1 else 'ies'} "
                                  f"({','.join(map(str, v))}) but {why}: the extra entries would "
                                  f"be ignored; give {give}, or --levels {levels}")

    @classmethod
    def preset(cls, name, **overrides):
        """A named set of options (:data:`PRESETS`), with any field overridden.

        ``"paper"`` is Moon & Cyr's setting (3 levels, cf 4, FCF, 2 forward / 1 adjoint cycles,
        zero initial guess); ``"fast"`` spends few step evaluations (two levels, cf 4,
        F-relaxation, one forward and one adjoint cycle, warm start from each sample's previous
        C-point states): 128 per rank at P = 4, N = 128, and UCI HAR trains to the serial accuracy
        with it; its coarse level (N / 4 points) is solved sequentially, pipelined over the
        ranks, which limits it on many ranks (use ``levels=3`` there). ``"layers"`` is the
        layer-parallel ODENet papers' setting (automatic levels, cf 4, F-relaxation on the fine
        level and FCF on the coarse ones, 2 forward / 2 adjoint cycles, first down-cycle skipped,
        zero initial guess). ``"train"`` controls the gradient's accuracy instead of fixing cycle
        counts: cycles until the residual's RMS meets ``rms_tol`` (cap 8), early give-up on a
        stall, the serial sweep for a solve that misses (``fallback``), two levels of cf 2,
        F-relaxation, the matched coarse cell, warm starts; with the trainer's gradient check its tolerance follows the
        measured gradient error. What each costs: ``docs/performance.md``, ``docs/gradient-quality.md``.
        """
        if name not in PRESETS:
            raise ConfigError(f"unknown MGRIT preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**dict(PRESETS[name], **upgrade("MGRIT", overrides, cls.RENAMED)))

    def make_solver(self, comm=None, state=None):
        """An :class:`MGRITSolver` of this config over the ranks of ``comm`` (None: the
        deprecated ``self.comm``, else MPI's world under an MPI launcher, else one process),
        remembering ``state`` (a :class:`~mgritnn.solvers.base.SolverState`)."""
        return MGRITSolver(self, comm, state)

    def coarse_cell_for(self, fine):
        """The cell of the coarse levels for the fine cell ``fine`` (see ``coarse_cell``)."""
        if self.coarse_cell == "matched":
            try:
                return get_cell(f"matched-{getattr(fine, 'name', '')}")
            except ConfigError:
                raise ConfigError(f"MGRIT coarse_cell 'matched' needs a classic or implicit fine "
                                  f"cell, not {getattr(fine, 'name', fine)!r}: give a coarse "
                                  "cell by name, or leave it to the default") from None
        if self.coarse_cell is not None:
            return get_cell(self.coarse_cell)
        return fine.coarse_cell()

    def cfs(self, N, size=1):
        """Coarsening factors of the hierarchy for N fine steps on ``size`` ranks (validated)."""
        if self.levels is None:
            cfs = []
            listed = len(self.cf) if isinstance(self.cf, (tuple, list)) else self.max_levels
            while len(cfs) + 1 < self.max_levels and len(cfs) < listed:
                trial = cfs + [self._cf(len(cfs))]
                try:
                    m = level_strides(N, trial)[-1]
                except ConfigError:
                    break
                if -(-N // m) < max(self.min_coarse, size):     # coarsest intervals
                    break
                cfs = trial
        else:
            cfs = [self._cf(l) for l in range(self.levels - 1)]
        rank_bounds(N, cfs, size)          # raises if it does not fit
        return cfs

    def _cf(self, l):
        if isinstance(self.cf, (tuple, list)):
            if l >= len(self.cf):
                raise ConfigError(f"cf has {len(self.cf)} entries, level {l + 1} needs one more")
            return int(self.cf[l])
        return int(self.cf)

    def relax_of(self, l):
        if isinstance(self.relax, (tuple, list)):
            return self.relax[min(l, len(self.relax) - 1)]
        return self.relax


#: Named option sets of :meth:`MGRITConfig.preset`.
PRESETS = {
    "paper": dict(levels=3, cf=4, relax="FCF", max_iter=2, adjoint_max_iter=1,
                  initial_guess="zero"),
    "fast": dict(levels=2, cf=4, relax="F", max_iter=1, adjoint_max_iter=1, initial_guess="warm"),
    # The layer-parallel ODENet papers' setting (Günther et al. 2020): F-relaxation on the fine
    # level, FCF on the coarse ones, 2 cycles, the first down-cycle skipped, zero initial guess;
    # automatic levels, so that it fits any depth and rank count (nested iteration's too).
    "layers": dict(levels=None, cf=4, relax=("F", "FCF"), max_iter=2, adjoint_max_iter=2,
                   initial_guess="zero", skip_first_down=True),
    # Accuracy control for training (docs/gradient-quality.md): cycles until the RMS residual
    # meets rms_tol (relative to the states' and the adjoint's scale), a cap, early give-up on a
    # stall, the serial sweep for a solve that misses; two levels of cf 2 (the coarse grid of
    # trained recurrences must resolve their fastest oscillations), the matched coarse cell
    # (follows the fine cell's decay exactly), warm starts.
    "train": dict(levels=2, cf=2, relax="F", max_iter=8, adjoint_max_iter=8, atol_l2=0.0,
                  rms_tol=1e-3, stall=0.9, fallback=True, initial_guess="warm",
                  coarse_cell="matched"),
}


# ------------------------------------------------------------------------------------------------
# The generic FAS engine
# ------------------------------------------------------------------------------------------------

class _FAS:
    """FAS-MGRIT on one rank's part of the hierarchy (see the module docstring).

    Parameters
    ----------
    grid : LocalGrid
    prop : propagator with ``step(l, j, u) -> Phi_l(u)`` for local step indices j (int array) of
        level l and states u (K, *S), and a counter ``evals``
    tc : TimeComm
        The time-communication service of the ranks.
    u0 : ndarray, shape S (the GRU stack: (L, B, H))
        Value at the first point of the solve (only used on the first rank).
    cfg : MGRITConfig
    kind : str
        The kind of this solve's messages (``"mgrit-forward"`` or ``"mgrit-adjoint"``; their tags
        come from :data:`mgritnn.distributed.TAGS`).
    reverse : bool
        The solve runs from the last rank to the first (the adjoint).
    scale : float
        The size of the solution (the forward's GRU states: 1; the adjoint: max |lambda_N|):
        ``atol_l2`` and the divergence test's all-ones reference are relative to it.
    """

    def __init__(self, grid, prop, tc, u0, cfg, kind, reverse=False, scale=1.0):
        self.grid, self.prop, self.tc, self.cfg = grid, prop, tc, cfg
        self.kind, self.reverse, self.scale = kind, reverse, float(scale)
        self.nlev = len(grid.points)
        shape = u0.shape
        self.u = [np.zeros((len(p),) + shape, u0.dtype) for p in grid.points]
        self.g = [np.zeros_like(a) for a in self.u]
        self.v = [None] * self.nlev
        if grid.left is None:
            for a in self.u:
                a[0] = u0
        self.phases = {}         # "phase[level]" -> [seconds, calls, step evaluations]
        # F-relaxation intervals per level: anchors (local C-points that start an interval) and lengths
        self.anchors, self.flen = [], []
        for l in range(self.nlev - 1):
            c = grid.c_index[l]
            self.anchors.append(c[:-1])
            self.flen.append(np.diff(c) - 1)
        self.wait_time = 0.0
        self.history = []
        self.stalled = False
        self.cycles_left = None
        self.tol_scale = 1.0     # the solver's multiplier of rms_tol (MGRITSolver.tol_scale)

    # -- communication -----------------------------------------------------------------------

    def exchange(self, l):
        """Send the last local point of level l to the next rank, receive the ghost from the previous one."""
        t0 = time.perf_counter()
        self.wait_time += self.tc.shift(self.u[l][-1], self.u[l][0], self.kind, l, self.reverse)
        self._timed("wait", l, t0)

    # -- relaxation ----------------------------------------------------------------------------
    #
    # F-relaxation, the coarsest sweep, the residual and the final sweep are each one call of the
    # propagator's ``chains`` (all local intervals of a level at once; a compiled kernel for the
    # GRU cells): u[j + 1] = Phi_l(u[j]) + g[j + 1] along chains of consecutive steps, no chain
    # reading a point another chain writes. ``phases`` times each kind of work per level
    # (perf/profile_mgrit.py).

    def _timed(self, name, l, t0, evals=0):
        rec = self.phases.setdefault(f"{name}[{l}]", [0.0, 0, 0])
        rec[0] += time.perf_counter() - t0
        rec[1] += 1
        rec[2] += int(evals)

    def _chains(self, name, l, starts, lens, final=False, residual=False):
        """Advance chains of level-l points in place (``residual``: return the residual at the
        point each chain ends on instead of storing it)."""
        t0 = time.perf_counter()
        if not residual:
            keep = lens > 0
            starts, lens = starts[keep], lens[keep]
        res = None
        if len(starts):
            res = self.prop.chains(l, self.u[l], self.g[l], starts, lens, final, residual)
        elif residual:
            res = np.zeros((0,) + self.u[l].shape[1:], self.u[l].dtype)
        self._timed(name, l, t0, lens.sum())
        return res

    def f_relax(self, l):
        self.exchange(l)
        self._chains("F-relax", l, self.anchors[l], self.flen[l])

    def c_relax(self, l):
        """Every local C-point (index >= 1) from the point before it, all from the values before
        the sweep (a short last interval has no F-point: its C-point is stepped from the previous
        C-point's old value), so not as chains, which would read a value written in the sweep."""
        t0 = time.perf_counter()
        c = self.grid.c_index[l][1:]
        if len(c):
            self.u[l][c] = self.prop.apply(l, c - 1, self.u[l][c - 1]) + self.g[l][c]
        self._timed("C-relax", l, t0, len(c))

    def relax(self, l):
        self.f_relax(l)
        if self.cfg.relax_of(l) == "FCF":
            self.c_relax(l)
            self.f_relax(l)

    def residual(self, l):
        """FAS residual r_c = Phi_l(u_{c-1}) + g_c - u_c at the local C-points (index >= 1)."""
        c = self.grid.c_index[l][1:] - 1
        return self._chains("residual", l, c, np.ones_like(c), residual=True)

    def norm(self, r):
        """Global 2-norm of the residuals of all ranks (one allreduce); also sets ``self.ones_norm``,
        the norm an all-ones residual of the same size would have."""
        buf = np.array([np.sum(np.square(r, dtype=np.float64)), r.size], dtype=np.float64)
        t0 = time.perf_counter()
        out = self.tc.allreduce(buf)
        self._timed("norm allreduce", 0, t0)
        self.ones_norm = self.scale * float(np.sqrt(out[1]))
        return float(np.sqrt(out[0]))

    def restrict(self, l, r):
        """Inject to level l+1 and form its FAS right-hand side from the level-l residual r."""
        t0 = time.perf_counter()
        c = self.grid.c_index[l]
        v = self.u[l][c]
        self.v[l + 1] = v
        self.u[l + 1][...] = v
        k = np.arange(1, len(c))
        if len(k):
            self.g[l + 1][k] = r + v[k] - self.prop.apply(l + 1, k - 1, v[k - 1])
        self._timed("restrict", l + 1, t0, len(k))

    def inject(self, l):
        """Cycle 0 without the down-leg: level l+1 starts from the injected guess with g = 0."""
        c = self.grid.c_index[l]
        self.v[l + 1] = self.u[l][c]
        self.u[l + 1][...] = self.v[l + 1]
        self.g[l + 1][1:] = 0

    def coarsest_solve(self, l, final=False):
        """Sequential sweep over the level, pipelined: wait for the left ghost, sweep, send right."""
        t0 = time.perf_counter()
        self.wait_time += self.tc.recv_prev(self.u[l][0], self.kind, l, self.reverse)
        self._timed("wait", l, t0)
        n = len(self.u[l]) - 1
        self._chains("coarsest", l, np.zeros(1, np.int64), np.array([n], np.int64), final)
        self.tc.send_next(self.u[l][-1], self.kind, l, self.reverse)

    def interpolate(self, l):
        """Correct the level-l C-points from level l+1 (after F-relaxing level l+1 unless it is the coarsest)."""
        if l + 1 < self.nlev - 1:
            self.f_relax(l + 1)
        t0 = time.perf_counter()
        c = self.grid.c_index[l][1:]
        self.u[l][c] += self.u[l + 1][1:] - self.v[l + 1][1:]
        self._timed("correct", l, t0)

    def final_sweep(self):
        """Every local level-0 step once, in order of position inside the intervals: the
        F-relaxation extended by the step into each C-point. The propagator records what the next
        phase needs from these final steps (the forward: the gates for the adjoint; the adjoint:
        the parameter gradients); the C-point steps give the final residual without extra work."""
        self.exchange(0)
        c = self.grid.c_index[0]
        return self.norm(self._chains("final", 0, c[:-1], np.diff(c), final=True, residual=True))

    # -- cycles --------------------------------------------------------------------------------

    def _cycle(self, l, kind, first):
        """One cycle from level l down and back up (XBraid order). An F-cycle does an F-cycle and
        then a V-cycle on level l+1 before correcting level l (in every cycle: ``first`` only skips
        the down-leg's work when ``skip_first_down`` asks for it, never the F-cycle's second visit)."""
        coarsest = self.nlev - 1
        if l == coarsest:
            self.coarsest_solve(l)
            return
        if first and self.cfg.skip_first_down:
            self.inject(l)
        else:
            self.relax(l)
            r = self.residual(l)
            if l == 0:
                self.history.append(self.norm(r))
                if self._stop(self.cycles_left):
                    return
            self.restrict(l, r)
        self._cycle(l + 1, kind, first)
        if kind == "F" and l + 1 < coarsest:
            self._cycle(l + 1, "V", False)
        self.interpolate(l)

    def _tolerance(self):
        """The residual 2-norm that counts as converged (the largest of the ``atol_l2``,
        ``rtol_l2`` and ``rms_tol`` criteria that are on; 0 when none is)."""
        cfg, h = self.cfg, self.history
        tol = cfg.atol_l2 * self.scale
        if cfg.rtol_l2 > 0:
            tol = max(tol, cfg.rtol_l2 * h[0])
        if cfg.rms_tol > 0:
            tol = max(tol, cfg.rms_tol * self.tol_scale * self.ones_norm)
        return tol

    def _stop(self, cycles_left=None):
        """Whether to stop after the residual just measured (``history[-1]``): converged,
        diverged, NaN/inf, or (with ``stall``, when ``cycles_left`` is given) stalled."""
        h, cfg = self.history, self.cfg
        if not np.isfinite(h[-1]):
            self.status, self.message = NONFINITE, "residual is NaN or inf"
        elif h[-1] <= self._tolerance():
            self.status, self.message = OK, "converged"
        elif h[-1] > cfg.divergence * max(min(h[0], self.ones_norm), 1e-300):
            self.status, self.message = DIVERGED, (
                f"diverged: residual {h[-1]:.3e} > {cfg.divergence:g} x "
                f"min(first residual {h[0]:.3e}, all-{self.scale:.3g} residual "
                f"{self.ones_norm:.3e}); "
                "a coarse propagator is unstable (use coarse_cell='implicit') or the weights are too large")
        elif cfg.stall > 0 and cycles_left is not None and len(h) >= 2 and h[-2] > 0:
            rate = h[-1] / h[-2]
            tol = self._tolerance()
            need = (np.log(tol / h[-1]) / np.log(rate)) if 0 < rate < 1 and tol > 0 else np.inf
            # the rate often improves after the first cycles (the nonlinear start): judge the
            # reach only once it has stopped improving
            settled = len(h) >= 3 and h[-3] > 0 and rate >= 0.9 * (h[-2] / h[-3])
            if rate <= cfg.stall and (need <= 2 * cycles_left or not settled):
                return False
            self.status, self.stalled = NOT_CONVERGED, True
            self.message = (f"stalled: the residual fell from {h[-2]:.3e} to {h[-1]:.3e} in a "
                            f"cycle (factor {rate:.3f}; stall {cfg.stall:g}), tolerance "
                            f"{tol:.3e} out of reach in the {cycles_left} cycle(s) left")
        else:
            return False
        return True

    def solve(self, max_iter, warm=False, give_up=False):
        """Run up to ``max_iter`` cycles, then the final sweep over all level-0 steps (which brings
        the F-points up to date and measures the final residual). Returns SolveStats; ``residual``
        is the final residual, ``history`` the residual of every cycle and the final one.

        ``give_up``: a solve that stops as diverged, NaN/inf or stalled skips the final sweep
        (its result will be replaced: the caller falls back to the serial sweep); ``residual``
        is then the last cycle's."""
        self.status, self.message = NOT_CONVERGED, f"not converged in {max_iter} cycles"
        iters = 0
        if self.nlev == 1:
            self.coarsest_solve(0, final=True)
            self.status, self.message, iters = OK, "exact (one level: serial sweep)", 1
            res = 0.0
        else:
            for k in range(max_iter):
                iters += 1
                self.cycles_left = max_iter - k - 1
                self._cycle(0, self.cfg.cycle, first=(k == 0 and not warm))
                if len(self.history) and self.status != NOT_CONVERGED or self.stalled:
                    break
            stopped = self.status != NOT_CONVERGED or self.stalled
            if give_up and stopped and self.status != OK:
                res = self.history[-1]
            else:
                res = self.final_sweep()
                self.history.append(res)
                if not stopped:
                    self._stop()
        cycles = self.history[:-1]          # the final sweep's residual is measured differently
        grew = self.status == NOT_CONVERGED and residual_grew(cycles, self.u[0].dtype)
        if grew:
            self.message += (f"; the residual grew to {cycles[-1]:.3e} after reaching "
                             f"{min(cycles[:-1]):.3e}: the iteration is not contracting")
        return SolveStats(status=self.status, message=self.message, iterations=iters, residual=res,
                          step_evals=self.prop.evals, history=list(self.history), phases=self.phases,
                          grew=grew, stalled=self.stalled)


# ------------------------------------------------------------------------------------------------
# Propagators: forward steps and adjoint (VJP) steps of every level
# ------------------------------------------------------------------------------------------------

def _level_inputs(grid, ax0_local, lo_fwd, coarse_input, reverse, fine_dt=None):
    """Per level: forward fine index of each local step's start, its span, and its input projection.

    ``ax0_local`` (n_local, B, 3H) holds the layer-0 projection of this rank's fine steps, starting
    at forward fine index ``lo_fwd``. In reversed orientation, the local step j from reversed point
    q_j to q_{j+1} is the forward interval [N - q_{j+1}, N - q_j). ``fine_dt`` (n_local,) or
    (n_local, B): the step sizes of those fine steps (forward order); with ``coarse_input="mean"``
    a coarse step averages the inputs of its steps of nonzero size only, per batch row (padded
    steps are not part of a sequence); None or all nonzero: every fine step counts.
    """
    real = None
    if fine_dt is not None and np.ndim(fine_dt) > 0 and not np.all(fine_dt != 0):
        real = np.asarray(fine_dt != 0, np.float64)
        real = real.reshape(real.shape + (1,) * (ax0_local.ndim - real.ndim))
    out = []
    for l, q in enumerate(grid.points):
        if reverse:
            start, span = grid.N - q[1:], np.diff(q)
        else:
            start, span = q[:-1], np.diff(q)
        local = start - lo_fwd
        steps = np.arange(len(local))
        if l == 0 and np.array_equal(local, steps):
            ax = ax0_local                              # the forward's fine steps: no copy
        elif l == 0 and np.array_equal(local, steps[::-1]):
            ax = ax0_local[::-1]                        # the adjoint's (only the generic path reads it)
        elif l == 0 or coarse_input == "sample":
            ax = ax0_local[local]
        else:       # each step sums its own fine inputs: rounding independent of the rank split
            ax = np.stack([_mean_input(ax0_local, a, n, real)
                           for a, n in zip(local, span)]).astype(ax0_local.dtype)
        out.append((local, span, ax if reverse and l == 0 else np.ascontiguousarray(ax)))
    return out


def _mean_input(ax, a, n, real):
    """The mean of ``ax[a:a + n]`` in float64, over the steps ``real`` marks (per row; a row
    without any keeps 0: its coarse step has size 0, the identity), or over all n."""
    if real is None:
        return ax[a:a + n].sum(axis=0, dtype=np.float64) / n
    w = real[a:a + n]
    return (ax[a:a + n] * w).sum(axis=0, dtype=np.float64) / np.maximum(w.sum(axis=0), 1.0)


def _fine_dt(dt, T, lo, ax0, coarse_input):
    """The step sizes of the local fine steps [lo, lo + n_local), forward order, for the mean
    coarse input (None for a scalar, where no step is padded, or when the coarse inputs are
    samples, which do not read them)."""
    if coarse_input != "mean" or np.ndim(dt) == 0:
        return None
    return step_sizes(dt, T, ax0.dtype, lo, lo + ax0.shape[0])


def _level_dts(levels, dt, T, lo_fwd, dtype):
    """Per level: the step sizes of its local steps (``levels`` from :func:`_level_inputs`).

    A level step's size is the sum of the sizes of the fine steps it spans, per batch row: a
    coarse step across the end of a sequence (padded steps have size 0) covers only its real
    part. A scalar ``dt`` gives ``span * dt`` per step, (n_l,); an array (T,) or (T, B) for the
    whole sequence gives (n_l,) or (n_l, B), each step summing its own fine sizes in float64 (so
    the rounding does not depend on how the steps are split between ranks).

    Parameters
    ----------
    levels : list of (local, span, ax)
    dt : float or ndarray, shape (T,) or (T, B)
    T : int
    lo_fwd : int
        Forward fine index of this rank's first fine step (``local`` is relative to it).
    dtype : numpy dtype

    Returns
    -------
    list of ndarray, shapes (n_l,) or (n_l, B), ``dtype``, C-contiguous
    """
    if np.ndim(dt) == 0:
        return [np.ascontiguousarray(span * dt, dtype=dtype) for _, span, _ in levels]
    fine = step_sizes(dt, T, dtype)
    out = []
    for local, span, _ in levels:
        start = np.asarray(local, np.int64) + lo_fwd
        if len(start) == 0:
            out.append(np.empty((0,) + fine.shape[1:], dtype))
        elif np.all(span == 1):
            out.append(np.ascontiguousarray(fine[start]))
        else:                  # the steps tile [a, b): one reduction per step, in forward order
            order = np.argsort(start, kind="stable")
            a = int(start[order[0]])
            b = int(start[order[-1]] + span[order[-1]])
            sums = np.add.reduceat(fine[a:b].astype(np.float64), start[order] - a, axis=0)
            d = np.empty((len(start),) + fine.shape[1:], dtype)
            d[order] = sums
            out.append(d)
    return out


def _per_row(dts, B):
    """Each level's step sizes (n_l,) or (n_l, B) as (n_l, B), C-contiguous: the compiled chains'
    form, made once per solve instead of once per call."""
    return [np.ascontiguousarray(np.broadcast_to(d[:, None] if d.ndim == 1 else d, (len(d), B)))
            for d in dts]


class _Prop:
    """What the FAS engine asks of a propagator: ``apply(l, j, u)`` = Phi_l(u) for local steps j
    of level l and states u (K, *S); ``chains(l, u, g, starts, lens)`` advances the level's
    points in place, u[s + 1] = Phi_l(u[s]) + g[s + 1] for s = starts[c] .. starts[c] + lens[c] - 1
    of every chain c; ``evals`` counts the states advanced. ``final`` marks the last visit of the
    level-0 steps, whose intermediates the next phase needs.

    This generic version advances the chains position by position through ``apply`` (one batched
    cell call per position); :class:`_FusedForward` and :class:`_FusedAdjoint` run them as one
    call of the cell's compiled chains.
    """

    evals = 0

    def chains(self, l, u, g, starts, lens, final=False, residual=False):
        res = np.empty((len(starts),) + u.shape[1:], u.dtype) if residual else None
        for i in range(int(lens.max(initial=0))):
            act = np.flatnonzero(lens > i)
            src = starts[act] + i
            out = self.apply(l, src, u[src], final) + g[src + 1]
            last = (lens[act] == i + 1) & residual
            res_c = act[last]
            if len(res_c):
                res[res_c] = out[last] - u[src[last] + 1]
            u[src[~last] + 1] = out[~last]
        return res


class _ForwardProp(_Prop):
    """Forward steps of every level through :meth:`Cell.step`; the final level-0 steps keep their
    caches (``cache``, stacked over the level's steps)."""

    def __init__(self, fine, coarse, w, levels, dts):
        self.cells = [fine] + [coarse] * (len(levels) - 1)
        self.w, self.levels, self.dts = w, levels, dts
        self.evals = 0
        self.cache = None

    def apply(self, l, j, u, final=False):
        _, span, ax = self.levels[l]
        self.evals += len(j)
        if not final:
            return self.cells[l].step(self.w, ax[j], u, self.dts[l][j])
        out, c = self.cells[l].step(self.w, ax[j], u, self.dts[l][j], cache=True)
        if self.cache is None:
            self.cache = tree_map(lambda a: np.empty((len(span),) + a.shape[1:], a.dtype), c)
        tree_map(lambda dst, src: dst.__setitem__(j, src), self.cache, c)
        return out

    def step_cache(self, u):
        """The cache of every local level-0 step after the solve (``u`` its trajectory)."""
        return self.cache


class _AdjointProp(_Prop):
    """lambda_start = (dPhi_l/du at the forward state at the interval's start)^T lambda_end.
    The final level-0 steps keep their pre-activation cotangents ``cot`` (per layer (dax, dah),
    forward order), from which the parameter gradients are accumulated once, in time order."""

    def __init__(self, fine, coarse, w, levels, dts, u_fwd, fwd):
        self.cells = [fine] + [coarse] * (len(levels) - 1)
        self.w, self.levels, self.dts = w, levels, dts
        self.h, self.caches = [], []       # per level: forward states at the steps' starts, linearizations
        for l, (local, span, ax) in enumerate(levels):
            self.h.append(u_fwd[local])
            if l == 0:                     # the fine steps were linearized once for the whole slice
                self.caches.append(_take(fwd.step_cache(u_fwd), local))
            else:
                self.caches.append(self.cells[l].step(w, ax, self.h[l], dts[l], cache=True)[1])
        self.evals = sum(len(lv[1]) for lv in levels[1:])     # the coarse linearizations
        self.cot = None            # the final level-0 steps' cotangents, stacked in forward order

    def apply(self, l, j, lam, final=False):
        local, span, ax = self.levels[l]
        self.evals += len(j)
        cot = [] if final else None
        lam_start, _ = self.cells[l].step_vjp(self.w, ax[j], self.h[l][j], self.dts[l][j], lam,
                                              cache=_take(self.caches[l], j), cotangents=cot)
        if final:
            if self.cot is None:
                self.cot = tree_map(lambda a: np.zeros((len(local),) + a.shape[1:], a.dtype), cot)
            tree_map(lambda dst, src: dst.__setitem__(local[j], src), self.cot, cot)
        return lam_start

    def cotangents(self):
        return self.cot


def _chain_args(starts, lens, contiguous):
    """(rd, wr, starts, lens) of the stack kernels: chains along the points of one level array
    (``contiguous``), or independent steps from a gathered array into an output array."""
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    lens = np.ascontiguousarray(lens, dtype=np.int64)
    if contiguous:
        return starts, starts + 1, starts, lens
    k = np.arange(len(starts), dtype=np.int64)
    return k, k, starts, lens


class _FusedForward(_ForwardProp):
    """:class:`_ForwardProp` with every relaxation, residual and sweep as one call of the cells'
    compiled chains (:meth:`Cell.advance`), in place, without per-position copies; the final
    level-0 steps keep their linearizations in one :meth:`Cell.chain_cache`."""

    def __init__(self, fine, coarse, w, levels, dts, rows):
        super().__init__(fine, coarse, w, levels, _per_row(dts, rows))
        self.rows = rows             # batch rows of a state (its axis -2)
        self.sw = fine.chain_weights(w)
        self.gates = None

    def _keep(self, final):
        if not final:
            return None
        if self.gates is None:
            x = self.levels[0][2]
            self.gates = self.cells[0].chain_cache(self.w, x, len(x))
        return self.gates

    def _run(self, l, X, Y, args, g, keep, res=None):
        self.cells[l].advance(self.sw, self.levels[l][2], self.dts[l], X, args[0], Y, args[1],
                              args[2], args[3], g=g, keep=keep, res=res)
        self.evals += int(args[3].sum())
        return res

    def chains(self, l, u, g, starts, lens, final=False, residual=False):
        res = np.empty((len(starts),) + u.shape[1:], u.dtype) if residual else None
        return self._run(l, u, u, _chain_args(starts, lens, True), g if l else None,
                         self._keep(final), res)

    def apply(self, l, j, u, final=False):
        out = np.empty_like(u)
        self._run(l, np.ascontiguousarray(u), out, _chain_args(j, np.ones(len(j)), False), None,
                  self._keep(final))
        return out

    def step_cache(self, u):
        return self.cells[0].chain_step_cache(self.gates, u)


class _FusedAdjoint(_Prop):
    """The adjoint propagator on the cells' compiled chains (:meth:`Cell.advance_vjp`): each
    level's steps are linearized once, at the fine forward states at their starts (level 0: the
    forward's final linearizations); the final level-0 VJPs keep their cotangents ``cot``."""

    def __init__(self, fine, coarse, w, levels, dts, u_fwd, fwd):
        self.cells = [fine] + [coarse] * (len(levels) - 1)
        self.sw = fwd.sw
        self.dts = dts = _per_row(dts, fwd.rows)
        self.lin = []                # per level: (states, linearizations, index of step s in them)
        self.evals = 0
        for l, (local, span, ax) in enumerate(levels):
            if l == 0:
                self.lin.append((u_fwd, fwd.gates, np.ascontiguousarray(local, dtype=np.int64)))
                continue
            h = np.ascontiguousarray(u_fwd[local])
            keep = self.cells[l].chain_cache(w, ax, len(local))
            k, _, _, ones = _chain_args(np.arange(len(h)), np.ones(len(h)), False)
            self.cells[l].advance(self.sw, ax, dts[l], h, k, np.empty_like(h), k, k, ones,
                                  keep=keep)
            self.evals += len(local)
            self.lin.append((h, keep, np.arange(len(local), dtype=np.int64)))
        self.cot = fine.chain_cotangents(w, levels[0][2], len(levels[0][0]))

    def _run(self, l, X, Y, args, g, final, res=None):
        h, lin, fidx = self.lin[l]
        self.cells[l].advance_vjp(self.sw, self.dts[l], X, args[0], Y, args[1], args[2], args[3],
                                  h, lin, fidx, g=g, keep=self.cot if final else None, res=res)
        self.evals += int(args[3].sum())
        return res

    def chains(self, l, u, g, starts, lens, final=False, residual=False):
        res = np.empty((len(starts),) + u.shape[1:], u.dtype) if residual else None
        return self._run(l, u, u, _chain_args(starts, lens, True), g if l else None, final, res)

    def apply(self, l, j, lam, final=False):
        out = np.empty_like(lam)
        self._run(l, np.ascontiguousarray(lam), out, _chain_args(j, np.ones(len(j)), False), None,
                  final)
        return out

    def cotangents(self):
        """The cotangents of the final level-0 VJPs in forward order, as :meth:`Cell.step_vjp`
        records them (stacked over the steps)."""
        return self.cells[0].chain_step_cotangents(self.cot)


def _take(cache, idx):
    """The cache of the steps ``idx`` of a cache of many steps (see :mod:`mgritnn.cells.base`)."""
    return tree_map(lambda a: a[idx], cache)


# ------------------------------------------------------------------------------------------------
# The solver
# ------------------------------------------------------------------------------------------------

class _MGRITState(NamedTuple):
    """What the adjoint needs from the forward solve on this rank: the number of steps T, the
    coarsening factors, the local trajectory u (points lo .. hi), the raw inputs x and their
    projection ax0 of the local steps, the step size, and the forward propagator (which kept the
    linearization of every local step in the final sweep)."""
    T: int
    cfs: list
    u: np.ndarray
    x: np.ndarray
    ax0: np.ndarray
    dt: object
    prop: object


@register(config=MGRITConfig)
class MGRITSolver(TimeParallelSolver):
    """MGRIT forward and adjoint solves over the ranks of ``comm`` (see the module docstring).

    Parameters
    ----------
    config : MGRITConfig, optional
    comm : mpi4py communicator, optional
        The time ranks (None: the config's deprecated ``comm``, else MPI's world under an MPI
        launcher, else one process).
    state : SolverState, optional
        What it remembers (:class:`~mgritnn.solvers.base.SolverState`): ``warm``, key (T, sample
        index) -> that sample's local level-0 C-point states (n_c, *S without the batch axis),
        and the scalar ``tol_scale`` (stored when not 1).

    Runs any cell of the step protocol (the compiled chains of
    :class:`~mgritnn.cells.base.FusedChains` where the fine and the coarse cell have them) whose
    coarse cell ``config.coarse_cell_for`` finds.
    """

    name = "mgrit"
    remembers = frozenset({"warm", "tol_scale"})

    def __init__(self, config=None, comm=None, state=None):
        self.config = config or MGRITConfig()
        super().__init__(self.config.comm if comm is None else comm, state)

    @property
    def tol_scale(self):
        """Multiplier of ``rms_tol`` (1.0; the training preset's controller, which compares
        gradients with the serial sweep's, tightens or loosens it). Part of :attr:`state`."""
        return self.state.scalars.get("tol_scale", 1.0)

    @tol_scale.setter
    def tol_scale(self, value):
        if value == 1.0:
            self.state.scalars.pop("tol_scale", None)
        else:
            self.state.scalars["tol_scale"] = float(value)

    def supports(self, cell):
        """What ``cell`` lacks for MGRIT: nothing beyond the step protocol, but a coarse cell
        (``config.coarse_cell_for``) must exist for it."""
        out = super().supports(cell)
        try:
            self.config.coarse_cell_for(cell)
        except ConfigError as e:
            out.append(f"a coarse cell ({e})")
        return out

    def check(self, cell):
        """As :meth:`Solver.check`; a cell without a coarse cell gets ``coarse_cell_for``'s own
        message (which names the fix)."""
        if (type(cell), getattr(cell, "name", None)) not in self._supported:
            self.config.coarse_cell_for(cell)
        super().check(cell)

    def local_steps(self, T):
        """Fine steps [lo, hi) whose inputs this rank needs (its time slice)."""
        b = rank_bounds(T, self.config.cfs(T, self.size), self.size)
        return int(b[self.rank]), int(b[self.rank + 1])

    def forward(self, cell, w, x, h0, dt=1.0, keep=True, T=None, keys=None):
        """MGRIT forward solve. ``x`` (n_local, *X0) holds this rank's time slice [lo, hi) of the
        raw inputs (``local_steps``; the GRU: (n_local, B, I)), projected here once
        (:meth:`Cell.project_inputs`); ``h0`` (*S) the initial state; ``dt`` the step size, a
        float or an array (T,) or (T, B) for the whole sequence (every rank passes all of it;
        :func:`~mgritnn.solvers.base.step_sizes`); ``T`` the total number of steps (default:
        n_local on one rank); ``keys`` (B,) ints naming the samples (for
        ``initial_guess="warm"``; as many as the batch has rows). Returns (h_last or None,
        state, SolveStats); h_last only on the last rank. With ``fallback``, a solve that misses
        its tolerance is redone as the serial sweep (:meth:`_exact`)."""
        self.check(cell)
        cfg = self.config
        t_setup = time.perf_counter()
        ax0 = cell.project_inputs(w, x)
        T = ax0.shape[0] if T is None else T
        cfs = cfg.cfs(T, self.size)
        grid = local_grid(T, cfs, self.size, self.rank)
        lo = grid.lo
        levels = _level_inputs(grid, ax0, lo, cfg.coarse_input, reverse=False,
                               fine_dt=_fine_dt(dt, T, lo, ax0, cfg.coarse_input))
        dts = _level_dts(levels, dt, T, lo, ax0.dtype)
        coarse = cfg.coarse_cell_for(cell)
        fused = has(cell, FusedChains) and has(coarse, FusedChains)
        # the compiled chains take step sizes per batch row: a state's axis -2 (the GRU's
        # (L, B, H), the ODENet's (B, w))
        prop = (_FusedForward(cell, coarse, w, levels, dts, h0.shape[-2]) if fused
                else _ForwardProp(cell, coarse, w, levels, dts))
        fas = self._fas(grid, prop, h0, "mgrit-forward")
        remember = cfg.initial_guess == "warm" and keys is not None and len(grid.points) > 1
        cpts = grid.c_index[0][1:] if remember else None
        warm = False                # any sample seen before: a full first cycle from its states
        if remember:
            if len(keys) != h0.shape[-2]:
                raise ConfigError(f"MGRIT warm start: {len(keys)} sample keys for a batch of "
                                  f"{h0.shape[-2]} rows: give one key per row")
            keys = [(T, int(k)) for k in keys]
            for b, key in enumerate(keys):
                if key in self.state.warm:
                    fas.u[0][cpts, :, b] = self.state.warm[key]
                    warm = True
        t0 = time.perf_counter()
        fas.phases["setup"] = [t0 - t_setup, 1, 0]
        stats = fas.solve(cfg.max_iter, warm=warm, give_up=self.falls_back)
        if self.falls_back and stats.status != OK:
            fas, stats = self._exact(grid, prop, h0, "mgrit-forward", stats, spent=fas)
        if remember and not stats.failed:       # never a diverged or NaN trajectory as a guess
            for b, key in enumerate(keys):
                self.state.warm[key] = fas.u[0][cpts, :, b].copy()
        stats.wait_time = fas.wait_time
        stats.seconds = time.perf_counter() - t_setup
        u = fas.u[0]                                    # forward points lo .. hi
        state = _MGRITState(T, cfs, u, x, ax0, dt, prop) if keep else None
        return (u[-1].copy() if self.is_last else None), state, stats

    def _fas(self, grid, prop, u0, kind, reverse=False, scale=1.0):
        fas = _FAS(grid, prop, self.tc, u0, self.config, kind, reverse=reverse, scale=scale)
        fas.tol_scale = self.tol_scale
        return fas

    def _exact(self, grid, prop, u0, kind, failed, reverse=False, spent=None):
        """The fallback: the serial sweep over the ranks (one level on the same rank bounds, so
        the time slices do not move; pipelined), after the ``failed`` solve. Its statistics
        keep the failed solve's (status, message, history, iterations) and count its step
        evaluations with the sweep's (``spent``: the failed solve's fas, whose waits are added;
        its propagator's evaluations are the failed solve's when ``prop`` is a new one); its
        ``fallback`` is set.

        Returns
        -------
        fas : _FAS
            The one-level solve (its ``u[0]`` the exact trajectory of this rank's slice).
        stats : SolveStats
        """
        one = grid._replace(points=grid.points[:1], is_c=[], c_index=[])
        fas = self._fas(one, prop, u0, kind, reverse=reverse)
        before = 0 if prop is spent.prop else failed.step_evals
        sweep = fas.solve(1)
        fas.wait_time += spent.wait_time
        failed.fallback = True
        failed.message += "; the serial sweep ran instead (exact)"
        failed.step_evals = before + prop.evals
        failed.residual = 0.0
        for k, v in sweep.phases.items():
            rec = failed.phases.setdefault("fallback " + k, [0.0, 0, 0])
            rec[0] += v[0]
            rec[1] += v[1]
            rec[2] += v[2]
        return fas, failed

    def _exact_adjoint(self, cell, w, state, lam_last, grads, lam_first, failed, spent, t_setup):
        """The adjoint's fallback for a cell of :func:`~mgritnn.solvers.pipeline.can_sweep_scaled`
        (the GRU cells): backpropagation through time pipelined over the ranks from each slice's
        first forward point, with the adjoint's scale kept apart
        (:func:`~mgritnn.solvers.pipeline.pipelined_scaled_adjoint`), so that a sequence whose
        adjoint outgrows the dtype (where MGRIT's own adjoint gives inf) still gets the gradient's
        exact direction (``stats.exponent``); also where the sweep of one level (the gradient
        checks' exact solver) overflowed. ``failed``: the failed solve's statistics (kept, as
        :meth:`_exact` does; ``spent`` its solve, whose waits are added). Returns (dax0, stats)
        as :meth:`adjoint`."""
        t0 = time.perf_counter()
        T = state.T
        lo, hi = self.local_steps(T)
        dtv = step_sizes(state.dt, T, state.u.dtype, lo, hi)
        wait0 = self.tc.wait_time
        dax0, E, evals = pipelined_scaled_adjoint(self.tc, cell, w, state.x, state.ax0,
                                                  state.u[0], dtv, lam_last, grads, lam_first)
        failed.fallback = True
        failed.message += "; the serial sweep ran instead (exact, pipelined, scaled)"
        failed.step_evals += evals
        failed.residual = 0.0
        failed.exponent = E
        failed.phases["fallback (pipelined scaled sweep)"] = [time.perf_counter() - t0, 1, evals]
        failed.wait_time = spent.wait_time + self.tc.wait_time - wait0
        failed.seconds = time.perf_counter() - t_setup
        return dax0, failed

    def adjoint(self, cell, w, state, lam_last, grads, lam_first=None):
        """MGRIT adjoint solve, then one batched pass for the parameter gradients of this rank's
        steps (added to ``grads``, the input projection's included). ``lam_last`` (*S) is needed on
        the last rank only. Returns (dxp (n_local, *X), stats): the cotangent of the projected
        inputs (the GRU: dax0 (n_local, B, 3H)).

        ``lam_first`` (*S), optional, receives the adjoint at forward point 0 on the first rank
        (``is_first``; the last point of the reversed solve): the value the solve holds there, a
        C-point, as the forward's ``h_last`` is (exact with one level or when converged)."""
        cfg = self.config
        t_setup = time.perf_counter()
        T, u = state.T, state.u
        grid = local_grid(T, state.cfs, self.size, self.rank, reverse=True)
        lo_fwd = T - grid.hi
        levels = _level_inputs(grid, state.ax0, lo_fwd, cfg.coarse_input, reverse=True,
                               fine_dt=_fine_dt(state.dt, T, lo_fwd, state.ax0,
                                                cfg.coarse_input))
        # the forward's final sweep kept the gates of every local step (forward order)
        adjoint = _FusedAdjoint if isinstance(state.prop, _FusedForward) else _AdjointProp
        dts = _level_dts(levels, state.dt, T, lo_fwd, u.dtype)
        prop = adjoint(cell, cfg.coarse_cell_for(cell), w, levels, dts, u, state.prop)
        lam0 = lam_last if lam_last is not None else np.zeros_like(u[0])
        # the adjoint's size is its terminal value's (the loss's scale), not the states' 1
        scale = self.tc.allreduce(np.array([np.max(np.abs(lam0), initial=0.0)], np.float64),
                                  op="max")[0]
        fas = self._fas(grid, prop, lam0, "mgrit-adjoint", reverse=True, scale=scale)
        t0 = time.perf_counter()
        fas.phases["setup (coarse linearizations)"] = [t0 - t_setup, 1, prop.evals]
        # its final sweep keeps every step's cotangents
        stats = fas.solve(cfg.adjoint_max_iter, give_up=self.falls_back)
        if not state.cfs and stats.status == OK and can_sweep_scaled(cell) and self.tc.allreduce(
                np.array([0.0 if np.all(np.isfinite(fas.u[0])) else 1.0]), op="max")[0]:
            stats.status, stats.message = NONFINITE, "the sweep gave NaN/inf"
        # the scaled sweep: MGRIT's fallback, and one level's where its sweep overflowed
        if (self.falls_back or (not state.cfs and stats.status == NONFINITE)) \
                and stats.status != OK and can_sweep_scaled(cell):
            return self._exact_adjoint(cell, w, state, lam_last, grads, lam_first, stats, fas,
                                       t_setup)
        if self.falls_back and stats.status != OK:      # the fine level's VJPs only, sequentially
            prop = adjoint(cell, None, w, levels[:1], dts[:1], u, state.prop)
            fas, stats = self._exact(grid, prop, lam0, "mgrit-adjoint", stats, reverse=True,
                                     spent=fas)
        if lam_first is not None and lo_fwd == 0:
            lam_first[...] = fas.u[0][-1]            # reversed point T: forward point 0
        t1 = time.perf_counter()
        cot = prop.cotangents()
        cell.accumulate_grads(grads, state.prop.step_cache(u), cot)
        cell.project_inputs_vjp(w, state.x, cot[0][0], grads)
        stats.phases["parameter gradients"] = [time.perf_counter() - t1, 1, 0]
        stats.wait_time = fas.wait_time
        stats.seconds = time.perf_counter() - t_setup
        return cot[0][0], stats
