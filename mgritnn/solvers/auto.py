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
sequence) and trying each route on the full problem would cost whole solves on every rank, so the
first choice comes from the performance model (:mod:`mgritnn.perfmodel`): rank 0 predicts the
training step of DEER and quasi-DEER for the shape on these ranks and threads (from the machine's
cached calibration; the first use on a machine calibrates, under a minute with the default size)
and broadcasts the predictions, so every rank decides the same. For a cell the model does not
cover, the routes are tried in turn, one call each.

After that every call is timed (the slowest rank's time, so all ranks agree) and a route slower by
more than ``margin`` than the best other route twice in a row (its measured time, or its predicted
time before it ran) is dropped for that route: more Newton iterations as the weights change, a
fallback, a busier machine, or a model that was wrong here. So the chosen route is never slower
than the best known one by more than ``margin`` for long.
"""
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from ..options import check_choices, check_int, check_real
from .base import Solver, register, step_sizes
from .deer import DEERConfig
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
    calibration : {"default", "tiny"}
        Size of the performance model's calibration (several time ranks; "tiny": seconds, for
        tests, less accurate).
    comm : mpi4py communicator, optional
        The ranks that share the time axis (None: MPI's world under an MPI launcher, else one
        process, as for DEER).
    """
    calibration_steps: int = 4096
    margin: float = 0.1
    calibration: str = field(default="default", metadata={"flag": {"choices": ("default", "tiny")}})
    comm: object = field(default=None, compare=False, repr=False, metadata={"option": False})

    def __post_init__(self):
        check_int("auto calibration_steps", self.calibration_steps, least=1)
        check_real("auto margin", self.margin, low=0, high=1, high_open=True)
        check_choices("auto", self)

    def make_solver(self):
        return AutoSolver(self)


@register(config=AutoConfig)
class AutoSolver(Solver):
    """The fastest exact route for each shape (module docstring).

    Attributes
    ----------
    choices : dict
        Shape key -> the name of the route in use.
    timings : dict
        Shape key -> {route: seconds per step}: one rank, the calibration's forward + adjoint;
        several time ranks, the last measured forward + adjoint per step (slowest rank).
    predictions : dict
        Shape key -> {route: predicted seconds per step of the forward + adjoint solves, or None
        where the model does not cover the cell} (several time ranks only).
    """

    name = "auto"

    def __init__(self, config=None):
        self.config = config or AutoConfig()
        comm = self.config.comm            # the time communicator (None: as for DEER)
        self.routes = {"deer": DEERConfig(comm=comm).make_solver(),
                       "quasi-deer": DEERConfig(quasi=True, comm=comm).make_solver()}
        self._tp = self.routes["deer"]     # the time axis: every route splits it alike
        self.size = self._tp.size
        if self.size == 1:
            self.routes = {"serial": SerialSolver(), **self.routes}
        self.choices, self.timings, self.predictions, self._slow = {}, {}, {}, {}
        self._last = None

    # -- the time axis: every route splits it the same way (DEER's partition) -------------------

    @property
    def is_last(self):
        return self._tp.is_last

    def local_steps(self, T):
        return self._tp.local_steps(T)

    @property
    def tc(self):
        return self._tp.tc

    def reduce(self, grad, loss, logits, shape=None, shared=None):
        return self._tp.reduce(grad, loss, logits, shape, shared)

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
        """Several time ranks: the model's solve time per step of each route, from rank 0."""
        buf = np.full(len(PARALLEL_ROUTES), np.nan)
        if self._tp.rank == 0:
            buf[:] = model_solve_times(cell, h0, x, T, w.dtype, self.size, self.config.calibration)
        self.tc.bcast(buf, root=0)
        pred = {r: (None if np.isnan(t) else float(t) / T) for r, t in zip(PARALLEL_ROUTES, buf)}
        self.predictions[key], self.timings[key] = pred, {}
        known = {r: t for r, t in pred.items() if t is not None}
        self.choices[key] = min(known, key=known.get) if known else PARALLEL_ROUTES[0]

    def _estimate(self, key, route):
        t = self.timings[key].get(route)
        return self.predictions.get(key, {}).get(route) if t is None else t

    # -- the solves -----------------------------------------------------------------------------

    def warm_arrays(self):
        """The routes' warm-start states, named ``route/key``."""
        return {f"{name}/{k}": v for name, route in self.routes.items()
                for k, v in route.warm_arrays().items()}

    def load_warm_arrays(self, arrays):
        for name, route in self.routes.items():
            route.load_warm_arrays({k[len(name) + 1:]: v for k, v in arrays.items()
                                    if k.startswith(name + "/")})

    def forward(self, cell, w, x, h0, dt=1.0, keep=True, T=None, keys=None):
        """Forward solve of the raw inputs ``x`` (n_local, *X0) by the route chosen for this
        shape (chosen on the first call). Returns what that route returns; the statistics'
        message names the route."""
        T = x.shape[0] if T is None else T
        key = (T, x.shape, h0.shape, w.dtype.str, cell.name)
        if key not in self.choices:
            if self.size == 1:
                self._calibrate(key, cell, w, x, h0, dt)
            else:
                self._predict(key, cell, w, x, h0, T)
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
        if self.size == 1:
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
        stats.message = f"auto: {name}; {stats.message}"
        return dxp, stats

    def _check(self, key, name, per_step, others):
        """Count a call of ``name`` slower than the best of ``others`` (route -> seconds per
        step) by more than the margin; after two in a row, switch to that best route."""
        best = min(others, key=others.get)
        too_slow = per_step > (1 + self.config.margin) * others[best]
        self._slow[key] = self._slow.get(key, 0) + 1 if too_slow else 0
        if self._slow[key] >= 2:
            self.choices[key], self._slow[key] = best, 0


def model_solve_times(cell, h0, x, T, dtype, ranks, calibration="default"):
    """Predicted seconds of the forward + adjoint solves of DEER and quasi-DEER
    (:data:`PARALLEL_ROUTES`, in that order) for a GRU cell on ``ranks`` time ranks with this
    process's numba threads; NaN for a cell the performance model does not cover.

    Parameters
    ----------
    cell : Cell
    h0 : ndarray, shape (L, B, H)
    x : ndarray, shape (n_local, B, I)
    T : int
        Steps of the whole sequence.
    dtype : numpy dtype
    ranks : int
        Time ranks (one core each).
    calibration : {"default", "tiny"}
    """
    import numba
    from .. import perfmodel
    if not perfmodel.covers(cell.name) or h0.ndim != 3 or x.ndim != 3:
        return np.full(len(PARALLEL_ROUTES), np.nan)
    L, B, H = h0.shape
    threads = numba.get_num_threads()
    shape = (B, T, x.shape[2], H, L)
    name = np.dtype(dtype).name

    def costs(batch):
        return perfmodel.load_or_calibrate(cell.name, H, L, name, threads, batch, size=calibration)
    out = []
    for route in PARALLEL_ROUTES:
        p = perfmodel.predict(shape, route, ranks, threads,
                              dict(cell=cell.name, dtype=name, cores=ranks * threads), costs)
        out.append(sum(t for k, t in p.breakdown.items() if k.startswith(("forward ", "adjoint "))))
    return np.array(out)


__all__ = ["AutoConfig", "AutoSolver", "PARALLEL_ROUTES", "model_solve_times"]
