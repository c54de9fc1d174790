"""The ODENet cell on MGRIT's fused path (issue 22, item 3): every compiled kernel of
``mgritnn.cells.odenet_kernels`` against a slow NumPy twin (plain loops, written here from the
definitions, never importing the kernels), and MGRIT through the compiled chains
(:class:`~mgritnn.cells.base.FusedChains`) against MGRIT stepping the same cell through
:meth:`Cell.step` (``without(cell, FusedChains)``): forward trajectory, adjoint, layer gradients,
residual histories, bit for bit, for hypothesis-drawn depths, widths, batches, levels, cf,
relaxations, cycles, activations and step sizes (per row, with padded steps of size 0)."""
import dataclasses

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mgritnn
import reference as ref
from helpers import assume_hierarchy_fits
from mgritnn.cells.base import FusedChains, has, without
from mgritnn.cells.odenet import ODENetCell
from mgritnn.odenet import ODENet
from mgritnn.solvers import MGRITConfig, MGRITSolver

ACTS = ("tanh", "relu", "smoothrelu")


# ------------------------------------------------------------------------------------------------
# Slow twins: plain loops from the definitions (module docstring of mgritnn.cells.odenet;
# sigma from tests/reference.py)
# ------------------------------------------------------------------------------------------------

def twin_step(act, xk, u, d):
    """One layer [W | b] = xk (w, w + 1) on one state u (B, w), step sizes d (B,): the new state
    and sigma'(a) (B, w)."""
    B, w = u.shape
    new, ds = np.array(u, float), np.zeros((B, w))
    for r in range(B):
        for i in range(w):
            a = xk[i, w] + sum(xk[i, j] * u[r, j] for j in range(w))
            s, ds[r, i] = ref.odenet_sigma(act, a)
            if d[r] != 0:
                new[r, i] = u[r, i] + d[r] * s
    return new, ds


def twin_vjp(xk, d, ds, lam):
    """VJP of one layer at sigma'(a) = ds: lambda (B, w) and s (B, w)."""
    B, w = lam.shape
    out, S = np.array(lam, float), np.zeros((B, w))
    for r in range(B):
        if d[r] == 0:
            continue
        for i in range(w):
            S[r, i] = d[r] * ds[r, i] * lam[r, i]
            for j in range(w):
                out[r, j] += S[r, i] * xk[i, j]
    return out, S


def twin_grad(S, u):
    """[S^T u | sum_rows S] (w, w + 1)."""
    B, w = S.shape
    dx = np.zeros((w, w + 1))
    for r in range(B):
        for i in range(w):
            for j in range(w):
                dx[i, j] += S[r, i] * u[r, j]
            dx[i, w] += S[r, i]
    return dx


def twin_chains(step, X, rd, Y, wr, starts, lens, g, res):
    """Chains Y[wr[c] + i] = step(s, X[rd[c] + i]) (+ g[s + 1]), s = starts[c] + i, in order,
    X may be Y (in place); residual mode with ``res``. ``step(s, v)`` -> new value."""
    for c in range(len(starts)):
        for i in range(lens[c]):
            s = starts[c] + i
            y = step(s, X[rd[c] + i]) + (g[s + 1] if g is not None else 0.0)
            if res is not None and i == lens[c] - 1:
                res[c] = y - Y[wr[c] + i]
            else:
                Y[wr[c] + i] = y


# ------------------------------------------------------------------------------------------------
# The kernels against their twins
# ------------------------------------------------------------------------------------------------

@st.composite
def layer_cases(draw, max_B=300):
    """Layers x (n, w, w + 1), states, per-row step sizes (some rows 0), an activation. B up to
    300 crosses the kernels' row blocks (128)."""
    n, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    B = draw(st.sampled_from([1, 2, 7, 129, max_B]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 31 - 1)))
    x = rng.uniform(-1.5, 1.5, (n, w, w + 1))
    dt = rng.uniform(0.05, 1.0, (n, B))
    dt[:, rng.random(B) < 0.2] = 0.0                     # padded rows: the identity
    return draw(st.sampled_from(ACTS)), x, dt, rng


def _tol(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * max(1.0, np.abs(want).max()))


@settings(max_examples=10)
@given(case=layer_cases())
def test_step_and_vjp_kernels_equal_twins(case):
    act, x, dt, rng = case
    n, w, B = x.shape[0], x.shape[1], dt.shape[1]
    u, lam = rng.normal(size=(n, B, w)), rng.normal(size=(n, B, w))
    cell = ODENetCell(act)
    W = cell.weights(np.float64)
    new, (ds,) = cell.step(W, x, u, dt, cache=True)
    lam0, dx = cell.step_vjp(W, x, u, dt, lam, cache=(ds,))
    for k in range(n):
        want_new, want_ds = twin_step(act, x[k], u[k], dt[k])
        _tol(new[k], want_new)
        _tol(ds[k], want_ds)
        want_lam, S = twin_vjp(x[k], dt[k], want_ds, lam[k])
        _tol(lam0[k], want_lam)
        _tol(dx[k], twin_grad(S, u[k]))
        zero = dt[k] == 0
        assert new[k][zero].tobytes() == u[k][zero].tobytes()      # exactly the identity
        assert lam0[k][zero].tobytes() == lam[k][zero].tobytes()


def _chain_layout(rng, npts, inplace, residual):
    """Chains over points 0 .. npts - 1 as MGRIT runs them: in place (wr = rd + 1) from C-points
    at random cuts, no chain writing a point another one reads (the F-points of each interval;
    in residual mode also the step into the next cut, compared, not stored), or independent steps
    from a gathered array; returns rd, wr, starts, lens (int64)."""
    if inplace:
        cuts = np.unique(np.concatenate([[0, npts - 1], rng.integers(0, npts - 1, 2)]))
        starts, lens = cuts[:-1], np.diff(cuts) - (0 if residual else 1)
        return starts, starts + 1, starts, lens
    k = np.arange(npts - 1)
    return k, k, k, np.ones(npts - 1, np.int64)


@settings(max_examples=10)
@given(case=layer_cases(max_B=200), inplace=st.booleans(), with_g=st.booleans(),
       residual=st.booleans())
def test_chain_kernels_equal_twins(case, inplace, with_g, residual):
    """advance / advance_vjp (keep, g, residual mode) and the layer gradients of
    chain_step_cotangents against the twins, step by step."""
    act, x, dt, rng = case
    n, w, B = x.shape[0], x.shape[1], dt.shape[1]
    cell = ODENetCell(act)
    W = cell.weights(np.float64)
    rd, wr, starts, lens = (a.astype(np.int64) for a in _chain_layout(rng, n + 1, inplace, residual))
    U = rng.normal(size=(n + 1, B, w))
    g = rng.normal(size=(n + 1, B, w)) if with_g else None
    res = np.empty((len(starts), B, w)) if residual else None
    res_want = np.empty((len(starts), B, w)) if residual else None
    # forward
    Y = U.copy() if inplace else np.zeros((n, B, w))
    X = Y if inplace else U[:n].copy()
    Yw = Y.copy()
    Xw = Yw if inplace else X
    keep = cell.chain_cache(W, x, n)
    cell.advance(cell.chain_weights(W), x, dt, X, rd, Y, wr, starts, lens, g=g, keep=keep, res=res)
    dsw = {}

    def fstep(s, v):
        new, dsw[s] = twin_step(act, x[s], v, dt[s])
        return new
    twin_chains(fstep, Xw, rd, Yw, wr, starts, lens, g, res_want)
    _tol(Y, Yw)
    for s, d in dsw.items():
        _tol(keep.ds[s], d)
    if residual:
        _tol(res, res_want)
    # adjoint, linearized at states h (one per step, in a shuffled order fidx)
    h = rng.normal(size=(n + 1, B, w))
    fidx = rng.permutation(n).astype(np.int64)
    lin = cell.chain_cache(W, x[np.argsort(fidx)], n)           # step s's layer at fidx[s]
    k = np.arange(n, dtype=np.int64)
    cell.advance(W, lin.x, dt[np.argsort(fidx)], h[:n].copy(), k, np.empty((n, B, w)), k, k,
                 np.ones(n, np.int64), keep=lin)
    cot = cell.chain_cotangents(W, x, n)
    L = rng.normal(size=(n + 1, B, w))
    Y = L.copy() if inplace else np.zeros((n, B, w))
    X = Y if inplace else L[:n].copy()
    Yw = Y.copy()
    Xw = Yw if inplace else X
    res = np.empty((len(starts), B, w)) if residual else None
    cell.advance_vjp(W, dt, X, rd, Y, wr, starts, lens, h, lin, fidx, g=g, keep=cot, res=res)
    Sw = {}

    def bstep(s, v):
        f = fidx[s]
        _, ds = twin_step(act, lin.x[f], h[f], dt[s])
        out, Sw[f] = twin_vjp(lin.x[f], dt[s], ds, v)
        return out
    twin_chains(bstep, Xw, rd, Yw, wr, starts, lens, g, res_want)
    _tol(Y, Yw)
    if residual:
        _tol(res, res_want)
    (dx,), = cell.chain_step_cotangents(cot)
    for f, S in Sw.items():
        _tol(dx[f], twin_grad(S, h[f]))


# ------------------------------------------------------------------------------------------------
# MGRIT: the fused path against the cell's steps, bit for bit
# ------------------------------------------------------------------------------------------------

def test_the_cell_has_the_fused_chains_and_mgrit_takes_them():
    cell = ODENetCell("tanh")
    assert has(cell, FusedChains) and not has(without(cell, FusedChains), FusedChains)
    m = ODENet(2, 3, 2, 8, seed=0)
    X = np.random.default_rng(0).normal(size=(4, 2))
    u0, _ = m.open(X)
    solver = MGRITSolver(MGRITConfig(levels=2, cf=2))
    _, state, _ = solver.forward(m.cell, m.cell.weights(np.float64), m.params["layers"], u0, m.dt,
                                 T=8)
    assert type(state.prop).__name__ == "_FusedForward"
    _, state, _ = solver.forward(without(m.cell, FusedChains), m.cell.weights(np.float64),
                                 m.params["layers"], u0, m.dt, T=8)
    assert type(state.prop).__name__ == "_ForwardProp"


def _solve(cell, layers, u0, dt, cfg, lam_N):
    """MGRIT forward and adjoint on one process: trajectory, the adjoint at point 0, the layer
    gradients, the residual histories and the evaluation counts."""
    w = cell.weights(u0.dtype)
    solver = MGRITSolver(cfg)
    N = len(layers)
    _, state, fs = solver.forward(cell, w, layers, u0, dt, T=N)
    lam0 = np.full_like(u0, np.nan)
    dxp, ad = solver.adjoint(cell, w, state, lam_N, cell.zero_grads(w), lam_first=lam0)
    return dict(u=state.u.copy(), lam0=lam0, dxp=dxp, fh=fs.history, ah=ad.history,
                evals=(fs.step_evals, ad.step_evals), status=(fs.status, ad.status))


def _assert_same(a, b):
    for key in ("u", "lam0", "dxp"):
        assert a[key].dtype == b[key].dtype
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    for key in ("fh", "ah", "evals", "status"):
        assert a[key] == b[key], key


@st.composite
def mgrit_cases(draw):
    N = draw(st.integers(4, 40))
    w, B = draw(st.integers(1, 5)), draw(st.sampled_from([1, 3, 130]))
    levels = draw(st.sampled_from([1, 2, 3, None]))
    cf = draw(st.integers(2, 4))
    cfg = MGRITConfig(levels=levels, cf=cf, relax=draw(st.sampled_from(["F", "FCF", ("F", "FCF")]))
                      if levels != 1 else "F", cycle=draw(st.sampled_from(["V", "F"])),
                      max_iter=draw(st.integers(1, 3)), adjoint_max_iter=draw(st.integers(1, 3)),
                      skip_first_down=draw(st.booleans()), atol_l2=0.0)
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 31 - 1)))
    layers = rng.uniform(-1.0, 1.0, (N, w, w + 1))
    kind = draw(st.sampled_from(["scalar", "per-step", "per-row"]))
    if kind != "per-row":   # the mean coarse input of per-row step sizes is the GRU's (rows of x)
        cfg = dataclasses.replace(cfg, coarse_input=draw(st.sampled_from(["sample", "mean"])))
    if kind == "scalar":
        dt = 2.0 / N
    elif kind == "per-step":
        dt = rng.uniform(0.01, 0.2, N)
    else:                                    # padded ends of some rows: steps of size 0
        dt = np.full((N, B), 2.0 / N)
        for b in range(B):
            dt[rng.integers(N // 2, N + 1):, b] = 0.0
    return draw(st.sampled_from(ACTS)), layers, rng.normal(size=(B, w)), dt, cfg, \
        rng.normal(size=(B, w))


@settings(max_examples=15)
@given(case=mgrit_cases())
def test_fused_equals_the_cells_steps_bit_for_bit(case):
    """Forward trajectory, adjoint at point 0, layer gradients (the input cotangents), residual
    histories and evaluation counts: the compiled chains give exactly what stepping the cell
    through ``step`` / ``step_vjp`` gives, float64."""
    act, layers, u0, dt, cfg, lam_N = case
    assume_hierarchy_fits(cfg, len(layers))
    cell = ODENetCell(act)
    _assert_same(_solve(cell, layers, u0, dt, cfg, lam_N),
                 _solve(without(cell, FusedChains), layers, u0, dt, cfg, lam_N))


@pytest.mark.parametrize("act", ACTS)
def test_fused_equals_steps_float32_and_thread_counts(act):
    """float32 as well, and the same bits on 1 and 2 numba threads (chains and row blocks in
    parallel)."""
    rng = np.random.default_rng(3)
    N, B, w = 32, 300, 8
    layers = rng.uniform(-0.5, 0.5, (N, w, w + 1)).astype(np.float32)
    u0 = rng.normal(size=(B, w)).astype(np.float32)
    lam_N = rng.normal(size=(B, w)).astype(np.float32)
    cfg = MGRITConfig.preset("layers")
    cell = ODENetCell(act)
    ref = _solve(without(cell, FusedChains), layers, u0, np.float32(1.0 / N), cfg, lam_N)
    assert ref["u"].dtype == np.float32
    threads = mgritnn.config.set_num_threads()
    try:
        for t in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            mgritnn.config.set_num_threads(t)
            _assert_same(_solve(cell, layers, u0, np.float32(1.0 / N), cfg, lam_N), ref)
    finally:
        mgritnn.config.set_num_threads(threads)


@pytest.mark.parametrize("act", ACTS)
def test_model_gradients_fused_equal_unfused_and_serial(act):
    """The ODENet's loss and whole gradient: fused MGRIT == MGRIT through the cell's steps bit for
    bit; one level == the serial sweep bit for bit; a tight tolerance == backpropagation."""
    m = ODENet(3, 5, 4, 24, activation=act, layer_init="independent", seed=1, final_time=2.0)
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(140, 3)), rng.integers(0, 4, 140)
    cfg = MGRITConfig.preset("layers")
    l1, g1, _ = m.loss_and_grad_flat(X, y, cfg)
    fused = m.cell
    try:
        m.cell = without(fused, FusedChains)
        l2, g2, _ = m.loss_and_grad_flat(X, y, cfg)
    finally:
        m.cell = fused
    assert l1 == l2 and np.array_equal(g1, g2)
    l0, g0, _ = m.loss_and_grad_flat(X, y)
    lo, go, _ = m.loss_and_grad_flat(X, y, MGRITConfig(levels=1))
    assert l0 == lo and np.array_equal(g0, go)
    tight = MGRITConfig(levels=3, cf=2, max_iter=30, adjoint_max_iter=30, atol_l2=1e-14)
    lt, gt, info = m.loss_and_grad_flat(X, y, tight)
    assert info["forward"].status == 0 and info["adjoint"].status == 0
    assert lt == pytest.approx(l0, rel=1e-12)
    np.testing.assert_allclose(gt, g0, rtol=1e-9, atol=1e-9 * np.abs(g0).max())
