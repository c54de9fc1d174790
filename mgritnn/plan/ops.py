"""Operation counts of one training step, per rank (the planner's first part).

For a shape (B, T, I, H, L), a route (``"serial"``, ``"mgrit"`` with an
:class:`~mgritnn.solvers.MGRITConfig` or preset, ``"deer"``, ``"quasi-deer"``) and P time ranks
(times D data groups), :func:`step_ops` lists the operations each rank runs, in order: every kernel
call with the number of states K it advances per position and its step evaluations, every message
and collective. The MGRIT lists follow the FAS engine's control flow (``mgritnn/solvers/mgrit.py``:
``_cycle``, ``relax``, ``residual``, ``restrict``, ``coarsest_solve``, ``interpolate``,
``final_sweep``) on the counts of the very grids the solver uses
(:func:`~mgritnn.distributed.partition.level_counts`: arithmetic, equal to
:func:`~mgritnn.distributed.partition.local_grid`'s and O(levels) for any T, so a sequence of
10^12 steps is planned as fast as one of 10^3), so the per-phase counts (:func:`phase_counts`)
equal the solver's ``SolveStats.phases`` and ``step_evals`` (tests/test_perfmodel.py checks this).
The counts assume that no cycle stops early (a fixed ``max_iter``, the paper's setting; with a
tolerance the solver may stop sooner).

Pure counting: nothing here measures or times anything.
"""
import math
from typing import NamedTuple

import numpy as np

from ..distributed.partition import level_counts, rank_bounds
from ..errors import ConfigError
from ..memory import param_shapes
from ..solvers.mgrit import MGRITConfig

#: Routes :func:`~mgritnn.plan.predict` knows (``mgrit-paper`` and ``mgrit-fast`` are ``mgrit``
#: with a preset).
ROUTES = ("serial", "mgrit", "mgrit-paper", "mgrit-fast", "deer", "quasi-deer")

#: Newton iterations per layer that DEER and quasi-DEER typically need (float32, default
#: tolerances, zero initial guess), from perf/results/regimes-2026-12-03.jsonl: DEER 3 per layer
#: (R2: 3; UCI HAR: 6 over 2 layers), quasi-DEER 8 per layer (R1, R2: 8; R3, UCI HAR: 16 over 2
#: layers). Override with ``options["deer_iters"]`` (per layer).
DEFAULT_DEER_ITERS = {"deer": 3, "quasi-deer": 8}


# ------------------------------------------------------------------------------------------------
# Shapes and routes
# ------------------------------------------------------------------------------------------------

class Shape(NamedTuple):
    """A training step's problem: batch B, steps T, inputs I, hidden H, layers L."""
    B: int
    T: int
    I: int
    H: int
    L: int


_SHAPE_NAMES = ("B (batch)", "T (steps)", "I (inputs)", "H (hidden)", "L (layers)")
_SHAPE_HELP = ("give five positive integers B,T,I,H,L (batch, steps, inputs, hidden, layers), "
               "e.g. 100,128,9,100,2")


def parse_shape(shape):
    """A :class:`Shape` from ``"B,T,I,H,L"`` or a sequence of five positive integers.

    Raises
    ------
    ConfigError
        Not five positive integers.
    """
    if isinstance(shape, str):
        parts = [p.strip() for p in shape.split(",")]
        if len(parts) != 5:
            raise ConfigError(f"shape {shape!r} has {len(parts)} number(s): {_SHAPE_HELP}")
        vals = []
        for name, p in zip(_SHAPE_NAMES, parts):
            try:
                vals.append(int(p))
            except ValueError:
                raise ConfigError(f"shape {shape!r}: {name} is {p!r}, not an integer: "
                                  f"{_SHAPE_HELP}") from None
    else:
        vals = list(shape)
    if len(vals) != 5 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                 for v in vals):
        raise ConfigError(f"shape {shape!r}: {_SHAPE_HELP}")
    for name, v in zip(_SHAPE_NAMES, vals):
        if v < 1:
            raise ConfigError(f"shape {shape!r}: {name} is {v}, it must be at least 1: "
                              f"{_SHAPE_HELP}")
    return Shape(*(int(v) for v in vals))


def num_params(shape, classes=6):
    """Parameters of the GRU classifier of ``shape`` with ``classes`` outputs
    (:func:`~mgritnn.memory.param_shapes`)."""
    _, _, I, H, L = shape
    return sum(math.prod(s) for _, s in param_shapes(I, H, classes, L))


def mgrit_config(route, options=None):
    """The :class:`~mgritnn.solvers.MGRITConfig` of a route: ``"mgrit-paper"``,
    ``"mgrit-fast"``, or ``"mgrit"`` with ``options["config"]`` (a config or a preset name,
    default "paper") and ``options["mgrit"]`` (field overrides)."""
    options = options or {}
    cfg = options.get("config", "paper")
    if route in ("mgrit-paper", "mgrit-fast"):
        cfg = route.split("-", 1)[1]
    if isinstance(cfg, str):
        cfg = MGRITConfig.preset(cfg, **options.get("mgrit", {}))
    return cfg


# ------------------------------------------------------------------------------------------------
# Operations (counts) per rank
# ------------------------------------------------------------------------------------------------

class Op(NamedTuple):
    """One operation of one rank.

    Attributes
    ----------
    solve : str
        "forward", "adjoint" or "step" (outside the solves).
    phase : str
        The solver's phase name (``SolveStats.phases`` without the level), or a step part.
    level : int
    mode : {"local", "pipeline", "message", "allreduce", "allgather", "bcast", "none"}
        How :func:`critical_path` combines it over the ranks.
    calls : tuple of (kind, a, b)
        The kernel calls: ("fwd" or "vjp", K states per position, step evaluations), or a
        linear cost ("serial_fwd", "serial_adj", "grad", "deer_base", "deer_iter", "deer_adj",
        "qdeer_base", "qdeer_iter": work n), ("flops", n, 0), ("adam", parameters, 0).
    evals : int
        Step evaluations this operation adds to ``SolveStats.step_evals``.
    nbytes : int
        Message or reduction size (modes message, allreduce, allgather, bcast).
    record : bool
        The solver records it as one call of its phase (``phases``).
    """
    solve: str
    phase: str
    level: int
    mode: str
    calls: tuple = ()
    evals: int = 0
    nbytes: int = 0
    record: bool = True


class _FASOps:
    """The operations of one rank's FAS solve, in the order of ``_FAS`` (mgrit.py): built on the
    rank's :class:`~mgritnn.distributed.partition.LevelCounts` (the counts of its
    :class:`~mgritnn.distributed.partition.LocalGrid`, in arithmetic for any number of steps)."""

    def __init__(self, grid, cfg, solve, kind, state_bytes, state_values):
        self.grid, self.cfg, self.solve, self.kind = grid, cfg, solve, kind
        self.state_bytes, self.sv = state_bytes, state_values
        self.nlev = len(grid.points)
        self.ops = []

    def add(self, phase, l, mode="local", calls=(), evals=0, nbytes=0):
        self.ops.append(Op(self.solve, phase, l, mode, tuple(calls), int(evals), int(nbytes)))

    def chains(self, phase, l, count, n, mode="local", nbytes=0, final=False):
        """``count`` chains of ``n`` steps in all (one compiled call)."""
        kind = self.kind + ("_keep" if final else "")
        calls = ((kind, int(count), int(n)),) if count else ()
        self.add(phase, l, mode, calls, n, nbytes)

    def apply(self, phase, l, K, array=0):
        calls = ((self.kind, K, K),) if K else ()
        self.add(phase, l, calls=calls + ((("array", array * self.sv, 0),) if array else ()),
                 evals=K)

    def exchange(self, l):
        self.add("wait", l, "message", nbytes=self.state_bytes)

    def intervals(self, l):
        """The C-intervals of level l on this rank."""
        return self.grid.points[l + 1] - 1

    def f_relax(self, l):
        self.exchange(l)
        self.chains("F-relax", l, *self.grid.f_chains[l])

    def relax(self, l):
        self.f_relax(l)
        if self.cfg.relax_of(l) == "FCF":
            self.apply("C-relax", l, self.intervals(l))
            self.f_relax(l)

    def coarsest(self, l, final=False):
        self.add("wait", l, "none")
        n = self.grid.points[l] - 1
        self.chains("coarsest", l, 1 if n else 0, n, mode="pipeline", nbytes=self.state_bytes,
                    final=final)

    def cycle(self, l, kind, first):
        if l == self.nlev - 1:
            self.coarsest(l)
            return
        K = self.intervals(l)
        if first and self.cfg.skip_first_down:
            self.ops.append(Op(self.solve, "inject", l + 1, "local",
                               (("array", 2 * (K + 1) * self.sv, 0),), record=False))
        else:
            self.relax(l)
            self.chains("residual", l, K, K)
            if l == 0:
                self.add("norm allreduce", 0, "allreduce", nbytes=16)
            self.apply("restrict", l + 1, K, array=3 * (K + 1))
        self.cycle(l + 1, kind, first)
        if kind == "F" and l + 1 < self.nlev - 1:
            self.cycle(l + 1, "V", False)
        if l + 1 < self.nlev - 1:
            self.f_relax(l + 1)
        self.add("correct", l, calls=(("array", 2 * K * self.sv, 0),))

    def run(self, max_iter, warm=False):
        """The solve without an early stop: ``max_iter`` cycles and the final sweep."""
        if self.nlev == 1:
            self.coarsest(0, final=True)
            return self.ops
        for k in range(max_iter):
            self.cycle(0, self.cfg.cycle, first=(k == 0 and not warm))
        self.exchange(0)
        self.chains("final", 0, self.intervals(0), self.grid.points[0] - 1, final=True)
        self.add("norm allreduce", 0, "allreduce", nbytes=16)
        return self.ops


def mgrit_solve_ops(T, cfg, size, rank, solve="forward", warm=False, state=None, itemsize=4):
    """The operations of one rank's MGRIT forward or adjoint solve (its phases, in order).

    Parameters
    ----------
    T : int
        Fine steps.
    cfg : MGRITConfig
    size, rank : int
        Time ranks and this rank.
    solve : {"forward", "adjoint"}
    warm : bool
        The forward starts from remembered states (``initial_guess="warm"`` after the first
        epoch): its first cycle does the down-leg.
    state : (L, B, H), optional
        The state's shape: sets the size of a ghost or pipeline message and the array work of
        the set-up, the injection, the restriction and the correction (None: counts only).
    itemsize : int
        Bytes per value.

    Returns
    -------
    list of Op
        Including the solver's set-up records ("setup"; the adjoint's "setup (coarse
        linearizations)" and "parameter gradients"), whose costs :func:`step_ops` fills in.
    """
    cfs = cfg.cfs(T, size)
    adjoint = solve == "adjoint"
    grid = level_counts(T, cfs, size, rank)         # the same counts in both orientations
    L, B, H = state or (0, 0, 0)
    sv = L * B * H
    fas = _FASOps(grid, cfg, solve, "vjp" if adjoint else "fwd", sv * itemsize, sv)
    # set-up: zeroed states and right-hand sides of every level, gathered coarse inputs
    npts = list(grid.points)
    setup = (("array", 2 * sv * sum(npts) + 3 * B * H * sum(n - 1 for n in npts[1:]), 0),)
    if adjoint:
        coarse = [n - 1 for n in npts[1:]]
        fas.add("setup (coarse linearizations)", -1,
                calls=tuple(("fwd_keep", n, n) for n in coarse if n) + setup, evals=sum(coarse))
        fas.run(cfg.adjoint_max_iter)
        fas.add("parameter gradients", -1)
    else:
        fas.add("setup", -1, calls=setup)
        fas.run(cfg.max_iter, warm=warm)
    return fas.ops


def phase_counts(ops):
    """``{"phase[level]": [calls, step evaluations]}`` of one solve's operations, as the
    solver's ``SolveStats.phases`` counts them (set-up records keyed without a level)."""
    out = {}
    for op in ops:
        if not op.record:
            continue
        name = op.phase if op.level < 0 else f"{op.phase}[{op.level}]"
        rec = out.setdefault(name, [0, 0])
        rec[0] += 1
        rec[1] += op.evals
    return out


def step_evals(ops):
    """(forward, adjoint) step evaluations of one rank's operations (``SolveStats.step_evals``)."""
    return (sum(o.evals for o in ops if o.solve == "forward"),
            sum(o.evals for o in ops if o.solve == "adjoint"))


def _route_parts(route, options):
    """(solver kind, MGRITConfig or None) of a route name."""
    if route not in ROUTES:
        raise ConfigError(f"unknown route {route!r}: choose one of {', '.join(ROUTES)}")
    if route.startswith("mgrit"):
        return "mgrit", mgrit_config(route, options)
    return route, None


def _splits(shape, ranks, options):
    """(data groups D, time ranks P, batch per group) of ``ranks`` processes."""
    D = int(options.get("data_parallel", 1))
    if D < 1 or ranks % D:
        raise ConfigError(f"data_parallel {D} does not divide {ranks} ranks: give a divisor")
    if D > shape.B:
        raise ConfigError(f"data_parallel {D} exceeds the batch {shape.B}: every data group "
                          "needs at least one sample")
    return D, ranks // D, -(-shape.B // D)


def step_ops(shape, route, ranks=1, options=None, itemsize=4):
    """Every rank's operations of one training step (forward, head, adjoint, gradient reduction,
    Adam), for one data group (all groups run the same).

    Parameters
    ----------
    shape : Shape or str or sequence
        (B, T, I, H, L); the batch is split over ``options["data_parallel"]`` groups.
    route : str
        One of :data:`ROUTES`.
    ranks : int
        All processes (data groups x time ranks).
    options : dict, optional
        ``data_parallel`` (groups, default 1), ``config``/``mgrit`` (see :func:`mgrit_config`),
        ``warm`` (MGRIT forward from remembered states, default False), ``adjoint_iters``
        (quasi-DEER's adjoint iterations, summed over the layers; default L x ``deer_iters``),
        ``deer_iters`` (Newton
        iterations per layer, default :data:`DEFAULT_DEER_ITERS`), ``classes`` (default 6).
    itemsize : int
        Bytes per value (4: float32).

    Returns
    -------
    list (per time rank) of list of Op
    """
    shape = parse_shape(shape)
    options = options or {}
    kind, cfg = _route_parts(route, options)
    D, P, Bg = _splits(shape, ranks, options)
    _, T, I, H, L = shape
    if kind == "serial" and P > 1:
        raise ConfigError(f"the serial route runs on one time rank: {ranks} ranks need "
                          f"data_parallel {ranks}")
    if P > T:
        raise ConfigError(f"{P} time ranks but only {T} steps: every rank needs at least one")
    classes = int(options.get("classes", 6))
    nparams = num_params(shape, classes)
    proj = 2 * Bg * I * 3 * H                    # flops per step of the layer-0 input projection
    out = []
    for r in range(P):
        ops = []
        if kind == "serial":
            ops += [Op("forward", "serial sweep", -1, "local", (("serial_fwd", T, 0),
                                                                 ("flops", proj * T, 0)), T),
                    Op("adjoint", "BPTT", -1, "local", (("serial_adj", T, 0),
                                                         ("flops", proj * T, 0)), T)]
        elif kind == "mgrit":
            fwd = mgrit_solve_ops(T, cfg, P, r, "forward", options.get("warm", False),
                                  (L, Bg, H), itemsize)
            adj = mgrit_solve_ops(T, cfg, P, r, "adjoint", False, (L, Bg, H), itemsize)
            b = rank_bounds(T, cfg.cfs(T, P), P)
            n = int(b[r + 1] - b[r])
            fwd[0] = fwd[0]._replace(calls=fwd[0].calls + (("flops", proj * n, 0),))
            ops.append(Op("forward", "outside the kernels", -1, "local",
                          (("mgrit_extra", n, 0),), record=False))
            adj[-1] = adj[-1]._replace(calls=(("grad", n, 0), ("flops", proj * n, 0)))
            ops += fwd
            ops.append(Op("adjoint", "scale allreduce", -1, "allreduce", nbytes=8, record=False))
            ops += adj
        else:
            quasi = kind == "quasi-deer"
            iters = int(options.get("deer_iters", DEFAULT_DEER_ITERS[kind]))
            n = T * (r + 1) // P - T * r // P
            pre = "qdeer" if quasi else "deer"
            summary = Bg * H * (1 if quasi else H) + Bg * H     # (P_c, y_c) of one block
            ops.append(Op("forward", "linearization and projection", -1, "local",
                          ((f"{pre}_base", n, 0), ("flops", proj * n, 0)), n, record=False))
            for _ in range(L * iters):
                ops += [Op("forward", "Newton iteration", -1, "local", ((f"{pre}_iter", n, 0),),
                           n, record=False),
                        Op("forward", "scan allgather", -1, "allgather",
                           nbytes=summary * itemsize, record=False),
                        Op("forward", "scan boundary", -1, "message", nbytes=Bg * H * itemsize,
                           record=False),
                        Op("forward", "update allreduce", -1, "allreduce", nbytes=16,
                           record=False)]
            # quasi-DEER's adjoint: diagonal-preconditioned iterations (each costed as one of
            # its Newton iterations: a correction over all points and a diagonal scan), then
            # one pass for the cotangents and the parameter gradients
            for _ in range(int(options.get("adjoint_iters", L * iters)) if quasi else 0):
                ops += [Op("adjoint", "quasi adjoint iteration", -1, "local",
                           (("qdeer_iter", n, 0),), n, record=False),
                        Op("adjoint", "scan allgather", -1, "allgather",
                           nbytes=summary * itemsize, record=False),
                        Op("adjoint", "scan boundary", -1, "message", nbytes=Bg * H * itemsize,
                           record=False),
                        Op("adjoint", "change allreduce", -1, "allreduce", nbytes=16,
                           record=False)]
            ops.append(Op("adjoint", "gradients" if quasi else "reverse scan and gradients", -1,
                          "local", (("deer_adj", n, 0), ("flops", proj * n, 0)),
                          n if quasi else 2 * n, record=False))   # the solver counts the scan
            dense = (Bg * H * H + Bg * H) * itemsize
            for l in range(L):
                if not quasi:
                    ops += [Op("adjoint", "scan allgather", -1, "allgather", nbytes=dense,
                               record=False),
                            Op("adjoint", "scan boundary", -1, "message",
                               nbytes=Bg * H * itemsize, record=False)]
                if l < L - 1:
                    ops.append(Op("adjoint", "cotangent boundary", -1, "message",
                                  nbytes=Bg * H * itemsize, record=False))
        if P > 1:
            ops += [Op("step", "loss broadcast", -1, "bcast", nbytes=8 * (1 + Bg * classes),
                       record=False),
                    Op("step", "gradient allreduce", -1, "allreduce", nbytes=nparams * itemsize,
                       record=False)]
        if D > 1:
            ops.append(Op("step", "data-group allreduce", -1, "allreduce",
                          nbytes=nparams * itemsize, record=False))
        ops.append(Op("step", "Adam", -1, "local", (("adam", nparams, 0),), record=False))
        out.append(ops)
    return out


__all__ = ["DEFAULT_DEER_ITERS", "ROUTES", "Op", "Shape", "mgrit_config", "mgrit_solve_ops",
           "num_params", "parse_shape", "phase_counts", "step_evals", "step_ops"]
