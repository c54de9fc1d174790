"""The ODENet (issue 12): its cell against a slow twin, identity steps, finite differences of every
parameter group, MGRIT against the serial sweep (one level bitwise, tight tolerance, the exactness
front), nested iteration, files and bad input. (Several ranks: test_mpi_odenet.py.)"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mgritnn
import reference as ref
from helpers import assert_exactness_front, assume_hierarchy_fits
from mgritnn.cells.odenet import ODENetCell
from mgritnn.config import NOT_CONVERGED, OK
from mgritnn.errors import ConfigError, DataError
from mgritnn.odenet import ODENet, inject_layers, interpolate_layers
from mgritnn.solvers import DEERConfig, MGRITConfig, MGRITSolver
from mgritnn.solvers.serial import step_through

ACTS = ("tanh", "relu", "smoothrelu")


def problem(act="tanh", F=3, w=5, C=4, N=12, B=6, seed=0, opening="dense", **kw):
    """A seeded network (layers drawn independently, so that they differ) and a batch."""
    kw.setdefault("layer_init", "independent")
    m = ODENet(F, w, C, N, activation=act, opening=opening, seed=seed, **kw)
    rng = np.random.default_rng(seed + 1)
    return m, rng.normal(size=(B, F)), rng.integers(0, C, size=B)


# ------------------------------------------------------------------------------------------------
# The cell
# ------------------------------------------------------------------------------------------------

@st.composite
def cell_cases(draw):
    K, B, w = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    per_row = draw(st.booleans())
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.5, 1.5, (K, w, w + 1))
    u = rng.normal(size=(K, B, w))
    dt = rng.uniform(0.05, 1.0, (K, B) if per_row else (K,))
    return draw(st.sampled_from(ACTS)), x, u, dt, rng.normal(size=(K, B, w))


@settings(max_examples=25)
@given(case=cell_cases())
def test_cell_equals_slow_twin(case):
    act, x, u, dt, lam = case
    cell = ODENetCell(act)
    w = cell.weights(np.float64)
    new, cache = cell.step(w, x, u, dt, cache=True)
    np.testing.assert_allclose(new, ref.odenet_step(act, x, u, dt), rtol=1e-13, atol=1e-13)
    want_lam, want_dx = ref.odenet_step_vjp(act, x, u, dt, lam)
    for c in (cache, None):                          # from the cache, and recomputed
        cot = []
        got_lam, got_dx = cell.step_vjp(w, x, u, dt, lam, cache=c, cotangents=cot)
        np.testing.assert_allclose(got_lam, want_lam, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got_dx, want_dx, rtol=1e-12, atol=1e-12)
        assert cot[0][0] is got_dx


@pytest.mark.parametrize("act", ACTS)
def test_zero_step_is_exactly_the_identity(act):
    rng = np.random.default_rng(4)
    K, B, w = 3, 4, 3
    x = rng.normal(size=(K, w, w + 1))
    u = rng.normal(size=(K, B, w))
    u[0, 0, 0] = -0.0                                # u + 0 * s would turn it into +0.0
    lam = rng.normal(size=(K, B, w))
    lam[1, 1, 1] = -0.0
    cell = ODENetCell(act)
    W = cell.weights(np.float64)
    for dt in (0.0, np.zeros(K), np.zeros((K, B))):
        new = cell.step(W, x, u, dt)
        assert new.tobytes() == u.tobytes()
        lam0, dx = cell.step_vjp(W, x, u, dt, lam)
        assert lam0.tobytes() == lam.tobytes()
        assert np.array_equal(dx, np.zeros_like(dx))
    dt = np.array([[0.0, 0.5, 0.0, 0.3]] * K)        # per row: the zero rows stay put
    new = cell.step(W, x, u, dt)
    assert new[:, [0, 2]].tobytes() == u[:, [0, 2]].tobytes()
    assert not np.array_equal(new[:, 1], u[:, 1])
    lam0, _ = cell.step_vjp(W, x, u, dt, lam)
    assert lam0[:, [0, 2]].tobytes() == lam[:, [0, 2]].tobytes()


def test_smoothrelu_is_c1():
    from mgritnn.cells.odenet import SMOOTHRELU_ETA, get_activation
    f = get_activation("smoothrelu")
    eta = SMOOTHRELU_ETA
    for x0 in (-eta, eta):
        a = np.array([x0 - 1e-12, x0 + 1e-12])
        s, d = f(a)
        assert abs(s[1] - s[0]) < 1e-11 and abs(d[1] - d[0]) < 1e-10
    s, d = f(np.array([-1.0, 0.0, 1.0]))
    assert np.allclose(s, [0.0, eta / 4, 1.0]) and np.allclose(d, [0.0, 0.5, 1.0])


# ------------------------------------------------------------------------------------------------
# Gradients of the whole model
# ------------------------------------------------------------------------------------------------

def _groups(m):
    return [name for name in m.params]


@pytest.mark.parametrize("opening", ["dense", "copy"])
@pytest.mark.parametrize("act", ACTS)
def test_finite_differences_of_every_parameter_group(act, opening):
    """Central differences of the full loss (regularization included, with weights large enough to
    matter) along random directions inside each group: opening, layers, classifier."""
    m, X, y = problem(act, opening=opening, N=6, w=4, tikhonov=1e-2, ddt_penalty=1e-3, seed=2)
    loss, grad, info = m.loss_and_grad_flat(X, y)
    assert info["regularization"] > 1e-4 * info["data_loss"]
    assert loss == pytest.approx(info["data_loss"] + info["regularization"], rel=1e-14)
    names = _groups(m)
    assert ("opening.weight" in names) == (opening == "dense")
    rng = np.random.default_rng(7)
    theta = m.flat.copy()
    eps = 1e-6
    for name in names:
        d = np.zeros_like(theta)
        m.unflatten(d)[name][...] = rng.normal(size=m.params[name].shape)
        d /= np.linalg.norm(d)
        m.flat[:] = theta + eps * d
        lp = m.loss_and_grad_flat(X, y)[0]
        m.flat[:] = theta - eps * d
        lm = m.loss_and_grad_flat(X, y)[0]
        m.flat[:] = theta
        fd = (lp - lm) / (2 * eps)
        assert abs(fd - grad @ d) <= 1e-6 * abs(fd) + 1e-9, (name, fd, grad @ d)


def test_regularization_formula():
    m, _, _ = problem(N=5, tikhonov=0.3, ddt_penalty=0.07)
    L = m.params["layers"]
    want = 0.15 * np.sum(m.flat ** 2) + 0.035 * sum(np.sum(((L[k] - L[k - 1]) / m.dt) ** 2)
                                                    for k in range(1, 5))
    assert m.regularization() == pytest.approx(want, rel=1e-13)


# ------------------------------------------------------------------------------------------------
# MGRIT against the serial sweep
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("opening", ["dense", "copy"])
@pytest.mark.parametrize("act", ACTS)
def test_one_level_is_serial_bit_for_bit(act, opening):
    m, X, y = problem(act, opening=opening, N=13)
    l0, g0, _ = m.loss_and_grad_flat(X, y)
    l1, g1, info = m.loss_and_grad_flat(X, y, MGRITConfig(levels=1))
    assert l0 == l1 and np.array_equal(g0, g1)
    assert info["forward"].status == OK
    assert np.array_equal(m.forward(X), m.forward(X, MGRITConfig(levels=1)))


@settings(max_examples=10)
@given(act=st.sampled_from(ACTS), N=st.integers(8, 40), levels=st.integers(2, 3),
       cf=st.integers(2, 4), cycle=st.sampled_from(["V", "F"]),
       relax=st.sampled_from(["FCF", "F"]), seed=st.integers(0, 1000),
       opening=st.sampled_from(["dense", "copy"]))
def test_tight_tolerance_equals_serial_backprop(act, N, levels, cf, cycle, relax, seed, opening):
    m, X, y = problem(act, N=N, seed=seed, opening=opening, final_time=2.0)
    cfg = MGRITConfig(levels=levels, cf=cf, cycle=cycle, relax=relax, max_iter=N + 2,
                      adjoint_max_iter=N + 2, atol_l2=1e-14)
    assume_hierarchy_fits(cfg, N)
    l0, g0, _ = m.loss_and_grad_flat(X, y)
    l1, g1, info = m.loss_and_grad_flat(X, y, cfg)
    assert info["forward"].status == OK and info["adjoint"].status == OK
    assert l1 == pytest.approx(l0, rel=1e-12)
    np.testing.assert_allclose(g1, g0, rtol=1e-9, atol=1e-9 * np.abs(g0).max())


def test_paper_iterations_are_inexact_but_close():
    m, X, y = problem(N=64, w=6, final_time=2.0)
    l0, g0, _ = m.loss_and_grad_flat(X, y)
    l1, g1, info = m.loss_and_grad_flat(X, y, "mgrit")
    assert info["forward"].status == NOT_CONVERGED and info["forward"].residual > 0
    assert abs(l1 - l0) < 0.05 * l0
    assert g1 @ g0 / np.linalg.norm(g1) / np.linalg.norm(g0) > 0.95


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("relax, per_cycle", [("FCF", 2), ("F", 1)])
def test_exactness_front_two_levels(skip, relax, per_cycle):
    """As for the GRU (test_mgrit.py): two levels, each FCF cycle makes two more C-points exact,
    each F cycle one; the skipped first cycle none; the F-points of exact intervals are exact."""
    cf, N = 4, 4 * 14
    m, X, _ = problem("tanh", N=N, w=6, final_time=3.0, seed=3)
    cell, w = m.cell, m.cell.weights(np.float64)
    u0, _ = m.open(X)
    layers = m.params["layers"]
    exact, _ = step_through(cell, w, layers, u0, np.full(N, m.dt))

    def solve(cfg):
        _, state, stats = MGRITSolver(cfg).forward(cell, w, layers, u0, m.dt, T=N)
        return state.u, stats
    assert_exactness_front(exact, solve, cf, relax, per_cycle, skip)


def test_serial_and_mgrit_give_the_adjoint_at_point_0():
    """lam_first: the serial sweep and MGRIT (one level bitwise, tight to round-off) agree with
    the adjoint at point 0 from a plain backward loop; DEER refuses it with a clear error."""
    m, X, _ = problem("tanh", N=16)
    cell, w = m.cell, m.cell.weights(np.float64)
    u0, _ = m.open(X)
    layers = m.params["layers"]
    lam_N = np.random.default_rng(0).normal(size=u0.shape)
    u, _ = step_through(cell, w, layers, u0, np.full(16, m.dt))
    lam = lam_N[None]
    for k in range(15, -1, -1):
        lam, _ = cell.step_vjp(w, layers[k:k + 1], u[k:k + 1], np.array([m.dt]), lam)
    from mgritnn.solvers import get_solver
    got = {}
    for name, spec in (("serial", "serial"), ("one", MGRITConfig(levels=1)),
                       ("tight", MGRITConfig(levels=3, cf=2, max_iter=20, adjoint_max_iter=20,
                                             atol_l2=1e-14))):
        s = get_solver(spec)
        _, st_, _ = s.forward(cell, w, layers, u0, m.dt, T=16)
        got[name] = np.full_like(u0, np.nan)
        s.adjoint(cell, w, st_, lam_N, cell.zero_grads(w), lam_first=got[name])
    assert np.array_equal(got["serial"], lam[0]) and np.array_equal(got["one"], lam[0])
    np.testing.assert_allclose(got["tight"], lam[0], rtol=1e-11, atol=1e-12)
    with pytest.raises(ConfigError, match="lam_first"):
        get_solver(DEERConfig()).adjoint(cell, w, None, lam_N, (), lam_first=got["serial"])


def test_gru_unchanged_by_lam_first():
    """The GRU's serial adjoint gives the same gradient with and without ``lam_first``."""
    g = mgritnn.GRUClassifier(2, 3, 2, dtype="float64")
    X = np.random.default_rng(0).normal(size=(2, 7, 2))
    _, g0 = g.loss_and_grad(X, [0, 1])
    from mgritnn.solvers import get_solver
    s = get_solver("serial")
    w = g.weights()
    Xt = np.ascontiguousarray(np.swapaxes(X, 0, 1))
    h0 = np.zeros((1, 2, 3))
    _, state, _ = s.forward(g.cell, w, Xt, h0)
    lam = np.ones_like(h0)
    g1, g2 = g.cell.zero_grads(w), g.cell.zero_grads(w)
    s.adjoint(g.cell, w, state, lam, g1)
    first = np.zeros_like(h0)
    _, state, _ = s.forward(g.cell, w, Xt, h0)
    s.adjoint(g.cell, w, state, lam, g2, lam_first=first)
    assert all(np.array_equal(a, b) for a, b in zip(g1, g2)) and np.any(first != 0)


# ------------------------------------------------------------------------------------------------
# Nested iteration
# ------------------------------------------------------------------------------------------------

@settings(max_examples=15)
@given(Nc=st.integers(1, 6), w=st.integers(1, 3), cf=st.integers(1, 5),
       kind=st.sampled_from(["constant", "linear"]), seed=st.integers(0, 100))
def test_inject_of_interpolate_is_the_identity(Nc, w, cf, kind, seed):
    theta = np.random.default_rng(seed).normal(size=(Nc, w, w + 1))
    fine = interpolate_layers(theta, cf, kind)
    assert fine.shape == (Nc * cf, w, w + 1)
    assert np.array_equal(inject_layers(fine, cf), theta)
    if kind == "constant":
        assert np.array_equal(fine, theta[np.arange(Nc * cf) // cf])


def test_linear_interpolation_rule():
    theta = np.arange(3, dtype=float)[:, None, None] * np.ones((3, 1, 2))
    fine = interpolate_layers(theta, 4, "linear")[:, 0, 0]
    np.testing.assert_allclose(fine, [0, .25, .5, .75, 1, 1.25, 1.5, 1.75, 2, 2, 2, 2])


def _smooth(m, seed):
    """Layers sampled from a smooth random function of t: A + B sin(2 pi t) + C t."""
    rng = np.random.default_rng(seed)
    shape = m.params["layers"].shape[1:]
    A, B_, C = (rng.uniform(-1, 1, shape) for _ in range(3))
    t = np.arange(m.depth)[:, None, None] * m.dt
    m.params["layers"][...] = A + 0.5 * B_ * np.sin(2 * np.pi * t) + 0.5 * C * t


@pytest.mark.parametrize("kind", ["constant", "linear"])
def test_refined_loss_converges_like_dt(kind):
    """Refining 8 -> 16 -> 32 -> 64 layers: the loss starts close to the coarse one and the
    change halves with each doubling (forward Euler on the same piecewise function: O(dt))."""
    m, X, y = problem("tanh", N=8, w=4, B=16, tikhonov=0.0, ddt_penalty=0.0, final_time=2.0)
    _smooth(m, 1)
    nets = [m]
    for _ in range(3):
        nets.append(nets[-1].refined(2, kind))
    losses = [n.loss_and_grad_flat(X, y)[0] for n in nets]
    diffs = np.abs(np.diff(losses))
    assert diffs[0] < 0.1 * losses[0]
    ratios = diffs[1:] / diffs[:-1]
    assert np.all(ratios < 0.7) and np.all(ratios > 0.3), (losses, ratios)
    f = nets[1]
    assert f.depth == 16 and f.final_time == m.final_time and f.dt == m.dt / 2
    for name in ("opening.weight", "opening.bias", "classifier.weight", "classifier.bias"):
        assert np.array_equal(f.params[name], m.params[name])


# ------------------------------------------------------------------------------------------------
# API: files, shapes, bad input
# ------------------------------------------------------------------------------------------------

def test_save_and_load_round_trip(tmp_path):
    m, X, y = problem("smoothrelu", opening="copy", N=7, dtype="float32")
    path = tmp_path / "ode.npz"
    m.save(path)
    m2 = mgritnn.load(path)
    assert isinstance(m2, ODENet) and m2.config == m.config
    assert m2.flat.dtype == np.float32 and np.array_equal(m2.flat, m.flat)
    assert np.array_equal(m2.forward(X), m.forward(X))


def test_float32_runs_in_float32():
    m, X, y = problem(dtype="float32")
    loss, grad, info = m.loss_and_grad_flat(X, y)
    assert grad.dtype == np.float32 and info["logits"].dtype == np.float32
    assert m.predict(X).shape == (X.shape[0],)


def test_constant_layer_init_is_one_ode():
    """The default initialization gives every layer the same weights: no smoothness penalty, and
    refining the network changes only the discretization."""
    m = ODENet(3, 5, 4, 6, ddt_penalty=1.0, tikhonov=0.0)
    L = m.params["layers"]
    assert np.array_equal(L, np.broadcast_to(L[0], L.shape)) and m.regularization() == 0.0
    assert np.array_equal(m.refined(3).params["layers"][:1], L[:1])
    other = ODENet(3, 5, 4, 6, layer_init="independent")
    assert not np.array_equal(other.params["layers"][0], other.params["layers"][1])


def test_parameter_layout():
    m = ODENet(3, 5, 4, 6)
    assert {k: v.shape for k, v in m.params.items()} == {
        "opening.weight": (5, 3), "opening.bias": (5,), "layers": (6, 5, 6),
        "classifier.weight": (4, 5), "classifier.bias": (4,)}
    assert m.flat.size == 15 + 5 + 180 + 20 + 4
    assert np.abs(m.params["layers"]).max() <= 1 / np.sqrt(5)
    assert np.shares_memory(m.params["layers"], m.flat)


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(opening="copy", width=2), ConfigError, "width >= 3"),
    (dict(activation="sigmoid"), ConfigError, "activation"),
    (dict(opening="conv"), ConfigError, "opening"),
    (dict(depth=0), ConfigError, "depth"),
    (dict(final_time=0.0), ConfigError, "final_time"),
])
def test_bad_config(kwargs, err, match):
    args = dict(num_features=3, width=5, num_classes=2, depth=4)
    with pytest.raises(err, match=match):
        ODENet(**dict(args, **kwargs))


def test_bad_data():
    m, X, y = problem()
    with pytest.raises(DataError, match="features"):
        m.forward(X[:, :2])
    with pytest.raises(DataError, match="shape"):
        m.forward(X[None])
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        m.forward(bad)
    with pytest.raises(DataError, match="labels"):
        m.loss_and_grad(X, y + 10)
    with pytest.raises(DataError, match="lengths"):
        m.forward(X, lengths=np.ones(len(X), int))
    with pytest.raises(ConfigError, match="warm"):
        m.loss_and_grad(X, y, MGRITConfig(initial_guess="warm"))


def test_regularization_by_owned_blocks_is_the_whole_bitwise():
    """The owners' share of the regularization (``_reg_terms`` on blocks of layers, the
    neighbouring layers passed in as a rank receives them) adds up to the one-process value and
    gradient bit for bit: the owned rows are the same bits, the per-layer terms too."""
    m = ODENet(3, 4, 2, 11, layer_init="independent", seed=3, tikhonov=1e-2, ddt_penalty=0.3)
    whole = np.zeros_like(m.flat)
    value = m.regularization(whole)
    L = m.params["layers"]
    sq, dsq = np.zeros(11), np.zeros(11)
    for lo, hi in [(0, 4), (4, 5), (5, 11)]:
        part = np.zeros_like(m.flat)
        s, d, shared_sq = m._reg_terms(part, lo, hi, L[lo - 1].copy() if lo else None,
                                       L[hi].copy() if hi < 11 else None, shared=hi == 11)
        sq += s
        dsq += d
        rows = m.unflatten(part)["layers"]
        assert np.array_equal(rows[lo:hi], m.unflatten(whole)["layers"][lo:hi])
        assert not rows[:lo].any() and not rows[hi:].any()
        for sl in m.shared_slices():
            assert np.array_equal(part[sl], whole[sl] if hi == 11 else 0 * whole[sl])
    assert m._reg_value(sq, dsq, shared_sq) == value
