"""Variable-length sequences in the solvers (issue 14): padded steps are identity steps (dt = 0).

* A step of size 0 is exactly the identity for every cell (classic, implicit, implicit-newton),
  forward (h' = h bit for bit) and backward (the adjoint passes unchanged, zero input and
  parameter cotangents), with the identity as its Jacobian (DEER).
* A padded batch gives each row the result of its sequence run alone at its own length: bitwise
  for the serial solver (per row; the whole loss and gradient for one row), to 1e-9 for MGRIT at a
  tight tolerance and for DEER / quasi-DEER (float64; hypothesis draws the lengths).
* MGRIT's coarse steps have the summed step sizes of their fine steps, per row, and its
  exactness front holds with mixed lengths. (Rank invariance with mixed lengths: test_mpi.py.)
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mgritnn
from mgritnn.cells import get_cell
from mgritnn.cells.base import DiagonalNewton, LayerStep, has
from mgritnn.config import NOT_CONVERGED, OK
from mgritnn.errors import ConfigError, DataError
from mgritnn.solvers import DEERConfig, MGRITConfig
from mgritnn.solvers.mgrit import _level_dts
from helpers import assume_hierarchy_fits

CELLS3 = ("classic", "implicit", "implicit-newton")


def weights(cell, L, I, H, C=3, seed=0, scale=1.0):
    m = mgritnn.GRUClassifier(I, H, C, num_layers=L, cell=cell, dtype="float64", seed=seed)
    m.flat[:] *= scale
    return m


def draw_lengths(data, B, T):
    """B lengths in 1..T, at least one of them below T when T > 1 (hypothesis)."""
    lengths = np.array(data.draw(st.lists(st.integers(1, T), min_size=B, max_size=B)))
    if T > 1 and np.all(lengths == T):
        lengths[data.draw(st.integers(0, B - 1))] = data.draw(st.integers(1, T - 1))
    return lengths


# ------------------------------------------------------------------------------------------------
# The dt = 0 step
# ------------------------------------------------------------------------------------------------

@settings(max_examples=10)
@given(cell=st.sampled_from(CELLS3), L=st.integers(1, 2), K=st.integers(1, 3),
       B=st.integers(1, 4), H=st.integers(1, 6), seed=st.integers(0, 2 ** 31 - 1),
       data=st.data())
def test_zero_step_is_the_identity(cell, L, K, B, H, seed, data):
    """Rows with dt 0 keep their state, pass their adjoint, and give zero cotangents, bit for bit;
    the other rows are bitwise what a per-state step size gives them."""
    m = weights(cell, L, 2, H, seed=seed % 1000)
    c, w = m.cell, m.weights()
    rng = np.random.default_rng(seed)
    h = rng.uniform(-1, 1, (K, L, B, H))
    ax = rng.normal(size=(K, B, 3 * H))
    pos = rng.choice([0.5, 1.0, 2.0], K)
    pad = np.array(data.draw(st.lists(st.booleans(), min_size=K * B, max_size=K * B))).reshape(K, B)
    dt = np.where(pad, 0.0, pos[:, None])
    out, cache = c.step(w, ax, h, dt, cache=True)
    ref = c.step(w, ax, h, pos)
    for k in range(K):
        for b in range(B):
            want = h[k, :, b] if pad[k, b] else ref[k, :, b]
            assert np.array_equal(out[k, :, b], want), (k, b)
    lam_next = rng.normal(size=h.shape)
    grads, cots = c.zero_grads(w), []
    lam, dx = c.step_vjp(w, ax, h, dt, lam_next, grads=grads, cache=cache, cotangents=cots)
    lam_ref, dx_ref = c.step_vjp(w, ax, h, pos, lam_next)
    for k in range(K):
        for b in range(B):
            if pad[k, b]:
                assert np.array_equal(lam[k, :, b], lam_next[k, :, b]), (k, b)
                assert np.all(dx[k, b] == 0)
                for dax, dah in cots:
                    assert np.all(dax[k, b] == 0) and np.all(dah[k, b] == 0)
            elif cell != "implicit-newton":   # the Newton solve's LAPACK call batches the rows
                assert np.array_equal(lam[k, :, b], lam_ref[k, :, b]), (k, b)
                assert np.array_equal(dx[k, b], dx_ref[k, b]), (k, b)
    # all rows padded: no parameter gradient at all
    grads = c.zero_grads(w)
    lam, dx = c.step_vjp(w, ax, h, np.zeros((K, B)), lam_next, grads=grads)
    assert np.array_equal(lam, lam_next) and np.all(dx == 0)
    assert all(np.all(a == 0) for f in grads for a in f)


@pytest.mark.parametrize("cell", CELLS3)
def test_zero_step_jacobian_is_the_identity(cell):
    """DEER's linearization of a padded step: dh'/dh = I exactly (dense and diagonal), and
    quasi-DEER's one-pass linearization gives J = scale, b = h - scale h."""
    H, K, B = 4, 2, 3
    m = weights(cell, 1, 2, H, seed=5)
    c, w = m.cell, m.weights()
    rng = np.random.default_rng(1)
    h = rng.uniform(-1, 1, (K, B, H))
    ax = rng.normal(size=(K, B, 3 * H))
    dt = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 0.5]])
    s = c.layer_step(w, 0, ax, h, dt, jacobian="dense")
    d = c.layer_step(w, 0, ax, h, dt, jacobian="diag")
    eye = np.eye(H)
    for k, b in zip(*np.nonzero(dt == 0)):
        assert np.array_equal(s.h_new[k, b], h[k, b])
        assert np.array_equal(s.J[k, b], eye)
        assert np.array_equal(d.J[k, b], np.ones(H))
    lam = rng.normal(size=(K, B, H))
    lam_old, (dax, dah) = c.layer_step_vjp(w, 0, lam, s, dt)
    for k, b in zip(*np.nonzero(dt == 0)):
        assert np.array_equal(lam_old[k, b], lam[k, b])
        assert np.all(dax[k, b] == 0) and np.all(dah[k, b] == 0)
    if has(c, DiagonalNewton):
        J, bb = np.empty((K, B, H)), np.empty((K, B, H))
        c.layer_newton_diag(w, 0, ax, h, dt, 0.5, J, bb)
        for k, b in zip(*np.nonzero(dt == 0)):
            assert np.array_equal(J[k, b], np.full(H, 0.5))
            assert np.array_equal(bb[k, b], h[k, b] - 0.5 * h[k, b])


def test_old_step_size_forms_still_work_and_bad_ones_are_refused():
    """A scalar and one step size per state (K,) are broadcast over the rows, bitwise as before;
    a negative step size, or one of another shape, is a ConfigError."""
    m = weights("implicit", 2, 2, 3)
    c, w = m.cell, m.weights()
    rng = np.random.default_rng(0)
    h = rng.uniform(-1, 1, (2, 2, 4, 3))
    ax = rng.normal(size=(2, 4, 9))
    a = c.step(w, ax, h, 0.7)
    b = c.step(w, ax, h, np.array([0.7, 0.7]))
    e = c.step(w, ax, h, np.full((2, 4), 0.7))
    assert np.array_equal(a, b) and np.array_equal(a, e)
    with pytest.raises(ConfigError, match="finite and >= 0"):
        c.step(w, ax, h, np.array([[1.0, -1.0, 1.0, 1.0]] * 2))
    with pytest.raises(ConfigError, match="shape"):
        c.step(w, ax, h, np.ones((2, 3)))


# ------------------------------------------------------------------------------------------------
# Model: lengths
# ------------------------------------------------------------------------------------------------

def test_lengths_are_validated():
    m = weights("classic", 1, 2, 3)
    X = np.zeros((2, 5, 2))
    y = np.array([0, 1])
    for bad, msg in (([1, 2, 3], "shape"), ([0, 5], "1..5"), ([2, 6], "1..5"),
                     ([1.5, 2], "integers")):
        with pytest.raises(DataError, match=msg):
            m.forward(X, lengths=bad)
        with pytest.raises(DataError, match=msg):
            m.loss_and_grad_flat(X, y, lengths=bad)
    with pytest.raises(ConfigError, match="pad"):
        m.forward(X, lengths=[1, 2], pad="middle")


@pytest.mark.parametrize("solver", ["serial", "mgrit", "deer"])
def test_full_lengths_are_bitwise_no_lengths(solver):
    """Lengths that are all T give the computation without lengths, bit for bit."""
    m = weights("classic", 2, 2, 4, seed=2)
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(3, 20, 2)), np.array([0, 1, 2])
    l0, g0, _ = m.loss_and_grad_flat(X, y, solver)
    l1, g1, _ = m.loss_and_grad_flat(X, y, solver, lengths=[20, 20, 20])
    assert l0 == l1 and np.array_equal(g0, g1)


def _alone(m, X, y, lengths, pad="end", solver="serial"):
    """Loss, gradient and logits of each row run alone at its own length (B = 1, truncated)."""
    T = X.shape[1]
    out = []
    for b, n in enumerate(lengths):
        x = X[b:b + 1, :n] if pad == "end" else X[b:b + 1, T - n:]
        loss, g, info = m.loss_and_grad_flat(x, y[b:b + 1], solver)
        out.append((loss, g, info["logits"][0]))
    return out


def _assert_alone(m, X, y, lengths, pad, loss, grad):
    """``loss`` and ``grad`` of the padded batch are the mean of each sequence's alone, to 1e-9."""
    alone = _alone(m, X, y, lengths, pad)
    np.testing.assert_allclose(loss, np.mean([a[0] for a in alone]), rtol=1e-9)
    gm = np.mean([a[1] for a in alone], axis=0)
    np.testing.assert_allclose(grad, gm, rtol=1e-9, atol=1e-9 * np.abs(gm).max())


@settings(max_examples=10)
@given(cell=st.sampled_from(CELLS3), L=st.integers(1, 2), T=st.integers(1, 40),
       pad=st.sampled_from(["end", "front"]), seed=st.integers(0, 2 ** 31 - 1), data=st.data())
def test_serial_one_row_padded_is_bitwise_alone(cell, L, T, pad, seed, data):
    """One sequence padded to T (garbage in the padding) gives bitwise the loss, gradient and
    logits of the sequence alone at its length (padding at the end; at the front the gradient's
    sums start with exact zeros: also bitwise)."""
    m = weights(cell, L, 2, 4, seed=seed % 997, scale=0.8)
    rng = np.random.default_rng(seed)
    n = data.draw(st.integers(1, T))
    X = rng.normal(size=(1, T, 2))
    y = np.array([seed % 3])
    loss, g, info = m.loss_and_grad_flat(X, y, lengths=[n], pad=pad)
    (l1, g1, z1), = _alone(m, X, y, [n], pad)
    assert loss == l1
    assert np.array_equal(info["logits"][0], z1)
    if pad == "end":
        assert np.array_equal(g, g1)
    else:
        np.testing.assert_allclose(g, g1, rtol=1e-13, atol=1e-15)


@settings(max_examples=10)
@given(cell=st.sampled_from(CELLS3), L=st.integers(1, 2), T=st.integers(2, 30),
       B=st.integers(2, 5), pad=st.sampled_from(["end", "front"]),
       seed=st.integers(0, 2 ** 31 - 1), data=st.data())
def test_serial_padded_batch_equals_each_sequence_alone(cell, L, T, B, pad, seed, data):
    """A padded batch: each row's logits bitwise those of the same batch cut at the row's length
    (the rows of a GEMM never mix); loss and gradient the mean of the sequences run alone
    (to 1e-12: only the order of the additions over the rows differs)."""
    m = weights(cell, L, 2, 4, seed=seed % 997, scale=0.8)
    rng = np.random.default_rng(seed)
    lengths = draw_lengths(data, B, T)
    X = rng.normal(size=(B, T, 2))
    y = rng.integers(0, 3, B)
    loss, g, info = m.loss_and_grad_flat(X, y, lengths=lengths, pad=pad)
    assert np.array_equal(m.forward(X, lengths=lengths, pad=pad), info["logits"])
    for b, n in enumerate(lengths):
        cut = X[:, :n] if pad == "end" else X[:, T - n:]
        assert np.array_equal(info["logits"][b], m.forward(cut)[b]), b
    alone = _alone(m, X, y, lengths, pad)
    np.testing.assert_allclose(loss, np.mean([a[0] for a in alone]), rtol=1e-13)
    gm = np.mean([a[1] for a in alone], axis=0)
    np.testing.assert_allclose(g, gm, rtol=1e-11, atol=1e-12 * np.abs(gm).max())
    np.testing.assert_allclose(info["logits"], np.stack([a[2] for a in alone]), rtol=1e-12,
                               atol=1e-13)


def test_front_and_end_padding_give_the_same_rows():
    """The same sequences padded at the front or at the end: bitwise the same logits."""
    m = weights("implicit", 2, 2, 5, seed=4)
    rng = np.random.default_rng(8)
    T, lengths = 12, np.array([12, 3, 7, 1])
    X = rng.normal(size=(4, T, 2))
    Xf = np.zeros_like(X)
    for b, n in enumerate(lengths):
        Xf[b, T - n:] = X[b, :n]
    assert np.array_equal(m.forward(X, lengths=lengths), m.forward(Xf, lengths=lengths, pad="front"))


# ------------------------------------------------------------------------------------------------
# MGRIT and DEER with mixed lengths
# ------------------------------------------------------------------------------------------------

@settings(max_examples=8)
@given(cell=st.sampled_from(["classic", "implicit"]), L=st.integers(1, 2), T=st.integers(8, 40),
       B=st.integers(1, 4), levels=st.integers(2, 3), cf=st.integers(2, 4),
       pad=st.sampled_from(["end", "front"]), seed=st.integers(0, 2 ** 31 - 1), data=st.data())
def test_mgrit_tight_with_lengths_equals_alone(cell, L, T, B, levels, cf, pad, seed, data):
    """MGRIT at a tight tolerance on a padded batch: the serial padded batch's loss and gradient,
    and so each sequence's alone, to 1e-9."""
    m = weights(cell, L, 2, 4, seed=seed % 991, scale=0.8)
    cfg = MGRITConfig(levels=levels, cf=cf, max_iter=T + 2, adjoint_max_iter=T + 2, atol_l2=1e-14)
    assume_hierarchy_fits(cfg, T)
    rng = np.random.default_rng(seed)
    lengths = draw_lengths(data, B, T)
    X, y = rng.normal(size=(B, T, 2)), rng.integers(0, 3, B)
    l1, g1, info = m.loss_and_grad_flat(X, y, cfg, lengths=lengths, pad=pad)
    assert info["forward"].status == OK and info["adjoint"].status == OK
    _assert_alone(m, X, y, lengths, pad, l1, g1)


@pytest.mark.parametrize("solver", ["deer", "quasi-deer"])
@pytest.mark.parametrize("cell", CELLS3)
def test_deer_with_lengths_equals_alone(solver, cell):
    """DEER and quasi-DEER on a padded batch (the padded steps' Jacobians are the identity): each
    sequence's loss and gradient alone, to 1e-9."""
    m = weights(cell, 2, 2, 4, seed=6, scale=0.8)
    rng = np.random.default_rng(2)
    T, lengths = 25, np.array([25, 4, 13])
    X, y = rng.normal(size=(3, T, 2)), np.array([0, 2, 1])
    cfg = DEERConfig(quasi=solver == "quasi-deer", atol=1e-13, rtol=0.0, max_iter=200,
                     fallback=False)
    for pad in ("end", "front"):
        l1, g1, info = m.loss_and_grad_flat(X, y, cfg, lengths=lengths, pad=pad)
        assert info["forward"].status == OK and not info["forward"].fallback
        _assert_alone(m, X, y, lengths, pad, l1, g1)


def test_mgrit_coarse_step_sizes_sum_the_real_fine_steps():
    """A coarse step's size is the sum of its fine steps' sizes per row: across a sequence's end
    it covers only the real part; a scalar dt gives span * dt as before."""
    from mgritnn.distributed import local_grid
    T, cf = 10, 4
    grid = local_grid(T, [cf], 1, 0)
    ax = np.zeros((T, 2, 3))
    from mgritnn.solvers.mgrit import _level_inputs
    levels = _level_inputs(grid, ax, 0, "sample", reverse=False)
    dt = np.ones((T, 2))
    dt[6:, 1] = 0                                   # row 1 has length 6
    d0, d1 = _level_dts(levels, dt, T, 0, np.float64)
    assert np.array_equal(d0, dt)
    assert np.array_equal(d1, [[4, 4], [4, 2], [2, 0]])
    s0, s1 = _level_dts(levels, 0.5, T, 0, np.float64)
    assert np.array_equal(s1, np.array([4, 4, 2]) * 0.5) and s1.shape == (3,)
    rgrid = local_grid(T, [cf], 1, 0, reverse=True)
    rlevels = _level_inputs(rgrid, ax, 0, "sample", reverse=True)
    r0, r1 = _level_dts(rlevels, dt, T, 0, np.float64)
    assert np.array_equal(r0, dt[::-1])
    assert sorted(map(tuple, r1)) == sorted(map(tuple, d1))


def test_mean_coarse_input_averages_the_real_steps_only():
    """coarse_input="mean": a coarse step's input is the mean over its row's real fine steps
    (a NumPy twin), in both orientations; a row with no real step there gets 0 (its coarse step
    has size 0: the identity); without padding it is the plain mean, as before."""
    from mgritnn.distributed import local_grid
    from mgritnn.solvers.mgrit import _level_inputs
    T, cf = 10, 4
    ax = np.random.default_rng(3).normal(size=(T, 2, 3))
    dt = np.ones((T, 2))
    dt[6:, 1] = 0                                   # row 1 has length 6
    twin = np.zeros((3, 2, 3))
    for j, (a, n) in enumerate([(0, 4), (4, 4), (8, 2)]):
        for b in range(2):
            real = [t for t in range(a, a + n) if dt[t, b] != 0]
            if real:
                twin[j, b] = ax[real, b].mean(axis=0)
    for reverse in (False, True):
        grid = local_grid(T, [cf], 1, 0, reverse=reverse)
        lv = _level_inputs(grid, ax, 0, "mean", reverse=reverse, fine_dt=dt)
        got = lv[1][2] if not reverse else lv[1][2][::-1]
        np.testing.assert_allclose(got, twin, rtol=1e-15)
        assert np.all(got[2, 1] == 0)
        plain = _level_inputs(grid, ax, 0, "mean", reverse=reverse)
        same = _level_inputs(grid, ax, 0, "mean", reverse=reverse, fine_dt=np.ones((T, 2)))
        assert np.array_equal(plain[1][2], same[1][2])
        assert np.array_equal(plain[1][2][:, 0], lv[1][2][:, 0])       # row 0 is not padded


def test_mgrit_mean_coarse_input_with_lengths_equals_alone():
    """The coarse inputs change the convergence, never the fixed point: MGRIT with
    coarse_input="mean" at a tight tolerance gives each sequence's loss and gradient alone."""
    m = weights("implicit", 2, 2, 4, seed=4, scale=0.8)
    rng = np.random.default_rng(8)
    T, lengths = 29, np.array([29, 5, 17])
    X, y = rng.normal(size=(3, T, 2)), np.array([1, 0, 2])
    cfg = MGRITConfig(levels=3, cf=3, coarse_input="mean", max_iter=40, adjoint_max_iter=40,
                      atol_l2=1e-14)
    for pad in ("end", "front"):
        l1, g1, info = m.loss_and_grad_flat(X, y, cfg, lengths=lengths, pad=pad)
        assert info["forward"].status == OK and info["adjoint"].status == OK
        _assert_alone(m, X, y, lengths, pad, l1, g1)


@pytest.mark.parametrize("relax, per_cycle", [("FCF", 2), ("F", 1)])
def test_exactness_front_with_mixed_lengths(relax, per_cycle):
    """Two levels on a padded batch of mixed lengths: after k cycles C-points 0 .. per_cycle * k
    (the first cycle skipped) are exact, as without lengths."""
    from test_mgrit import trajectory
    cf, T = 4, 4 * 14
    m = weights("classic", 2, 3, 6, seed=3)
    X = np.random.default_rng(4).normal(size=(3, T, 3))
    dt = m.step_sizes(np.array([T, 23, 41]), T, 3)
    exact, _ = trajectory(m, X, "serial", dt)
    cpts = np.arange(0, T + 1, cf)
    for k in range(1, 6):
        cfg = MGRITConfig(levels=2, cf=cf, relax=relax, max_iter=k, atol_l2=0.0)
        u, stats = trajectory(m, X, cfg, dt)
        assert stats.iterations == k and stats.status == NOT_CONVERGED
        err = np.abs(u[cpts] - exact[cpts]).reshape(len(cpts), -1).max(axis=1)
        front = per_cycle * (k - 1)
        assert np.all(err[:front + 1] < 1e-13), (k, err)
        assert err[front + 1] > 1e-9, (k, err)
        assert np.abs(u[:front * cf + 1] - exact[:front * cf + 1]).max() < 1e-13


def test_padded_steps_carry_the_state_in_mgrit():
    """In a converged MGRIT trajectory every row's state stays constant after its length (to
    round-off: the C-points there take FAS corrections; the final sweep's F-points copy them)."""
    from test_mgrit import trajectory
    T = 30
    m = weights("implicit", 1, 2, 4, seed=1)
    X = np.random.default_rng(0).normal(size=(2, T, 2))
    lengths = np.array([30, 11])
    dt = m.step_sizes(lengths, T, 2)
    u, stats = trajectory(m, X, MGRITConfig(levels=3, cf=2, max_iter=40, atol_l2=1e-14), dt)
    assert stats.status == OK
    np.testing.assert_allclose(u[11:, :, 1], np.broadcast_to(u[11, :, 1], u[11:, :, 1].shape),
                               rtol=0, atol=1e-13)
    for c in range(13, T + 1, 2):           # an F-point after the end is its C-point's copy
        assert np.array_equal(u[c, :, 1], u[c - 1, :, 1]), c


# ------------------------------------------------------------------------------------------------
# The trainer passes the lengths
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pad", ["end", "front"])
def test_trainer_steps_and_evaluates_with_the_lengths(tmp_path, pad):
    """Trainer.step computes the loss with each batch's lengths, Trainer.evaluate the logits with
    the test set's: bitwise the model's calls with lengths (and not those without)."""
    from mgritnn.train import TrainConfig, Trainer
    from test_train import quiet, write_padded_npz
    path, d = write_padded_npz(tmp_path / "var.npz")
    cfg = TrainConfig(data=path, epochs=1, hidden=4, batch_size=5, max_batches=2, pad=pad,
                      dtype="float64")
    with Trainer(cfg, out=quiet, progress=False) as t:
        batch = next(t.batches(0))
        m = t.model
        want, _, _ = m.loss_and_grad_flat(batch.X, batch.y, lengths=batch.lengths, pad=pad)
        plain, _, _ = m.loss_and_grad_flat(batch.X, batch.y)
        test, _ = t.evaluate()
        np.testing.assert_array_equal(test["logits"], m.forward(t.X_test, lengths=t.len_test,
                                                                pad=pad))
        assert not np.array_equal(test["logits"], m.forward(t.X_test))
        assert t.step(batch).loss == want != plain
