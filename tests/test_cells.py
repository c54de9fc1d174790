"""Cell kernels against the NumPy twins, the dot-product test of the step VJP, and invariances
(thread count, how many states are stepped together, fused sweep vs step API)."""
import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import reference as ref
from mgritnn.cells import GRUGrads, GRUWeights, get_cell, project
from mgritnn.model import param_shapes
from strategies import ALL_CELLS, problems

TOL = {np.float64: 1e-12, np.float32: 1e-5}


def assert_close(got, want, dtype, scale=None):
    """rtol of the dtype, with an atol of the same size relative to the array's scale (entries near
    zero). ``scale``: the size of the terms a sum-shaped result was made of, where it is larger
    (a product ``a @ b`` that cancels is exact only to eps * max(|a| @ |b|), not to eps * |a @ b|)."""
    tol = TOL[np.dtype(dtype).type]
    scale = max(float(np.max(np.abs(want))), 1e-30, scale or 0.0)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


def random_params(I, H, C, L, dtype, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return {n: (scale * rng.uniform(-1, 1, s)).astype(dtype) for n, s in param_shapes(I, H, C, L)}


def states(K, L, B, H, dtype, seed):
    return np.random.default_rng(seed).uniform(-1, 1, (K, L, B, H)).astype(dtype)


# --------------------------------------------------------------------------------------------
# step API == twin
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(p=problems(cells=ALL_CELLS), K=st.integers(1, 4))
def test_step_equals_twin(p, K, dtype):
    L, B, H, I = p["L"], p["B"], p["H"], p["I"]
    params = {k: v.astype(dtype) for k, v in p["params"].items()}
    w = GRUWeights.from_params(params, L)
    rng = np.random.default_rng(p["seed"])
    x = rng.normal(size=(K, B, I)).astype(dtype)
    h = states(K, L, B, H, dtype, p["seed"] + 1)
    dts = rng.choice([0.5, 1.0, 3.0], size=K) if p["cell"] != "classic" else np.ones(K)
    ax0 = project(x, params["weight_ih_l0"], params["bias_ih_l0"])
    out = get_cell(p["cell"]).step(w, ax0, h, dts)
    for k in range(K):
        want, _ = ref.stack_step(p["cell"], params, L, x[k], h[k], dts[k])
        assert_close(out[k], want, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(p=problems(cells=ALL_CELLS), K=st.integers(1, 3))
def test_step_vjp_equals_twin(p, K, dtype):
    L, B, H, I, cell = p["L"], p["B"], p["H"], p["I"], p["cell"]
    params = {k: v.astype(dtype) for k, v in p["params"].items()}
    w = GRUWeights.from_params(params, L)
    rng = np.random.default_rng(p["seed"])
    x = rng.normal(size=(K, B, I)).astype(dtype)
    h = states(K, L, B, H, dtype, p["seed"] + 1)
    lam_next = states(K, L, B, H, dtype, p["seed"] + 2)
    dts = np.full(K, p["dt"])
    ax0 = project(x, params["weight_ih_l0"], params["bias_ih_l0"])
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    lam, dax0 = get_cell(cell).step_vjp(w, ax0, h, dts, lam_next,
                                        grads=GRUGrads.from_params(grads, L))
    want_g = {k: np.zeros_like(v, dtype=np.float64) for k, v in params.items()}
    for k in range(K):
        _, caches = ref.stack_step(cell, params, L, x[k], h[k], p["dt"])
        lam_k, dx_k, g = ref.stack_step_vjp(cell, params, L, caches, lam_next[k], p["dt"])
        assert_close(lam[k], lam_k, dtype)
        assert_close(dax0[k] @ params["weight_ih_l0"], dx_k, dtype,
                     scale=float(np.max(np.abs(dax0[k]) @ np.abs(params["weight_ih_l0"]))))
        for name, v in g.items():
            want_g[name] += v
    got_x0 = dax0.reshape(-1, 3 * H).T @ x.reshape(-1, I)
    assert_close(got_x0, want_g["weight_ih_l0"], dtype,
                 scale=float(np.max(np.abs(dax0.reshape(-1, 3 * H)).T @ np.abs(x.reshape(-1, I)))))
    for name, v in grads.items():
        if name.startswith("head") or name in ("weight_ih_l0", "bias_ih_l0"):
            assert not v.any()      # left to the caller (one GEMM over the whole sequence)
            continue
        assert_close(v, want_g[name], dtype)


@given(p=problems(max_T=1, cells=ALL_CELLS), K=st.integers(1, 3), data=st.data())
def test_step_vjp_dot_product(p, K, data):
    """<J v, w> = <v, J^T w> for the Jacobian of the step w.r.t. (h, ax0); J v by central differences."""
    L, B, H, I, cell = p["L"], p["B"], p["H"], p["I"], p["cell"]
    w = GRUWeights.from_params(p["params"], L)
    rng = np.random.default_rng(p["seed"])
    h = states(K, L, B, H, np.float64, p["seed"] + 1)
    ax0 = rng.normal(size=(K, B, 3 * H))
    v_h, v_a = rng.normal(size=h.shape), rng.normal(size=ax0.shape)
    wt = rng.normal(size=h.shape)
    dts = np.full(K, p["dt"])
    c = get_cell(cell)
    eps = 1e-6
    Jv = (c.step(w, ax0 + eps * v_a, h + eps * v_h, dts)
          - c.step(w, ax0 - eps * v_a, h - eps * v_h, dts)) / (2 * eps)
    lam, dax0 = c.step_vjp(w, ax0, h, dts, wt)
    lhs = np.sum(Jv * wt)
    rhs = np.sum(v_h * lam) + np.sum(v_a * dax0)
    assert abs(lhs - rhs) <= 1e-6 * (abs(lhs) + abs(rhs)) + 1e-9


# --------------------------------------------------------------------------------------------
# fused sweep and BPTT == twin; invariances
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(p=problems())
def test_sequence_forward_equals_twin(p, dtype):
    L, B, H, cell = p["L"], p["B"], p["H"], p["cell"]
    params = {k: v.astype(dtype) for k, v in p["params"].items()}
    w = GRUWeights.from_params(params, L)
    x = np.swapaxes(p["X"], 0, 1).astype(dtype)
    h0 = states(1, L, B, H, dtype, p["seed"])[0]
    seq = get_cell(cell).sequence_forward(w, project(x, w.Wx[0], w.bx[0]), h0, p["dt"], keep=False)
    want, _ = ref.sequence(cell, params, L, x, h0, p["dt"])
    for l in range(L):
        assert_close(seq.hs[l], want[:, l], dtype)


def _traj_by_steps(cell, w, ax0, h0, dt):
    hs = [h0[None]]
    for t in range(ax0.shape[0]):
        hs.append(cell.step(w, ax0[t:t + 1], hs[-1], dt))
    return np.concatenate(hs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", ["classic", "implicit"])
@pytest.mark.parametrize("H, L", [(11, 3), (300, 1)])
def test_fused_sweep_equals_step_api_bitwise(cell, dtype, H, L):
    """The property 'MGRIT with one level == serial' rests on: same arithmetic, bit for bit.
    B = 70 gives three row blocks (H = 11) or two (H = 300: W_h larger than a cache, bigger blocks)."""
    T, B, I = 6, 70, 5
    params = random_params(I, H, 3, L, dtype, 1)
    w = GRUWeights.from_params(params, L)
    x = np.random.default_rng(2).normal(size=(T, B, I)).astype(dtype)
    ax0 = project(x, w.Wx[0], w.bx[0])
    h0 = states(1, L, B, H, dtype, 3)[0]
    c = get_cell(cell)
    seq = c.sequence_forward(w, ax0, h0, 0.7)
    stepped = _traj_by_steps(c, w, ax0, h0, 0.7)
    for l in range(L):
        assert np.array_equal(seq.hs[l], stepped[:, l])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_independent_of_batching_states_bitwise(dtype):
    """Stepping K states together equals stepping each alone, bit for bit (rank-count invariance)."""
    K, L, B, H, I = 5, 2, 40, 9, 4
    params = random_params(I, H, 3, L, dtype, 4)
    w = GRUWeights.from_params(params, L)
    rng = np.random.default_rng(5)
    ax0 = project(rng.normal(size=(K, B, I)).astype(dtype), w.Wx[0], w.bx[0])
    h = states(K, L, B, H, dtype, 6)
    lam_next = states(K, L, B, H, dtype, 7)
    dts = np.array([1.0, 4.0, 16.0, 0.5, 2.0])
    c = get_cell("implicit")
    together = c.step(w, ax0, h, dts)
    lam_t, dax_t = c.step_vjp(w, ax0, h, dts, lam_next)
    for k in range(K):
        s = slice(k, k + 1)
        assert np.array_equal(c.step(w, ax0[s], h[s], dts[s]), together[s])
        lam_k, dax_k = c.step_vjp(w, ax0[s], h[s], dts[s], lam_next[s])
        assert np.array_equal(lam_k, lam_t[s]) and np.array_equal(dax_k, dax_t[s])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_independent_of_thread_count_bitwise(dtype):
    import mgritnn
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs NUMBA_NUM_THREADS >= 2")
    m = mgritnn.GRUClassifier(5, 13, 4, num_layers=2, dtype=dtype, seed=3)
    X = np.random.default_rng(0).normal(size=(70, 9, 5))
    y = np.arange(70) % 4
    before = numba.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            numba.set_num_threads(n)
            loss, g, _ = m.loss_and_grad_flat(X, y)
            results.append((loss, g))
    finally:
        numba.set_num_threads(before)
    assert results[0][0] == results[1][0]
    assert np.array_equal(results[0][1], results[1][1])


def test_step_rejects_bad_shapes_and_dt():
    params = random_params(3, 4, 2, 2, np.float64, 0)
    w = GRUWeights.from_params(params, 2)
    c = get_cell("classic")
    h = np.zeros((2, 2, 3, 4))
    ax0 = np.zeros((2, 3, 12))
    with pytest.raises(ValueError, match="shape"):
        c.step(w, ax0[:1], h, 1.0)
    with pytest.raises(ValueError, match="do not fit"):
        c.step(w, ax0, h.astype(np.float32), 1.0)
    with pytest.raises(ValueError, match="dt"):
        c.step(w, ax0, h, -1.0)
    with pytest.raises(ValueError, match="unknown cell"):
        get_cell("lstm")


# --------------------------------------------------------------------------------------------
# small products, subnormal flushing, and the stack kernels (MGRIT's propagators)
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("K, M", [(5, 15), (64, 192), (7, 3), (100, 300)])
def test_small_product_equals_numpy_and_is_row_by_row(K, M, dtype):
    """``_mm``: compiled loops (``_mm_own``) for <= _SMALL_ROWS rows of a small matrix, BLAS
    otherwise; equal to NumPy's product. In the compiled loops a row's result does not depend on
    the rows computed with it (one at a time, or in the fours of the lockstep kernels); BLAS makes
    no such promise (1 x 100 by 100 x 300 rounds differently alone and in pairs here)."""
    from mgritnn.cells import gru
    rng = np.random.default_rng(K + M)
    A = rng.normal(size=(9, K)).astype(dtype)
    W = rng.normal(size=(K, M)).astype(dtype)
    for rows in range(2, 10):               # rows 1 .. rows-1
        out = np.full((9, M), np.nan, dtype)
        gru._mm(A, W, out, 1, rows)
        assert np.all(np.isnan(out[:1])) and np.all(np.isnan(out[rows:]))
        assert_close(out[1:rows], A[1:rows] @ W, dtype)
    if K * M > gru._SMALL_WEIGHT:
        return
    one_by_one = np.empty((9, M), dtype)
    for b in range(9):
        gru._mm(A, W, one_by_one, b, b + 1)
    for rows in (2, 9):
        together = np.empty((9, M), dtype)
        gru._mm_own(A, W, together, 0, rows)
        assert np.array_equal(one_by_one[:rows], together[:rows])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flush_subnormal(dtype):
    from mgritnn.cells.activations import flush_subnormal
    tiny = np.finfo(dtype).tiny
    x = np.array([tiny, -tiny, tiny / 2, -tiny / 4, 0.0, 1.0, np.inf, -np.inf, np.nan], dtype)
    out = np.array([flush_subnormal(v) for v in x])
    np.testing.assert_array_equal(out[:2], x[:2])
    assert np.all(out[2:5] == 0)
    np.testing.assert_array_equal(out[5:8], x[5:8])
    assert np.isnan(out[8])


def test_adjoint_flushes_subnormals_only():
    """An adjoint in the subnormal range is flushed to zero by the VJP; normal ones are not."""
    L, B, H, I = 1, 2, 4, 3
    params = random_params(I, H, 2, L, np.float32, 5)
    w = GRUWeights.from_params(params, L)
    rng = np.random.default_rng(0)
    ax0 = project(rng.normal(size=(1, B, I)).astype(np.float32), w.Wx[0], w.bx[0])
    h = states(1, L, B, H, np.float32, 1)
    c = get_cell("implicit")
    tiny = np.finfo(np.float32).tiny
    lam, dax = c.step_vjp(w, ax0, h, 1.0, np.full((1, L, B, H), tiny / 8, np.float32))
    assert np.all(lam == 0) and np.all(dax == 0)
    lam, dax = c.step_vjp(w, ax0, h, 1.0, np.full((1, L, B, H), 1e-3, np.float32))
    assert np.all(np.abs(lam) >= tiny) and np.count_nonzero(dax) > 0


def _stack_problem(dtype, L, B, H=6, I=4, n=9, seed=0):
    params = random_params(I, H, 3, L, dtype, seed)
    w = GRUWeights.from_params(params, L)
    rng = np.random.default_rng(seed + 1)
    ax = project(rng.normal(size=(n, B, I)).astype(dtype), w.Wx[0], w.bx[0])
    dt = rng.choice([0.5, 1.0, 4.0], size=n).astype(dtype)
    u = states(n + 1, L, B, H, dtype, seed + 2)
    g = (0.1 * states(n + 1, L, B, H, dtype, seed + 3)).astype(dtype)
    return w, ax, dt, u, g


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("L, B, H", [(1, 1, 6), (2, 2, 6), (3, 5, 6), (2, 40, 6), (2, 1, 70)])
def test_stack_chains_equal_the_step_api_bitwise(dtype, L, B, H):
    """``GRUCell.advance``: chains of consecutive points (with a FAS right-hand side, residual
    mode, kept gates) and independent steps compute bitwise what :meth:`GRUCell.step` computes
    position by position; its VJP likewise equals :meth:`GRUCell.step_vjp`. B <= 2 with H = 6
    runs the lockstep kernels (compiled products), the others the per-chain ones (BLAS)."""
    from mgritnn.cells import GRUCache
    c = get_cell("implicit")
    w, ax, dt, u0, g = _stack_problem(dtype, L, B, H=H)
    n = len(ax)
    sw = w.stacked()
    starts, lens = np.array([0, 4, 7]), np.array([3, 3, 2])    # chains 0->3, 4->7, 7->9
    # the twin: position by position through the step API
    want, want_res = u0.copy(), np.empty((3,) + u0.shape[1:], dtype)
    for ci, (s0, ln) in enumerate(zip(starts, lens)):
        for s in range(s0, s0 + ln):
            new = c.step(w, ax[s:s + 1], want[s:s + 1], dt[s:s + 1])[0] + g[s + 1]
            if s == s0 + ln - 1:
                want_res[ci] = new - want[s + 1]
            else:
                want[s + 1] = new
    got, res = u0.copy(), np.empty_like(want_res)
    keep = GRUCache.empty(L, n, B, w.hidden_size, dtype)
    c.advance(sw, ax, dt, got, starts, got, starts + 1, starts, lens, g=g, keep=keep, res=res)
    assert np.array_equal(got, want) and np.array_equal(res, want_res)
    # independent steps from a gathered array; their kept gates are the step API's
    idx = np.arange(n)
    src = np.ascontiguousarray(got[:-1])
    out = np.empty_like(src)
    c.advance(sw, ax, dt, src, idx, out, idx, idx, np.ones(n, np.int64), keep=keep)
    step_out, cache = c.step(w, ax, src, dt, cache=True)
    assert np.array_equal(out, step_out)
    for l in range(L):
        assert np.array_equal(keep.G[l], cache.G[l]) and np.array_equal(keep.N[l], cache.N[l])
        if l < L - 1:
            assert np.array_equal(keep.Y[l], out[:, l])
    # VJP chains against step_vjp at the same linearization
    lam0 = states(n + 1, L, B, w.hidden_size, dtype, 9)
    want = lam0.copy()
    for s in range(n):
        want[s + 1] = c.step_vjp(w, ax[s:s + 1], src[s:s + 1], dt[s:s + 1], want[s:s + 1],
                                 cache=type(cache)(*([None if a is None else a[s:s + 1] for a in lst]
                                                     for lst in cache)))[0][0]
    got = lam0.copy()
    zero = np.zeros(1, np.int64)
    cot = tuple(np.zeros((L, n, B, 3 * w.hidden_size), dtype) for _ in range(2))
    c.advance_vjp(sw, dt, got, zero, got, zero + 1, zero, np.array([n]), src, keep, idx, keep=cot)
    assert np.array_equal(got, want)
    _, dax = c.step_vjp(w, ax, src, dt, np.ascontiguousarray(want[:-1]), cache=cache)
    assert np.array_equal(cot[0][0], dax)           # the layer-0 input cotangents, kept
