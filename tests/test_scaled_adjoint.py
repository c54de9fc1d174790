"""The serial solver's scaled adjoint: exploding gradients keep their direction beyond float32.

BPTT's adjoint grows exponentially backward in time when the forward dynamics are chaotic (a GRU
whose candidate weights W_h^n have a gain above 1, with z ~ 0 and r ~ 1: about tanh(W x + g W h)).
The fused sweep keeps each batch row's scale in a power-of-two exponent and returns all results at
one common exponent E (``SolveStats.exponent``):

* against a slow float64 twin (plain NumPy loops over steps and rows, tests/reference.py's
  formulas, linearized at the float32 trajectory): 2^E times the float32 result has the
  reference's direction, also where the reference's norm is far beyond float32's range (where the
  unscaled float32 sweep returns inf), in every parameter block of a 2-layer stack, and with
  gradients already held in ``grads`` on entry (scaled with the rest);
* without overflow E = 0 and the results are bit for bit the unscaled ones (the step API's
  unscaled VJPs, which the committed fused sweep matched bit for bit), with padded steps;
* scaling the head's adjoint by 2^k changes the results by exactly 2^k (hypothesis): the
  rescalings are exact;
* the stepwise path (cells without fused sweeps) scales too (one exponent for the whole state).
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
from mgritnn.cells import FusedSequence, adjoint_shift, get_cell, without
from mgritnn.cells.gru import GRUGrads, GRUWeights
from mgritnn.solvers import SerialSolver
from mgritnn.solvers.base import SolveStats

F32_MAX = float(np.finfo(np.float32).max)
NAMES = (("weight_ih", "Wx"), ("weight_hh", "Wh"), ("bias_ih", "bx"), ("bias_hh", "bh"))
#: The directions' tolerance, per time step: float32 round-off accumulated over T chaotic steps
#: (the float32 sweep and the float64 twin linearize at the same states, their gates differ by
#: float32 round-off). Measured: 1e-6 .. 2e-5 for T = 300 .. 2000 in the distance of the
#: normalized vectors; the norms agree to 1e-4.
STEP_TOL = float(np.finfo(np.float32).eps)

def _stepwise(cell):
    """A cell seen without its fused sweeps: the serial solver must then step it (the path any
    non-GRU cell of the protocol takes)."""
    return without(cell, FusedSequence)


def _grads_dict(g, L):
    return {f"{n}_l{k}": getattr(g, f)[k] for n, f in NAMES for k in range(L)}


def chaotic_problem(L, T, B, H, gains, in_scales, seed, I=3, dtype="float32"):
    """Weights of an L-layer GRU (PyTorch names): r ~ 1, z ~ 0 (biases +-4), the candidate's
    recurrent weights of gain ``gains[k]`` (chaotic above ~1.5), the input weights scaled by
    ``in_scales[k]``; inputs x (T, B, I), h0 (L, B, H)."""
    rng = np.random.default_rng(seed)
    p = {}
    for k in range(L):
        Ik = I if k == 0 else H
        Wh = rng.normal(0, 0.3 / np.sqrt(H), (3 * H, H))
        Wh[2 * H:] = rng.normal(0, gains[k] / np.sqrt(H), (H, H))
        bx = rng.normal(0, 0.1, 3 * H)
        bx[:H] += 4.0
        bx[H:2 * H] -= 4.0
        p.update({f"weight_ih_l{k}": in_scales[k] * rng.normal(0, 1 / np.sqrt(Ik), (3 * H, Ik)),
                  f"weight_hh_l{k}": Wh, f"bias_ih_l{k}": bx,
                  f"bias_hh_l{k}": rng.normal(0, 0.1, 3 * H)})
    p = {k: v.astype(dtype) for k, v in p.items()}
    x = rng.normal(0, 0.5, (T, B, I)).astype(dtype)
    h0 = rng.uniform(-0.5, 0.5, (L, B, H)).astype(dtype)
    return p, x, h0, rng


def reference_bptt(cell, p, L, x, hs, dt, lam_last):
    """BPTT in float64 with plain loops over steps and rows (tests/reference.py's step and VJP),
    linearized at the given trajectory ``hs`` (L arrays (T+1, B, H): the float32 forward's; a
    chaotic forward in float64 would leave it). dt (T, B). Returns the gradients (dict, PyTorch
    names) and the adjoint at point 0 (L, B, H)."""
    p64 = {k: v.astype(np.float64) for k, v in p.items()}
    x = x.astype(np.float64)
    hs = [h.astype(np.float64) for h in hs]
    T, B = x.shape[:2]
    grads = {k: np.zeros_like(v) for k, v in p64.items()}
    lam = lam_last.astype(np.float64)
    for t in range(T - 1, -1, -1):
        for b in range(B):
            caches = []
            for k in range(L):
                inp = x[t, b:b + 1] if k == 0 else hs[k - 1][t + 1, b:b + 1]
                _, c = ref.layer_step(cell, inp, hs[k][t, b:b + 1], *ref.layer_params(p64, k),
                                      float(dt[t, b]))
                caches.append(c)
            lam[:, b:b + 1], _, g = ref.stack_step_vjp(cell, p64, L, caches, lam[:, b:b + 1],
                                                       float(dt[t, b]))
            for k, v in g.items():
                grads[k] += v
    return grads, lam


def solve(cell, p, L, x, h0, dt, lam_last, pre=None):
    """Serial forward and scaled adjoint (float32). ``pre``: gradients held in ``grads`` on entry.
    Returns the gradients (dict), the adjoint at point 0, the stats and the float32 trajectory."""
    w = GRUWeights.from_params(p, L)
    solver = SerialSolver()
    _, state, _ = solver.forward(get_cell(cell), w, x, h0, dt)
    hs = [h.copy() for h in state.seq.hs]
    g = GRUGrads.zeros_like(w)
    if pre is not None:
        for k, v in _grads_dict(g, L).items():
            v[...] = pre[k]
    lam0 = np.empty_like(h0)
    _, stats = solver.adjoint(get_cell(cell), w, state, lam_last, g, lam_first=lam0)
    return _grads_dict(g, L), lam0, stats, hs


def assert_direction(got, E, want, T):
    """2^E ``got`` (float32) has the direction of ``want`` (float64), to float32 round-off
    accumulated over T steps, and its norm."""
    a = np.ldexp(np.asarray(got, np.float64).ravel(), E)
    b = np.asarray(want, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    assert np.isfinite(na) and na > 0 and nb > 0
    assert 1 - a @ b / (na * nb) < 1e-5
    assert np.linalg.norm(a / na - b / nb) < T * STEP_TOL
    assert abs(na / nb - 1) < 10 * T * STEP_TOL


def flat(d, keys=None):
    return np.concatenate([np.ravel(d[k]) for k in (keys or sorted(d))])


# ------------------------------------------------------------------------------------------------
# Overflow: the direction against the float64 twin
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell,dt,T", [("classic", 1.0, 2000), ("implicit", 8.0, 1000)])
def test_one_layer_far_beyond_float32_has_the_twins_direction(cell, dt, T):
    """A chaotic 1-layer GRU: the gradient's norm is 10^50 (implicit) or 10^135 (classic); two
    rows end early (padded steps of size 0), and their adjoints are many orders of magnitude
    smaller (one of them below float32's resolution at the common exponent)."""
    B, H = 4, 16
    p, x, h0, rng = chaotic_problem(1, T, B, H, (3.0,), (1.0,), seed=1)
    dts = np.full((T, B), dt, np.float32)
    dts[T - 50:, 1] = 0.0
    dts[T // 2:, 3] = 0.0
    lam = rng.normal(size=(1, B, H)).astype(np.float32)
    g, lam0, stats, hs = solve(cell, p, 1, x, h0, dts, lam)
    want, want_lam0 = reference_bptt(cell, p, 1, x, hs, dts, lam)
    assert np.linalg.norm(flat(want)) > 1e10 * F32_MAX          # no float32 could hold it
    assert stats.exponent >= 128 and stats.exponent % adjoint_shift(np.float32) == 0
    assert all(np.isfinite(v).all() for v in g.values()) and np.isfinite(lam0).all()
    assert_direction(flat(g), stats.exponent, flat(want), T)
    assert_direction(lam0, stats.exponent, want_lam0, T)


@pytest.mark.parametrize("cell", ["classic", "implicit"])
def test_just_beyond_float32_with_gradients_held_on_entry(cell):
    """The head's adjoint scaled so that the true gradient's norm is 10^40 (above float32's
    3.4e38), ``grads`` holding 10^37-sized values on entry (scale 2^0, to be scaled with the
    rest): the sum of both has the twin's direction. The unscaled result (``scaled=False``,
    multiplied back) overflows."""
    T, B, H = 300, 3, 16
    dt = 1.0 if cell == "classic" else 8.0
    p, x, h0, rng = chaotic_problem(1, T, B, H, (3.0,), (1.0,), seed=2)
    dts = np.full((T, B), dt, np.float32)
    unit = rng.normal(size=(1, B, H))
    w = GRUWeights.from_params(p, 1)
    _, state, _ = SerialSolver().forward(get_cell(cell), w, x, h0, dts)
    ref_unit, _ = reference_bptt(cell, p, 1, x, state.seq.hs, dts, unit)
    k = int(np.round(np.log2(1e40 / np.linalg.norm(flat(ref_unit)))))
    lam = np.ldexp(unit, k).astype(np.float32)
    assert np.isfinite(lam).all()
    pre = {n: (1e37 * rng.normal(size=v.shape) / np.sqrt(v.size)).astype(np.float32)
           for n, v in ref_unit.items()}
    g, _, stats, _ = solve(cell, p, 1, x, h0, dts, lam, pre=pre)
    want = {n: np.ldexp(v, k) + pre[n] for n, v in ref_unit.items()}
    assert F32_MAX < np.linalg.norm(flat(want)) < 1e41
    assert stats.exponent > 0
    assert_direction(flat(g), stats.exponent, flat(want), T)
    # the pre-filled values matter at this tolerance: leaving them unscaled is wrong
    wrong = {n: np.ldexp(v, k) + np.ldexp(pre[n].astype(np.float64), stats.exponent)
             for n, v in ref_unit.items()}
    with pytest.raises(AssertionError):
        assert_direction(flat(g), stats.exponent, flat(wrong), T)
    # without the exponent the float32 values overflow
    gw = GRUGrads.zeros_like(w)
    _, st2, _ = SerialSolver().forward(get_cell(cell), w, x, h0, dts)
    with np.errstate(over="ignore"):
        get_cell(cell).sequence_vjp(w, st2.seq, lam, gw, scaled=False)
    assert not all(np.isfinite(a).all() for f in gw for a in f)


def _scaled_sum(parts):
    """sum of 2^k d over (k, d) in ``parts`` (dicts of float64 arrays)."""
    return {n: sum(np.ldexp(d[n], k) for k, d in parts) for n in parts[0][1]}


def test_two_layers_every_parameter_block_has_the_twins_direction():
    """A 2-layer stack, the top layer chaotic (weakly driven from below), the bottom one
    contracting, the head's adjoint in both layers: the top one's sized so that the true
    gradient's norm is 4e39 (beyond float32), the bottom one's (up to 1e37 in float32) so that it
    makes half of what reaches the bottom layer from above. The twin's answer is the sum of its
    answers for the two parts (BPTT is linear in the head's adjoint)."""
    T, B, H, L = 500, 3, 16, 2
    p, x, h0, rng = chaotic_problem(L, T, B, H, (0.5, 4.0), (1.0, 0.1), seed=3)
    dts = np.ones((T, B), np.float32)
    dts[T - 30:, 0] = 0.0
    unit = rng.normal(size=(L, B, H))
    w = GRUWeights.from_params(p, L)
    _, state, _ = SerialSolver().forward(get_cell("classic"), w, x, h0, dts)
    top, top_lam0 = reference_bptt("classic", p, L, x, state.seq.hs, dts, unit * [[[0]], [[1]]])
    bot, bot_lam0 = reference_bptt("classic", p, L, x, state.seq.hs, dts, unit * [[[1]], [[0]]])
    k1 = int(np.round(np.log2(4e39 / np.linalg.norm(flat(top)))))
    k0 = int(np.round(np.log2(0.5 * np.linalg.norm(np.ldexp(top["weight_hh_l0"], k1))
                              / np.linalg.norm(bot["weight_hh_l0"]))))
    lam = np.stack([np.ldexp(unit[0], k0), np.ldexp(unit[1], k1)]).astype(np.float32)
    assert np.isfinite(lam).all() and 1e30 < np.abs(lam[0]).max()
    g, lam0, stats, hs = solve("classic", p, L, x, h0, dts, lam)
    assert all(np.array_equal(a, b) for a, b in zip(hs, state.seq.hs))
    want = _scaled_sum([(k0, bot), (k1, top)])
    want_lam0 = np.ldexp(bot_lam0, k0) + np.ldexp(top_lam0, k1)
    scale = np.linalg.norm(flat(want))
    assert scale > F32_MAX and stats.exponent > 0
    for name in want:                   # every block, and the blocks' relative sizes
        assert np.linalg.norm(want[name]) > 1e-2 * scale, name
        assert_direction(g[name], stats.exponent, want[name], T)
    assert_direction(flat(g), stats.exponent, flat(want), T)
    for l in range(L):
        assert_direction(lam0[l], stats.exponent, want_lam0[l], T)
    # the bottom layer's own adjoint counts: without it the direction differs
    with pytest.raises(AssertionError):
        assert_direction(g["weight_hh_l0"], stats.exponent, np.ldexp(top["weight_hh_l0"], k1), T)


def test_the_stepwise_path_scales_too():
    """Cells without fused sweeps: one exponent for the whole state, the same direction (the
    head's adjoint sized so that the gradient's norm is 1e45)."""
    T, B, H = 200, 2, 16
    p, x, h0, rng = chaotic_problem(1, T, B, H, (3.0,), (1.0,), seed=4)
    dts = np.ones((T, B), np.float32)
    unit = rng.normal(size=(1, B, H))
    w = GRUWeights.from_params(p, 1)
    c = _stepwise(get_cell("classic"))
    solver = SerialSolver()
    _, state, _ = solver.forward(c, w, x, h0, dts)
    ref_unit, ref_lam0 = reference_bptt("classic", p, 1, x, [state.u[:, 0]], dts, unit)
    k = int(np.round(np.log2(1e45 / np.linalg.norm(flat(ref_unit)))))
    lam = np.ldexp(unit, k).astype(np.float32)
    assert np.isfinite(lam).all()
    g = GRUGrads.zeros_like(w)
    lam0 = np.empty_like(h0)
    dxp, stats = solver.adjoint(c, w, state, lam, g, lam_first=lam0)
    assert stats.exponent > 0 and np.isfinite(dxp).all()
    assert_direction(flat(_grads_dict(g, 1)), stats.exponent - k, flat(ref_unit), T)
    assert_direction(lam0, stats.exponent - k, ref_lam0, T)


# ------------------------------------------------------------------------------------------------
# No overflow: bit for bit the unscaled results
# ------------------------------------------------------------------------------------------------

def _unscaled_step_api(cell, w, x, h0, dts, lam_last, pre):
    """BPTT through the step API without any scaling (the unscaled VJPs the fused sweep matched
    bit for bit before the scaling): gradients (GRUGrads, starting from ``pre``), dxp, lam0."""
    c = get_cell(cell)
    T = x.shape[0]
    xp = c.project_inputs(w, x)
    u = np.empty((T + 1,) + h0.shape, h0.dtype)
    u[0] = h0
    for t in range(T):
        u[t + 1] = c.step(w, xp[t:t + 1], u[t:t + 1], dts[t:t + 1])[0]
    g = GRUGrads(*(tuple(a.copy() for a in f) for f in pre))
    lam, dxp, cots = lam_last[None], np.empty_like(xp), [None] * T
    for t in range(T - 1, -1, -1):
        cots[t] = []
        lam, dxp[t:t + 1] = c.step_vjp(w, xp[t:t + 1], u[t:t + 1], dts[t:t + 1], lam,
                                       cotangents=cots[t])
    _, cache = c.step(w, xp, u[:-1], dts, cache=True)
    c.accumulate_grads(g, cache, [tuple(np.concatenate([cots[t][l][i] for t in range(T)])
                                        for i in range(2)) for l in range(len(cots[0]))])
    c.project_inputs_vjp(w, x, dxp, g)
    return g, dxp, lam[0]


@pytest.mark.parametrize("cell", ["classic", "implicit"])
@pytest.mark.parametrize("L", [1, 2])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_without_overflow_exponent_0_and_bitwise_the_unscaled_results(cell, L, dtype):
    T, B, H = 40, 5, 6
    rng = np.random.default_rng(L)
    p = {}
    for k in range(L):
        Ik = 3 if k == 0 else H
        for name, shape in ((f"weight_ih_l{k}", (3 * H, Ik)), (f"weight_hh_l{k}", (3 * H, H)),
                            (f"bias_ih_l{k}", (3 * H,)), (f"bias_hh_l{k}", (3 * H,))):
            p[name] = rng.uniform(-0.6, 0.6, shape).astype(dtype)
    w = GRUWeights.from_params(p, L)
    x = rng.normal(size=(T, B, 3)).astype(dtype)
    h0 = rng.uniform(-0.5, 0.5, (L, B, H)).astype(dtype)
    lam = (1e3 * rng.normal(size=(L, B, H))).astype(dtype)
    dts = rng.choice([0.5, 1.0], size=(T, B)).astype(dtype)
    dts[T - 7:, 1] = 0.0                # padded steps
    dts[T // 3:, 4] = 0.0
    pre = GRUGrads(*(tuple(rng.normal(size=a.shape).astype(dtype) for a in f)
                     for f in GRUGrads.zeros_like(w)))
    solver = SerialSolver()
    _, state, _ = solver.forward(get_cell(cell), w, x, h0, dts)
    g = GRUGrads(*(tuple(a.copy() for a in f) for f in pre))
    lam0 = np.empty_like(h0)
    dxp, stats = solver.adjoint(get_cell(cell), w, state, lam, g, lam_first=lam0)
    assert stats.exponent == 0
    want_g, want_dxp, want_lam0 = _unscaled_step_api(cell, w, x, h0, dts, lam, pre)
    assert dxp.tobytes() == want_dxp.tobytes()
    assert lam0.tobytes() == want_lam0.tobytes()
    for a, b in zip(g, want_g):
        for u, v in zip(a, b):
            assert u.tobytes() == v.tobytes()


def test_solve_stats_exponent_defaults_to_0():
    assert SolveStats().exponent == 0


@settings(max_examples=10)
@given(k=st.integers(0, 110), cell=st.sampled_from(["classic", "implicit"]),
       L=st.integers(1, 2))
def test_a_power_of_two_on_the_heads_adjoint_comes_out_exactly(k, cell, L):
    """Scaling lam_last by 2^k scales every result by exactly 2^k: results times 2^E equal the
    unscaled run's times 2^k bit for bit, whichever rows and steps the rescalings hit (they are
    exact; no value here comes near float32's underflow)."""
    T, B, H = 60, 3, 8
    p, x, h0, rng = chaotic_problem(L, T, B, H, (1.2,) * L, (1.0,) * L, seed=5)
    dts = np.ones((T, B), np.float32)
    lam = rng.normal(size=(L, B, H)).astype(np.float32)
    base, base0, s0, _ = solve(cell, p, L, x, h0, dts, lam)
    assert s0.exponent == 0
    g, lam0, stats, _ = solve(cell, p, L, x, h0, dts, np.ldexp(lam, k))
    shift = adjoint_shift(np.float32)
    assert stats.exponent % shift == 0 and stats.exponent <= k + shift
    for name in base:
        a = np.ldexp(g[name].astype(np.float64), stats.exponent)
        b = np.ldexp(base[name].astype(np.float64), k)
        assert a.tobytes() == b.tobytes(), name
    a = np.ldexp(lam0.astype(np.float64), stats.exponent)
    assert a.tobytes() == np.ldexp(base0.astype(np.float64), k).tobytes()


# -- the model and the trainer apply the exponent ----------------------------------------------

def _huge_gradient_model(T=1000):
    """A float32 GRUClassifier whose gradient exceeds float32's range without chaos: small
    weights, the update gate near 1 (the adjoint barely decays over the steps, so
    the recurrent weights' gradient sums many contributions) and a head of weights 2e38 (the
    adjoint at the end beyond 2^64). Float32 and float64 trajectories agree to round-off."""
    import mgritnn
    m = mgritnn.GRUClassifier(3, 8, 2, num_layers=1, cell="classic", dtype="float32", seed=0)
    m.flat[:] *= 0.1
    m.params["bias_ih_l0"][8:16] = 4.0
    rng = np.random.default_rng(1)
    m.params["head.weight"][...] = 2e38 * rng.choice([-1.0, 1.0], m.params["head.weight"].shape)
    X = rng.normal(size=(2, T, 3)).astype(np.float32)
    return m, X, np.array([0, 1])


def test_model_scaled_gradient_has_the_float64_direction():
    """loss_and_grad_flat(scaled=True): 2^-E times the gradient, the float64 model's direction;
    the default returns the true scale, whose float32 norm overflows."""
    import mgritnn
    m, X, y = _huge_gradient_model()
    loss, g, info = m.loss_and_grad_flat(X, y, scaled=True)
    E = info["exponent"]
    assert E > 0 and np.all(np.isfinite(g))
    m64 = mgritnn.GRUClassifier(3, 8, 2, num_layers=1, cell="classic", dtype="float64", seed=0)
    m64.flat[:] = m.flat
    _, g64, info64 = m64.loss_and_grad_flat(X.astype(np.float64), y)
    assert info64["exponent"] == 0
    n64 = np.linalg.norm(g64)
    assert n64 > F32_MAX                                # beyond float32: the plain sweep is inf
    cos = float(g.astype(np.float64) @ g64 / (np.linalg.norm(g.astype(np.float64)) * n64))
    assert cos > 1 - 1e-5
    _, g_true, info_true = m.loss_and_grad_flat(X, y)          # the default: the true scale
    assert info_true["exponent"] == 0
    np.testing.assert_allclose(g_true, np.ldexp(g.astype(np.float64), E), rtol=1e-6)
    with np.errstate(over="ignore"):
        assert np.isinf(np.linalg.norm(g_true))     # its float32 norm overflows: clipping it fails


def test_trainer_clips_the_exact_direction_at_any_scale(tmp_path):
    """The trainer's unscaling (``GradientQuality.unscale``): with --clip, a scaled gradient
    whose norm is beyond float32 becomes the clipped exact direction (norm = clip); without, the
    true gradient."""
    from mgritnn.train import TrainConfig, Trainer
    m, X, y = _huge_gradient_model()
    _, g, info = m.loss_and_grad_flat(X, y, scaled=True)
    E = info["exponent"]
    for clip in (1.0, None):
        cfg = TrainConfig(seq_len=32, batch_size=10, epochs=1, hidden=4, clip=clip,
                          max_batches=1)
        with Trainer(cfg, out=lambda *a: None, progress=False) as tr:
            out = tr.quality.unscale(g.copy(), E)
        if clip is None:                    # the true gradient (entries within float32)
            np.testing.assert_allclose(out, np.ldexp(g.astype(np.float64), E), rtol=1e-6)
        else:
            assert np.linalg.norm(out.astype(np.float64)) == pytest.approx(1.0, rel=1e-5)
            cos = float(out.astype(np.float64) @ g.astype(np.float64)
                        / (np.linalg.norm(out.astype(np.float64))
                           * np.linalg.norm(g.astype(np.float64))))
            assert cos > 1 - 1e-6
