"""mgritnn.config: dtypes, the row blocks of the kernels, numba's thread count."""
import numba
import numpy as np
import pytest

from mgritnn import config
from mgritnn.errors import ConfigError


@pytest.mark.parametrize("given, want", [
    ("float32", np.float32), ("float64", np.float64), (np.float32, np.float32),
    (np.dtype("float64"), np.float64), ("f8", np.float64), ("<f4", np.float32),
])
def test_resolve_dtype(given, want):
    assert config.resolve_dtype(given) is want


@pytest.mark.parametrize("bad", ["float16", np.int64, "x", None, 3, np.complex128])
def test_resolve_dtype_rejects_with_the_choices(bad):
    with pytest.raises(ConfigError, match="'float32' or 'float64'"):
        config.resolve_dtype(bad)


@pytest.mark.parametrize("batch", [1, 2, 31, 32, 33, 64, 100, 1000])
def test_row_blocks_are_balanced_and_bounded(batch):
    for weight_bytes, rows in ((0, config.MAX_ROW_BLOCK),
                               (config.LARGE_WEIGHT_BYTES + 1, 2 * config.MAX_ROW_BLOCK)):
        n = config.row_blocks(batch, weight_bytes)
        assert n >= 1 and -(-batch // n) <= rows          # no block above the limit
        assert n == 1 or -(-batch // (n - 1)) > rows      # and no more blocks than needed


def test_row_blocks_depend_only_on_batch_and_weights():
    assert config.row_blocks(100) == 4 and config.row_blocks(100, 1 << 21) == 2


def test_set_num_threads():
    old = config.set_num_threads()
    try:
        assert config.set_num_threads(1) == 1 == numba.get_num_threads()
        for bad in (0, numba.config.NUMBA_NUM_THREADS + 1):
            with pytest.raises(ConfigError, match=f"threads={bad} is not possible here"):
                config.set_num_threads(bad)
    finally:
        config.set_num_threads(old)


def test_status_codes_are_distinct():
    codes = (config.OK, config.NOT_CONVERGED, config.DIVERGED, config.NONFINITE)
    assert len(set(codes)) == 4 and config.OK == 0
