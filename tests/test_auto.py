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
    auto._slow[key] = 0           # a parallel route chosen by the calibration may have counted one
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
    with pytest.raises(ConfigError, match="calibration"):
        AutoConfig(calibration="huge")
    assert make_solver("auto").name == "auto"


def _time_ranks_auto(monkeypatch, predicted):
    """An auto solver that takes the several-time-ranks path on this one process (without the
    serial sweep among its routes; their collectives are then the identity): ``predicted`` are
    its predictor's (DEER, quasi-DEER) solve times."""
    from mgritnn.solvers import AutoSolver
    from mgritnn.solvers.auto import PARALLEL_ROUTES
    auto = AutoSolver(predictor=lambda *a, **k: dict(zip(PARALLEL_ROUTES, map(float, predicted))))
    del auto.routes["serial"]
    return auto


def test_auto_on_time_ranks_takes_the_models_choice(monkeypatch):
    m, X, y = model_and_data("classic", L=1, T=30)
    l0, g0, _ = m.loss_and_grad_flat(X, y)
    for predicted, want in (((1.0, 2.0), "deer"), ((2.0, 1.0), "quasi-deer")):
        auto = _time_ranks_auto(monkeypatch, predicted)
        l1, g1, info = m.loss_and_grad_flat(X, y, auto)
        (key, choice), = auto.choices.items()
        assert choice == want and info["forward"].message.startswith(f"auto: {want}")
        assert auto.predictions[key] == {"deer": predicted[0] / 30, "quasi-deer": predicted[1] / 30}
        assert set(auto.timings[key]) == {want}            # only the route that ran is measured
        np.testing.assert_allclose(l1, l0, rtol=1e-5)
        np.testing.assert_allclose(g1, g0, rtol=0, atol=1e-4 * np.abs(g0).max())


def test_auto_on_time_ranks_corrects_a_wrong_prediction(monkeypatch):
    """The model predicts DEER at ~0 s and quasi-DEER at 1 ns per step: DEER is tried, measured
    slower than quasi-DEER's prediction twice, and replaced; the routes are then compared by
    their measurements."""
    m, X, y = model_and_data("classic", L=1, T=30)
    auto = _time_ranks_auto(monkeypatch, (0.0, 30e-9))
    routes = []
    for _ in range(4):
        _, _, info = m.loss_and_grad_flat(X, y, auto)
        routes.append(info["forward"].message.split(";")[0])
    (key, choice), = auto.choices.items()
    assert routes[:3] == ["auto: deer", "auto: deer", "auto: quasi-deer"], routes
    assert set(auto.timings[key]) == {"deer", "quasi-deer"}


def test_auto_on_time_ranks_tries_each_route_for_a_cell_without_a_model(monkeypatch):
    """No prediction (NaN: a cell the model does not cover): each route runs once, then the
    measured faster one is kept."""
    m, X, y = model_and_data("classic", L=1, T=30)
    auto = _time_ranks_auto(monkeypatch, (np.nan, np.nan))
    routes = [m.loss_and_grad_flat(X, y, auto)[2]["forward"].message.split(";")[0]
              for _ in range(2)]
    (key, choice), = auto.choices.items()
    assert routes == ["auto: deer", "auto: quasi-deer"]
    assert set(auto.timings[key]) == {"deer", "quasi-deer"}


def test_model_solve_times_covers_the_gru_cells_only(monkeypatch, tmp_path):
    """The model's predictions for auto: finite positive seconds for a GRU cell (calibrated tiny
    into a fresh cache), NaN for a cell it does not know."""
    from mgritnn.cells import DahlquistCell, get_cell
    from mgritnn.plan import model_solve_times
    monkeypatch.setenv("MGRITNN_CACHE", str(tmp_path))
    t = model_solve_times(get_cell("classic"), np.zeros((1, 3, 5)), np.zeros((20, 3, 2)), 40,
                          np.float64, 2, "tiny")
    assert t.shape == (2,) and np.all(np.isfinite(t)) and np.all(t > 0)
    assert np.all(np.isnan(model_solve_times(DahlquistCell(), np.zeros(3), np.zeros((20, 3)), 40,
                                             np.float64, 2, "tiny")))


def test_auto_without_a_predictor_tries_each_route_in_turn():
    """Several time ranks and no predictor (the default: auto never calibrates by itself): the
    routes run in the order of PARALLEL_ROUTES, one call each, then the measured faster one is
    kept; nothing is predicted."""
    from mgritnn.solvers import AutoSolver
    m, X, y = model_and_data("classic", L=1, T=30)
    auto = AutoSolver()
    del auto.routes["serial"]
    routes = [m.loss_and_grad_flat(X, y, auto)[2]["forward"].message.split(";")[0]
              for _ in range(2)]
    (key, choice), = auto.choices.items()
    assert routes == ["auto: deer", "auto: quasi-deer"]
    assert auto.predictions[key] == {"deer": None, "quasi-deer": None}
    assert set(auto.timings[key]) == {"deer", "quasi-deer"}


def test_auto_is_a_time_parallel_solver():
    """The time axis comes from the time-parallel base (is_first included), split as DEER splits
    it; the default config asks for no calibration."""
    from mgritnn.solvers import AutoConfig, AutoSolver, DEERConfig, TimeParallelSolver
    auto = AutoSolver()
    assert isinstance(auto, TimeParallelSolver)
    assert auto.is_first and auto.is_last and auto.tc is not None and auto.size == 1
    assert auto.local_steps(37) == DEERConfig().make_solver().local_steps(37) == (0, 37)
    assert AutoConfig().calibration == "none" and auto.predictor is None


def test_planned_solver_passes_the_model_only_when_asked():
    """mgritnn.plan.planned_solver: a predictor for AutoConfig(calibration="default" or "tiny"),
    none for the default "none" (and other solvers as get_solver makes them)."""
    from mgritnn.plan import planned_solver
    from mgritnn.solvers import AutoConfig, AutoSolver, SerialSolver
    assert planned_solver("auto").predictor is None
    assert planned_solver(AutoConfig()).predictor is None
    asked = planned_solver(AutoConfig(calibration="tiny"))
    assert isinstance(asked, AutoSolver) and callable(asked.predictor)
    assert planned_solver("auto", {"calibration": "tiny"}).predictor is not None
    assert isinstance(planned_solver("serial"), SerialSolver)
    with pytest.raises(ConfigError, match="calibration"):
        AutoConfig(calibration="huge")


def test_auto_measurements_are_its_state_and_survive_a_checkpoint():
    """The choices, timings and counters are in ``solver.state`` (part "measured"): a solver
    made from the state's arrays (what a checkpoint holds) chooses the same route without
    measuring again."""
    from mgritnn.solvers import AutoConfig, AutoSolver, SolverState
    m, X, y = model_and_data("classic", L=1, T=40)
    auto = AutoSolver()
    m.loss_and_grad_flat(X, y, auto)
    m.loss_and_grad_flat(X[:2], y[:2], auto)
    arrays = auto.state.to_arrays()
    assert any(k.startswith("measured/choice||") for k in arrays)
    again = make_solver(AutoConfig(), state=SolverState.from_arrays(arrays))
    assert again.choices == auto.choices and again.timings == auto.timings
    assert again._slow == auto._slow
    calls = []
    for route in again.routes.values():                # nothing is timed again: only the chosen
        route.forward = (lambda f, name: lambda *a, **k: (calls.append(name), f(*a, **k))[1])(
            route.forward, route.name)
    m.loss_and_grad_flat(X, y, again)
    key = next(k for k in auto.choices if k[0] == X.shape[1] and k[1][1] == X.shape[0])
    assert calls == [again.routes[auto.choices[key]].name]
