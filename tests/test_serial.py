"""mgritnn.solvers.serial: the ground truth every parallel solver is compared with.

Its two paths (the cells' fused whole-sequence kernels, and stepping any cell of the protocol one
time point at a time) against the slow NumPy twin of tests/reference.py and against each other.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import reference as ref
from mgritnn.cells import DahlquistCell, DahlquistWeights, FusedSequence, get_cell, without
from mgritnn.cells.gru import GRUGrads, GRUWeights
from mgritnn.solvers import SerialSolver
from mgritnn.solvers.serial import step_through


def _stepwise(cell):
    """A cell seen without its fused sweeps: the serial solver must then step it (the path any
    non-GRU cell of the protocol takes)."""
    return without(cell, FusedSequence)


def _problem(cell, L, T, B, I, H, dtype, seed):
    rng = np.random.default_rng(seed)
    p = {}
    for k in range(L):
        Ik = I if k == 0 else H
        for name, shape in ((f"weight_ih_l{k}", (3 * H, Ik)), (f"weight_hh_l{k}", (3 * H, H)),
                            (f"bias_ih_l{k}", (3 * H,)), (f"bias_hh_l{k}", (3 * H,))):
            p[name] = rng.uniform(-0.6, 0.6, shape).astype(dtype)
    x = rng.normal(size=(T, B, I)).astype(dtype)
    h0 = rng.uniform(-0.5, 0.5, (L, B, H)).astype(dtype)
    lam = rng.normal(size=(L, B, H)).astype(dtype)
    return get_cell(cell), GRUWeights.from_params(p, L), p, x, h0, lam


def _solve(cell, w, x, h0, lam, dt):
    solver = SerialSolver()
    h_last, state, stats = solver.forward(cell, w, x, h0, dt)
    grads = GRUGrads.zeros_like(w)
    dxp, astats = solver.adjoint(cell, w, state, lam, grads)
    return h_last, grads, dxp, stats, astats


@given(cell=st.sampled_from(["classic", "implicit"]), L=st.integers(1, 3), T=st.integers(1, 9),
       B=st.integers(1, 4), H=st.integers(1, 5), seed=st.integers(0, 2 ** 16),
       dt=st.sampled_from([1.0, 0.5, 2.0]))
def test_sweep_and_bptt_equal_the_numpy_twin(cell, L, T, B, H, seed, dt):
    c, w, p, x, h0, lam = _problem(cell, L, T, B, 3, H, "float64", seed)
    h_last, grads, _, stats, astats = _solve(c, w, x, h0, lam, dt)
    hs, caches = ref.sequence(cell, p, L, x, h0, dt)
    np.testing.assert_allclose(h_last, hs[-1], rtol=1e-12, atol=1e-13)
    want = {k: np.zeros_like(v) for k, v in p.items()}
    lam_t = lam
    for t in range(T - 1, -1, -1):
        lam_t, _, g = ref.stack_step_vjp(cell, p, L, caches[t], lam_t, dt)
        for k, v in g.items():
            want[k] += v
    got = {**{f"weight_ih_l{k}": grads.Wx[k] for k in range(L)},
           **{f"weight_hh_l{k}": grads.Wh[k] for k in range(L)},
           **{f"bias_ih_l{k}": grads.bx[k] for k in range(L)},
           **{f"bias_hh_l{k}": grads.bh[k] for k in range(L)}}
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-12, err_msg=k)
    assert stats.step_evals == astats.step_evals == T and stats.success and astats.success


@pytest.mark.parametrize("cell", ["classic", "implicit", "implicit-newton"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("L", [1, 2])
def test_fused_and_stepwise_paths_are_bitwise_equal(cell, dtype, L):
    """The fused kernels compute bitwise what stepping all layers together computes."""
    c, w, _, x, h0, lam = _problem(cell, L, 11, 3, 4, 5, dtype, seed=L)
    fused = _solve(c, w, x, h0, lam, 0.7)
    stepped = _solve(_stepwise(c), w, x, h0, lam, 0.7)
    assert fused[0].tobytes() == stepped[0].tobytes()
    assert fused[2].tobytes() == stepped[2].tobytes()
    for a, b in zip(fused[1], stepped[1]):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)


def test_scalar_and_per_step_dt_agree_and_keep_false_keeps_nothing():
    c, w, _, x, h0, lam = _problem("implicit", 2, 7, 2, 3, 4, "float64", seed=3)
    solver = SerialSolver()
    a, _, _ = solver.forward(c, w, x, h0, 0.3)
    b, state, _ = solver.forward(c, w, x, h0, np.full(7, 0.3), keep=False)
    assert a.tobytes() == b.tobytes() and state is None
    dts = np.linspace(0.1, 1.0, 7)
    h_var, _, _ = solver.forward(c, w, x, h0, dts)
    hs, _ = step_through(c, w, c.project_inputs(w, x), h0, dts)
    assert h_var.tobytes() == hs[-1].tobytes()


def test_dahlquist_gradients_equal_finite_differences():
    """The stepwise path on a non-GRU cell: d sum(u_T) / d(lambda, x) against central
    differences (backward Euler u' = lambda u + x)."""
    rng = np.random.default_rng(7)
    T, B, dt = 12, 3, 0.2
    x, u0, lam0 = rng.normal(size=(T, B)), rng.normal(size=B), -1.3
    cell = DahlquistCell()

    def run(lam, xx):
        w = DahlquistWeights(np.array(lam))
        solver = SerialSolver()
        u_T, state, _ = solver.forward(cell, w, xx, u0, dt)
        grads = cell.zero_grads(w)
        dx, _ = solver.adjoint(cell, w, state, np.ones(B), grads)
        return u_T.sum(), grads, dx

    _, grads, dx = run(lam0, x)
    eps = 1e-6
    fd = (run(lam0 + eps, x)[0] - run(lam0 - eps, x)[0]) / (2 * eps)
    np.testing.assert_allclose(np.asarray(grads.lam), fd, rtol=1e-8)
    for t, b in ((0, 0), (5, 2), (T - 1, 1)):
        e = np.zeros_like(x)
        e[t, b] = eps
        fd = (run(lam0, x + e)[0] - run(lam0, x - e)[0]) / (2 * eps)
        np.testing.assert_allclose(dx[t, b], fd, rtol=1e-8)


def test_the_work_arrays_of_an_earlier_call_leave_no_trace():
    """One solver instance reuses its arrays; a call of another shape in between changes nothing."""
    c, w, _, x, h0, lam = _problem("classic", 2, 9, 3, 4, 5, "float64", seed=11)
    solver = SerialSolver()
    first = solver.forward(c, w, x, h0, 1.0)[0].copy()
    c2, w2, _, x2, h02, _ = _problem("classic", 2, 4, 5, 4, 5, "float64", seed=12)
    solver.forward(c2, w2, x2, h02, 1.0)
    again, state, _ = solver.forward(c, w, x, h0, 1.0)
    assert again.tobytes() == first.tobytes()
    g1, g2 = GRUGrads.zeros_like(w), GRUGrads.zeros_like(w)
    solver.adjoint(c, w, state, lam, g1)
    fresh = SerialSolver()
    fresh.adjoint(c, w, fresh.forward(c, w, x, h0, 1.0)[1], lam, g2)
    for a, b in zip(g1, g2):
        for u, v in zip(a, b):
            assert u.tobytes() == v.tobytes()
