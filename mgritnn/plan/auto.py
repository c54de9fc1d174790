"""The planner as ``solver="auto"``'s predictor on several time ranks.

:class:`~mgritnn.solvers.auto.AutoSolver` does not import the planner: it is handed a
``predictor``. :func:`auto_predictor` builds one from the performance model
(:func:`model_solve_times`), and :func:`planned_solver` is :func:`~mgritnn.solvers.get_solver`
with that predictor passed where an :class:`~mgritnn.solvers.AutoConfig` asks for it
(``calibration`` "default" or "tiny"; "none", the default, builds none, so that training never
calibrates unless asked).
"""
import functools

import numba
import numpy as np

from ..errors import ConfigError
from ..solvers import AutoConfig, make_config, make_solver
from ..solvers.auto import PARALLEL_ROUTES
from .calibration import covers, load_or_calibrate
from .model import predict


def model_solve_times(cell, h0, x, T, dtype, ranks, calibration="default"):
    """Predicted seconds of the forward + adjoint solves of DEER and quasi-DEER
    (:data:`~mgritnn.solvers.auto.PARALLEL_ROUTES`, in that order) for a GRU cell on ``ranks``
    time ranks with this process's numba threads; NaN for a cell the performance model does not
    cover. Calibrates on first use on this machine (:func:`load_or_calibrate`).

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
        The calibration's size (:data:`~mgritnn.plan.calibration.SIZES`).

    Returns
    -------
    ndarray, shape (len(PARALLEL_ROUTES),), float64
    """
    if not covers(cell.name) or h0.ndim != 3 or x.ndim != 3:
        return np.full(len(PARALLEL_ROUTES), np.nan)
    L, B, H = h0.shape
    threads = numba.get_num_threads()
    shape = (B, T, x.shape[2], H, L)
    name = np.dtype(dtype).name

    def costs(batch):
        return load_or_calibrate(cell.name, H, L, name, threads, batch, size=calibration)
    out = []
    for route in PARALLEL_ROUTES:
        p = predict(shape, route, ranks, threads,
                    dict(cell=cell.name, dtype=name, cores=ranks * threads), costs)
        out.append(sum(t for k, t in p.breakdown.items() if k.startswith(("forward ", "adjoint "))))
    return np.array(out)


def _predicted_routes(calibration, cell, h0, x, T, dtype, ranks):
    return dict(zip(PARALLEL_ROUTES, model_solve_times(cell, h0, x, T, dtype, ranks,
                                                       calibration).tolist()))


def auto_predictor(calibration="default"):
    """The performance model as the ``predictor`` of :class:`~mgritnn.solvers.auto.AutoSolver`.

    Parameters
    ----------
    calibration : {"default", "tiny"}
        The size of the calibration that runs on first use on this machine (cached after).

    Returns
    -------
    callable
        ``predictor(cell, h0, x, T, dtype, ranks) -> {route: seconds}``: the forward + adjoint
        solves of the whole sequence of ``T`` steps by each route of
        :data:`~mgritnn.solvers.auto.PARALLEL_ROUTES` on ``ranks`` time ranks (NaN for a cell
        the model does not cover; :func:`model_solve_times`).
    """
    if calibration not in ("default", "tiny"):
        raise ConfigError(f"calibration {calibration!r}: choose 'default' or 'tiny' (the size of "
                          "the performance model's calibration)")
    return functools.partial(_predicted_routes, calibration)


def planned_solver(spec, options=None, comm=None, state=None):
    """:func:`~mgritnn.solvers.make_solver` (a name with its options, a config, or a solver, over
    the time ranks ``comm``, continuing ``state``), with the performance model as the predictor
    of an :class:`AutoConfig` whose ``calibration`` asks for it ("default" or "tiny"; it
    calibrates on first use on a machine).

    The one place that turns ``AutoConfig(calibration=...)`` into a predictor: training and the
    command line build their solver here.

    Returns
    -------
    Solver
    """
    config = make_config(spec, options) if isinstance(spec, str) else spec
    if isinstance(config, AutoConfig) and config.calibration != "none":
        return config.make_solver(comm, state, predictor=auto_predictor(config.calibration))
    if options and not isinstance(spec, str):
        raise ConfigError(f"options {sorted(options)} go with a solver's name, not with "
                          f"{spec!r}: put them in its config")
    return make_solver(config, comm, state=state)


__all__ = ["auto_predictor", "model_solve_times", "planned_solver"]
