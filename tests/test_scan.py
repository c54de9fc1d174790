"""The chunked parallel scan of linear recurrences (``mgritnn.solvers.scan``) against the plain
sequential recurrence, for dense and diagonal A, forward and reverse, any chunk count; thread-count
invariance. (On 2-4 MPI ranks: ``test_mpi_deer.py``.)"""
import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import reference as ref
from mgritnn.solvers.scan import default_chunks, linear_recurrence


def random_system(n, B, H, dense, dtype=np.float64, seed=0, scale=0.6):
    rng = np.random.default_rng(seed)
    A = rng.uniform(-scale, scale, (n, B, H, H) if dense else (n, B, H)).astype(dtype)
    return A, rng.normal(size=(n, B, H)).astype(dtype), rng.normal(size=(B, H)).astype(dtype)


@given(n=st.integers(1, 30), B=st.integers(1, 4), H=st.integers(1, 5), dense=st.booleans(),
       reverse=st.booleans(), chunks=st.integers(1, 35), scale=st.floats(0.1, 1.5),
       seed=st.integers(0, 2 ** 31 - 1))
def test_scan_equals_sequential_recurrence(n, B, H, dense, reverse, chunks, scale, seed):
    A, b, h0 = random_system(n, B, H, dense, seed=seed, scale=scale)
    out, boundary = linear_recurrence(A, b, h0, reverse=reverse, chunks=chunks)
    want = ref.linear_recurrence(A, b, h0, reverse)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12 * max(1.0, np.abs(want).max()))
    assert np.array_equal(boundary, h0)          # one process owns both ends


@pytest.mark.parametrize("dense", [True, False])
def test_scan_float32(dense):
    A, b, h0 = random_system(40, 3, 4, dense, np.float32, seed=1)
    out, _ = linear_recurrence(A, b, h0, chunks=5)
    assert out.dtype == np.float32
    want = ref.linear_recurrence(A.astype(np.float64), b.astype(np.float64), h0.astype(np.float64))
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dense", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_bitwise_independent_of_threads(dense, reverse):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here (NUMBA_NUM_THREADS=1)")
    A, b, h0 = random_system(64, 2, 6, dense, seed=2)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one, _ = linear_recurrence(A, b, h0, reverse=reverse, chunks=7)
        numba.set_num_threads(2)
        two, _ = linear_recurrence(A, b, h0, reverse=reverse, chunks=7)
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(one, two)


def test_default_chunks_depend_on_shape_only():
    assert default_chunks(1000, 16) == 1            # 16 rows keep the threads busy
    assert default_chunks(1000, 1) == 8
    assert default_chunks(3, 1) == 3                # never more chunks than steps
    assert default_chunks(0, 4) == 1


def test_scan_rejects_bad_shapes():
    A, b, h0 = random_system(5, 2, 3, True)
    with pytest.raises(ValueError, match="shape"):
        linear_recurrence(A[:, :, :2], b, h0)
    with pytest.raises(ValueError, match="h0"):
        linear_recurrence(A, b, h0[:, :2])
    with pytest.raises(ValueError, match="dtype"):
        linear_recurrence(A, b, h0.astype(np.float32))
