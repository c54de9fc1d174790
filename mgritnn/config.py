"""One place for compile options, dtypes, threads and status codes.

Importing it changes nothing in the process: the BLAS thread cap of the entry points is
:func:`mgritnn.runtime.blas_threads`.
"""
import numba
import numpy as np

from .errors import ConfigError

#: Options of every compiled kernel (stumpy habit: one source of jit options).
#: ``error_model="numpy"`` lets divisions vectorize; no fastmath, so results are reproducible.
JIT = dict(cache=True, error_model="numpy", nogil=True)
#: The same with ``parallel=True``: threads over independent row blocks only.
JIT_PAR = dict(JIT, parallel=True)

#: The dtypes the engine computes in.
DTYPES = {"float32": np.float32, "float64": np.float64}

#: Largest row block of one recurrent GEMM inside the kernels. Blocks depend only on the batch size
#: B and the weights' size (never on the number of threads, states or ranks), so results are
#: bitwise independent of them. 32 rows while W_h fits in a core's cache: B = 100, H = 100 runs as
#: four GEMMs of 25 rows per step (faster here than two of 50); twice that when W_h is larger than
#: LARGE_WEIGHT_BYTES, since every block streams all of W_h (H = 1000: forward 12 % faster here).
MAX_ROW_BLOCK = 32
LARGE_WEIGHT_BYTES = 1 << 20

# Status codes returned by kernels and solvers.
OK = 0
NOT_CONVERGED = 1
DIVERGED = 2
NONFINITE = 3


def resolve_dtype(dtype):
    """Return ``np.float32`` or ``np.float64`` for a name or NumPy dtype; anything else is a ConfigError."""
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    try:
        dt = None if dtype is None else np.dtype(dtype)     # np.dtype(None) would be float64
    except TypeError:
        dt = None
    if dt is not None and dt in (np.dtype(np.float32), np.dtype(np.float64)):
        return dt.type
    raise ConfigError(f"dtype {dtype!r} is not supported; use 'float32' or 'float64'")


def row_blocks(batch, weight_bytes=0):
    """Number of row blocks a batch of ``batch`` rows is split into: balanced, at most MAX_ROW_BLOCK
    rows each, or twice that when the recurrent weight matrix has more than LARGE_WEIGHT_BYTES."""
    rows = MAX_ROW_BLOCK * (2 if weight_bytes > LARGE_WEIGHT_BYTES else 1)
    return max(1, -(-int(batch) // rows))


def set_num_threads(n=None):
    """Set the number of numba threads of this process (None: leave as is). Returns the number in use."""
    if n is not None:
        n = int(n)
        if not 1 <= n <= numba.config.NUMBA_NUM_THREADS:
            raise ConfigError(
                f"threads={n} is not possible here: choose 1..{numba.config.NUMBA_NUM_THREADS} "
                "(set NUMBA_NUM_THREADS before start-up to allow more)")
        numba.set_num_threads(n)
    return numba.get_num_threads()
