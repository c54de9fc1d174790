"""Compiled kernels of the ODENet's residual layer (:mod:`mgritnn.cells.odenet`).

One layer step of K states, :math:`u' = u + \\Delta t\\, \\sigma(W u + b)`, its VJP, and MGRIT's
in-place chains of such steps (:class:`~mgritnn.cells.base.FusedChains`), built from the same
row helpers, so that a state's result is bitwise the same whichever path computes it (the serial
sweep through :meth:`ODENetCell.step`, MGRIT's chains, any number of threads or ranks).

Every row of a state (a sample) evolves on its own through the layers, forward and backward: a
row's new state reads only that row. So the chains run as independent units of (chain, block of
rows), each through all the chain's steps (chains and samples in parallel on the threads); the
block size changes nothing in the results. The one reduction over the rows, the parameter
gradient :math:`[s^T u \\,|\\, \\sum_B s]` of a layer, is its own pass (:func:`_layer_grads`):
the VJP chains keep :math:`s = \\Delta t\\, \\sigma'(a) \\odot \\lambda'` per step, and the
gradients of all steps are formed afterwards, layers in parallel, rows summed in order.

Arithmetic per row, in this order (the definition every path shares):

* forward: :math:`a_i = (\\sum_j W_{ij} u_j) + b_i`, :math:`u'_i = u_i + \\Delta t\\,
  \\sigma(a_i)`; a row of step size 0 is copied (exactly the identity);
* VJP: :math:`s_i = (\\Delta t\\, \\sigma'(a_i))\\, \\lambda'_i`, :math:`\\lambda_j = \\lambda'_j +
  (\\sum_i s_i W_{ij})`; a row of step size 0 passes :math:`\\lambda'` unchanged and has
  s = 0;
* gradient: :math:`dW_{ij} = \\sum_r s_{ri} u_{rj}` (one product over all rows),
  :math:`db_i = \\sum_r s_{ri}` (rows ascending, from +0).

The products run per block of ``ROW_BLOCK`` rows (one BLAS call each; the gradient's one per
step over all rows), the same blocks on every path, so the results are bitwise the same on every
path, for any number of threads or ranks (as the GRU's fixed row blocks,
:func:`mgritnn.config.row_blocks`); the elementwise parts run over contiguous rows and vectorize.

Activation codes: 0 tanh (:func:`mgritnn.cells.activations.tanh`, vectorizable), 1 ReLU, 2 SmoothReLU.
"""
import numba
import numpy as np
from numba import prange

from ..config import JIT, JIT_PAR
from .activations import tanh

#: Activation name -> the kernels' code.
ACT_CODES = {"tanh": 0, "relu": 1, "smoothrelu": 2}

#: Rows per unit of work of the chains (results do not depend on it).
ROW_BLOCK = 128


@numba.njit(**JIT)
def _act_row(a, act, eta, s, ds):
    """s, ds (w,) = sigma(a), sigma'(a) of one row a (w,)."""
    one = a.dtype.type(1.0)
    zero = a.dtype.type(0.0)
    n = a.shape[0]
    if act == 0:
        for i in range(n):
            t = tanh(a[i])
            s[i] = t
            ds[i] = one - t * t
    elif act == 1:
        for i in range(n):
            v = a[i]
            s[i] = v if v > zero else zero
            ds[i] = one if v > zero else zero
    else:
        half = a.dtype.type(0.5)
        four_eta = a.dtype.type(4.0) * eta
        two_eta = a.dtype.type(2.0) * eta
        quarter_eta = eta / a.dtype.type(4.0)
        two = a.dtype.type(2.0)
        for i in range(n):
            v = a[i]
            if abs(v) < eta:
                s[i] = v * v / four_eta + v / two + quarter_eta
                ds[i] = v / two_eta + half
            else:
                s[i] = v if v > zero else zero
                ds[i] = one if v >= eta else zero


@numba.njit(**JIT)
def _weights(x, WT, Wc):
    """WT = W^T and Wc = W (w, w), C-contiguous, of a layer's input x = [W | b] (w, w + 1)."""
    w = WT.shape[0]
    for i in range(w):
        for j in range(w):
            WT[j, i] = x[i, j]
            Wc[i, j] = x[i, j]


@numba.njit(**JIT)
def _rows_forward(x, WT, u, dt, out, keep, ds_out, act, eta, A, SA, DA, r0, r1):
    """Rows r0:r1 (at most ``A.shape[0]``) of one step: out (B, w) = Phi(u (B, w)); with
    ``keep`` sigma'(a) into ds_out (B, w). WT = W^T (:func:`_weights`); A, SA, DA (R, w) are
    work arrays. One product per block of rows (the same blocks on every path: bitwise the same
    results); out may not alias u."""
    w = u.shape[1]
    R = r1 - r0
    Ab = A[:R]
    np.dot(u[r0:r1], WT, Ab)
    for q in range(R):
        for i in range(w):
            Ab[q, i] += x[i, w]
    af = Ab.reshape(R * w)
    _act_row(af, act, eta, SA[:R].reshape(R * w), DA[:R].reshape(R * w))
    for q in range(R):
        r = r0 + q
        d = dt[r]
        if d == 0:
            for i in range(w):
                out[r, i] = u[r, i]
        else:
            for i in range(w):
                out[r, i] = u[r, i] + d * SA[q, i]
        if keep:
            for i in range(w):
                ds_out[r, i] = DA[q, i]


@numba.njit(**JIT)
def _rows_vjp(Wc, lam, dt, ds, out, S, T, r0, r1):
    """Rows r0:r1 (at most ``T.shape[0]``) of one step's VJP at the linearization ds =
    sigma'(a) (B, w): out (B, w) = lam + s W with s = (dt sigma'(a)) lam into S (B, w); Wc = W
    (:func:`_weights`), T (R, w) a work array. out may not alias lam."""
    w = lam.shape[1]
    R = r1 - r0
    zero = lam.dtype.type(0.0)
    for r in range(r0, r1):
        d = dt[r]
        if d == 0:
            for i in range(w):
                S[r, i] = zero
        else:
            for i in range(w):
                S[r, i] = (d * ds[r, i]) * lam[r, i]
    Tb = T[:R]
    np.dot(S[r0:r1], Wc, Tb)
    for q in range(R):
        r = r0 + q
        if dt[r] == 0:
            for i in range(w):
                out[r, i] = lam[r, i]
        else:
            for i in range(w):
                out[r, i] = lam[r, i] + Tb[q, i]


@numba.njit(**JIT)
def _layer_grad(S, u, dx, G):
    """dx (w, w + 1) = [S^T u | sum_rows S] of one step (S, u (B, w)): one product, and the bias
    rows in order from +0; G (w, w) a work array."""
    B, w = S.shape
    zero = S.dtype.type(0.0)
    np.dot(S.T, u, G)
    for i in range(w):
        for j in range(w):
            dx[i, j] = G[i, j]
        dx[i, w] = zero
    for r in range(B):
        for i in range(w):
            dx[i, w] += S[r, i]


@numba.njit(**JIT_PAR)
def _layer_grads(S, u, idx, dx, nchunks):
    """dx[k] = [S[k]^T u[idx[k]] | sum_rows S[k]] for every step k, steps in parallel
    (``nchunks`` blocks of steps; results do not depend on it)."""
    K, B, w = S.shape
    for p in prange(nchunks):
        G = np.empty((w, w), S.dtype)
        for k in range(p * K // nchunks, (p + 1) * K // nchunks):
            _layer_grad(S[k], u[idx[k]], dx[k], G)


@numba.njit(**JIT)
def _work(like, w, rb):
    """The work arrays of a thread, ``like``'s dtype: W^T and W (w, w), and three (rb, w)."""
    t = like.dtype
    return (np.empty((w, w), t), np.empty((w, w), t), np.empty((rb, w), t), np.empty((rb, w), t),
            np.empty((rb, w), t))


@numba.njit(**JIT_PAR)
def _step_forward(x, u, dt, out, keep, ds_out, act, eta, rb):
    """K independent steps: out[k] = Phi_k(u[k]) (K, B, w), sigma'(a) into ds_out with keep;
    states in parallel, rows in blocks of rb."""
    K, B, w = u.shape
    for k in prange(K):
        WT, Wc, A, SA, DA = _work(u, w, rb)
        _weights(x[k], WT, Wc)
        for r0 in range(0, B, rb):
            _rows_forward(x[k], WT, u[k], dt[k], out[k], keep, ds_out[k] if keep else ds_out[0],
                          act, eta, A, SA, DA, r0, min(B, r0 + rb))


@numba.njit(**JIT_PAR)
def _step_vjp(x, lam, dt, ds, u, out, S, dx, rb):
    """K independent step VJPs at their linearizations ds (K, B, w) and states u: out[k], S[k]
    and the layer gradients dx[k] (:func:`_layer_grad`), states in parallel."""
    K, B, w = lam.shape
    for k in prange(K):
        WT = np.empty((w, w), lam.dtype)
        Wc = np.empty((w, w), lam.dtype)
        T = np.empty((rb, w), lam.dtype)
        _weights(x[k], WT, Wc)
        for r0 in range(0, B, rb):
            _rows_vjp(Wc, lam[k], dt[k], ds[k], out[k], S[k], T, r0, min(B, r0 + rb))
        _layer_grad(S[k], u[k], dx[k], WT)


@numba.njit(**JIT)
def _store_rows(y, g, s, Y, wpt, res, c, last, r0, r1):
    """Rows r0:r1 of where a chain step's result y goes (see :func:`_chains_forward`)."""
    has_g = g.shape[0] > 0
    w = y.shape[1]
    if last and res.shape[0] > 0:
        for r in range(r0, r1):
            for i in range(w):
                if has_g:
                    res[c, r, i] = y[r, i] + g[s + 1, r, i] - Y[wpt, r, i]
                else:
                    res[c, r, i] = y[r, i] - Y[wpt, r, i]
    elif has_g:
        for r in range(r0, r1):
            for i in range(w):
                Y[wpt, r, i] = y[r, i] + g[s + 1, r, i]


@numba.njit(**JIT_PAR)
def _chains(vjp, ax, lds, fidx, dt, X, rd, Y, wr, starts, lens, g, res, keep, K, act, eta, rb,
            nchunks):
    """Chains in place: ``Y[wr[c] + i] = Psi_s(X[rd[c] + i]) (+ g[s + 1])``, s = starts[c] + i,
    i < lens[c]; in residual mode (res has C entries) the last step of chain c gives
    res[c] = Psi_s(..) (+ g[s + 1]) - Y[wr[c] + lens[c] - 1] instead of being stored.

    Forward (``vjp`` false): Psi_s = Phi_s with the layer ax[s]; with ``keep`` sigma'(a) of step s
    goes to K[s] (lds, fidx unused). VJP: Psi_s = (dPhi_s/du)^T, linearized with the layer
    ax[f] and sigma'(a) lds[f], f = fidx[s]; with ``keep`` s = (dt sigma'(a)) lambda' goes to K[f].
    Units (chain, block of rb rows) run in parallel, ``nchunks`` blocks of them (the results do
    not depend on rb or nchunks)."""
    C = starts.shape[0]
    B, w = X.shape[1], X.shape[2]
    nrb = (B + rb - 1) // rb
    direct = g.shape[0] == 0
    units = C * nrb
    for p in prange(nchunks):
        WT, Wc, A, SA, DA = _work(X, w, rb)
        tmp = np.empty((B, w), X.dtype)
        Kw = np.empty((B, w), X.dtype)
        for q in range(p * units // nchunks, (p + 1) * units // nchunks):
            c = q // nrb
            r0 = (q % nrb) * rb
            r1 = min(B, r0 + rb)
            for i in range(lens[c]):
                st = starts[c] + i
                f = fidx[st] if vjp else st
                wpt = wr[c] + i
                last = i == lens[c] - 1 and res.shape[0] > 0
                y = Y[wpt] if direct and not last else tmp
                kt = K[f] if keep else Kw
                _weights(ax[f], WT, Wc)
                if vjp:
                    _rows_vjp(Wc, X[rd[c] + i], dt[st], lds[f], y, kt, A, r0, r1)
                else:
                    _rows_forward(ax[f], WT, X[rd[c] + i], dt[st], y, keep, kt, act, eta, A,
                                  SA, DA, r0, r1)
                _store_rows(y, g, st, Y, wpt, res, c, i == lens[c] - 1, r0, r1)
