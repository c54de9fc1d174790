"""Shared helpers of the benchmark scripts: timing, GEMM roofline, JSON-lines output, machine info.

Every figure a script reports is the median of repeats measured with :func:`time.perf_counter`,
and the first call of a function (numba compilation or on-disk cache load, PyTorch warm-up) is
timed apart. Ratios are only meaningful between functions timed in the same process, interleaved
(:func:`timeit_many`): the machines are shared and their speed drifts from minute to minute.

Importing this module imports ``mgritnn``, which caps the BLAS libraries at one thread (all of its
parallelism comes from numba threads over row blocks); :func:`gemm_rate` measures the large-GEMM
rate in exactly that way.
"""
import json
import os
import platform
import statistics
import time

import numba
import numpy as np
from numba import prange

import mgritnn

__all__ = ["mpi_problem", "training_step", "time_ranks", "timeit", "timeit_many", "gemm_rate", "torch_gemm_rate", "emit", "machine_info",
           "git_state", "cpu_busy"]


def mpi_problem(shape, threads, cell="implicit", dtype="float32", classes=6, T=None):
    """What every MPI benchmark worker starts with: MPI's world communicator (as the solvers
    take it), ``threads`` numba threads, a seeded classifier of ``shape`` (B, T, I, H, L) (``T``
    overrides its length) and random standard-normal data with random labels, the same on every
    rank. Returns ``(comm, model, X (B, T, I), y (B,), (B, T, I, H, L))``."""
    from mgritnn.distributed import get_comm
    comm = get_comm()
    mgritnn.config.set_num_threads(threads)
    B, T0, I, H, L = shape
    T = T or T0
    m = mgritnn.GRUClassifier(I, H, classes, num_layers=L, cell=cell, dtype=dtype, seed=0)
    rng = np.random.default_rng(1)
    X = rng.normal(size=(B, T, I)).astype(dtype)
    y = rng.integers(0, classes, size=B)
    return comm, m, X, y, (B, T, I, H, L)


def training_step(m, X, y, solver, lr=1e-3, reduce=None, owned=False):
    """A function that runs one training step (``loss_and_grad_flat`` + an Adam update) and then
    restores the parameters, so that every call times the same problem; returns ``(loss, grad,
    info)`` of the step. ``solver`` is passed as given to every call (a config object is made
    into a solver once by the model). ``reduce``, if given, maps the gradient to the one the
    update uses (data parallelism: the sum over the data groups), inside the step. ``owned``: an
    ODENet's ranks own their layers (``loss_and_grad_flat(..., owned=True)``: only the shared
    parameters' gradient is allreduced)."""
    from mgritnn.optim import adam, apply_updates
    opt = adam(lr=lr)
    params0 = m.flat.copy()

    def step():
        st = opt.init(m.flat)
        loss, g, info = m.loss_and_grad_flat(X, y, solver, **({"owned": True} if owned else {}))
        if reduce is not None:
            g = reduce(g)
        apply_updates(m.flat, opt.update(g, st, m.flat)[0], inplace=True)
        m.flat[:] = params0
        return loss, g, info
    return step


def time_ranks(comm, fn, repeats):
    """Time ``fn`` on every rank of ``comm`` together: one first call (compilation or cache load)
    and then ``repeats`` calls, each started after a barrier. Returns ``(first_s, times_s, result
    of the last call)``, this rank's times."""
    comm.Barrier()
    t0 = time.perf_counter()
    result = fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        comm.Barrier()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return first, times, result


def _summary(first, times):
    """Timing record of one function: the first call apart, then median, min and all repeats."""
    med = statistics.median(times)
    return dict(median_s=med, min_s=min(times), times_s=list(times), first_call_s=first,
                compile_s=max(0.0, first - med))


def timeit_many(fns, repeats=5, warmup=1, pause=0.0):
    """Time several functions side by side, interleaved round by round.

    Each function is called once on its own first (timed apart: ``first_call_s``, and
    ``compile_s = first_call_s - median_s``, the cost of compiling or loading compiled code), then
    ``warmup`` untimed calls each, then ``repeats`` rounds in which every function runs once.
    Interleaving makes the functions see the same machine load, so their ratio is robust to drift.

    Parameters
    ----------
    fns : dict of str -> callable
        Functions without arguments.
    repeats : int
        Number of timed calls of each function (at least 1).
    warmup : int
        Untimed calls of each function after the first one.
    pause : float
        Seconds to sleep before every call, so that spinning worker threads of the previous
        function (OpenMP) go idle and do not steal cores from the next one.

    Returns
    -------
    dict of str -> dict
        Per function: ``median_s``, ``min_s``, ``times_s`` (all repeats, in order),
        ``first_call_s`` and ``compile_s``, all in seconds.
    """
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    first = {}
    for name, fn in fns.items():
        time.sleep(pause)
        t0 = time.perf_counter()
        fn()
        first[name] = time.perf_counter() - t0
        for _ in range(warmup):
            time.sleep(pause)
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            time.sleep(pause)
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: _summary(first[name], times[name]) for name in fns}


def timeit(fn, repeats=5, warmup=1, pause=0.0):
    """Time one function: see :func:`timeit_many` (same arguments and record, for one function).

    Returns
    -------
    dict
        ``median_s``, ``min_s``, ``times_s``, ``first_call_s``, ``compile_s`` (seconds).
    """
    return timeit_many({"fn": fn}, repeats, warmup, pause)["fn"]


@numba.njit(parallel=True, nogil=True)
def _gemm_rows(A, B, C, nblk):
    """C = A B with the rows split into ``nblk`` blocks over numba threads, one ``np.dot`` per block
    (how mgritnn's kernels get their parallelism)."""
    n = A.shape[0]
    for j in prange(nblk):
        lo = j * n // nblk
        hi = (j + 1) * n // nblk
        np.dot(A[lo:hi], B, C[lo:hi])


def gemm_rate(dtype, n=2048, repeats=5, threads=None):
    """Large-GEMM rate (FLOP/s) of the BLAS that mgritnn's kernels call, at the current thread count.

    An ``n x n`` times ``n x n`` product with its rows split into one block per numba thread, each
    block one ``np.dot`` inside a ``numba.njit(parallel=True)`` loop: the BLAS itself runs on one
    thread (``import mgritnn`` caps it), exactly as inside the GRU kernels. The count is ``2 n^3``.

    Parameters
    ----------
    dtype : str or dtype
        float32 or float64.
    n : int
        Matrix size.
    repeats : int
        The median of this many products is used.
    threads : int, optional
        Numba threads to use (default: the current number).

    Returns
    -------
    dict
        ``flops_per_s`` (median), ``best_flops_per_s``, ``n``, ``threads``, ``method``.
    """
    if threads is not None:
        mgritnn.config.set_num_threads(threads)
    nthr = numba.get_num_threads()
    rng = np.random.default_rng(0)
    A = rng.standard_normal((n, n)).astype(dtype)
    B = rng.standard_normal((n, n)).astype(dtype)
    C = np.empty((n, n), dtype)
    r = timeit(lambda: _gemm_rows(A, B, C, nthr), repeats=repeats, warmup=1)
    flops = 2.0 * n ** 3
    return dict(flops_per_s=flops / r["median_s"], best_flops_per_s=flops / r["min_s"], n=n,
                threads=nthr, dtype=np.dtype(dtype).name,
                method="numba prange over row blocks, one single-threaded np.dot (BLAS) per block")


def torch_gemm_rate(dtype, n=2048, repeats=5, threads=None):
    """Large-GEMM rate (FLOP/s) of PyTorch's own BLAS (``torch.mm``) at ``torch.get_num_threads()``.

    Parameters
    ----------
    dtype : str
        ``"float32"`` or ``"float64"``.
    n, repeats : int
    threads : int, optional
        Calls ``torch.set_num_threads(threads)`` first.

    Returns
    -------
    dict
        ``flops_per_s`` (median), ``best_flops_per_s``, ``n``, ``threads``, ``method``.
    """
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    tdt = getattr(torch, np.dtype(dtype).name)
    A = torch.randn(n, n, generator=g, dtype=tdt)
    B = torch.randn(n, n, generator=g, dtype=tdt)
    C = torch.empty(n, n, dtype=tdt)
    r = timeit(lambda: torch.mm(A, B, out=C), repeats=repeats, warmup=1)
    flops = 2.0 * n ** 3
    return dict(flops_per_s=flops / r["median_s"], best_flops_per_s=flops / r["min_s"], n=n,
                threads=torch.get_num_threads(), dtype=np.dtype(dtype).name, method="torch.mm")


def emit(record, path=None):
    """Print ``record`` as one JSON line on stdout and append the line to ``path`` if given.

    NumPy scalars and arrays are converted to plain numbers and lists.
    """
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)

    line = json.dumps(record, default=default, sort_keys=False)
    print(line, flush=True)
    if path:
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        with open(path, "a") as f:
            f.write(line + "\n")
    return line


def cpu_busy(seconds=1.0):
    """Fraction of all CPUs' time spent busy (by any process) over the next ``seconds``, from
    /proc/stat; call it while this process is idle to see whether others load the machine.
    None where /proc/stat does not exist."""
    def read():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]          # total, idle + iowait

    try:
        t1, i1 = read()
        time.sleep(seconds)
        t2, i2 = read()
    except OSError:  # pragma: no cover - not Linux
        return None
    return 1.0 - (i2 - i1) / max(1, t2 - t1)


def _cpu_model():
    """The CPU's model name (and family/model numbers) from /proc/cpuinfo, or platform's guess."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model", "flags") and key not in info:
                    info[key] = val.strip()
    except OSError:
        return platform.processor() or "unknown"
    flags = info.get("flags", "").split()
    simd = "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else "other"
    return (f"{info.get('model name', 'unknown')} (family {info.get('cpu family', '?')}, "
            f"model {info.get('model', '?')}, {simd})")


def git_state():
    """The code a benchmark ran: HEAD, the modified tracked files, and a hash of their diff.

    Returns
    -------
    dict
        ``git`` (short HEAD), ``git_dirty`` (modified tracked files, empty if clean) and
        ``git_diff_sha1`` (sha1 of ``git diff HEAD``, None if clean), or Nones outside a repository.
    """
    import hashlib
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=root,
                              timeout=10).stdout

    try:
        head = git("rev-parse", "--short", "HEAD").strip() or None
        dirty = [ln for ln in git("diff", "HEAD", "--name-only").splitlines() if ln]
        diff = git("diff", "HEAD") if dirty else ""
    except (OSError, subprocess.SubprocessError):  # pragma: no cover
        return dict(git=None, git_dirty=None, git_diff_sha1=None)
    return dict(git=head, git_dirty=dirty,
                git_diff_sha1=hashlib.sha1(diff.encode()).hexdigest() if dirty else None)


def machine_info():
    """Where and with what a benchmark ran: CPU, cores, threads, library versions, BLAS settings.

    Returns
    -------
    dict
    """
    try:
        cores_usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores_usable = os.cpu_count()
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover
        load = None
    info = dict(
        cpu=_cpu_model(), cores=os.cpu_count(), cores_usable=cores_usable, loadavg=load,
        hostname=platform.node(), python=platform.python_version(),
        numpy=np.__version__, numba=numba.__version__, mgritnn=mgritnn.__version__,
        numba_threads=numba.get_num_threads(), numba_max_threads=numba.config.NUMBA_NUM_THREADS,
        blas_env={v: os.environ.get(v) for v in
                  ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        time=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        numba_cache_dir=os.environ.get("NUMBA_CACHE_DIR"),
    )
    try:
        info["numba_threading_layer"] = numba.threading_layer()
    except ValueError:  # no parallel region ran yet
        info["numba_threading_layer"] = None
    try:
        import scipy
        info["scipy"] = scipy.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch"] = None
    info.update(git_state())
    return info
