"""The time-parallel adjoints' exact fallback keeps the adjoint's scale apart (exploding gradients).

Where MGRIT's adjoint fails (on a float32 sequence whose adjoint outgrows the dtype it gives inf),
DEER's dense scan overflows or quasi-DEER's iteration misses, the GRU cells fall back to backpropagation through time pipelined over the ranks with the
adjoint's power-of-two exponent carried from rank to rank (``mgritnn.solvers.pipeline``):

* one process: bit for bit the serial solver's scaled gradient and exponent (MGRIT: classic and
  implicit cells, 1 and 2 layers; DEER and quasi-DEER: two of those), where the unscaled gradient
  is inf;
* a batch without overflow: exponent 0, still the serial gradient bit for bit;
* MGRIT with one level (the gradient checks' exact solver) is that sweep; the trainer's gradient
  check of an exploding batch compares true directions (its exact gradient scaled as well);
* P = 2, 3, 4 ranks (``tests/mpi/scaled_case.py``, one launch per P, with a timeout; every rank
  returns the same results, checked in the script): the serial loss bit for bit and the serial
  gradient's true direction to float32 round-off (the ranks' sums of the parameter gradients
  are added in another order, and each rank's exponent differs, so values far below the largest
  contributions are flushed at other points).
"""
import numpy as np
import pytest

from mgritnn.solvers import MGRITConfig, make_solver
from mgritnn.train.config import TrainConfig
from mgritnn.train.data import Batch
from mgritnn.train.quality import GradientQuality
from mgritnn.train.ranks import _Ranks
from mpi_util import load_mpi_script, run_mpi, warm_numba_cache
from scaled_problems import exploding_model, true_direction

TIMEOUT = 300.0
#: Distance of the unit vectors of the true gradients: float32 round-off of the parameter sums in
#: another order (measured about 1e-7).
DIRECTION_TOL = 1e-5


def _case_module():
    return load_mpi_script("scaled_case")


@pytest.fixture(scope="module")
def serial():
    """One-process serial results per case: (loss, scaled grad, exponent)."""
    out = {}
    for name, _, cell, layers, T in _case_module().CASES:
        m, X, y = exploding_model(cell, layers, T=T)
        loss, g, info = m.loss_and_grad_flat(X, y, scaled=True)
        out[name] = (loss, g, info["exponent"])
    return out


@pytest.mark.parametrize("case", _case_module().CASES, ids=lambda c: c[0])
def test_one_process_fallback_is_the_serial_scaled_gradient_bitwise(case, serial):
    name, solver, cell, layers, T = case
    m, X, y = exploding_model(cell, layers, T=T)
    with np.errstate(over="ignore"):
        _, plain, _ = m.loss_and_grad_flat(X, y)           # the true scale: beyond float32
    assert not np.all(np.isfinite(plain))
    got = _case_module().solve_case(solver, cell, layers, T)
    loss, g, E = serial[name]
    assert E >= 128 and got["exponent"] == E
    assert got["fallback"].tolist() == [True, True]
    assert got["loss"] == loss
    np.testing.assert_array_equal(got["grad"], g)


def test_without_overflow_exponent_0_and_the_serial_gradient_bitwise():
    m, X, y = exploding_model("classic", 1, T=60)
    loss, g, info = m.loss_and_grad_flat(X, y, scaled=True)
    got = _case_module().solve_case("mgrit", "classic", 1, 60)
    assert info["exponent"] == 0 == got["exponent"] and got["fallback"].tolist() == [True, True]
    assert got["loss"] == loss
    np.testing.assert_array_equal(got["grad"], g)


@pytest.mark.parametrize("P", (2, 3, 4), ids=lambda p: f"P{p}")
def test_p_ranks_fallback_has_the_serial_direction(tmp_path, serial, P):
    warm_numba_cache()
    out = tmp_path / "scaled.npz"
    run_mpi(P, "scaled_case.py", out, timeout=TIMEOUT, check=True)
    with np.load(out) as z:
        for name, *_ in _case_module().CASES:
            loss, g, E = serial[name]
            assert z[f"{name}_fallback"].tolist() == [True, True], name
            assert z[f"{name}_exponent"] >= 128, name
            assert z[f"{name}_loss"] == loss, name
            assert np.all(np.isfinite(z[f"{name}_grad"])), name
            dist = np.linalg.norm(true_direction(z[f"{name}_grad"])
                                  - true_direction(g))
            assert dist < DIRECTION_TOL, f"P={P} {name}: direction off by {dist:.2e}"


def test_one_level_mgrit_adjoint_is_the_scaled_serial_sweep():
    """MGRIT with one level (the gradient checks' exact solver): where its sweep overflows, the
    scaled sweep runs instead (the serial gradient bit for bit); without overflow its own sweep."""
    m, X, y = exploding_model("classic", 2, T=1000)
    _, g, info = m.loss_and_grad_flat(X, y, scaled=True)
    _, g1, info1 = m.loss_and_grad_flat(X, y, MGRITConfig(levels=1), scaled=True)
    assert info1["exponent"] == info["exponent"] >= 128 and info1["adjoint"].fallback
    np.testing.assert_array_equal(g1, g)
    m, X, y = exploding_model("classic", 2, T=60)
    _, g, info = m.loss_and_grad_flat(X, y, scaled=True)
    _, g1, info1 = m.loss_and_grad_flat(X, y, MGRITConfig(levels=1), scaled=True)
    assert info1["exponent"] == 0 and not info1["adjoint"].fallback
    np.testing.assert_array_equal(g1, g)


def test_gradient_check_of_an_exploding_batch_compares_the_true_directions():
    """The check's exact gradient keeps its scale apart too (the model's ``scaled``), so an
    exploding batch is compared at its true direction (cosine 1 against MGRIT's exact fallback)
    instead of against inf (a NaN cosine, and the exact inf gradient taken: the run's end)."""
    m, X, y = exploding_model("classic", 1, T=1000)
    cfg = TrainConfig.from_settings(dict(clip=1.0, gradient_check=1, solver="mgrit"))
    solver = make_solver("mgrit", options=dict(preset="train"))
    quality = GradientQuality(cfg, solver, _Ranks(None, 1), 1, grad_options={"scaled": True})
    loss, g, info = m.loss_and_grad_flat(X, y, solver, scaled=True)
    assert info["exponent"] >= 128 and info["adjoint"].fallback
    g = quality.unscale(g, info["exponent"])
    batch = Batch(0, 0, np.arange(len(y)), np.arange(len(y)), X, y, None)
    g2, _, _, rec = quality.check(m, batch, g, loss, info, "end")
    assert rec["cosine"] > 1 - 1e-6 and not rec["used_exact"] and np.all(np.isfinite(g2))
    assert np.linalg.norm(g2.astype(np.float64)) == pytest.approx(1.0, rel=1e-5)   # clipped
