"""The prediction: operation counts (:mod:`.ops`) along the critical path with a machine's
costs (:mod:`.costs`), and the plan of every route on P ranks.

:func:`predict` puts the parts together; :func:`validate` compares predictions with measured
points (the JSON lines of ``perf/bench_scaling.py``); :func:`plan` (with
:func:`~mgritnn.plan.format.format_plan`) is ``mgritnn plan``.

Modelled as negligible: the head and loss, Python between kernel calls beyond the measured
per-call overhead, memory effects of arrays larger than those calibrated. Ranks times threads
beyond the machine's cores (oversubscription) stretch every computation by
(ranks x threads) / cores; with two or more processes every computation is also stretched by
the measured slowdown of a process while all cores are busy (:attr:`Costs.contention`: shared
caches and memory bandwidth). Other processes on the machine are not modelled.

The MGRIT forward is predicted cold (the first cycle skips its down-leg, as in a call without
``keys``) unless ``options["warm"]``; ``mgritnn plan`` predicts the fast preset warm, as it
trains after the first epoch.
"""
import math
import os
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ..errors import ConfigError
from .calibration import load_or_calibrate
from .costs import Costs, critical_path, extrapolate_threads
from .ops import (DEFAULT_DEER_ITERS, _route_parts, _splits, parse_shape,
                  step_evals, step_ops)


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
    if not isinstance(classes, (int, np.integer)) or classes < 1:
        raise ConfigError(f"--classes {classes!r}: the head needs at least one class; give the "
                          "number of classes of the data (e.g. --classes 6)")
    if not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ConfigError(f"--threads {threads!r}: give a positive number of threads per rank")
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



__all__ = ["PlanRow", "Prediction", "plan", "predict", "validate"]
