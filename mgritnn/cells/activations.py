"""Vectorizable ``sigmoid`` and ``tanh`` for the gate loops, float32 and float64.

numba compiles ``math.exp`` / ``math.tanh`` to scalar library calls, which keeps the gate loops from
vectorizing (about 7 ns per element here, against well under 1 ns for the polynomial below). These
functions use only arithmetic, ``floor`` and selects, so the compiler vectorizes a loop over them.

Notes
-----
Both are built on :math:`e^y` and :math:`e^y - 1` for :math:`y \\le 0`:

* :math:`y = k \\ln 2 + r`, :math:`k = \\lfloor y/\\ln 2 + 1/2 \\rfloor`, :math:`|r| \\le \\ln 2 / 2`,
  with :math:`\\ln 2` split in two parts (Cody & Waite) so that :math:`k \\ln 2_{hi}` is exact;
* :math:`e^r - 1` by its Taylor series to degree 7 (float32, truncation < 6e-9 relative) or 14
  (float64, < 2e-19);
* :math:`2^k` for :math:`-k = \\sum_i b_i 2^i` as the product of the factors :math:`2^{-2^i}` selected
  by the bits :math:`b_i` (exact);
* :math:`e^y - 1` is the series itself when :math:`k = 0`, so it is accurate relative to its size.

Then :math:`\\sigma(x) = 1/(1+u)` for :math:`x \\ge 0` and :math:`u/(1+u)` otherwise, with
:math:`u = e^{-|x|}`, and :math:`\\tanh|x| = -m/(2+m)` with :math:`m = e^{-2|x|} - 1`: no cancellation
anywhere. Measured error (tests/test_activations.py): a few ulp in both precisions.
"""
import decimal
import math

import numba
import numpy as np
from numba.extending import overload

from ..errors import ConfigError


def _split_ln2(mantissa_bits):
    """ln 2 = hi + lo with hi having ``mantissa_bits`` significant bits (so k*hi is exact for small k)
    and lo the rest, from ln 2 to 50 digits (a double ln 2 is off by 2e-17, which k ~ 1000 would amplify)."""
    ln2 = decimal.Context(prec=50).ln(decimal.Decimal(2))
    hi = math.ldexp(math.floor(math.ldexp(float(ln2), mantissa_bits)), -mantissa_bits)
    return hi, float(ln2 - decimal.Decimal(hi))


# per precision: (degree of the e^r - 1 series, clamp of |y|, number of bits of -k, ln2 split)
_PARAMS = {
    np.float32: (7, 87.0, 7, _split_ln2(16)),
    np.float64: (14, 708.0, 10, _split_ln2(40)),
}


def _make_expm1_pair(dtype):
    """Return a compiled ``f(y) -> (e^y, e^y - 1)`` for ``y <= 0`` in ``dtype``."""
    deg, lim, nbits, (ln2_hi, ln2_lo) = _PARAMS[dtype]
    T = dtype
    coef = tuple(T(1.0 / math.factorial(j)) for j in range(1, deg + 1))   # r/1!, r^2/2!, ...
    factors = tuple(T(2.0 ** -(2 ** i)) for i in range(nbits))
    one, half, zero = T(1.0), T(0.5), T(0.0)
    lim_t, inv_ln2 = T(lim), T(1.0 / math.log(2.0))
    hi_t, lo_t = T(ln2_hi), T(ln2_lo)

    @numba.njit(inline="always")
    def expm1_pair(y):
        y = max(y, -lim_t)
        kf = math.floor(y * inv_ln2 + half)
        r = (y - kf * hi_t) - kf * lo_t
        q = coef[deg - 1]
        for j in range(deg - 2, -1, -1):
            q = q * r + coef[j]
        q = q * r                       # e^r - 1
        n = np.int64(-kf)
        p2 = one
        for i in range(nbits):
            p2 = p2 * factors[i] if (n >> i) & 1 else p2
        e = p2 * (one + q)
        m = q if n == 0 else e - one
        return e, m

    return expm1_pair


_EXPM1 = {dt: _make_expm1_pair(dt) for dt in (np.float32, np.float64)}


def _pick(x):
    for dt, f in _EXPM1.items():
        if x == numba.from_dtype(dt):
            return dt, f
    return None, None


def sigmoid(x):
    """Logistic function 1 / (1 + exp(-x)) of a scalar (Python fallback; compiled code uses the overload)."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    u = math.exp(x)
    return u / (1.0 + u)


def tanh(x):
    """Hyperbolic tangent of a scalar (Python fallback; compiled code uses the overload)."""
    return math.tanh(x)


@overload(sigmoid, inline="always")
def _sigmoid_ov(x):
    dt, f = _pick(x)
    if f is None:
        return None
    one = dt(1.0)

    def impl(x):
        u, _ = f(-abs(x))
        s = one / (one + u)
        return s if x >= 0 else u * s
    return impl


@overload(tanh, inline="always")
def _tanh_ov(x):
    dt, f = _pick(x)
    if f is None:
        return None
    two = dt(2.0)

    def impl(x):
        _, m = f(-two * abs(x))
        t = -m / (two + m)
        return t if x >= 0 else -t
    return impl


def flush_subnormal(x):
    """``x``, or zero when ``|x|`` is below the smallest normal number of its dtype (what the
    FTZ/DAZ modes of a CPU do); NaN and inf pass unchanged. Python fallback; compiled code uses
    the overload."""
    return type(x)(0) if abs(x) < np.finfo(type(x)).tiny else x


@overload(flush_subnormal)
def _flush_subnormal_ov(x):
    dt, _ = _pick(x)
    if dt is None:
        return None
    tiny, zero = dt(np.finfo(dt).tiny), dt(0.0)

    def impl(x):
        return zero if abs(x) < tiny else x      # NaN and inf pass
    return impl


@numba.njit(cache=True, error_model="numpy")
def _apply(x, out, which):
    for i in range(x.shape[0]):
        out[i] = sigmoid(x[i]) if which == 0 else tanh(x[i])


def apply(name, x):
    """Evaluate ``sigmoid`` or ``tanh`` elementwise with the compiled scalar code (for tests and checks).

    Parameters
    ----------
    name : {"sigmoid", "tanh"}
    x : ndarray, shape (n,), float32 or float64

    Returns
    -------
    ndarray, shape (n,), same dtype as ``x``
    """
    if name not in ("sigmoid", "tanh"):
        raise ConfigError(f"unknown activation {name!r}; use 'sigmoid' or 'tanh'")
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    _apply(x, out, 0 if name == "sigmoid" else 1)
    return out
