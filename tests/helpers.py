"""Helpers and checks shared by several test modules."""
import numpy as np
from hypothesis import assume

import mgritnn
from mgritnn.errors import ConfigError


def gru_problem(cell="classic", L=1, T=60, B=3, I=3, H=5, C=3, seed=0, dtype="float64",
                scale=None, dt=1.0):
    """A seeded GRU classifier (weights times ``scale``), inputs X (B, T, I) and labels y (B,)."""
    m = mgritnn.GRUClassifier(I, H, C, num_layers=L, cell=cell, dtype=dtype, seed=seed, dt=dt)
    if scale is not None:
        m.flat[:] *= scale
    rng = np.random.default_rng(seed + 1)
    return m, rng.normal(size=(B, T, I)).astype(dtype), rng.integers(0, C, size=B)


def assume_hierarchy_fits(cfg, T):
    """Inside a hypothesis test: draw again unless MGRIT config ``cfg`` has a hierarchy for ``T``
    steps (one that does not fit is the config's error, tested on its own)."""
    try:
        cfg.cfs(T)
        fits = True
    except ConfigError:
        fits = False
    assume(fits)


def assert_directional_derivatives(m, X, y, g, seed, directions=2, eps=1e-5, rtol=1e-6):
    """The flat gradient ``g`` of ``m``'s loss at (X, y) against central differences of the loss
    along ``directions`` random unit directions (float64): |fd - g.d| <= rtol |fd| + 1e-9.
    Leaves the model's parameters as they were."""
    rng = np.random.default_rng(seed)
    theta = m.flat.copy()
    try:
        for _ in range(directions):
            d = rng.normal(size=theta.size)
            d /= np.linalg.norm(d)
            m.flat[:] = theta + eps * d
            lp, _ = m.loss_and_grad(X, y)
            m.flat[:] = theta - eps * d
            lm, _ = m.loss_and_grad(X, y)
            fd = (lp - lm) / (2 * eps)
            assert abs(fd - g @ d) <= rtol * abs(fd) + 1e-9, (fd, g @ d)
    finally:
        m.flat[:] = theta


def assert_exactness_front(exact, solve, cf, relax, per_cycle, skip, cycles=5):
    """MGRIT's exactness front on two levels (docs/algorithms.md §3; Falgout et al. 2014): after k cycles
    the first ``per_cycle * (k - skip)`` C-points are exact to 1e-13 (FCF: two per cycle, F: one;
    a skipped first down-leg none), the next one is not (> 1e-9), and neither are the F-points of
    the exact intervals. ``exact`` (N + 1, *S) is the serial trajectory; ``solve(cfg)`` returns
    ``(u (N + 1, *S), stats)`` of an MGRIT forward solve with the config ``cfg``."""
    from mgritnn.config import NOT_CONVERGED
    from mgritnn.solvers import MGRITConfig
    cpts = np.arange(0, len(exact), cf)
    for k in range(1, cycles + 1):
        cfg = MGRITConfig(levels=2, cf=cf, relax=relax, max_iter=k, atol_l2=0.0, skip_first_down=skip)
        u, stats = solve(cfg)
        assert stats.iterations == k and stats.status == NOT_CONVERGED
        err = np.abs(u[cpts] - exact[cpts]).reshape(len(cpts), -1).max(axis=1)
        front = per_cycle * (k - skip)
        assert np.all(err[:front + 1] < 1e-13), (k, err)
        assert err[front + 1] > 1e-9, (k, err)
        # the F-points of the exact intervals are exact too (final F-relaxation)
        assert np.abs(u[:front * cf + 1] - exact[:front * cf + 1]).max() < 1e-13


def save_npz(path, ds, **extra):
    """Write the four arrays of the Dataset ``ds`` (and ``extra`` ones) to ``path``; returns it."""
    np.savez(path, X_train=ds.X_train, y_train=ds.y_train, X_test=ds.X_test, y_test=ds.y_test,
             **extra)
    return path


def eval_and_predict(ck, pred, capsys):
    """``mgritnn eval --train`` and ``mgritnn predict`` of the checkpoint ``ck`` (the latter
    writing ``pred``): both exit 0; returns eval's stdout and the predictions file's arrays."""
    from mgritnn.cli import main
    assert main(["eval", "--checkpoint", str(ck), "--train"]) == 0
    out = capsys.readouterr().out
    assert "train: loss" in out and "test: loss" in out
    assert main(["predict", "--checkpoint", str(ck), "--out", str(pred)]) == 0
    with np.load(pred) as z:
        return out, dict(z)
