"""MGRIT on one process: equivalence with the serial sweep, the exactness front, options, statuses.
(Rank-count invariance under mpiexec is in test_mpi.py.)"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mgritnn
from mgritnn.cells import FusedChains, get_cell, project, without
from mgritnn.config import DIVERGED, NONFINITE, NOT_CONVERGED, OK
from mgritnn.distributed import level_points, local_grid, rank_bounds
from mgritnn.errors import ConfigError, SolverError
from mgritnn.solvers import DEERConfig, MGRITConfig, MGRITSolver, residual_grew
from helpers import assert_exactness_front, assume_hierarchy_fits
from strategies import problems


def model_and_data(cell="classic", L=2, T=37, B=3, I=3, H=5, C=3, seed=0, dtype="float64", scale=None):
    m = mgritnn.GRUClassifier(I, H, C, num_layers=L, cell=cell, dtype=dtype, seed=seed)
    if scale is not None:
        m.flat[:] *= scale
    rng = np.random.default_rng(seed + 1)
    return m, rng.normal(size=(B, T, I)), rng.integers(0, C, size=B)


def trajectory(m, X, solver, dt=1.0):
    """The fine trajectory (T+1, L, B, H) from a solver's forward solve on one process."""
    Xt = np.ascontiguousarray(np.swapaxes(X, 0, 1))
    w = m.weights()
    ax0 = project(Xt, w.Wx[0], w.bx[0])
    h0 = np.zeros((m.num_layers, X.shape[0], m.hidden_size))
    if solver == "serial":
        seq = m.cell.sequence_forward(w, ax0, h0, dt)
        return np.stack(seq.hs, axis=1), None
    _, state, stats = MGRITSolver(solver).forward(m.cell, w, Xt, h0, dt, T=Xt.shape[0])
    return state.u, stats


@pytest.mark.parametrize("cell", ["classic", "implicit"])
@pytest.mark.parametrize("L", [1, 2])
def test_one_level_is_serial_bit_for_bit(cell, L):
    m, X, y = model_and_data(cell, L)
    l0, g0, _ = m.loss_and_grad_flat(X, y)
    l1, g1, info = m.loss_and_grad_flat(X, y, MGRITConfig(levels=1))
    assert l0 == l1 and np.array_equal(g0, g1)
    assert info["forward"].status == OK and info["forward"].iterations == 1
    assert np.array_equal(m.forward(X), m.forward(X, MGRITConfig(levels=1)))


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("relax, per_cycle", [("FCF", 2), ("F", 1)])
def test_exactness_front_two_levels(skip, relax, per_cycle):
    """Two levels: each FCF cycle makes two more C-points exact (C-relaxation one, the FAS coarse
    correction the next), each F cycle one. The skipped first cycle makes none exact (its coarse
    solve uses the coarse propagator), so after k cycles the front stands at C-point
    per_cycle * (k - skip)."""
    cf, T = 4, 4 * 14
    m, X, _ = model_and_data("classic", L=2, T=T, H=6, seed=3)
    exact, _ = trajectory(m, X, "serial")
    assert_exactness_front(exact, lambda cfg: trajectory(m, X, cfg), cf, relax, per_cycle, skip)


@settings(max_examples=8)
@given(p=problems(max_T=30, max_L=2), levels=st.integers(2, 3), cf=st.integers(2, 4),
       coarse_input=st.sampled_from(["sample", "mean"]), cycle=st.sampled_from(["V", "F"]))
def test_tight_tolerance_equals_serial_bptt(p, levels, cf, coarse_input, cycle):
    """With tol tiny and enough cycles, loss and every gradient equal serial BPTT (float64, 1e-10)."""
    m = mgritnn.GRUClassifier(p["I"], p["H"], p["C"], num_layers=p["L"], cell=p["cell"],
                              dtype="float64", dt=p["dt"])
    m.set_params(p["params"])
    cfg = MGRITConfig(levels=levels, cf=cf, max_iter=p["T"] + 2, adjoint_max_iter=p["T"] + 2,
                      atol_l2=1e-14, coarse_input=coarse_input, cycle=cycle)
    assume_hierarchy_fits(cfg, p["T"])
    l0, g0, _ = m.loss_and_grad_flat(p["X"], p["y"])
    l1, g1, info = m.loss_and_grad_flat(p["X"], p["y"], cfg)
    assert info["forward"].status == OK and info["adjoint"].status == OK
    assert l1 == pytest.approx(l0, rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(g1, g0, rtol=1e-10, atol=1e-10 * np.abs(g0).max())


@pytest.mark.parametrize("cell, L, T", [("classic", 1, 53), ("classic", 2, 64), ("implicit", 2, 41)])
def test_converges_to_serial_with_paper_levels(cell, L, T):
    m, X, y = model_and_data(cell, L, T=T)
    l0, g0, _ = m.loss_and_grad_flat(X, y)
    cfg = MGRITConfig(levels=3, cf=4, max_iter=30, adjoint_max_iter=30, atol_l2=1e-13)
    l1, g1, info = m.loss_and_grad_flat(X, y, cfg)
    assert info["forward"].status == OK and info["forward"].iterations < 15
    assert l1 == pytest.approx(l0, rel=1e-10)
    np.testing.assert_allclose(g1, g0, rtol=1e-10, atol=1e-10 * np.abs(g0).max())
    cycles = info["forward"].history[:-1]        # the last entry is the final sweep's
    assert all(b < a for a, b in zip(cycles, cycles[1:]))
    assert info["forward"].history[-1] < 1e-12


def test_paper_defaults_are_inexact_but_close_and_report_it():
    m, X, y = model_and_data("classic", 2, T=128, B=4, H=8)
    l0, g0, _ = m.loss_and_grad_flat(X, y)
    l1, g1, info = m.loss_and_grad_flat(X, y, "mgrit")
    f, a = info["forward"], info["adjoint"]
    assert (f.iterations, a.iterations) == (2, 1)
    assert f.status == NOT_CONVERGED and a.status == NOT_CONVERGED
    assert len(f.history) == 2 and len(a.history) == 1      # cycle 1 + final sweep; final sweep
    assert f.residual == f.history[-1] > 0 and a.residual > 0
    assert abs(l1 - l0) < 0.05 * abs(l0)         # inexact, but a fair approximation
    cos = g1 @ g0 / np.linalg.norm(g1) / np.linalg.norm(g0)
    assert cos > 0.9


def test_step_evaluations_counted():
    """One rank, N = 128, 3 levels, cf 4: level 0 has 96 F- and 32 C-points, level 1 24 and 8,
    level 2 8 points. Forward: skip cycle (coarsest 8, F level 1 24) + full cycle (level 0:
    F 96 + C 32 + F 96 + residual 32 + coarse rhs 32; level 1: 24 + 8 + 24 + 8 + 8; coarsest 8;
    F level 1 24) + final sweep 128 = 32 + 392 + 128 = 552. Adjoint: coarse linearizations 32 + 8,
    skip cycle 32, final sweep (which also accumulates the parameter gradients) 128 = 200."""
    m, X, y = model_and_data("classic", 1, T=128, B=2, H=3)
    _, _, info = m.loss_and_grad_flat(X, y, "mgrit")
    assert info["forward"].step_evals == 552
    assert info["adjoint"].step_evals == 200


def test_divergence_and_nan_are_reported():
    """A classic (explicit) coarse propagator at step size 64 with large weights blows up; the
    solve stops with a clear status instead of returning a silent wrong answer."""
    m, X, y = model_and_data("classic", 1, T=256, B=2, H=4, scale=6.0)
    cfg = MGRITConfig(levels=3, cf=8, coarse_cell="classic", max_iter=6, atol_l2=0.0)
    _, _, info = m.loss_and_grad_flat(X, y, cfg, strict=False)
    assert info["forward"].status in (DIVERGED, NONFINITE), info["forward"]
    assert "diverged" in info["forward"].message or "NaN" in info["forward"].message
    with pytest.raises(SolverError, match="mgrit forward solve failed"):   # the default: raised
        m.loss_and_grad(X, y, cfg)
    with pytest.raises(SolverError):
        m.forward(X, cfg)


def test_automatic_levels():
    assert MGRITConfig(levels=None, cf=4, min_coarse=2).cfs(128) == [4, 4, 4]
    assert MGRITConfig(levels=None, cf=4, min_coarse=2).cfs(128, size=8) == [4, 4]
    assert MGRITConfig(levels=None, cf=2, max_levels=3).cfs(100) == [2, 2]


@pytest.mark.parametrize("kwargs, match", [
    (dict(cf=1), "cf"), (dict(levels=0), "levels"), (dict(relax="CF"), "relax"),
    (dict(cycle="W"), "cycle"), (dict(coarse_input="max"), "coarse_input"),
    (dict(coarse_cell="lstm"), "cell"), (dict(max_iter=0), "max_iter"), (dict(atol_l2=-1.0), "atol_l2"),
    (dict(adjoint_max_iter=0), "adjoint_max_iter"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MGRITConfig(**kwargs)


def test_hierarchy_that_does_not_fit():
    with pytest.raises(ConfigError, match="ranks"):
        rank_bounds(6, [4], 4)                    # 2 coarsest intervals, 4 ranks
    with pytest.raises(ConfigError, match="ranks"):
        rank_bounds(3, [], 4)                     # more ranks than time steps
    with pytest.raises(ConfigError, match="coarser"):
        level_points(3, [4, 4])
    m, X, y = model_and_data(T=5)
    with pytest.raises(ConfigError, match="coarser"):
        m.loss_and_grad(X, y, MGRITConfig(levels=4, cf=4))


def test_partition_and_grids():
    b = rank_bounds(37, [2, 2], 3)
    assert b[0] == 0 and b[-1] == 37 and np.all(np.diff(b) > 0)
    assert all(x % 4 == 0 or x == 37 for x in b)
    for rank in range(3):
        fwd = local_grid(37, [2, 2], 3, rank)
        rev = local_grid(37, [2, 2], 3, rank, reverse=True)
        assert (fwd.lo, fwd.hi) == (b[rank], b[rank + 1])
        assert (rev.lo, rev.hi) == (37 - b[rank + 1], 37 - b[rank])
        for l in range(3):                        # mirror grids
            assert np.array_equal(np.sort(37 - rev.points[l]), fwd.points[l])


def test_warm_start_reuses_each_samples_trajectory():
    """initial_guess='warm': a sample's second solve starts from its first solve's C-points, so its
    first residual is far smaller; new samples start from zero; tight solves still equal serial."""
    from mgritnn.solvers import get_solver
    m, X, y = model_and_data("classic", 2, T=64, B=5)
    solver = get_solver(MGRITConfig(initial_guess="warm", max_iter=3, adjoint_max_iter=2))
    keys = np.arange(5)
    _, _, cold = m.loss_and_grad_flat(X, y, solver, keys=keys)
    _, _, warm = m.loss_and_grad_flat(X, y, solver, keys=keys)
    assert warm["forward"].history[0] < 1e-2 * cold["forward"].history[0]
    _, _, other = m.loss_and_grad_flat(X, y, solver, keys=keys + 100)    # unseen samples: zero
    assert other["forward"].history[0] == pytest.approx(cold["forward"].history[0], rel=1e-12)
    tight = get_solver(MGRITConfig(initial_guess="warm", max_iter=40, adjoint_max_iter=40, atol_l2=1e-13))
    l0, g0, _ = m.loss_and_grad_flat(X, y)
    m.loss_and_grad_flat(X, y, tight, keys=keys)
    l1, g1, info = m.loss_and_grad_flat(X, y, tight, keys=keys)
    assert info["forward"].iterations == 1 and info["forward"].status == OK
    assert l1 == pytest.approx(l0, rel=1e-10)
    np.testing.assert_allclose(g1, g0, rtol=1e-9, atol=1e-10 * np.abs(g0).max())


def _step_api_cell(name):
    """The same cell, advanced by MGRIT through the generic step API instead of the compiled stack
    kernels (without the :class:`~mgritnn.cells.FusedChains` capability): the twin of the fused
    propagators."""
    return without(get_cell(name), FusedChains)


@settings(max_examples=10)
@given(p=problems(max_T=40, max_L=3, max_B=3), levels=st.integers(2, 3), cf=st.integers(2, 4),
       relax=st.sampled_from(["F", "FCF", ("F", "FCF")]), fwd=st.integers(1, 3),
       bwd=st.integers(1, 2), skip=st.booleans(), threads=st.sampled_from([1, 2]))
def test_compiled_propagators_equal_the_step_api_bitwise(p, levels, cf, relax, fwd, bwd, skip,
                                                         threads):
    """MGRIT on the compiled stack kernels (one call per relaxation) computes bit for bit what
    MGRIT through the cells' step API computes (one batched call per position in the intervals),
    converged or not, on 1 or 2 threads: loss, gradient, residual histories and counts."""
    import numba
    m = mgritnn.GRUClassifier(p["I"], p["H"], p["C"], num_layers=p["L"], cell=p["cell"],
                              dtype="float64", dt=p["dt"])
    m.set_params(p["params"])
    cfg = MGRITConfig(levels=levels, cf=cf, relax=relax, max_iter=fwd, adjoint_max_iter=bwd,
                      skip_first_down=skip, atol_l2=0.0)
    assume_hierarchy_fits(cfg, p["T"])
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        l1, g1, fused = m.loss_and_grad_flat(p["X"], p["y"], cfg)
    finally:
        numba.set_num_threads(before)
    m.cell = _step_api_cell(p["cell"])
    l2, g2, api = m.loss_and_grad_flat(p["X"], p["y"], cfg)
    assert l1 == l2 and np.array_equal(g1, g2)
    for kind in ("forward", "adjoint"):
        a, b = fused[kind], api[kind]
        assert a.history == b.history and a.step_evals == b.step_evals
        assert (a.iterations, a.status) == (b.iterations, b.status)


@pytest.mark.parametrize("cfg", [MGRITConfig(), MGRITConfig.preset("fast"),
                                 MGRITConfig(levels=3, cf=2, relax=("F", "FCF"), cycle="F")])
def test_phases_account_for_every_evaluation(cfg):
    """``SolveStats.phases``: per phase and level [seconds, calls, evaluations]; the evaluations
    add up to ``step_evals`` and every phase took time >= 0."""
    m, X, y = model_and_data("implicit", 2, T=64, B=2)
    _, _, info = m.loss_and_grad_flat(X, y, cfg)
    for kind in ("forward", "adjoint"):
        st_ = info[kind]
        assert sum(e for _, _, e in st_.phases.values()) == st_.step_evals > 0
        assert all(s >= 0 and c >= 1 for s, c, _ in st_.phases.values())
    assert any(k.startswith("final") for k in info["forward"].phases)
    assert "parameter gradients" in info["adjoint"].phases


def test_presets():
    paper, fast = MGRITConfig.preset("paper"), MGRITConfig.preset("fast")
    assert paper == MGRITConfig()                # the defaults are the paper's
    assert (fast.levels, fast.relax, fast.max_iter, fast.adjoint_max_iter, fast.initial_guess) == \
        (2, "F", 1, 1, "warm")
    assert MGRITConfig.preset("fast", max_iter=2).max_iter == 2
    with pytest.raises(ConfigError, match="unknown MGRIT preset"):
        MGRITConfig.preset("fastest")
    from mgritnn.solvers import make_solver
    s = make_solver("mgrit", {"preset": "fast", "cf": 2})
    assert s.config == MGRITConfig.preset("fast", cf=2)
    with pytest.raises(ConfigError, match="no presets"):
        make_solver("deer", {"preset": "fast"})


def test_fast_preset_step_evaluations():
    """The fast preset on one rank, N = 128, 2 levels, cf 4 (96 F- and 32 C-points on level 0, 32
    coarse steps). First visit of the samples (no warm states: the skipped first cycle): coarse
    solve 32 + final sweep 128 = 160 forward; adjoint: coarse linearizations 32, coarse solve 32,
    final sweep 128 = 192. Warm (the samples seen before): a full cycle, F level 0 96, residual 32,
    coarse rhs 32, coarse solve 32, final sweep 128 = 320 forward. At P = 4 the same counts per rank
    are 40 + 48 cold and 80 + 48 = 128 warm (Moon & Cyr's code: 98 + 42)."""
    m, X, y = model_and_data("implicit", 1, T=128, B=2, H=3)
    solver = MGRITConfig.preset("fast").make_solver()
    _, _, cold = m.loss_and_grad_flat(X, y, solver, keys=np.arange(2))
    assert (cold["forward"].step_evals, cold["adjoint"].step_evals) == (160, 192)
    _, _, warm = m.loss_and_grad_flat(X, y, solver, keys=np.arange(2))
    assert (warm["forward"].step_evals, warm["adjoint"].step_evals) == (320, 192)
    # the warm solve starts where the cold one ended: its first residual is the cold final one
    assert warm["forward"].history[0] == cold["forward"].history[-1]
    assert warm["forward"].history[-1] < 0.5 * warm["forward"].history[0]


def test_config_object_makes_one_solver_per_model():
    """A config passed to the model is made into a solver once per value (an equal config shares
    it): a warm start takes effect through ``loss_and_grad`` with the same config, and keys
    reach the solver."""
    m, X, y = model_and_data("classic", 2, T=64, B=5)
    cfg = MGRITConfig(initial_guess="warm", max_iter=3, adjoint_max_iter=2)
    assert m._solver(cfg) is m._solver(cfg)
    assert m._solver(cfg) is m._solver(MGRITConfig(initial_guess="warm", max_iter=3, adjoint_max_iter=2))
    assert m._solver(cfg) is not m._solver(MGRITConfig(initial_guess="warm", max_iter=4, adjoint_max_iter=2))
    keys = np.arange(5)
    _, _, cold = m.loss_and_grad_flat(X, y, cfg, keys=keys)
    m.loss_and_grad(X, y, cfg, keys=keys)
    _, _, warm = m.loss_and_grad_flat(X, y, cfg, keys=keys)
    assert warm["forward"].history[0] < 1e-2 * cold["forward"].history[0]


@pytest.mark.parametrize("make", [
    lambda: MGRITConfig(initial_guess="warm", max_iter=1, adjoint_max_iter=1),
    lambda: DEERConfig(initial_guess="warm", atol=1e-3, rtol=0.0),
], ids=["mgrit", "deer"])
def test_warm_states_survive_a_checkpoint_bit_for_bit(make):
    """warm_arrays / load_warm_arrays: a new solver loaded with the old one's warm states continues
    bit for bit as the old one does (what a resumed training run needs)."""
    m, X, y = model_and_data("classic", 2, T=48, B=4)
    keys = np.arange(4)
    old = make().make_solver()
    m.loss_and_grad_flat(X[:3], y[:3], old, keys=keys[:3])           # sample 3 never seen
    arrays = old.warm_arrays()
    assert arrays["keys"].shape == (3, 2) and arrays["states"].dtype == np.float64
    new = make().make_solver()
    new.load_warm_arrays({k: v.copy() for k, v in arrays.items()})
    m.flat[:] *= 1.01                                                 # an optimizer step later
    l_old, g_old, _ = m.loss_and_grad_flat(X, y, old, keys=keys)
    l_new, g_new, _ = m.loss_and_grad_flat(X, y, new, keys=keys)
    assert l_new == l_old and np.array_equal(g_new, g_old)
    fresh = make().make_solver()                                      # without them: different
    l_cold, _, _ = m.loss_and_grad_flat(X, y, fresh, keys=keys)
    assert l_cold != l_old
    with pytest.raises(ConfigError, match="do not fit"):
        new.load_warm_arrays(dict(keys=arrays["keys"][:1], states=arrays["states"]))


def test_solvers_without_memory_refuse_warm_arrays():
    from mgritnn.solvers import SerialSolver
    assert SerialSolver().warm_arrays() == {}
    SerialSolver().load_warm_arrays({})
    with pytest.raises(ConfigError, match="keeps no warm-start states"):
        SerialSolver().load_warm_arrays({"keys": np.zeros((1, 2))})


@pytest.mark.parametrize("skip", [True, False])
def test_f_cycle_visits_the_coarse_levels_twice_in_every_cycle(skip):
    """Regression: cycle 0 of an F-cycle ran as a V-cycle (with or without the skipped down-leg, so
    the adjoint's F-cycles were always short of their second visit). One F-cycle on 4 levels does
    a V-cycle on level 1 after its F-cycle there, so it costs more than one V-cycle, and it
    converges at least as fast."""
    m, X, y = model_and_data("classic", 1, T=128, B=2)
    info = {}
    for cycle in ("V", "F"):
        cfg = MGRITConfig(levels=4, cf=2, max_iter=1, adjoint_max_iter=1, cycle=cycle,
                          skip_first_down=skip)
        _, _, info[cycle] = m.loss_and_grad_flat(X, y, cfg)
    for way in ("forward", "adjoint"):
        v, f = info["V"][way], info["F"][way]
        assert f.step_evals > v.step_evals, way
        assert f.residual <= v.residual, way


def test_automatic_levels_stop_at_the_listed_coarsening_factors():
    """Regression: with levels=None and a cf list, cfs() asked for one entry more than the list
    whenever the sequence could take more levels; it stops at len(cf) + 1 levels."""
    assert MGRITConfig(levels=None, cf=(4, 2)).cfs(1024) == [4, 2]
    assert MGRITConfig(levels=None, cf=(4, 2), min_coarse=200).cfs(1024) == [4]
    assert len(MGRITConfig(levels=None, cf=2).cfs(1024)) > 2


@pytest.mark.parametrize("factor", [1e-6, 1e8])
def test_adjoint_tolerance_and_divergence_test_scale_with_the_adjoint(factor):
    """The adjoint is linear in its terminal value lambda_N: scaling lambda_N scales every residual
    and nothing else. Regression: the adjoint used the forward's absolute tol (sized for states
    |h| <= 1) and its all-ones divergence reference, so a large lambda_N never converged or was
    called diverged, and a small one converged at once."""
    m, X, _ = model_and_data("classic", 2, T=64, B=2)
    Xt = np.ascontiguousarray(np.swapaxes(X, 0, 1))
    w = m.weights()
    h0 = np.zeros((2, X.shape[0], m.hidden_size))
    solver = MGRITSolver(MGRITConfig(levels=3, cf=2, max_iter=30, adjoint_max_iter=30, atol_l2=1e-9))
    h_last, state, _ = solver.forward(m.cell, w, Xt, h0, 1.0, T=64)
    lam = np.random.default_rng(5).normal(size=h_last.shape) * 0.1
    runs = []
    for f in (1.0, factor):
        grads = m.cell.zero_grads(w)
        dax, stats = solver.adjoint(m.cell, w, state, lam * f, grads)
        runs.append((dax, stats))
    (d1, s1), (d2, s2) = runs
    assert s1.status == s2.status == OK and s1.iterations == s2.iterations > 1
    np.testing.assert_allclose(np.array(s2.history), factor * np.array(s1.history), rtol=1e-6)
    np.testing.assert_allclose(d2, factor * d1, rtol=1e-6, atol=1e-12 * factor)


def test_residual_grew_tells_growth_from_round_off():
    """A history that rises from its best by more than 10 % is growth; a converging one, a
    float32 residual wobbling at round-off, a single value and a NaN history are not."""
    assert residual_grew([10.0, 3.0, 2.0, 2.5], np.float64)
    assert residual_grew([10.0, 12.0], np.float64)
    assert not residual_grew([10.0, 3.0, 2.0, 2.1], np.float64)           # within 10 %
    assert not residual_grew([10.0, 1e-1, 1e-3], np.float64)
    assert not residual_grew([10.0, 5.3e-6, 9e-6], np.float32)             # below sqrt(eps) * 10
    assert residual_grew([10.0, 5.3e-6, 9e-6], np.float64)
    assert not residual_grew([10.0], np.float64) and not residual_grew([], np.float64)
    assert not residual_grew([10.0, np.nan, 20.0], np.float64)


def _rotating_model(gain):
    """A classic GRU whose candidate n = tanh(gain Q h + ...) (Q orthogonal) drives an
    undamped, mixing recurrence for a large gain, which the implicit coarse levels do not follow."""
    H = 8
    m = mgritnn.GRUClassifier(3, H, 3, dtype="float64", seed=0)
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.normal(size=(H, H)))
    m.params["weight_hh_l0"][2 * H:] = gain * Q          # gate order r, z, n
    return m, rng.normal(size=(2, 512, 3)), np.array([0, 1])


@pytest.mark.parametrize("gain, grows", [(0.5, False), (3.0, True)])
def test_a_solve_that_stops_contracting_says_so(gain, grows):
    """MGRIT (classic fine cell, implicit coarse levels) on a strongly mixing recurrence: the
    residual stalls and rises over 20 cycles, short of the divergence test. The solve says so
    (``grew``, in the message) instead of returning a NOT_CONVERGED that looks like slow
    convergence; on a damped recurrence it converges and does not."""
    m, X, y = _rotating_model(gain)
    cfg = MGRITConfig(levels=3, cf=4, max_iter=20, adjoint_max_iter=20, atol_l2=0.0)
    _, _, info = m.loss_and_grad_flat(X, y, cfg, strict=False)
    f = info["forward"]
    assert f.status == NOT_CONVERGED and f.grew == grows, f
    assert ("not contracting" in f.message) == grows
    cycles = f.history[:-1]
    assert (cycles[-1] > 1.1 * min(cycles[:-1])) == grows
