"""Cost tables and the critical path (the planner's second and third parts; pure arithmetic).

A :class:`Costs` table (measured by :func:`~mgritnn.plan.calibration.calibrate`, cached per
machine in the file :func:`cache_path`) holds the time of one compiled call that advances K states of
(B, H, L) by one step, tabulated over K, split into a per-call overhead and a per-position time;
the same for the VJP and for the calls that keep linearizations or cotangents (final sweeps); the
solver's array work per value; the serial solver's sweep and BPTT per step; the parameter-gradient
pass per step; DEER's work per point and iteration; a GEMM rate (input projections); Adam per
parameter; message latency and bandwidth (measured by ping-pong only under MPI with two or more
ranks, otherwise the shared-memory defaults :data:`ASSUMED_LATENCY_S` and
:data:`ASSUMED_BANDWIDTH`, marked as assumed).

:func:`critical_path` combines the operations of :mod:`mgritnn.plan.ops` with a table: the ranks
run the same sequence of operations; a local operation costs the slowest rank's time (the ranks
wait for each other at the next exchange), the coarsest-level sweep is pipelined (its steps on rank
r wait for rank r - 1: the sum over the ranks plus P - 1 message latencies), a ghost exchange costs
one message, a residual norm or gradient reduction one allreduce, DEER's scan one allgather of the
block summaries and one boundary message.
"""
import json
import math
import os
import socket
from dataclasses import dataclass, field, replace

import numpy as np

from ..io import atomic_write_text

#: Communication costs assumed when not measured (one node, shared-memory MPI transport): a
#: message's latency in seconds and the bandwidth in bytes per second. Ping-pong between two ranks
#: of the 2-core development machine (MPICH 5.0.2, 2026-12-03): 2.3 us and 8 GB/s when idle,
#: 42 us right after both ranks had been computing; a 16-byte allreduce 4.3 us.
ASSUMED_LATENCY_S = 5e-6
ASSUMED_BANDWIDTH = 5e9

#: The version of the cache file's layout (a file of another version is ignored).
CACHE_VERSION = 5


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
# The machine's cache of cost tables, and tables for more threads
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


__all__ = ["ASSUMED_BANDWIDTH", "ASSUMED_LATENCY_S", "CACHE_VERSION", "Costs", "cache_key",
           "cache_path", "call_time", "comm_time", "critical_path", "extrapolate_threads",
           "position_time", "read_cache", "write_cache"]
