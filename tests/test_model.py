"""The classifier: gradients by finite differences and against the twin's BPTT, PyTorch parity,
files, and bad input."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import mgritnn
import reference as ref
from helpers import assert_directional_derivatives
from strategies import problems


def make_model(p, dtype="float64"):
    m = mgritnn.GRUClassifier(p["I"], p["H"], p["C"], num_layers=p["L"], cell=p["cell"],
                              dtype=dtype, dt=p["dt"])
    m.set_params(p["params"])
    return m


@given(p=problems(), seed=st.integers(0, 1000))
def test_gradient_by_central_differences(p, seed):
    """Directional derivative of the loss along random directions, float64, rtol 1e-6."""
    m = make_model(p)
    _, g, _ = m.loss_and_grad_flat(p["X"], p["y"])
    assert_directional_derivatives(m, p["X"], p["y"], g, seed)


@given(p=problems())
def test_every_parameter_gradient_equals_twin(p):
    m = make_model(p)
    loss, grads = m.loss_and_grad(p["X"], p["y"])
    want_loss, want = ref.loss_and_grad(p["cell"], p["params"], p["L"], p["X"], p["y"], p["dt"])
    assert loss == pytest.approx(want_loss, rel=1e-12, abs=1e-14)
    assert set(grads) == set(m.params)
    for name, g in grads.items():
        scale = max(np.abs(want[name]).max(), 1e-30)
        np.testing.assert_allclose(g, want[name], rtol=1e-10, atol=1e-12 * scale, err_msg=name)


@given(p=problems(), dtype=st.sampled_from(["float32", "float64"]))
def test_forward_equals_twin(p, dtype):
    m = make_model(p, dtype)
    logits = m.forward(p["X"])
    assert logits.dtype == np.dtype(dtype)
    _, want = ref.loss(p["cell"], p["params"], p["L"], p["X"].astype(np.float64), p["y"], p["dt"])
    tol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(logits, want, rtol=tol, atol=tol * np.abs(want).max())


def test_float32_gradient_close_to_float64():
    m64 = mgritnn.GRUClassifier(4, 10, 3, num_layers=2, dtype="float64", seed=1)
    m32 = mgritnn.GRUClassifier(4, 10, 3, num_layers=2, dtype="float32", seed=1)
    m32.flat[:] = m64.flat
    X = np.random.default_rng(0).normal(size=(8, 20, 4))
    y = np.arange(8) % 3
    l64, g64, _ = m64.loss_and_grad_flat(X, y)
    l32, g32, _ = m32.loss_and_grad_flat(X, y)
    assert g32.dtype == np.float32
    assert l32 == pytest.approx(l64, rel=1e-5)
    np.testing.assert_allclose(g32, g64, rtol=1e-3, atol=1e-5 * np.abs(g64).max())


def test_parameter_names_and_shapes_are_pytorchs():
    m = mgritnn.GRUClassifier(9, 100, 6, num_layers=2)
    shapes = {k: v.shape for k, v in m.params.items()}
    assert shapes == {
        "weight_ih_l0": (300, 9), "weight_hh_l0": (300, 100), "bias_ih_l0": (300,),
        "bias_hh_l0": (300,), "weight_ih_l1": (300, 100), "weight_hh_l1": (300, 100),
        "bias_ih_l1": (300,), "bias_hh_l1": (300,), "head.weight": (6, 100), "head.bias": (6,)}
    for v in m.params.values():
        assert np.shares_memory(v, m.flat)
    bound = 1 / np.sqrt(100)
    assert np.abs(m.flat).max() <= bound


def test_seed_determines_initialization():
    a, b, c = (mgritnn.GRUClassifier(3, 5, 2, seed=s).flat for s in (0, 0, 1))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_save_load_round_trip(tmp_path):
    m = mgritnn.GRUClassifier(3, 5, 4, num_layers=2, cell="implicit", dtype="float64", seed=7,
                              dt=2.0)
    path = tmp_path / "m.npz"
    m.save(path)
    with np.load(path) as z:
        assert set(z.files) == set(m.params) | {"mgritnn_meta"}
    m2 = mgritnn.load(path)
    assert m2.config == m.config
    assert np.array_equal(m2.flat, m.flat)
    X = np.random.default_rng(0).normal(size=(2, 5, 3))
    assert np.array_equal(m.forward(X), m2.forward(X))
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]     # no temporary left behind


def test_load_errors(tmp_path):
    with pytest.raises(mgritnn.CheckpointError, match="does not exist"):
        mgritnn.load(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(mgritnn.CheckpointError, match="not a readable"):
        mgritnn.load(bad)
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
    with pytest.raises(mgritnn.CheckpointError, match="metadata"):
        mgritnn.load(tmp_path / "foreign.npz")
    m = mgritnn.GRUClassifier(3, 5, 4)
    with pytest.raises(mgritnn.CheckpointError, match="shape"):
        m.set_params({**mgritnn.GRUClassifier(3, 6, 4).params})


@pytest.mark.parametrize("X, y, match", [
    (np.zeros((2, 5)), [0, 1], "shape"),
    (np.zeros((2, 5, 4)), [0, 1], "features"),
    (np.full((2, 5, 3), np.nan), [0, 1], "NaN"),
    (np.zeros((0, 5, 3)), [], "empty"),
    (np.zeros((2, 5, 3)), [0, 4], "labels"),
    (np.zeros((2, 5, 3)), [0.5, 1], "integers"),
    (np.zeros((2, 5, 3)), [0], "shape"),
])
def test_bad_input_is_a_data_error(X, y, match):
    m = mgritnn.GRUClassifier(3, 5, 4)
    with pytest.raises(mgritnn.DataError, match=match):
        m.loss_and_grad(X, y)


@pytest.mark.parametrize("kwargs, match", [
    (dict(hidden_size=0), "hidden_size"), (dict(cell="lstm"), "cell"),
    (dict(dtype="float16"), "dtype"), (dict(dt=-1.0), "dt"), (dict(num_layers=1.5), "num_layers"),
])
def test_bad_model_config(kwargs, match):
    args = dict(input_size=3, hidden_size=5, num_classes=2)
    args.update(kwargs)
    with pytest.raises(mgritnn.ConfigError, match=match):
        mgritnn.GRUClassifier(**args)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_classic_equals_torch_gru(num_layers):
    torch = pytest.importorskip("torch", reason="PyTorch not installed (optional comparison)")
    B, T, I, H, C = 5, 12, 4, 7, 3
    m = mgritnn.GRUClassifier(I, H, C, num_layers=num_layers, dtype="float64", seed=2)
    gru = torch.nn.GRU(I, H, num_layers=num_layers, batch_first=True).double()
    head = torch.nn.Linear(H, C).double()
    with torch.no_grad():
        for name, p in gru.named_parameters():
            p.copy_(torch.from_numpy(m.params[name]))
        head.weight.copy_(torch.from_numpy(m.params["head.weight"]))
        head.bias.copy_(torch.from_numpy(m.params["head.bias"]))
    X = np.random.default_rng(0).normal(size=(B, T, I))
    y = np.array([0, 1, 2, 0, 1])
    out, _ = gru(torch.from_numpy(X))
    logits = head(out[:, -1])
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y))
    loss.backward()
    got_loss, grads = m.loss_and_grad(X, y)
    np.testing.assert_allclose(m.forward(X), logits.detach().numpy(), rtol=1e-12, atol=1e-13)
    assert got_loss == pytest.approx(loss.item(), rel=1e-12)
    for name, p in list(gru.named_parameters()) + [("head.weight", head.weight),
                                                   ("head.bias", head.bias)]:
        np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=1e-10, atol=1e-13,
                                   err_msg=name)


def test_reused_work_arrays_leave_no_stale_state():
    """The model's serial solver reuses its arrays between calls: results must not depend on what
    an earlier call (of another shape or input) left in them."""
    m = mgritnn.GRUClassifier(3, 7, 4, num_layers=2, dtype="float64", seed=5)
    rng = np.random.default_rng(0)
    X1, X2, X3 = rng.normal(size=(6, 9, 3)), rng.normal(size=(6, 9, 3)), rng.normal(size=(4, 5, 3))
    y6, y4 = np.arange(6) % 4, np.arange(4)
    first = m.loss_and_grad_flat(X1, y6)
    second = m.loss_and_grad_flat(X2, y6)
    third = m.loss_and_grad_flat(X3, y4)
    again = m.loss_and_grad_flat(X1, y6)
    assert first[0] == again[0] and np.array_equal(first[1], again[1])
    fresh = mgritnn.GRUClassifier(3, 7, 4, num_layers=2, dtype="float64", seed=5)
    for X, y, got in ((X2, y6, second), (X3, y4, third)):
        loss, g, _ = fresh.loss_and_grad_flat(X, y, mgritnn.solvers.SerialSolver())
        assert loss == got[0] and np.array_equal(g, got[1])
    assert not np.shares_memory(first[1], again[1])          # gradients are fresh arrays


def test_the_top_level_holds_the_public_api():
    """``mgritnn.X`` for the model, the option classes, training and the errors."""
    import mgritnn
    from mgritnn.solvers import MGRITConfig
    for name in mgritnn.__all__:
        assert getattr(mgritnn, name) is not None, name
    assert mgritnn.MGRITConfig is MGRITConfig
    assert issubclass(mgritnn.SolverError, mgritnn.MgritnnError)
    cfg = mgritnn.TrainConfig(epochs=1, hidden=4, seq_len=16, max_batches=1, solver="mgrit",
                              solver_options=dict(preset="fast"))
    model, hist = mgritnn.train(cfg, out=lambda *a: None, progress=False)
    assert isinstance(model, mgritnn.GRUClassifier) and len(hist) == 1
