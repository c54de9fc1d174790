"""MGRIT's accuracy control (``rms_tol``, ``stall``, ``fallback``, the ``train`` preset) and the
gradient check (``mgritnn.gradient_quality``, ``TrainConfig.gradient_check``), on one process.

What must hold: a solve that reports success meets its tolerance (the Dahlquist equation and the
GRU); the gradient error shrinks with the tolerance; a forced fallback is bit for bit the serial
gradient; a stall gives up before the cycle cap; the gradient check measures what it says; a
training run whose every checked batch misses the target trains exactly as the serial sweep.
(Rank invariance of the adaptive cycles under mpiexec: ``test_mpi_accuracy.py``.)
"""
import numpy as np
import pytest

import mgritnn
from mgritnn import gradient_quality as gq
from mgritnn.cells import DahlquistCell, DahlquistWeights
from mgritnn.config import NOT_CONVERGED, OK
from mgritnn.errors import ConfigError, DataError
from mgritnn.solvers import MGRITConfig, SerialSolver
from mgritnn.train import TrainConfig, Trainer

CELL = DahlquistCell()


def dahlquist(T=96, B=3, lam=-0.5, seed=0):
    rng = np.random.default_rng(seed)
    return DahlquistWeights(np.array(lam)), rng.normal(size=(T, B)), rng.normal(size=B)


def gru(cell="classic", T=64, B=3, H=6, seed=0, scale=1.0):
    m = mgritnn.GRUClassifier(3, H, 3, num_layers=1, cell=cell, dtype="float64", seed=seed)
    m.flat[:] *= scale
    rng = np.random.default_rng(seed + 1)
    return m, rng.normal(size=(B, T, 3)), rng.integers(0, 3, size=B)


def rms(a):
    return float(np.sqrt(np.mean(np.square(a))))


# -- accuracy control --------------------------------------------------------------------------

@pytest.mark.parametrize("tol", [1e-3, 1e-6, 1e-9])
@pytest.mark.parametrize("relax", ["F", "FCF"])
def test_dahlquist_success_meets_the_rms_tolerance(tol, relax):
    """A forward solve that reports success has the RMS of its C-point residual within rms_tol
    (the states' scale is 1), and its error against the serial sweep is of that order."""
    w, x, u0 = dahlquist()
    dt = 0.5
    cfg = MGRITConfig(levels=2, cf=4, relax=relax, max_iter=40, atol_l2=0.0, rms_tol=tol)
    _, state, stats = cfg.make_solver().forward(CELL, w, x, u0, dt, T=x.shape[0])
    exact = SerialSolver().forward(CELL, w, x, u0, dt, T=x.shape[0])[1].u
    assert stats.status == OK, stats.message
    n_c = x.shape[0] // 4                         # the level-0 C-points after point 0
    assert stats.residual <= tol * np.sqrt(n_c * x.shape[1]) * (1 + 1e-12)
    assert rms(state.u - exact) < 100 * tol


@pytest.mark.parametrize("cell", ["classic", "implicit"])
def test_gru_gradient_error_shrinks_with_the_tolerance(cell):
    """Tighter rms_tol: every solve that reports success meets it (RMS of the C-point residual
    relative to the scale: 1 forward, max |lambda_N| adjoint), and the gradient error falls."""
    m, X, y = gru(cell, T=96)
    _, g0, _ = m.loss_and_grad_flat(X, y)
    errors = []
    for tol in (1e-2, 1e-4, 1e-6, 1e-8):
        cfg = MGRITConfig(levels=2, cf=2, relax="F", max_iter=40, adjoint_max_iter=40,
                          atol_l2=0.0, rms_tol=tol)
        _, g, info = m.loss_and_grad_flat(X, y, cfg)
        f, a = info["forward"], info["adjoint"]
        assert f.status == OK and a.status == OK, (f.message, a.message)
        n = (96 // 2) * X.shape[0] * m.hidden_size
        assert f.residual <= tol * np.sqrt(n) * (1 + 1e-12)
        errors.append(np.linalg.norm(g - g0) / np.linalg.norm(g0))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-5, errors


def test_forced_fallback_is_the_serial_gradient_bit_for_bit():
    """A tolerance out of reach in one cycle: both solves fall back to the serial sweep, whose
    loss, gradient and logits are the serial solver's to the bit; the evaluations of the failed
    cycles are counted."""
    for cell in ("classic", "implicit"):
        m, X, y = gru(cell, T=40)
        l0, g0, i0 = m.loss_and_grad_flat(X, y)
        cfg = MGRITConfig(levels=2, cf=2, max_iter=1, adjoint_max_iter=1, atol_l2=0.0,
                          rms_tol=1e-15, fallback=True)
        l1, g1, i1 = m.loss_and_grad_flat(X, y, cfg)
        assert l1 == l0 and np.array_equal(g1, g0) and np.array_equal(i1["logits"], i0["logits"])
        for s in (i1["forward"], i1["adjoint"]):
            assert s.fallback and s.status == NOT_CONVERGED and s.success
            assert "serial sweep ran instead" in s.message
            assert s.step_evals > 40                  # the failed cycle and the sweep
        assert np.array_equal(m.forward(X, cfg), m.forward(X))


def test_converged_solve_does_not_fall_back():
    m, X, y = gru("implicit", T=40)
    cfg = MGRITConfig(levels=2, cf=2, max_iter=30, adjoint_max_iter=30, atol_l2=0.0,
                      rms_tol=1e-6, fallback=True)
    _, _, info = m.loss_and_grad_flat(X, y, cfg)
    assert not info["forward"].fallback and not info["adjoint"].fallback
    assert info["forward"].status == OK


def test_stall_gives_up_before_the_cap_and_falls_back():
    """Weights scaled up (a hard recurrence) and a coarse grid that cannot follow it: the solve
    stops as stalled long before 50 cycles, and the fallback makes the result exact."""
    m, X, y = gru("classic", T=128, scale=4.0)
    _, g0, _ = m.loss_and_grad_flat(X, y)
    cfg = MGRITConfig(levels=3, cf=4, max_iter=50, adjoint_max_iter=50, atol_l2=0.0,
                      rms_tol=1e-12, stall=0.9, fallback=True)
    _, g, info = m.loss_and_grad_flat(X, y, cfg)
    f = info["forward"]
    assert f.stalled and f.fallback and f.iterations < 50, f.message
    assert "stalled" in f.message
    np.testing.assert_array_equal(g, g0)


def test_stall_off_runs_every_cycle():
    m, X, y = gru("classic", T=128, scale=4.0)
    cfg = MGRITConfig(levels=3, cf=4, max_iter=6, adjoint_max_iter=1, atol_l2=0.0, rms_tol=1e-12)
    _, _, info = m.loss_and_grad_flat(X, y, cfg, strict=False)
    assert info["forward"].iterations == 6 and not info["forward"].stalled


def test_tol_scale_multiplies_the_tolerance_and_is_saved():
    """tol_scale loosens the tolerance (fewer cycles); warm_arrays keeps it for checkpoints."""
    m, X, y = gru("implicit", T=64)
    solver = MGRITConfig(levels=2, cf=2, max_iter=40, adjoint_max_iter=40, atol_l2=0.0,
                         rms_tol=1e-8).make_solver()
    _, _, tight = m.loss_and_grad_flat(X, y, solver)
    solver.tol_scale = 1e4
    _, _, loose = m.loss_and_grad_flat(X, y, solver)
    assert loose["forward"].iterations < tight["forward"].iterations
    arrays = solver.warm_arrays()
    other = MGRITConfig(levels=2, cf=2).make_solver()
    other.load_warm_arrays(arrays)
    assert other.tol_scale == 1e4
    other.load_warm_arrays({})
    assert other.tol_scale == 1.0


def test_bad_accuracy_options_are_named():
    with pytest.raises(ConfigError, match="fallback needs a tolerance"):
        MGRITConfig(fallback=True, atol_l2=0.0)
    with pytest.raises(ConfigError, match="stall"):
        MGRITConfig(stall=1.5)
    with pytest.raises(ConfigError, match="rms_tol"):
        MGRITConfig(rms_tol=-1.0)


def test_warm_start_keys_must_fit_the_batch():
    m, X, y = gru("implicit", T=32)
    cfg = MGRITConfig.preset("train")
    for keys in ([0, 1], [0, 1, 2, 3]):
        with pytest.raises(DataError, match="keys must have shape"):   # at the model boundary
            m.loss_and_grad_flat(X, y, cfg, keys=keys)


def test_train_preset():
    cfg = MGRITConfig.preset("train")
    assert cfg.fallback and cfg.rms_tol > 0 and cfg.initial_guess == "warm" and cfg.stall > 0
    m, X, y = gru("classic", T=64)
    _, g0, _ = m.loss_and_grad_flat(X, y)
    _, g, _ = m.loss_and_grad_flat(X, y, cfg, keys=np.arange(3))
    assert gq.compare(g, g0).cosine > 0.99


# -- the gradient check ------------------------------------------------------------------------

def test_compare_measures_cosine_relative_and_loss_error():
    g = np.array([1.0, 0.0, 0.0])
    e = gq.compare(np.array([1.0, 1.0, 0.0]), g, 2.0, 1.0)
    assert e.cosine == pytest.approx(1 / np.sqrt(2)) and e.rel_error == pytest.approx(1.0)
    assert e.loss_error == pytest.approx(1.0)
    assert gq.compare(-g, g).cosine == pytest.approx(-1.0) and not gq.compare(-g, g).ok(0.0)
    assert np.isnan(gq.compare(np.zeros(3), g).cosine)
    assert np.isnan(gq.compare(g, g).loss_error)
    with pytest.raises(DataError, match="different sizes"):
        gq.compare(np.zeros(2), g)


def test_check_gradient_against_the_serial_sweep():
    m, X, y = gru("implicit", T=48)
    err, approx, ref = gq.check_gradient(m, X, y, "serial")
    assert err.cosine == pytest.approx(1.0) and err.rel_error == 0.0 and err.loss_error == 0.0
    err, approx, ref = gq.check_gradient(m, X, y, MGRITConfig(levels=3, cf=2, max_iter=1))
    expected = gq.compare(approx[1], ref[1], approx[0], ref[0])
    assert err == expected and err.rel_error > 0
    assert approx[2]["forward"].iterations == 1


def _train(tmp_path, **kw):
    cfg = TrainConfig(seq_len=48, batch_size=20, epochs=2, hidden=8, lr=1e-2, cell="implicit",
                      dtype="float64", log=str(tmp_path / "log.jsonl"), max_batches=4, **kw)
    lines = []
    with Trainer(cfg, out=lines.append, progress=False) as tr:
        model, history = tr.fit()
    import json
    recs = [json.loads(x) for x in open(tmp_path / "log.jsonl")]
    return model, history, recs, lines


def test_gradient_check_in_training_is_logged_and_summarized(tmp_path):
    _, history, recs, lines = _train(tmp_path, solver="mgrit",
                                     solver_options={"preset": "paper"}, gradient_check=2)
    checks = [r for r in recs if r["type"] == "gradient_check"]
    assert [(r["epoch"], r["batch"]) for r in checks] == [(1, 1), (1, 3), (2, 1), (2, 3)]
    for r in checks:
        assert -1 <= r["cosine"] <= 1 and r["rel_error"] >= 0 and r["seconds"] > 0
    summary = history[-1]["gradient_check"]
    assert summary["batches"] == 2
    assert summary["cosine_min"] == min(r["cosine"] for r in checks if r["epoch"] == 2)
    assert history[-1]["fallback"] == dict(forward=0, adjoint=0, solves=4)
    assert any(x.startswith("  gradient check: 2 batch(es), cosine min") for x in lines)


def test_gradient_check_default_is_once_per_epoch_and_off_for_serial(tmp_path):
    _, history, recs, _ = _train(tmp_path, solver="mgrit", solver_options={"preset": "paper"})
    assert [r["batch"] for r in recs if r["type"] == "gradient_check"] == [1, 1]
    _, history, recs, _ = _train(tmp_path / "s", solver="serial")
    assert not any(r["type"] == "gradient_check" for r in recs)
    assert "gradient_check" not in history[-1]


def test_missed_target_trains_exactly_as_serial(tmp_path):
    """Every batch checked against a target no inexact gradient reaches: each update takes the
    exact gradient, so the run is the serial run to the bit (parameters and losses)."""
    serial, h_ser, _, _ = _train(tmp_path / "a", solver="serial")
    mgrit, h_mg, recs, lines = _train(tmp_path / "b", solver="mgrit", gradient_check=1,
                                      gradient_target=1.0,
                                      solver_options=dict(levels=2, cf=4, max_iter=1))
    assert np.array_equal(serial.flat, mgrit.flat)
    assert [h["loss"] for h in h_ser] == [h["loss"] for h in h_mg]
    assert all(r["used_exact"] for r in recs if r["type"] == "gradient_check")
    assert h_mg[-1]["gradient_check"]["used_exact"] == 4
    assert any("took the exact gradient" in x for x in lines)


def test_train_preset_controller_tightens_after_a_miss(tmp_path):
    """A checked batch below the target tightens the MGRIT tolerance 4x (tol_scale)."""
    _, history, recs, _ = _train(tmp_path, solver="mgrit", gradient_check=1,
                                 gradient_target=1.0,
                                 solver_options=dict(preset="train", rms_tol=1e-2))
    scales = [r["tol_scale"] for r in recs if r["type"] == "gradient_check"]
    assert scales[0] == 0.25 and all(b <= a for a, b in zip(scales, scales[1:]))


def test_bad_gradient_check_options():
    with pytest.raises(ConfigError, match="gradient_check"):
        TrainConfig(gradient_check=-2)
    with pytest.raises(ConfigError, match="gradient_target"):
        TrainConfig(gradient_target=1.5)


# -- matched coarse cells ----------------------------------------------------------------------

@pytest.mark.parametrize("fine", ["classic", "implicit"])
def test_matched_coarse_cell_is_the_fine_step_at_unit_size_and_tight_mgrit_is_serial(fine):
    """At step size 1 the matched cell is the fine cell (to round-off); as MGRIT's coarse cell
    the tight solve is serial BPTT."""
    from mgritnn.cells import GRUWeights, get_cell, project
    m, X, y = gru(fine, T=50)
    w = m.weights()
    rng = np.random.default_rng(3)
    h = rng.uniform(-1, 1, (4, 1, 3, m.hidden_size))
    ax0 = project(rng.normal(size=(4, 3, 3)), w.Wx[0], w.bx[0])
    np.testing.assert_allclose(get_cell(f"matched-{fine}").step(w, ax0, h, np.ones(4)),
                               get_cell(fine).step(w, ax0, h, np.ones(4)), rtol=0, atol=1e-14)
    _, g0, _ = m.loss_and_grad_flat(X, y)
    cfg = MGRITConfig(levels=3, cf=2, max_iter=60, adjoint_max_iter=60, atol_l2=1e-13,
                      coarse_cell="matched")
    _, g, info = m.loss_and_grad_flat(X, y, cfg)
    assert info["forward"].status == OK and info["adjoint"].status == OK
    np.testing.assert_allclose(g, g0, rtol=0, atol=1e-10 * np.abs(g0).max())


def test_matched_needs_a_theta_family_fine_cell():
    from mgritnn.cells import NewtonGRUCell
    cfg = MGRITConfig(coarse_cell="matched")
    with pytest.raises(ConfigError, match="matched"):
        cfg.coarse_cell_for(NewtonGRUCell())
    with pytest.raises(ConfigError):
        MGRITConfig(coarse_cell="no-such-cell")
