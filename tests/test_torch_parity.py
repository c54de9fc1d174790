"""PyTorch parity in every run, without PyTorch: golden values in ``tests/data/torch_golden.npz``.

The file is made by ``tests/data/make_torch_golden.py`` with PyTorch (``torch.nn.GRU`` +
``torch.nn.Linear`` + cross-entropy, and ``torch.optim``); its metadata names the PyTorch version.
This test never skips: a missing or unreadable file is a failure.
"""
import json
from pathlib import Path

import numpy as np
import pytest

import mgritnn
from mgritnn.optim import apply_updates, make_optimizer

GOLDEN = Path(__file__).resolve().parent / "data" / "torch_golden.npz"


def _golden():
    with np.load(GOLDEN, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    return arrays, json.loads(str(arrays.pop("meta")))


ARRAYS, META = _golden()
#: float64: round-off of two different summation orders; float32: a few ulps times T.
TOL = {"float64": dict(rtol=1e-11, atol=1e-13), "float32": dict(rtol=2e-5, atol=2e-6)}
SOLVERS = {"serial": "serial",
           "mgrit": mgritnn.MGRITConfig(levels=2, cf=2, max_iter=60, adjoint_max_iter=60, atol_l2=0.0)}


def _model(case):
    B, T, I, H, C, L, dtype = META["models"][case]
    m = mgritnn.GRUClassifier(I, H, C, num_layers=L, dtype=dtype)
    m.set_params({name: ARRAYS[f"{case}/param/{name}"] for name in m.params})
    return m, ARRAYS[f"{case}/X"], ARRAYS[f"{case}/y"], dtype


def test_golden_file_is_complete():
    assert set(META["models"]) == {"l1", "l2", "l3_b1_long", "l2_f32"}
    assert META["torch"], "the golden file must name the PyTorch version that made it"
    for case in META["models"]:
        m, *_ = _model(case)
        for name in m.params:
            assert f"{case}/grad/{name}" in ARRAYS, (case, name)


#: MGRIT (two levels, run to exactness) is compared in float64, where its result is serial's.
ROUTES = [(c, "serial") for c in ("l1", "l2", "l3_b1_long", "l2_f32")] + \
    [(c, "mgrit") for c in ("l1", "l2", "l3_b1_long")]


@pytest.mark.parametrize("case, route", ROUTES)
def test_loss_logits_and_gradients_equal_pytorch(case, route):
    m, X, y, dtype = _model(case)
    tol = TOL[dtype]
    loss, grad, info = m.loss_and_grad_flat(X, y, solver=SOLVERS[route])
    np.testing.assert_allclose(info["logits"], ARRAYS[f"{case}/logits"], **tol)
    np.testing.assert_allclose(loss, ARRAYS[f"{case}/loss"], **tol)
    for name, g in m.unflatten(grad).items():
        np.testing.assert_allclose(g, ARRAYS[f"{case}/grad/{name}"], err_msg=name, **tol)


@pytest.mark.parametrize("k", range(4))
def test_optimizer_trajectory_equals_torch_optim(k):
    name, kw = META["optimizers"][k]
    params = ARRAYS[f"opt{k}/params"].copy()
    opt = make_optimizer(name, **kw)
    state = opt.init(params)
    for g, want in zip(ARRAYS[f"opt{k}/grads"], ARRAYS[f"opt{k}/trajectory"]):
        updates, state = opt.update(g, state, params)
        params = apply_updates(params, updates)
        np.testing.assert_allclose(params, want, rtol=1e-13, atol=1e-15)
