"""The residual layer of an ODENet as a cell of the step protocol: layers are time steps.

One layer of a deep residual network is one forward-Euler step of :math:`u' = \\sigma(W(t) u + b(t))`:

.. math:: u_{k+1} = u_k + \\Delta t\\, \\sigma(W_k u_k + b_k), \\qquad k = 0 .. N - 1.

The key to putting it on the time solvers unchanged: **the per-layer weights are the cell's step
inputs**. A step's input row is ``x[k] = [W_k | b_k]``, an array (w, w + 1) (column w the bias), so
a sequence of N layers has inputs (N, w, w + 1) and a solver that owns the steps [lo, hi) owns the
weights of those layers (MGRIT under MPI: each rank the layers of its time slice). The cotangent of
a step's input is the layer's parameter gradient, :math:`[s^T u_k \\,|\\, \\sum_B s]` with
:math:`s = \\Delta t\\, \\sigma'(a) \\odot \\lambda_{k+1}` and :math:`a = W_k u_k + b_k`: it comes
out of the solver as ``dxp`` on the rank that owns the layer. The cell itself has no shared weights.

MGRIT's ``coarse_input="sample"`` gives a coarse step from layer k the weights of layer k and the
summed step size m Δt: the injection of the weights used by Günther et al. (2020).

Shapes: the state of one point is (B, w), B samples of width w; K states are (K, B, w); the step
inputs of K steps are (K, w, w + 1); step sizes a scalar, (K,) or (K, B). float32 or float64 (the
dtype of the states; the weights must have the same).

References
----------
S. Günther, L. Ruthotto, J. B. Schroder, E. C. Cyr, N. R. Gauger, "Layer-parallel training of deep
residual neural networks", SIAM J. Math. Data Sci. 2(1), 2020.
"""
from typing import NamedTuple

import numpy as np

from ..errors import ConfigError
from .base import Cell

#: The half-width η of SmoothReLU's quadratic piece.
SMOOTHRELU_ETA = 0.1


def _tanh(a):
    s = np.tanh(a)
    return s, 1.0 - s * s


def _relu(a):
    return np.maximum(a, 0), (a > 0).astype(a.dtype)


def _smoothrelu(a):
    """x²/(4η) + x/2 + η/4 for |x| < η, ReLU elsewhere: C¹ (value and slope match at ±η)."""
    eta = a.dtype.type(SMOOTHRELU_ETA)
    inside = np.abs(a) < eta
    s = np.where(inside, a * a / (4 * eta) + a / 2 + eta / 4, np.maximum(a, 0))
    d = np.where(inside, a / (2 * eta) + a.dtype.type(0.5), (a >= eta).astype(a.dtype))
    return s.astype(a.dtype, copy=False), d.astype(a.dtype, copy=False)


#: Activations by name: ``f(a) -> (σ(a), σ'(a))``, elementwise, in a's dtype.
ACTIVATIONS = {"tanh": _tanh, "relu": _relu, "smoothrelu": _smoothrelu}


def get_activation(name):
    """The activation ``name`` as ``f(a) -> (σ(a), σ'(a))``; a ConfigError names the choices."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; choose one of "
                          f"{', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]


class ODENetWeights(NamedTuple):
    """The cell's weights as the solvers pass them: none (the layers' weights are the step
    inputs), only the dtype of the computation."""
    dtype: np.dtype


class ODENetGrads(NamedTuple):
    """The cell's parameter gradients: none (the layers' gradients are the input cotangents
    ``dxp``)."""


class ODENetCell(Cell):
    """One residual layer per step, :math:`u' = u + \\Delta t\\, \\sigma(W u + b)` (module docstring).

    Parameters
    ----------
    activation : {"tanh", "relu", "smoothrelu"}

    Notes
    -----
    The core of the step protocol only, no capability (:mod:`mgritnn.cells.base`): the serial
    solver and MGRIT step it through :meth:`step`; DEER cannot solve it. Its own coarse cell (forward Euler with the coarse step size). A step of size 0 is exactly the
    identity: the new state is the old one bit for bit, the adjoint passes unchanged and the
    input cotangent is 0.
    """

    name = "odenet"

    def __init__(self, activation="tanh"):
        self.activation = activation
        self._act = get_activation(activation)

    def weights(self, dtype):
        """The weights to pass to the solvers: :class:`ODENetWeights` of ``dtype``."""
        return ODENetWeights(np.dtype(dtype))

    @staticmethod
    def _dt(dt, u):
        """Step sizes as (K, B_or_1, 1), u's dtype, and the mask (same shape) of the zero ones."""
        d = np.asarray(dt, u.dtype)
        K, B = u.shape[0], u.shape[1]
        if d.ndim == 0:
            d = np.broadcast_to(d, (K,))
        if d.ndim == 1:
            if d.shape != (K,):
                raise ConfigError(f"step sizes of shape {d.shape} for {K} states: give a scalar, "
                                  f"(K,) or (K, B)")
            d = d[:, None, None]
        elif d.shape == (K, B):
            d = d[:, :, None]
        else:
            raise ConfigError(f"step sizes of shape {d.shape} for states {u.shape}: give a "
                              f"scalar, (K,) or (K, B)")
        return d, d == 0

    @staticmethod
    def _check(x, u):
        if u.ndim != 3 or x.ndim != 3 or x.shape != (u.shape[0], u.shape[2], u.shape[2] + 1):
            raise ConfigError(f"an ODENet step takes states (K, B, w) and layer weights "
                              f"(K, w, w + 1), got {u.shape} and {x.shape}")
        if x.dtype != u.dtype:
            raise TypeError(f"layer weights are {x.dtype}, states {u.dtype}: use one dtype")

    def _preact(self, x, u):
        """a = u W^T + b for K layers at once: (K, B, w)."""
        W, b = x[:, :, :-1], x[:, :, -1]
        return np.matmul(u, W.transpose(0, 2, 1)) + b[:, None, :]

    def step(self, w, x, u, dt, out=None, cache=False):
        """Advance K states through their layers (see :meth:`Cell.step`).

        Parameters
        ----------
        w : ODENetWeights (unused but for the protocol)
        x : ndarray, shape (K, w, w + 1)
            Each step's layer weights ``[W_k | b_k]``.
        u : ndarray, shape (K, B, w)
        dt : float or ndarray, shape (K,) or (K, B)
        out : ndarray, shape (K, B, w), optional
        cache : bool
            Also return ``(σ'(a),)``, (K, B, w), for :meth:`step_vjp`.

        Returns
        -------
        u_new : ndarray, shape (K, B, w)
        cache : tuple, only with ``cache``
        """
        self._check(x, u)
        d, zero = self._dt(dt, u)
        s, ds = self._act(self._preact(x, u))
        new = u + d * s
        if zero.any():                    # exactly the identity (u + 0 s can turn -0.0 into 0.0)
            new = np.where(zero, u, new)
        if out is not None:
            out[...] = new
            new = out
        return (new, (ds,)) if cache else new

    def step_vjp(self, w, x, u, dt, lam_next, grads=None, cache=None, cotangents=None):
        """VJP of :meth:`step`: :math:`\\lambda = \\lambda' + W^T s`, :math:`s = \\Delta t\\,
        \\sigma'(a) \\odot \\lambda'`, and the cotangent of the layer weights
        ``dx = [s^T u | sum_B s]`` (K, w, w + 1). ``cotangents`` receives ``[(dx,)]``; ``grads``
        (an empty :class:`ODENetGrads`) is left alone.

        Returns
        -------
        lam : ndarray, shape (K, B, w)
        dx : ndarray, shape (K, w, w + 1)
        """
        self._check(x, u)
        d, zero = self._dt(dt, u)
        ds = cache[0] if cache is not None else self._act(self._preact(x, u))[1]
        s = d * ds * lam_next
        W = x[:, :, :-1]
        lam = lam_next + np.matmul(s, W)
        dx = np.empty(x.shape, x.dtype)
        np.matmul(s.transpose(0, 2, 1), u, out=dx[:, :, :-1])
        s.sum(axis=1, out=dx[:, :, -1])
        if zero.any():
            lam = np.where(zero, lam_next, lam)
            dx[zero.all(axis=(1, 2))] = 0       # a step of size 0 for every row: no cotangent
        if cotangents is not None:
            cotangents[:] = [(dx,)]
        return lam, dx

    def accumulate_grads(self, grads, cache, cotangents):
        """Nothing: the cell has no shared parameters (the layers' are the input cotangents)."""

    def zero_grads(self, w):
        """An empty :class:`ODENetGrads`."""
        return ODENetGrads()
