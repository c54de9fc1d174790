"""mgritnn.runtime: importing mgritnn leaves the process alone; entry points cap the BLAS at one
thread and restore it; numba's cache is filled by rank 0 first."""
import json
import os
import subprocess
import sys

import pytest

from mgritnn.distributed import SelfComm
from mgritnn.errors import ConfigError
from mgritnn.runtime import (blas_thread_counts, blas_threads, compile_rank0_first, entry_point,
                             numba_threads)

_PROBE = r"""
import json, os, sys
before = dict(os.environ)
import numpy, scipy.linalg                  # the host loads its BLAS first
from mgritnn.runtime import blas_thread_counts, blas_threads
counts = blas_thread_counts()
import mgritnn, mgritnn.cli, mgritnn.train
env_changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
after_import = blas_thread_counts()
with blas_threads(1):
    inside = blas_thread_counts()
    with blas_threads(1):
        nested = blas_thread_counts()
    still = blas_thread_counts()
after = blas_thread_counts()
m = mgritnn.GRUClassifier(2, 3, 2, dtype="float64")
import numpy as np
m.loss_and_grad_flat(np.ones((1, 4, 2)), np.zeros(1, int))
print(json.dumps(dict(env=env_changed, counts=counts, after_import=after_import, inside=inside,
                      nested=nested, still=still, after=after, after_call=blas_thread_counts())))
"""


def _probe(threads):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["OPENBLAS_NUM_THREADS"] = str(threads)
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_changes_nothing_and_entry_points_restore_the_blas():
    r = _probe(2)
    assert r["env"] == [], f"importing mgritnn changed the environment: {r['env']}"
    if not r["counts"]:
        pytest.skip("no OpenBLAS with a thread setter in this NumPy/SciPy build")
    assert r["counts"] == [2] * len(r["counts"])
    assert r["after_import"] == r["counts"]
    assert r["inside"] == r["nested"] == r["still"] == [1] * len(r["counts"])
    assert r["after"] == r["counts"] and r["after_call"] == r["counts"]


_FIRST_CONTEXT = r"""
import json
import numpy as np                          # NumPy's BLAS only: numba's (SciPy's) is not loaded yet
from mgritnn.runtime import blas_threads, _candidate_paths
import ctypes
def every_count():                          # every OpenBLAS mapped now, read directly
    out = {}
    for path in _candidate_paths():
        lib = ctypes.CDLL(path)
        for pre in ("", "scipy_"):
            for suf in ("", "64_"):
                get = getattr(lib, f"{pre}openblas_get_num_threads{suf}", None)
                if get is not None:
                    out[path] = get()
    return out
import mgritnn
with blas_threads(1):                       # the outermost context, entered before any kernel
    m = mgritnn.GRUClassifier(2, 3, 2, dtype="float64")
    m.loss_and_grad_flat(np.ones((1, 4, 2)), np.zeros(1, int))   # numba's np.dot loads its BLAS
    print(json.dumps(every_count()))
"""


def test_a_context_entered_before_numba_loads_its_blas_caps_that_blas_too():
    """Regression (found through the performance model's calibration, one long context): SciPy's
    OpenBLAS, which numba's ``np.dot`` calls, was loaded inside the outermost context and kept
    its default threads for the whole body (serial BPTT of small states up to 10x slower)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["OPENBLAS_NUM_THREADS"] = "2"
    out = subprocess.run([sys.executable, "-c", _FIRST_CONTEXT], env=env, capture_output=True,
                         text=True, timeout=300, check=True)
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    if not counts:
        pytest.skip("no OpenBLAS with a thread getter in this NumPy/SciPy build")
    assert all(c == 1 for c in counts.values()), counts


def test_entry_point_keeps_the_result_and_the_exception():
    @entry_point
    def f(x, fail=False):
        """doc"""
        if fail:
            raise ValueError("boom")
        return blas_thread_counts(), x

    counts, x = f(3)
    assert x == 3 and all(c == 1 for c in counts) and f.__doc__ == "doc"
    before = blas_thread_counts()
    with pytest.raises(ValueError, match="boom"):
        f(0, fail=True)
    assert blas_thread_counts() == before


def test_numba_threads_restores_and_validates():
    import numba
    old = numba.get_num_threads()
    with numba_threads(1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == old
    with pytest.raises(ConfigError, match="threads=0"):
        with numba_threads(0):
            pass
    assert numba.get_num_threads() == old


class _Recorder:
    """A communicator stand-in of one rank of ``size`` that records the order of events."""

    def __init__(self, rank, size, log):
        self.rank, self.size, self.log = rank, size, log

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def Barrier(self):
        self.log.append(("barrier", self.rank))


@pytest.mark.parametrize("rank", [0, 1, 3])
def test_rank0_compiles_before_the_barrier_and_the_others_after(rank):
    log = []
    compile_rank0_first(_Recorder(rank, 4, log), lambda: log.append(("warm", rank)))
    assert log == ([("warm", 0), ("barrier", 0)] if rank == 0 else [("barrier", rank)])


def test_rank0_warm_up_error_is_raised_after_the_barrier():
    log = []

    def fail():
        raise RuntimeError("no compiler")

    with pytest.raises(RuntimeError, match="no compiler"):
        compile_rank0_first(_Recorder(0, 2, log), fail)
    assert log == [("barrier", 0)]
    compile_rank0_first(SelfComm(), fail)       # one rank: nothing to order, nothing run
    compile_rank0_first(None, fail)
