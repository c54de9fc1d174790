"""``solver="auto"``: it measures serial, DEER and quasi-DEER once per shape (not their
compilation), keeps the fastest exact route, drops a route that turns slower than serial, and
its results are the serial ones to DEER's tolerance."""
import numpy as np
import pytest

from mgritnn.errors import ConfigError
from mgritnn.solvers import make_solver
from helpers import gru_problem as model_and_data


def test_auto_measures_and_uses_an_exact_route():
    """auto times serial, DEER and quasi-DEER once per shape, keeps one, and its results are the
    serial ones (every candidate is exact to its tolerance)."""
    from mgritnn.solvers import AutoSolver
    m, X, y = model_and_data("classic", L=2, T=60)
    l0, g0, _ = m.loss_and_grad_flat(X, y)
    auto = AutoSolver()
    l1, g1, info = m.loss_and_grad_flat(X, y, auto)
    (key, choice), = auto.choices.items()
    assert set(auto.timings[key]) == {"serial", "deer", "quasi-deer"}
    assert info["forward"].message.startswith(f"auto: {choice}")
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    np.testing.assert_allclose(g1, g0, rtol=0, atol=1e-4 * np.abs(g0).max())
    m.loss_and_grad_flat(X[:2], y[:2], auto)                 # another shape: measured anew
    assert len(auto.choices) == 2


class _Delayed:
    """A serial solver that sleeps ``first`` seconds on its first forward call (like compiling)
    and ``every`` seconds on every call."""

    def __init__(self, first, every):
        from mgritnn.solvers import SerialSolver
        self.inner, self.first, self.every = SerialSolver(), first, every

    def forward(self, *args, **kw):
        import time
        time.sleep(self.first + self.every)
        self.first = 0.0
        return self.inner.forward(*args, **kw)

    def adjoint(self, *args, **kw):
        return self.inner.adjoint(*args, **kw)


def test_auto_calibration_does_not_time_compilation():
    """Regression: calibration timed each route's first call, compilation included, so a route
    compiled on the spot always lost. A one-time delay on the first call must not decide."""
    from mgritnn.solvers import AutoSolver
    m, X, y = model_and_data("classic", L=1, T=20)
    auto = AutoSolver()
    auto.routes = {"serial": _Delayed(first=0.0, every=0.3), "deer": _Delayed(first=2.0, every=0.0)}
    m.loss_and_grad_flat(X, y, auto)
    (key, choice), = auto.choices.items()
    assert choice == "deer" and auto.timings[key]["deer"] * 20 < 1.0, auto.timings


def test_auto_drops_a_route_slower_than_serial():
    """A parallel route that turns out slower than the serial sweep (here: forced, with a serial
    time of ~0) is replaced by the serial sweep after two slow calls."""
    from mgritnn.solvers import AutoSolver
    m, X, y = model_and_data("classic", L=1, T=40)
    auto = AutoSolver()
    m.loss_and_grad_flat(X, y, auto)
    (key, _), = auto.choices.items()
    auto.choices[key] = "deer"
    auto.timings[key]["serial"] = 1e-12
    m.loss_and_grad_flat(X, y, auto)
    assert auto.choices[key] == "deer"
    _, _, info = m.loss_and_grad_flat(X, y, auto)
    assert auto.choices[key] == "serial" and info["forward"].message.startswith("auto: deer")
    _, _, info = m.loss_and_grad_flat(X, y, auto)
    assert info["forward"].message.startswith("auto: serial")


def test_auto_options_are_checked():
    from mgritnn.solvers import AutoConfig
    with pytest.raises(ConfigError, match="calibration_steps"):
        AutoConfig(calibration_steps=0)
    with pytest.raises(ConfigError, match="margin"):
        AutoConfig(margin=1.5)
    assert make_solver("auto").name == "auto"
