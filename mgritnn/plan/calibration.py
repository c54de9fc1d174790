"""Calibration: measuring a :class:`~mgritnn.plan.costs.Costs` table on this machine, and the
machine's cache of them (:func:`load_or_calibrate`).

A calibration runs the real kernels and solvers (serial, DEER, quasi-DEER, MGRIT) on small
problems for a minute or less (the ``"default"`` size; ``"tiny"``: seconds, for tests) and, with
two or more cores, starts ``cores - 1`` busy copies of a training step to measure contention
(:func:`_contention`). It runs only when asked: ``mgritnn plan``, the perf scripts, or a
predictor built for ``solver="auto"`` (:func:`~mgritnn.plan.auto_predictor`); never as a side
effect of training otherwise.
"""
import os
import subprocess
import sys
import time
from dataclasses import asdict

import numpy as np

from ..cells import CELLS, get_cell
from ..cells.gru import project
from ..config import resolve_dtype
from ..distributed import SelfComm
from ..model import GRUClassifier
from ..optim import adam, apply_updates
from ..runtime import blas_threads, numba_threads
from ..solvers import DEERConfig, MGRITConfig, SerialSolver, make_solver
from .costs import (ASSUMED_BANDWIDTH, ASSUMED_LATENCY_S, Costs, cache_key, cache_path, call_time,
                    critical_path, read_cache, write_cache)
from .ops import mgrit_solve_ops

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


def covers(cell):
    """Whether the model can cost the cell named ``cell``: the GRU cells of
    :data:`mgritnn.cells.CELLS` (those :func:`calibrate` builds a :class:`GRUClassifier` with)."""
    return cell in CELLS


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
    sz = SIZES[size]
    t_start = time.perf_counter()
    dtype = np.dtype(resolve_dtype(dtype))
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
        base = dict(atol=1e-30, rtol=0.0, fallback=False, divergence=1e300, quasi=quasi)
        runs = []
        for it in (1, 5):              # a difference of 4 iterations: less noise
            # this process alone, also under MPI
            solver = make_solver(DEERConfig(max_iter=it, **base), SelfComm())
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
    steps = max(1, max(64, min(4096, sz["max_rows"])) // B)
    A = rng.standard_normal((steps, B, H)).astype(dtype)
    Wx = rng.standard_normal((3 * H, H)).astype(dtype)
    out = np.empty((steps, B, 3 * H), dtype)
    tg = _best(lambda: project(A, Wx, None, out), rep)
    flops = 2.0 * steps * B * H * 3 * H / max(tg, 1e-9)
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
        cfg = MGRITConfig.preset(preset)
        solver = make_solver(cfg, SelfComm())      # this process alone, also under MPI
        times = []
        for _ in range(max(2, sz["repeats"] // 2) + 1):
            _, _, info = m.loss_and_grad_flat(X, y, solver, strict=False)
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


__all__ = ["CHAIN", "SIZES", "calibrate", "covers", "load_or_calibrate"]
