"""``solver="auto"``: pick the fastest exact route for a shape by measuring it, and keep checking.

The candidates are the serial sweep, DEER and quasi-DEER (each converged to its default
tolerance; MGRIT is left out because with the paper's fixed iteration counts it does not give the
serial answer). For every problem shape (the inputs' (T, B, I) and the state's (L, B, H), dtype,
cell) the first call runs every
candidate once on two steps, untimed (compilation or loading numba's cache happens there), then
times one forward + adjoint of it on a prefix of at most ``calibration_steps`` steps of the batch
(a quick measurement: every route's cost grows about linearly in T), then keeps the fastest; a
parallel route must beat the serial sweep by ``margin`` (10 %) to be chosen. After that every call
of a parallel route is timed against the serial time scaled to its length, and a route that is
slower than that by more than ``margin`` twice in a row (more Newton iterations as the weights
change, a fallback, a busier machine) is dropped for the serial sweep, so the chosen route is
never slower than the serial one by more than ``margin`` for long.

On one rank of time only: with several time ranks the serial sweep is not available and the
choice is the user's (``--solver deer`` or ``mgrit``).
"""
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from ..options import check_int, check_real
from .base import Solver, register, step_sizes
from .deer import DEERConfig
from .serial import SerialSolver


@dataclass(frozen=True)
class AutoConfig:
    """Options of :class:`AutoSolver`.

    Parameters
    ----------
    calibration_steps : int
        Steps of the prefix timed on the first call per shape.
    margin : float
        A parallel route is chosen only when faster than serial by this fraction, and dropped when
        slower than serial by this fraction (twice in a row).
    comm : mpi4py communicator, optional
        Must have one rank (the time axis is not split).
    """
    calibration_steps: int = 4096
    margin: float = 0.1
    comm: object = field(default=None, compare=False, repr=False, metadata={"option": False})

    def __post_init__(self):
        check_int("auto calibration_steps", self.calibration_steps, least=1)
        check_real("auto margin", self.margin, low=0, high=1, high_open=True)
        if self.comm is not None and self.comm.Get_size() > 1:
            raise ConfigError(f"solver 'auto' runs on one rank of time, but {self.comm.Get_size()} "
                              "ranks share the time axis: choose --solver deer, quasi-deer or mgrit")

    def make_solver(self):
        return AutoSolver(self)


@register(config=AutoConfig)
class AutoSolver(Solver):
    """The fastest of serial, DEER and quasi-DEER for each shape, by measurement (module docstring).

    Attributes
    ----------
    choices : dict
        Shape key -> the name of the route in use.
    timings : dict
        Shape key -> {route: seconds per step of the calibration's forward + adjoint}.
    """

    name = "auto"

    def __init__(self, config=None):
        self.config = config or AutoConfig()
        comm = self.config.comm            # the time communicator (one rank), never MPI's world
        self.routes = {"serial": SerialSolver(), "deer": DEERConfig(comm=comm).make_solver(),
                       "quasi-deer": DEERConfig(quasi=True, comm=comm).make_solver()}
        self.choices, self.timings, self._slow = {}, {}, {}
        self._last = None

    def _calibrate(self, key, cell, w, x, h0, dt):
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

    def warm_arrays(self):
        """The routes' warm-start states, named ``route/key``."""
        return {f"{name}/{k}": v for name, route in self.routes.items()
                for k, v in route.warm_arrays().items()}

    def load_warm_arrays(self, arrays):
        for name, route in self.routes.items():
            route.load_warm_arrays({k[len(name) + 1:]: v for k, v in arrays.items()
                                    if k.startswith(name + "/")})

    def forward(self, cell, w, x, h0, dt=1.0, keep=True, T=None, keys=None):
        """Forward solve of the raw inputs ``x`` (T, *X0) by the route chosen for this shape
        (measured on the first call). Returns what that route returns; the statistics' message
        names the route."""
        key = (x.shape, h0.shape, w.dtype.str, cell.name)
        if key not in self.choices:
            self._calibrate(key, cell, w, x, h0, dt)
        name = self.choices[key]
        t0 = time.perf_counter()
        h_last, state, stats = self.routes[name].forward(cell, w, x, h0, dt, keep=keep, T=T,
                                                         keys=keys)
        self._last = (key, name, time.perf_counter() - t0, x.shape[0])
        stats.message = f"auto: {name}; {stats.message}"
        return h_last, state, stats

    def adjoint(self, cell, w, state, lam_last, grads, lam_first=None):
        """Adjoint by the route of the last forward solve; then the check against serial speed."""
        key, name, t_fwd, n = self._last
        t0 = time.perf_counter()
        extra = {} if lam_first is None else dict(lam_first=lam_first)
        dxp, stats = self.routes[name].adjoint(cell, w, state, lam_last, grads, **extra)
        if name != "serial":
            spent = t_fwd + time.perf_counter() - t0
            too_slow = spent > (1 + self.config.margin) * self.timings[key]["serial"] * n
            self._slow[key] = self._slow.get(key, 0) + 1 if too_slow else 0
            if self._slow[key] >= 2:
                self.choices[key] = "serial"
        stats.message = f"auto: {name}; {stats.message}"
        return dxp, stats


__all__ = ["AutoConfig", "AutoSolver"]
