"""A performance model of one training step: step counts, a critical path, calibrated costs.

Three separate parts:

1. **Operation counts** (:func:`step_ops`): for a shape (B, T, I, H, L), a route (``"serial"``,
   ``"mgrit"`` with an :class:`~mgritnn.solvers.MGRITConfig` or preset, ``"deer"``,
   ``"quasi-deer"``) and P time ranks (times D data groups), the list of operations each rank
   runs, in order: every kernel call with the number of states K it advances per position and its
   step evaluations, every message and collective. The MGRIT lists follow the FAS engine's
   control flow (``mgritnn/solvers/mgrit.py``: ``_cycle``, ``relax``, ``residual``,
   ``restrict``, ``coarsest_solve``, ``interpolate``, ``final_sweep``) on the very grids the
   solver uses (:func:`~mgritnn.distributed.partition.local_grid`), so the per-phase counts
   (:func:`phase_counts`) equal the solver's ``SolveStats.phases`` and ``step_evals``
   (tests/test_perfmodel.py checks this). The counts assume that no cycle stops early (a fixed
   ``max_iter``, the paper's setting; with a tolerance the solver may stop sooner).
2. **The critical path** (:func:`critical_path`, pure arithmetic): the ranks run the same
   sequence of operations; a local operation costs the slowest rank's time (the ranks wait for
   each other at the next exchange), the coarsest-level sweep is pipelined (its steps on rank r
   wait for rank r - 1: the sum over the ranks plus P - 1 message latencies), a ghost exchange
   costs one message, a residual norm or gradient reduction one allreduce, DEER's scan one
   allgather of the block summaries and one boundary message.
3. **Costs** (:class:`Costs`, from :func:`calibrate`, cached per machine by
   :func:`load_or_calibrate`): the time of one compiled call that advances K states of
   (B, H, L) by one step, tabulated over K, split into a per-call overhead and a per-position
   time; the same for the VJP and for the calls that keep linearizations or cotangents (final
   sweeps); the solver's array work per value; the serial solver's sweep and BPTT per step; the
   parameter-gradient pass per step; DEER's work per point and iteration; a GEMM rate (input
   projections); Adam per parameter; message latency and bandwidth (measured by ping-pong only
   under MPI with two or more ranks, otherwise the shared-memory defaults
   :data:`ASSUMED_LATENCY_S` and :data:`ASSUMED_BANDWIDTH`, marked as assumed).

:func:`predict` puts them together; :func:`validate` compares predictions with measured points
(the JSON lines of ``perf/bench_scaling.py``); :func:`plan` and :func:`format_plan` are
``mgritnn plan``.

Modelled as negligible: the head and loss, Python between kernel calls beyond the measured
per-call overhead, memory effects of arrays larger than those calibrated. Ranks times threads
beyond the machine's cores (oversubscription) stretch every computation by
(ranks x threads) / cores; with two or more processes every computation is also stretched by
the measured slowdown of a process while all cores are busy (:attr:`Costs.contention`: shared
caches and memory bandwidth). Other processes on the machine are not modelled.

The MGRIT forward is predicted cold (the first cycle skips its down-leg, as in a call without
``keys``) unless ``options["warm"]``; ``mgritnn plan`` predicts the fast preset warm, as it
trains after the first epoch.

References
----------
R. D. Falgout et al., "Parallel time integration with multigrid", SIAM J. Sci. Comput. 36(6), 2014.
G. E. Moon, E. C. Cyr, "Parallel training of GRU networks with a multi-grid solver for long
sequences", ICLR 2022.
Y. H. Lim et al., "Parallelizing non-linear sequential models over the sequence length", ICLR 2024.
"""
import json
import math
import os
import socket
import time
from dataclasses import asdict, dataclass, field, replace
from typing import NamedTuple

import numpy as np

from .errors import ConfigError

#: Routes :func:`predict` knows (``mgrit-paper`` and ``mgrit-fast`` are ``mgrit`` with a preset).
ROUTES = ("serial", "mgrit", "mgrit-paper", "mgrit-fast", "deer", "quasi-deer")

#: Newton iterations per layer that DEER and quasi-DEER typically need (float32, default
#: tolerances, zero initial guess), from perf/results/regimes-2026-12-03.jsonl: DEER 3 per layer
#: (R2: 3; UCI HAR: 6 over 2 layers), quasi-DEER 8 per layer (R1, R2: 8; R3, UCI HAR: 16 over 2
#: layers). Override with ``options["deer_iters"]`` (per layer).
DEFAULT_DEER_ITERS = {"deer": 3, "quasi-deer": 8}

#: Communication costs assumed when not measured (one node, shared-memory MPI transport): a
#: message's latency in seconds and the bandwidth in bytes per second. Ping-pong between two ranks
#: of the 2-core development machine (MPICH 5.0.2, 2026-12-03): 2.3 us and 8 GB/s when idle,
#: 42 us right after both ranks had been computing; a 16-byte allreduce 4.3 us.
ASSUMED_LATENCY_S = 5e-6
ASSUMED_BANDWIDTH = 5e9

#: Calibration sizes: largest rows (K x B) of a one-step call, the longest time of one call before
#: K stops growing, the steps of the first and at most of the second serial/gradient/DEER
#: measurement (the second: what takes about ``linear_s`` seconds; DEER's first: ``deer_n1``),
#: the steps of the real MGRIT solves that measure the time outside the kernels (about
#: ``mgrit_s`` seconds of serial sweeps, within ``mgrit_n``), and repeats (rounds).
SIZES = {"default": dict(max_rows=16384, max_call_s=0.05, n=(16, 4096), deer_n1=64, linear_s=0.05,
                         mgrit_n=(64, 2048), mgrit_s=0.1, repeats=5),
         "tiny": dict(max_rows=8, max_call_s=0.05, n=(2, 6), deer_n1=2, linear_s=0.0,
                      mgrit_n=(32, 32), mgrit_s=0.0, repeats=1)}

#: Steps of each chain when the per-position time of K states is measured (MGRIT's default cf):
#: chains through a level's points, as the relaxations and final sweeps walk them.
CHAIN = 4

CACHE_VERSION = 5


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


def parse_shape(shape):
    """A :class:`Shape` from ``"B,T,I,H,L"`` or a sequence of five positive integers.

    Raises
    ------
    ConfigError
        Not five positive integers.
    """
    if isinstance(shape, str):
        parts = [p.strip() for p in shape.split(",")]
        try:
            vals = [int(p) for p in parts]
        except ValueError:
            raise ConfigError(f"shape {shape!r}: give five positive integers B,T,I,H,L "
                              "(batch, steps, inputs, hidden, layers), e.g. 100,128,9,100,2") from None
    else:
        vals = list(shape)
    if len(vals) != 5 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                 and v >= 1 for v in vals):
        raise ConfigError(f"shape {shape!r}: give five positive integers B,T,I,H,L (batch, steps, "
                          "inputs, hidden, layers), e.g. 100,128,9,100,2")
    return Shape(*(int(v) for v in vals))


def num_params(shape, classes=6):
    """Parameters of the GRU classifier of ``shape`` with ``classes`` outputs."""
    _, _, I, H, L = shape
    n = 0
    for l in range(L):
        n += 3 * H * (I if l == 0 else H) + 3 * H * H + 6 * H
    return n + classes * H + classes


def covers(cell):
    """Whether the model can cost the cell named ``cell``: the GRU cells of
    :data:`mgritnn.cells.CELLS` (those :func:`calibrate` builds a :class:`GRUClassifier` with)."""
    from .cells import CELLS
    return cell in CELLS


def mgrit_config(route, options=None):
    """The :class:`~mgritnn.solvers.MGRITConfig` of a route: ``"mgrit-paper"``,
    ``"mgrit-fast"``, or ``"mgrit"`` with ``options["config"]`` (a config or a preset name,
    default "paper") and ``options["mgrit"]`` (field overrides)."""
    from .solvers import MGRITConfig
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
    rank's :class:`~mgritnn.distributed.partition.LocalGrid`."""

    def __init__(self, grid, cfg, solve, kind, state_bytes, state_values):
        self.grid, self.cfg, self.solve, self.kind = grid, cfg, solve, kind
        self.state_bytes, self.sv = state_bytes, state_values
        self.nlev = len(grid.points)
        self.ops = []

    def add(self, phase, l, mode="local", calls=(), evals=0, nbytes=0):
        self.ops.append(Op(self.solve, phase, l, mode, tuple(calls), int(evals), int(nbytes)))

    def chains(self, phase, l, lens, residual=False, mode="local", nbytes=0, final=False):
        lens = np.asarray(lens, np.int64)
        if not residual:
            lens = lens[lens > 0]
        n = int(lens.sum())
        kind = self.kind + ("_keep" if final else "")
        calls = ((kind, len(lens), n),) if len(lens) else ()
        self.add(phase, l, mode, calls, n, nbytes)

    def apply(self, phase, l, K, array=0):
        calls = ((self.kind, K, K),) if K else ()
        self.add(phase, l, calls=calls + ((("array", array * self.sv, 0),) if array else ()),
                 evals=K)

    def exchange(self, l):
        self.add("wait", l, "message", nbytes=self.state_bytes)

    def f_relax(self, l):
        self.exchange(l)
        c = self.grid.c_index[l]
        self.chains("F-relax", l, np.diff(c) - 1)

    def relax(self, l):
        self.f_relax(l)
        if self.cfg.relax_of(l) == "FCF":
            self.apply("C-relax", l, len(self.grid.c_index[l]) - 1)
            self.f_relax(l)

    def coarsest(self, l, final=False):
        self.add("wait", l, "none")
        self.chains("coarsest", l, [len(self.grid.points[l]) - 1], mode="pipeline",
                    nbytes=self.state_bytes, final=final)

    def cycle(self, l, kind, first):
        if l == self.nlev - 1:
            self.coarsest(l)
            return
        K = len(self.grid.c_index[l]) - 1
        if first and self.cfg.skip_first_down:
            self.ops.append(Op(self.solve, "inject", l + 1, "local",
                               (("array", 2 * (K + 1) * self.sv, 0),), record=False))
        else:
            self.relax(l)
            self.chains("residual", l, np.ones(K, np.int64), residual=True)
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
        self.chains("final", 0, np.diff(self.grid.c_index[0]), residual=True, final=True)
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
    from .distributed.partition import local_grid
    cfs = cfg.cfs(T, size)
    adjoint = solve == "adjoint"
    grid = local_grid(T, cfs, size, rank, reverse=adjoint)
    L, B, H = state or (0, 0, 0)
    sv = L * B * H
    fas = _FASOps(grid, cfg, solve, "vjp" if adjoint else "fwd", sv * itemsize, sv)
    # set-up: zeroed states and right-hand sides of every level, gathered coarse inputs
    npts = [len(p) for p in grid.points]
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
        ``warm`` (MGRIT forward from remembered states, default False), ``deer_iters`` (Newton
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
    state = L * Bg * H * itemsize
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
            from .distributed.partition import rank_bounds
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
            ops.append(Op("adjoint", "reverse scan and gradients", -1, "local",
                          (("deer_adj", n, 0), ("flops", proj * n, 0)), n, record=False))
            dense = (Bg * H * H + Bg * H) * itemsize
            for l in range(L):
                ops += [Op("adjoint", "scan allgather", -1, "allgather", nbytes=dense,
                           record=False),
                        Op("adjoint", "scan boundary", -1, "message", nbytes=Bg * H * itemsize,
                           record=False)]
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


# ------------------------------------------------------------------------------------------------
# Costs and the critical path (pure arithmetic)
# ------------------------------------------------------------------------------------------------

@dataclass
class Costs:
    """The cost table of one machine and key (cell, H, L, dtype, threads, batch B).

    Attributes
    ----------
    overhead : float
        Seconds per compiled forward call besides its positions (the propagator's call
        overhead).
    fwd, vjp : list of [K, seconds]
        Time of one position of a call that advances K states of (L, B, H) by one step (forward,
        VJP), overhead excluded, increasing K. Between entries log-log interpolation, beyond the
        last the time per state is held.
    fwd_keep, vjp_keep : list of [K, seconds] or None
        The same for the calls that keep the linearization (forward) or the cotangents (VJP):
        the final sweeps and the coarse linearizations (None: as ``fwd``, ``vjp``).
    array_s : float
        Seconds per value of the solver's array work outside the kernels (set-up, injection,
        restriction, correction).
    overhead_vjp : float or None
        The same for a VJP call (None: ``overhead``).
    linear : dict of str -> [c0, c1]
        Costs c0 + c1 n of work n: "serial_fwd", "serial_adj" (the serial sweep and BPTT of n
        steps, without the input projection), "grad" (parameter gradients of n steps),
        "mgrit_extra" (what an MGRIT solve of n local steps spends beyond its modelled kernels
        and array work; optional, 0 if absent), DEER's
        "deer_base", "deer_iter" (per layer and iteration), "deer_adj", quasi-DEER's
        "qdeer_base", "qdeer_iter" (n points per rank).
    flops_per_s : float
        GEMM rate of the input projection and its gradient.
    adam_s : float
        Seconds per parameter of an Adam update.
    latency_s, bandwidth : float
        Point-to-point message latency (s) and bandwidth (bytes/s).
    comm_assumed : bool
        The communication figures are the defaults, not measured.
    cores : int
        Cores of the machine (oversubscription beyond them stretches the computation).
    contention : float
        How much slower one process computes while every other core runs the same work (shared
        caches and memory bandwidth): the serial step timed alone and beside ``cores - 1``
        copies of itself (:func:`_contention`); 1.0 where not measured (tiny calibrations, a
        table of several threads, one core). Applied to every computation of a prediction with
        two or more processes.
    key : dict
        What the table was measured for.
    seconds : float
        How long the calibration took.
    """
    overhead: float
    fwd: list
    vjp: list
    linear: dict
    flops_per_s: float
    adam_s: float
    overhead_vjp: float = None
    fwd_keep: list = None
    vjp_keep: list = None
    array_s: float = 0.0
    latency_s: float = ASSUMED_LATENCY_S
    bandwidth: float = ASSUMED_BANDWIDTH
    comm_assumed: bool = True
    cores: int = 0
    contention: float = 1.0
    key: dict = field(default_factory=dict)
    seconds: float = 0.0

    @classmethod
    def from_dict(cls, d):
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def position_time(table, K):
    """Seconds of one position of K states from a table of [K, seconds] (see :class:`Costs`)."""
    ks = np.array([k for k, _ in table], np.float64)
    ts = np.array([t for _, t in table], np.float64)
    if K <= ks[0]:
        return float(ts[0])
    if K >= ks[-1]:
        return float(ts[-1] * K / ks[-1])
    i = int(np.searchsorted(ks, K)) - 1
    if ks[i + 1] == K:
        return float(ts[i + 1])
    f = (math.log(K) - math.log(ks[i])) / (math.log(ks[i + 1]) - math.log(ks[i]))
    return float(math.exp(math.log(ts[i]) + f * (math.log(ts[i + 1]) - math.log(ts[i]))))


def call_time(call, costs):
    """Seconds of one kernel call (kind, a, b) of an :class:`Op`."""
    kind, a, b = call
    if kind in ("fwd", "vjp", "fwd_keep", "vjp_keep"):
        plain = kind[:3]
        table = getattr(costs, kind) or getattr(costs, plain)
        c0 = costs.overhead
        if plain == "vjp" and costs.overhead_vjp is not None:
            c0 = costs.overhead_vjp
        return c0 + (b / a) * position_time(table, a) if a else 0.0
    if kind == "array":
        return a * costs.array_s
    if kind == "flops":
        return a / costs.flops_per_s
    if kind == "adam":
        return a * costs.adam_s
    c0, c1 = costs.linear.get(kind, (0.0, 0.0)) if kind in _OPTIONAL else costs.linear[kind]
    return c0 + c1 * a


#: Linear costs that a table may lack (then 0): the MGRIT solve's time outside the kernels.
_OPTIONAL = ("mgrit_extra",)


def _log2(P):
    return math.ceil(math.log2(P)) if P > 1 else 0


def comm_time(mode, nbytes, P, costs):
    """Seconds of a message or collective of ``nbytes`` (per rank) among P ranks: a message
    latency + bytes / bandwidth; an allreduce ceil(log2 P) latencies + 2 (P - 1)/P bytes /
    bandwidth; an allgather ceil(log2 P) latencies + (P - 1) bytes / bandwidth; a broadcast
    ceil(log2 P) (latency + bytes / bandwidth). Nothing on one rank."""
    if P <= 1:
        return 0.0
    lat, bw = costs.latency_s, costs.bandwidth
    if mode == "message":
        return lat + nbytes / bw
    if mode == "allreduce":
        return _log2(P) * lat + 2 * (P - 1) / P * nbytes / bw
    if mode == "allgather":
        return _log2(P) * lat + (P - 1) * nbytes / bw
    if mode == "bcast":
        return _log2(P) * (lat + nbytes / bw)
    raise ValueError(f"unknown communication mode {mode!r}")


def critical_path(rank_ops, costs, stretch=1.0, groups=1):
    """Time of one training step along its critical path (pure arithmetic).

    Parameters
    ----------
    rank_ops : list (per time rank) of list of Op
        The same phases in the same order on every rank (:func:`step_ops`).
    costs : Costs
    stretch : float
        Factor on every computation (oversubscription).
    groups : int
        Data groups (their allreduce runs over ``groups`` processes, the others over the P time
        ranks).

    Returns
    -------
    total : float
        Seconds.
    breakdown : dict of str -> float
        Seconds per "solve phase" (levels summed).

    Notes
    -----
    Per operation i: local -> max over ranks of its calls' time; pipeline -> sum over the ranks
    plus (P - 1) messages of its size; message, allreduce, allgather, bcast -> :func:`comm_time`;
    none -> 0.
    """
    P = len(rank_ops)
    n = len(rank_ops[0])
    if any(len(ops) != n for ops in rank_ops):
        raise ValueError("the ranks' operation lists differ in length")
    total, breakdown = 0.0, {}
    for i in range(n):
        op = rank_ops[0][i]
        work = [stretch * sum(call_time(c, costs) for c in ops[i].calls) for ops in rank_ops]
        if op.mode == "local":
            t = max(work)
        elif op.mode == "pipeline":
            t = sum(work) + (P - 1) * comm_time("message", op.nbytes, P, costs)
        elif op.mode == "none":
            t = 0.0
        else:
            over = groups if op.phase == "data-group allreduce" else P
            t = comm_time(op.mode, op.nbytes, over, costs)
        total += t
        key = f"{op.solve} {op.phase}"
        breakdown[key] = breakdown.get(key, 0.0) + t
    return total, breakdown


# ------------------------------------------------------------------------------------------------
# Prediction and validation
# ------------------------------------------------------------------------------------------------

@dataclass
class Prediction:
    """A predicted training step.

    Attributes
    ----------
    seconds : float
        Time per training step.
    breakdown : dict of str -> float
        Seconds per phase along the critical path.
    step_evals : list of [int, int]
        Per time rank: forward and adjoint step evaluations (``SolveStats.step_evals``).
    route, shape, ranks, threads, data_parallel : as given
    time_ranks : int
    exact : bool
        The route's gradient is the serial one (to round-off or its tolerance); False for MGRIT
        with fixed cycle counts.
    notes : list of str
    """
    seconds: float
    breakdown: dict
    step_evals: list
    route: str
    shape: tuple
    ranks: int
    threads: int
    data_parallel: int
    time_ranks: int
    exact: bool
    notes: list = field(default_factory=list)


def predict(shape, route, ranks=1, threads=1, options=None, calibration=None):
    """Predicted time of one training step.

    Parameters
    ----------
    shape : (B, T, I, H, L) or "B,T,I,H,L"
    route : str
        One of :data:`ROUTES`.
    ranks : int
        Processes (data groups x time ranks).
    threads : int
        Numba threads per rank.
    options : dict, optional
        See :func:`step_ops`; also ``cell`` (default "implicit"), ``dtype`` (default "float32"),
        ``cores`` (default: the table's).
    calibration : Costs or callable, optional
        The cost table, or ``fn(batch) -> Costs`` for the batch of one data group; None: the
        machine's cached tables (:func:`load_or_calibrate`, calibrating on first use), and for
        more threads than this machine has cores, those of 1 and 2 threads extrapolated
        (:func:`extrapolate_threads`; a note says so).

    Returns
    -------
    Prediction
    """
    shape = parse_shape(shape)
    options = dict(options or {})
    if not isinstance(ranks, (int, np.integer)) or ranks < 1:
        raise ConfigError(f"ranks {ranks!r}: give a positive integer")
    if not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ConfigError(f"threads {threads!r}: give a positive integer")
    dtype = np.dtype(options.get("dtype", "float32"))
    kind, cfg = _route_parts(route, options)
    D, P, Bg = _splits(shape, ranks, options)
    rank_ops = step_ops(shape, route, ranks, options, dtype.itemsize)
    notes = []
    if isinstance(calibration, Costs):
        costs = calibration
    else:
        here = os.cpu_count() or 1
        cell = options.get("cell", "implicit")

        def table(t, b):
            return load_or_calibrate(cell, shape.H, shape.L, dtype.name, t, b)
        if calibration is None and threads > here >= 2:    # more threads than cores to measure on
            costs = extrapolate_threads(table(1, Bg), table(2, Bg), threads)
            notes.append(f"{threads} threads extrapolated from 1 and 2 measured here "
                         "(Amdahl fit per cost; not measured)")
        else:
            costs = (calibration or (lambda b: table(threads, b)))(Bg)
    cores = int(options.get("cores") or costs.cores or os.cpu_count() or 1)
    stretch = max(1.0, ranks * threads / cores)
    if stretch > 1:
        notes.append(f"oversubscribed: {ranks} ranks x {threads} threads on {cores} cores "
                     f"(computation stretched {stretch:.2g}x)")
    if ranks > 1 and costs.contention != 1.0:
        stretch *= costs.contention
        notes.append(f"every core busy: computation {costs.contention:.2f}x slower (measured "
                     "contention)")
    if costs.comm_assumed and ranks > 1:
        notes.append(f"communication assumed (latency {costs.latency_s * 1e6:.0f} us, "
                     f"{costs.bandwidth / 1e9:.0f} GB/s), not measured")
    if kind in DEFAULT_DEER_ITERS:
        it = int(options.get("deer_iters", DEFAULT_DEER_ITERS[kind]))
        notes.append(f"{it} Newton iterations per layer assumed")
        n = -(-shape.T // P)
        if n * Bg * shape.H * shape.H * dtype.itemsize > 8e9:
            notes.append("the dense Jacobians exceed DEER's default max_memory (8 GB per rank)")
    total, breakdown = critical_path(rank_ops, costs, stretch, D)
    exact = kind != "mgrit" or len(cfg.cfs(shape.T, P)) == 0
    if not exact:
        notes.append(f"MGRIT with {cfg.max_iter} forward / {cfg.adjoint_max_iter} adjoint cycles: "
                     "the gradient is approximate, not serial BPTT's")
    return Prediction(total, breakdown, [list(step_evals(ops)) for ops in rank_ops], route,
                      tuple(shape), int(ranks), int(threads), D, P, exact, notes)


#: Route names of perf/bench_scaling.py's records.
_RECORD_ROUTES = {"serial", "mgrit-paper", "mgrit-fast", "deer", "quasi-deer"}


def validate(records, calibration=None):
    """Predictions against measured training steps.

    Parameters
    ----------
    records : iterable of dict
        Measured points: ``shape`` [B, T, I, H, L], ``route`` (serial, mgrit-paper, mgrit-fast,
        deer, quasi-deer, or mgrit with ``options``), ``ranks``, ``threads``, ``seconds`` (median
        per training step), optional ``data_parallel``, ``options`` and ``step_evals`` (per rank
        [forward, adjoint]): the ``kind="point"`` lines of perf/bench_scaling.py (other kinds are
        skipped).
    calibration : Costs or callable, optional
        As in :func:`predict`.

    Returns
    -------
    list of dict
        Per point: the record's ``shape``, ``route``, ``ranks``, ``threads``, ``data_parallel``,
        ``predicted`` and ``measured`` seconds, ``rel_error`` (predicted / measured - 1; None
        for a point without a measured time, e.g. a failed launch),
        ``predicted_step_evals`` (per process in world order, group-major as
        :func:`~mgritnn.distributed.comm.split_data_time` numbers them: [forward, adjoint]) and
        ``measured_step_evals``, ``oversubscribed``, ``notes``.
    """
    out = []
    for rec in records:
        if rec.get("kind", "point") != "point":
            continue
        options = dict(rec.get("options") or {})
        options.setdefault("data_parallel", int(rec.get("data_parallel", 1)))
        p = predict(rec["shape"], rec["route"], int(rec["ranks"]), int(rec.get("threads", 1)),
                    options, calibration)
        measured = None if rec.get("seconds") is None else float(rec["seconds"])
        out.append(dict(shape=list(p.shape), route=rec["route"], ranks=p.ranks, threads=p.threads,
                        data_parallel=p.data_parallel, predicted=p.seconds, measured=measured,
                        rel_error=p.seconds / measured - 1 if measured else None,
                        predicted_step_evals=p.step_evals * p.data_parallel,
                        measured_step_evals=rec.get("step_evals"),
                        oversubscribed=rec.get("oversubscribed"), notes=p.notes))
    return out


# ------------------------------------------------------------------------------------------------
# Calibration (measurement) and its cache
# ------------------------------------------------------------------------------------------------

def cache_path(directory=None):
    """The machine's calibration file: ``<dir>/perfmodel-<hostname>.json``, dir from the
    argument, ``$MGRITNN_CACHE`` or ``~/.cache/mgritnn``."""
    directory = directory or os.environ.get("MGRITNN_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "mgritnn")
    host = "".join(c if c.isalnum() or c in "-_." else "_" for c in socket.gethostname())
    return os.path.join(directory, f"perfmodel-{host or 'unknown'}.json")


def cache_key(cell, H, L, dtype, threads, batch, size="default"):
    """The cache's key of one calibration."""
    return f"{cell}/H{int(H)}/L{int(L)}/{np.dtype(dtype).name}/t{int(threads)}/B{int(batch)}/{size}"


def read_cache(path):
    """The entries of a calibration file ({} if missing, unreadable or of another version)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    return data.get("entries", {})


def write_cache(path, entries):
    """Write the entries atomically (temporary file + rename: :func:`mgritnn.io.atomic_write_text`)."""
    from .io import atomic_write_text
    text = json.dumps(dict(version=CACHE_VERSION, entries=entries), indent=1, sort_keys=True)
    atomic_write_text(path, text, what="the calibration cache")


def _amdahl(v1, v2, t):
    """A time at ``t`` threads from those at 1 and 2, ``v(t) = v1 (s + (1 - s) / t)`` with the
    serial fraction ``s = 2 v2 / v1 - 1`` clamped to [0, 1] (no gain measured: ``v1`` held)."""
    if not (v1 > 0 and np.isfinite(v1) and np.isfinite(v2)):
        return v1
    s = min(1.0, max(0.0, 2.0 * v2 / v1 - 1.0))
    return v1 * (s + (1.0 - s) / t)


def extrapolate_threads(c1, c2, threads):
    """The :class:`Costs` of ``threads`` threads from the tables measured on 1 and 2 threads (for
    a machine with more cores than the one calibrated on).

    Every work-proportional cost (a position's time per K, the slopes of the linear costs, the
    GEMM time per flop, Adam's time per parameter) follows Amdahl's law with the serial fraction
    that its 1- and 2-thread values imply (:func:`_amdahl`); per-call costs (the call overheads,
    the intercepts of the linear costs) take the larger of the two, since threads do not shorten
    them; the array work outside the kernels is NumPy's, on one thread. Two points fix the fit and
    nothing checks it beyond 2 threads here: a prediction, to be read as such.

    Parameters
    ----------
    c1, c2 : Costs
        Tables of one key measured with 1 and 2 threads.
    threads : int

    Returns
    -------
    Costs
    """
    def table(name):
        t1, t2 = getattr(c1, name), getattr(c2, name)
        if t1 is None or t2 is None:
            return None
        return [[k, _amdahl(v, position_time(t2, k), threads)] for k, v in t1]

    linear = {}
    for name, (a1, b1) in c1.linear.items():
        a2, b2 = c2.linear.get(name, (a1, b1))
        linear[name] = [max(a1, a2), _amdahl(b1, b2, threads)]
    key = dict(c1.key, threads=int(threads), extrapolated_from=[1, 2])
    return replace(c1, overhead=max(c1.overhead, c2.overhead),
                   overhead_vjp=(None if c1.overhead_vjp is None else
                                 max(c1.overhead_vjp, c2.overhead_vjp or c1.overhead_vjp)),
                   fwd=table("fwd"), vjp=table("vjp"), fwd_keep=table("fwd_keep"),
                   vjp_keep=table("vjp_keep"), linear=linear,
                   flops_per_s=1.0 / _amdahl(1.0 / c1.flops_per_s, 1.0 / c2.flops_per_s, threads),
                   adam_s=_amdahl(c1.adam_s, c2.adam_s, threads), key=key,
                   cores=max(c1.cores, int(threads)))


def load_or_calibrate(cell, H, L, dtype, threads, batch, size="default", cache=None,
                      report=None, recalibrate=False, comm=None):
    """The :class:`Costs` of a key from the machine's cache, or calibrated now and cached.

    Parameters
    ----------
    cell, H, L, dtype, threads, batch : the key (see :func:`calibrate`)
    size : {"default", "tiny"}
        Calibration size (:data:`SIZES`; "tiny" for tests).
    cache : str, optional
        The cache file (default :func:`cache_path`).
    report : callable, optional
        Called with a line when a calibration runs and when it is done (its time).
    recalibrate : bool
        Measure again even if cached.
    comm : mpi4py communicator, optional
        Passed to :func:`calibrate` (two or more ranks: the message costs are measured). Every
        rank calibrates; give each rank its own ``cache`` or let one rank write.
    """
    path = cache or cache_path()
    key = cache_key(cell, H, L, dtype, threads, batch, size)
    entries = read_cache(path)
    if key in entries and not recalibrate:
        return Costs.from_dict(entries[key])
    if report:
        report(f"calibrating {key} (first use on this machine; cached in {path}) ...")
    costs = calibrate(cell, H, L, dtype, threads, batch, size, comm=comm)
    if report:
        report(f"calibrated {key} in {costs.seconds:.1f} s")
    entries = read_cache(path)             # another process may have added entries meanwhile
    entries[key] = asdict(costs)
    write_cache(path, entries)
    return costs


def _best(fn, repeats, target_s=0.005, slow_s=0.2):
    """Seconds per call of ``fn``: the fastest of ``repeats`` rounds (after one untimed call), each
    round as many calls as fill about ``target_s`` (so that microsecond calls are timed over a
    loop, not one by one); a slow call gets only as many rounds (at least 2) as fill ``slow_s``.
    The fastest round, not the median: the development machines are shared, and the fastest
    round is the figure least disturbed by other processes."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    number = int(min(1000, max(1, target_s / max(first, 1e-9))))
    rounds = min(repeats, max(2, int(slow_s / max(first, 1e-9))))
    ts = []
    for _ in range(max(1, rounds)):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        ts.append((time.perf_counter() - t0) / number)
    return min(ts)


def _plausible(t, K, prev):
    """A position of K states: at least the time of the previous (fewer) states ``prev`` = [K',
    t'], at most 1.25 x their time per state (more states per call only share the call): a
    round disturbed by another process throughout cannot make one entry absurd."""
    k0, t0 = prev
    return float(min(max(t, t0), 1.25 * t0 * K / k0))


def _filled(arrays, rng):
    """The arrays (a tuple) filled with random values: a zeroed array that is only read would
    be read from the operating system's shared zero page, faster than any real data."""
    for a in arrays:
        a[...] = rng.standard_normal(a.shape)
    return arrays


def _fit(n, t):
    """[c0, c1] of the line through (n[0], t[0]), (n[1], t[1]) (c0, c1 >= 0)."""
    c1 = max(0.0, (t[1] - t[0]) / (n[1] - n[0]))
    return [max(0.0, t[0] - c1 * n[0]), c1]


def calibrate(cell="implicit", H=32, L=1, dtype="float32", threads=1, batch=1, size="default",
              comm=None):
    """Measure the cost table of one key on this machine (the docstring of :func:`_calibrate`),
    with the BLAS on one thread and ``threads`` numba threads, as the solvers run in training
    (:func:`~mgritnn.runtime.entry_point`); both settings are restored afterwards.

    Regression: the calibration ran with SciPy's OpenBLAS (numba's ``np.dot``) on its default
    threads, which made the serial BPTT of small states up to 10x slower than in training
    (measured here: B = 2, H = 32, 17.6 us per step against 1.8 us); see
    :func:`mgritnn.runtime._load_numbas_blas`."""
    from .runtime import blas_threads, numba_threads
    with blas_threads(1), numba_threads(threads):
        return _calibrate(cell, H, L, dtype, threads, batch, size, comm)


def _calibrate(cell, H, L, dtype, threads, batch, size, comm):
    """Measure the cost table of one key on this machine.

    Parameters
    ----------
    cell : str
        The fine cell (the coarse levels' implicit cell is taken to cost the same).
    H, L : int
        Hidden size and layers.
    dtype : str
    threads : int
        Numba threads per rank.
    batch : int
        Rows B of one state.
    size : {"default", "tiny"}
        :data:`SIZES`.
    comm : mpi4py communicator, optional
        With two or more ranks, rank 0 and 1 measure latency and bandwidth by ping-pong.

    Returns
    -------
    Costs

    Notes
    -----
    The states' rows are random, the inputs have one channel (the input projection is costed by
    the measured GEMM rate with the real I). The overhead of a call and the time of one position
    of one state are the intercept and slope of a one-state chain of 1 .. 16 steps; the time of
    one position of K states comes from K chains of :data:`CHAIN` steps, K = 2, 4, ... until
    K B exceeds ``max_rows`` or a call takes ``max_call_s``. Linear costs come from two sizes n.
    Each figure is the fastest of several rounds (:func:`_best`).
    """
    from . import config
    from .cells import get_cell
    from .model import GRUClassifier
    from .distributed import SelfComm
    from .solvers import DEERConfig, SerialSolver
    sz = SIZES[size]
    t_start = time.perf_counter()
    dtype = np.dtype(config.resolve_dtype(dtype))
    fine = get_cell(cell)
    B, rep = int(batch), sz["repeats"]
    m = GRUClassifier(1, H, 2, num_layers=L, cell=cell, dtype=dtype.name, seed=0)
    w = m.weights()
    sw = fine.chain_weights(w)
    rng = np.random.default_rng(0)

    def states(K):
        return (0.5 * rng.standard_normal((K, L, B, H))).astype(dtype)

    def one_step(K, length=1):
        """The calls fwd, vjp, fwd_keep, vjp_keep on K chains of ``length`` steps along the
        points of one array, as a relaxation walks a level (a free point between chains, so
        that no chain reads what another writes)."""
        n = K * (length + 1)
        ax = (0.5 * rng.standard_normal((n, B, 3 * H))).astype(dtype)
        dt = np.ones((n, B), dtype)
        X = states(n + 1)
        starts = np.arange(K, dtype=np.int64) * (length + 1)
        lens = np.full(K, length, np.int64)
        keep = fine.chain_cache(w, ax, n)
        cot = _filled(fine.chain_cotangents(w, ax, n), rng)
        args = (X, starts, X, starts + 1, starts, lens)
        fine.advance(sw, ax, dt, *args, keep=keep)
        lam = states(n + 1)
        vargs = (lam, starts, lam, starts + 1, starts, lens, X, keep, np.arange(n, dtype=np.int64))
        return (lambda: fine.advance(sw, ax, dt, *args),
                lambda: fine.advance_vjp(sw, dt, *vargs),
                lambda: fine.advance(sw, ax, dt, *args, keep=keep),
                lambda: fine.advance_vjp(sw, dt, *vargs, keep=cot))

    # one chain of 1 .. 16 steps: the intercept is the call's overhead, the slope one position
    # (1 .. 4 where one step takes more than 10 ms: large states, whose overhead is negligible)
    lengths = (1, 2, 4, 8, 16) if _best(one_step(1, 1)[0], 1) < 0.01 else (1, 2, 4)
    chains = [one_step(1, n) for n in lengths]
    fit = [np.polyfit(lengths, [_best(c[i], rep) for c in chains], 1) for i in range(4)]
    overhead, overhead_vjp = (max(0.0, float(f[1])) for f in fit[:2])
    c0s = (overhead, overhead_vjp) * 2
    tables = [[[1, max(float(f[0]), 1e-9)]] for f in fit]
    K = 2
    while K * B <= sz["max_rows"]:
        ts = [_best(fn, rep) for fn in one_step(K, CHAIN)]
        for table, t, c0 in zip(tables, ts, c0s):
            table.append([K, _plausible((t - c0) / CHAIN, K, table[-1])])
        if max(ts) > sz["max_call_s"]:
            break
        K *= 2

    # array work outside the kernels: u[c] += a - b on every 4th state (2 values per value)
    k = max(1, (1 << 18) // (L * B * H))
    u = states(4 * k)
    a, b = states(k), states(k)
    c = np.arange(0, 4 * k, 4)

    def correct():
        u[c] += a - b
    array_s = _best(correct, rep) / (2 * a.size)

    # serial sweep and BPTT, parameter gradients, DEER: two sizes n (the second one from a
    # time budget, so that large states do not take minutes)
    step_est = tables[0][0][1] + tables[1][0][1]          # one forward and one VJP position
    n1 = int(max(2, min(sz["n"][0], sz["linear_s"] / (4 * step_est))))
    lam = np.ones((L, B, H), dtype)
    grads = fine.zero_grads(w)
    ser = SerialSolver()
    h0 = np.zeros((L, B, H), dtype)

    def serial(n):
        x = rng.standard_normal((n, B, 1)).astype(dtype)
        st = {}

        def sf():
            st["s"] = ser.forward(fine, w, x, h0)[1]
        return _best(sf, rep), _best(lambda: ser.adjoint(fine, w, st["s"], lam, grads), rep)

    def grad(n):
        ax = fine.project_inputs(w, rng.standard_normal((n, B, 1)).astype(dtype))
        keep = fine.chain_cache(w, ax, n)
        u = states(n + 1)
        k0 = np.zeros(1, np.int64)
        fine.advance(sw, ax, np.ones((n, B), dtype), u, k0, u, k0 + 1, k0,
                     np.array([n], np.int64), keep=keep)
        cot = fine.chain_step_cotangents(_filled(fine.chain_cotangents(w, ax, n), rng))
        scache = fine.chain_step_cache(keep, u)
        return (_best(lambda: fine.accumulate_grads(grads, scache, cot), rep),)

    def deer_run(n, quasi):
        """(base, per layer-iteration) of DEER (quasi: quasi-DEER) on n points, and the solver
        and state of the longer run (for the adjoint)."""
        x = rng.standard_normal((n, B, 1)).astype(dtype)
        base = dict(atol=1e-30, rtol=0.0, fallback=False, divergence=1e300, quasi=quasi,
                    comm=SelfComm())          # this process alone, also under MPI
        runs = []
        for it in (1, 5):              # a difference of 4 iterations: less noise
            solver = DEERConfig(max_iter=it, **base).make_solver()
            res = {}

            def run():
                res["r"] = solver.forward(fine, w, x, h0)
            t = _best(run, rep)
            runs.append((res["r"][2].iterations, t, solver, res["r"][1]))
        (i1, t1, _, _), (i5, t5, solver, st) = runs
        per = max(0.0, (t5 - t1) / (i5 - i1)) if i5 > i1 else t1 / max(i1, 1)
        return max(0.0, t1 - i1 * per), per, solver, st

    def deer(n):
        """(base, per layer-iteration, adjoint) of DEER."""
        b, per, solver, st = deer_run(n, False)
        return b, per, _best(lambda: solver.adjoint(fine, w, st, lam, grads), rep)

    def qdeer(n):
        """(base, per layer-iteration) of quasi-DEER."""
        return deer_run(n, True)[:2]

    def budget(n1, t1, cap):
        """The second size: what takes about ``linear_s``, within [8 n1, cap] (at least n1 + 1;
        2 n1 when n1 steps already take that long: per-call costs are then negligible)."""
        least = 8 * n1 if t1 < sz["linear_s"] else 2 * n1
        return int(max(n1 + 1, min(cap, max(least, sz["linear_s"] * n1 / max(t1, 1e-9)))))

    linear = {}
    dense_cap = int(2e8 // (B * H * H * dtype.itemsize))
    for names, fn, first, cap in (
            (("serial_fwd", "serial_adj"), serial, n1, sz["n"][1]),
            (("grad",), grad, n1, sz["n"][1]),
            (("deer_base", "deer_iter", "deer_adj"), deer,
             min(sz["deer_n1"], dense_cap // 8), min(sz["n"][1], dense_cap)),
            # quasi-DEER iterates on diagonal Jacobians but keeps the dense ones for the exact
            # adjoint in training: bounded by 2 GB of them, not by DEER's 0.2 GB (bounded by
            # those, it was measured on 6 .. 50 points at B H = 10^4, where per-call costs
            # swamp the slope)
            (("qdeer_base", "qdeer_iter"), qdeer, min(sz["deer_n1"], 10 * dense_cap // 8),
             min(sz["n"][1], 10 * dense_cap))):
        if cap <= first or first < 1:    # dense Jacobians too large to measure: no DEER costs
            linear.update({k: [float("inf"), float("inf")] for k in names})
            continue
        t1 = fn(first)
        n2 = budget(first, sum(t1), cap)
        for k, a1, a2 in zip(names, t1, fn(n2)):
            linear[k] = _fit((first, n2), (a1, a2))

    # GEMM rate (the input projection) and Adam per parameter
    from .cells.gru import project
    steps = max(1, max(64, min(4096, sz["max_rows"])) // B)
    A = rng.standard_normal((steps, B, H)).astype(dtype)
    Wx = rng.standard_normal((3 * H, H)).astype(dtype)
    out = np.empty((steps, B, 3 * H), dtype)
    tg = _best(lambda: project(A, Wx, None, out), rep)
    flops = 2.0 * steps * B * H * 3 * H / max(tg, 1e-9)
    from .optim import adam, apply_updates
    p = np.zeros(100_000 if size == "default" else 1000, dtype)
    opt = adam(lr=1e-3)
    st = opt.init(p)
    g = np.ones_like(p)
    ta = _best(lambda: apply_updates(p, opt.update(g, st, p)[0], inplace=True), rep)

    lat, bw, assumed = ASSUMED_LATENCY_S, ASSUMED_BANDWIDTH, True
    if comm is not None and comm.Get_size() >= 2:
        lat, bw = _ping_pong(comm, dtype)
        assumed = False
    costs = Costs(overhead=overhead, overhead_vjp=overhead_vjp, fwd=tables[0], vjp=tables[1],
                  fwd_keep=tables[2], vjp_keep=tables[3], array_s=array_s, linear=linear,
                  flops_per_s=flops, adam_s=ta / p.size, latency_s=lat, bandwidth=bw,
                  comm_assumed=assumed, cores=os.cpu_count() or 1,
                  key=dict(cell=cell, H=int(H), L=int(L), dtype=dtype.name,
                           threads=int(threads), batch=B, size=size))
    costs.linear["mgrit_extra"] = _mgrit_extra(costs, m, B, dtype, sz, rng)
    if size != "tiny" and int(threads) == 1 and costs.cores >= 2:
        costs.contention = _contention(m, B, dtype, rng, costs)
    costs.seconds = time.perf_counter() - t_start
    return costs


#: The busy copies of :func:`_contention`: the same training step as the measured one, in a
#: loop until their standard input closes (or ``limit`` seconds pass).
_BUSY = r"""
import sys, threading, time
import numpy as np
import mgritnn
cell, H, L, dtype, B, n, limit = sys.argv[1:]
H, L, B, n, limit = int(H), int(L), int(B), int(n), float(limit)
m = mgritnn.GRUClassifier(1, H, 2, num_layers=L, cell=cell, dtype=dtype, seed=0)
X = np.random.default_rng(1).standard_normal((B, n, 1)).astype(dtype)
y = np.zeros(B, np.int64)
m.loss_and_grad_flat(X, y)
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
print("ready", flush=True)
end = time.monotonic() + limit
while not done.is_set() and time.monotonic() < end:
    m.loss_and_grad_flat(X, y)
"""


def _contention(m, B, dtype, rng, costs, limit_s=120.0):
    """Slowdown (>= 1) of one process's training step (serial sweep, BPTT, gradients) of about
    0.05 s while ``cores - 1`` other processes, one thread each, run the same step: the
    fastest of several steps alone over the fastest beside them. Each side is timed twice,
    interleaved (alone, busy, alone, busy), so that a disturbance of one phase shows."""
    import subprocess
    import sys
    L, H = m.num_layers, m.hidden_size
    per_step = sum(call_time((k, 1, 0), costs) - call_time((k, 0, 0), costs)
                   for k in ("serial_fwd", "serial_adj"))
    n = int(min(16384, max(4, 0.05 / max(per_step, 1e-9))))
    X = rng.standard_normal((B, n, 1)).astype(dtype)
    y = np.zeros(B, np.int64)

    def step():
        m.loss_and_grad_flat(X, y)
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    args = [sys.executable, "-c", _BUSY, m.cell.name, str(H), str(L), dtype.name, str(B),
            str(n), str(limit_s)]
    alone, busy = [], []
    for _ in range(2):
        alone.append(_best(step, 5, slow_s=0.5))
        procs = [subprocess.Popen(args, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True) for _ in range(costs.cores - 1)]
        try:
            if all(p.stdout.readline().strip() == "ready" for p in procs):
                busy.append(_best(step, 5, slow_s=0.5))
        finally:
            for p in procs:
                p.stdin.close()
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:  # pragma: no cover - a stuck copy
                    p.kill()
    if not busy:                               # the copies could not start: not measured
        return 1.0
    return float(max(1.0, min(busy) / min(alone)))


def _mgrit_extra(costs, m, B, dtype, sz, rng):
    """[0, c1]: seconds per local fine step that a real MGRIT solve spends beyond the modelled
    kernels and array work (Python, allocation, first touch of fresh arrays), from one-process
    forward and adjoint solves of the paper and the fast preset (their mean; never negative).

    The number of steps: about ``sz["mgrit_s"]`` seconds of serial sweeps, within
    ``sz["mgrit_n"]``."""
    from .distributed import SelfComm
    from .solvers import MGRITConfig
    L, H = m.num_layers, m.hidden_size
    per_step = sum(call_time((k, 1, 0), costs) - call_time((k, 0, 0), costs)
                   for k in ("serial_fwd", "serial_adj"))
    lo, hi = sz["mgrit_n"]
    if per_step * lo > 1.0:                  # large states: 16 steps (3 levels of cf 4 still fit)
        lo = min(lo, 16)
    n = int(min(hi, max(lo, sz["mgrit_s"] / max(per_step, 1e-9))))
    X = rng.standard_normal((B, n, 1)).astype(dtype)
    y = np.zeros(B, np.int64)
    extra = []
    for preset in ("paper", "fast"):
        cfg = MGRITConfig.preset(preset, comm=SelfComm())   # this process alone, also under MPI
        times = []
        for _ in range(max(2, sz["repeats"] // 2) + 1):
            _, _, info = m.loss_and_grad_flat(X, y, cfg, strict=False)
            times.append(info["forward"].seconds + info["adjoint"].seconds)
            if len(times) == 2 and times[0] > 2.0:      # slow solves: one timed run is enough
                break
        fwd = mgrit_solve_ops(n, cfg, 1, 0, "forward", False, (L, B, H), dtype.itemsize)
        adj = mgrit_solve_ops(n, cfg, 1, 0, "adjoint", False, (L, B, H), dtype.itemsize)
        adj[-1] = adj[-1]._replace(calls=(("grad", n, 0),))
        predicted, _ = critical_path([fwd + adj], costs)
        extra.append(max(0.0, (min(times[1:]) - predicted) / n))
    return [0.0, float(np.mean(extra))]


def _ping_pong(comm, dtype, repeats=50):
    """(latency s, bandwidth bytes/s) between ranks 0 and 1: half round trips of 8 bytes and of
    1 MB; the result is broadcast to every rank."""
    rank = comm.Get_rank()
    res = np.zeros(2)
    for i, nbytes in enumerate((8, 1 << 20)):
        buf = np.zeros(nbytes, np.uint8)
        comm.Barrier()
        t0 = time.perf_counter()
        for _ in range(repeats):
            if rank == 0:
                comm.Send(buf, dest=1)
                comm.Recv(buf, source=1)
            elif rank == 1:
                comm.Recv(buf, source=0)
                comm.Send(buf, dest=0)
        res[i] = (time.perf_counter() - t0) / (2 * repeats)
    comm.Bcast(res, root=0)
    lat = float(res[0])
    return lat, float((1 << 20) / max(res[1] - lat, 1e-12))





# ------------------------------------------------------------------------------------------------
# The plan: every route on P ranks, side by side (``mgritnn plan``)
# ------------------------------------------------------------------------------------------------

class PlanRow(NamedTuple):
    """One line of :func:`plan`: a route on ``ranks`` = ``data_parallel`` x time ranks, its
    :class:`Prediction` (None when it does not fit, ``why`` says why)."""
    label: str
    route: str
    ranks: int
    data_parallel: int
    prediction: object
    why: str = ""


def _accuracy(route, p):
    """What a route's gradient is, in words."""
    if route == "serial":
        return "exact (serial BPTT)"
    if route.startswith("mgrit"):
        return ("exact (one level: the serial sweep)" if p is not None and p.exact else
                "approximate: fixed MGRIT cycle counts, the gradient is not serial BPTT's")
    return "exact to the Newton tolerance (if it converges in the assumed iterations)"


def plan(shape, ranks, threads=1, cell="implicit", dtype="float32", calibration=None,
         deer_iters=None, classes=6, cores=None):
    """Predicted training steps of every route on ``ranks`` processes.

    Rows: serial on one rank; with P > 1 serial data-parallel on P ranks (P data groups, if the
    batch allows), MGRIT paper and fast on P time ranks, fast on D x P/D for the divisors
    1 < D < P of P (D <= B), DEER and quasi-DEER on P time ranks. The fast preset is predicted
    warm (``initial_guess="warm"`` after the first epoch of training).

    Parameters
    ----------
    shape : (B, T, I, H, L)
    ranks, threads : int
    cell, dtype : str
    calibration : callable ``fn(batch) -> Costs`` or Costs, optional
    deer_iters : int, optional
        Newton iterations per layer (default :data:`DEFAULT_DEER_ITERS`).
    classes : int
    cores : int, optional
        Cores the processes run on (default ``ranks * threads``: one core each, as on a
        cluster); fewer stretch the computation (oversubscription).

    Returns
    -------
    list of PlanRow
    """
    shape = parse_shape(shape)
    if not isinstance(ranks, (int, np.integer)) or ranks < 1:
        raise ConfigError(f"--ranks {ranks!r}: give a positive number of processes")
    if cores is not None and (not isinstance(cores, (int, np.integer)) or cores < 1):
        raise ConfigError(f"--cores {cores!r}: give a positive number of cores")
    base = dict(cell=cell, dtype=dtype, classes=classes, cores=cores or ranks * threads)
    if deer_iters is not None:
        if deer_iters < 1:
            raise ConfigError(f"--deer-iters {deer_iters}: give a positive number of iterations")
        base["deer_iters"] = int(deer_iters)
    P = int(ranks)
    todo = [("serial", "serial", 1, 1)]
    if P > 1 and shape.B >= P:
        todo.append((f"serial, data-parallel {P} x 1", "serial", P, P))
    todo += [("MGRIT paper", "mgrit-paper", P, 1), ("MGRIT fast", "mgrit-fast", P, 1)]
    for D in range(2, P):
        if P % D == 0 and D <= shape.B:
            todo.append((f"MGRIT fast, {D} data x {P // D} time", "mgrit-fast", P, D))
    todo += [("DEER", "deer", P, 1), ("quasi-DEER", "quasi-deer", P, 1)]
    rows = []
    for label, route, n, D in todo:
        opts = dict(base, data_parallel=D, warm=route == "mgrit-fast")
        try:
            p = predict(shape, route, n, threads, opts, calibration)
        except ConfigError as e:
            rows.append(PlanRow(label, route, n, D, None, str(e)))
            continue
        if not math.isfinite(p.seconds):
            rows.append(PlanRow(label, route, n, D, None, "its dense Jacobians were too large "
                                                          "to calibrate"))
            continue
        rows.append(PlanRow(label, route, n, D, p))
    return rows


def format_plan(shape, rows, threads):
    """The plan as text: a Markdown table and a recommendation."""
    shape = parse_shape(shape)
    serial = next((r.prediction.seconds for r in rows if r.route == "serial" and r.ranks == 1
                   and r.prediction is not None), None)
    lines = [f"predicted time per training step, shape (B, T, I, H, L) = {tuple(shape)}, "
             f"{threads} thread(s) per rank", "",
             "| route | ranks (data x time) | s per step | vs serial | step evals per rank "
             "(fwd + adj, max) | gradient |", "|---|---|---:|---:|---:|---|"]
    for r in rows:
        p = r.prediction
        where = f"{r.ranks} ({r.data_parallel} x {r.ranks // r.data_parallel})"
        if p is None:
            lines.append(f"| {r.label} | {where} | n/a | | | {r.why} |")
            continue
        speed = f"{serial / p.seconds:.2f}x" if serial and p.seconds > 0 else ""
        evals = max(f + b for f, b in p.step_evals)
        lines.append(f"| {r.label} | {where} | {p.seconds:.4g} | {speed} | {evals} | "
                     f"{_accuracy(r.route, p)} |")
    ok = [r for r in rows if r.prediction is not None]
    if ok:
        best = min(ok, key=lambda r: r.prediction.seconds)
        p = best.prediction
        lines += ["", f"recommendation: {best.label} on {best.ranks} rank(s): "
                      f"{p.seconds:.4g} s per step"
                  + (f", {serial / p.seconds:.2f}x serial" if serial else "")
                  + f"; gradient: {_accuracy(best.route, p)}"]
        if best.route.startswith("mgrit") and not p.exact:
            lines.append("  MGRIT's fixed cycle counts trade accuracy for time: the model does "
                         "not predict that error; compare the loss and the gradient with serial's "
                         "(perf/bench_regimes.py) before relying on it.")
        for note in dict.fromkeys(n for r in ok for n in r.prediction.notes
                                  if not n.startswith("MGRIT with")):
            lines.append(f"  note: {note}")
    lines.append("  (a model: calibrated kernel costs along the critical path; the head, the "
                 "loss and Python between kernels are not modelled)")
    return "\n".join(lines)


__all__ = ["Costs", "Op", "PlanRow", "Prediction", "Shape", "ROUTES", "calibrate", "covers",
           "critical_path", "extrapolate_threads", "format_plan", "load_or_calibrate", "mgrit_solve_ops", "parse_shape",
           "phase_counts", "plan", "predict", "step_evals", "step_ops", "validate"]
