"""The step protocol (``mgritnn.cells.base``) with a cell that is not a GRU: the scalar test
equation u' = λu + x by backward Euler (``DahlquistCell``). The serial sweep, MGRIT (forward and
adjoint) and DEER run on it unchanged: closed forms, finite differences, the exactness front, and the
two-level convergence bound of Dobrev et al. (2017)."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mgritnn.cells import DahlquistCell, DahlquistWeights
from mgritnn.config import NOT_CONVERGED, OK
from mgritnn.solvers import DEERConfig, MGRITConfig, SerialSolver
from helpers import assume_hierarchy_fits

CELL = DahlquistCell()


def problem(T=48, B=3, lam=-2.0, seed=0, forcing=True):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(T, B)) if forcing else np.zeros((T, B))
    return DahlquistWeights(np.array(lam)), x, rng.normal(size=B)


def solve(solver, w, x, u0, dt):
    """(trajectory or last state, forward stats, dx, dλ, adjoint stats) for the loss sum(u_T)."""
    h_last, state, fs = solver.forward(CELL, w, x, u0, dt, T=x.shape[0])
    grads = CELL.zero_grads(w)
    dx, bs = solver.adjoint(CELL, w, state, np.ones_like(u0), grads)
    return h_last, state, fs, dx, float(grads.lam), bs


@given(K=st.integers(1, 4), B=st.integers(1, 3), lam=st.floats(-20, 0.5), dt=st.floats(0, 1),
       seed=st.integers(0, 2 ** 31 - 1))
def test_step_vjp_equals_finite_differences(K, B, lam, dt, seed):
    assume(1 - lam * dt >= 0.2)                 # a step far from singular
    rng = np.random.default_rng(seed)
    u, x, lam_next = rng.normal(size=(3, K, B))
    w = DahlquistWeights(np.array(lam))
    grads = CELL.zero_grads(w)
    lam_old, dx = CELL.step_vjp(w, x, u, dt, lam_next, grads=grads)
    eps = 1e-6

    def f(w_, x_, u_):
        return np.sum(lam_next * CELL.step(w_, x_, u_, dt))
    num_u = np.array([(f(w, x, u + eps * e) - f(w, x, u - eps * e)) / (2 * eps)
                      for e in np.eye(K * B).reshape(-1, K, B)]).reshape(K, B)
    num_x = np.array([(f(w, x + eps * e, u) - f(w, x - eps * e, u)) / (2 * eps)
                      for e in np.eye(K * B).reshape(-1, K, B)]).reshape(K, B)
    num_lam = (f(DahlquistWeights(np.array(lam + eps)), x, u)
               - f(DahlquistWeights(np.array(lam - eps)), x, u)) / (2 * eps)
    np.testing.assert_allclose(lam_old, num_u, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dx, num_x, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(grads.lam, num_lam, rtol=1e-6, atol=1e-8)


def test_serial_sweep_matches_the_closed_form():
    """x = 0: u_T = a^T u_0 with a = 1/(1 - λ dt), and d sum(u_T)/dλ = sum(u_0) T dt a^(T+1)."""
    T, dt = 40, 0.1
    w, x, u0 = problem(T, forcing=False)
    a = 1 / (1 - w.lam * dt)
    u_T, _, _, _, dlam, _ = solve(SerialSolver(), w, x, u0, dt)
    np.testing.assert_allclose(u_T, a ** T * u0, rtol=1e-13)
    np.testing.assert_allclose(dlam, u0.sum() * T * dt * a ** (T + 1), rtol=1e-12)


def test_one_level_is_the_serial_sweep_bit_for_bit():
    w, x, u0 = problem()
    ser = solve(SerialSolver(), w, x, u0, 0.1)
    mg = solve(MGRITConfig(levels=1).make_solver(), w, x, u0, 0.1)
    assert np.array_equal(mg[0], ser[0]) and np.array_equal(mg[3], ser[3]) and mg[4] == ser[4]


@settings(max_examples=15, deadline=None)
@given(levels=st.integers(2, 4), cf=st.sampled_from([2, 3, 4]), relax=st.sampled_from(["F", "FCF"]),
       cycle=st.sampled_from(["V", "F"]), lam=st.floats(-10, -0.1), T=st.integers(20, 90))
def test_tight_mgrit_equals_serial_forward_and_adjoint(levels, cf, relax, cycle, lam, T):
    w, x, u0 = problem(T, lam=lam)
    cfg = MGRITConfig(levels=levels, cf=cf, relax=relax, cycle=cycle, max_iter=60, adjoint_max_iter=60,
                      atol=1e-14, min_coarse=1)
    assume_hierarchy_fits(cfg, T)
    ser = solve(SerialSolver(), w, x, u0, 0.1)
    mg = solve(cfg.make_solver(), w, x, u0, 0.1)
    np.testing.assert_allclose(mg[0], ser[0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(mg[3], ser[3], rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(mg[4], ser[4], rtol=1e-11, atol=1e-14)


def _trajectory(w, x, u0, dt, cfg):
    _, state, stats = cfg.make_solver().forward(CELL, w, x, u0, dt, T=x.shape[0])
    return state.u, stats


@pytest.mark.parametrize("relax, per_cycle", [("FCF", 2), ("F", 1)])
def test_exactness_front(relax, per_cycle):
    """As for the GRU (test_mgrit.py): each F cycle makes one more C-point exact, each FCF cycle two."""
    cf, T, dt = 4, 4 * 12, 0.3
    w, x, u0 = problem(T)
    exact = np.concatenate([[u0], np.empty((T, len(u0)))])
    for t in range(T):
        exact[t + 1] = CELL.step(w, x[t:t + 1], exact[t:t + 1], dt)[0]
    cpts = np.arange(0, T + 1, cf)
    for k in range(1, 5):
        cfg = MGRITConfig(levels=2, cf=cf, relax=relax, max_iter=k, atol_l2=0.0, skip_first_down=False)
        u, stats = _trajectory(w, x, u0, dt, cfg)
        assert stats.status == NOT_CONVERGED
        err = np.abs(u[cpts] - exact[cpts]).max(axis=1)
        front = per_cycle * k
        assert np.all(err[:front + 1] < 1e-14), (k, err)
        assert err[front + 1] > 1e-9, (k, err)


@settings(max_examples=25, deadline=None)
@given(lam_dt=st.floats(-4.0, -0.02), cf=st.sampled_from([2, 4, 8]), nc=st.integers(4, 24),
       relax=st.sampled_from(["F", "FCF"]))
def test_two_level_convergence_within_the_bound(lam_dt, cf, nc, relax):
    """Two-level MGRIT on u' = λu reduces the C-point error (2-norm) in every iteration by at most
    |φ^m − ψ| (1 − |ψ|^(N_c − 1)) / (1 − |ψ|), times |φ|^m with FCF (Dobrev et al. 2017, Thm 3.3
    for F, 3.4 for FCF; ≤ |φ^m − ψ| / (1 − |ψ|) for every N_c)."""
    dt, T = 0.1, cf * nc
    w, x, u0 = problem(T, B=1, lam=lam_dt / dt)
    phi, psi = 1 / (1 - lam_dt), 1 / (1 - cf * lam_dt)
    bound = abs(phi ** cf - psi) * (1 - abs(psi) ** (nc - 1)) / (1 - abs(psi))
    assert bound <= abs(phi ** cf - psi) / (1 - abs(psi))
    if relax == "FCF":
        bound *= abs(phi) ** cf
    serial, _ = _trajectory(w, x, u0, dt, MGRITConfig(levels=1))
    cpts = np.arange(cf, T + 1, cf)
    errs = [np.linalg.norm(serial[cpts])]                      # the zero initial guess
    for k in range(1, 4):
        cfg = MGRITConfig(levels=2, cf=cf, relax=relax, max_iter=k, atol_l2=0.0, skip_first_down=False)
        u, _ = _trajectory(w, x, u0, dt, cfg)
        errs.append(np.linalg.norm(u[cpts] - serial[cpts]))
    for before, after in zip(errs, errs[1:]):
        assert after <= bound * before * (1 + 1e-9) + 1e-14, (errs, bound)


@pytest.mark.parametrize("quasi", [False, True], ids=["deer", "quasi-deer"])
def test_deer_equals_serial(quasi):
    """DEER through the protocol's layer-wise operations (one layer whose rows have one unknown,
    Jacobian the factor a): the recurrence is linear, so Newton is exact after one update and the
    next one confirms it; trajectory end, input cotangent and dλ equal the serial sweep's."""
    w, x, u0 = problem(T=30)
    ser = solve(SerialSolver(), w, x, u0, 0.1)
    cfg = DEERConfig(quasi=quasi, atol=1e-13, rtol=0.0, max_iter=5, fallback=False)
    de = solve(cfg.make_solver(), w, x, u0, 0.1)
    assert de[2].status == OK and de[2].iterations == 2 and not de[2].fallback, de[2]
    np.testing.assert_allclose(de[0], ser[0], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(de[3], ser[3], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(de[4], ser[4], rtol=1e-13)


def test_solvers_use_only_the_protocol():
    """No module of ``mgritnn.cells`` or ``mgritnn.solvers`` imports an underscore-private name of
    another module, and the solvers take from the cells only the protocol (``cells.base``) and the
    registry lookup ``get_cell`` (for MGRIT's ``coarse_cell`` option): nothing GRU-specific."""
    import ast
    import pathlib

    import mgritnn
    root = pathlib.Path(mgritnn.__file__).parent
    for sub in ("cells", "solvers"):
        for f in sorted((root / sub).glob("*.py")):
            for node in ast.walk(ast.parse(f.read_text())):
                if not isinstance(node, ast.ImportFrom):
                    continue
                names = {a.name for a in node.names}
                assert not {n for n in names if n.startswith("_")}, (f.name, node.module, names)
                module = "." * node.level + (node.module or "")
                if sub == "solvers" and module.lstrip(".").split(".")[0] == "cells" \
                        and node.level == 2:
                    assert module == "..cells.base" or names <= {"get_cell"}, (f.name, names)
