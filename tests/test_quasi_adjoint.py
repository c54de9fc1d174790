"""quasi-DEER's gradient without dense Jacobians (``DEERConfig(adjoint="quasi")``, quasi-DEER's
default; :mod:`mgritnn.solvers.qadjoint`) on one process: equality with serial BPTT, the
iteration count, the exactness front, the generic (VJP) path against the GRU's GEMM path, the
fallback and non-finite adjoints, memory and options. (Under mpiexec:
``tests/mpi/qadj_case.py`` through ``test_mpi_deer.py``.)"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mgritnn
from mgritnn.cells import DahlquistCell, DahlquistWeights
from mgritnn.config import NONFINITE, NOT_CONVERGED, OK
from mgritnn.errors import ConfigError, SolverError
from mgritnn.solvers import DEERConfig, DEERSolver, SerialSolver, make_solver
from mgritnn.cells import GRUCell
from mgritnn.cells.gru_qadjoint import GRUOffDiagonal
from helpers import gru_problem
from strategies import problems

TIGHT = dict(atol=1e-13, rtol=0.0)


def model(p):
    m = mgritnn.GRUClassifier(p["I"], p["H"], p["C"], num_layers=p["L"], cell=p["cell"],
                              dtype="float64", dt=p["dt"])
    m.set_params(p["params"])
    return m


@settings(max_examples=40, deadline=None)
@given(p=problems(max_T=24, max_H=6, max_L=2), quasi=st.booleans())
def test_gradient_equals_serial_bptt(p, quasi):
    """float64, converged to 1e-13: the quasi adjoint's gradient (after a quasi-DEER or a DEER
    forward) is serial BPTT's to 1e-9, and it reports its iterations (at most L (T + 1): the
    front reaches point 0 by then)."""
    m = model(p)
    l0, g0, _ = m.loss_and_grad_flat(p["X"], p["y"])
    cfg = DEERConfig(quasi=quasi, adjoint="quasi", max_iter=p["T"] + 2, fallback=False, **TIGHT)
    l1, g1, info = m.loss_and_grad_flat(p["X"], p["y"], cfg)
    a = info["adjoint"]
    assert info["forward"].status == OK and a.status == OK, a.message
    assert not a.fallback and 2 * p["L"] <= a.iterations <= p["L"] * (p["T"] + 2)
    assert len(a.history) == a.iterations
    np.testing.assert_allclose(l1, l0, rtol=1e-9)
    np.testing.assert_allclose(g1, g0, rtol=0, atol=1e-9 * max(1.0, np.abs(g0).max()))


@pytest.mark.parametrize("cell", ["classic", "implicit"])
@pytest.mark.parametrize("L", [1, 2])
def test_quasi_is_the_default_of_quasi_deer_and_matches_the_dense_adjoint(cell, L):
    """quasi-DEER's gradient uses the quasi adjoint by default (iterations reported; DEER's the
    dense scan, 0 iterations); both equal BPTT at T = 120, with padded steps (dt = 0 rows)."""
    m, X, y = gru_problem(cell, L=L, T=120, dt=2.0 if cell == "implicit" else 1.0)
    lengths = np.array([120, 77, 5])
    l0, g0, _ = m.loss_and_grad_flat(X, y, lengths=lengths)
    out = {}
    for name, cfg in (("quasi", DEERConfig(quasi=True, **TIGHT)),
                      ("dense", DEERConfig(quasi=True, adjoint="dense", **TIGHT)),
                      ("deer", DEERConfig(**TIGHT))):
        l1, g1, info = m.loss_and_grad_flat(X, y, cfg, lengths=lengths)
        out[name] = info["adjoint"]
        np.testing.assert_allclose(l1, l0, rtol=1e-9)
        np.testing.assert_allclose(g1, g0, rtol=0, atol=1e-9 * np.abs(g0).max(), err_msg=name)
    assert out["quasi"].status == OK and out["quasi"].iterations > 0
    assert out["dense"].iterations == 0 == out["deer"].iterations
    assert out["dense"].message == "exact"


def test_generic_vjp_path_equals_the_gru_gemm_path(monkeypatch):
    """The correction through the cell's batched VJP (any LayerNewton cell) and the GRU's GEMM
    with the off-diagonal W_h give the same gradient (1e-12) in the same iteration count."""
    m, X, y = gru_problem("implicit", L=2, T=60, dt=2.0, scale=1.5)
    cfg = DEERConfig(quasi=True, fallback=False, **TIGHT)
    _, g_fast, i_fast = m.loss_and_grad_flat(X, y, cfg)
    monkeypatch.setattr(GRUCell, "has_off_diagonal_vjp", lambda self: False)
    _, g_gen, i_gen = m.loss_and_grad_flat(X, y, cfg)
    np.testing.assert_allclose(g_gen, g_fast, rtol=0, atol=1e-12 * np.abs(g_fast).max())
    assert i_gen["adjoint"].iterations == i_fast["adjoint"].iterations


def test_fully_implicit_cell_takes_the_generic_path():
    """implicit-newton (no GEMM form): the quasi adjoint through its VJP equals BPTT."""
    m, X, y = gru_problem("implicit-newton", L=2, T=20, dt=2.0)
    l0, g0, _ = m.loss_and_grad_flat(X, y)
    _, g1, info = m.loss_and_grad_flat(X, y, DEERConfig(quasi=True, max_iter=22, fallback=False,
                                                        **TIGHT))
    assert info["adjoint"].status == OK and info["adjoint"].iterations > 0
    np.testing.assert_allclose(g1, g0, rtol=0, atol=1e-9 * np.abs(g0).max())


def _solve(m, X, cfg, lam_scale=1.0):
    """(dxp, adjoint stats, grads) of a forward + adjoint of DEERSolver(cfg) with the adjoint
    ``lam_scale`` at the last point (all layers)."""
    w = m.weights()
    Xt = np.ascontiguousarray(np.swapaxes(X, 0, 1))
    h0 = np.zeros((m.num_layers, X.shape[0], m.hidden_size), m.dtype)
    s = DEERSolver(cfg)
    _, state, fstats = s.forward(m.cell, w, Xt, h0, m.dt)
    assert fstats.status == OK, fstats.message
    g = m.cell.zero_grads(w)
    dxp, a = s.adjoint(m.cell, w, state, np.full_like(h0, lam_scale), g)
    return dxp, a, g


def test_exactness_front():
    """One rank, one chunk: the first iteration has no correction, and every later one makes one
    more point exact from the end, so T + 1 iterations give the sequential reverse sweep to
    round-off whatever the weights (here expansive ones, scale 6, far from convergence earlier)."""
    T = 15
    m, X, _ = gru_problem("classic", L=1, T=T, scale=6.0)
    base = dict(quasi=True, fallback=False, chunks=1, max_iter=T + 2, **TIGHT)
    ref, _, _ = _solve(m, X, DEERConfig(adjoint="dense", **base))
    for k in (2, 5, 9):
        dxp, a, _ = _solve(m, X, DEERConfig(adjoint_max_iter=k, **base))
        assert a.iterations == k and a.status == NOT_CONVERGED, a.message
        # points T-k+1 .. T exact: the cotangents of steps T-k+1 .. T-1
        np.testing.assert_allclose(dxp[T - k + 1:], ref[T - k + 1:], rtol=0,
                                   atol=1e-12 * np.abs(ref).max())
    dxp, a, _ = _solve(m, X, DEERConfig(adjoint_max_iter=T + 2, **base))
    assert a.status == OK and a.iterations <= T + 2
    np.testing.assert_allclose(dxp, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_not_converged_falls_back_or_reports_as_configured():
    """An iteration cap the adjoint cannot meet: with ``fallback`` (the default) the serial reverse
    sweep runs (``stats.fallback``, said in the message) and the gradient is BPTT's; without it
    the last iterate's gradient comes back with status NOT_CONVERGED; ``falling_back()`` forces
    the sweep whatever the config says."""
    m, X, y = gru_problem("classic", L=2, T=80, scale=2.0)
    l0, g0, _ = m.loss_and_grad_flat(X, y)
    base = dict(quasi=True, adjoint_max_iter=3, max_iter=100, **TIGHT)
    _, g1, info = m.loss_and_grad_flat(X, y, DEERConfig(**base))
    a = info["adjoint"]
    assert a.fallback and a.status == NOT_CONVERGED and a.success and not a.failed
    assert "not converged in 3" in a.message and "serial reverse sweep" in a.message
    assert a.iterations == 3                    # the top layer failed, the sweep did the rest
    np.testing.assert_allclose(g1, g0, rtol=0, atol=1e-9 * np.abs(g0).max())
    _, g2, info = m.loss_and_grad_flat(X, y, DEERConfig(fallback=False, **base))
    a = info["adjoint"]
    assert not a.fallback and a.status == NOT_CONVERGED and a.iterations == 2 * 3
    assert np.abs(g2 - g0).max() > 1e-6 * np.abs(g0).max()
    solver = make_solver(DEERConfig(fallback=False, **base))
    with solver.falling_back():
        _, g3, info = m.loss_and_grad_flat(X, y, solver)
    assert info["adjoint"].fallback
    np.testing.assert_allclose(g3, g0, rtol=0, atol=1e-9 * np.abs(g0).max())


def _dahlquist(lam=1.0, T=100, B=3, seed=0):
    rng = np.random.default_rng(seed)
    return (DahlquistWeights(np.array(lam, np.float32)), rng.normal(size=(T, B)).astype(np.float32),
            np.zeros(B, np.float32))


def test_overflowing_adjoint_is_detected_and_falls_back():
    """float32, an adjoint that grows 2x per step backward (u' = u, backward Euler with dt = 0.5):
    from 3e38 at T = 20 it overflows at once. The iteration reports NONFINITE; without the fallback
    the
    model's strict check raises; with it the serial reverse sweep keeps the scale in its exponent
    (as the serial solver), finite and equal to the serial solver's result."""
    cell = DahlquistCell()
    w, x, u0 = _dahlquist(T=20)
    lam_last = np.full(3, 3e38, np.float32)
    ser = SerialSolver()
    _, st_s, _ = ser.forward(cell, w, x, u0, 0.5)
    g_s = cell.zero_grads(w)
    dx_s, s_s = ser.adjoint(cell, w, st_s, lam_last, g_s)
    assert s_s.exponent > 0
    for fallback in (False, True):
        solver = DEERSolver(DEERConfig(quasi=True, fallback=fallback))
        _, state, f = solver.forward(cell, w, x, u0, 0.5)
        assert f.status == OK and np.all(np.isfinite(state.hs[0]))
        g = cell.zero_grads(w)
        dx, a = solver.adjoint(cell, w, state, lam_last, g)
        if not fallback:
            assert a.status == NONFINITE and a.failed and "non-finite" in a.message
        else:
            assert a.fallback and a.success and a.exponent == s_s.exponent
            assert np.all(np.isfinite(dx)) and np.isfinite(g.lam)
            np.testing.assert_allclose(dx, dx_s, rtol=1e-5, atol=0)


def test_strict_model_raises_for_a_nonfinite_adjoint(monkeypatch):
    """A NaN in the adjoint iteration of a GRU (injected into the correction) is reported, and the
    model's strict check raises instead of returning a NaN gradient; with the fallback the
    gradient is BPTT's."""
    m, X, y = gru_problem("classic", L=1, T=30)
    real = GRUOffDiagonal.apply

    def poisoned(self, nu, d, b):
        real(self, nu, d, b)
        b[3, 0, 0] = np.nan
    monkeypatch.setattr(GRUOffDiagonal, "apply", poisoned)
    with pytest.raises(SolverError):
        m.loss_and_grad_flat(X, y, DEERConfig(quasi=True, fallback=False))
    l0, g0, _ = m.loss_and_grad_flat(X, y)
    _, g1, info = m.loss_and_grad_flat(X, y, DEERConfig(quasi=True, **TIGHT))
    assert info["adjoint"].fallback and info["adjoint"].status == NONFINITE
    np.testing.assert_allclose(g1, g0, rtol=0, atol=1e-9 * np.abs(g0).max())


def test_memory_check_counts_what_the_gradient_keeps():
    """quasi-DEER training keeps O(T B H) (no dense Jacobians): a max_memory below the dense
    Jacobians' bytes but above the quasi adjoint's trains; the dense adjoint is refused there,
    and so is the quasi adjoint below its own need."""
    T, B, H = 50, 3, 32
    m, X, y = gru_problem("classic", L=1, T=T, H=H)
    dense = T * B * H * H * 8
    quasi = (6 + 12) * T * B * H * 8
    assert quasi < dense
    _, _, info = m.loss_and_grad_flat(X, y, DEERConfig(quasi=True, max_memory=quasi + 1))
    assert info["adjoint"].success
    with pytest.raises(ConfigError, match="dense Jacobians"):
        m.loss_and_grad_flat(X, y, DEERConfig(quasi=True, adjoint="dense", max_memory=quasi + 1))
    with pytest.raises(ConfigError, match="quasi adjoint"):
        m.loss_and_grad_flat(X, y, DEERConfig(quasi=True, max_memory=quasi - 1))
    m.forward(X, DEERConfig(quasi=True, max_memory=1000))        # inference keeps nothing


@pytest.mark.parametrize("kw, match", [(dict(adjoint="diag"), "adjoint"),
                                       (dict(adjoint_max_iter=0), "adjoint_max_iter"),
                                       (dict(adjoint_max_iter=2.5), "adjoint_max_iter")])
def test_bad_options_are_rejected(kw, match):
    with pytest.raises(ConfigError, match=match):
        DEERConfig(**kw)


def test_options():
    assert DEERConfig().adjoint_kind() == "dense"
    assert DEERConfig(quasi=True).adjoint_kind() == "quasi"
    assert DEERConfig(adjoint="quasi").adjoint_kind() == "quasi"
    assert make_solver("quasi-deer", dict(adjoint="dense")).config.adjoint_kind() == "dense"


def test_gru_fallback_keeps_the_adjoints_scale():
    """The GRU's fallback is the pipelined scaled sweep: an adjoint beyond 2^64 (float32) comes
    back as 2^-exponent times the true one, as the serial solver returns it (bit for bit on one
    rank: the same kernels from the same first state)."""
    m, X, _ = gru_problem("classic", L=2, T=40, dtype="float32")
    w = m.weights()
    Xt = np.ascontiguousarray(np.swapaxes(X, 0, 1))
    h0 = np.zeros((2, X.shape[0], m.hidden_size), np.float32)
    lam = np.full_like(h0, 1e30)
    ser = SerialSolver()
    _, st, _ = ser.forward(m.cell, w, Xt, h0, m.dt)
    g0 = m.cell.zero_grads(w)
    dx0, s0 = ser.adjoint(m.cell, w, st, lam, g0)
    assert s0.exponent > 0
    solver = DEERSolver(DEERConfig(quasi=True, adjoint_max_iter=1))
    _, state, f = solver.forward(m.cell, w, Xt, h0, m.dt)
    g1 = m.cell.zero_grads(w)
    dx1, a = solver.adjoint(m.cell, w, state, lam, g1)
    assert a.fallback and a.status == NOT_CONVERGED and a.exponent == s0.exponent
    np.testing.assert_allclose(dx1, dx0, rtol=1e-4, atol=1e-6 * np.abs(dx0).max())
    flat0, flat1 = _flatten(g0), _flatten(g1)
    np.testing.assert_allclose(flat1, flat0, rtol=0, atol=1e-5 * np.abs(flat0).max())


def _flatten(tree):
    if isinstance(tree, (tuple, list)):
        return np.concatenate([_flatten(t) for t in tree]) if len(tree) else np.zeros(0)
    return np.ravel(tree).astype(np.float64)
