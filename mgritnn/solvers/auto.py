"""``solver="auto"``: pick the fastest exact route for a shape, and keep checking.

On one rank of time the candidates are the serial sweep, DEER and quasi-DEER (each converged to
its default tolerance; MGRIT is left out because with the paper's fixed iteration counts it does
not give the serial answer). For every problem shape (the inputs' (T, B, I) and the state's
(L, B, H), dtype, cell) the first call runs every candidate once on two steps, untimed
(compilation or loading numba's cache happens there), then times one forward + adjoint of it on a
prefix of at most ``calibration_steps`` steps of the batch (a quick measurement: every route's
cost grows about linearly in T), then keeps the fastest; a parallel route must beat the serial
sweep by ``margin`` (10 %) to be chosen.

With several ranks on the time axis the serial sweep is not a candidate (no rank holds the whole
sequence) and trying each route on the full problem would cost whole solves on every rank. The
first choice comes from the ``predictor`` the solver was given, if any (a callable, see
:class:`AutoSolver`; the planner's performance model builds one:
:func:`mgritnn.plan.auto_predictor`): rank 0 asks it for the solve time of DEER and quasi-DEER
for the shape on these ranks and broadcasts the answers, so every rank decides the same. Without
a predictor (the default: the solver never calibrates by itself), or for a cell the predictor
does not cover (NaN), the choice is deterministic and collective: the routes of
:data:`PARALLEL_ROUTES` run in that order, one call each, on the first calls of the shape, each
timed as the slowest rank's forward + adjoint (one allreduce, so every rank sees the same time);
after that the measured faster one is kept.

After that every call is timed (the slowest rank's time, so all ranks agree) and a route slower by
more than ``margin`` than the best other route twice in a row (its measured time, or its predicted
time before it ran) is dropped for that route: more Newton iterations as the weights change, a
fallback, a busier machine, or a model that was wrong here. So the chosen route is never slower
than the best known one by more than ``margin`` for long.

What the solver keeps between calls is its :class:`~mgritnn.solvers.base.SolverState`: one part
per route (the routes' warm starts) and the part ``"measured"``, whose scalars are the
``choices``, ``timings``, ``predictions`` and slow-call counters per shape key (named
``kind|route|key``, the key as JSON), so that a run resumed from a checkpoint keeps its choices
instead of measuring again.
"""
import json
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import MgritnnWarning
from ..options import check_choices, check_int, check_real
from .base import SolverState, TimeParallelSolver, deprecated_comm, register, step_sizes
from .deer import DEERConfig, DEERSolver
from .serial import SerialSolver

#: The candidates on several time ranks (the serial sweep is not one there).
PARALLEL_ROUTES = ("deer", "quasi-deer")


@dataclass(frozen=True)
class AutoConfig:
    """Options of :class:`AutoSolver`.

    Parameters
    ----------
    calibration_steps : int
        Steps of the prefix timed on the first call per shape (one rank of time).
    margin : float
        A parallel route is chosen only when faster than serial by this fraction (one rank), and
        any route is dropped when slower than the best other by this fraction (twice in a row).
    calibration : {"none", "default", "tiny"}
        Several time ranks: whether the performance model may be calibrated to choose the first
        route, and its size. "none" (default): it is not; the routes are tried in turn (module
        docstring). "default" (under a minute on first use on a machine, then cached) or "tiny"
        (seconds, for tests, less accurate): asked; whoever builds the solver passes
        ``predictor=mgritnn.plan.auto_predictor(calibration)`` to :meth:`make_solver` (the
        solvers do not import the planner).
    comm : mpi4py communicator, optional
        The ranks that share the time axis (None: MPI's world under an MPI launcher, else one
        process, as for DEER).
    """
    calibration_steps: int = 4096
    margin: float = 0.1
    calibration: str = field(default="none",
                             metadata={"flag": {"choices": ("none", "default", "tiny")}})
    comm: object = field(default=None, compare=False, repr=False, metadata={"option": False})

    def __post_init__(self):
        check_int("auto calibration_steps", self.calibration_steps, least=1)
        check_real("auto margin", self.margin, low=0, high=1, high_open=True)
        check_choices("auto", self)
        deprecated_comm("AutoConfig", self.comm)

    def make_solver(self, comm=None, state=None, predictor=None):
        """An :class:`AutoSolver` of this config over the ranks of ``comm``, continuing ``state``,
        with the given ``predictor`` (see there)."""
        return AutoSolver(self, comm, state, predictor)


@register(config=AutoConfig)
class AutoSolver(TimeParallelSolver):
    """The fastest exact route for each shape (module docstring).

    Its time axis is the time-parallel base's (:class:`~mgritnn.solvers.base.TimeParallelSolver`:
    ``tc``, ``is_first``, ``is_last``, ``reduce``), split into even slices as DEER splits it
    (``local_steps``), so every route gets the same slice.

    Parameters
    ----------
    config : AutoConfig, optional
    predictor : callable, optional
        Several time ranks: ``predictor(cell, h0, x, T, dtype, ranks) -> {route: seconds}``, the
        predicted seconds of the forward + adjoint solves of the whole sequence of ``T`` steps by
        each route of :data:`PARALLEL_ROUTES` on ``ranks`` time ranks (``h0`` (L, B, H), ``x``
        this rank's raw inputs (n_local, B, I); NaN or a missing route: not covered). Called on
        rank 0 only. None: no prediction, the routes are tried in turn. The planner's model is
        :func:`mgritnn.plan.auto_predictor`.

    Attributes
    ----------
    choices : dict
        Shape key -> the name of the route in use.
    timings : dict
        Shape key -> {route: seconds per step}: one rank, the calibration's forward + adjoint;
        several time ranks, the last measured forward + adjoint per step (slowest rank).
    predictions : dict
        Shape key -> {route: predicted seconds per step of the forward + adjoint solves, or None
        where the predictor does not cover the cell or there is none} (several time ranks only).
    """

    name = "auto"
    #: The time axis in even slices, as DEER splits it (every route gets the same slice).
    local_steps = DEERSolver.local_steps

    #: Its state: one part per route (``state.parts[route]``) and its measurements
    #: (``state.parts["measured"]``, module docstring).
    remembers = frozenset({"deer/", "quasi-deer/", "serial/", "measured/"})
    #: The routes in a fixed order (a choice is saved as its index).
    ROUTES = ("serial", "deer", "quasi-deer")

    def __init__(self, config=None, comm=None, state=None, predictor=None):
        self.config = config or AutoConfig()
        super().__init__(self.config.comm if comm is None else comm)   # None: as for DEER
        self.predictor = predictor
        if self.size > 1 and predictor is None and self.config.calibration != "none":
            warnings.warn(f"auto calibration={self.config.calibration!r} asks for the performance "
                          "model, but the solver was given no predictor, so the routes are tried "
                          "in turn: build it with mgritnn.plan.planned_solver(config) (or pass "
                          "predictor=mgritnn.plan.auto_predictor(...) to make_solver)",
                          MgritnnWarning, stacklevel=2)
        self.routes = {"deer": DEERConfig().make_solver(self.tc.comm),
                       "quasi-deer": DEERConfig(quasi=True).make_solver(self.tc.comm)}
        if self.size == 1:
            self.routes = {"serial": SerialSolver(), **self.routes}
        self._last = None
        self.load_state(SolverState() if state is None else state)   # sets choices, timings, ...

    @property
    def _serial_candidate(self):
        """Whether the serial sweep is a candidate (one rank of time): the choice is then measured
        on a prefix of the batch; else it is predicted or tried route by route."""
        return "serial" in self.routes

    # -- the first choice -----------------------------------------------------------------------

    def _calibrate(self, key, cell, w, x, h0, dt):
        """One rank: time every candidate on a prefix of the batch."""
        n = min(x.shape[0], self.config.calibration_steps)
        xn = np.ascontiguousarray(x[:n])
        dtn = step_sizes(dt, x.shape[0], w.dtype)[:n]
        per_step = {}
        for name, solver in self.routes.items():
            for steps in (min(n, 2), n):          # first a tiny untimed run: compilation, caches
                t0 = time.perf_counter()
                h_last, state, stats = solver.forward(cell, w, xn[:steps], h0, dtn[:steps], keep=True)
                solver.adjoint(cell, w, state, np.ones_like(h_last), cell.zero_grads(w))
            per_step[name] = (time.perf_counter() - t0) / n
            if stats.fallback:                      # not a usable route for this shape
                per_step[name] = np.inf
        serial = per_step["serial"]
        best = min(per_step, key=per_step.get)
        if per_step[best] > (1 - self.config.margin) * serial:
            best = "serial"
        self.timings[key], self.choices[key] = per_step, best

    def _predict(self, key, cell, w, x, h0, T):
        """Several time ranks: the predictor's solve time per step of each route, from rank 0
        (NaN everywhere without a predictor: the routes are then tried in turn)."""
        buf = np.full(len(PARALLEL_ROUTES), np.nan)
        if self.rank == 0 and self.predictor is not None:
            pred = self.predictor(cell, h0, x, T, w.dtype, self.size)
            buf[:] = [pred.get(r, np.nan) for r in PARALLEL_ROUTES]
        self.tc.bcast(buf, root=0)
        pred = {r: (None if np.isnan(t) else float(t) / T) for r, t in zip(PARALLEL_ROUTES, buf)}
        self.predictions[key], self.timings[key] = pred, {}
        known = {r: t for r, t in pred.items() if t is not None}
        self.choices[key] = min(known, key=known.get) if known else PARALLEL_ROUTES[0]

    def _estimate(self, key, route):
        t = self.timings[key].get(route)
        return self.predictions.get(key, {}).get(route) if t is None else t

    # -- the solves -----------------------------------------------------------------------------

    def load_state(self, state):
        """Take ``state``: each route continues its part (``state.parts[route]``), and the
        measurements of ``state.parts["measured"]`` become :attr:`choices`, :attr:`timings`,
        :attr:`predictions` (module docstring)."""
        super().load_state(state)
        for name, route in self.routes.items():
            route.load_state(state.parts.setdefault(name, SolverState()))
        self.choices, self.timings, self.predictions, self._slow = {}, {}, {}, {}
        for name, v in state.parts.setdefault("measured", SolverState()).scalars.items():
            kind, route, text = name.split("|", 2)
            T, xs, hs, dtype, cell = json.loads(text)
            key = (T, tuple(xs), tuple(hs), dtype, cell)
            if kind == "choice":
                self.choices[key] = self.ROUTES[int(v)]
            elif kind == "timing":
                self.timings.setdefault(key, {})[route] = v
            elif kind == "prediction":
                self.predictions.setdefault(key, {})[route] = None if np.isnan(v) else v
            elif kind == "slow":
                self._slow[key] = int(v)

    def _remember(self):
        """Write :attr:`choices`, :attr:`timings`, :attr:`predictions` and the slow-call counters
        into the state's part ``"measured"`` (after every change)."""
        out = {}
        for key in self.choices:
            text = json.dumps([key[0], list(key[1]), list(key[2]), key[3], key[4]])
            out[f"choice||{text}"] = float(self.ROUTES.index(self.choices[key]))
            if self._slow.get(key):
                out[f"slow||{text}"] = float(self._slow[key])
            for r, t in self.timings.get(key, {}).items():
                out[f"timing|{r}|{text}"] = float(t)
            for r, t in self.predictions.get(key, {}).items():
                out[f"prediction|{r}|{text}"] = np.nan if t is None else float(t)
        self.state.parts["measured"] = SolverState(scalars=out)

    def forward(self, cell, w, x, h0, dt=1.0, keep=True, T=None, keys=None):
        """Forward solve of the raw inputs ``x`` (n_local, *X0) by the route chosen for this
        shape (chosen on the first call). Returns what that route returns; the statistics'
        message names the route."""
        T = x.shape[0] if T is None else T
        key = (T, x.shape, h0.shape, w.dtype.str, cell.name)
        if key not in self.choices:
            if self._serial_candidate:
                self._calibrate(key, cell, w, x, h0, dt)
            else:
                self._predict(key, cell, w, x, h0, T)
            self._remember()
        name = self.choices[key]
        t0 = time.perf_counter()
        h_last, state, stats = self.routes[name].forward(cell, w, x, h0, dt, keep=keep, T=T,
                                                         keys=keys)
        self._last = (key, name, time.perf_counter() - t0, T)
        stats.message = f"auto: {name}; {stats.message}"
        return h_last, state, stats

    def adjoint(self, cell, w, state, lam_last, grads, lam_first=None):
        """Adjoint by the route of the last forward solve; then the check of its speed."""
        key, name, t_fwd, T = self._last
        t0 = time.perf_counter()
        extra = {} if lam_first is None else dict(lam_first=lam_first)
        dxp, stats = self.routes[name].adjoint(cell, w, state, lam_last, grads, **extra)
        spent = t_fwd + time.perf_counter() - t0
        if self._serial_candidate:
            if name != "serial":
                self._check(key, name, spent / T, {"serial": self.timings[key]["serial"]})
        else:                                   # the slowest rank's time: every rank decides alike
            spent = float(self.tc.allreduce(np.array([spent]), op="max")[0])
            self.timings[key][name] = spent / T
            others = {r: self._estimate(key, r) for r in self.routes if r != name}
            untried = [r for r, t in others.items() if t is None]
            if untried:                         # no model for this cell: try each route once
                self.choices[key] = untried[0]
            else:
                self._check(key, name, spent / T, others)
        self._remember()
        stats.message = f"auto: {name}; {stats.message}"
        return dxp, stats

    def _check(self, key, name, per_step, others):
        """Count a call of ``name`` slower than the best of ``others`` (route -> seconds per
        step) by more than the margin; after two in a row, switch to that best route."""
        best = min(others, key=others.get)
        if per_step <= (1 + self.config.margin) * others[best]:
            self._slow.pop(key, None)       # a count of 0 is no entry (as the state stores it)
        elif self._slow.get(key, 0) + 1 >= 2:
            self.choices[key] = best
            self._slow.pop(key, None)
        else:
            self._slow[key] = self._slow.get(key, 0) + 1


__all__ = ["AutoConfig", "AutoSolver", "PARALLEL_ROUTES"]
