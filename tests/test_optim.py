"""Tests of mgritnn.optim: Adam, SGD, clip_by_global_norm, registry and checkpoint state."""

import io
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mgritnn.errors import ConfigError
from mgritnn.optim import (
    OPTIMIZERS,
    SGD,
    Adam,
    clip_by_global_norm,
    make_optimizer,
    state_from_arrays,
    state_to_arrays,
)

N, STEPS = 37, 6
TOL = {np.float64: dict(rtol=1e-12, atol=1e-15), np.float32: dict(rtol=1e-5, atol=1e-6)}


def _data(dtype, seed=0):
    rng = np.random.default_rng(seed)
    params = rng.standard_normal(N).astype(dtype)
    grads = [rng.standard_normal(N).astype(dtype) for _ in range(STEPS)]
    return params, grads


# ---- slow references: one Python float per element, straight from the formulas -----------------
def ref_adam(params, grads, lr, betas, eps, weight_decay):
    b1, b2 = betas
    p = [float(x) for x in params]
    m, v = [0.0] * len(p), [0.0] * len(p)
    for t, gs in enumerate(grads, start=1):
        for i, g in enumerate(float(x) for x in gs):
            g = g + weight_decay * p[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat = m[i] / (1 - b1**t)
            v_hat = v[i] / (1 - b2**t)
            p[i] -= lr * m_hat / (math.sqrt(v_hat) + eps)
    return np.array(p)


def ref_sgd(params, grads, lr, momentum, nesterov, weight_decay):
    p = [float(x) for x in params]
    b = [0.0] * len(p)
    for t, gs in enumerate(grads):
        for i, g in enumerate(float(x) for x in gs):
            g = g + weight_decay * p[i]
            if momentum:
                b[i] = g if t == 0 else momentum * b[i] + g
                g = g + momentum * b[i] if nesterov else b[i]
            p[i] -= lr * g
    return np.array(p)


def _run(opt, params, grads):
    state = opt.init(params)
    for g in grads:
        state = opt.update(g, state, params)
    return state


ADAM_CASES = [
    dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
    dict(lr=3e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
]
SGD_CASES = [
    dict(lr=1e-2, momentum=0.9, nesterov=False, weight_decay=0.0),
    dict(lr=5e-2, momentum=0.5, nesterov=True, weight_decay=0.01),
    dict(lr=1e-1, momentum=0.0, nesterov=False, weight_decay=0.2),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kw", ADAM_CASES)
def test_adam_matches_reference(dtype, kw):
    params, grads = _data(dtype)
    expected = ref_adam(params, grads, **kw)
    buf = params
    state = _run(Adam(**kw), params, grads)
    assert params is buf and params.dtype == dtype
    assert state.step == STEPS and state.m.dtype == state.v.dtype == dtype
    np.testing.assert_allclose(params, expected, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kw", SGD_CASES)
def test_sgd_matches_reference(dtype, kw):
    params, grads = _data(dtype, seed=1)
    expected = ref_sgd(params, grads, **kw)
    state = _run(SGD(**kw), params, grads)
    assert params.dtype == dtype and state.momentum_buffer.dtype == dtype
    np.testing.assert_allclose(params, expected, **TOL[dtype])


@pytest.mark.parametrize("opt", [Adam(weight_decay=0.1), SGD(weight_decay=0.1)])
def test_in_place_on_view_and_grads_untouched(opt):
    flat = np.ones(10, dtype=np.float32)
    view = flat[2:8]  # a named view into the model's flat buffer
    grads = np.full(6, 0.5, dtype=np.float32)
    g_before = grads.copy()
    state = opt.init(view)
    opt.update(grads, state, view)
    assert np.shares_memory(view, flat) and flat.dtype == np.float32
    assert np.all(flat[2:8] < 1) and np.all(flat[:2] == 1) and np.all(flat[8:] == 1)
    np.testing.assert_array_equal(grads, g_before)


@pytest.mark.parametrize("opt", [Adam(), SGD()])
def test_grads_mismatch(opt):
    params = np.zeros(4)
    state = opt.init(params)
    with pytest.raises(TypeError, match="dtype"):
        opt.update(np.zeros(4, np.float32), state, params)
    with pytest.raises(ValueError, match="shape"):
        opt.update(np.zeros(5), state, params)
    with pytest.raises(TypeError):
        opt.init(np.zeros(4, dtype=np.int64))


def test_adam_converges_on_quadratic():
    rng = np.random.default_rng(2)
    a, c = rng.uniform(0.5, 5.0, 20), rng.standard_normal(20)
    x = np.zeros(20)
    opt = Adam(lr=0.05)
    state = opt.init(x)
    for _ in range(2000):
        state = opt.update(a * (x - c), state, x)
    np.testing.assert_allclose(x, c, atol=1e-3)


# ---- clipping -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_clip_scales_above_threshold(dtype):
    g = np.array([3.0, 4.0], dtype=dtype)
    norm = clip_by_global_norm(g, 1.0)
    assert type(norm) is float and norm == pytest.approx(5.0)
    assert g.dtype == dtype
    np.testing.assert_allclose(g, np.array([3.0, 4.0]) / (5.0 + 1e-6), rtol=1e-6)


def test_clip_no_change_below_threshold_and_nonfinite():
    g = np.array([3.0, 4.0])
    assert clip_by_global_norm(g, 5.0) == 5.0
    np.testing.assert_array_equal(g, [3.0, 4.0])
    for bad in (np.inf, np.nan):
        g = np.array([bad, 1.0])
        norm = clip_by_global_norm(g, 1.0)
        assert not math.isfinite(norm)
        np.testing.assert_array_equal(g, [bad, 1.0])


def test_clip_large_float32_does_not_overflow():
    g = np.full(4, 1e20, dtype=np.float32)  # sum of squares overflows float32
    norm = clip_by_global_norm(g, 1.0)
    assert norm == pytest.approx(2e20, rel=1e-6)
    assert np.linalg.norm(g.astype(np.float64)) == pytest.approx(1.0, rel=1e-5)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=20), st.floats(1e-3, 1e3))
def test_clip_property(values, max_norm):
    g = np.array(values)
    before = np.linalg.norm(g)
    norm = clip_by_global_norm(g, max_norm)
    assert norm == pytest.approx(before)
    assert np.linalg.norm(g) <= max_norm * (1 + 1e-12)
    if norm <= max_norm:
        np.testing.assert_array_equal(g, values)


# ---- checkpoint state ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("opt", [Adam(weight_decay=0.01), SGD(nesterov=True)])
def test_state_round_trip_and_resume_bitwise(opt, dtype):
    params, grads = _data(dtype, seed=3)
    p_ref = params.copy()
    _run(opt, p_ref, grads)  # uninterrupted

    state = opt.init(params)
    for g in grads[:3]:
        state = opt.update(g, state, params)
    arrays = state_to_arrays(state)
    assert arrays["step"].shape == () and arrays["step"].dtype == np.int64
    f = io.BytesIO()
    np.savez(f, params=params, **arrays)
    f.seek(0)
    with np.load(f) as z:
        loaded = {k: z[k] for k in z.files if k != "params"}
        params2 = z["params"].copy()
    state2 = state_from_arrays(opt, loaded, params=params2)
    assert type(state2) is type(state) and state2.step == 3 and type(state2.step) is int
    for a, b in zip(state, state2):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    for g in grads[3:]:
        state2 = opt.update(g, state2, params2)
    assert params2.tobytes() == p_ref.tobytes()


def test_state_from_arrays_errors():
    opt = Adam()
    arrays = state_to_arrays(opt.init(np.zeros(3)))
    with pytest.raises(ValueError, match="keys"):
        state_from_arrays(opt, {"step": arrays["step"], "m": arrays["m"]})
    with pytest.raises(ValueError, match="keys"):
        state_from_arrays(SGD(), arrays)
    with pytest.raises(ValueError, match="shape"):
        state_from_arrays(opt, {**arrays, "v": np.zeros(4)})
    with pytest.raises(ValueError, match="shape"):
        state_from_arrays(opt, arrays, params=np.zeros(5))
    with pytest.raises(ValueError, match="step"):
        state_from_arrays(opt, {**arrays, "step": np.array([1, 2])})


# ---- configuration ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cls, kw",
    [
        (Adam, dict(lr=0)), (Adam, dict(lr=-1)), (Adam, dict(lr=float("nan"))),
        (Adam, dict(lr="fast")), (Adam, dict(betas=(1.0, 0.999))), (Adam, dict(betas=(0.9, -0.1))),
        (Adam, dict(betas=0.9)), (Adam, dict(eps=0)), (Adam, dict(weight_decay=-1e-3)),
        (SGD, dict(lr=0)), (SGD, dict(momentum=-0.1)), (SGD, dict(momentum=1.0)),
        (SGD, dict(momentum=0.0, nesterov=True)), (SGD, dict(weight_decay=-1)),
        (SGD, dict(nesterov="yes")),
    ],
)
def test_bad_hyper_parameters(cls, kw):
    with pytest.raises(ConfigError):
        cls(**kw)


def test_make_optimizer():
    assert set(OPTIMIZERS) == {"adam", "sgd"}
    opt = make_optimizer("adam", lr=0.01)
    assert isinstance(opt, Adam) and opt.lr == 0.01
    assert isinstance(make_optimizer("sgd", momentum=0.0), SGD)
    with pytest.raises(ConfigError, match="adam"):
        make_optimizer("rmsprop")
    with pytest.raises(ConfigError, match="momentum"):
        make_optimizer("adam", momentum=0.9)
    with pytest.raises(ConfigError, match="lr"):
        make_optimizer("sgd", lr=-1.0)


# ---- optional: compare with torch.optim ---------------------------------------------------------
@pytest.mark.parametrize(
    "name, kw",
    [("adam", k) for k in ADAM_CASES] + [("sgd", k) for k in SGD_CASES],
)
def test_matches_torch(name, kw):
    torch = pytest.importorskip("torch", reason="PyTorch not installed; torch comparison skipped")
    params, grads = _data(np.float64, seed=4)
    grads = grads[:5]
    tp = torch.nn.Parameter(torch.tensor(params.copy()))
    topt = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[name]([tp], **kw)
    for g in grads:
        tp.grad = torch.tensor(g)
        topt.step()
    _run(make_optimizer(name, **kw), params, grads)
    np.testing.assert_allclose(params, tp.detach().numpy(), rtol=1e-12, atol=0)
