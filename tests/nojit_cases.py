"""Small kernel cases run as plain Python (``NUMBA_DISABLE_JIT=1``, set by ``test_nojit.py``).

Compiled code and its Python twin can differ: a function replaced by an ``@overload`` in compiled
code runs its own Python body here. Every route (serial, MGRIT, DEER, quasi-DEER, the scan) must
give the reference result without the compiler too. Prints ``ok`` and exits 0, or raises.
"""
import os
import sys

import numpy as np

assert os.environ.get("NUMBA_DISABLE_JIT") == "1", "run me with NUMBA_DISABLE_JIT=1"
sys.path.insert(0, os.path.dirname(__file__))

import reference as ref  # noqa: E402

import mgritnn  # noqa: E402
from mgritnn.solvers import DEERConfig, MGRITConfig  # noqa: E402
from mgritnn.solvers.scan import linear_recurrence  # noqa: E402


def check_scan():
    rng = np.random.default_rng(0)
    for shape in ((9, 2, 3, 3), (9, 2, 3)):               # dense and diagonal
        A = rng.uniform(-0.6, 0.6, shape)
        b, h0 = rng.normal(size=(9, 2, 3)), rng.normal(size=(2, 3))
        for reverse in (False, True):
            out, _ = linear_recurrence(A, b, h0, reverse=reverse, chunks=3)
            np.testing.assert_allclose(out, ref.linear_recurrence(A, b, h0, reverse), rtol=1e-12,
                                       atol=1e-12)


def check_routes():
    m = mgritnn.GRUClassifier(2, 3, 3, num_layers=2, dtype="float64", seed=1)
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(2, 8, 2)), np.array([0, 2])
    want_loss, want = ref.loss_and_grad("classic", m.params, 2, X, y)
    tight = dict(atol=1e-13, rtol=0.0)
    for solver in ("serial", MGRITConfig(levels=2, cf=2, max_iter=20, adjoint_max_iter=20, atol_l2=1e-14),
                   DEERConfig(**tight), DEERConfig(quasi=True, **tight)):
        loss, flat, info = m.loss_and_grad_flat(X, y, solver)
        grads = m.unflatten(flat)
        assert info["forward"].status == 0 and not info["forward"].fallback, (solver, info)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-11, err_msg=str(solver))
        for k, g in want.items():
            np.testing.assert_allclose(grads[k], g, rtol=1e-9, atol=1e-11, err_msg=f"{solver} {k}")


check_scan()
check_routes()
print("ok")
