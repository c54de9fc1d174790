"""Thread and compilation settings that apply only inside mgritnn's own entry points.

Importing mgritnn changes nothing in the host process (no environment variable, no thread count).
The entry points (:func:`mgritnn.train`, the model's ``forward`` / ``loss_and_grad_flat``,
:func:`mgritnn.evaluate`, the command line) run under :func:`blas_threads` ``(1)`` and restore the
host's settings when they return: all parallelism inside a rank comes from numba's threads over
independent row blocks, and the BLAS that numba's kernels call (SciPy's OpenBLAS) would only compete
with them (measured here: a 100x100x300 GEMM inside a numba parallel region took 2.6 ms with a
multi-threaded BLAS, 69 us single-threaded).

The BLAS libraries are found among the shared libraries loaded in the process (OpenBLAS, as shipped
in the NumPy and SciPy wheels, under its plain or ``scipy_`` prefixed names); a BLAS without a
thread setter is left alone.
"""
import contextlib
import ctypes
import functools
import glob
import os
import sys
import threading

from .config import set_num_threads

_SETTERS = [(f"{pre}openblas_set_num_threads{suf}", f"{pre}openblas_get_num_threads{suf}")
            for pre in ("", "scipy_") for suf in ("", "64_")]
_lock = threading.RLock()
_libs = {}            # path -> (setter, getter) of each OpenBLAS found so far
_scanned_at = -1      # len(sys.modules) at the last scan: libraries arrive with imports
_depth = 0            # nesting of blas_threads on this process (the outermost one restores)


def _candidate_paths():
    """Paths of the OpenBLAS libraries loaded in this process (or shipped beside NumPy / SciPy)."""
    paths = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                p = line.rstrip("\n").split(None, 5)
                if len(p) == 6 and "openblas" in os.path.basename(p[5]).lower():
                    paths.add(p[5])
    except OSError:                                  # not Linux: the wheels' own library folders
        for mod in ("numpy", "scipy"):
            pkg = sys.modules.get(mod)
            if pkg is not None:
                root = os.path.dirname(os.path.dirname(pkg.__file__))
                for pattern in (f"{mod}.libs/*openblas*", f"{mod}/.dylibs/*openblas*"):
                    paths.update(glob.glob(os.path.join(root, pattern)))
    return paths


def _load_numbas_blas():
    """Load the BLAS that numba's compiled ``np.dot`` calls (SciPy's, through
    ``scipy.linalg.cython_blas``) now, so that the first scan finds it.

    numba loads it on the first call of a kernel that uses ``np.dot``; loaded inside an outermost
    :func:`blas_threads`, it kept its default threads for that whole body. The performance
    model's calibration is one such body: its serial BPTT of small states ran up to 10x slower
    than in training (B = 2, H = 32: 17.6 us per step against 1.8 us)."""
    try:
        import scipy.linalg.cython_blas  # noqa: F401
    except ImportError:  # pragma: no cover - scipy is a dependency
        pass


def _blas_libs():
    """(setter, getter) pairs of every OpenBLAS in the process, found once per library.

    The process's libraries are scanned again only after new modules were imported (a scan reads
    ``/proc/self/maps``: about 2 ms here, more than an entry point of a small batch may take)."""
    global _scanned_at
    if _scanned_at < 0:
        _load_numbas_blas()
    if len(sys.modules) == _scanned_at:
        return [v for v in _libs.values() if v is not None]
    _scanned_at = len(sys.modules)
    for path in _candidate_paths() - set(_libs):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            _libs[path] = None
            continue
        _libs[path] = None
        for set_name, get_name in _SETTERS:
            if hasattr(lib, set_name) and hasattr(lib, get_name):
                setter, getter = getattr(lib, set_name), getattr(lib, get_name)
                setter.argtypes, setter.restype = [ctypes.c_int], None
                getter.argtypes, getter.restype = [], ctypes.c_int
                _libs[path] = (setter, getter)
                break
    return [v for v in _libs.values() if v is not None]


def blas_thread_counts():
    """The thread count of every OpenBLAS loaded in this process, list of int."""
    with _lock:
        return [getter() for _, getter in _blas_libs()]


@contextlib.contextmanager
def blas_threads(n=1):
    """Run the body with every OpenBLAS of the process at ``n`` threads, then restore the counts.

    Nested uses are cheap: only the outermost one changes and restores the settings.

    Parameters
    ----------
    n : int
        Threads of the BLAS inside the body (1: all parallelism from numba's threads).
    """
    global _depth
    with _lock:
        outer = _depth == 0
        saved = [(setter, getter()) for setter, getter in _blas_libs()] if outer else []
        for setter, _ in saved:
            setter(int(n))
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            for setter, old in saved:
                setter(old)


@contextlib.contextmanager
def numba_threads(n=None):
    """Run the body with ``n`` numba threads (None: as they are), then restore the count.

    Parameters
    ----------
    n : int or None
        1 .. ``NUMBA_NUM_THREADS``; anything else is a :class:`~mgritnn.errors.ConfigError`.
    """
    old = set_num_threads(None)
    set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(old)


def entry_point(fn):
    """Decorator of mgritnn's entry points: ``fn`` runs under :func:`blas_threads` ``(1)``."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with blas_threads(1):
            return fn(*args, **kwargs)
    return wrapper


def compile_rank0_first(comm, warm_up):
    """Fill numba's on-disk cache from one rank before the others compile.

    Rank 0 runs ``warm_up()`` (a small computation that compiles, or loads, the kernels the run
    will use) while the other ranks wait at a barrier; they then load the cached machine code
    instead of compiling the same kernels at the same time and racing on the cache files.

    Parameters
    ----------
    comm : communicator with ``Get_rank`` and ``Barrier`` (mpi4py, :class:`~mgritnn.distributed.SelfComm`), or None
    warm_up : callable taking no arguments
    """
    if comm is None or comm.Get_size() == 1:
        return
    failed = None
    if comm.Get_rank() == 0:
        try:
            warm_up()
        except Exception as e:  # noqa: BLE001 - reported after the barrier, on rank 0 only
            failed = e
    comm.Barrier()
    if failed is not None:
        raise failed
