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

import numba
import numpy as np

from ..errors import ConfigError
from . import odenet_kernels as _k
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


class ChainCache:
    """The linearizations of n steps in :meth:`ODENetCell.advance`'s chains: the layer weights
    ``x`` (n, w, w + 1) and σ'(a) ``ds`` (n, B, w), allocated by the first ``advance`` that keeps
    them (None before)."""

    def __init__(self, x, ds):
        self.x, self.ds = x, ds


class ChainCotangents:
    """The cotangents of n steps in :meth:`ODENetCell.advance_vjp`'s chains: s (n, B, w) per
    step (``S``, zeroed when the first VJP chain that keeps them allocates it), and the states
    ``u`` the steps were linearized at (``uidx``: step k's row of ``u``), from which
    :meth:`ODENetCell.chain_step_cotangents` forms the layer gradients."""

    def __init__(self, xshape, n, dtype):
        self.xshape, self.n, self.dtype = tuple(xshape), int(n), np.dtype(dtype)
        self.S = self.u = self.uidx = None


def _rows(dt, B, dtype):
    """Step sizes (n,) or (n, B) as (n, B), ``dtype``, C-contiguous, without a copy when they
    already are (MGRIT's prepared arrays)."""
    d = np.asarray(dt, dtype=dtype)
    if d.ndim == 2 and d.shape[1] == B and d.flags.c_contiguous:
        return d
    if d.ndim == 1:
        d = d[:, None]
    return np.ascontiguousarray(np.broadcast_to(d, (d.shape[0], B)))


def step_rows(dt, u):
    """The step sizes of K steps of the states ``u`` (K, B, ...) as the layer kernels take them:
    (K, B), ``u``'s dtype, C-contiguous, from a scalar, (K,) or (K, B) (a ConfigError
    otherwise). Both ODENet cells (dense and convolutional) take their step sizes so."""
    d = np.asarray(dt, u.dtype)
    K, B = u.shape[0], u.shape[1]
    if d.ndim == 0:
        d = np.broadcast_to(d, (K,))
    if d.ndim == 1:
        if d.shape != (K,):
            raise ConfigError(f"step sizes of shape {d.shape} for {K} states: give a scalar, "
                              f"(K,) or (K, B)")
        d = d[:, None]
    elif d.shape != (K, B):
        raise ConfigError(f"step sizes of shape {d.shape} for states {u.shape}: give a "
                          f"scalar, (K,) or (K, B)")
    return np.ascontiguousarray(np.broadcast_to(d, (K, B)))


class ODENetCell(Cell):
    """One residual layer per step, :math:`u' = u + \\Delta t\\, \\sigma(W u + b)` (module docstring).

    Parameters
    ----------
    activation : {"tanh", "relu", "smoothrelu"}

    Notes
    -----
    The core of the step protocol and :class:`~mgritnn.cells.base.FusedChains`
    (:mod:`mgritnn.cells.base`): the serial solver steps it through :meth:`step`, MGRIT runs its
    relaxations, residuals and sweeps as compiled chains (:meth:`advance`, :meth:`advance_vjp`;
    :mod:`mgritnn.cells.odenet_kernels`), with bitwise the same arithmetic per sample; DEER cannot
    solve it. Its own coarse cell (forward Euler with the coarse step size). A step of size 0 is exactly the
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

    _dt = staticmethod(lambda dt, u: step_rows(dt, u))

    @staticmethod
    def _check(x, u):
        if u.ndim != 3 or x.ndim != 3 or x.shape != (u.shape[0], u.shape[2], u.shape[2] + 1):
            raise ConfigError(f"an ODENet step takes states (K, B, w) and layer weights "
                              f"(K, w, w + 1), got {u.shape} and {x.shape}")
        if x.dtype != u.dtype:
            raise TypeError(f"layer weights are {x.dtype}, states {u.dtype}: use one dtype")

    def _kargs(self, dtype):
        """The activation's code and SmoothReLU's eta as the kernels take them."""
        return _k.ACT_CODES[self.activation], np.dtype(dtype).type(SMOOTHRELU_ETA)

    def step(self, w, x, u, dt, out=None, cache=False):
        """Advance K states through their layers (see :meth:`Cell.step`), one compiled call
        (:func:`~mgritnn.cells.odenet_kernels._step_forward`, the rows' arithmetic of MGRIT's
        chains).

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
        d = self._dt(dt, u)
        x, u = np.ascontiguousarray(x), np.ascontiguousarray(u)
        new = np.empty_like(u)
        ds = np.empty_like(u)
        _k._step_forward(x, u, d, new, True, ds, *self._kargs(u.dtype), _k.ROW_BLOCK)
        if out is not None:
            out[...] = new
            new = out
        return (new, (ds,)) if cache else new

    def step_vjp(self, w, x, u, dt, lam_next, grads=None, cache=None, cotangents=None):
        """VJP of :meth:`step`: :math:`\\lambda = \\lambda' + W^T s`, :math:`s = \\Delta t\\,
        \\sigma'(a) \\odot \\lambda'`, and the cotangent of the layer weights
        ``dx = [s^T u | sum_B s]`` (K, w, w + 1). ``cotangents`` receives ``[(dx,)]``; ``grads``
        (an empty :class:`ODENetGrads`) is left alone. Compiled (the rows' arithmetic of MGRIT's
        VJP chains and of their parameter gradients).

        Returns
        -------
        lam : ndarray, shape (K, B, w)
        dx : ndarray, shape (K, w, w + 1)
        """
        self._check(x, u)
        d = self._dt(dt, u)
        x, u = np.ascontiguousarray(x), np.ascontiguousarray(u)
        if cache is not None:
            ds = np.ascontiguousarray(cache[0], dtype=u.dtype)
        else:
            ds = self.step(w, x, u, d, cache=True)[1][0]
        lam_next = np.ascontiguousarray(lam_next, dtype=u.dtype)
        lam = np.empty_like(lam_next)
        S = np.empty_like(lam_next)
        dx = np.empty(x.shape, x.dtype)
        _k._step_vjp(x, lam_next, d, ds, u, lam, S, dx, _k.ROW_BLOCK)
        if cotangents is not None:
            cotangents[:] = [(dx,)]
        return lam, dx

    # -- chains of layer steps in place (MGRIT's propagators) ------------------------------------

    def chain_weights(self, w):
        """``w`` itself: the layers' weights are the steps' inputs (``x`` of :meth:`advance`)."""
        return w

    def chain_cache(self, w, x, n):
        """Storage for the linearizations of n steps with layer weights ``x`` (n, w, w + 1): a
        :class:`ChainCache` whose σ'(a) (n, B, w) :meth:`advance` allocates and fills with
        ``keep`` (B comes with the states)."""
        return ChainCache(np.ascontiguousarray(x), None)

    def chain_cotangents(self, w, x, n):
        """Storage for the cotangents of n steps: a :class:`ChainCotangents` whose s (n, B, w),
        zeroed, :meth:`advance_vjp` allocates and fills with ``keep`` (with the states the steps
        are linearized at, from which :meth:`chain_step_cotangents` makes the layer gradients)."""
        return ChainCotangents(np.shape(x)[1:], n, x.dtype)

    @staticmethod
    def chain_step_cache(cache, u):
        """``(σ'(a),)`` (n, B, w) of n steps, as :meth:`step` gives it, from a filled
        :class:`ChainCache` (the trajectory ``u`` is not needed)."""
        return (cache.ds,)

    @staticmethod
    def chain_step_cotangents(cot):
        """``[(dx,)]`` of n steps as :meth:`step_vjp` records them, dx (n, w, w + 1) the layers'
        gradients ``[s^T u | sum_B s]``, formed here from the kept s and states (layers in
        parallel, rows summed in order: bitwise :meth:`step_vjp`'s)."""
        dx = np.zeros((cot.n,) + cot.xshape, cot.dtype)
        if cot.S is not None and cot.n:
            _k._layer_grads(cot.S, cot.u, cot.uidx, dx, ODENetCell._chunks(cot.n))
        return [(dx,)]

    @staticmethod
    def _chunks(units):
        return max(1, min(int(units), 8 * numba.get_num_threads()))

    def advance(self, cw, x, dt, X, rd, Y, wr, starts, lens, g=None, keep=None, res=None):
        """Chains of layer steps in place: ``Y[wr[c] + i] = Phi_s(X[rd[c] + i]) (+ g[s + 1])``
        for ``i < lens[c]``, ``s = starts[c] + i``, step s with the layer weights ``x[s]``; one
        compiled call (:func:`~mgritnn.cells.odenet_kernels._chains_forward`), chains and blocks
        of samples in parallel; each state bitwise what :meth:`step` computes.

        Parameters
        ----------
        cw : ODENetWeights
        x : ndarray, shape (n, w, w + 1)
        dt : ndarray, shape (n, B)
        X, Y : ndarray, shape (*, B, w), C-contiguous
        rd, wr, starts, lens : ndarray, shape (C,), int64
        g : ndarray, shape (n + 1, B, w), optional
        keep : ChainCache, optional
            Receives σ'(a) of step s at index s.
        res : ndarray, shape (C, B, w), optional
            Residual mode (see :meth:`mgritnn.cells.gru.GRUCell.advance`).
        """
        B, w = X.shape[1:]
        if keep is not None:
            if keep.ds is None or keep.ds.shape[1] != B or keep.ds.dtype != X.dtype:
                keep.ds = np.empty((len(keep.x), B, w), X.dtype)
        self._chains(False, np.ascontiguousarray(x), None, None, dt, X, rd, Y, wr, starts, lens, g,
                     res, None if keep is None else keep.ds)

    def advance_vjp(self, cw, dt, X, rd, Y, wr, starts, lens, ulin, lin, fidx, g=None, keep=None,
                    res=None):
        """Chains of step VJPs in place: ``Y[wr[c] + i] = (dPhi_s/du)^T X[rd[c] + i] (+ g[s + 1])``,
        step s linearized at ``ulin[fidx[s]]`` with the weights and σ'(a) at index ``fidx[s]`` of
        ``lin`` (a :class:`ChainCache` that :meth:`advance` filled); with ``keep`` (a
        :class:`ChainCotangents`) its s goes to index ``fidx[s]``, the states ``ulin`` recorded
        for the layer gradients. Other arguments as in :meth:`advance`."""
        B, w = X.shape[1:]
        if keep is not None:
            if keep.S is None:
                keep.S = np.zeros((keep.n, B, w), X.dtype)
                keep.uidx = np.arange(keep.n, dtype=np.int64)
            keep.u = ulin
        self._chains(True, lin.x, lin.ds, fidx, dt, X, rd, Y, wr, starts, lens, g, res,
                     None if keep is None else keep.S)

    def _chains(self, vjp, x, lds, fidx, dt, X, rd, Y, wr, starts, lens, g, res, K):
        """The common driver of :meth:`advance` and :meth:`advance_vjp`: one call of
        :func:`~mgritnn.cells.odenet_kernels._chains` (``K``: where what is kept goes, or None)."""
        B, w = X.shape[1:]
        dtype = X.dtype
        empty = np.empty((0, B, w), dtype)
        units = len(starts) * -(-B // _k.ROW_BLOCK)
        _k._chains(vjp, x, empty if lds is None else lds,
                   np.empty(0, np.int64) if fidx is None else fidx, _rows(dt, B, dtype), X, rd,
                   Y, wr, starts, lens, empty if g is None else g, empty if res is None else res,
                   K is not None, empty if K is None else K, *self._kargs(dtype), _k.ROW_BLOCK,
                   self._chunks(units))

    def accumulate_grads(self, grads, cache, cotangents):
        """Nothing: the cell has no shared parameters (the layers' are the input cotangents)."""

    def zero_grads(self, w):
        """An empty :class:`ODENetGrads`."""
        return ODENetGrads()
