"""DEER and quasi-DEER on one process: equality with the serial sweep and serial BPTT, exact
termination, fast convergence on contractive weights, divergence and the fallback, options and
their validation. (Under mpiexec: ``test_mpi_deer.py``.)"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import mgritnn
from mgritnn.cells import project
from mgritnn.config import DIVERGED, NOT_CONVERGED, OK
from mgritnn.errors import ConfigError, SolverError
from mgritnn.solvers import DEERConfig, DEERSolver, make_solver, quasi_deer_config
from helpers import gru_problem as model_and_data
from strategies import problems


def trajectory(m, X, cfg):
    """(trajectory (T+1, L, B, H), stats) of a DEER forward solve, and the serial trajectory."""
    Xt = np.ascontiguousarray(np.swapaxes(X, 0, 1))
    w = m.weights()
    ax0 = project(Xt, w.Wx[0], w.bx[0])
    h0 = np.zeros((m.num_layers, X.shape[0], m.hidden_size), m.dtype)
    _, state, stats = DEERSolver(cfg).forward(m.cell, w, Xt, h0, m.dt)
    exact = m.cell.sequence_forward(w, ax0, h0, m.dt, keep=False)
    return np.stack(state.hs, axis=1), np.stack(exact.hs, axis=1), stats


TIGHT = dict(atol=1e-13, rtol=0.0)


@pytest.mark.parametrize("quasi", [False, True], ids=["deer", "quasi-deer"])
@given(p=problems(max_T=16, max_H=6))
def test_loss_and_gradient_equal_serial_bptt(p, quasi):
    """Converged to 1e-13, DEER's loss and gradient (full transposed Jacobian in the adjoint, also
    for quasi-DEER) equal serial BPTT's to 1e-9."""
    m = mgritnn.GRUClassifier(p["I"], p["H"], p["C"], num_layers=p["L"], cell=p["cell"],
                              dtype="float64", dt=p["dt"])
    m.set_params(p["params"])
    l0, g0, _ = m.loss_and_grad_flat(p["X"], p["y"])
    cfg = DEERConfig(quasi=quasi, max_iter=p["T"] + 2, fallback=False, **TIGHT)
    l1, g1, info = m.loss_and_grad_flat(p["X"], p["y"], cfg)
    assert info["forward"].status == OK, info["forward"].message
    assert info["forward"].iterations <= p["L"] * (p["T"] + 1)
    np.testing.assert_allclose(l1, l0, rtol=1e-9)
    np.testing.assert_allclose(g1, g0, rtol=0, atol=1e-9 * max(1.0, np.abs(g0).max()))
    np.testing.assert_allclose(m.forward(p["X"], cfg), m.forward(p["X"]), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("quasi", [False, True], ids=["deer", "quasi-deer"])
@pytest.mark.parametrize("cell", ["classic", "implicit"])
def test_exact_termination(quasi, cell):
    """After k iterations the first k points are the serial ones (to round-off), whatever the
    Jacobian, even on weights too large for Newton to contract; T iterations solve the sequence."""
    T = 12
    m, X, _ = model_and_data(cell, L=1, T=T, scale=6.0, dt=2.0 if cell == "implicit" else 1.0)
    for k in (1, 3, 7, T):
        u, exact, stats = trajectory(m, X, DEERConfig(quasi=quasi, max_iter=k, fallback=False,
                                                      **TIGHT))
        assert stats.iterations <= k
        np.testing.assert_allclose(u[:k + 1], exact[:k + 1], rtol=0, atol=1e-12)
        if stats.iterations == k and k < T:
            assert stats.status == NOT_CONVERGED and "not converged" in stats.message
    np.testing.assert_allclose(u, exact, rtol=0, atol=1e-12)


@pytest.mark.parametrize("L", [1, 2])
def test_contractive_weights_converge_much_earlier(L):
    """Small weights (a contractive recurrence): DEER converges to 1e-10 in a handful of Newton
    iterations, quasi-DEER in a few more, both far below T."""
    T = 300
    m, X, _ = model_and_data("classic", L=L, T=T, scale=0.3)
    cfg = dict(atol=1e-10, rtol=0.0, fallback=False)
    u, exact, s = trajectory(m, X, DEERConfig(**cfg))
    assert s.status == OK and s.iterations <= 6 * L, s.history
    np.testing.assert_allclose(u, exact, rtol=0, atol=1e-9)
    u, exact, s = trajectory(m, X, DEERConfig(quasi=True, **cfg))
    assert s.status == OK and s.iterations <= 20 * L, s.history
    np.testing.assert_allclose(u, exact, rtol=0, atol=1e-9)


def test_divergence_is_detected_and_the_fallback_is_serial():
    """Weights scaled 12x (Jacobians far above 1): Newton's first updates explode; the solver
    reports the divergence, runs the serial sweep, and the result is the serial one bit for bit."""
    m, X, y = model_and_data("classic", L=2, T=100, scale=12.0)
    l0, g0, _ = m.loss_and_grad_flat(X, y)
    l1, g1, info = m.loss_and_grad_flat(X, y, DEERConfig())
    f = info["forward"]
    assert f.status == DIVERGED and f.fallback, f.message
    assert "diverged" in f.message and "serial sweep" in f.message
    assert l1 == l0
    np.testing.assert_allclose(g1, g0, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="did not keep"):
        DEERSolver().adjoint(m.cell, m.weights(), None, None, m.cell.zero_grads(m.weights()))


def test_without_fallback_the_divergence_is_reported():
    m, X, y = model_and_data("classic", L=1, T=100, scale=12.0)
    _, _, info = m.loss_and_grad_flat(X, y, DEERConfig(fallback=False), strict=False)
    assert info["forward"].status == DIVERGED and not info["forward"].fallback
    assert info["forward"].failed and not info["forward"].success
    with pytest.raises(SolverError, match="deer forward solve failed.*diverged") as e:
        m.loss_and_grad_flat(X, y, DEERConfig(fallback=False))
    assert e.value.stats.status == DIVERGED


def test_damping_rescues_the_divergent_case():
    """ELK-style damping (J / (1 + lambda)) keeps the iteration stable where plain Newton diverges;
    the fixed point is unchanged, so it converges to the serial trajectory."""
    m, X, _ = model_and_data("classic", L=1, T=100, scale=12.0)
    _, _, plain = trajectory(m, X, DEERConfig(max_iter=101, fallback=False))
    assert plain.status == DIVERGED
    u, exact, s = trajectory(m, X, DEERConfig(damping=1.0, max_iter=101, fallback=False, **TIGHT))
    assert s.status == OK, s.message
    # The iterate satisfies every step of the recurrence to round-off ...
    w = m.weights()
    ax0 = project(np.ascontiguousarray(np.swapaxes(X, 0, 1)), w.Wx[0], w.bx[0])
    step = m.cell.step(w, ax0, np.ascontiguousarray(u[:-1]), m.dt)
    assert np.abs(step - u[1:]).max() < 1e-13
    np.testing.assert_allclose(u[:40], exact[:40], rtol=0, atol=1e-12)
    # ... but with weights this large the recurrence amplifies a per-step perturbation of 1e-15
    # to ~4e-9 after t = 45 (measured), for the serial sweep's own rounding as much as for DEER's.
    np.testing.assert_allclose(u, exact, rtol=0, atol=1e-7)


@pytest.mark.parametrize("init", ["input", "warm"])
def test_initial_guesses(init):
    """initial_guess='input' and 'warm' converge to the same result; a warm start from the same samples'
    previous trajectory needs fewer iterations than zeros."""
    m, X, y = model_and_data("implicit", L=2, T=80, scale=1.0)
    keys = np.arange(X.shape[0])
    ref, _, z = m.loss_and_grad_flat(X, y, DEERConfig(**TIGHT))
    cfg = DEERConfig(initial_guess=init, **TIGHT)
    solver = cfg.make_solver()
    l1, _, i1 = m.loss_and_grad_flat(X, y, solver, keys=keys)
    np.testing.assert_allclose(l1, ref, rtol=1e-12)
    if init == "warm":
        m.flat[:] *= 1.01                            # an optimizer step later
        l2, _, i2 = m.loss_and_grad_flat(X, y, solver, keys=keys)
        l2_ref, _, _ = m.loss_and_grad_flat(X, y, DEERConfig(**TIGHT))
        np.testing.assert_allclose(l2, l2_ref, rtol=1e-12)
        assert i2["forward"].iterations < z["forward"].iterations


def test_float32_default_tolerances():
    m, X, y = model_and_data("classic", L=2, T=200, dtype="float32", scale=0.5)
    l0, g0, _ = m.loss_and_grad_flat(X, y)
    for quasi in (False, True):
        l1, g1, info = m.loss_and_grad_flat(X, y, DEERConfig(quasi=quasi))
        assert info["forward"].status == OK and g1.dtype == np.float32
        np.testing.assert_allclose(l1, l0, rtol=1e-4)
        np.testing.assert_allclose(g1, g0, rtol=0, atol=1e-3 * np.abs(g0).max())


def test_solver_names_and_options():
    assert make_solver("deer").name == "deer" and not make_solver("deer").config.quasi
    assert make_solver("quasi-deer").config.quasi
    assert make_solver("quasi-deer", dict(max_iter=3)).config == DEERConfig(quasi=True, max_iter=3)
    assert quasi_deer_config(atol=1e-3).quasi
    assert DEERConfig().tolerances(np.float64) == (1e-6, 1e-4)
    assert DEERConfig().tolerances(np.float32) == (1e-4, 1e-3)
    assert DEERConfig(atol=1e-8).tolerances(np.float32) == (1e-8, 1e-3)


@pytest.mark.parametrize("kw, match", [
    (dict(max_iter=0), "max_iter"), (dict(max_iter=2.5), "max_iter"),
    (dict(atol=-1), "atol"), (dict(rtol=float("nan")), "rtol"), (dict(atol=0, rtol=0), "both be 0"),
    (dict(damping=-0.1), "damping"), (dict(initial_guess="ones"), "initial_guess"), (dict(divergence=1), "divergence"),
    (dict(chunks=0), "chunks"), (dict(max_memory=0), "max_memory")])
def test_bad_options_are_rejected(kw, match):
    with pytest.raises(ConfigError, match=match):
        DEERConfig(**kw)
    with pytest.raises(ConfigError, match="bad option"):
        make_solver("deer", dict(nonsense=1))


def test_memory_limit_names_the_fix():
    m, X, y = model_and_data("classic", L=1, T=50, H=8)
    with pytest.raises(ConfigError, match="quasi-deer"):
        m.loss_and_grad_flat(X, y, DEERConfig(max_memory=1000))


@given(chunks=st.integers(1, 9))
def test_chunk_count_changes_round_off_only(chunks):
    m, X, y = model_and_data("classic", L=2, T=40)
    l0, g0, _ = m.loss_and_grad_flat(X, y)
    l1, g1, _ = m.loss_and_grad_flat(X, y, DEERConfig(chunks=chunks, **TIGHT))
    np.testing.assert_allclose(l1, l0, rtol=1e-12)
    np.testing.assert_allclose(g1, g0, rtol=0, atol=1e-10 * np.abs(g0).max())


@pytest.mark.parametrize("quasi", [False, True], ids=["deer", "quasi-deer"])
def test_deer_with_the_fully_implicit_cell(quasi):
    """DEER linearizes the implicit-newton step at the old state (its gates sit at the new one):
    converged, loss and gradient equal serial BPTT of that cell."""
    m, X, y = model_and_data("implicit-newton", L=2, T=20, dt=2.0)
    l0, g0, _ = m.loss_and_grad_flat(X, y)
    l1, g1, info = m.loss_and_grad_flat(X, y, DEERConfig(quasi=quasi, max_iter=22, fallback=False,
                                                         **TIGHT))
    assert info["forward"].status == OK, info["forward"].message
    np.testing.assert_allclose(l1, l0, rtol=1e-9)
    np.testing.assert_allclose(g1, g0, rtol=0, atol=1e-9 * np.abs(g0).max())


def test_relative_tolerance_alone_handles_an_exact_zero():
    """Regression: with atol=0 an element whose new value is exactly 0 made the error inf, so DEER
    reported NONFINITE. All-zero weights keep h = 0 exactly; from a warm guess of ones, Newton
    reaches 0 in one iteration and confirms it in the next."""
    from mgritnn.solvers.deer import _update
    new, old = np.zeros((1, 1, 2)), np.array([[[1.0, 0.0]]])
    err, change = np.empty(1), np.empty(1)
    _update(new, old, 0.0, 1e-3, err, change)
    assert err[0] == 1e3 and change[0] == 1.0
    _update(np.full((1, 1, 2), np.inf), old, 0.0, 1e-3, err, change)
    assert err[0] == np.inf
    m, X, y = model_and_data("classic", L=1, T=12)
    m.flat[:] = 0.0
    B, H = X.shape[0], m.hidden_size
    solver = DEERConfig(atol=0.0, rtol=1e-8, initial_guess="warm").make_solver()
    solver.load_warm_arrays(dict(keys=np.array([[12, b] for b in range(B)]),
                                 states=np.ones((B, 1, 12, H))))
    _, _, info = m.loss_and_grad_flat(X, y, solver, keys=np.arange(B))
    f = info["forward"]
    assert f.status == OK and not f.fallback and f.iterations == 2, f.message
