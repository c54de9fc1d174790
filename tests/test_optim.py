"""Tests of mgritnn.optim: the gradient transformations (adam, sgd, clip, weight decay, chain),
apply_updates, trees, the registry and the checkpoint form of the state."""

import io
import math
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mgritnn.errors import ConfigError
from mgritnn.optim import (
    OPTIMIZERS,
    EmptyState,
    GradientTransformation,
    ScaleByAdamState,
    TraceState,
    adam,
    add_decayed_weights,
    apply_updates,
    chain,
    clip_by_global_norm,
    global_norm,
    make_optimizer,
    scale,
    scale_by_adam,
    scale_by_learning_rate,
    sgd,
    state_from_arrays,
    state_to_arrays,
    trace,
)

N, STEPS = 37, 6
TOL = {np.float64: dict(rtol=1e-12, atol=1e-15), np.float32: dict(rtol=1e-5, atol=1e-6)}


def _data(dtype, seed=0):
    rng = np.random.default_rng(seed)
    params = rng.standard_normal(N).astype(dtype)
    grads = [rng.standard_normal(N).astype(dtype) for _ in range(STEPS)]
    return params, grads


# ---- slow references: one Python float per element, straight from the formulas -----------------
def ref_adam(params, grads, lr, betas, eps, weight_decay, decoupled=False):
    """torch.optim.Adam (L2 added to the gradient), or AdamW with ``decoupled``."""
    b1, b2 = betas
    p = [float(x) for x in params]
    m, v = [0.0] * len(p), [0.0] * len(p)
    for t, gs in enumerate(grads, start=1):
        for i, g in enumerate(float(x) for x in gs):
            if not decoupled:
                g = g + weight_decay * p[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat = m[i] / (1 - b1**t)
            v_hat = v[i] / (1 - b2**t)
            step = m_hat / (math.sqrt(v_hat) + eps)
            if decoupled:
                step += weight_decay * p[i]
            p[i] -= lr * step
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


# ---- the updates of mgritnn 0.1 (commit 88ab840), verbatim: in place on the flat buffer ----------
def old_adam_update(grads, state, params, lr, betas, eps, weight_decay):
    b1, b2 = betas
    step = state[0] + 1
    g = grads + weight_decay * params if weight_decay else grads
    m = b1 * state[1] + (1.0 - b1) * g
    v = b2 * state[2] + (1.0 - b2) * (g * g)
    denom = np.sqrt(v)
    denom /= math.sqrt(1.0 - b2 ** step)
    denom += eps
    upd = np.divide(m, denom, out=denom)
    upd *= lr / (1.0 - b1 ** step)
    params -= upd
    return (step, m, v)


def old_sgd_update(grads, state, params, lr, momentum, nesterov, weight_decay):
    g = grads + weight_decay * params if weight_decay else grads
    buf = state[1]
    if momentum:
        buf = g.copy() if state[0] == 0 else momentum * buf + g
        d = g + momentum * buf if nesterov else buf
    else:
        d = g
    params -= lr * d
    return (state[0] + 1, buf)


def old_clip(grads, max_norm):
    norm = float(np.linalg.norm(grads.astype(np.float64, copy=False).ravel()))
    if math.isfinite(norm) and norm > max_norm:
        grads *= max_norm / (norm + 1e-6)
    return norm


def _run(opt, params, grads):
    """Apply ``opt`` in place on ``params`` for every gradient; return the last state."""
    state = opt.init(params)
    for g in grads:
        updates, state = opt.update(g, state, params)
        apply_updates(params, updates, inplace=True)
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
    state = _run(adam(**kw), params, grads)
    assert type(state) is ScaleByAdamState and params.dtype == dtype
    assert state.step == STEPS and state.m.dtype == state.v.dtype == dtype
    np.testing.assert_allclose(params, expected, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kw", SGD_CASES)
def test_sgd_matches_reference(dtype, kw):
    params, grads = _data(dtype, seed=1)
    expected = ref_sgd(params, grads, **kw)
    state = _run(sgd(**kw), params, grads)
    assert type(state) is TraceState and state.step == STEPS
    assert params.dtype == dtype and state.momentum_buffer.dtype == dtype
    np.testing.assert_allclose(params, expected, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_adamw_chain_is_decoupled_weight_decay(dtype):
    """add_decayed_weights between scale_by_adam and the learning rate is AdamW."""
    params, grads = _data(dtype, seed=5)
    expected = ref_adam(params, grads, 1e-2, (0.9, 0.999), 1e-8, 0.1, decoupled=True)
    _run(chain(scale_by_adam(), add_decayed_weights(0.1), scale_by_learning_rate(1e-2)), params,
         grads)
    np.testing.assert_allclose(params, expected, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("clip", [None, 0.5])
@pytest.mark.parametrize("name, kw", [("adam", k) for k in ADAM_CASES]
                         + [("sgd", k) for k in SGD_CASES])
def test_bit_for_bit_as_mgritnn_0_1(name, kw, clip, dtype):
    """The chains give the parameters and states of the in-place optimizers they replace (and the
    trainer's clip-then-optimizer order), bit for bit: training trajectories do not change."""
    params, grads = _data(dtype, seed=6)
    grads = [g * 3 for g in grads]                      # norms above the clip threshold
    old_p, new_p = params.copy(), params.copy()
    old_update = old_adam_update if name == "adam" else old_sgd_update
    old_state = (0, np.zeros_like(params), np.zeros_like(params))[:3 if name == "adam" else 2]
    for g in grads:
        g = g.copy()
        if clip is not None:
            old_clip(g, clip)
        old_state = old_update(g, old_state, old_p, **kw)
    opt = make_optimizer(name, **kw)
    state = _run(opt if clip is None else chain(clip_by_global_norm(clip), opt), new_p, grads)
    assert new_p.dtype == dtype and new_p.tobytes() == old_p.tobytes()
    assert state.step == old_state[0]
    for a, b in zip(state[1:], old_state[1:]):
        assert a.dtype == dtype and a.tobytes() == b.tobytes()


def test_update_is_pure_and_apply_updates_in_place_on_a_view():
    """update modifies neither the gradient, the parameters nor the old state;
    apply_updates(inplace=True) adds into a named view of the flat buffer."""
    flat = np.ones(10, dtype=np.float32)
    view = flat[2:8]
    grads = np.full(6, 0.5, dtype=np.float32)
    for opt in (adam(weight_decay=0.1), sgd(weight_decay=0.1)):
        flat[:] = 1
        state = opt.init(view)
        _, state = opt.update(grads, state, view)      # a state with nonzero buffers
        before = [np.array(a, copy=True) for a in state]
        updates, new = opt.update(grads, state, view)
        assert np.all(flat == 1) and np.all(grads == 0.5)
        for a, b in zip(state, before):
            np.testing.assert_array_equal(a, b)
        assert new.step == state.step + 1
        out = apply_updates(view, updates)
        assert not np.shares_memory(out, flat) and np.all(flat == 1)
        assert apply_updates(view, updates, inplace=True) is view
        assert np.shares_memory(view, flat) and flat.dtype == np.float32
        assert np.all(flat[2:8] < 1) and np.all(flat[:2] == 1) and np.all(flat[8:] == 1)
        np.testing.assert_array_equal(flat[2:8], out)


@pytest.mark.parametrize("opt", [adam(), sgd(), chain(clip_by_global_norm(1.0), adam())])
def test_grads_mismatch(opt):
    params = np.zeros(4)
    state = opt.init(params)
    with pytest.raises(TypeError, match="dtype"):
        opt.update(np.zeros(4, np.float32), state, params)
    with pytest.raises(ValueError, match="shape"):
        opt.update(np.zeros(5), state, params)
    with pytest.raises(TypeError):
        opt.init(np.zeros(4, dtype=np.int64))
    with pytest.raises(TypeError, match="dtype"):       # no float64 rounding into float32
        apply_updates(np.zeros(4, np.float32), np.zeros(4))
    with pytest.raises(ValueError, match="shape"):
        apply_updates(params, np.zeros(3))


@pytest.mark.parametrize("opt", [
    adam(1e-2, weight_decay=0.1), sgd(nesterov=True, weight_decay=0.1), scale(-0.5),
    scale_by_learning_rate(0.1), add_decayed_weights(0.1), clip_by_global_norm(1e-3),
    chain(clip_by_global_norm(1.0), add_decayed_weights(1e-4), adam(1e-3)),
    chain(scale_by_adam(), add_decayed_weights(1e-2), scale_by_learning_rate(1e-3)),
], ids=["adam", "sgd", "scale", "lr", "decay", "clip", "chain", "adamw"])
def test_float32_stays_float32(opt):
    """No float64 leaks into float32 updates, states or parameters (the hyper-parameters are
    Python floats)."""
    params, grads = _data(np.float32, seed=7)
    state = opt.init(params)
    for g in grads[:3]:
        updates, state = opt.update(g, state, params)
        assert updates.dtype == np.float32
        params = apply_updates(params, updates)
        assert params.dtype == np.float32
    for leaf in state_to_arrays(state).values():
        assert leaf.dtype in (np.int64, np.float32)


def test_chain_order_and_state():
    """Members act in order; a chain keeps the state of its stateful members only."""
    p, g = np.array([1.0, 2.0]), np.array([0.5, -1.0])
    u, _ = chain(scale(2.0), add_decayed_weights(1.0)).update(g, EmptyState(), p)
    np.testing.assert_array_equal(u, 2 * g + p)
    u, _ = chain(add_decayed_weights(1.0), scale(2.0)).update(g, EmptyState(), p)
    np.testing.assert_array_equal(u, 2 * (g + p))
    u, _ = chain(clip_by_global_norm(1.0), scale(3.0)).update(np.array([3.0, 4.0]), EmptyState())
    np.testing.assert_allclose(u, 3 * np.array([3.0, 4.0]) / (5 + 1e-6), rtol=1e-15)

    stateless = chain(scale(2.0), clip_by_global_norm(1.0))
    assert stateless.stateless and stateless.init(p) == EmptyState()
    one = chain(clip_by_global_norm(1.0), chain(add_decayed_weights(0.1), adam()))
    assert not one.stateless and type(one.init(p)) is ScaleByAdamState
    two = chain(trace(0.9), adam())
    s = two.init(p)
    assert type(s) is tuple and [type(x) for x in s] == [TraceState, ScaleByAdamState]
    _, s = two.update(g, s, p)
    assert s[0].step == s[1].step == 1
    np.testing.assert_array_equal(s[0].momentum_buffer, g)      # the trace saw the gradient
    np.testing.assert_array_equal(s[1].m, (1 - 0.9) * g)         # adam saw the trace's output
    with pytest.raises(TypeError, match="adam"):
        chain(adam)
    # the optax protocol: any (init, update) pair composes
    double = GradientTransformation(lambda params: EmptyState(),
                                    lambda u, s, params=None: (u * 2, s))
    np.testing.assert_array_equal(chain(double, scale(0.5)).update(g, EmptyState())[0], g)


class _Weights(NamedTuple):
    w: np.ndarray
    b: np.ndarray


@pytest.mark.parametrize("make", [
    lambda a, b: _Weights(a, b), lambda a, b: {"w": a, "b": b}, lambda a, b: (a, [b]),
], ids=["namedtuple", "dict", "tuple"])
@pytest.mark.parametrize("opt", [adam(1e-2, weight_decay=0.1), sgd(nesterov=True),
                                 chain(clip_by_global_norm(0.5), adam())],
                         ids=["adam", "sgd", "clip-adam"])
def test_trees_equal_the_flat_buffer(make, opt):
    """Parameters as a tree give, leaf by leaf, the flat buffer's result (the global norm of the
    clip spans all leaves)."""
    params, grads = _data(np.float32, seed=8)
    k = 29
    tree = make(params[:k].copy(), params[k:].copy())
    flat = params.copy()
    state_flat, state_tree = opt.init(flat), opt.init(tree)
    for g in grads:
        u, state_flat = opt.update(g, state_flat, flat)
        apply_updates(flat, u, inplace=True)
        u, state_tree = opt.update(make(g[:k], g[k:]), state_tree, tree)
        tree = apply_updates(tree, u)
    assert type(tree) is type(make(params, params))
    leaves = (tree.w, tree.b) if isinstance(tree, _Weights) else \
        (tree["w"], tree["b"]) if isinstance(tree, dict) else (tree[0], tree[1][0])
    np.testing.assert_allclose(np.concatenate(leaves), flat, rtol=1e-6, atol=1e-7)
    arrays = state_to_arrays(state_tree)
    back = state_from_arrays(opt, arrays, params=tree)
    assert state_to_arrays(back).keys() == arrays.keys()
    for key in arrays:
        assert arrays[key].tobytes() == state_to_arrays(back)[key].tobytes()


def test_adam_converges_on_quadratic():
    rng = np.random.default_rng(2)
    a, c = rng.uniform(0.5, 5.0, 20), rng.standard_normal(20)
    x = np.zeros(20)
    opt = adam(lr=0.05)
    state = opt.init(x)
    for _ in range(2000):
        u, state = opt.update(a * (x - c), state, x)
        x = apply_updates(x, u)
    np.testing.assert_allclose(x, c, atol=1e-3)


# ---- clipping -----------------------------------------------------------------------------------
def _clip(g, max_norm):
    return clip_by_global_norm(max_norm).update(g, EmptyState())[0]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_clip_scales_above_threshold(dtype):
    g = np.array([3.0, 4.0], dtype=dtype)
    assert type(global_norm(g)) is float and global_norm(g) == pytest.approx(5.0)
    out = _clip(g, 1.0)
    assert out.dtype == dtype
    np.testing.assert_array_equal(g, [3.0, 4.0])              # the input is not modified
    np.testing.assert_allclose(out, np.array([3.0, 4.0]) / (5.0 + 1e-6), rtol=1e-6)


def test_clip_no_change_below_threshold_and_nonfinite():
    g = np.array([3.0, 4.0])
    assert _clip(g, 5.0) is g
    for bad in (np.inf, np.nan):
        g = np.array([bad, 1.0])
        assert not math.isfinite(global_norm(g))
        np.testing.assert_array_equal(_clip(g, 1.0), [bad, 1.0])
    with pytest.raises(ConfigError):
        clip_by_global_norm(0.0)
    with pytest.raises(TypeError):
        global_norm(np.arange(3))


def test_clip_large_float32_does_not_overflow():
    g = np.full(4, 1e20, dtype=np.float32)  # sum of squares overflows float32
    assert global_norm(g) == pytest.approx(2e20, rel=1e-6)
    out = _clip(g, 1.0)
    assert out.dtype == np.float32
    assert np.linalg.norm(out.astype(np.float64)) == pytest.approx(1.0, rel=1e-5)


def test_global_norm_of_a_tree():
    rng = np.random.default_rng(9)
    a, b = rng.standard_normal(7), rng.standard_normal((2, 3)).astype(np.float32)
    assert global_norm(a) == float(np.linalg.norm(a))         # one array: numpy's, bit for bit
    both = np.concatenate([a, b.astype(np.float64).ravel()])
    assert global_norm({"a": a, "b": (b,)}) == pytest.approx(np.linalg.norm(both), rel=1e-15)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=20), st.floats(1e-3, 1e3))
def test_clip_property(values, max_norm):
    g = np.array(values)
    before = np.linalg.norm(g)
    assert global_norm(g) == pytest.approx(before)
    out = _clip(g, max_norm)
    assert np.linalg.norm(out) <= max_norm * (1 + 1e-12)
    if before <= max_norm:
        np.testing.assert_array_equal(out, values)


# ---- checkpoint state ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("opt", [adam(weight_decay=0.01), sgd(nesterov=True),
                                 chain(clip_by_global_norm(1.0), adam()),
                                 chain(trace(0.5), scale_by_adam(), scale(-1e-2))],
                         ids=["adam", "sgd", "clip-adam", "two-states"])
def test_state_round_trip_and_resume_bitwise(opt, dtype):
    params, grads = _data(dtype, seed=3)
    p_ref = params.copy()
    _run(opt, p_ref, grads)  # uninterrupted

    state = opt.init(params)
    for g in grads[:3]:
        updates, state = opt.update(g, state, params)
        apply_updates(params, updates, inplace=True)
    arrays = state_to_arrays(state)
    for key, a in arrays.items():
        assert a.dtype == (np.int64 if key.endswith("step") else dtype), key
    f = io.BytesIO()
    np.savez(f, params=params, **arrays)
    f.seek(0)
    with np.load(f) as z:
        loaded = {k: z[k] for k in z.files if k != "params"}
        params2 = z["params"].copy()
    state2 = state_from_arrays(opt, loaded, params=params2)
    assert type(state2) is type(state)
    for key, a in state_to_arrays(state2).items():
        assert a.tobytes() == arrays[key].tobytes()
    for g in grads[3:]:
        updates, state2 = opt.update(g, state2, params2)
        apply_updates(params2, updates, inplace=True)
    assert params2.tobytes() == p_ref.tobytes()


def test_checkpoint_keys_are_those_of_mgritnn_0_1():
    """One stateful member: its fields by name, as the old Adam and SGD stored them (so old
    checkpoints load); several: prefixed by their place in the chain."""
    p = np.zeros(3, np.float32)
    assert set(state_to_arrays(adam().init(p))) == {"step", "m", "v"}
    assert set(state_to_arrays(chain(clip_by_global_norm(1.0), adam()).init(p))) == \
        {"step", "m", "v"}
    assert set(state_to_arrays(sgd(momentum=0.0).init(p))) == {"step", "momentum_buffer"}
    assert set(state_to_arrays(chain(trace(0.9), adam()).init(p))) == \
        {"0/step", "0/momentum_buffer", "1/step", "1/m", "1/v"}
    s = state_from_arrays(adam(), {"step": np.array(4), "m": np.ones(3, np.float32),
                                   "v": np.ones(3, np.float32)})
    assert type(s) is ScaleByAdamState and s.step == 4 and type(s.step) is int


def test_state_from_arrays_errors():
    opt = adam()
    arrays = state_to_arrays(opt.init(np.zeros(3)))
    with pytest.raises(ValueError, match="keys"):
        state_from_arrays(opt, {"step": arrays["step"], "m": arrays["m"]})
    with pytest.raises(ValueError, match="keys"):
        state_from_arrays(sgd(), arrays)
    with pytest.raises(ValueError, match="shape"):
        state_from_arrays(opt, {**arrays, "v": np.zeros(4)})
    with pytest.raises(ValueError, match="shape"):
        state_from_arrays(opt, arrays, params=np.zeros(5))
    with pytest.raises(ValueError, match="dtype"):
        state_from_arrays(opt, arrays, params=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="step"):
        state_from_arrays(opt, {**arrays, "step": np.array([1, 2])})
    with pytest.raises(ValueError, match="step"):
        state_from_arrays(opt, {**arrays, "step": np.array(-1)})


# ---- configuration ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, kw",
    [
        (adam, dict(lr=0)), (adam, dict(lr=-1)), (adam, dict(lr=float("nan"))),
        (adam, dict(lr="fast")), (adam, dict(betas=(1.0, 0.999))), (adam, dict(betas=(0.9, -0.1))),
        (adam, dict(betas=0.9)), (adam, dict(eps=0)), (adam, dict(weight_decay=-1e-3)),
        (sgd, dict(lr=0)), (sgd, dict(momentum=-0.1)), (sgd, dict(momentum=1.0)),
        (sgd, dict(momentum=0.0, nesterov=True)), (sgd, dict(weight_decay=-1)),
        (sgd, dict(nesterov="yes")), (scale, dict(step_size=float("inf"))),
        (scale_by_learning_rate, dict(learning_rate=-1.0)),
        (add_decayed_weights, dict(weight_decay=True)),
        (clip_by_global_norm, dict(max_norm=-1.0)), (clip_by_global_norm, dict(max_norm="x")),
    ],
)
def test_bad_hyper_parameters(make, kw):
    with pytest.raises(ConfigError):
        make(**kw)


def test_add_decayed_weights_needs_params():
    g = np.ones(3)
    assert add_decayed_weights(0.0).update(g, EmptyState())[0] is g
    with pytest.raises(ValueError, match="params"):
        add_decayed_weights(0.1).update(g, EmptyState())


def test_make_optimizer():
    assert set(OPTIMIZERS) == {"adam", "sgd"}
    p, g = np.ones(4), np.full(4, 0.5)
    opt = make_optimizer("adam", lr=0.01)
    assert isinstance(opt, GradientTransformation)
    u, _ = opt.update(g, opt.init(p), p)
    np.testing.assert_allclose(u, -0.01, rtol=1e-6)            # Adam's first step is -lr sign(g)
    u, _ = make_optimizer("sgd", lr=0.1, momentum=0.0).update(g, TraceState(0, np.zeros(4)), p)
    np.testing.assert_array_equal(u, -0.1 * g)
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


# ---- one set of validators (issue 21): the optimizers check as every config does ---------------
@pytest.mark.parametrize(
    "make, kw, message",
    [
        (adam, dict(lr="0.1"), r"lr must be a finite number > 0, got '0.1'"),
        (sgd, dict(lr="0.1"), r"lr must be a finite number > 0, got '0.1'"),
        (adam, dict(lr=np.inf), r"lr must be a finite number > 0, got inf"),
        (adam, dict(lr=True), r"lr must be a finite number > 0, got True"),
        (adam, dict(weight_decay="0.1"), r"weight_decay must be a finite number >= 0, got '0.1'"),
        (sgd, dict(weight_decay=np.inf), r"weight_decay must be a finite number >= 0, got inf"),
        (sgd, dict(momentum="0.9"), r"momentum must be a finite number >= 0 and < 1, got '0.9'"),
        (sgd, dict(nesterov=1), r"nesterov must be True or False, got 1"),
        (adam, dict(betas=(True, 0.999)), r"beta1 must be a finite number >= 0 and < 1"),
        (adam, dict(eps="1e-8"), r"eps must be a finite number > 0, got '1e-8'"),
        (clip_by_global_norm, dict(max_norm=True),
         r"max_norm must be a finite number > 0, got True"),
        (clip_by_global_norm, dict(max_norm=np.inf),
         r"max_norm must be a finite number > 0, got inf"),
        (clip_by_global_norm, dict(max_norm="1"), r"max_norm must be a finite number > 0, got '1'"),
    ],
)
def test_hyper_parameters_are_checked_by_the_shared_validators(make, kw, message):
    with pytest.raises(ConfigError, match=message):
        make(**kw)
    if make is not clip_by_global_norm:
        with pytest.raises(ConfigError, match=message):
            make_optimizer(make.__name__, **kw)


@pytest.mark.parametrize("field, bad", [("lr", "0.1"), ("lr", 0), ("momentum", 1.0),
                                        ("weight_decay", -1.0), ("clip", True),
                                        ("clip", np.inf)])
def test_train_config_and_the_optimizers_give_one_message(field, bad):
    """TrainConfig's optimizer settings are checked by the optimizers' own checks."""
    from mgritnn.train.config import OptimSpec
    with pytest.raises(ConfigError) as spec_error:
        OptimSpec(**{field: bad})
    make = {"lr": lambda v: sgd(lr=v), "momentum": lambda v: sgd(momentum=v),
            "weight_decay": lambda v: sgd(weight_decay=v),
            "clip": lambda v: clip_by_global_norm(v)}[field]
    with pytest.raises(ConfigError) as opt_error:
        make(bad)
    name = "max_norm" if field == "clip" else field
    assert str(spec_error.value).replace("clip", name).replace(" or None", "") == \
        str(opt_error.value)


def test_validated_hyper_parameters_keep_their_values():
    """The checks return Python floats of the values (np.float32 too), so the steps stay the
    same bit for bit."""
    from mgritnn.optim import check_learning_rate, check_max_norm, check_momentum
    assert check_learning_rate(np.float32(1e-3)) == float(np.float32(1e-3))
    assert type(check_momentum(np.float64(0.5))) is float
    assert check_max_norm(None, none=True) is None
