"""The convolutional residual layer of an ODENet as a cell of the step protocol.

One layer is one forward-Euler step of :math:`u' = \\sigma(K(t) * u + b(t))` on images of c
channels and H x W pixels:

.. math:: u_{k+1} = u_k + \\Delta t\\, \\sigma(K_k * u_k + b_k), \\qquad k = 0 .. N - 1,

with :math:`K_k` a 3 x 3 convolution from c to c channels, "same" zero padding (the output has
the input's H x W) and one bias per output channel. As for the dense layer
(:mod:`mgritnn.cells.odenet`), **the layer weights are the cell's step inputs**: a step's input
row is ``x[k]``, an array (c, 9 c + 1), row o = ``[K_k[o].ravel() | b_k[o]]`` (``K_k[o]`` of
shape (c, 3, 3) in C order: input channel, row offset, column offset), so that MGRIT's ranks own
the weights of their layers and get their gradients back as the input cotangents ``dxp``.

The state of one point is (B, c H W): a batch of images flattened in C order (channel, row,
column), so that the solvers see the same kind of state as the dense layer's (B, w).

Kernels (numba, written out by hand, direct loops over the pixels; no im2col buffer; serial
loops: on images this small a parallel region's start costs more than the work, and the sums run
in a fixed order, so the results do not depend on the number of threads or ranks):

* :func:`conv2d` (``_conv2d_kernel``): :math:`a[o, i, j] = b[o] + \\sum_{c, p, q}
  K[o, c, p, q]\\, u[c, i + p - 1, j + q - 1]` (zero outside the image);
* :func:`conv2d_input_vjp` (``_conv2d_input_vjp_kernel``), the transposed convolution:
  :math:`\\bar u[c, i, j] = \\sum_{o, p, q} K[o, c, p, q]\\, s[o, i - p + 1, j - q + 1]`;
* :func:`conv2d_weight_vjp` (``_conv2d_weight_vjp_kernel``): :math:`\\bar K[o, c, p, q] =
  \\sum_{b, i, j} s[b, o, i, j]\\, u[b, c, i + p - 1, j + q - 1]`, :math:`\\bar b[o] =
  \\sum_{b, i, j} s[b, o, i, j]`, summed over b in order (the same bits for any thread count).

The same kernels serve the network's opening convolution (C_in to c channels).
"""
from typing import NamedTuple

import numba
import numpy as np

from ..config import JIT
from ..errors import ConfigError
from .base import Cell
from .odenet import get_activation, step_rows

#: The side of the square kernels.
KSIZE = 3


@numba.njit(**JIT)
def _conv2d_kernel(w, u, out):
    """out[k, b] = conv(w[k], u[k, b]); w (K, cout, 9 cin + 1), u (K, B, cin, H, W),
    out (K, B, cout, H, W) (overwritten). Per output channel: the bias, then the taps (c, p, q)
    in order, each over the pixels where its window lies inside the image. Returns 0."""
    K, B, cin = u.shape[0], u.shape[1], u.shape[2]
    cout, H, W = out.shape[2], out.shape[3], out.shape[4]
    for kb in range(K * B):
        k, b = kb // B, kb % B
        for o in range(cout):
            bias = w[k, o, 9 * cin]
            for i in range(H):
                for j in range(W):
                    out[k, b, o, i, j] = bias
            for c in range(cin):
                for p in range(3):
                    for q in range(3):
                        wv = w[k, o, (c * 3 + p) * 3 + q]
                        for i in range(max(0, 1 - p), min(H, H + 1 - p)):
                            for j in range(max(0, 1 - q), min(W, W + 1 - q)):
                                out[k, b, o, i, j] += wv * u[k, b, c, i + p - 1, j + q - 1]
    return 0


@numba.njit(**JIT)
def _conv2d_input_vjp_kernel(w, s, out):
    """out[k, b] = conv^T(w[k], s[k, b]); w (K, cout, 9 cin + 1), s (K, B, cout, H, W),
    out (K, B, cin, H, W) (overwritten): out[c, i, j] = sum over o, p, q (in order) of
    w[o, c, p, q] s[o, i - p + 1, j - q + 1]. Returns 0."""
    K, B = s.shape[0], s.shape[1]
    cout, H, W = s.shape[2], s.shape[3], s.shape[4]
    cin = out.shape[2]
    for kb in range(K * B):
        k, b = kb // B, kb % B
        for c in range(cin):
            for i in range(H):
                for j in range(W):
                    out[k, b, c, i, j] = 0
        for o in range(cout):
            for c in range(cin):
                for p in range(3):
                    for q in range(3):
                        wv = w[k, o, (c * 3 + p) * 3 + q]
                        for i in range(max(0, p - 1), min(H, H + p - 1)):
                            for j in range(max(0, q - 1), min(W, W + q - 1)):
                                out[k, b, c, i, j] += wv * s[k, b, o, i - p + 1, j - q + 1]
    return 0


@numba.njit(**JIT)
def _conv2d_weight_vjp_kernel(s, u, out):
    """out[k] = the cotangent of the weights [K | b] of layer k: s (K, B, cout, H, W),
    u (K, B, cin, H, W), out (K, cout, 9 cin + 1) (overwritten); sums over b (outer), then the
    pixels, in order. Returns 0."""
    K, B = s.shape[0], s.shape[1]
    cout, H, W = s.shape[2], s.shape[3], s.shape[4]
    cin = u.shape[2]
    for ko in range(K * cout):
        k, o = ko // cout, ko % cout
        for r in range(9 * cin + 1):
            out[k, o, r] = 0
        for b in range(B):
            acc = s.dtype.type(0.0)
            for i in range(H):
                for j in range(W):
                    acc += s[k, b, o, i, j]
            out[k, o, 9 * cin] += acc
            for c in range(cin):
                for p in range(3):
                    for q in range(3):
                        acc = s.dtype.type(0.0)
                        for i in range(max(0, 1 - p), min(H, H + 1 - p)):
                            for j in range(max(0, 1 - q), min(W, W + 1 - q)):
                                acc += s[k, b, o, i, j] * u[k, b, c, i + p - 1, j + q - 1]
                        out[k, o, (c * 3 + p) * 3 + q] += acc
    return 0


def _check_conv(w, u, what):
    if w.ndim != 3 or u.ndim != 5 or w.shape[0] != u.shape[0] or w.shape[2] != 9 * u.shape[2] + 1:
        raise ValueError(f"{what}: weights (K, cout, 9 cin + 1) and images (K, B, cin, H, W) with "
                         f"the same K and cin, got {w.shape} and {u.shape}")
    if w.dtype != u.dtype or w.dtype not in (np.float32, np.float64):
        raise TypeError(f"{what}: weights are {w.dtype}, images {u.dtype}: use one dtype, "
                        "float32 or float64")


def conv2d(w, u):
    """The 3 x 3 "same" convolution with bias of K batches of images (module docstring).

    Parameters
    ----------
    w : ndarray, shape (K, cout, 9 cin + 1), float32 or float64
        Row o of w[k]: the kernel K[o] (cin, 3, 3) raveled, then the bias b[o].
    u : ndarray, shape (K, B, cin, H, W), w's dtype

    Returns
    -------
    ndarray, shape (K, B, cout, H, W), w's dtype
    """
    _check_conv(w, u, "conv2d")
    out = np.empty(u.shape[:2] + (w.shape[1],) + u.shape[3:], u.dtype)
    _conv2d_kernel(np.ascontiguousarray(w), np.ascontiguousarray(u), out)
    return out


def conv2d_input_vjp(w, s):
    """The transposed convolution: the cotangent of :func:`conv2d`'s images for the output
    cotangent ``s``.

    Parameters
    ----------
    w : ndarray, shape (K, cout, 9 cin + 1)
    s : ndarray, shape (K, B, cout, H, W), w's dtype

    Returns
    -------
    ndarray, shape (K, B, cin, H, W)
    """
    if w.ndim != 3 or s.ndim != 5 or w.shape[:2] != (s.shape[0], s.shape[2]) \
            or (w.shape[2] - 1) % 9:
        raise ValueError(f"conv2d_input_vjp: weights (K, cout, 9 cin + 1) and cotangents "
                         f"(K, B, cout, H, W), got {w.shape} and {s.shape}")
    if w.dtype != s.dtype:
        raise TypeError(f"conv2d_input_vjp: weights are {w.dtype}, cotangents {s.dtype}")
    out = np.empty(s.shape[:2] + ((w.shape[2] - 1) // 9,) + s.shape[3:], s.dtype)
    _conv2d_input_vjp_kernel(np.ascontiguousarray(w), np.ascontiguousarray(s), out)
    return out


def conv2d_weight_vjp(s, u):
    """The cotangent of :func:`conv2d`'s weights [K | b] for the output cotangent ``s`` at the
    images ``u``, summed over the batch in order.

    Parameters
    ----------
    s : ndarray, shape (K, B, cout, H, W)
    u : ndarray, shape (K, B, cin, H, W), s's dtype

    Returns
    -------
    ndarray, shape (K, cout, 9 cin + 1)
    """
    if s.ndim != 5 or u.ndim != 5 or s.shape[:2] != u.shape[:2] or s.shape[3:] != u.shape[3:]:
        raise ValueError(f"conv2d_weight_vjp: cotangents (K, B, cout, H, W) and images "
                         f"(K, B, cin, H, W), got {s.shape} and {u.shape}")
    if s.dtype != u.dtype:
        raise TypeError(f"conv2d_weight_vjp: cotangents are {s.dtype}, images {u.dtype}")
    out = np.empty((s.shape[0], s.shape[2], 9 * u.shape[2] + 1), s.dtype)
    _conv2d_weight_vjp_kernel(np.ascontiguousarray(s), np.ascontiguousarray(u), out)
    return out


class ConvODENetWeights(NamedTuple):
    """The cell's weights as the solvers pass them: none (the layers' weights are the step
    inputs), only the dtype of the computation."""
    dtype: np.dtype


class ConvODENetGrads(NamedTuple):
    """The cell's parameter gradients: none (the layers' gradients are the input cotangents)."""


class ConvODENetCell(Cell):
    """One convolutional residual layer per step (module docstring).

    Parameters
    ----------
    channels : int
        c, the channels of the state.
    height, width : int
        H and W of the images.
    activation : {"tanh", "relu", "smoothrelu"}

    Notes
    -----
    The core of the step protocol only (serial and MGRIT; no capability), like
    :class:`~mgritnn.cells.odenet.ODENetCell`; its own coarse cell. A step of size 0 is exactly
    the identity: the new state is the old one bit for bit, the adjoint passes unchanged and the
    input cotangent is 0. Not in the registry of GRU cells (:data:`~mgritnn.cells.base.CELLS`,
    the choices of ``--cell``): the ODENet makes it.
    """

    name = "conv-odenet"

    def __init__(self, channels, height, width, activation="tanh"):
        self.channels, self.height, self.width = int(channels), int(height), int(width)
        self.activation = activation
        self._act = get_activation(activation)

    def weights(self, dtype):
        """The weights to pass to the solvers: :class:`ConvODENetWeights` of ``dtype``."""
        return ConvODENetWeights(np.dtype(dtype))

    @property
    def state_size(self):
        """c H W: the length of one sample's state."""
        return self.channels * self.height * self.width

    def _images(self, u):
        """(K, B, c H W) as (K, B, c, H, W) (a view)."""
        return u.reshape(u.shape[:2] + (self.channels, self.height, self.width))

    def _check(self, x, u):
        c = self.channels
        if u.ndim != 3 or u.shape[2] != self.state_size or x.shape != (u.shape[0], c, 9 * c + 1):
            raise ConfigError(f"a convolutional ODENet step takes states (K, B, {self.state_size})"
                              f" (c H W = {c} x {self.height} x {self.width}) and layer weights "
                              f"(K, {c}, {9 * c + 1}), got {u.shape} and {x.shape}")
        if x.dtype != u.dtype:
            raise TypeError(f"layer weights are {x.dtype}, states {u.dtype}: use one dtype")

    @staticmethod
    def _dt(dt, u):
        """Step sizes as (K, B, 1), u's dtype (:func:`~mgritnn.cells.odenet.step_rows`), and the
        mask (same shape) of the zero ones."""
        d = step_rows(dt, u)[:, :, None]
        return d, d == 0

    def _preact(self, x, u):
        """a = K * u + b for K layers at once: (K, B, c H W)."""
        return conv2d(x, self._images(u)).reshape(u.shape)

    def step(self, w, x, u, dt, out=None, cache=False):
        """Advance K states through their layers (see :meth:`Cell.step`).

        Parameters
        ----------
        w : ConvODENetWeights (unused but for the protocol)
        x : ndarray, shape (K, c, 9 c + 1)
            Each step's layer weights (module docstring).
        u : ndarray, shape (K, B, c H W)
        dt : float or ndarray, shape (K,) or (K, B)
        out : ndarray, shape (K, B, c H W), optional
        cache : bool
            Also return ``(σ'(a),)``, (K, B, c H W), for :meth:`step_vjp`.

        Returns
        -------
        u_new : ndarray, shape (K, B, c H W)
        cache : tuple, only with ``cache``
        """
        self._check(x, u)
        d, zero = self._dt(dt, u)
        s, ds = self._act(self._preact(x, u))
        new = u + d * s
        if zero.any():
            new = np.where(zero, u, new)
        if out is not None:
            out[...] = new
            new = out
        return (new, (ds,)) if cache else new

    def step_vjp(self, w, x, u, dt, lam_next, grads=None, cache=None, cotangents=None):
        """VJP of :meth:`step`: :math:`\\lambda = \\lambda' + K^T * s`, :math:`s = \\Delta t\\,
        \\sigma'(a) \\odot \\lambda'` (the transposed convolution), and the cotangent of the layer
        weights (K, c, 9 c + 1) (:func:`conv2d_weight_vjp`). ``cotangents`` receives
        ``[(dx,)]``; ``grads`` is left alone.

        Returns
        -------
        lam : ndarray, shape (K, B, c H W)
        dx : ndarray, shape (K, c, 9 c + 1)
        """
        self._check(x, u)
        d, zero = self._dt(dt, u)
        ds = cache[0] if cache is not None else self._act(self._preact(x, u))[1]
        s = self._images(d * ds * lam_next)
        lam = lam_next + conv2d_input_vjp(x, s).reshape(u.shape)
        dx = conv2d_weight_vjp(s, self._images(u))
        if zero.any():
            lam = np.where(zero, lam_next, lam)
            dx[zero.all(axis=(1, 2))] = 0
        if cotangents is not None:
            cotangents[:] = [(dx,)]
        return lam, dx

    def accumulate_grads(self, grads, cache, cotangents):
        """Nothing: the cell has no shared parameters (the layers' are the input cotangents)."""

    def zero_grads(self, w):
        """An empty :class:`ConvODENetGrads`."""
        return ConvODENetGrads()


__all__ = ["ConvODENetCell", "ConvODENetGrads", "ConvODENetWeights", "KSIZE", "conv2d",
           "conv2d_input_vjp", "conv2d_weight_vjp"]
