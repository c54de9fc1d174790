"""ELK and quasi-ELK (``DEERConfig(trust_region=True)``) on one process: the Levenberg-Marquardt
step against a slow NumPy solve of its normal equations, the converged forward and gradient
against the serial sweep and BPTT, a problem where quasi-DEER diverges and quasi-ELK converges,
and the options. (Under mpiexec: ``test_mpi_deer.py``.)"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import mgritnn
from mgritnn.cli import build_parser
from mgritnn.config import DIVERGED, OK
from mgritnn.errors import ConfigError
from mgritnn.solvers import DEERConfig, DEERSolver, make_solver
from mgritnn.solvers.elk import lm_step, model_residual
from mgritnn.solvers.scan import linear_recurrence
from mgritnn.train import SolverSpec
from helpers import gru_problem
from strategies import problems

TIGHT = dict(atol=1e-13, rtol=0.0)


# -- slow NumPy twins -----------------------------------------------------------------------------

def naive_residual_jacobian(J):
    """The residual's Jacobian J_r (n H, n H) of one batch row: I on the diagonal, -J_t below it
    (J (n, H, H) dense or (n, H) diagonal; J_0 multiplies the fixed h_0 and is left out)."""
    n, H = J.shape[:2]
    A = np.eye(n * H)
    for t in range(1, n):
        A[t * H:(t + 1) * H, (t - 1) * H:t * H] = -(J[t] if J.ndim == 3 else np.diag(J[t]))
    return A


def naive_lm_step(J, res, lam):
    """argmin_d |r + J_r d|^2 / 2 + lam |d|^2 / 2 by a dense solve of the normal equations, row by row."""
    n, B, H = res.shape
    out = np.empty_like(res)
    for b in range(B):
        A = naive_residual_jacobian(J[:, b])
        d = np.linalg.solve(A.T @ A + lam * np.eye(n * H), -A.T @ res[:, b].ravel())
        out[:, b] = d.reshape(n, H)
    return out


def naive_model_residual(J, d, res):
    out = np.empty_like(res)
    for b in range(res.shape[1]):
        A = naive_residual_jacobian(J[:, b])
        out[:, b] = (res[:, b].ravel() + A @ d[:, b].ravel()).reshape(res.shape[0], -1)
    return out


def system(n, B, H, dense, seed, gain=0.8):
    rng = np.random.default_rng(seed)
    J = gain * rng.standard_normal((n, B, H, H) if dense else (n, B, H)) / np.sqrt(H if dense else 1)
    return J, rng.standard_normal((n, B, H))


# -- the step ------------------------------------------------------------------------------------

@given(n=st.integers(1, 12), B=st.integers(1, 3), H=st.integers(1, 4), dense=st.booleans(),
       lam=st.sampled_from([1e-3, 0.1, 1.0, 100.0]), chunks=st.integers(1, 6),
       seed=st.integers(0, 2 ** 16))
def test_lm_step_solves_the_normal_equations(n, B, H, dense, lam, chunks, seed):
    """The partitioned elimination (any number of partitions, empty interiors included) gives
    the minimizer of the damped least-squares problem: the dense normal equations' solution."""
    J, res = system(n, B, H, dense, seed)
    want = naive_lm_step(J, res, lam)
    got = lm_step(J, res, lam, chunks=chunks)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10 * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("dense", [True, False], ids=["dense", "diag"])
@pytest.mark.parametrize("chunks", [1, 3])
def test_zero_damping_is_the_newton_step(dense, chunks):
    """lambda = 0: J_r is invertible, so the step solves J_r d = -r, DEER's linear recurrence
    d_t = J_t d_{t-1} - r_t."""
    J, res = system(30, 2, 3, dense, 5, gain=0.5)
    newton, _ = linear_recurrence(np.ascontiguousarray(J), -res, np.zeros((2, 3)))
    got = lm_step(J, res, 0.0, chunks=chunks)
    np.testing.assert_allclose(got, newton, rtol=0, atol=1e-10 * np.abs(newton).max())


@pytest.mark.parametrize("dense", [True, False], ids=["dense", "diag"])
def test_model_residual_is_the_linear_model(dense):
    J, res = system(9, 2, 3, dense, 1)
    d = np.random.default_rng(2).standard_normal(res.shape)
    np.testing.assert_allclose(model_residual(J, d, res), naive_model_residual(J, d, res),
                               rtol=0, atol=1e-12)


def test_float32_step_keeps_its_dtype():
    J, res = system(10, 2, 3, True, 3)
    got = lm_step(J.astype(np.float32), res.astype(np.float32), 0.5)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, naive_lm_step(J, res, 0.5), rtol=0, atol=1e-4)


# -- the solver ----------------------------------------------------------------------------------

@pytest.mark.parametrize("quasi", [False, True], ids=["elk", "quasi-elk"])
@given(p=problems(max_T=16, max_H=6))
def test_loss_and_gradient_equal_serial_bptt(p, quasi):
    """Converged to 1e-13, ELK's loss and gradient (DEER's adjoint: the full transposed
    Jacobian at the converged trajectory) equal serial BPTT's to 1e-9."""
    m = mgritnn.GRUClassifier(p["I"], p["H"], p["C"], num_layers=p["L"], cell=p["cell"],
                              dtype="float64", dt=p["dt"])
    m.set_params(p["params"])
    l0, g0, _ = m.loss_and_grad_flat(p["X"], p["y"])
    cfg = DEERConfig(quasi=quasi, trust_region=True, max_iter=200, fallback=False, **TIGHT)
    l1, g1, info = m.loss_and_grad_flat(p["X"], p["y"], cfg)
    assert info["forward"].status == OK, info["forward"].message
    np.testing.assert_allclose(l1, l0, rtol=1e-9)
    np.testing.assert_allclose(g1, g0, rtol=0, atol=1e-9 * max(1.0, np.abs(g0).max()))
    np.testing.assert_allclose(m.forward(p["X"], cfg), m.forward(p["X"]), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("quasi", [False, True], ids=["elk", "quasi-elk"])
@pytest.mark.parametrize("cell, L", [("classic", 1), ("classic", 3), ("implicit", 2)])
def test_layers_and_cells_converge_to_the_serial_result(cell, L, quasi):
    """T = 60, several layers (each layer's LM iteration takes the converged layer below as
    input): the trajectory and the gradient are the serial ones to 1e-9; the statistics count
    the iterations and two step evaluations per accepted iteration at most."""
    m, X, y = gru_problem(cell, L=L, T=60, scale=1.5, dt=2.0 if cell == "implicit" else 1.0)
    l0, g0, _ = m.loss_and_grad_flat(X, y)
    cfg = DEERConfig(quasi=quasi, trust_region=True, max_iter=150, fallback=False,
                     atol=1e-12, rtol=0.0)
    l1, g1, info = m.loss_and_grad_flat(X, y, cfg)
    f = info["forward"]
    assert f.status == OK and not f.fallback, f.message
    assert len(f.history) == f.iterations and f.step_evals <= (2 * f.iterations + L + L) * 60
    np.testing.assert_allclose(l1, l0, rtol=1e-9)
    np.testing.assert_allclose(g1, g0, rtol=0, atol=1e-9 * np.abs(g0).max())


def _large_recurrent_weights():
    """float32, T = 1500, the recurrent matrices 4x: quasi-DEER's iterates grow (measured:
    diverged after 14 iterations), plain DEER converges in 7."""
    m, X, y = gru_problem("classic", L=1, T=1500, dtype="float32", seed=0)
    m.set_params({k: v * (4 if "weight_hh" in k else 1) for k, v in m.params.items()})
    return m, X, y


def test_quasi_elk_converges_where_quasi_deer_diverges():
    """The trust region keeps the diagonal (quasi-Newton) iteration from diverging: quasi-DEER
    is reported diverged, quasi-ELK converges (float32 default tolerances, 50 iterations at
    most, measured 27) to the serial logits."""
    m, X, y = _large_recurrent_weights()
    _, _, info = m.loss_and_grad_flat(X, y, DEERConfig(quasi=True, fallback=False), strict=False)
    assert info["forward"].status == DIVERGED
    cfg = DEERConfig(quasi=True, trust_region=True, fallback=False)
    _, _, info = m.loss_and_grad_flat(X, y, cfg)
    assert info["forward"].status == OK and info["forward"].iterations <= 50
    exact = m.forward(X)
    np.testing.assert_allclose(m.forward(X, cfg), exact, rtol=0, atol=1e-3 * np.abs(exact).max())


def test_a_failed_solve_falls_back_like_deer():
    """Not converged in 2 iterations: the serial sweep runs (reported), as for DEER."""
    m, X, y = gru_problem("classic", L=2, T=40, scale=2.0)
    l0, g0, _ = m.loss_and_grad_flat(X, y)
    l1, g1, info = m.loss_and_grad_flat(X, y, DEERConfig(trust_region=True, max_iter=2))
    f = info["forward"]
    assert f.fallback and "not converged" in f.message and "serial sweep" in f.message
    assert l1 == l0
    np.testing.assert_allclose(g1, g0, rtol=1e-9, atol=1e-12)


# -- options -------------------------------------------------------------------------------------

def test_names_flags_and_specs():
    elk = make_solver("quasi-deer", dict(trust_region=True, lm_lambda=0.1))
    assert isinstance(elk, DEERSolver) and elk.config.quasi and elk.config.trust_region
    assert SolverSpec.of(DEERConfig(trust_region=True)) == SolverSpec("deer", {"trust_region": True})
    args = build_parser().parse_args(["train", "--solver", "quasi-deer", "--trust-region",
                                      "--lm-lambda", "0.5"])
    assert getattr(args, "solver_options.trust_region") is True
    assert getattr(args, "solver_options.lm_lambda") == 0.5


@pytest.mark.parametrize("kw, match", [
    (dict(trust_region="yes"), "trust_region"), (dict(trust_region=True, lm_lambda=0), "lm_lambda"),
    (dict(trust_region=True, lm_lambda=-1.0), "lm_lambda"),
    (dict(trust_region=True, lm_lambda=float("inf")), "lm_lambda"),
    (dict(trust_region=True, damping=0.5), "damping .* does not apply with trust_region"),
    (dict(trust_region=True, divergence=10.0), "divergence .* does not apply"),
    (dict(lm_lambda=0.5), "lm_lambda applies with trust_region only")])
def test_bad_options_are_rejected(kw, match):
    with pytest.raises(ConfigError, match=match):
        DEERConfig(**kw)
