"""Long runs survive a failed solve: a time-parallel solve that diverges (or gives NaN/inf) is
redone by the serial sweep on the same ranks, counted and said, and the run goes on
(``TrainConfig.rescue``, ``Solver.falling_back``); a run that cannot go on keeps its last good
epoch (the checkpoint, or without one a rescue file that resumes)."""
import numpy as np
import pytest

from mgritnn import TrainConfig, Trainer, train
from mgritnn.config import DIVERGED, NOT_CONVERGED
from mgritnn.errors import DivergenceError, SolverError
from mgritnn.solvers import DEERConfig, MGRIT_PRESETS, MGRITConfig, make_solver
from mgritnn.train import load_checkpoint
from mgritnn.train.checkpoint import RESCUE_FILE
from helpers import gru_problem


def quiet(*_):
    pass


def _cfg(settings, **more):
    return TrainConfig.from_settings(dict(settings, **more))


def _rotation(t, gain=3.0):
    """Recurrent candidate weights of gain ``gain`` (an undamped rotation): the coarse levels of
    MGRIT do not follow it, and 40 cycles make its adjoint diverge."""
    H = t.model.params["weight_hh_l0"].shape[1]
    Q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(H, H)))
    t.model.params["weight_hh_l0"][2 * H:] = gain * Q


DIVERGING = dict(epochs=1, hidden=8, seq_len=512, batch_size=4, max_batches=2, seed=0,
                 dtype="float64", gradient_check=0, solver="mgrit",
                 solver_options=dict(max_iter=40, adjoint_max_iter=40, atol_l2=0.0))


def test_a_diverged_mgrit_step_is_redone_by_the_serial_sweep_and_said():
    lines = []
    with Trainer(_cfg(DIVERGING), out=lines.append, progress=False) as t:
        _rotation(t)
        rec = t.train_epoch(0)
        mgrit = t.model.flat.copy()
    assert rec["rescued"]["steps"] == 2 and rec["rescued"]["solves"] == 2, rec
    assert "diverged" in rec["rescued"]["first"]
    said = [line for line in lines if "solves failed" in line]
    assert len(said) == 1 and "2 of 2 steps" in said[0] and "--no-rescue" in said[0], lines
    assert rec["fallback"] == dict(forward=0, adjoint=0, solves=2)   # counted once, as rescued
    serial = dict(DIVERGING, solver="serial", solver_options={})
    with Trainer(_cfg(serial), out=quiet, progress=False) as t:
        _rotation(t)
        t.train_epoch(0)
        # the rescued steps are the serial sweep's: same parameters to round-off
        np.testing.assert_allclose(mgrit, t.model.flat, rtol=1e-12, atol=1e-14)


def test_without_rescue_the_failed_solve_stops_the_run_and_says_what_is_kept():
    with Trainer(_cfg(DIVERGING, rescue=False), out=quiet, progress=False) as t:
        _rotation(t)
        with pytest.raises(SolverError, match=r"epoch 1, batch 1: the mgrit adjoint solve failed"
                           r".*nothing was saved: no epoch had finished \(add --checkpoint"):
            t.train_epoch(0)


@pytest.mark.parametrize("config", [MGRITConfig(**MGRIT_PRESETS["fast"]),
                                    DEERConfig(fallback=False)])
def test_falling_back_makes_any_failed_solve_the_serial_sweeps(config):
    """Weights 12x (DEER's Newton diverges; the fast preset's one cycle does not converge):
    outside the context that is the result, inside it the result is the serial sweep's and says it fell back; the
    context restores the solver after it."""
    m, X, y = gru_problem("classic", L=2, T=100, scale=12.0)
    solver = make_solver(config)
    _, _, info = m.loss_and_grad_flat(X, y, solver, strict=False)
    assert info["forward"].status in (DIVERGED, NOT_CONVERGED) and not info["forward"].fallback
    l0, g0, _ = m.loss_and_grad_flat(X, y)
    with solver.falling_back():
        assert solver.falls_back
        l1, g1, info = m.loss_and_grad_flat(X, y, solver)
    assert not solver.falls_back
    assert info["forward"].fallback and l1 == pytest.approx(l0, rel=1e-12)
    np.testing.assert_allclose(g1, g0, rtol=1e-9, atol=1e-12)


def test_a_failed_mgrit_solve_is_not_remembered_as_a_warm_start():
    """A solve that gave NaN (a NaN input fed to the solver directly, past the model's checks)
    leaves no warm start behind; a solve that ended unconverged (the fast preset) does."""
    m, X, _ = gru_problem("classic", L=1, T=64, B=4, H=8)
    solver = make_solver(MGRITConfig(**MGRIT_PRESETS["fast"]))
    w, h0, keys = m.weights(), np.zeros((1, 4, 8)), np.arange(4)
    Xt = np.ascontiguousarray(np.swapaxes(X, 0, 1))
    _, _, stats = solver.forward(m.cell, w, Xt, h0, 1.0, keys=keys)
    assert stats.status == NOT_CONVERGED and len(solver.state.warm) == 4
    solver.state.warm.clear()
    Xt[5, 2] = np.nan
    _, _, stats = solver.forward(m.cell, w, Xt, h0, 1.0, keys=keys)
    assert stats.failed, stats.message
    assert len(solver.state.warm) == 0


def test_a_run_without_checkpoint_that_diverges_keeps_its_last_epoch_in_a_rescue_file(
        tmp_path, monkeypatch):
    """NaN parameters in epoch 2 of a run without --checkpoint: the error names the rescue file
    of epoch 1 (in the working directory; a free name beside an existing one), which resumes to
    the uninterrupted run bit for bit."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / RESCUE_FILE).write_bytes(b"someone else's")
    small = dict(epochs=2, hidden=6, seq_len=12, batch_size=32, max_batches=3, seed=4)
    whole, _ = train(_cfg(small), out=quiet, progress=False)
    update = Trainer.update

    def poisoned(self, grad, batch):
        update(self, grad, batch)
        if batch.epoch == 1:
            self.model.flat[:] = np.nan

    monkeypatch.setattr(Trainer, "update", poisoned)
    with pytest.raises(DivergenceError, match=r"epoch 2, batch 2: .*the last good state \(after "
                       r"epoch 1\) was saved to 'mgritnn-rescue-2\.npz': continue with "
                       r"--checkpoint mgritnn-rescue-2\.npz --resume"):
        train(_cfg(small), out=quiet, progress=False)
    monkeypatch.setattr(Trainer, "update", update)
    assert (tmp_path / RESCUE_FILE).read_bytes() == b"someone else's"
    _, _, meta = load_checkpoint("mgritnn-rescue-2.npz")
    assert meta["epoch"] == 1
    resumed, _ = train(_cfg(small, checkpoint="mgritnn-rescue-2.npz", resume=True),
                       out=quiet, progress=False)
    np.testing.assert_array_equal(resumed.flat, whole.flat)


@pytest.mark.parametrize("nprocs", [2, 3])
def test_the_rescue_under_mpiexec_equals_one_serial_process(tmp_path, nprocs):
    from mpi_util import run_mpi
    r = run_mpi(nprocs, "rescue_case.py", timeout=400, check=True)
    assert r.stdout.split() == ["ok", str(nprocs)], r.output
